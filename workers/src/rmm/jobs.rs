//! Runner jobs: the script a quick job's runner component fetches, and the result it posts.
//!
//! A job is created by the step that sends the quick job. It holds the exact script text, the
//! (run, step, seq, phase) it belongs to, the SHA-256 of its token (the token itself is only in
//! the quick job's variables) and an expiry. The token works once for each of the two calls —
//! one script fetch, one result post — for this job only, and not after the expiry; a replay,
//! a foreign token or a late call is refused. Both checks and the state change happen in one
//! Redis script, so two racing calls cannot both pass.

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// How long a job's record is kept after its expiry (its result is read by the step).
const KEEP_AFTER_EXPIRY_MS: u64 = 7 * 24 * 3600 * 1000;

/// The step a job belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The run.
    pub run: String,
    /// The step.
    pub step: String,
    /// The job's sequence number (fences the wake-up).
    pub seq: u32,
    /// `run` or `undo`.
    pub phase: String,
}

/// What the runner posts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerResult {
    /// The script's standard output (it holds the one `STEWARD-RESULT` line).
    pub stdout: String,
    /// Its standard error.
    #[serde(default)]
    pub stderr: String,
    /// The PowerShell process's exit code, when known.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The `STEWARD-RESULT` line's JSON, as the runner parsed it (Steward reads stdout itself;
    /// this is for people reading the job).
    #[serde(default)]
    pub result: Option<Value>,
}

/// Why a runner call is refused. The API answers each the same way (no hint which check
/// failed, except for the caller's own replay).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No such job, or the token is not this job's.
    #[error("unknown job or wrong token")]
    Unknown,
    /// The token expired.
    #[error("the job's token has expired")]
    Expired,
    /// The call was already made with this token.
    #[error("this job's token was already used for that call")]
    Used,
}

/// Why a job store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The runner's call is refused.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Redis is unreachable.
    #[error("cannot reach Redis: {0}")]
    Redis(String),
    /// A stored record is not readable.
    #[error("a runner job record is corrupt: {0}")]
    Corrupt(String),
}

fn redis_err(e: redis::RedisError) -> Error {
    Error::Redis(e.to_string())
}

/// KEYS[1] the job. ARGV[1] the token's SHA-256, ARGV[2] now (ms), ARGV[3] the field that marks
/// the call made (`fetched` or `result`), ARGV[4] the value to store in it.
/// Returns {'ok', script-or-binding} or {'unknown'|'expired'|'used'}.
const USE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local sha = redis.call('HGET', KEYS[1], 'token_sha')
if sha ~= ARGV[1] then return {'unknown'} end
if tonumber(redis.call('HGET', KEYS[1], 'expires_ms')) <= tonumber(ARGV[2]) then return {'expired'} end
if redis.call('HSETNX', KEYS[1], ARGV[3], ARGV[4]) == 0 then return {'used'} end
if ARGV[3] == 'fetched' then return {'ok', redis.call('HGET', KEYS[1], 'script')} end
return {'ok', redis.call('HGET', KEYS[1], 'binding')}
";

/// The runner jobs of one Redis namespace.
#[derive(Clone)]
pub struct Jobs {
    redis: crate::RedisConn,
    namespace: String,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Whether `id` is shaped like a job id (`rj_` and 32 hex digits): anything else is refused
/// before Redis is asked.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("rj_")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl Jobs {
    /// The jobs kept under `namespace`.
    pub fn new(redis: crate::RedisConn, namespace: &str) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}:runner:job:{id}", self.namespace)
    }

    /// Creates a job for `binding` with `script`, valid for `ttl`; returns its id and token.
    pub async fn create(
        &self,
        binding: &Binding,
        script: &str,
        ttl: std::time::Duration,
    ) -> Result<(String, String), Error> {
        let mut idb = [0u8; 16];
        let mut tokb = [0u8; 32];
        {
            let mut rng = rand::rng();
            rng.fill_bytes(&mut idb);
            rng.fill_bytes(&mut tokb);
        }
        let id = format!("rj_{}", hex::encode(idb));
        let token = hex::encode(tokb);
        let expires = now_ms() + ttl.as_millis() as u64;
        let binding = serde_json::to_string(binding).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut conn = self.redis.clone();
        let key = self.key(&id);
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(&key)
            .arg("token_sha")
            .arg(sha(&token))
            .arg("expires_ms")
            .arg(expires)
            .arg("script")
            .arg(script)
            .arg("binding")
            .arg(binding)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&key)
            .arg(expires + KEEP_AFTER_EXPIRY_MS)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok((id, token))
    }

    async fn use_token(
        &self,
        id: &str,
        token: &str,
        field: &str,
        value: &str,
    ) -> Result<String, Error> {
        if !valid_id(id) {
            return Err(Refusal::Unknown.into());
        }
        let mut conn = self.redis.clone();
        let reply: Vec<String> = redis::Script::new(USE)
            .key(self.key(id))
            .arg(sha(token))
            .arg(now_ms())
            .arg(field)
            .arg(value)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(reply.get(1).cloned().unwrap_or_default()),
            Some("expired") => Err(Refusal::Expired.into()),
            Some("used") => Err(Refusal::Used.into()),
            _ => Err(Refusal::Unknown.into()),
        }
    }

    /// The script, for the runner's one fetch.
    pub async fn fetch(&self, id: &str, token: &str) -> Result<String, Error> {
        self.use_token(id, token, "fetched", &now_ms().to_string())
            .await
    }

    /// Stores the runner's one result; returns the step to wake.
    pub async fn post_result(
        &self,
        id: &str,
        token: &str,
        result: &RunnerResult,
    ) -> Result<Binding, Error> {
        let json = serde_json::to_string(result).map_err(|e| Error::Corrupt(e.to_string()))?;
        let b = self.use_token(id, token, "result", &json).await?;
        serde_json::from_str(&b).map_err(|e| Error::Corrupt(e.to_string()))
    }

    /// The posted result, if any.
    pub async fn result(&self, id: &str) -> Result<Option<RunnerResult>, Error> {
        let mut conn = self.redis.clone();
        let r: Option<String> = redis::cmd("HGET")
            .arg(self.key(id))
            .arg("result")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        r.map(|s| serde_json::from_str(&s).map_err(|e| Error::Corrupt(e.to_string())))
            .transpose()
    }

    /// Whether the runner fetched the script (it reached Steward).
    pub async fn fetched(&self, id: &str) -> Result<bool, Error> {
        let mut conn = self.redis.clone();
        let n: i64 = redis::cmd("HEXISTS")
            .arg(self.key(id))
            .arg("fetched")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(n == 1)
    }
}
