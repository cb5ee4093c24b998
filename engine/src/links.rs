//! Signed one-time approval links: bound to a gate, an approver and a decision, and expiring.
//!
//! A link's token is `base64url(payload JSON) "." base64url(HMAC-SHA256(key, payload part))`.
//! Whoever holds it can record that one decision once, until it expires; it grants nothing else.
//! The key is the installation's (`http.link-key`, or one generated once and kept in Redis), so a
//! link from another installation does not verify.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use steward_schemas::{RunId, StepId, Timestamp};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a link lets its holder do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaim {
    /// The run.
    pub run: RunId,
    /// The gate.
    pub step: StepId,
    /// The approver it was made for (email).
    pub approver: String,
    /// `true`: approve; `false`: reject.
    pub approve: bool,
    /// When it stops working (Unix seconds).
    pub exp: i64,
    /// Makes it one-time: a nonce is used once.
    pub nonce: String,
    /// Who made it (email), when that is not the approver (an admin making links for them).
    /// Links made before this was recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
}

impl LinkClaim {
    /// How a decision through this link is recorded (`Decision::via`): `link`, or
    /// `link (issued by …)` when someone other than the approver made it.
    pub fn via(&self) -> String {
        match &self.issued_by {
            Some(by) if *by != self.approver => format!("link (issued by {by})"),
            _ => "link".to_owned(),
        }
    }
}

/// A link that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a link token at all.
    #[error("this is not an approval link")]
    Malformed,
    /// The signature does not match: altered, or from another installation.
    #[error("this approval link is not valid (altered, or not issued by this Steward)")]
    Forged,
    /// Past its expiry.
    #[error("this approval link has expired; ask for a new one")]
    Expired,
}

/// Signs and checks links with one key.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner([redacted])")
    }
}

impl LinkSigner {
    /// A signer with `key` (at least 32 bytes).
    pub fn new(key: Vec<u8>) -> Result<Self, String> {
        if key.len() < 32 {
            return Err(format!(
                "the link key has {} bytes; use at least 32",
                key.len()
            ));
        }
        Ok(Self { key })
    }

    /// A fresh random 32-byte key, base64url.
    pub fn generate_key() -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        B64.encode(raw)
    }

    /// Decodes a base64url key.
    pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
        B64.decode(text.trim())
            .map_err(|e| format!("the link key is not base64url: {e}"))
    }

    fn mac(&self, data: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(data);
        mac
    }

    /// A link token for `claim`.
    pub fn sign(&self, claim: &LinkClaim) -> String {
        let payload = B64.encode(serde_json::to_vec(claim).expect("a claim serialises"));
        let sig = B64.encode(self.mac(payload.as_bytes()).finalize().into_bytes());
        format!("{payload}.{sig}")
    }

    /// The claim of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<LinkClaim, LinkError> {
        if token.len() > 2048 {
            return Err(LinkError::Malformed);
        }
        let (payload, sig) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| LinkError::Malformed)?;
        // Constant-time comparison.
        self.mac(payload.as_bytes())
            .verify_slice(&sig)
            .map_err(|_| LinkError::Forged)?;
        let claim: LinkClaim = B64
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(LinkError::Malformed)?;
        if now.as_micros() / 1_000_000 >= claim.exp {
            return Err(LinkError::Expired);
        }
        Ok(claim)
    }

    /// A new nonce.
    pub fn nonce() -> String {
        let mut raw = [0u8; 16];
        rand::rng().fill_bytes(&mut raw);
        B64.encode(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(exp: i64) -> LinkClaim {
        LinkClaim {
            run: RunId::from_ulid(ulid::Ulid::from_parts(1, 2)),
            step: StepId::parse("approval").unwrap(),
            approver: "alice@msp.example".into(),
            approve: true,
            exp,
            nonce: LinkSigner::nonce(),
            issued_by: None,
        }
    }

    #[test]
    fn links_verify_only_as_issued() {
        let signer = LinkSigner::new(vec![7; 32]).unwrap();
        let now = Timestamp::from_micros(1_000_000_000_000);
        let token = signer.sign(&claim(2_000_000));
        assert_eq!(
            signer.verify(&token, now).unwrap().approver,
            "alice@msp.example"
        );
        // Flip the decision in the payload: the signature no longer matches.
        let (payload, sig) = token.split_once('.').unwrap();
        let mut c: LinkClaim = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
        c.approve = false;
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&c).unwrap()));
        assert_eq!(signer.verify(&forged, now), Err(LinkError::Forged));
        let other = LinkSigner::new(vec![8; 32]).unwrap();
        assert_eq!(
            other.verify(&token, now),
            Err(LinkError::Forged),
            "another installation's key"
        );
        assert_eq!(
            signer.verify(&signer.sign(&claim(999)), now),
            Err(LinkError::Expired)
        );
        assert_eq!(signer.verify("nonsense", now), Err(LinkError::Malformed));
        assert_eq!(signer.verify("a.b!", now), Err(LinkError::Malformed));
        assert!(LinkSigner::new(vec![1; 31]).is_err());
    }

    #[test]
    fn a_link_says_who_made_it_for_someone_else() {
        let mut c = claim(2_000_000);
        assert_eq!(c.via(), "link", "made before links recorded their issuer");
        c.issued_by = Some("alice@msp.example".into());
        assert_eq!(c.via(), "link", "made by the approver");
        c.issued_by = Some("admin@msp.example".into());
        assert_eq!(c.via(), "link (issued by admin@msp.example)");
        // A link made before `issued_by` existed still verifies.
        let signer = LinkSigner::new(vec![7; 32]).unwrap();
        let mut old = serde_json::to_value(claim(2_000_000)).unwrap();
        old.as_object_mut().unwrap().remove("issued_by");
        let payload = B64.encode(serde_json::to_vec(&old).unwrap());
        let sig = B64.encode(signer.mac(payload.as_bytes()).finalize().into_bytes());
        let now = Timestamp::from_micros(1_000_000_000_000);
        assert_eq!(
            signer
                .verify(&format!("{payload}.{sig}"), now)
                .unwrap()
                .issued_by,
            None
        );
    }
}
