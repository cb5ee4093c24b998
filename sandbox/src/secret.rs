//! Secrets (passwords, client secrets, tokens) as the world stores them: only a SHA-256 digest.
//!
//! The sandbox must be able to tell whether a presented secret is right and whether two resets
//! used the same password (for the ledger's duplicate detection), but a snapshot, a log line or a
//! ledger entry must never carry the value. Keeping only the digest makes that impossible to get
//! wrong by accident: `Debug` and `Serialize` print `[redacted]`. A secret that has to be read
//! in plain text first is a [`SecretText`], whose `Debug` is redacted too.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

pub(crate) const REDACTED: &str = "[redacted]";

/// A secret the sandbox has to read in plain text for a moment: a fixture credential before the
/// world digests it, a password in a runner payload that a policy check must measure.
///
/// `Debug` prints `[redacted]` and there is no `Serialize`, so a log line or a snapshot can't
/// carry it; the value is only reachable through [`SecretText::expose`]. A value of the wrong
/// type is refused without echoing it (serde's own message would quote it).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretText(String);

impl SecretText {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The plain value, for the one comparison or digest that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// What the world keeps of it.
    pub(crate) fn digest(&self) -> Secret {
        Secret::new(&self.0)
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The original error would be "invalid type: integer `12345678`, expected a string".
        String::deserialize(d).map(Self).map_err(|_| {
            serde::de::Error::custom(
                "expected a string (the value is a secret, so it is not shown)",
            )
        })
    }
}

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

    #[test]
    fn secret_text_reads_strings_and_never_prints_or_echoes_them() {
        let t: SecretText = serde_json::from_str("\"Hunter2!pass\"").unwrap();
        assert_eq!(t.expose(), "Hunter2!pass");
        assert!(t.digest().matches("Hunter2!pass"));
        assert_eq!(format!("{t:?}"), REDACTED);
        let err = serde_json::from_str::<SecretText>("123456789").unwrap_err();
        assert!(!err.to_string().contains("123456789"), "{err}");
        let t: SecretText = serde_yaml_ng::from_str("plain-yaml-secret").unwrap();
        assert_eq!(t.expose(), "plain-yaml-secret");
        // YAML reads a plain scalar as a string when a string is wanted, as for any other field.
        let t: SecretText = serde_yaml_ng::from_str("12345").unwrap();
        assert_eq!(t.expose(), "12345");
        let err = serde_json::from_value::<SecretText>(serde_json::json!(987654321)).unwrap_err();
        assert!(!err.to_string().contains("987654321"), "{err}");
    }
}
