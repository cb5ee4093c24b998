//! Datto RMM API v2 (domain.md §5.1).
//!
//! - Token: `POST {api}/auth/oauth/token`, HTTP Basic `public-client:public`, form
//!   `grant_type=password&username=<API key>&password=<API secret>`. Tokens last 100 hours; the
//!   client renews at [`RENEW_AFTER`] (and once on a 401).
//! - Device uid by hostname: `GET /api/v2/account/devices?hostname=…` (a partial match: the
//!   exact one is picked), cached per process.
//! - Quick job: `PUT /api/v2/device/{uid}/quickjob` with Steward's runner component and its
//!   variables; status `GET /api/v2/job/{uid}/results/{device}` (`jobDeploymentStatus`,
//!   `componentResults[].componentStatus`); stdout `…/stdout`.
//! - Rate limit: Datto allows 600 requests per rolling minute **per account**, for every
//!   user and every process together. Steward keeps its own budget below it
//!   ([`Config::requests_per_minute`], default 500) in one Redis sorted set that every worker
//!   shares, so ten workers do not each believe they may send 500. A 429 backs every worker off
//!   (a shared cool-down key, its `Retry-After`); a 403 that follows 429s is Datto blocking the
//!   account for a while (not a permission error): every worker waits [`BLOCK_WAIT`].

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{Deployment, Device, Error, JobRef, JobStatus, Rmm, Variables};
use crate::op::BoxFuture;

/// Datto's token lifetime.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(100 * 3600);
/// When a cached token is replaced (well before its 100 hours).
pub const RENEW_AFTER: Duration = Duration::from_secs(90 * 3600);
/// How long every worker leaves Datto alone after a 403 that followed 429s (Datto blocks the
/// account "temporarily"; DattoRMM.Core waits 120 s after a 429 — we wait longer after a block).
pub const BLOCK_WAIT: Duration = Duration::from_secs(300);
/// How long after a 429 a 403 is read as the block rather than as a permission error.
const BLOCK_WINDOW: Duration = Duration::from_secs(600);

/// The Datto client's settings.
#[derive(Clone)]
pub struct Config {
    /// The platform's API URL (`https://merlot-api.centrastage.net`), or the sandbox's
    /// `{sandbox}/datto`.
    pub api_url: url::Url,
    /// The API key (the password grant's username).
    pub api_key: String,
    /// The API secret (its password).
    pub api_secret: String,
    /// The uid of Steward's runner component in the account.
    pub component_uid: String,
    /// Steward's own budget per rolling minute, for all workers together (below Datto's 600).
    pub requests_per_minute: u32,
    /// How long one request may take.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url.as_str())
            .field("api_key", &"[redacted]")
            .field("api_secret", &"[redacted]")
            .field("component_uid", &self.component_uid)
            .field("requests_per_minute", &self.requests_per_minute)
            .finish()
    }
}

/// Why the settings are not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Datto RMM setting `{field}`: {problem}; fix: {fix}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: &'static str,
}

impl Config {
    /// Checked settings.
    pub fn new(
        api_url: &str,
        api_key: &str,
        api_secret: &str,
        component_uid: &str,
    ) -> Result<Self, ConfigError> {
        let url = url::Url::parse(api_url.trim_end_matches('/')).map_err(|e| ConfigError {
            field: "api_url",
            problem: format!("`{api_url}` is not a URL ({e})"),
            fix: "give the platform's API URL, e.g. https://merlot-api.centrastage.net",
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError {
                field: "api_url",
                problem: format!("`{api_url}` is not http(s)"),
                fix: "give the platform's API URL, e.g. https://merlot-api.centrastage.net",
            });
        }
        for (field, v, fix) in [
            (
                "api_key",
                api_key,
                "Setup → Users → Generate API Keys in Datto RMM",
            ),
            (
                "api_secret",
                api_secret,
                "Setup → Users → Generate API Keys in Datto RMM",
            ),
            (
                "component_uid",
                component_uid,
                "import deploy/rmm's Steward runner component and give its uid",
            ),
        ] {
            if v.trim().is_empty() {
                return Err(ConfigError {
                    field,
                    problem: "is empty".to_owned(),
                    fix,
                });
            }
        }
        Ok(Self {
            api_url: url,
            api_key: api_key.trim().to_owned(),
            api_secret: api_secret.to_owned(),
            component_uid: component_uid.trim().to_owned(),
            requests_per_minute: 500,
            request_timeout: Duration::from_secs(30),
        })
    }
}

