//! Configuration: defaults, then a TOML file, then `STEWARD_` environment variables
//! (`STEWARD_WORKER__CLAIM_IDLE=10s`: `__` separates sections, `_` stands for `-`), then flags.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_schemas::Dur;

use crate::keys::Keys;

/// Everything a Steward process is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Where runs live.
    pub redis: RedisConfig,
    /// Step workers.
    pub worker: WorkerConfig,
    /// The timer scheduler.
    pub scheduler: SchedulerConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// The keys secrets are stored encrypted with. Since v0.2.
    pub secrets: SecretsConfig,
    /// `/metrics` on serve and workers. Since v0.3.
    pub metrics: MetricsConfig,
    /// What is removed as it grows: dead stream consumers, ended runs. Since v0.3.
    pub housekeeping: HousekeepingConfig,
    /// How much one run may store. Since v0.3.
    pub limits: LimitsConfig,
    /// Microsoft 365: where Microsoft is, and Steward's app registration. Since v0.3.
    pub m365: M365Config,
    /// The RMM that runs on-prem scripts (Datto RMM). Since v0.3.
    pub rmm: RmmConfig,
    /// The simulated world (`steward sandbox`) every connector talks to instead of the real
    /// services, for tests and dry runs. Since v0.3.
    pub sandbox: SandboxConfig,
}

/// Microsoft 365: the services' base URLs and Steward's multi-tenant app registration (its
/// client id, and its client secret from the environment only). Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct M365Config {
    /// The identity platform (tokens, consent).
    pub login_url: String,
    /// Microsoft Graph v1.0.
    pub graph_url: String,
    /// Exchange Online (the admin API).
    pub outlook_url: String,
    /// The client id of Steward's app registration, used when a tenant is connected without
    /// its own.
    pub client_id: Option<String>,
    /// The app's client secret: from the environment only (`STEWARD_M365__CLIENT_SECRET`),
    /// refused in a config file. Stored sealed with each tenant connection made with it.
    pub client_secret: Option<Secret>,
    /// Where Microsoft sends the browser back after consent (the app registration must list
    /// it); default `<http.public-url>/v1/tenants/callback`.
    pub redirect_uri: Option<String>,
    /// How long a consent URL can be used.
    pub consent_ttl: Dur,
}

impl Default for M365Config {
    fn default() -> Self {
        Self {
            login_url: "https://login.microsoftonline.com".to_owned(),
            graph_url: "https://graph.microsoft.com/v1.0".to_owned(),
            outlook_url: "https://outlook.office365.com".to_owned(),
            client_id: None,
            client_secret: None,
            redirect_uri: None,
            consent_ttl: Dur::secs(15 * 60),
        }
    }
}

/// The RMM (Datto RMM): `STEWARD_RMM__DATTO_API_URL`, `…__DATTO_API_KEY`, `…__DATTO_API_SECRET`,
/// `…__DATTO_COMPONENT_UID`. Without them a worker has no on-prem ops (they fail with the fix).
/// Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RmmConfig {
    /// The Datto platform's API URL, e.g. `https://merlot-api.centrastage.net`.
    pub datto_api_url: Option<String>,
    /// The Datto API key (Setup → Users → Generate API Keys).
    pub datto_api_key: Option<Secret>,
    /// The Datto API secret.
    pub datto_api_secret: Option<Secret>,
    /// The uid of Steward's runner component in the Datto account (`deploy/rmm`).
    pub datto_component_uid: Option<String>,
    /// Steward's budget of Datto requests per rolling minute, all workers together (Datto's
    /// account limit is 600).
    pub requests_per_minute: u32,
    /// The URL runners reach Steward's API at (default: `http.public-url`).
    pub steward_url: Option<String>,
    /// How often a waiting on-prem step asks the RMM for its job when no callback came.
    pub poll: Dur,
}

