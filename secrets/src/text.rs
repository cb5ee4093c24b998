//! The text form of a sealed value, and finding sealed values inside other text.
//!
//! `stw1:<key id>:<data>`: the version, the key id (1–32 of `A–Z a–z 0–9 . _ -`) and the
//! base64url (unpadded) of nonce ‖ ciphertext ‖ tag. A sealed value can end up inside a longer
//! string (a `with:` template such as `"Bearer ${{ inputs.token }}"`), so [`find_sealed`] finds
//! each one; where base64url characters follow it directly, its exact end is settled when it is
//! opened (the one length that authenticates).

/// The version prefix of every sealed value.
pub const PREFIX: &str = "stw1:";

/// The fewest data characters a sealed value has (a 12-byte nonce and a 16-byte tag).
pub const MIN_DATA_CHARS: usize = 38;

/// The longest key id.
pub(crate) const MAX_KID: usize = 32;

/// Whether `c` may appear in a key id.
pub(crate) fn kid_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn b64_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-')
}

/// A sealed value found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// Where it starts in the text (at `stw1:`).
    pub start: usize,
    /// The key id.
    pub kid: &'a str,
    /// The data: the longest run of base64url characters after the key id (it may run on into
    /// text that follows the value).
    pub data: &'a str,
}

impl Sealed<'_> {
    /// Where the data starts in the text.
    pub fn data_start(&self) -> usize {
        self.start + PREFIX.len() + self.kid.len() + 1
    }

    /// Where the longest candidate ends in the text.
    pub fn end(&self) -> usize {
        self.data_start() + self.data.len()
    }
}

/// Every sealed value in `text`, in order.
pub fn find_sealed(text: &str) -> Vec<Sealed<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX) {
        let start = from + at;
        let kid_start = start + PREFIX.len();
        let mut i = kid_start;
        while i < bytes.len() && i - kid_start < MAX_KID + 1 && kid_char(bytes[i]) {
            i += 1;
        }
        let kid_len = i - kid_start;
        if kid_len == 0 || kid_len > MAX_KID || bytes.get(i) != Some(&b':') {
            from = start + 1;
            continue;
        }
        let data_start = i + 1;
        let mut j = data_start;
        while j < bytes.len() && b64_char(bytes[j]) {
            j += 1;
        }
        if j - data_start < MIN_DATA_CHARS {
            from = start + 1;
            continue;
        }
        out.push(Sealed {
            start,
            kid: &text[kid_start..i],
            data: &text[data_start..j],
        });
        from = j;
    }
    out
}

/// Whether `text` holds a sealed value anywhere.
pub fn contains_sealed(text: &str) -> bool {
    text.contains(PREFIX) && !find_sealed(text).is_empty()
}

/// The key id of `text` if it is exactly one sealed value.
pub fn key_id_of(text: &str) -> Option<&str> {
    match find_sealed(text).as_slice() {
        [one] if one.start == 0 && one.end() == text.len() => Some(one.kid),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_are_found_inside_text() {
        let data = "A".repeat(40);
        let text = format!("Bearer stw1:k-1:{data} and stw1:k2:{data}.");
        let found = find_sealed(&text);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].kid, "k-1");
        assert_eq!(found[0].start, 7);
        assert_eq!(found[0].data, data);
        assert_eq!(found[1].kid, "k2");
        assert!(contains_sealed(&text));
        assert_eq!(key_id_of(&format!("stw1:k-1:{data}")), Some("k-1"));
        assert_eq!(key_id_of(&text), None);
        // Too short, no key id, or a key id that is too long: not a sealed value.
        for not in [
            format!("stw1:k:{}", "A".repeat(37)),
            format!("stw1::{data}"),
            format!("stw1:{}:{data}", "k".repeat(33)),
            "stw1:".to_owned(),
            "plain text".to_owned(),
        ] {
            assert!(!contains_sealed(&not), "{not}");
        }
    }
}
