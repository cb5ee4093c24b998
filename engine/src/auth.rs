//! Technicians and API tokens on Redis (all in the `{auth}` slot).
//!
//! A token is shown once when it is made (`stw_` and 43 characters of base64url, 256 random
//! bits); Redis keeps only its SHA-256, which is enough for a secret of that strength.

use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use steward_core::text::is_email;
use steward_schemas::{CompanyScope, Role, Technician, TechnicianId, TokenId, TokenInfo};

use crate::clock::Clock;
use crate::db::Db;
use crate::store::Store;

/// An auth failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The token is unknown, revoked, or its technician disabled.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A technician with that email exists.
    #[error("a technician with email `{0}` already exists")]
    EmailTaken(String),
    /// Bad input.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and the fix.
        message: String,
    },
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Other writers kept changing the record; nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// Stored data does not parse.
    #[error("stored auth data is corrupt: {0}")]
    Corrupt(String),
}

/// `Result` for auth calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stored token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredToken {
    info: TokenInfo,
    hash: String,
}

/// A token's record as read, to revoke it without reading it again.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    stored: StoredToken,
    key: String,
}

impl TokenRecord {
    /// The token's record.
    pub fn info(&self) -> &TokenInfo {
        &self.stored.info
    }
}

/// How often a technician's change is read, applied and written again after another writer got
/// there first.
const UPDATE_ATTEMPTS: u32 = 8;

/// Replaces a record only if it is still exactly as read. KEYS: the record. ARGV: the record as
/// read, the new one.
const REPLACE_IF_UNCHANGED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

/// Technicians and tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    db: Db,
    ns: String,
    clock: Arc<dyn Clock>,
}

/// The prefix of every API token.
pub const TOKEN_PREFIX: &str = "stw_";

/// The SHA-256 of a token, hex: how it is stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::Corrupt(e.to_string())
}

fn printable(name: &str, max: usize) -> bool {
    !name.is_empty() && name.chars().count() <= max && !name.chars().any(char::is_control)
}

/// Checks a technician's name: 1 to 200 printable characters once trimmed; the trimmed name.
pub fn validate_name(name: &str) -> Result<&str> {
    let name = name.trim();
    if printable(name, 200) {
        Ok(name)
    } else {
        Err(Error::Invalid {
            field: "name",
            message: "give a name of 1 to 200 printable characters".to_owned(),
        })
    }
}

