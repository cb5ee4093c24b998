//! Secrets at rest: an AES-256-GCM envelope with a key id, the keyring that seals and opens it,
//! and [`Secret`], a value that never prints.
//!
//! A sealed value is text, `stw1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`, so it can sit
//! in a JSON document, a Redis field or a job wherever the plaintext would have. Every value gets
//! a fresh random 96-bit nonce. The associated data binds it to its [`Context`] — the run, the
//! tenant credential or the link it was sealed for — and to its key id, so a sealed value copied
//! to another place does not open there.
//!
//! The keyring holds the *active* key (new values are sealed with it) and older keys (values are
//! still opened with them), which is what lets keys rotate without downtime: the new key becomes
//! active, everything stored is re-sealed under it, and only then is the old one removed.
//!
//! Why a crate of its own: the engine stores secrets (run inputs, one-time links, tenant
//! connections) and the workers' connectors open them; both use this one implementation. It does
//! no I/O except reading key files.

mod issue;
mod keyring;
mod secret;
mod text;

pub use issue::{IssuedLink, LinkIssuer};
pub use keyring::{
    KEY_BYTES, KeyError, Keyring, NamedKey, check_key_id, generate_key, parse_key, parse_key_list,
    read_key_dir,
};
pub use secret::Secret;
pub use text::{MIN_DATA_CHARS, PREFIX, Sealed, contains_sealed, find_sealed, key_id_of};

/// Where a sealed value belongs: its associated data. A value sealed for one context opens only
/// in that context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context(String);

impl Context {
    /// A context of `purpose` and its `parts` (each length-prefixed, so no two different lists
    /// of parts give the same bytes).
    pub fn new(purpose: &str, parts: &[&str]) -> Self {
        let mut s = String::from(purpose);
        for p in parts {
            s.push('|');
            s.push_str(&p.len().to_string());
            s.push(':');
            s.push_str(p);
        }
        Self(s)
    }

    /// A secret of run `run`: a secret input, and every value derived from it (a job's input, a
    /// step's output) while the run lasts.
    pub fn run_secret(run: &str) -> Self {
        Self::new("run-secret", &[run])
    }

    /// A tenant's credential of `kind` (`client_secret`, `refresh_token`, …).
    pub fn tenant_credential(tenant: &str, kind: &str) -> Self {
        Self::new("tenant-credential", &[tenant, kind])
    }

    /// The value behind a one-time secret link, by the link's id (the hash of its token).
    pub fn secret_link(id: &str) -> Self {
        Self::new("secret-link", &[id])
    }

    /// The check value an installation keeps per key, to notice a wrong key at start-up.
    pub fn key_check() -> Self {
        Self::new("key-check", &[])
    }

    /// The context's bytes.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A sealed value that could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a sealed value.
    #[error("not a sealed value (expected `stw1:<key id>:<data>`)")]
    Malformed,
    /// Sealed with a key this keyring does not have.
    #[error(
        "a secret is sealed with key `{0}`, which this process does not have; add that key back to the keyring (secrets.key-dir or STEWARD_SECRETS__KEYS) and keep it until `steward secrets status` shows nothing left under it"
    )]
    UnknownKey(String),
    /// The key is known but the value does not authenticate.
    #[error(
        "a secret sealed with key `{0}` does not open: it was altered, or sealed for another place (another run, tenant or link) and copied here"
    )]
    Rejected(String),
    /// It opened, but is not UTF-8 text.
    #[error("a sealed value opened, but it is not text")]
    NotText,
}
