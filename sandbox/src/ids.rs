//! Deterministic identifiers.
//!
//! Object ids are derived from the seed and a stable key (the fixture path or a creation
//! counter), so two sandboxes started with the same fixture and seed hand out the same ids in the
//! same order, and a test can compare ledgers across runs.

use sha2::{Digest, Sha256};

/// A GUID-shaped id (version 4 layout) derived from the seed and `parts`.
pub(crate) fn guid(seed: u64, parts: &[&str]) -> String {
    let bytes = digest(seed, parts);
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// 16 raw bytes derived like [`guid`]; used where the real system exposes binary GUIDs
/// (AD `objectGUID`, whose base64 becomes Entra's `onPremisesImmutableId`).
pub(crate) fn guid_bytes(seed: u64, parts: &[&str]) -> [u8; 16] {
    let bytes = digest(seed, parts);
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b
}

/// Formats 16 bytes the way .NET prints a `Guid` built from them (little-endian first fields).
pub(crate) fn dotnet_guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// A numeric id in a range that looks like the real service's (Datto device ids, job ids).
pub(crate) fn number(seed: u64, parts: &[&str], modulo: u64) -> u64 {
    let bytes = digest(seed, parts);
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(n) % modulo.max(1)
}

fn digest(seed: u64, parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(seed.to_be_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// True when `s` has the 8-4-4-4-12 hex shape of a GUID.
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(len, p)| p.len() == *len && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_deterministic_and_well_formed() {
        let a = guid(7, &["user", "a@contoso.com"]);
        assert_eq!(a, guid(7, &["user", "a@contoso.com"]));
        assert_ne!(a, guid(8, &["user", "a@contoso.com"]));
        assert_ne!(a, guid(7, &["user", "b@contoso.com"]));
        assert!(is_guid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
        assert!(!is_guid("not-a-guid"));
        // Part boundaries matter: ["ab","c"] must differ from ["a","bc"].
        assert_ne!(guid(1, &["ab", "c"]), guid(1, &["a", "bc"]));
        let b = guid_bytes(1, &["x"]);
        assert!(is_guid(&dotnet_guid_string(&b)));
        assert!(number(1, &["x"], 1000) < 1000);
    }
}
