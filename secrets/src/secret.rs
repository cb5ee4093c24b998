//! [`Secret`]: a text value that never prints and is wiped from memory when dropped.

use zeroize::Zeroizing;

/// A secret text (a password, a token, a client secret). `Debug` and `Display` print
/// `[secret]`; the value is only reachable through [`Secret::expose`], and its buffer is zeroed
/// when it is dropped. It is deliberately not `Serialize`: a secret is sealed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value: for the one place that needs it (an op's request body, a seal).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[secret]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::from("hunter2");
        assert_eq!(
            format!("{s:?} {s} {:?}", Some(&s)),
            "[secret] [secret] Some([secret])"
        );
        assert_eq!(s.expose(), "hunter2");
        assert!(!s.is_empty());
    }
}
