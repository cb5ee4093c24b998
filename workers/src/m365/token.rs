//! Access tokens from the Microsoft identity platform: app-only (client credentials) per
//! (tenant, resource), and delegated (refresh token) per (tenant, resource).
//!
//! **Caching.** A token is used until five minutes before it expires, from this process's memory
//! and, across processes, from Redis.
//!
//! **Single flight.** However many steps of however many workers want a token for the same
//! tenant, resource and grant at once, one request goes to the token endpoint: inside a process
//! the callers queue on one async mutex per key; across processes the first takes a short Redis
//! lock (`SET NX PX`), asks, stores the token in Redis and releases the lock, while the others
//! poll the cached token every few milliseconds until it appears (or the lock disappears without
//! one, when they try for the lock themselves). A failure is left in Redis for a few seconds, so
//! the waiters answer with it instead of each asking again.
//!
//! **Rotation.** A delegated refresh returns a new refresh token; it is stored through
//! [`TenantCredentials::rotate_refresh_token`] (compare and set) *before* the access token that
//! came with it is used or cached. If it cannot be stored, the access token is thrown away and the
//! call fails retryably: the old refresh token stays valid (Microsoft does not revoke it), so
//! nothing is lost.
//!
//! **Classification** (from `error` and `error_codes`, never the text; domain notes §7):
//! terminal, someone must consent or fix the app again: AADSTS 700082 (expired by inactivity),
//! 70008, 50173 (revoked), 700084, 70043, 50076/50079/50072 (MFA), 65001 and 90094 (consent),
//! 53003/530032/530034 (Conditional Access), 50020/50177, 50034, 50057, 50053, 50126, 500011
//! (resource not in the tenant), 700016 (app not in the tenant), 7000215/7000222/7000218 (bad or
//! expired secret), 700027/700021/700023/700024 (a refused certificate assertion), 9002313 and 70000 (malformed or foreign refresh token), 90002 and 5000224
//! (tenant gone), 90099, and `invalid_grant` or `invalid_client` with any other code;
//! transient: HTTP 5xx, 429, `temporarily_unavailable`, AADSTS 50033, 50087, 90006, 90033,
//! 90090, 90024, 90055, 50196, timeouts and refused connections. Any other 4xx is a request
//! Steward got wrong: terminal, but not a reason to ask for consent.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::m365::credentials::{self, Connection, RefreshReport, Secret, TenantCredentials};
use crate::m365::error::Class;

/// Tokens are used until this long before they expire.
pub const EARLY_REFRESH: Duration = Duration::from_secs(5 * 60);

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Microsoft Graph.
    Graph,
    /// Exchange Online.
    Outlook,
}

impl Resource {
    /// The `.default` scope of the resource. The resource's identifier, not its address: it is
    /// the same against the sandbox.
    pub fn scope(self) -> &'static str {
        match self {
            Self::Graph => "https://graph.microsoft.com/.default",
            Self::Outlook => "https://outlook.office365.com/.default",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Graph => "graph",
            Self::Outlook => "outlook",
        }
    }
}

/// Whose rights a token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grant {
    /// The app's own (client credentials).
    App,
    /// The partner technician's, through the tenant's delegated refresh token.
    Delegated,
}

impl Grant {
    fn key(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Delegated => "delegated",
        }
    }
}

/// An access token and when it expires.
#[derive(Clone)]
pub struct AccessToken {
    /// The bearer token.
    pub value: Secret,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &self.value)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AccessToken {
    /// Whether it can still be used (more than [`EARLY_REFRESH`] left).
    pub fn fresh(&self, now: SystemTime) -> bool {
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left > EARLY_REFRESH)
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Microsoft refused for good: an administrator must consent again, or the app's
    /// credentials must be fixed.
    #[error(
        "tenant {tenant}: Microsoft refused the {grant} token ({error}, AADSTS{code}): {summary}; {fix}"
    )]
    Reconsent {
        /// The tenant.
        tenant: String,
        /// `app` or `delegated`.
        grant: &'static str,
        /// The OAuth `error` (`invalid_grant`…).
        error: String,
        /// The AADSTS number (0 when Microsoft sent none).
        code: u32,
        /// The first sentence of Microsoft's description.
        summary: String,
        /// What to do.
        fix: &'static str,
    },
    /// Microsoft refused a request Steward made wrongly (a bug or a misconfiguration).
    #[error(
        "tenant {tenant}: the token endpoint refused the request ({error}, AADSTS{code}): {summary}"
    )]
    Rejected {
        /// The tenant.
        tenant: String,
        /// The OAuth `error`.
        error: String,
        /// The AADSTS number (0 when none).
        code: u32,
        /// The first sentence of Microsoft's description.
        summary: String,
    },
    /// A transient failure: another try may work.
    #[error("tenant {tenant}: the token endpoint failed for now ({what}); it will be tried again")]
    Transient {
        /// The tenant.
        tenant: String,
        /// What happened (status, code or transport error).
        what: String,
        /// The AADSTS code, when there was one.
        code: Option<u32>,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
    },
    /// The tenant has no delegated refresh token.
    #[error(
        "tenant {tenant} has no delegated access (no refresh token); connect it with consent (`steward tenants connect`)"
    )]
    NoRefreshToken {
        /// The tenant.
        tenant: String,
    },
    /// The credential store failed.
    #[error("tenant {tenant}: {source}")]
    Store {
        /// The tenant.
        tenant: String,
        /// The store's error.
        source: credentials::Error,
    },
    /// Redis (the shared token cache) failed.
    #[error("the shared token cache is unavailable: {0}")]
    Cache(String),
}

