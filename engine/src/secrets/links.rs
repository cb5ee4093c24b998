//! One-time secret links: a secret (a new user's initial password) stored sealed with an expiry,
//! shown once to whoever holds the link, then burnt.
//!
//! The link's token (`sl_` + 256 random bits) is the capability; Redis keeps only its SHA-256 (the
//! link's id), so a copy of the database does not hold working links. The value is sealed for
//! that id ([`Context::secret_link`]) and expires with the link, so an unread link burns itself.
//! Opening the link (`GET /s/{token}`) shows a page and changes nothing — mail scanners and link
//! previewers fetch links, and must not burn them; only the page's button (a `POST`) reveals the
//! value, once: the reveal reads the sealed value, opens it, and burns it only if it is still the
//! one it read (one script), so two reveals racing each other show it once. A small record
//! (label, expiry, when it was opened) outlives the value by [`RECORD_GRACE`], so a second visit
//! can say the link was already used, and when.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use redis::Script;
use sha2::{Digest, Sha256};
use steward_schemas::Timestamp;

use super::{Context, Error, Keyring, Secret};
use crate::clock::Clock;
use crate::db::Db;
use crate::keys::Keys;
use crate::store::Store;

/// The compare-and-set script that burns (or re-seals) a link's value.
pub const SCRIPT: &str = include_str!("../../lua/secret_link.lua");

/// What every link token starts with.
pub const TOKEN_PREFIX: &str = "sl_";

/// How long a link's record (not its value) is kept after it expires, to answer "already used".
pub const RECORD_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// The longest label.
pub const MAX_LABEL: usize = 200;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A link just made: its token (shown once, to be sent to the person it is for) and its expiry.
#[derive(Debug)]
pub struct NewLink {
    /// The token; the link is `<public url>/s/<token>`.
    pub token: Secret,
    /// When it burns unread.
    pub expires_at: Timestamp,
}

impl NewLink {
    /// The link's URL under `public_url`.
    pub fn url(&self, public_url: &str) -> Secret {
        Secret::new(format!(
            "{}/s/{}",
            public_url.trim_end_matches('/'),
            self.token.expose()
        ))
    }
}

/// What a link is for and where it is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// What the secret is, in words ("Initial password for jane@contoso.com").
    pub label: String,
    /// When it was made.
    pub created: Timestamp,
    /// When it burns unread.
    pub expires_at: Timestamp,
    /// When it was revealed.
    pub opened: Option<Timestamp>,
}

/// Where a link is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// It can be revealed.
    Ready(LinkInfo),
    /// It was revealed; it shows nothing again.
    Opened(LinkInfo),
    /// It expired unread; its value is gone.
    Expired(LinkInfo),
    /// No such link (never made, malformed, or its record is gone too).
    Unknown,
}

/// What a reveal gave.
#[derive(Debug)]
pub enum Revealed {
    /// The value, shown this once.
    Value {
        /// The secret.
        secret: Secret,
        /// The link.
        info: LinkInfo,
    },
    /// Nothing: the link is used, expired or unknown.
    Gone(LinkState),
}

/// One-time secret links on Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SecretLinks {
    db: Db,
    keys: Keys,
    ring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    script: Arc<Script>,
}