impl Default for RmmConfig {
    fn default() -> Self {
        Self {
            datto_api_url: None,
            datto_api_key: None,
            datto_api_secret: None,
            datto_component_uid: None,
            requests_per_minute: 500,
            steward_url: None,
            poll: Dur::secs(30),
        }
    }
}

/// The sandbox. Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// The sandbox's URL (`http://127.0.0.1:8090`): when set, the Microsoft 365 connectors use
    /// its `/login`, `/graph/v1.0` and `/outlook` instead of `m365.*-url`.
    pub url: Option<String>,
}

impl Config {
    /// The Microsoft 365 connectors' base URLs: the sandbox's when `sandbox.url` is set.
    pub fn m365_bases(&self) -> (String, String, String) {
        match &self.sandbox.url {
            Some(u) => {
                let u = u.trim_end_matches('/');
                (
                    format!("{u}/login"),
                    format!("{u}/graph/v1.0"),
                    format!("{u}/outlook"),
                )
            }
            None => (
                self.m365.login_url.clone(),
                self.m365.graph_url.clone(),
                self.m365.outlook_url.clone(),
            ),
        }
    }
}

/// How much one run may store (bytes of JSON). Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A run's inputs: a larger start is refused with 413 naming this setting.
    pub max_input_bytes: usize,
    /// One step's output: a larger one is replaced by a note naming this setting.
    pub max_output_bytes: usize,
    /// A run's document when it is created (inputs, company settings, steps): 413 beyond.
    pub max_document_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::store::Limits::default();
        Self {
            max_input_bytes: d.max_input_bytes,
            max_output_bytes: d.max_output_bytes,
            max_document_bytes: d.max_document_bytes,
        }
    }
}

impl LimitsConfig {
    /// The store's limits.
    pub fn store_limits(&self) -> crate::store::Limits {
        crate::store::Limits {
            max_input_bytes: self.max_input_bytes,
            max_output_bytes: self.max_output_bytes,
            max_document_bytes: self.max_document_bytes,
        }
    }
}

/// Housekeeping beside every scheduler (see `crate::housekeeping`). Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HousekeepingConfig {
    /// How often it runs.
    pub every: Dur,
    /// How long after they ended runs that completed, were cancelled or rolled back are kept
    /// (with their history); `0s`: forever. Runs that ended `rollback_failed` are always kept.
    pub retention: Dur,
    /// How long a step-stream consumer that holds no job (a stopped worker's) must have been
    /// idle before it is removed.
    pub consumer_idle: Dur,
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        Self {
            every: Dur::secs(600),
            retention: Dur::secs(90 * 86_400),
            consumer_idle: Dur::secs(3600),
        }
    }
}

impl HousekeepingConfig {
    /// The housekeeping task's settings.
    pub fn settings(&self) -> crate::housekeeping::HousekeepingConfig {
        crate::housekeeping::HousekeepingConfig {
            every: self.every.get(),
            retention: Some(self.retention.get()).filter(|d| !d.is_zero()),
            consumer_idle: self.consumer_idle.get(),
            batch: 500,
        }
    }
}

/// `/metrics`: served by `steward serve` beside the API, and by each `steward worker` on its own
/// listener. Since v0.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where a worker serves `/metrics` (`--metrics`), e.g. `127.0.0.1:9185`; none by default.
    pub listen: Option<String>,
    /// A token `/metrics` requires (`Authorization: Bearer <token>`), on serve and workers;
    /// none by default (anyone who reaches the port may read it). Prefer
    /// `STEWARD_METRICS__TOKEN` to writing it in the file.
    pub token: Option<Secret>,
}