impl TokenError {
    /// Retryable or terminal.
    pub fn class(&self) -> Class {
        match self {
            Self::Reconsent { .. } | Self::Rejected { .. } | Self::NoRefreshToken { .. } => {
                Class::Terminal
            }
            Self::Transient { .. } | Self::Cache(_) => Class::Retryable,
            Self::Store { source, .. } => match source {
                credentials::Error::Unavailable(_) => Class::Retryable,
                credentials::Error::Unusable { .. } => Class::Terminal,
            },
        }
    }

    /// Whether the tenant needs a new consent.
    pub fn needs_reconsent(&self) -> bool {
        matches!(self, Self::Reconsent { .. } | Self::NoRefreshToken { .. })
    }

    /// `AADSTSnnnn`, when Microsoft gave a code.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Reconsent { code, .. } | Self::Rejected { code, .. } if *code != 0 => {
                Some(format!("AADSTS{code}"))
            }
            Self::Transient { code: Some(c), .. } => Some(format!("AADSTS{c}")),
            Self::NoRefreshToken { .. } => Some("no_refresh_token".to_owned()),
            _ => None,
        }
    }

    /// `Retry-After`, when the endpoint sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// AADSTS codes that need an administrator (consent, credentials, tenant).
const TERMINAL_CODES: &[u32] = &[
    700082, 70008, 50173, 700084, 70043, 50076, 50079, 50072, 65001, 90094, 53003, 530032, 530034,
    50020, 50177, 50034, 50057, 50053, 50126, 500011, 700016, 7000215, 7000222, 7000218, 9002313,
    70000, 90002, 5000224, 90099, 700027, 700021, 700023, 700024,
];

/// AADSTS codes that are worth another try.
const TRANSIENT_CODES: &[u32] = &[50033, 50087, 90006, 90033, 90090, 90024, 90055, 50196];

/// What to do about a terminal code.
fn fix_for(code: u32, grant: Grant) -> &'static str {
    match code {
        700082 | 70008 | 50173 | 9002313 | 70000 | 700084 | 70043 => {
            "the delegated refresh token is no longer valid: reconnect the tenant (`steward tenants connect`)"
        }
        65001 | 90094 | 500011 | 700016 | 90099 => {
            "Steward's app is not (or no longer) consented in this tenant: have a tenant administrator consent again (`steward tenants connect`)"
        }
        7000215 | 7000222 | 7000218 => {
            "the app's client secret is wrong or expired: store a current secret for the tenant connection"
        }
        700027 | 700021 | 700023 => {
            "the app's certificate credential was refused (not uploaded to the app registration, expired, or signed with another key): upload the certificate to the app registration, or set a current one (`steward tenants certificate`)"
        }
        700024 => {
            "the client assertion was outside its valid time range: this machine's clock is off; synchronise it (NTP)"
        }
        90002 | 5000224 => "the tenant does not exist (any more): check the company's tenant id",
        50076 | 50079 | 50072 | 53003 | 530032 | 530034 | 50020 | 50177 | 50034 | 50057 | 50053
        | 50126 => {
            "the partner technician's account cannot sign in to this tenant (MFA, Conditional Access, GDAP or the account itself): fix it, then reconnect the tenant"
        }
        _ => match grant {
            Grant::Delegated => "reconnect the tenant (`steward tenants connect`)",
            Grant::App => "check the tenant connection's app credentials and consent",
        },
    }
}