impl SecretLinks {
    /// Links on `db`, sealed with `ring`.
    pub fn new(db: Db, keys: Keys, ring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            keys,
            ring,
            clock,
            script: Arc::new(Script::new(SCRIPT)),
        }
    }

    /// Links beside `store`'s runs, with its keyring; `None` if it has none.
    pub fn for_store(store: &Store) -> Option<Self> {
        Some(Self::new(
            store.db().clone(),
            store.keys().clone(),
            store.secrets_arc()?,
            store.clock().clone(),
        ))
    }

    /// Stores `value` behind a new link that works for `ttl`. `label` says what it is, on the
    /// link's page; it must not hold the secret.
    pub async fn create(
        &self,
        value: &Secret,
        label: &str,
        ttl: Duration,
    ) -> Result<NewLink, Error> {
        if label.chars().count() > MAX_LABEL || label.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "a secret link's label must be one line of at most {MAX_LABEL} characters"
            )));
        }
        if ttl.is_zero() {
            return Err(Error::Invalid(
                "a secret link must work for some time; give a positive lifetime".to_owned(),
            ));
        }
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(raw.as_mut());
        let token = Secret::new(format!("{TOKEN_PREFIX}{}", B64.encode(raw.as_ref())));
        let id = id_of(token.expose());
        let now = self.clock.now();
        let expires_at = now.plus(ttl);
        let sealed = self.ring.seal(value, &Context::secret_link(&id));
        let record = self.keys.secret_link_record(&id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.keys.secret_link(&id))
            .arg(sealed)
            .arg("PXAT")
            .arg(expires_at.as_millis())
            .ignore()
            .hset_multiple(
                &record,
                &[
                    ("label", label.to_owned()),
                    ("created", now.as_millis().to_string()),
                    ("exp", expires_at.as_millis().to_string()),
                ],
            )
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&record)
            .arg(expires_at.plus(RECORD_GRACE).as_millis())
            .ignore();
        self.db.pipe::<()>(&pipe).await?;
        Ok(NewLink { token, expires_at })
    }

    /// Where the link of `token` is, changing nothing.
    pub async fn look(&self, token: &str) -> Result<LinkState, Error> {
        Ok(self.read(token).await?.0)
    }

    /// The link's state and, while it can be revealed, its sealed value and id.
    async fn read(&self, token: &str) -> Result<(LinkState, Option<(String, String)>), Error> {
        if !well_formed(token) {
            return Ok((LinkState::Unknown, None));
        }
        let id = id_of(token);
        let mut pipe = redis::pipe();
        pipe.get(self.keys.secret_link(&id))
            .hgetall(self.keys.secret_link_record(&id));
        let (sealed, record): (Option<String>, std::collections::HashMap<String, String>) =
            self.db.pipe(&pipe).await?;
        let ms = |f: &str| {
            record
                .get(f)
                .and_then(|v| v.parse::<i64>().ok())
                .map(Timestamp::from_millis)
        };
        let (Some(created), Some(expires_at)) = (ms("created"), ms("exp")) else {
            return Ok((LinkState::Unknown, None));
        };
        let info = LinkInfo {
            label: record.get("label").cloned().unwrap_or_default(),
            created,
            expires_at,
            opened: ms("opened"),
        };
        Ok(match (sealed, info.opened) {
            (_, Some(_)) => (LinkState::Opened(info), None),
            (Some(sealed), None) if self.clock.now() < expires_at => {
                (LinkState::Ready(info), Some((id, sealed)))
            }
            (_, None) => (LinkState::Expired(info), None),
        })
    }

    /// Reveals the link's value once: opens it, then burns it (if no one else did first).
    pub async fn reveal(&self, token: &str) -> Result<Revealed, Error> {
        let (state, sealed) = self.read(token).await?;
        let (LinkState::Ready(mut info), Some((id, sealed))) = (state.clone(), sealed) else {
            return Ok(Revealed::Gone(state));
        };
        // Opened before it is burnt: a value this server cannot open stays for one that can.
        let secret = self.ring.open(&sealed, &Context::secret_link(&id))?;
        let now = self.clock.now();
        let mut inv = self.script.prepare_invoke();
        inv.key(self.keys.secret_link(&id))
            .key(self.keys.secret_link_record(&id))
            .arg("burn")
            .arg(&sealed)
            .arg(now.as_millis());
        let burnt: i64 = self.db.script(&inv).await?;
        if burnt == 1 {
            info.opened = Some(now);
            return Ok(Revealed::Value { secret, info });
        }
        // Someone else revealed it (or it expired) between the read and the burn.
        Ok(Revealed::Gone(self.look(token).await?))
    }

    /// Seals a link's value again under the active key if it is under another (rotation); whether
    /// it did.
    pub(crate) async fn reseal(&self, id: &str) -> Result<bool, Error> {
        let key = self.keys.secret_link(id);
        let sealed: Option<String> = self.db.query(redis::cmd("GET").arg(&key)).await?;
        let Some(sealed) = sealed else {
            return Ok(false);
        };
        let Some(fresh) = self
            .ring
            .reseal_within(&sealed, &Context::secret_link(id))?
        else {
            return Ok(false);
        };
        let mut inv = self.script.prepare_invoke();
        inv.key(&key)
            .key(self.keys.secret_link_record(id))
            .arg("reseal")
            .arg(&sealed)
            .arg(fresh);
        let done: i64 = self.db.script(&inv).await?;
        Ok(done == 1)
    }
}

/// [`SecretLinks`] behind a public URL, with a lifetime: what ops are given to issue links.
#[derive(Debug, Clone)]
pub struct Issuer {
    links: SecretLinks,
    public_url: String,
    ttl: Duration,
}

impl SecretLinks {
    /// An issuer of links under `public_url` that work for `ttl` (`secrets.link-ttl`).
    pub fn issuer(&self, public_url: &str, ttl: Duration) -> Issuer {
        Issuer {
            links: self.clone(),
            public_url: public_url.to_owned(),
            ttl,
        }
    }
}

impl steward_secrets::LinkIssuer for Issuer {
    fn issue<'a>(
        &'a self,
        value: &'a Secret,
        label: &'a str,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<steward_secrets::IssuedLink, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let link = self
                .links
                .create(value, label, self.ttl)
                .await
                .map_err(|e| format!("cannot store the one-time secret link: {e}"))?;
            Ok(steward_secrets::IssuedLink {
                url: link.url(&self.public_url),
                expires_at_ms: link.expires_at.as_millis(),
            })
        })
    }
}

/// Whether `token` has the form of a link token (others are unknown without asking Redis).
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    })
}

/// A link's id: the SHA-256 of its token, hex.
fn id_of(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The id a key of a link (`<ns>:sl:{<id>}:v`) names.
pub(crate) fn id_in_key(key: &str) -> Option<&str> {
    let start = key.find(":sl:{")? + 5;
    let end = start + key[start..].find('}')?;
    Some(&key[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_ids() {
        let token = format!("{TOKEN_PREFIX}{}", B64.encode([7u8; 32]));
        assert!(well_formed(&token));
        assert!(!well_formed("sl_short"));
        assert!(!well_formed(&token.replace("sl_", "xx_")));
        assert!(!well_formed(&format!("{token}!")));
        let id = id_of(&token);
        assert_eq!(id.len(), 64);
        assert!(!id.contains(&token[3..]));
        let keys = Keys::new("ns", 4).unwrap();
        assert_eq!(id_in_key(&keys.secret_link(&id)), Some(id.as_str()));
        let url = NewLink {
            token: Secret::from("sl_x"),
            expires_at: Timestamp::from_micros(0),
        }
        .url("https://steward.msp.example/");
        assert_eq!(url.expose(), "https://steward.msp.example/s/sl_x");
        assert_eq!(format!("{url:?}"), "[secret]");
    }
}