/// Redis.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RedisConfig {
    /// The server's URL (`redis://host:port/db`, `rediss://` for TLS).
    pub url: String,
    /// The prefix of every key, so several installations can share a server.
    pub namespace: String,
    /// How many shards runs are spread over (each has its own step stream and timer index).
    /// Fixed for an installation: every process must use the same number. 1 to 1000.
    #[serde(deserialize_with = "shards")]
    pub shards: u16,
    /// How long a request may take before it counts as failed.
    pub response_timeout: Dur,
    /// When a new run counts as started, i.e. what a power loss may lose: `everysec` (up to a
    /// second of runs, with the AOF's default fsync), `always` (none; the server must have
    /// `appendfsync always`), `waitaof` (none; `WAITAOF` after each new run, Redis 7.2+).
    /// Checked against the server at start. Since v0.3.
    pub durability: crate::store::Durability,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted_url(&self.url))
            .field("namespace", &self.namespace)
            .field("shards", &self.shards)
            .field("response_timeout", &self.response_timeout)
            .field("durability", &self.durability)
            .finish()
    }
}

/// A Redis URL fit to show in a message or a log: without its password (`redis://user:pw@…`,
/// or `?pass=` on a Unix socket URL).
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            if u.query_pairs().any(|(k, _)| k == "pass") {
                let kept: Vec<(String, String)> = u
                    .query_pairs()
                    .filter(|(k, _)| k != "pass")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                if kept.is_empty() {
                    u.set_query(None);
                } else {
                    u.query_pairs_mut().clear().extend_pairs(kept);
                }
            }
            u.to_string()
        }
        // Not a URL: hide anything that could be credentials (`scheme://user:pw@host`).
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}://[redacted]{}", &url[..start], &url[at..])
            }
            (None, Some(at)) => format!("[redacted]{}", &url[at..]),
            _ => url.to_owned(),
        },
    }
}

/// Reads `redis.shards` with the rule `--shards` uses ([`crate::keys::check_shards`]), so an
/// out-of-range count is refused with the same words wherever it is written.
fn shards<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct Shards;
    impl serde::de::Visitor<'_> for Shards {
        type Value = u16;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a shard count from 1 to {}", crate::keys::MAX_SHARDS)
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u16, E> {
            crate::keys::check_shards(n).map_err(E::custom)
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u16, E> {
            crate::keys::check_shards(i64::try_from(n).unwrap_or(i64::MAX)).map_err(E::custom)
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u16, E> {
            crate::keys::parse_shards(text).map_err(E::custom)
        }
    }
    d.deserialize_any(Shards)
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".to_owned(),
            namespace: "steward".to_owned(),
            shards: 8,
            response_timeout: Dur::secs(5),
            durability: crate::store::Durability::default(),
        }
    }
}

/// Step workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// How many steps one worker process runs at once.
    pub concurrency: usize,
    /// How long a job may sit with a worker that stopped renewing it before another takes it
    /// over (the time to recover from a crashed worker).
    pub claim_idle: Dur,
    /// Deliveries without an outcome after which a job is parked as poison.
    pub max_deliveries: u32,
    /// How long an idle worker's blocking read lasts before it is renewed.
    pub block: Dur,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            claim_idle: Dur::secs(30),
            max_deliveries: 5,
            block: Dur::secs(5),
        }
    }
}

/// The timer scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often it looks for due timers when none were due.
    pub tick: Dur,
    /// How many due timers it takes per shard per round.
    pub batch: usize,
    /// How often the watchdog looks for running runs that nothing would move. Since v0.3.
    pub watchdog_every: Dur,
    /// How long such a run must stay unchanged before the watchdog repairs or pauses it.
    /// Since v0.3.
    pub stuck_after: Dur,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            tick: Dur::millis(100),
            batch: 500,
            watchdog_every: Dur::secs(10),
            stuck_after: Dur::secs(60),
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address it listens on.
    pub listen: String,
    /// The URL technicians reach it at, which signed approval links start with (default: built
    /// from `listen`).
    pub public_url: Option<String>,
    /// The key approval links are signed with: at least 32 random bytes, base64url. Without it,
    /// one is generated once and kept in Redis, so every replica shares it.
    pub link_key: Option<Secret>,
    /// The folder of workflow files the API offers.
    pub workflows: String,
    /// How long a client has to send a request's head, from opening the connection or from
    /// the last response on it; slower or idle connections are closed. Since v0.3.
    pub header_timeout: Dur,
    /// How long a client has to send a request's whole body (408 after). Since v0.3.
    pub body_timeout: Dur,
    /// How many connections are served at once; one more is answered 503 and closed. Keep it
    /// below the process's file limit (`LimitNOFILE` in the systemd unit). Since v0.3.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            public_url: None,
            link_key: None,
            workflows: "workflows".to_owned(),
            header_timeout: Dur::secs(10),
            body_timeout: Dur::secs(30),
            max_connections: 1024,
        }
    }
}