impl Auth {
    /// Technicians and tokens under namespace `ns`.
    pub fn new(db: Db, ns: &str, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            ns: ns.to_owned(),
            clock,
        }
    }

    /// Technicians and tokens in the run store's Redis and namespace, on its clock.
    pub fn for_store(store: &Store) -> Self {
        Self::new(
            store.db().clone(),
            store.keys().namespace(),
            store.clock().clone(),
        )
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{{auth}}:{rest}", self.ns)
    }

    /// Adds a technician.
    pub async fn add_technician(
        &self,
        email: &str,
        name: &str,
        role: Role,
        companies: CompanyScope,
    ) -> Result<Technician> {
        let email = email.trim().to_lowercase();
        if !is_email(&email) {
            return Err(Error::Invalid {
                field: "email",
                message: format!("`{email}` is not an email address"),
            });
        }
        let name = validate_name(name)?;
        let tech = Technician {
            id: TechnicianId::from_ulid(ulid::Ulid::new()),
            email: email.clone(),
            name: name.to_owned(),
            role,
            companies,
            disabled: false,
            created_at: self.clock.now(),
        };
        let json = serde_json::to_string(&tech).map_err(corrupt)?;
        let script = redis::Script::new(
            r"
            if redis.call('SET', KEYS[1], ARGV[1], 'NX') == false then return 0 end
            redis.call('SET', KEYS[2], ARGV[2])
            redis.call('SADD', KEYS[3], ARGV[1])
            return 1",
        );
        let mut inv = script.prepare_invoke();
        inv.key(self.key(&format!("tech-email:{email}")))
            .key(self.key(&format!("tech:{}", tech.id)))
            .key(self.key("techs"))
            .arg(tech.id.to_string())
            .arg(json);
        let created: i64 = self.db.script(&inv).await?;
        if created == 0 {
            return Err(Error::EmailTaken(email));
        }
        Ok(tech)
    }

    /// A technician by id.
    pub async fn technician(&self, id: TechnicianId) -> Result<Option<Technician>> {
        Ok(self.technician_as_stored(id).await?.map(|(t, _)| t))
    }

    /// A technician and their record's JSON as stored.
    async fn technician_as_stored(&self, id: TechnicianId) -> Result<Option<(Technician, String)>> {
        let json: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(self.key(&format!("tech:{id}"))))
            .await?;
        json.map(|j| Ok((serde_json::from_str(&j).map_err(corrupt)?, j)))
            .transpose()
    }

    /// A technician by email.
    pub async fn technician_by_email(&self, email: &str) -> Result<Option<Technician>> {
        let id: Option<String> = self
            .db
            .query(
                redis::cmd("GET")
                    .arg(self.key(&format!("tech-email:{}", email.trim().to_lowercase()))),
            )
            .await?;
        match id.and_then(|i| i.parse().ok()) {
            Some(id) => self.technician(id).await,
            None => Ok(None),
        }
    }

    /// Every technician, by email.
    pub async fn technicians(&self) -> Result<Vec<Technician>> {
        let ids: Vec<String> = self
            .db
            .query(redis::cmd("SMEMBERS").arg(self.key("techs")))
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|i| self.key(&format!("tech:{i}"))).collect();
        let jsons: Vec<Option<String>> = self.db.query(redis::cmd("MGET").arg(keys)).await?;
        let mut techs: Vec<Technician> = jsons
            .into_iter()
            .flatten()
            .map(|j| serde_json::from_str(&j).map_err(corrupt))
            .collect::<Result<_>>()?;
        techs.sort_by(|a, b| a.email.cmp(&b.email));
        Ok(techs)
    }

    /// The technicians as approver checks see them (who exists, who is enabled, who is an
    /// admin), in two round trips.
    pub async fn directory(&self) -> Result<steward_core::company::Directory> {
        Ok(steward_core::company::Directory::new(
            &self.technicians().await?,
        ))
    }

    /// Changes a technician (role, scope, name, disabled; not the email) without losing a
    /// concurrent change: `edit` is applied to the record as stored, and the result is written
    /// only if the record is still as read; otherwise it is read and edited again. After a few
    /// lost races, [`Error::Conflict`].
    pub async fn update_technician(
        &self,
        id: TechnicianId,
        mut edit: impl FnMut(&mut Technician),
    ) -> Result<Technician> {
        let script = redis::Script::new(REPLACE_IF_UNCHANGED);
        for _ in 0..UPDATE_ATTEMPTS {
            let (mut tech, before) = self
                .technician_as_stored(id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("no technician `{id}`")))?;
            let email = tech.email.clone();
            edit(&mut tech);
            // The id and the email are what the record is found by: they stay.
            tech.id = id;
            tech.email = email;
            let after = serde_json::to_string(&tech).map_err(corrupt)?;
            let mut inv = script.prepare_invoke();
            inv.key(self.key(&format!("tech:{id}")))
                .arg(before)
                .arg(after);
            let replaced: i64 = self.db.script(&inv).await?;
            if replaced == 1 {
                return Ok(tech);
            }
        }
        Err(Error::Conflict(format!(
            "technician `{id}` kept changing while this change was applied ({UPDATE_ATTEMPTS} attempts); nothing was changed; try again"
        )))
    }

    /// Saves a changed technician (role, scope, name, disabled); the email cannot change. It
    /// overwrites whatever changed since the record was read: for a concurrent writer, use
    /// [`Auth::update_technician`].
    pub async fn save_technician(&self, tech: &Technician) -> Result<()> {
        let json = serde_json::to_string(tech).map_err(corrupt)?;
        self.db
            .query::<()>(
                redis::cmd("SET")
                    .arg(self.key(&format!("tech:{}", tech.id)))
                    .arg(json)
                    .arg("XX"),
            )
            .await?;
        Ok(())
    }

    /// Makes a token for a technician: the record, and the token itself (shown once).
    pub async fn create_token(
        &self,
        technician: TechnicianId,
        name: &str,
    ) -> Result<(TokenInfo, String)> {
        let name = name.trim();
        if !printable(name, 100) {
            return Err(Error::Invalid {
                field: "name",
                message: "name the token (1 to 100 printable characters), e.g. `laptop`".to_owned(),
            });
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        let info = TokenInfo {
            id: TokenId::from_ulid(ulid::Ulid::new()),
            technician,
            name: name.to_owned(),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        let hash = token_hash(&token);
        let stored = StoredToken {
            info: info.clone(),
            hash: hash.clone(),
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.key(&format!("token:{hash}")))
            .arg(serde_json::to_string(&stored).map_err(corrupt)?)
            .ignore()
            .cmd("SET")
            .arg(self.key(&format!("token-id:{}", info.id)))
            .arg(&hash)
            .ignore()
            .cmd("SADD")
            .arg(self.key(&format!("tech-tokens:{technician}")))
            .arg(info.id.to_string())
            .ignore();
        self.db.pipe::<()>(&pipe).await?;
        Ok((info, token))
    }

    /// The technician a token belongs to, if the token is valid.
    pub async fn authenticate(&self, token: &str) -> Result<(Technician, TokenInfo)> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return Err(Error::Unauthenticated("not a Steward API token"));
        }
        let json: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(self.key(&format!("token:{}", token_hash(token)))))
            .await?;
        let stored: StoredToken = json
            .map(|j| serde_json::from_str(&j).map_err(corrupt))
            .transpose()?
            .ok_or(Error::Unauthenticated("unknown token"))?;
        if stored.info.revoked_at.is_some() {
            return Err(Error::Unauthenticated("this token was revoked"));
        }
        let tech = self
            .technician(stored.info.technician)
            .await?
            .ok_or(Error::Unauthenticated(
                "the token's technician no longer exists",
            ))?;
        if tech.disabled {
            return Err(Error::Unauthenticated("the token's technician is disabled"));
        }
        Ok((tech, stored.info))
    }

    /// A technician's tokens.
    pub async fn tokens(&self, technician: TechnicianId) -> Result<Vec<TokenInfo>> {
        let ids: Vec<String> = self
            .db
            .query(redis::cmd("SMEMBERS").arg(self.key(&format!("tech-tokens:{technician}"))))
            .await?;
        let ids: Vec<TokenId> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        let mut out: Vec<TokenInfo> = self
            .tokens_by_id(&ids)
            .await?
            .into_iter()
            .flatten()
            .map(|t| t.stored.info)
            .collect();
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    /// Tokens by id (absent ones are `None`): two round trips however many there are.
    async fn tokens_by_id(&self, ids: &[TokenId]) -> Result<Vec<Option<TokenRecord>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let id_keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("token-id:{id}")))
            .collect();
        let hashes: Vec<Option<String>> = self.db.query(redis::cmd("MGET").arg(&id_keys)).await?;
        let keys: Vec<Option<String>> = hashes
            .iter()
            .map(|h| h.as_ref().map(|h| self.key(&format!("token:{h}"))))
            .collect();
        let present: Vec<&String> = keys.iter().flatten().collect();
        let mut jsons: std::vec::IntoIter<Option<String>> = if present.is_empty() {
            Vec::new().into_iter()
        } else {
            let found: Vec<Option<String>> =
                self.db.query(redis::cmd("MGET").arg(&present)).await?;
            found.into_iter()
        };
        keys.into_iter()
            .map(|key| {
                let Some(key) = key else { return Ok(None) };
                let Some(json) = jsons.next().flatten() else {
                    return Ok(None);
                };
                let stored: StoredToken = serde_json::from_str(&json).map_err(corrupt)?;
                Ok(Some(TokenRecord { stored, key }))
            })
            .collect()
    }

    /// A token's record by id.
    pub async fn token(&self, id: TokenId) -> Result<Option<TokenRecord>> {
        Ok(self.tokens_by_id(&[id]).await?.pop().flatten())
    }

    /// Revokes a token; its record, so the caller can check whose it was.
    pub async fn revoke_token(&self, id: TokenId) -> Result<TokenInfo> {
        let token = self
            .token(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no token `{id}`")))?;
        self.revoke(token).await
    }

    /// Revokes a token already read (see [`Auth::token`]); its record.
    pub async fn revoke(&self, token: TokenRecord) -> Result<TokenInfo> {
        let TokenRecord { mut stored, key } = token;
        if stored.info.revoked_at.is_none() {
            stored.info.revoked_at = Some(self.clock.now());
            self.db
                .query::<()>(
                    redis::cmd("SET")
                        .arg(key)
                        .arg(serde_json::to_string(&stored).map_err(corrupt)?),
                )
                .await?;
        }
        Ok(stored.info)
    }

    /// Whether a one-time link's nonce has been used.
    pub async fn nonce_used(&self, nonce: &str) -> Result<bool> {
        let n: u64 = self
            .db
            .query(redis::cmd("EXISTS").arg(self.key(&format!("link-used:{nonce}"))))
            .await?;
        Ok(n > 0)
    }

    /// Makes a one-time link's nonce unused again (its decision could not be recorded).
    pub async fn release_nonce(&self, nonce: &str) -> Result<()> {
        self.db
            .query::<()>(redis::cmd("DEL").arg(self.key(&format!("link-used:{nonce}"))))
            .await?;
        Ok(())
    }

    /// Marks a one-time link's nonce used; false if it already was.
    pub async fn consume_nonce(&self, nonce: &str, ttl_secs: u64) -> Result<bool> {
        let set: Option<String> = self
            .db
            .query(
                redis::cmd("SET")
                    .arg(self.key(&format!("link-used:{nonce}")))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl_secs.max(1)),
            )
            .await?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_hash_the_same_and_differently() {
        assert_eq!(token_hash("stw_a"), token_hash("stw_a"));
        assert_ne!(token_hash("stw_a"), token_hash("stw_b"));
        assert_eq!(token_hash("x").len(), 64);
    }
}
