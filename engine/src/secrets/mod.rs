//! Secrets at rest in the engine: the keyring built from configuration, secret run inputs sealed
//! when a run is created and opened by the worker right before its op needs them
//! ([`runs`]), one-time secret links ([`links`]), and key rotation ([`rotate`]).
//!
//! The envelope, the keyring and [`Secret`] are the `steward-secrets` crate, re-exported here:
//! the workers' connectors use the same crate to open tenant credentials. This module adds what
//! needs the installation: keys from `secrets.key-dir` or `STEWARD_SECRETS__KEYS` (never a flag),
//! a check value per key in the namespace's meta hash so a wrong key file is refused at start-up
//! instead of failing steps later, and the development key kept in Redis when (and only when)
//! `secrets.dev-key` asks for it.

pub mod links;
pub mod rotate;
pub mod runs;

use std::path::Path;
use std::sync::Arc;

pub use steward_secrets::{
    Context, Error as OpenError, IssuedLink, KeyError, Keyring, LinkIssuer, NamedKey, Secret,
    contains_sealed, find_sealed, generate_key, key_id_of, parse_key,
};
use tracing::warn;

use crate::config::SecretsConfig;
use crate::db::Db;
use crate::keys::Keys;

/// The id of the development key (`secrets.dev-key`).
pub const DEV_KEY_ID: &str = "dev";

/// The meta-hash field that holds the development key.
const DEV_KEY_FIELD: &str = "secrets-dev-key";

/// The meta-hash field prefix of each key's check value.
const CHECK_FIELD: &str = "secrets-check:";

/// What the check value of a key seals.
const CHECK_TEXT: &str = "steward key check";

/// A keyring that cannot be built, or a Redis failure while checking it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration's keys cannot be used; the message names the key and the fix.
    #[error("{0}")]
    Config(String),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored sealed value does not open (its key is missing, or it was altered or moved).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A request the caller can fix (the message says how).
    #[error("{0}")]
    Invalid(String),
}

/// How to make a key, for messages.
const HOW_TO_MAKE_A_KEY: &str = "make one with `mkdir -p /etc/steward/keys && (umask 077; openssl rand -base64 32 > /etc/steward/keys/k1.key)`, then set secrets.key-dir = \"/etc/steward/keys\" and secrets.active-key = \"k1\" (or STEWARD_SECRETS__KEY_DIR and STEWARD_SECRETS__ACTIVE_KEY); to try Steward out, STEWARD_SECRETS__DEV_KEY=true keeps a generated key in Redis (never in production)";

/// The keyring `config` describes, checked against the installation in Redis; `None` when no key
/// is configured at all (`steward serve` and `steward worker` refuse to start
/// without one: see [`require`]).
pub async fn keyring(
    config: &SecretsConfig,
    db: &Db,
    keys: &Keys,
) -> Result<Option<Arc<Keyring>>, Error> {
    if !config.is_configured() {
        return Ok(None);
    }
    let mut named = Vec::new();
    if let Some(dir) = &config.key_dir {
        let found = steward_secrets::read_key_dir(Path::new(dir))
            .map_err(|e| Error::Config(format!("secrets.key-dir: {e}")))?;
        if found.is_empty() {
            return Err(Error::Config(format!(
                "secrets.key-dir `{dir}` holds no key file (`<id>.key`); {HOW_TO_MAKE_A_KEY}"
            )));
        }
        for key in &found {
            warn_if_readable_by_others(key.origin());
        }
        named.extend(found);
    }
    if let Some(list) = &config.keys {
        named.extend(
            steward_secrets::parse_key_list(&list.0, "STEWARD_SECRETS__KEYS")
                .map_err(|e| Error::Config(e.to_string()))?,
        );
    }
    if config.dev_key {
        named.push(dev_key(db, keys).await?);
        warn!(
            "secrets are sealed with a development key kept in Redis beside them (secrets.dev-key): fine for a demo, never for production"
        );
    }
    let active = match (&config.active_key, config.dev_key) {
        (Some(a), _) => a.clone(),
        (None, true) => DEV_KEY_ID.to_owned(),
        (None, false) => {
            return Err(Error::Config(format!(
                "secrets.active-key is not set; the keyring has {}: set it (STEWARD_SECRETS__ACTIVE_KEY) to the key new secrets are sealed with",
                ids(&named)
            )));
        }
    };
    let ring = Keyring::new(&active, named).map_err(|e| match e {
        KeyError::NoActive { active, found } => Error::Config(format!(
            "secrets.active-key = `{active}`, but no key `{active}` was found (keys found: {found}): put it in secrets.key-dir as `{active}.key`, or in STEWARD_SECRETS__KEYS as `{active}:KEY`; {HOW_TO_MAKE_A_KEY}"
        )),
        other => Error::Config(format!("secrets: {other}")),
    })?;
    check_keys(&ring, db, keys).await?;
    Ok(Some(Arc::new(ring)))
}