/// The AAD error envelope.
#[derive(Debug, Deserialize)]
struct AadError {
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// Classifies a token endpoint error answer.
fn classify(
    tenant: &str,
    grant: Grant,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> TokenError {
    let Ok(aad) = serde_json::from_slice::<AadError>(body) else {
        return if status >= 500 || status == 429 {
            TokenError::Transient {
                tenant: tenant.to_owned(),
                what: format!("HTTP {status}"),
                code: None,
                retry_after,
            }
        } else {
            TokenError::Rejected {
                tenant: tenant.to_owned(),
                error: format!("HTTP {status}"),
                code: 0,
                summary: "the answer was not the identity platform's error format".to_owned(),
            }
        };
    };
    let code = aad.error_codes.first().copied().unwrap_or(0);
    // The description starts "AADSTSnnnn: <sentence>. Trace ID: …": keep the sentence only.
    let summary = aad
        .error_description
        .split_once(": ")
        .map_or(aad.error_description.as_str(), |(_, rest)| rest)
        .split(" Trace ID:")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let transient = status >= 500
        || status == 429
        || aad.error == "temporarily_unavailable"
        || TRANSIENT_CODES.contains(&code);
    if transient {
        return TokenError::Transient {
            tenant: tenant.to_owned(),
            what: format!("HTTP {status} {} AADSTS{code}", aad.error),
            code: (code != 0).then_some(code),
            retry_after,
        };
    }
    let terminal = TERMINAL_CODES.contains(&code)
        || matches!(
            aad.error.as_str(),
            "invalid_grant"
                | "invalid_client"
                | "unauthorized_client"
                | "invalid_tenant"
                | "interaction_required"
                | "consent_required"
        );
    if terminal {
        TokenError::Reconsent {
            tenant: tenant.to_owned(),
            grant: grant.key(),
            error: aad.error,
            code,
            summary,
            fix: fix_for(code, grant),
        }
    } else {
        TokenError::Rejected {
            tenant: tenant.to_owned(),
            error: aad.error,
            code,
            summary,
        }
    }
}

/// Seals what the token cache keeps in Redis. The `secrets` module provides the real sealing
/// (AES-256-GCM with key ids); [`Plain`] keeps tokens as they are, for tests and for Redis
/// instances nobody else can read.
pub trait Seal: Send + Sync + fmt::Debug + 'static {
    /// Seals `plain`, bound to `context` (the cache key).
    fn seal(&self, context: &str, plain: &str) -> Result<String, String>;
    /// Opens what [`Seal::seal`] made; `Err` when it cannot (another key, tampering).
    fn open(&self, context: &str, sealed: &str) -> Result<String, String>;
}

/// No sealing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Seal for Plain {
    fn seal(&self, _context: &str, plain: &str) -> Result<String, String> {
        Ok(plain.to_owned())
    }

    fn open(&self, _context: &str, sealed: &str) -> Result<String, String> {
        Ok(sealed.to_owned())
    }
}

/// The shared cache: a Redis connection and the namespace its keys live under.
#[derive(Clone)]
pub struct SharedCache {
    /// The connection.
    pub redis: crate::RedisConn,
    /// The namespace (`steward` by default).
    pub namespace: String,
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The token cache's Redis keys for one (tenant, resource, grant).
struct Keys {
    token: String,
    lock: String,
    failure: String,
}

impl Keys {
    fn new(ns: &str, key: &Key) -> Self {
        // One hash tag per tenant: the three keys of a flight share a slot.
        let base = format!(
            "{ns}:m365:{{tok:{}}}:{}:{}",
            key.tenant,
            key.resource.key(),
            key.grant.key()
        );
        Self {
            token: format!("{base}:token"),
            lock: format!("{base}:lock"),
            failure: format!("{base}:failure"),
        }
    }
}

/// Releases the lock only if we still hold it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Drops the cached token only if it is the one given (a 401 proved it bad).
const DROP_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tenant: String,
    resource: Resource,
    grant: Grant,
}

#[derive(Serialize, Deserialize)]
struct Cached {
    token: String,
    /// Unix milliseconds.
    expires_at: u64,
}

/// A failure shared with the waiters of a flight.
#[derive(Serialize, Deserialize)]
struct SharedFailure {
    class: String,
    message: String,
    code: Option<u32>,
}

/// Settings of the token client.
#[derive(Debug, Clone)]
pub struct Config {
    /// The identity platform's base URL: `https://login.microsoftonline.com`, or the
    /// sandbox's `…/login`. Requests go to `{base}/{tenant}/oauth2/v2.0/token`.
    pub login_base: url::Url,
    /// How long a flight's Redis lock lives if its holder dies.
    pub lock_ttl: Duration,
    /// How long a waiter waits for another process's flight.
    pub wait: Duration,
    /// How long a failure is shared with waiters.
    pub failure_ttl: Duration,
}

