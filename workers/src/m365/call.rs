//! Who a call is for and what it is part of: the tenant, and the run, step and attempt that
//! Microsoft's logs and the sandbox's ledger can tie a request back to.
//!
//! Graph wants `client-request-id` to be a GUID, so the run, step and attempt cannot travel in it
//! as text. Instead the GUID is built from them: bytes 0–5 are a hash of the run id, bytes 6–7 a
//! hash of the step id (with the version nibble `8`, "custom"), bytes 8–9 the attempt (with the
//! RFC 4122 variant bits), bytes 10–15 random. So every request of an attempt shares a
//! recognisable 20-hex-digit prefix ([`Correlation::request_id_prefix`]), the attempt can be
//! read off the GUID, and two requests never share an id. The plain-text form travels in
//! `X-Steward-Correlation: <run>/<step>/<attempt>`, which the sandbox records in its ledger.

use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::m365::credentials::Connection;
use crate::m365::token::Grant;
use crate::op::OpContext;

/// The header carrying `<run>/<step>/<attempt>` in plain text.
pub const CORRELATION_HEADER: &str = "X-Steward-Correlation";

/// The run, step and attempt a request is part of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The run id (`run_01…`).
    pub run: String,
    /// The step id (with `/undo` for an undo).
    pub step: String,
    /// The attempt.
    pub attempt: u32,
}

impl Correlation {
    /// The correlation of an op's job.
    pub fn of(cx: &OpContext) -> Self {
        let step = match cx.phase {
            steward_schemas::Phase::Run => cx.step.to_string(),
            steward_schemas::Phase::Undo => format!("{}/undo", cx.step),
        };
        Self {
            run: cx.run_id.to_string(),
            step,
            attempt: cx.attempt.get(),
        }
    }

    /// `<run>/<step>/<attempt>`.
    pub fn header(&self) -> String {
        format!("{}/{}/{}", self.run, self.step, self.attempt)
    }

    fn fixed_bytes(&self) -> [u8; 10] {
        let run = Sha256::digest(self.run.as_bytes());
        let step = Sha256::digest(self.step.as_bytes());
        let attempt = u16::try_from(self.attempt.min(0x3fff)).unwrap_or(0x3fff);
        let mut b = [0u8; 10];
        b[..6].copy_from_slice(&run[..6]);
        b[6] = 0x80 | (step[0] & 0x0f);
        b[7] = step[1];
        b[8] = 0x80 | ((attempt >> 8) as u8 & 0x3f);
        b[9] = (attempt & 0xff) as u8;
        b
    }

    /// The first 20 hex digits (with dashes, as in the GUID) that every `client-request-id` of
    /// this run, step and attempt starts with.
    pub fn request_id_prefix(&self) -> String {
        let b = self.fixed_bytes();
        format!(
            "{}-{}-{}",
            hex::encode(&b[..4]),
            hex::encode(&b[4..6]),
            hex::encode(&b[6..8])
        ) + "-"
            + &hex::encode(&b[8..10])
    }

    /// The attempt a `client-request-id` made by [`new_request_id`] carries.
    pub fn attempt_of(request_id: &str) -> Option<u32> {
        let part = request_id.split('-').nth(3)?;
        let v = u16::from_str_radix(part, 16).ok()?;
        (v & 0xc000 == 0x8000).then_some(u32::from(v & 0x3fff))
    }
}

/// A fresh `client-request-id`: a GUID carrying `corr` as described in the module doc, or a
/// random (version 4) GUID for calls outside a step.
pub fn new_request_id(corr: Option<&Correlation>) -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    match corr {
        Some(c) => b[..10].copy_from_slice(&c.fixed_bytes()),
        None => {
            b[6] = 0x40 | (b[6] & 0x0f);
            b[8] = 0x80 | (b[8] & 0x3f);
        }
    }
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..])
    )
}

/// One call's context: the tenant connection it acts through, whose rights it uses, and the
/// step it is part of.
#[derive(Debug, Clone)]
pub struct Call {
    /// The tenant connection.
    pub conn: Connection,
    /// App-only or delegated.
    pub grant: Grant,
    /// The run, step and attempt, when the call is part of one.
    pub correlation: Option<Correlation>,
}

impl Call {
    /// An app-only call outside any run (the scheduled token refresh, tests).
    pub fn new(conn: Connection) -> Self {
        Self {
            conn,
            grant: Grant::App,
            correlation: None,
        }
    }

    /// An app-only call made by an op's job.
    pub fn for_op(conn: Connection, cx: &OpContext) -> Self {
        Self {
            conn,
            grant: Grant::App,
            correlation: Some(Correlation::of(cx)),
        }
    }

    /// The same call with the tenant's delegated rights.
    pub fn delegated(&self) -> Self {
        Self {
            grant: Grant::Delegated,
            ..self.clone()
        }
    }

    /// The tenant.
    pub fn tenant(&self) -> &str {
        &self.conn.tenant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_guids_that_carry_the_attempt() {
        let c = Correlation {
            run: "run_01JD0000000000000000000000".into(),
            step: "create".into(),
            attempt: 3,
        };
        let a = new_request_id(Some(&c));
        let b = new_request_id(Some(&c));
        assert_ne!(a, b, "two requests never share an id");
        assert!(a.starts_with(&c.request_id_prefix()), "{a}");
        assert_eq!(a.len(), 36);
        assert_eq!(a.chars().filter(|&ch| ch == '-').count(), 4);
        assert_eq!(&a[14..15], "8", "custom version nibble: {a}");
        assert_eq!(Correlation::attempt_of(&a), Some(3));
        let other = Correlation {
            attempt: 4,
            ..c.clone()
        };
        assert!(!new_request_id(Some(&other)).starts_with(&c.request_id_prefix()));
        let plain = new_request_id(None);
        assert_eq!(&plain[14..15], "4", "{plain}");
        assert_eq!(c.header(), "run_01JD0000000000000000000000/create/3");
    }
}