impl HttpConfig {
    /// The server loop's limits.
    pub fn limits(&self) -> crate::api::server::Limits {
        crate::api::server::Limits {
            header_timeout: self.header_timeout.get(),
            body_timeout: self.body_timeout.get(),
            max_connections: self.max_connections,
        }
    }
}

/// The keys secrets are stored encrypted with (secret run inputs, one-time secret links, tenant
/// credentials): AES-256-GCM, see `engine/src/secrets`. Since v0.2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The id of the key new secrets are sealed with. Older keys stay in the keyring so what they
    /// sealed still opens until `steward secrets rotate` has sealed it again under this one.
    pub active_key: Option<String>,
    /// A folder of key files, one per key: `<id>.key` holding 32 random bytes in base64
    /// (`openssl rand -base64 32`), readable by Steward only.
    pub key_dir: Option<String>,
    /// Keys as `ID:KEY,ID:KEY`, from the environment only (`STEWARD_SECRETS__KEYS`): refused
    /// in a config file.
    pub keys: Option<Secret>,
    /// For demos and development only: generate a key (id `dev`) and keep it in Redis, beside
    /// what it protects. Never in production.
    pub dev_key: bool,
    /// How long a one-time secret link works before it is burnt unread.
    pub link_ttl: Dur,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            active_key: None,
            key_dir: None,
            keys: None,
            dev_key: false,
            link_ttl: Dur::secs(7 * 86_400),
        }
    }
}

impl SecretsConfig {
    /// Whether any key is configured (or the dev key asked for).
    pub fn is_configured(&self) -> bool {
        self.active_key.is_some() || self.key_dir.is_some() || self.keys.is_some() || self.dev_key
    }
}