/// Where the shared budget lives.
#[derive(Clone)]
pub struct Shared {
    /// Redis.
    pub redis: crate::RedisConn,
    /// The key namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Takes one request from the shared budget. KEYS[1] the window (sorted set), KEYS[2] the
/// cool-down key (set after a 429 or a block). ARGV[1] now (ms), ARGV[2] the limit per
/// 60 s, ARGV[3] a unique member. Returns 0 when a request may go now, else the ms to wait.
const TAKE: &str = r"
local cool = redis.call('PTTL', KEYS[2])
if cool > 0 then return cool end
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + 60000 - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], 61000)
return 0
";

/// The Datto RMM client. Cheap to share (`Arc`).
pub struct Datto {
    config: Config,
    http: reqwest::Client,
    shared: Option<Shared>,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    devices: Mutex<HashMap<String, Device>>,
    local_window: Mutex<(VecDeque<Instant>, Option<Instant>)>,
    last_429: Mutex<Option<Instant>>,
    sent: AtomicU64,
    member: AtomicU64,
}

impl std::fmt::Debug for Datto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datto")
            .field("config", &self.config)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

/// Whether two device names are the same machine (case-insensitive; a short name matches its
/// FQDN).
fn same_host(a: &str, b: &str) -> bool {
    steward_core::routing::same_host(a, b)
}

