//! The keyring: the active key, older keys, sealing and opening.

use std::collections::BTreeMap;
use std::path::Path;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use rand::RngCore as _;
use zeroize::Zeroizing;

use crate::text::{MAX_KID, MIN_DATA_CHARS, PREFIX, Sealed, find_sealed, kid_char};
use crate::{Context, Error, Secret};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How many bytes a key has (AES-256).
pub const KEY_BYTES: usize = 32;

const NONCE_BYTES: usize = 12;

/// The longest data a sealed value inside other text is tried at (see `open_found`).
const MAX_DATA_CHARS: usize = 8192;

/// A key that cannot be used; the message names the key, where it came from, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key id with characters the text form cannot carry.
    #[error("key id `{0}`: use 1 to 32 of letters, digits, `.`, `_` and `-`")]
    BadId(String),
    /// The key material is not 32 bytes of base64.
    #[error(
        "key `{id}` ({origin}): {problem}; make one with `openssl rand -base64 32` (32 random bytes, base64)"
    )]
    BadMaterial {
        /// The key's id.
        id: String,
        /// Where it came from.
        origin: String,
        /// What is wrong (never the material itself).
        problem: String,
    },
    /// One id given twice.
    #[error("key `{id}` is given twice ({first}, and {second}); keep one")]
    Duplicate {
        /// The key's id.
        id: String,
        /// Where it came from first.
        first: String,
        /// And second.
        second: String,
    },
    /// A key folder or file could not be read.
    #[error("{path}: cannot read it: {error}")]
    Read {
        /// The folder or file.
        path: String,
        /// Why.
        error: String,
    },
    /// An entry of a key list is not `ID:KEY`.
    #[error("{source_name}: entry {entry} is not `ID:KEY`; write `ID:KEY,ID:KEY`")]
    List {
        /// Where the list came from.
        source_name: String,
        /// Which entry (1-based).
        entry: usize,
    },
    /// The active key is not among the keys.
    #[error(
        "the active key `{active}` is not in the keyring (keys found: {found}); add its key, or make one of those active"
    )]
    NoActive {
        /// The active key's id.
        active: String,
        /// The ids found.
        found: String,
    },
}

/// A key with its id and where it came from (a file, a variable).
pub struct NamedKey {
    id: String,
    material: Zeroizing<[u8; KEY_BYTES]>,
    origin: String,
}

impl std::fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedKey")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl NamedKey {
    /// A key from its raw bytes.
    pub fn new(
        id: &str,
        material: Zeroizing<[u8; KEY_BYTES]>,
        origin: impl Into<String>,
    ) -> Result<Self, KeyError> {
        check_key_id(id)?;
        Ok(Self {
            id: id.to_owned(),
            material,
            origin: origin.into(),
        })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where it came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// Checks that `id` can be a key id.
pub fn check_key_id(id: &str) -> Result<(), KeyError> {
    if id.is_empty() || id.len() > MAX_KID || !id.bytes().all(kid_char) {
        return Err(KeyError::BadId(id.to_owned()));
    }
    Ok(())
}

/// Parses key material: 32 bytes, base64 or base64url, padded or not.
pub fn parse_key(id: &str, text: &str, origin: &str) -> Result<NamedKey, KeyError> {
    let bad = |problem: String| KeyError::BadMaterial {
        id: id.to_owned(),
        origin: origin.to_owned(),
        problem,
    };
    let cleaned: Zeroizing<String> = Zeroizing::new(
        text.trim()
            .trim_end_matches('=')
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect(),
    );
    let raw = Zeroizing::new(
        B64.decode(cleaned.as_bytes())
            .map_err(|_| bad("it is not base64".to_owned()))?,
    );
    if raw.len() != KEY_BYTES {
        return Err(bad(format!(
            "it has {} bytes; a key has {KEY_BYTES}",
            raw.len()
        )));
    }
    let mut material = Zeroizing::new([0u8; KEY_BYTES]);
    material.copy_from_slice(&raw);
    NamedKey::new(id, material, origin)
}

/// Parses `ID:KEY,ID:KEY` (from an environment variable named `source_name`).
pub fn parse_key_list(text: &str, source_name: &str) -> Result<Vec<NamedKey>, KeyError> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let (id, key) = entry.split_once(':').ok_or(KeyError::List {
                source_name: source_name.to_owned(),
                entry: i + 1,
            })?;
            parse_key(id.trim(), key, source_name)
        })
        .collect()
}

/// Reads every `<id>.key` file of `dir` (other files are ignored).
pub fn read_key_dir(dir: &Path) -> Result<Vec<NamedKey>, KeyError> {
    let read_err = |path: &Path, e: std::io::Error| KeyError::Read {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| read_err(dir, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let text =
                Zeroizing::new(std::fs::read_to_string(path).map_err(|e| read_err(path, e))?);
            parse_key(id, &text, &path.display().to_string())
        })
        .collect()
}