impl Config {
    /// Defaults for `login_base`.
    pub fn new(login_base: url::Url) -> Self {
        Self {
            login_base,
            lock_ttl: Duration::from_secs(30),
            wait: Duration::from_secs(35),
            failure_ttl: Duration::from_secs(5),
        }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Requests sent to the token endpoint by this process.
    pub requests: u64,
    /// Tokens served from this process's memory.
    pub local_hits: u64,
    /// Tokens read from the shared cache.
    pub shared_hits: u64,
}

/// The token client. Cheap to clone.
#[derive(Clone)]
pub struct TokenClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    http: reqwest::Client,
    credentials: Arc<dyn TenantCredentials>,
    shared: Option<SharedCache>,
    seal: Arc<dyn Seal>,
    local: Mutex<HashMap<Key, AccessToken>>,
    flights: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    stats: Mutex<Stats>,
}

impl fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenClient")
            .field("login_base", &self.inner.config.login_base.as_str())
            .field("shared", &self.inner.shared)
            .finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl TokenClient {
    /// A token client. Without `shared`, single flight holds within this process only.
    pub fn new(
        config: Config,
        http: reqwest::Client,
        credentials: Arc<dyn TenantCredentials>,
        shared: Option<SharedCache>,
        seal: Arc<dyn Seal>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                http,
                credentials,
                shared,
                seal,
                local: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                stats: Mutex::new(Stats::default()),
            }),
        }
    }

    /// The credential store.
    pub fn credentials(&self) -> &Arc<dyn TenantCredentials> {
        &self.inner.credentials
    }

    /// This process's counters.
    pub fn stats(&self) -> Stats {
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// A usable token for `conn`'s tenant: cached, or fetched once for everyone waiting.
    pub async fn token(
        &self,
        conn: &Connection,
        resource: Resource,
        grant: Grant,
    ) -> Result<AccessToken, TokenError> {
        let key = Key {
            tenant: conn.tenant.to_ascii_lowercase(),
            resource,
            grant,
        };
        if let Some(t) = self.local_get(&key) {
            self.count(|s| s.local_hits += 1);
            return Ok(t);
        }
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(key.clone()).or_default().clone()
        };
        let _turn = flight.lock().await;
        if let Some(t) = self.local_get(&key) {
            self.count(|s| s.local_hits += 1);
            return Ok(t);
        }
        let token = match &self.inner.shared {
            Some(shared) => self.shared_flight(shared, conn, &key).await?,
            None => self.request(conn, &key).await?,
        };
        self.inner
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token.clone());
        Ok(token)
    }

    /// Forgets `bad` (the service refused it: revoked, or expired early), here and in Redis, so
    /// the next [`TokenClient::token`] fetches a new one.
    pub async fn invalidate(&self, tenant: &str, resource: Resource, grant: Grant, bad: &Secret) {
        let key = Key {
            tenant: tenant.to_ascii_lowercase(),
            resource,
            grant,
        };
        {
            let mut local = self.inner.local.lock().unwrap_or_else(|e| e.into_inner());
            if local.get(&key).is_some_and(|t| &t.value == bad) {
                local.remove(&key);
            }
        }
        if let Some(shared) = &self.inner.shared {
            let keys = Keys::new(&shared.namespace, &key);
            let mut conn = shared.redis.clone();
            let current: Option<String> = redis::cmd("GET")
                .arg(&keys.token)
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            let Some(raw) = current else { return };
            let is_bad = self
                .inner
                .seal
                .open(&keys.token, &raw)
                .ok()
                .and_then(|s| serde_json::from_str::<Cached>(&s).ok())
                .is_some_and(|c| c.token == bad.expose());
            if is_bad {
                let _: Result<i64, _> = redis::Script::new(DROP_IF)
                    .key(&keys.token)
                    .arg(&raw)
                    .invoke_async(&mut conn)
                    .await;
            }
        }
    }

    /// Redeems the tenant's delegated refresh token now, whatever is cached (the scheduled
    /// refresh that keeps a tenant's token alive). Goes through the same flight as
    /// [`TokenClient::token`], so it never races a step's refresh.
    pub async fn refresh_delegated(
        &self,
        conn: &Connection,
        resource: Resource,
    ) -> Result<AccessToken, TokenError> {
        let key = Key {
            tenant: conn.tenant.to_ascii_lowercase(),
            resource,
            grant: Grant::Delegated,
        };
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|e| e.into_inner());
            flights.entry(key.clone()).or_default().clone()
        };
        let _turn = flight.lock().await;
        let token = self.request(conn, &key).await?;
        if let Some(shared) = &self.inner.shared {
            self.shared_put(shared, &key, &token).await;
        }
        self.inner
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token.clone());
        Ok(token)
    }

    fn local_get(&self, key: &Key) -> Option<AccessToken> {
        let local = self.inner.local.lock().unwrap_or_else(|e| e.into_inner());
        local
            .get(key)
            .filter(|t| t.fresh(SystemTime::now()))
            .cloned()
    }

    async fn shared_get(
        &self,
        shared: &SharedCache,
        keys: &Keys,
    ) -> Result<Option<AccessToken>, TokenError> {
        let mut conn = shared.redis.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(&keys.token)
            .query_async(&mut conn)
            .await
            .map_err(|e| TokenError::Cache(e.to_string()))?;
        let Some(raw) = raw else { return Ok(None) };
        let Ok(cached) = self
            .inner
            .seal
            .open(&keys.token, &raw)
            .map_err(|_| ())
            .and_then(|s| serde_json::from_str::<Cached>(&s).map_err(|_| ()))
        else {
            // Unreadable (sealed with a retired key, or damaged): treat as absent.
            return Ok(None);
        };
        let token = AccessToken {
            value: Secret::new(cached.token),
            expires_at: UNIX_EPOCH + Duration::from_millis(cached.expires_at),
        };
        Ok(token.fresh(SystemTime::now()).then_some(token))
    }

    async fn shared_put(&self, shared: &SharedCache, key: &Key, token: &AccessToken) {
        let keys = Keys::new(&shared.namespace, key);
        let Ok(ttl) = token
            .expires_at
            .duration_since(SystemTime::now() + EARLY_REFRESH)
        else {
            return;
        };
        let Ok(plain) = serde_json::to_string(&Cached {
            token: token.value.expose().to_owned(),
            expires_at: unix_ms(token.expires_at),
        }) else {
            return;
        };
        let Ok(sealed) = self.inner.seal.seal(&keys.token, &plain) else {
            return;
        };
        let mut conn = shared.redis.clone();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let _: Result<(), _> = redis::cmd("SET")
            .arg(&keys.token)
            .arg(sealed)
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await;
    }

    async fn shared_flight(
        &self,
        shared: &SharedCache,
        conn: &Connection,
        key: &Key,
    ) -> Result<AccessToken, TokenError> {
        let keys = Keys::new(&shared.namespace, key);
        let mut redis = shared.redis.clone();
        let deadline = Instant::now() + self.inner.config.wait;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(t) = self.shared_get(shared, &keys).await? {
                self.count(|s| s.shared_hits += 1);
                return Ok(t);
            }
            let failure: Option<String> = redis::cmd("GET")
                .arg(&keys.failure)
                .query_async(&mut redis)
                .await
                .map_err(|e| TokenError::Cache(e.to_string()))?;
            if let Some(f) = failure.and_then(|f| serde_json::from_str::<SharedFailure>(&f).ok()) {
                return Err(shared_failure(&conn.tenant, key.grant, f));
            }
            let owner = {
                let mut b = [0u8; 16];
                rand::rng().fill_bytes(&mut b);
                hex::encode(b)
            };
            let got: Option<String> = redis::cmd("SET")
                .arg(&keys.lock)
                .arg(&owner)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(self.inner.config.lock_ttl.as_millis()).unwrap_or(30_000))
                .query_async(&mut redis)
                .await
                .map_err(|e| TokenError::Cache(e.to_string()))?;
            if got.is_some() {
                // Someone may have finished between our read and our lock.
                let result = match self.shared_get(shared, &keys).await {
                    Ok(Some(t)) => Ok(t),
                    _ => self.request(conn, key).await,
                };
                match &result {
                    Ok(t) => self.shared_put(shared, key, t).await,
                    Err(e) => {
                        let f = SharedFailure {
                            class: match e.class() {
                                Class::Retryable => "transient".to_owned(),
                                Class::Terminal => "terminal".to_owned(),
                            },
                            message: e.to_string(),
                            code: e
                                .code()
                                .and_then(|c| c.trim_start_matches("AADSTS").parse().ok()),
                        };
                        if let Ok(text) = serde_json::to_string(&f) {
                            let _: Result<(), _> = redis::cmd("SET")
                                .arg(&keys.failure)
                                .arg(text)
                                .arg("PX")
                                .arg(
                                    u64::try_from(self.inner.config.failure_ttl.as_millis())
                                        .unwrap_or(5000),
                                )
                                .query_async(&mut redis)
                                .await;
                        }
                    }
                }
                let _: Result<i64, _> = redis::Script::new(RELEASE)
                    .key(&keys.lock)
                    .arg(&owner)
                    .invoke_async(&mut redis)
                    .await;
                return result;
            }
            // Another process is asking: wait for its token (or for its lock to go away).
            loop {
                if Instant::now() > deadline {
                    return Err(TokenError::Transient {
                        tenant: conn.tenant.clone(),
                        what: "another worker's token request did not finish in time".to_owned(),
                        code: None,
                        retry_after: None,
                    });
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
                if let Some(t) = self.shared_get(shared, &keys).await? {
                    self.count(|s| s.shared_hits += 1);
                    return Ok(t);
                }
                let held: bool = redis::cmd("EXISTS")
                    .arg(&keys.lock)
                    .query_async(&mut redis)
                    .await
                    .map_err(|e| TokenError::Cache(e.to_string()))?;
                if !held {
                    break;
                }
            }
        }
    }

    /// One request to the token endpoint (no cache).
    async fn request(&self, conn: &Connection, key: &Key) -> Result<AccessToken, TokenError> {
        let tenant = conn.tenant.as_str();
        let refresh = match key.grant {
            Grant::App => None,
            Grant::Delegated => Some(
                self.inner
                    .credentials
                    .refresh_token(tenant)
                    .await
                    .map_err(|source| TokenError::Store {
                        tenant: tenant.to_owned(),
                        source,
                    })?
                    .ok_or_else(|| TokenError::NoRefreshToken {
                        tenant: tenant.to_owned(),
                    })?,
            ),
        };
        let mut url = self.inner.config.login_base.clone();
        url.path_segments_mut()
            .map_err(|()| TokenError::Rejected {
                tenant: tenant.to_owned(),
                error: "configuration".to_owned(),
                code: 0,
                summary: "the login base URL cannot take a path".to_owned(),
            })?
            .pop_if_empty()
            .extend([tenant, "oauth2", "v2.0", "token"]);
        let auth = client_auth(conn, &url)?;
        let mut form: Vec<(&str, &str)> = vec![("client_id", conn.client_id.as_str())];
        form.extend(auth.iter().map(|(k, v)| (*k, v.expose())));
        match &refresh {
            None => {
                form.push(("grant_type", "client_credentials"));
                form.push(("scope", key.resource.scope()));
            }
            Some(rt) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", rt.expose()));
                form.push(("scope", key.resource.scope()));
            }
        }
        self.count(|s| s.requests += 1);
        let sent = self.inner.http.post(url).form(&form).send().await;
        let result = match sent {
            Err(e) => Err(TokenError::Transient {
                tenant: tenant.to_owned(),
                what: transport_reason(&e),
                code: None,
                retry_after: None,
            }),
            Ok(resp) => self.answer(conn, key, refresh.as_ref(), resp).await,
        };
        if key.grant == Grant::Delegated {
            let report = match &result {
                Ok(_) => RefreshReport::Refreshed,
                Err(e) if e.needs_reconsent() => RefreshReport::ReconsentNeeded {
                    code: e.code().unwrap_or_default(),
                    message: e.to_string(),
                },
                Err(e) => RefreshReport::Failing {
                    code: e.code().unwrap_or_default(),
                    message: e.to_string(),
                },
            };
            self.inner.credentials.report(tenant, report).await;
        }
        if let Err(e) = &result {
            tracing::warn!(tenant, grant = key.grant.key(), resource = key.resource.key(), error = %e, "token request failed");
        }
        result
    }

    async fn answer(
        &self,
        conn: &Connection,
        key: &Key,
        refresh: Option<&Secret>,
        resp: reqwest::Response,
    ) -> Result<AccessToken, TokenError> {
        let tenant = conn.tenant.as_str();
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| TokenError::Transient {
            tenant: tenant.to_owned(),
            what: transport_reason(&e),
            code: None,
            retry_after: None,
        })?;
        if !(200..300).contains(&status) {
            return Err(classify(tenant, key.grant, status, &body, retry_after));
        }
        let ok: Value = serde_json::from_slice(&body).map_err(|_| TokenError::Transient {
            tenant: tenant.to_owned(),
            what: format!("HTTP {status} with a body that is not JSON"),
            code: None,
            retry_after: None,
        })?;
        let (Some(access), Some(expires_in)) = (
            ok.get("access_token").and_then(Value::as_str),
            ok.get("expires_in").and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            }),
        ) else {
            return Err(TokenError::Transient {
                tenant: tenant.to_owned(),
                what: "the answer lacks access_token or expires_in".to_owned(),
                code: None,
                retry_after: None,
            });
        };
        let token = AccessToken {
            value: Secret::new(access),
            expires_at: SystemTime::now() + Duration::from_secs(expires_in),
        };
        if let (Some(old), Some(new)) = (
            refresh,
            ok.get("refresh_token")
                .and_then(Value::as_str)
                .map(Secret::new),
        ) && &new != old
        {
            // Stored before the access token is used: if this fails, the access token is
            // dropped and the old refresh token (still valid) is used next time.
            match self
                .inner
                .credentials
                .rotate_refresh_token(tenant, old, &new)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    tenant,
                    "the tenant's refresh token was rotated by someone else meanwhile; kept theirs"
                ),
                Err(source) => {
                    return Err(TokenError::Store {
                        tenant: tenant.to_owned(),
                        source,
                    });
                }
            }
        }
        Ok(token)
    }
}