/// Refuses to go on without a key, for the commands that store or open secrets (`serve`,
/// `worker`): the error names what to configure.
pub fn require(config: &SecretsConfig, command: &str) -> Result<(), Error> {
    if config.is_configured() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "`steward {command}` needs a secrets key (secret run inputs and one-time links are stored encrypted with it), and none is configured: {HOW_TO_MAKE_A_KEY}"
    )))
}

fn ids(named: &[NamedKey]) -> String {
    if named.is_empty() {
        "no keys".to_owned()
    } else {
        named
            .iter()
            .map(NamedKey::id)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(
            file = path,
            "a secrets key file can be read by other users; make it readable by Steward only (chmod 600)"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &str) {}

/// The development key: made once per namespace and kept in its meta hash.
async fn dev_key(db: &Db, keys: &Keys) -> Result<NamedKey, Error> {
    let meta = keys.meta();
    let mut pipe = redis::pipe();
    pipe.hset_nx(&meta, DEV_KEY_FIELD, generate_key().as_str())
        .ignore()
        .hget(&meta, DEV_KEY_FIELD);
    let (text,): (String,) = db.pipe(&pipe).await?;
    let text = zeroize::Zeroizing::new(text);
    parse_key(DEV_KEY_ID, &text, "the development key in Redis")
        .map_err(|e| Error::Config(format!("secrets.dev-key: {e}")))
}

/// Refuses a key whose id this installation already used for other key material: each key
/// leaves a check value sealed under it in the meta hash the first time it is seen (`HSETNX`,
/// then read back: two processes starting with different material under a new id cannot both
/// win).
async fn check_keys(ring: &Keyring, db: &Db, keys: &Keys) -> Result<(), Error> {
    let meta = keys.meta();
    let cx = Context::key_check();
    let ids: Vec<&str> = ring.ids().collect();
    let mut pipe = redis::pipe();
    for id in &ids {
        let field = format!("{CHECK_FIELD}{id}");
        let sealed = ring
            .seal_with(id, CHECK_TEXT.as_bytes(), &cx)
            .expect("the id comes from the ring");
        pipe.hset_nx(&meta, &field, sealed)
            .ignore()
            .hget(&meta, &field);
    }
    let stored: Vec<String> = db.pipe(&pipe).await?;
    for (id, sealed) in ids.iter().zip(stored) {
        if ring.open(&sealed, &cx).is_err() {
            return Err(Error::Config(format!(
                "secrets key `{id}` ({}) is not the key this installation (namespace `{}`) sealed its secrets with under that id: restore the original key, or give a new key a new id",
                ring.origin(id).unwrap_or("?"),
                keys.namespace()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core's redaction recognises sealed values by their text form without depending on
    /// the crypto crate; it must agree with it.
    #[test]
    fn the_core_recognises_what_the_keyring_seals() {
        let ring = Keyring::new(
            "k-2026.01",
            vec![parse_key("k-2026.01", &generate_key(), "test").unwrap()],
        )
        .unwrap();
        for plain in ["", "x", "Sesame-7731", &"long".repeat(100)] {
            let sealed = ring.seal_str(plain, &Context::run_secret("r"));
            assert!(steward_core::history::looks_sealed(&sealed), "{sealed}");
            let inside = format!("Bearer {sealed}abc");
            assert!(steward_core::history::looks_sealed(&inside));
            assert!(contains_sealed(&inside));
        }
        for not in [
            "stw1:k:short",
            "stw1::AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "plain",
        ] {
            assert!(!steward_core::history::looks_sealed(not), "{not}");
            assert!(!contains_sealed(not), "{not}");
        }
    }
}