/// A fresh random key, base64url: what `openssl rand -base64 32` gives.
pub fn generate_key() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; KEY_BYTES]);
    rand::rng().fill_bytes(raw.as_mut());
    Zeroizing::new(B64.encode(raw.as_ref()))
}

/// The keys of an installation: the active one seals, every one opens. Cheap to share behind an
/// `Arc`; the key schedules are zeroed when it is dropped.
pub struct Keyring {
    active: String,
    keys: BTreeMap<String, (Aes256Gcm, String)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys` sealing with `active`.
    pub fn new(active: &str, keys: Vec<NamedKey>) -> Result<Self, KeyError> {
        check_key_id(active)?;
        let mut map: BTreeMap<String, (Aes256Gcm, String)> = BTreeMap::new();
        for key in keys {
            if let Some((_, first)) = map.get(&key.id) {
                return Err(KeyError::Duplicate {
                    id: key.id.clone(),
                    first: first.clone(),
                    second: key.origin,
                });
            }
            let cipher = Aes256Gcm::new_from_slice(key.material.as_ref())
                .expect("an AES-256 key is 32 bytes, checked when it was parsed");
            map.insert(key.id, (cipher, key.origin));
        }
        if !map.contains_key(active) {
            return Err(KeyError::NoActive {
                active: active.to_owned(),
                found: if map.is_empty() {
                    "none".to_owned()
                } else {
                    map.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            });
        }
        Ok(Self {
            active: active.to_owned(),
            keys: map,
        })
    }

    /// The id of the key new values are sealed with.
    pub fn active(&self) -> &str {
        &self.active
    }

    /// Every key id, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Where a key came from (a file, a variable), for messages.
    pub fn origin(&self, id: &str) -> Option<&str> {
        self.keys.get(id).map(|(_, o)| o.as_str())
    }

    fn aad(kid: &str, cx: &Context) -> Vec<u8> {
        format!("{PREFIX}{kid}|{}", cx.as_str()).into_bytes()
    }

    /// Seals `plaintext` for `cx` with the active key.
    pub fn seal_bytes(&self, plaintext: &[u8], cx: &Context) -> String {
        self.seal_with(&self.active, plaintext, cx)
            .expect("the active key is in the keyring, checked when it was made")
    }

    /// Seals `plaintext` for `cx` with the key `kid` (not the active one: for a key's check
    /// value); `None` if the ring has no such key.
    pub fn seal_with(&self, kid: &str, plaintext: &[u8], cx: &Context) -> Option<String> {
        let (cipher, _) = self.keys.get(kid)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let aad = Self::aad(kid, cx);
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM seals any message shorter than 64 GiB");
        let mut data = Vec::with_capacity(NONCE_BYTES + ct.len());
        data.extend_from_slice(&nonce);
        data.extend_from_slice(&ct);
        Some(format!("{PREFIX}{kid}:{}", B64.encode(&data)))
    }

    /// Seals a text secret for `cx` with the active key.
    pub fn seal(&self, secret: &Secret, cx: &Context) -> String {
        self.seal_bytes(secret.expose().as_bytes(), cx)
    }

    /// Seals plain text for `cx` with the active key.
    pub fn seal_str(&self, plaintext: &str, cx: &Context) -> String {
        self.seal_bytes(plaintext.as_bytes(), cx)
    }

    fn open_data(&self, kid: &str, data: &str, cx: &Context) -> Result<Zeroizing<Vec<u8>>, Error> {
        let (cipher, _) = self
            .keys
            .get(kid)
            .ok_or_else(|| Error::UnknownKey(kid.to_owned()))?;
        let rejected = || Error::Rejected(kid.to_owned());
        let raw = B64.decode(data).map_err(|_| rejected())?;
        if raw.len() < NONCE_BYTES + 16 {
            return Err(rejected());
        }
        let (nonce, ct) = raw.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().expect("split at the nonce's length");
        let aad = Self::aad(kid, cx);
        cipher
            .decrypt((&nonce).into(), Payload { msg: ct, aad: &aad })
            .map(Zeroizing::new)
            .map_err(|_| rejected())
    }

    /// Opens a sealed value found in a text: the longest candidate first, then shorter ones
    /// (base64url characters may follow the value directly); returns the plaintext and where the
    /// value ends.
    fn open_found(
        &self,
        found: &Sealed<'_>,
        cx: &Context,
    ) -> Result<(Zeroizing<Vec<u8>>, usize), Error> {
        let mut first_error = None;
        // Past MAX_DATA_CHARS the text that runs on is not tried: it bounds the work one
        // crafted value can cause (a sealed value that long holds ~6 KiB).
        for len in (MIN_DATA_CHARS..=found.data.len().min(MAX_DATA_CHARS)).rev() {
            if len % 4 == 1 {
                continue;
            }
            match self.open_data(found.kid, &found.data[..len], cx) {
                Ok(plain) => return Ok((plain, found.data_start() + len)),
                Err(e @ Error::UnknownKey(_)) => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::Rejected(found.kid.to_owned())))
    }

    /// Opens `sealed`, which must be exactly one sealed value, as bytes.
    pub fn open_bytes(&self, sealed: &str, cx: &Context) -> Result<Zeroizing<Vec<u8>>, Error> {
        let found = find_sealed(sealed);
        match found.as_slice() {
            [one] if one.start == 0 && one.end() == sealed.len() => {
                self.open_data(one.kid, one.data, cx)
            }
            _ => Err(Error::Malformed),
        }
    }

    /// Opens `sealed`, which must be exactly one sealed text value.
    pub fn open(&self, sealed: &str, cx: &Context) -> Result<Secret, Error> {
        let bytes = self.open_bytes(sealed, cx)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::NotText)?;
        Ok(Secret::new(text.to_owned()))
    }

    /// `text` with every sealed value in it opened; `None` if it holds none. Each opened value
    /// is also pushed onto `opened` (so a caller can recognise it later, e.g. in an op's output).
    pub fn open_within(
        &self,
        text: &str,
        cx: &Context,
        opened: &mut Vec<Secret>,
    ) -> Result<Option<Secret>, Error> {
        let found = find_sealed(text);
        if found.is_empty() {
            return Ok(None);
        }
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut pos = 0;
        for f in &found {
            if f.start < pos {
                // Inside the data of the value just opened (cannot happen: data holds no `:`).
                continue;
            }
            out.push_str(&text[pos..f.start]);
            let (plain, end) = self.open_found(f, cx)?;
            let plain = std::str::from_utf8(&plain).map_err(|_| Error::NotText)?;
            out.push_str(plain);
            opened.push(Secret::new(plain.to_owned()));
            pos = end;
        }
        out.push_str(&text[pos..]);
        Ok(Some(Secret::new(std::mem::take(&mut *out))))
    }

    /// `text` with every sealed value that is not under the active key sealed again under it
    /// (same context); `None` if nothing needed it.
    pub fn reseal_within(&self, text: &str, cx: &Context) -> Result<Option<String>, Error> {
        let found = find_sealed(text);
        if found.iter().all(|f| f.kid == self.active) {
            return Ok(None);
        }
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for f in &found {
            out.push_str(&text[pos..f.start]);
            let (plain, end) = self.open_found(f, cx)?;
            if f.kid == self.active {
                out.push_str(&text[f.start..end]);
            } else {
                out.push_str(&self.seal_bytes(&plain, cx));
            }
            pos = end;
        }
        out.push_str(&text[pos..]);
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::contains_sealed;

    fn key(id: &str, byte: u8) -> NamedKey {
        NamedKey::new(id, Zeroizing::new([byte; KEY_BYTES]), "test").unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed() {
        let ring = Keyring::new("k1", vec![key("k1", 1)]).unwrap();
        let run_a = Context::run_secret("run_A");
        let sealed = ring.seal_str("Sesame-7731", &run_a);
        assert!(sealed.starts_with("stw1:k1:"), "{sealed}");
        assert!(!sealed.contains("Sesame"));
        assert_ne!(
            sealed,
            ring.seal_str("Sesame-7731", &run_a),
            "a fresh nonce each time"
        );
        assert_eq!(ring.open(&sealed, &run_a).unwrap().expose(), "Sesame-7731");
        // Another run, another purpose: it does not open.
        assert_eq!(
            ring.open(&sealed, &Context::run_secret("run_B")),
            Err(Error::Rejected("k1".to_owned()))
        );
        assert!(
            ring.open(&sealed, &Context::tenant_credential("run_A", "x"))
                .is_err()
        );
        // Altered in any byte of its data: it does not open.
        let mut altered = sealed.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            ring.open(&altered, &run_a),
            Err(Error::Rejected("k1".to_owned()))
        );
        // Under a key id the ring does not have: the error names it.
        let moved = sealed.replacen("stw1:k1:", "stw1:k9:", 1);
        let err = ring.open(&moved, &run_a).unwrap_err();
        assert_eq!(err, Error::UnknownKey("k9".to_owned()));
        assert!(err.to_string().contains("key `k9`"));
        // A key id is part of the associated data: the same bytes under another id of the same
        // material do not open.
        let twin = Keyring::new("k1", vec![key("k1", 1), key("k2", 1)]).unwrap();
        let relabelled = sealed.replacen("stw1:k1:", "stw1:k2:", 1);
        assert!(twin.open(&relabelled, &run_a).is_err());
        assert_eq!(ring.open("stw1:k1:short", &run_a), Err(Error::Malformed));
        assert_eq!(
            ring.open(&format!("x{sealed}"), &run_a),
            Err(Error::Malformed)
        );
    }

    #[test]
    fn values_inside_text_open_even_when_text_runs_on() {
        let ring = Keyring::new("k1", vec![key("k1", 1)]).unwrap();
        let cx = Context::run_secret("r");
        let a = ring.seal_str("alpha", &cx);
        let b = ring.seal_str("beta", &cx);
        // `b` is followed directly by base64url characters.
        let text = format!("user {a} pass {b}xyz_-9 end");
        let mut opened = Vec::new();
        let plain = ring.open_within(&text, &cx, &mut opened).unwrap().unwrap();
        assert_eq!(plain.expose(), "user alpha pass betaxyz_-9 end");
        assert_eq!(
            opened.iter().map(Secret::expose).collect::<Vec<_>>(),
            ["alpha", "beta"]
        );
        assert!(
            ring.open_within("no secrets", &cx, &mut opened)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn rotation_reseals_under_the_active_key_and_old_keys_still_open() {
        let old = Keyring::new("k1", vec![key("k1", 1)]).unwrap();
        let cx = Context::tenant_credential("contoso", "client_secret");
        let sealed = old.seal_str("cs-123", &cx);
        let text = format!("{{\"a\":\"{sealed}\"}}");
        let both = Keyring::new("k2", vec![key("k1", 1), key("k2", 2)]).unwrap();
        assert_eq!(both.open(&sealed, &cx).unwrap().expose(), "cs-123");
        let resealed = both.reseal_within(&text, &cx).unwrap().unwrap();
        assert!(resealed.contains("stw1:k2:") && !resealed.contains("stw1:k1:"));
        assert!(contains_sealed(&resealed));
        assert_eq!(
            both.reseal_within(&resealed, &cx).unwrap(),
            None,
            "nothing left to do"
        );
        let new_only = Keyring::new("k2", vec![key("k2", 2)]).unwrap();
        let mut opened = Vec::new();
        let plain = new_only
            .open_within(&resealed, &cx, &mut opened)
            .unwrap()
            .unwrap();
        assert_eq!(plain.expose(), "{\"a\":\"cs-123\"}");
    }

    #[test]
    fn keys_are_parsed_with_errors_that_name_them_and_never_show_them() {
        let generated = generate_key();
        let material = generated.as_str();
        assert_eq!(parse_key("a", material, "x").unwrap().id(), "a");
        // Standard base64 with padding, as `openssl rand -base64 32` prints it.
        let std_b64 = base64::engine::general_purpose::STANDARD.encode([0xfbu8; 32]);
        assert!(std_b64.contains('+') || std_b64.contains('/'));
        parse_key("a", &format!("{std_b64}\n"), "x").unwrap();
        let err = parse_key("k1", "aHVudGVyMg==", "/etc/steward/keys/k1.key").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("key `k1` (/etc/steward/keys/k1.key)")
                && text.contains("has 7 bytes")
                && text.contains("openssl rand -base64 32")
                && !text.contains("aHVudGVyMg"),
            "{text}"
        );
        assert!(
            parse_key("k1", "not base64!", "x")
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
        assert!(matches!(
            parse_key("a:b", material, "x"),
            Err(KeyError::BadId(_))
        ));
        let list = parse_key_list(&format!("k1:{material}, k2:{material}"), "VAR").unwrap();
        assert_eq!(
            list.iter().map(NamedKey::id).collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(
            parse_key_list("k1", "VAR").unwrap_err().to_string(),
            "VAR: entry 1 is not `ID:KEY`; write `ID:KEY,ID:KEY`"
        );
        let err = Keyring::new("k3", list).unwrap_err().to_string();
        assert!(err.contains("`k3`") && err.contains("k1, k2"), "{err}");
        let dup = vec![key("k1", 1), key("k1", 2)];
        assert!(matches!(
            Keyring::new("k1", dup),
            Err(KeyError::Duplicate { .. })
        ));

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2026-01.key"), format!("{material}\n")).unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let keys = read_key_dir(dir.path()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].id(), "2026-01");
        let ring = Keyring::new("2026-01", keys).unwrap();
        assert_eq!(
            format!("{ring:?}"),
            "Keyring { active: \"2026-01\", keys: [\"2026-01\"] }"
        );
        std::fs::write(dir.path().join("bad.key"), "short").unwrap();
        let err = read_key_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("key `bad`") && err.contains("bad.key"),
            "{err}"
        );
        assert!(read_key_dir(&dir.path().join("missing")).is_err());
    }
}