/// What redeeming an authorization code gave: the tenant's first delegated refresh token, and
/// who consented (read from the access token's claims; not verified, only shown).
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The delegated refresh token.
    pub refresh_token: Secret,
    /// The tenant's id (`tid`), when the access token names it.
    pub tenant_id: Option<String>,
    /// Who signed in and consented (`upn`), when the access token names them.
    pub user: Option<String>,
}

/// The scope a consent asks for: delegated Graph rights and a refresh token (refresh tokens are
/// not tied to a resource: the same one is redeemed for Exchange Online).
pub const CONSENT_SCOPE: &str = "offline_access https://graph.microsoft.com/.default";

impl TokenClient {
    /// The authorization endpoint of `tenant`: `{login}/{tenant}/oauth2/v2.0/authorize`.
    pub fn authorize_url(&self, tenant: &str) -> Result<url::Url, TokenError> {
        self.endpoint(tenant, "authorize")
    }

    fn endpoint(&self, tenant: &str, last: &str) -> Result<url::Url, TokenError> {
        let mut url = self.inner.config.login_base.clone();
        url.path_segments_mut()
            .map_err(|()| TokenError::Rejected {
                tenant: tenant.to_owned(),
                error: "configuration".to_owned(),
                code: 0,
                summary: "the login base URL cannot take a path".to_owned(),
            })?
            .pop_if_empty()
            .extend([tenant, "oauth2", "v2.0", last]);
        Ok(url)
    }