impl Datto {
    /// A client; with `shared`, the rate budget, cool-downs and blocks are shared by every
    /// process using the same Redis namespace.
    pub fn new(config: Config, shared: Option<Shared>) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("Steward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Self {
            config,
            http,
            shared,
            token: tokio::sync::Mutex::new(None),
            devices: Mutex::default(),
            local_window: Mutex::default(),
            last_429: Mutex::default(),
            sent: AtomicU64::new(0),
            member: AtomicU64::new(0),
        })
    }

    fn key(&self, name: &str) -> Option<String> {
        self.shared
            .as_ref()
            .map(|s| format!("{}:rmm:{{datto}}:{name}", s.namespace))
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.config.api_url.as_str().trim_end_matches('/')
        )
    }

    /// Waits for a place in the budget: short waits are slept, long ones returned as
    /// [`Error::Throttled`] (the step waits durably instead of holding a worker).
    async fn take(&self) -> Result<(), Error> {
        for _ in 0..20 {
            let wait_ms: u64 =
                match &self.shared {
                    Some(s) => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .as_millis() as u64;
                        let member = format!(
                            "{now}-{}-{}",
                            std::process::id(),
                            self.member.fetch_add(1, Ordering::Relaxed)
                        );
                        let mut conn = s.redis.clone();
                        let r: i64 = redis::Script::new(TAKE)
                            .key(self.key("window").expect("shared"))
                            .key(self.key("cooldown").expect("shared"))
                            .arg(now)
                            .arg(self.config.requests_per_minute)
                            .arg(member)
                            .invoke_async(&mut conn)
                            .await
                            .map_err(|e| Error::Redis(e.to_string()))?;
                        r.max(0) as u64
                    }
                    None => {
                        let mut w = self.local_window.lock().unwrap_or_else(|e| e.into_inner());
                        let now = Instant::now();
                        match w.1 {
                            Some(until) if until > now => (until - now).as_millis() as u64,
                            _ => {
                                while w.0.front().is_some_and(|t| {
                                    now.duration_since(*t) >= Duration::from_secs(60)
                                }) {
                                    w.0.pop_front();
                                }
                                if w.0.len() >= self.config.requests_per_minute as usize {
                                    let oldest = *w.0.front().expect("non-empty");
                                    (Duration::from_secs(60) - now.duration_since(oldest))
                                        .as_millis() as u64
                                        + 1
                                } else {
                                    w.0.push_back(now);
                                    0
                                }
                            }
                        }
                    }
                };
            if wait_ms == 0 {
                return Ok(());
            }
            let wait = Duration::from_millis(wait_ms);
            if wait > Duration::from_secs(2) {
                return Err(Error::Throttled { retry_after: wait });
            }
            tokio::time::sleep(wait).await;
        }
        Err(Error::Throttled {
            retry_after: Duration::from_secs(5),
        })
    }

    /// Makes every worker wait `d` before its next request.
    async fn cool_down(&self, d: Duration) {
        match &self.shared {
            Some(s) => {
                let mut conn = s.redis.clone();
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(self.key("cooldown").expect("shared"))
                    .arg("1")
                    .arg("PX")
                    .arg(d.as_millis().max(1) as u64)
                    .query_async(&mut conn)
                    .await;
            }
            None => {
                self.local_window
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .1 = Some(Instant::now() + d);
            }
        }
    }

    /// Whether a 429 came recently (from any worker).
    async fn recently_throttled(&self) -> bool {
        if let Some(s) = &self.shared {
            let mut conn = s.redis.clone();
            let n: Result<i64, _> = redis::cmd("EXISTS")
                .arg(self.key("last429").expect("shared"))
                .query_async(&mut conn)
                .await;
            if n.unwrap_or(0) > 0 {
                return true;
            }
        }
        self.last_429
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < BLOCK_WINDOW)
    }

    async fn note_429(&self) {
        *self.last_429.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        if let Some(s) = &self.shared {
            let mut conn = s.redis.clone();
            let _: Result<(), _> = redis::cmd("SET")
                .arg(self.key("last429").expect("shared"))
                .arg("1")
                .arg("PX")
                .arg(BLOCK_WINDOW.as_millis() as u64)
                .query_async(&mut conn)
                .await;
        }
    }

    /// A valid access token (cached; renewed after [`RENEW_AFTER`], or when `stale` was
    /// refused).
    async fn token(&self, stale: Option<&str>) -> Result<String, Error> {
        let mut slot = self.token.lock().await;
        if let Some((t, at)) = slot.as_ref()
            && at.elapsed() < RENEW_AFTER
            && Some(t.as_str()) != stale
        {
            return Ok(t.clone());
        }
        self.take().await?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let basic = base64::engine::general_purpose::STANDARD.encode("public-client:public");
        let resp = self
            .http
            .post(self.url("/auth/oauth/token"))
            .header("authorization", format!("Basic {basic}"))
            .form(&[
                ("grant_type", "password"),
                ("username", self.config.api_key.as_str()),
                ("password", self.config.api_secret.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Error::Transport(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match status {
            200 => {
                let t = body["access_token"]
                    .as_str()
                    .ok_or_else(|| Error::Service {
                        status,
                        message: "the token answer has no access_token".to_owned(),
                    })?
                    .to_owned();
                *slot = Some((t.clone(), Instant::now()));
                Ok(t)
            }
            429 => {
                self.note_429().await;
                self.cool_down(Duration::from_secs(60)).await;
                Err(Error::Throttled {
                    retry_after: Duration::from_secs(60),
                })
            }
            400 | 401 => Err(Error::Credentials(
                body["error_description"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("refused")
                    .to_owned(),
            )),
            _ => Err(Error::Service {
                status,
                message: message(&body),
            }),
        }
    }

    /// One API request: the budget, the token (renewed once on a 401), 429 and the block.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        self.call_as(method, path, body, None).await
    }

    /// [`Datto::call`], marked with a step's correlation (`X-Steward-Correlation`).
    async fn call_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        correlation: Option<&str>,
    ) -> Result<Value, Error> {
        let mut stale: Option<String> = None;
        for _ in 0..2 {
            let token = self.token(stale.as_deref()).await?;
            self.take().await?;
            self.sent.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(method.clone(), self.url(path))
                .bearer_auth(&token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(c) = correlation {
                req = req.header(crate::m365::call::CORRELATION_HEADER, c);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| Error::Transport(e.without_url().to_string()))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = resp.text().await.unwrap_or_default();
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            match status {
                200..=299 => return Ok(value),
                401 => {
                    stale = Some(token);
                }
                429 => {
                    // DattoRMM.Core waits 120 s; Datto's header, when it sends one, wins.
                    let wait = retry_after.unwrap_or(Duration::from_secs(120));
                    self.note_429().await;
                    self.cool_down(wait).await;
                    return Err(Error::Throttled { retry_after: wait });
                }
                403 if self.recently_throttled().await => {
                    self.cool_down(BLOCK_WAIT).await;
                    return Err(Error::Blocked {
                        retry_after: BLOCK_WAIT,
                    });
                }
                _ => {
                    return Err(Error::Service {
                        status,
                        message: message(&value),
                    });
                }
            }
        }
        Err(Error::Credentials(
            "a fresh access token was refused too".to_owned(),
        ))
    }

    /// The uid of the account's component called `name` (`GET /api/v2/account/components`):
    /// for a worker told the component's name rather than its uid.
    pub async fn find_component(&self, name: &str) -> Result<String, Error> {
        let page = self
            .call(
                reqwest::Method::GET,
                "/api/v2/account/components?max=250",
                None,
            )
            .await?;
        page["components"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|c| c["uid"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Service {
                status: 404,
                message: format!(
                    "no component named `{name}` in the Datto account; import deploy/rmm's Steward runner component, or set rmm.datto-component-uid"
                ),
            })
    }

    /// Sets the runner component's uid.
    pub fn set_component(&mut self, uid: String) {
        self.config.component_uid = uid;
    }

    /// Forgets the cached devices (a device was renamed or re-enrolled).
    pub fn forget_devices(&self) {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn lookup(&self, hostname: &str) -> Result<Device, Error> {
        let cached = self
            .devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hostname.to_ascii_lowercase())
            .cloned();
        let uid = match cached {
            Some(d) => d.uid,
            None => {
                let short = hostname.split('.').next().unwrap_or(hostname);
                let mut path = format!(
                    "/api/v2/account/devices?hostname={}&max=250",
                    url::form_urlencoded::byte_serialize(short.as_bytes()).collect::<String>()
                );
                let mut found: Vec<Device> = Vec::new();
                for _ in 0..20 {
                    let page = self.call(reqwest::Method::GET, &path, None).await?;
                    for d in page["devices"].as_array().into_iter().flatten() {
                        let name = d["hostname"].as_str().unwrap_or_default();
                        if same_host(name, hostname) && d["deleted"] != Value::Bool(true) {
                            found.push(Device {
                                uid: d["uid"].as_str().unwrap_or_default().to_owned(),
                                hostname: name.to_owned(),
                                online: d["online"].as_bool().unwrap_or(false),
                            });
                        }
                    }
                    match page["pageDetails"]["nextPageUrl"].as_str() {
                        Some(next) => match url::Url::parse(next) {
                            Ok(u) => {
                                let mut p = u.path().to_owned();
                                // The API root may sit under a prefix (the sandbox's /datto).
                                let root = self.config.api_url.path().trim_end_matches('/');
                                if !root.is_empty()
                                    && let Some(rest) = p.strip_prefix(root)
                                {
                                    p = rest.to_owned();
                                }
                                path = format!("{p}?{}", u.query().unwrap_or_default());
                            }
                            Err(_) => break,
                        },
                        None => break,
                    }
                }
                match found.len() {
                    0 => {
                        return Err(Error::NoDevice {
                            hostname: hostname.to_owned(),
                        });
                    }
                    1 => {}
                    n => {
                        return Err(Error::AmbiguousDevice {
                            hostname: hostname.to_owned(),
                            count: n,
                        });
                    }
                }
                let d = found.pop().expect("one");
                self.devices
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(hostname.to_ascii_lowercase(), d.clone());
                return Ok(d);
            }
        };
        // The uid is cached; whether the agent is online is read fresh.
        let d = self
            .call(reqwest::Method::GET, &format!("/api/v2/device/{uid}"), None)
            .await?;
        Ok(Device {
            uid,
            hostname: d["hostname"].as_str().unwrap_or(hostname).to_owned(),
            online: d["online"].as_bool().unwrap_or(false),
        })
    }
}

fn message(body: &Value) -> String {
    body["message"]
        .as_str()
        .or(body["error_description"].as_str())
        .or(body["error"].as_str())
        .unwrap_or("no message")
        .chars()
        .take(500)
        .collect()
}

impl Rmm for Datto {
    fn name(&self) -> &'static str {
        "datto"
    }

    fn device<'a>(&'a self, hostname: &'a str) -> BoxFuture<'a, Result<Device, Error>> {
        Box::pin(self.lookup(hostname))
    }

    fn quick_job<'a>(
        &'a self,
        device: &'a Device,
        job_name: &'a str,
        variables: &'a Variables,
    ) -> BoxFuture<'a, Result<JobRef, Error>> {
        Box::pin(self.send_quick_job(device, job_name, variables, None))
    }

    fn quick_job_for<'a>(
        &'a self,
        device: &'a Device,
        job_name: &'a str,
        variables: &'a Variables,
        correlation: &'a str,
    ) -> BoxFuture<'a, Result<JobRef, Error>> {
        Box::pin(self.send_quick_job(device, job_name, variables, Some(correlation)))
    }

    fn job_status<'a>(
        &'a self,
        job: &'a JobRef,
        device: &'a Device,
    ) -> BoxFuture<'a, Result<JobStatus, Error>> {
        Box::pin(async move {
            let r = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v2/job/{}/results/{}", job.uid, device.uid),
                    None,
                )
                .await?;
            let word = r["jobDeploymentStatus"].as_str().unwrap_or_default();
            let deployment = Deployment::parse(word).ok_or_else(|| Error::Service {
                status: 200,
                message: format!("unknown jobDeploymentStatus `{word}`"),
            })?;
            let component_success = r["componentResults"]
                .as_array()
                .and_then(|c| c.first())
                .and_then(|c| c["componentStatus"].as_str())
                .map(|s| s == "Success");
            Ok(JobStatus {
                deployment,
                component_success,
            })
        })
    }

    fn job_stdout<'a>(
        &'a self,
        job: &'a JobRef,
        device: &'a Device,
    ) -> BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            let r = self
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v2/job/{}/results/{}/stdout", job.uid, device.uid),
                    None,
                )
                .await?;
            Ok(r.as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["stdData"].as_str())
                .collect::<Vec<_>>()
                .join("\n"))
        })
    }

    fn requests(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Datto {
    /// `PUT /api/v2/device/{uid}/quickjob` with Steward's runner component.
    async fn send_quick_job(
        &self,
        device: &Device,
        job_name: &str,
        variables: &Variables,
        correlation: Option<&str>,
    ) -> Result<JobRef, Error> {
        let body = json!({
            "jobName": job_name,
            "jobComponent": {
                "componentUid": self.config.component_uid,
                "variables": variables.0.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            },
        });
        let r = self
            .call_as(
                reqwest::Method::PUT,
                &format!("/api/v2/device/{}/quickjob", device.uid),
                Some(&body),
                correlation,
            )
            .await?;
        let uid = r["job"]["uid"].as_str().ok_or_else(|| Error::Service {
            status: 200,
            message: "the quick job answer has no job.uid".to_owned(),
        })?;
        Ok(JobRef {
            uid: uid.to_owned(),
        })
    }
}
