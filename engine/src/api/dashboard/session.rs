//! Dashboard sessions and one-time login links, on Redis (in the `{auth}` slot, next to the
//! technicians and tokens).
//!
//! - A session id is 256 random bits, sent only in the `stw_session` cookie; Redis keeps its
//!   SHA-256 (`<ns>:{auth}:session:<hash>`) with an expiry ([`SESSION_TTL`]), so a session ends
//!   by itself, and a copy of Redis holds nothing a browser could present.
//! - Each session has its own CSRF token (256 random bits), checked on every form the dashboard
//!   posts.
//! - Ending a session deletes it (sign out); an admin can end every session of a technician
//!   (`<ns>:{auth}:tech-sessions:<id>` lists them). A session made from an API token ends when
//!   the token is revoked; every session ends when its technician is disabled (both are checked on
//!   each request).
//! - A login link's code is 256 random bits, kept as its SHA-256 for [`LOGIN_LINK_TTL`] and taken
//!   (`GETDEL`) when used: once.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use steward_schemas::{TechnicianId, Timestamp, TokenId};

use crate::auth::token_hash;
use crate::clock::Clock;
use crate::db::Db;
use crate::store::Store;

/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How long a login link can be used.
pub const LOGIN_LINK_TTL: Duration = Duration::from_secs(15 * 60);

/// A signed-in browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Who.
    pub technician: TechnicianId,
    /// The API token it was made from (the session ends when the token is revoked); `None` for
    /// a login link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenId>,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// When it began.
    pub created_at: Timestamp,
    /// When it ends.
    pub expires_at: Timestamp,
}

/// Sessions and login links. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    db: Db,
    ns: String,
    clock: Arc<dyn Clock>,
}

/// 256 random bits, base64url.
pub(crate) fn random_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn corrupt(e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(format!(
        "stored session is corrupt: {e}"
    )))
}

impl Sessions {
    /// Sessions in the run store's Redis and namespace, on its clock.
    pub fn for_store(store: &Store) -> Self {
        Self {
            db: store.db().clone(),
            ns: store.keys().namespace().to_owned(),
            clock: store.clock().clone(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{{auth}}:{rest}", self.ns)
    }

    /// The Redis key of a session (tests expire it to see an expired session handled).
    pub fn session_key(&self, id: &str) -> String {
        self.key(&format!("session:{}", token_hash(id)))
    }

    /// Starts a session for `technician`; its id (for the cookie) and the session.
    pub async fn create(
        &self,
        technician: TechnicianId,
        token: Option<TokenId>,
    ) -> redis::RedisResult<(String, Session)> {
        let id = random_secret();
        let now = self.clock.now();
        let session = Session {
            technician,
            token,
            csrf: random_secret(),
            created_at: now,
            expires_at: now.plus(SESSION_TTL),
        };
        let json = serde_json::to_string(&session).map_err(corrupt)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.session_key(&id))
            .arg(json)
            .arg("EX")
            .arg(SESSION_TTL.as_secs())
            .ignore()
            .cmd("SADD")
            .arg(self.key(&format!("tech-sessions:{technician}")))
            .arg(token_hash(&id))
            .ignore()
            .cmd("EXPIRE")
            .arg(self.key(&format!("tech-sessions:{technician}")))
            .arg(SESSION_TTL.as_secs())
            .ignore();
        self.db.pipe::<()>(&pipe).await?;
        Ok((id, session))
    }

    /// The session with this id, unless it ended.
    pub async fn get(&self, id: &str) -> redis::RedisResult<Option<Session>> {
        if id.is_empty() || id.len() > 100 {
            return Ok(None);
        }
        let json: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(self.session_key(id)))
            .await?;
        let Some(json) = json else { return Ok(None) };
        let session: Session = serde_json::from_str(&json).map_err(corrupt)?;
        // Redis expires the key; the stored end is checked too (a clock the tests move).
        Ok((session.expires_at > self.clock.now()).then_some(session))
    }

    /// Ends a session (sign out).
    pub async fn end(&self, id: &str) -> redis::RedisResult<()> {
        self.db
            .query::<()>(redis::cmd("DEL").arg(self.session_key(id)))
            .await
    }

    /// Ends every session of a technician; how many there were.
    pub async fn end_all(&self, technician: TechnicianId) -> redis::RedisResult<u64> {
        let list = self.key(&format!("tech-sessions:{technician}"));
        let hashes: Vec<String> = self.db.query(redis::cmd("SMEMBERS").arg(&list)).await?;
        let mut del = redis::cmd("DEL");
        del.arg(&list);
        for h in &hashes {
            del.arg(self.key(&format!("session:{h}")));
        }
        let n: u64 = self.db.query(&del).await?;
        Ok(n.saturating_sub(1))
    }

    /// Makes a one-time login link's code for `technician`; the code and when it stops working.
    pub async fn login_code(
        &self,
        technician: TechnicianId,
    ) -> redis::RedisResult<(String, Timestamp)> {
        let code = random_secret();
        self.db
            .query::<()>(
                redis::cmd("SET")
                    .arg(self.key(&format!("login:{}", token_hash(&code))))
                    .arg(technician.to_string())
                    .arg("EX")
                    .arg(LOGIN_LINK_TTL.as_secs()),
            )
            .await?;
        Ok((code, self.clock.now().plus(LOGIN_LINK_TTL)))
    }

    /// Whether a login link's code is still unused and in time (reads; uses nothing).
    pub async fn login_code_valid(&self, code: &str) -> redis::RedisResult<bool> {
        if code.is_empty() || code.len() > 100 {
            return Ok(false);
        }
        let n: u64 = self
            .db
            .query(redis::cmd("EXISTS").arg(self.key(&format!("login:{}", token_hash(code)))))
            .await?;
        Ok(n > 0)
    }

    /// Uses a login link's code: its technician, once; `None` if it is unknown, used or expired.
    pub async fn take_login_code(&self, code: &str) -> redis::RedisResult<Option<TechnicianId>> {
        if code.is_empty() || code.len() > 100 {
            return Ok(None);
        }
        let id: Option<String> = self
            .db
            .query(redis::cmd("GETDEL").arg(self.key(&format!("login:{}", token_hash(code)))))
            .await?;
        Ok(id.and_then(|i| i.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_random_and_compared_whole() {
        let (a, b) = (random_secret(), random_secret());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(same_secret(&a, &a.clone()));
        assert!(!same_secret(&a, &b));
        assert!(!same_secret(&a, &a[..42]));
        assert!(!same_secret("", "x"));
    }
}