    /// Redeems an authorization code (the consent flow's last step) with its PKCE verifier:
    /// one request, never retried (a code is single-use).
    pub async fn redeem_code(
        &self,
        conn: &Connection,
        code: &Secret,
        redirect_uri: &str,
        verifier: &Secret,
    ) -> Result<Redeemed, TokenError> {
        let tenant = conn.tenant.as_str();
        let url = self.endpoint(tenant, "token")?;
        let auth = client_auth(conn, &url)?;
        let mut form: Vec<(&str, &str)> = vec![("client_id", conn.client_id.as_str())];
        form.extend(auth.iter().map(|(k, v)| (*k, v.expose())));
        form.extend([
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
            ("scope", CONSENT_SCOPE),
        ]);
        self.count(|s| s.requests += 1);
        let resp = self
            .inner
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Transient {
                tenant: tenant.to_owned(),
                what: transport_reason(&e),
                code: None,
                retry_after: None,
            })?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| TokenError::Transient {
            tenant: tenant.to_owned(),
            what: transport_reason(&e),
            code: None,
            retry_after: None,
        })?;
        if !(200..300).contains(&status) {
            return Err(classify(
                tenant,
                Grant::Delegated,
                status,
                &body,
                retry_after,
            ));
        }
        let ok: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(rt) = ok.get("refresh_token").and_then(Value::as_str) else {
            return Err(TokenError::Rejected {
                tenant: tenant.to_owned(),
                error: "no_refresh_token".to_owned(),
                code: 0,
                summary: "the answer holds no refresh token (was offline_access granted?)"
                    .to_owned(),
            });
        };
        let claims = ok
            .get("access_token")
            .and_then(Value::as_str)
            .and_then(jwt_claims)
            .unwrap_or(Value::Null);
        let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Redeemed {
            refresh_token: Secret::new(rt),
            tenant_id: text("tid"),
            user: text("upn").or_else(|| text("preferred_username")),
        })
    }
}