/// A secret setting: never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A configuration that cannot be used; the message names the source, the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (if any), then the `STEWARD_…` variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree = toml::Value::try_from(Self::default())
            .map_err(|e| ConfigError(format!("defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "{}: cannot read the config file: {e}",
                    path.display()
                ))
            })?;
            let overlay: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            if overlay.get("secrets").and_then(|s| s.get("keys")).is_some() {
                return Err(ConfigError(format!(
                    "{}: secrets.keys: key material does not belong in the config file; put each key in its own file under secrets.key-dir (`<id>.key`, readable by Steward only), or set STEWARD_SECRETS__KEYS in the service's environment",
                    path.display()
                )));
            }
            if overlay
                .get("m365")
                .and_then(|s| s.get("client-secret"))
                .is_some()
            {
                return Err(ConfigError(format!(
                    "{}: m365.client-secret: the app's client secret does not belong in the config file; set STEWARD_M365__CLIENT_SECRET in the service's environment",
                    path.display()
                )));
            }
            merge(&mut tree, overlay);
            // Check the file on its own so errors name it.
            tree.clone()
                .try_into::<Self>()
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        }
        for (name, value) in env {
            let Some(path) = name.strip_prefix("STEWARD_") else {
                continue;
            };
            // Config keys always have a section (`STEWARD_REDIS__URL`); other STEWARD_ variables
            // (STEWARD_TOKEN, STEWARD_API_URL, STEWARD_CONFIG, STEWARD_LOG, …) belong to the CLI.
            if !path.contains("__") {
                continue;
            }
            let parts: Vec<String> = path
                .split("__")
                .map(|p| p.to_ascii_lowercase().replace('_', "-"))
                .collect();
            if parts.len() != 2 || parts.iter().any(String::is_empty) {
                return Err(ConfigError(format!(
                    "{name}: write STEWARD_<SECTION>__<KEY>, e.g. STEWARD_REDIS__URL or STEWARD_WORKER__CONCURRENCY"
                )));
            }
            // A value that looks like a number is a number for a numeric key and text for a
            // text key (`STEWARD_REDIS__NAMESPACE=2024`). The value is never echoed: it may be a
            // secret.
            let mut tries = Vec::with_capacity(2);
            if let Ok(n) = value.parse::<i64>() {
                tries.push(toml::Value::Integer(n));
            }
            if let Ok(b) = value.parse::<bool>() {
                tries.push(toml::Value::Boolean(b));
            }
            tries.push(toml::Value::String(value.clone()));
            let mut first_error = None;
            let mut accepted = None;
            for parsed in tries {
                let mut one = toml::map::Map::new();
                let mut inner = toml::map::Map::new();
                inner.insert(parts[1].clone(), parsed);
                one.insert(parts[0].clone(), toml::Value::Table(inner));
                let mut candidate = tree.clone();
                merge(&mut candidate, toml::Value::Table(one));
                match candidate.clone().try_into::<Self>() {
                    Ok(_) => {
                        accepted = Some(candidate);
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.message().trim().to_owned());
                    }
                }
            }
            tree = accepted.ok_or_else(|| {
                ConfigError(format!(
                    "{name}: {}",
                    first_error.unwrap_or_else(|| "not a valid value".to_owned())
                ))
            })?;
        }
        tree.try_into()
            .map_err(|e: toml::de::Error| ConfigError(e.to_string()))
    }

    /// Checks cross-field rules; call once at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Keys::new(&self.redis.namespace, self.redis.shards)
            .map_err(|e| ConfigError(e.to_string()))?;
        if let Some(seeds) = crate::db::cluster_seeds(&self.redis.url) {
            seeds.map_err(|e| {
                ConfigError(format!(
                    "redis.url `{}`: {e}",
                    redacted_url(&self.redis.url)
                ))
            })?;
        } else {
            url::Url::parse(&self.redis.url)
                .ok()
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                .ok_or_else(|| {
                    ConfigError(format!(
                        "redis.url `{}`: write e.g. redis://127.0.0.1:6379/ (rediss:// for TLS, redis+cluster://HOST:PORT,HOST:PORT/ for a Redis Cluster)",
                        redacted_url(&self.redis.url)
                    ))
                })?;
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 10_000 {
            return Err(ConfigError(format!(
                "worker.concurrency = {}: use 1 to 10000",
                self.worker.concurrency
            )));
        }
        if self.worker.claim_idle.get() < Duration::from_millis(200) {
            return Err(ConfigError(format!(
                "worker.claim-idle = {}: use at least 200ms (leases are renewed every quarter of it)",
                self.worker.claim_idle
            )));
        }
        if self.worker.max_deliveries == 0 {
            return Err(ConfigError(
                "worker.max-deliveries = 0: use at least 1".to_owned(),
            ));
        }
        if self.worker.block.get() < Duration::from_millis(10) {
            return Err(ConfigError(format!(
                "worker.block = {}: use at least 10ms",
                self.worker.block
            )));
        }
        if let Some(key) = &self.http.link_key {
            let bytes = crate::links::LinkSigner::decode_key(&key.0)
                .map_err(|e| ConfigError(format!("http.link-key: {e}")))?;
            crate::links::LinkSigner::new(bytes).map_err(|e| ConfigError(format!("http.link-key: {e}; make one with `openssl rand -base64 32 | tr '+/' '-_' | tr -d '='`")))?;
        }
        if let Some(u) = &self.http.public_url
            && url::Url::parse(u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .is_none()
        {
            return Err(ConfigError(format!(
                "http.public-url `{u}`: write e.g. https://steward.msp.example"
            )));
        }
        if let Some(id) = &self.secrets.active_key {
            steward_secrets::check_key_id(id)
                .map_err(|e| ConfigError(format!("secrets.active-key: {e}")))?;
        }
        if let Some(keys) = &self.secrets.keys {
            steward_secrets::parse_key_list(&keys.0, "STEWARD_SECRETS__KEYS")
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        if self.secrets.link_ttl.get() < Duration::from_secs(60) {
            return Err(ConfigError(format!(
                "secrets.link-ttl = {}: use at least 1m",
                self.secrets.link_ttl
            )));
        }
        if self.http.header_timeout.get() < Duration::from_millis(100)
            || self.http.body_timeout.get() < Duration::from_millis(100)
        {
            return Err(ConfigError(format!(
                "http.header-timeout = {}, http.body-timeout = {}: use at least 100ms each",
                self.http.header_timeout, self.http.body_timeout
            )));
        }
        if self.http.max_connections == 0 || self.http.max_connections > 1_000_000 {
            return Err(ConfigError(format!(
                "http.max-connections = {}: use 1 to 1000000 (and raise LimitNOFILE to match)",
                self.http.max_connections
            )));
        }
        if self.housekeeping.every.get() < Duration::from_secs(1)
            || self.housekeeping.consumer_idle.get() < Duration::from_secs(60)
        {
            return Err(ConfigError(format!(
                "housekeeping.every = {}, housekeeping.consumer-idle = {}: use at least 1s and 1m",
                self.housekeeping.every, self.housekeeping.consumer_idle
            )));
        }
        let l = &self.limits;
        if [l.max_input_bytes, l.max_output_bytes, l.max_document_bytes]
            .iter()
            .any(|n| *n < 1024 || *n > 64 * 1024 * 1024)
        {
            return Err(ConfigError(
                "limits.max-input-bytes, max-output-bytes and max-document-bytes: use 1024 to 67108864 each".to_owned(),
            ));
        }
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError(format!(
                "metrics.listen `{l}`: write an address and port, e.g. 127.0.0.1:9185"
            )));
        }
        if let Some(t) = &self.metrics.token
            && (t.0.len() < 16 || t.0.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(ConfigError(
                "metrics.token: use at least 16 characters without spaces (e.g. `openssl rand -hex 24`)".to_owned(),
            ));
        }
        if self.scheduler.watchdog_every.get() < Duration::from_millis(100)
            || self.scheduler.stuck_after.get() < Duration::from_secs(1)
        {
            return Err(ConfigError(format!(
                "scheduler.watchdog-every = {}, scheduler.stuck-after = {}: use at least 100ms and 1s",
                self.scheduler.watchdog_every, self.scheduler.stuck_after
            )));
        }
        let (login, graph, outlook) = self.m365_bases();
        let what = if self.sandbox.url.is_some() {
            "sandbox.url"
        } else {
            "m365.login-url, m365.graph-url and m365.outlook-url"
        };
        for u in [&login, &graph, &outlook] {
            if url::Url::parse(u)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .is_none()
            {
                return Err(ConfigError(format!(
                    "{what}: `{u}` is not an http(s) URL; write e.g. http://127.0.0.1:8090"
                )));
            }
        }
        if let Some(r) = &self.m365.redirect_uri
            && url::Url::parse(r)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .is_none()
        {
            return Err(ConfigError(format!(
                "m365.redirect-uri `{r}`: write e.g. https://steward.msp.example/v1/tenants/callback"
            )));
        }
        if self.rmm.requests_per_minute == 0 || self.rmm.requests_per_minute > 590 {
            return Err(ConfigError(format!(
                "rmm.requests-per-minute = {}: use 1 to 590 (Datto allows 600 per minute for the whole account)",
                self.rmm.requests_per_minute
            )));
        }
        if self.scheduler.tick.get().is_zero() || self.scheduler.batch == 0 {
            return Err(ConfigError(
                "scheduler.tick and scheduler.batch must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/steward.toml");
        assert_eq!(
            Config::load(Some(&path), Vec::new()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn layers_apply_in_order_and_errors_name_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("steward.toml");
        std::fs::write(
            &file,
            "[redis]\nshards = 4\nnamespace = \"acme\"\n[worker]\nclaim-idle = \"10s\"\n",
        )
        .unwrap();
        let env = vec![
            ("STEWARD_WORKER__CONCURRENCY".to_owned(), "64".to_owned()),
            ("STEWARD_REDIS__NAMESPACE".to_owned(), "acme2".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.redis.shards, 4);
        assert_eq!(c.redis.namespace, "acme2");
        assert_eq!(c.worker.claim_idle, Dur::secs(10));
        assert_eq!(c.worker.concurrency, 64);
        assert_eq!(c.worker.block, Dur::secs(5));
        c.validate().unwrap();

        let err = Config::load(
            None,
            vec![("STEWARD_WORKER__CONCURRENCY".to_owned(), "lots".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("STEWARD_WORKER__CONCURRENCY:")
                && err.to_string().contains("expected usize"),
            "{err}"
        );
        let err = Config::load(
            None,
            vec![("STEWARD_WORKER__CONCURRENCY".to_owned(), "-1".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("STEWARD_WORKER__CONCURRENCY:")
                && err.to_string().contains("expected usize"),
            "{err}"
        );
        let err = Config::load(
            None,
            vec![("STEWARD_WORKER__CLAIM_IDLE".to_owned(), "soon".to_owned())],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("write a number and a unit"),
            "{err}"
        );
        std::fs::write(&file, "[redis]\nshard = 4\n").unwrap();
        let err = Config::load(Some(&file), Vec::new()).unwrap_err();
        assert!(
            err.to_string().contains("steward.toml")
                && err.to_string().contains("unknown field `shard`"),
            "{err}"
        );
        let mut bad = Config::default();
        bad.redis.namespace = "a:b".to_owned();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("redis namespace `a:b`")
        );
        bad = Config::default();
        bad.redis.url = "http://x".to_owned();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("redis.url")
        );
    }

    #[test]
    fn other_steward_variables_are_left_to_the_cli() {
        let env = [
            ("STEWARD_TOKEN", "stw_secret"),
            ("STEWARD_API_URL", "http://127.0.0.1:8080"),
            ("STEWARD_CONFIG", "/etc/steward/steward.toml"),
            ("STEWARD_LOG", "debug"),
            ("STEWARD_TEST_LOG", "1"),
            ("STEWARD_SANDBOX_WEBHOOK_SECRET", "s3cret"),
            ("STEWARD_WORKER__CONCURRENCY", "7"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.worker.concurrency, 7);
        for bad in ["STEWARD_REDIS__URL__X", "STEWARD___URL", "STEWARD_REDIS__"] {
            let err = Config::load(None, vec![(bad.to_owned(), "x".to_owned())]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("{bad}: write STEWARD_<SECTION>__<KEY>")),
                "{err}"
            );
        }
    }

    #[test]
    fn numeric_text_is_text_for_text_keys_and_values_are_never_echoed() {
        let env = [
            ("STEWARD_REDIS__NAMESPACE", "2024"),
            ("STEWARD_HTTP__LINK_KEY", "12345678901234567"),
            ("STEWARD_HTTP__WORKFLOWS", "42"),
            ("STEWARD_REDIS__SHARDS", "16"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env).unwrap();
        assert_eq!(c.redis.namespace, "2024");
        assert_eq!(c.redis.shards, 16);
        assert_eq!(c.http.workflows, "42");
        assert_eq!(
            c.http.link_key,
            Some(Secret("12345678901234567".to_owned()))
        );
        // A misnamed secret is refused by its name, without its value.
        let err = Config::load(
            None,
            vec![(
                "STEWARD_HTTP__LINKKEY".to_owned(),
                "hunter2-very-secret".to_owned(),
            )],
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("STEWARD_HTTP__LINKKEY:")
                && err.to_string().contains("unknown field")
                && !err.to_string().contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_cluster_url_names_its_seed_nodes() {
        let mut c = Config::default();
        for ok in [
            "redis+cluster://127.0.0.1:7000/",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
            "rediss+cluster://steward:pw@db1.example:6380,db2.example:6380/",
        ] {
            c.redis.url = ok.to_owned();
            assert!(c.validate().is_ok(), "{ok}: {:?}", c.validate());
        }
        assert_eq!(
            crate::db::cluster_seeds("redis+cluster://u:pw@a:7000,b:7001/?protocol=resp3")
                .unwrap()
                .unwrap(),
            vec![
                "redis://u:pw@a:7000/?protocol=resp3".to_owned(),
                "redis://u:pw@b:7001/?protocol=resp3".to_owned(),
            ]
        );
        assert!(crate::db::cluster_seeds("redis://a:7000/").is_none());
        for bad in [
            "redis+cluster://",
            "redis+cluster://:hunter2@,/",
            "redis+cluster://a:7000,b:notaport/",
        ] {
            c.redis.url = bad.to_owned();
            let err = c.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("redis.url")
                    && err.contains("redis+cluster://")
                    && !err.contains("hunter2"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn redis_passwords_stay_out_of_messages_and_debug_output() {
        for (url, shown) in [
            (
                "redis://:hunter2@db.example:6379/0",
                "redis://db.example:6379/0",
            ),
            (
                "rediss://steward:hunter2@db.example:6380/",
                "rediss://steward@db.example:6380/",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2",
                "redis+unix:///run/redis.sock?db=1",
            ),
            (
                "unix:///run/redis.sock?pass=hunter2",
                "unix:///run/redis.sock",
            ),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/"),
            ("not a url://user:hunter2@x", "not a url://[redacted]@x"),
            (
                "redis+cluster://:hunter2@10.0.0.1:7000,10.0.0.2:7000/",
                "redis+cluster://[redacted]@10.0.0.1:7000,10.0.0.2:7000/",
            ),
            (
                "redis+cluster://steward:hunter2@10.0.0.1:7000/",
                "redis+cluster://steward@10.0.0.1:7000/",
            ),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
        let mut c = Config::default();
        c.redis.url = "redis://:hunter2@db.example:6379/".to_owned();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("db.example"),
            "{debug}"
        );
        c.redis.url = "http://:hunter2@db.example/".to_owned();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("redis.url `http://db.example/`") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn secrets_keys_come_from_files_or_the_environment_never_the_config_file() {
        let env = [
            ("STEWARD_SECRETS__DEV_KEY", "true"),
            ("STEWARD_SECRETS__ACTIVE_KEY", "k2"),
            (
                "STEWARD_SECRETS__KEYS",
                "k2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ),
            ("STEWARD_SECRETS__LINK_TTL", "2d"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env).unwrap();
        assert!(c.secrets.dev_key && c.secrets.is_configured());
        assert_eq!(c.secrets.active_key.as_deref(), Some("k2"));
        assert_eq!(c.secrets.link_ttl, Dur::secs(2 * 86_400));
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("AAAAAAAA"), "keys never print");
        assert!(!Config::default().secrets.is_configured());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("steward.toml");
        std::fs::write(&file, "[secrets]\nkeys = \"k1:c2VjcmV0\"\n").unwrap();
        let err = Config::load(Some(&file), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("secrets.keys: key material does not belong in the config file")
                && err.contains("STEWARD_SECRETS__KEYS")
                && !err.contains("c2VjcmV0"),
            "{err}"
        );
        let mut bad = Config::default();
        bad.secrets.keys = Some(Secret("k1:c2VjcmV0".to_owned()));
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("key `k1` (STEWARD_SECRETS__KEYS)") && !err.contains("c2VjcmV0"),
            "{err}"
        );
        bad = Config::default();
        bad.secrets.active_key = Some("k:1".to_owned());
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("secrets.active-key: key id `k:1`")
        );
    }
}
