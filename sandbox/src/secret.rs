//! Secrets (passwords, client secrets, tokens) as the world stores them: only a SHA-256 digest.
//!
//! The sandbox must be able to tell whether a presented secret is right and whether two resets
//! used the same password (for the ledger's duplicate detection), but a snapshot, a log line or a
//! ledger entry must never carry the value. Keeping only the digest makes that impossible to get
//! wrong by accident: `Debug` and `Serialize` print `[redacted]`.

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

pub(crate) const REDACTED: &str = "[redacted]";

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret {
    digest: [u8; 32],
}

impl Secret {
    pub(crate) fn new(value: &str) -> Self {
        Self {
            digest: Sha256::digest(value.as_bytes()).into(),
        }
    }

    /// Constant-time comparison, so the sandbox doesn't model a timing oracle the real service
    /// doesn't have.
    pub(crate) fn matches(&self, candidate: &str) -> bool {
        let other: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.digest
            .iter()
            .zip(other.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// A short fingerprint for duplicate detection; it is a digest of a digest and never leaves
    /// the ledger's comparison logic.
    pub(crate) fn fingerprint(&self) -> String {
        hex::encode(&Sha256::digest(self.digest)[..8])
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_matches_only_its_value_and_never_prints_it() {
        let s = Secret::new("Hunter2!pass");
        assert!(s.matches("Hunter2!pass"));
        assert!(!s.matches("hunter2!pass"));
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
        assert_eq!(s.fingerprint(), Secret::new("Hunter2!pass").fingerprint());
        assert_ne!(s.fingerprint(), Secret::new("other").fingerprint());
    }
}