/// The claims of a JWT, unverified (for display only).
fn jwt_claims(token: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn shared_failure(tenant: &str, grant: Grant, f: SharedFailure) -> TokenError {
    // The waiters report what the flight's holder met, in its words.
    if f.class == "terminal" {
        TokenError::Reconsent {
            tenant: tenant.to_owned(),
            grant: grant.key(),
            error: "shared".to_owned(),
            code: f.code.unwrap_or(0),
            summary: f.message,
            fix: "see the first failure above",
        }
    } else {
        TokenError::Transient {
            tenant: tenant.to_owned(),
            what: f.message,
            code: f.code,
            retry_after: None,
        }
    }
}

/// A transport error in words, without the URL (it may carry a tenant, never a secret, but the
/// caller already names the tenant).
pub(crate) fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else if e.is_body() || e.is_decode() {
        "the connection broke while reading the answer".to_owned()
    } else if e.is_request() {
        "the connection broke while sending the request".to_owned()
    } else {
        "the connection failed".to_owned()
    }
}

/// `Retry-After` in seconds (the only form Microsoft sends).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// How the app proves itself at the token endpoint `url`: its client secret, or a client
/// assertion signed with its certificate (then no secret is sent).
fn client_auth(
    conn: &Connection,
    url: &url::Url,
) -> Result<Vec<(&'static str, Secret)>, TokenError> {
    match &conn.certificate {
        None => Ok(vec![("client_secret", conn.client_secret.clone())]),
        Some(cert) => {
            let assertion = cert.assertion(&conn.client_id, url.as_str()).map_err(|e| {
                TokenError::Rejected {
                    tenant: conn.tenant.clone(),
                    error: "certificate".to_owned(),
                    code: 0,
                    summary: e.to_string(),
                }
            })?;
            Ok(vec![
                (
                    "client_assertion_type",
                    Secret::new(crate::m365::assertion::ASSERTION_TYPE),
                ),
                ("client_assertion", assertion),
            ])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(error: &str, code: u32) -> Vec<u8> {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: Something happened. Trace ID: abc Correlation ID: def Timestamp: x"),
            "error_codes": [code],
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn aadsts_codes_are_classified_by_code_not_text() {
        for code in [700082, 50173, 65001, 7000215, 7000222, 9002313, 700016] {
            let e = classify(
                "t",
                Grant::Delegated,
                400,
                &body("invalid_grant", code),
                None,
            );
            assert!(e.needs_reconsent(), "{code}: {e}");
            assert_eq!(e.class(), Class::Terminal);
            assert_eq!(e.code(), Some(format!("AADSTS{code}")));
            assert!(e.to_string().contains("Something happened"), "{e}");
            assert!(!e.to_string().contains("Trace ID"), "{e}");
        }
        let e = classify("t", Grant::App, 401, &body("invalid_client", 7000215), None);
        assert!(e.to_string().contains("client secret"), "{e}");
        let e = classify("t", Grant::App, 401, &body("invalid_client", 700027), None);
        assert_eq!(e.class(), Class::Terminal);
        assert!(e.to_string().contains("steward tenants certificate"), "{e}");
        let e = classify("t", Grant::App, 401, &body("invalid_client", 700024), None);
        assert!(e.to_string().contains("clock"), "{e}");
        // An unknown code under invalid_grant is still terminal.
        assert!(
            classify("t", Grant::Delegated, 400, &body("invalid_grant", 1), None).needs_reconsent()
        );
        for (status, error, code) in [
            (503, "temporarily_unavailable", 50033),
            (429, "temporarily_unavailable", 90024),
            (400, "invalid_request", 90033),
            (500, "server_error", 1),
        ] {
            let e = classify(
                "t",
                Grant::App,
                status,
                &body(error, code),
                Some(Duration::from_secs(3)),
            );
            assert_eq!(e.class(), Class::Retryable, "{status} {code}: {e}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        }
        let e = classify("t", Grant::App, 400, &body("invalid_scope", 1002012), None);
        assert!(matches!(e, TokenError::Rejected { .. }), "{e}");
        assert!(!e.needs_reconsent());
        assert_eq!(
            classify("t", Grant::App, 502, b"<html>", None).class(),
            Class::Retryable
        );
    }

    #[test]
    fn tokens_are_fresh_until_five_minutes_before_expiry() {
        let now = SystemTime::now();
        let t = |s| AccessToken {
            value: Secret::new("tok-secret-value"),
            expires_at: now + Duration::from_secs(s),
        };
        assert!(t(301).fresh(now));
        assert!(!t(300).fresh(now));
        assert!(!t(0).fresh(now));
        assert!(!format!("{:?}", t(1)).contains("tok-secret-value"));
    }
}
