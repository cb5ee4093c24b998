//! Datto RMM API v2 and the simulated Datto agent.
//!
//! API: the OAuth password grant (`/auth/oauth/token`, HTTP Basic `public-client:public`, API
//! key and secret as username and password; tokens last 100 hours), device lookups, components,
//! `PUT /api/v2/device/{uid}/quickjob`, job status, job results and stdout/stderr. The account
//! rate limit is a rolling 60-second window on the sandbox clock (`rate_limit_per_minute` in the
//! fixture, Datto's is 600): requests over it get 429, and a client that keeps going while
//! limited (five 429s in a row) is blocked with 403 for five minutes, as Datto blocks the IP.
//!
//! Agent: quick jobs run asynchronously, one at a time in creation order, on a background task.
//! A job waits while its device is offline or while the admin API holds jobs. Running a job of
//! the Steward runner component follows the contract in [`crate::runner`].

use std::collections::{HashMap, VecDeque};
use std::sync::Weak;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::State as SandboxState;
use crate::http::{
    AppState, Ctx, PostOutcome, form_get, parse_form, parse_json, post_with_retries, query_pairs,
};
use crate::ledger::{Correlation, Mutation};
use crate::runner::{self, RunError, RunResult};
use crate::secret::SecretText;
use crate::world::{Company, RmmDevice, Site};

pub(crate) const TOKEN_HOURS: i64 = 100;
/// Consecutive 429s after which the account's client is blocked (403).
const BLOCK_AFTER_429S: u32 = 5;
const BLOCK_MINUTES: i64 = 5;

/// Token and rate-limit bookkeeping (reset with the world).
#[derive(Debug, Default)]
pub(crate) struct Session {
    tokens: HashMap<String, DateTime<Utc>>,
    window: VecDeque<DateTime<Utc>>,
    consecutive_429: u32,
    blocked_until: Option<DateTime<Utc>>,
    issued: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) uid: String,
    pub(crate) name: String,
    pub(crate) device_uid: String,
    pub(crate) hostname: String,
    pub(crate) company: String,
    pub(crate) component_uid: String,
    pub(crate) component_name: String,
    pub(crate) variables: Variables,
    pub(crate) created_at: DateTime<Utc>,
    /// `active` until the agent finished, then `completed`.
    pub(crate) status: String,
    pub(crate) correlation: Option<Correlation>,
    #[serde(skip)]
    pub(crate) taken: bool,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) run: Option<RunResult>,
    pub(crate) callback: Option<PostOutcome>,
}

/// A quick job's variables, in the order given. A variable whose name says it holds a secret
/// (`token`, `secret`, `password`, e.g. `steward_job_token`) leaves the agent only as
/// `[redacted]`: in `Debug`, in `/admin/jobs` (`Serialize`) and in the ledger, where its digest
/// feeds the fingerprint instead. [`Variables::redacted`] is the one place that decides it.
#[derive(Clone, Default)]
pub(crate) struct Variables(Vec<(String, String)>);

fn is_secret_var(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("token") || n.contains("secret") || n.contains("password")
}

impl Variables {
    /// A non-empty variable's value, for the agent.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `[{"name", "value"}]` with secret values replaced by `[redacted]`.
    pub(crate) fn redacted(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_var(k) {
                    crate::secret::REDACTED
                } else {
                    v
                };
                json!({"name": k, "value": v})
            })
            .collect()
    }

    /// `[{"name", "value"}]` as given, for the caller's own view of its job (Datto's API
    /// returns the variables it was sent).
    fn plain(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect()
    }

    /// The fingerprint of the secret variables (names and values), so two jobs that differ only
    /// in a secret are different changes in the ledger.
    fn secret_fingerprint(&self) -> Option<String> {
        let secrets: Vec<&(String, String)> =
            self.0.iter().filter(|(k, _)| is_secret_var(k)).collect();
        if secrets.is_empty() {
            return None;
        }
        let text = serde_json::to_string(&secrets).unwrap_or_default();
        Some(crate::secret::Secret::new(&text).fingerprint())
    }
}

impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.redacted()).finish()
    }
}

impl Serialize for Variables {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

impl Job {
    fn var(&self, name: &str) -> Option<&str> {
        self.variables.get(name)
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/oauth/token", post(token))
        .route("/api/v2/account", get(account))
        .route("/api/v2/account/sites", get(sites))
        .route("/api/v2/account/devices", get(account_devices))
        .route("/api/v2/account/components", get(components))
        .route("/api/v2/site/{site_uid}/devices", get(site_devices))
        .route("/api/v2/device/{device_uid}", get(device))
        .route("/api/v2/device/{device_uid}/quickjob", put(quickjob))
        .route("/api/v2/job/{job_uid}", get(job))
        .route("/api/v2/job/{job_uid}/components", get(job_components))
        .route(
            "/api/v2/job/{job_uid}/results/{device_uid}",
            get(job_results),
        )
        .route(
            "/api/v2/job/{job_uid}/results/{device_uid}/stdout",
            get(job_stdout),
        )
        .route(
            "/api/v2/job/{job_uid}/results/{device_uid}/stderr",
            get(job_stderr),
        )
        .route("/api/v2/system/request_rate", get(request_rate))
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
}

fn api_error(status: StatusCode, message: &str, path: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "timestamp": Utc::now().timestamp_millis(),
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": message,
            "path": path,
        })),
    )
        .into_response()
}

async fn fallback(ctx: Ctx) -> Response {
    api_error(StatusCode::NOT_FOUND, "No handler found", &ctx.path)
}

async fn method_not_allowed(ctx: Ctx) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Request method '{}' is not supported", ctx.method),
        &ctx.path,
    )
}

pub(crate) fn fault_body(status: StatusCode) -> Value {
    json!({
        "timestamp": Utc::now().timestamp_millis(),
        "status": status.as_u16(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": "An injected sandbox fault.",
    })
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

async fn token(State(shared): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let basic_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .is_some_and(|raw| raw == b"public-client:public");
    if !basic_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Full authentication is required to access this resource",
        );
    }
    let form = parse_form(&body);
    if form_get(&form, "grant_type") != Some("password") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!(
                "Unsupported grant type: {}",
                form_get(&form, "grant_type").unwrap_or("")
            ),
        );
    }
    let Some(account) = &st.world.datto else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad credentials");
    };
    let ok = form_get(&form, "username").is_some_and(|u| account.api_key.matches(u))
        && form_get(&form, "password").is_some_and(|p| account.api_secret.matches(p));
    if !ok {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Bad credentials");
    }
    st.datto.issued += 1;
    let token = format!(
        "sbx-datto-{}",
        crate::ids::guid(shared.seed, &["datto-token", &st.datto.issued.to_string()])
            .replace('-', "")
    );
    st.datto
        .tokens
        .insert(digest(&token), now + Duration::hours(TOKEN_HOURS));
    axum::Json(json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": TOKEN_HOURS * 3600 - 1,
        "scope": "default",
        "jti": crate::ids::guid(shared.seed, &["datto-jti", &st.datto.issued.to_string()]),
    }))
    .into_response()
}

/// Rate limit first (Datto counts every request), then the bearer token.
fn check_access(st: &mut SandboxState, ctx: &Ctx, now: DateTime<Utc>) -> Result<(), Response> {
    let limit = st
        .world
        .datto
        .as_ref()
        .map_or(600, |d| d.rate_limit_per_minute) as usize;
    let s = &mut st.datto;
    if let Some(until) = s.blocked_until {
        if now < until {
            return Err(api_error(
                StatusCode::FORBIDDEN,
                "Access denied: too many requests over the account rate limit; this client is temporarily blocked.",
                &ctx.path,
            ));
        }
        s.blocked_until = None;
        s.consecutive_429 = 0;
    }
    while s
        .window
        .front()
        .is_some_and(|t| now - *t >= Duration::seconds(60))
    {
        s.window.pop_front();
    }
    if s.window.len() >= limit {
        s.consecutive_429 += 1;
        if s.consecutive_429 >= BLOCK_AFTER_429S {
            s.blocked_until = Some(now + Duration::minutes(BLOCK_MINUTES));
        }
        let retry = s
            .window
            .front()
            .map_or(60, |t| 60 - (now - *t).num_seconds().clamp(0, 59));
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("Rate limit exceeded: {limit} requests per 60 seconds for this account."),
            &ctx.path,
        );
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from(retry));
        return Err(r);
    }
    s.consecutive_429 = 0;
    s.window.push_back(now);
    let Some(raw) = ctx.bearer() else {
        return Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Full authentication is required to access this resource",
        ));
    };
    match s.tokens.get(&digest(raw)) {
        Some(exp) if *exp > now => Ok(()),
        Some(_) => Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &format!("Access token expired: {}", &raw[..raw.len().min(12)]),
        )),
        None => Err(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "Invalid access token",
        )),
    }
}

fn device_json(site: &Site, d: &RmmDevice) -> Value {
    let server = d.operating_system.contains("Server");
    json!({
        "id": d.id,
        "uid": d.uid,
        "siteId": site.id,
        "siteUid": site.uid,
        "siteName": site.name,
        "deviceType": {"category": if server { "Server" } else { "Desktop" }, "type": if server { "Server" } else { "Laptop" }},
        "hostname": d.hostname,
        "intIpAddress": d.int_ip_address,
        "operatingSystem": d.operating_system,
        "lastLoggedInUser": null,
        "domain": null,
        "description": d.description,
        "online": d.online,
        "lastSeen": d.last_seen.timestamp_millis(),
        "deleted": false,
        "suspended": false,
        "udf": {},
    })
}

fn all_devices(st: &SandboxState) -> Vec<(&Site, &RmmDevice)> {
    st.world
        .companies
        .iter()
        .filter_map(|c| c.rmm_site.as_ref())
        .flat_map(|s| s.devices.iter().map(move |d| (s, d)))
        .collect()
}

fn paged(ctx: &Ctx, q: Option<&str>, key: &str, items: Vec<Value>) -> Result<Value, Response> {
    let pairs = query_pairs(q);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let max: usize = match get("max") {
        Some(m) => m
            .parse()
            .ok()
            .filter(|m| (1..=250).contains(m))
            .ok_or_else(|| {
                api_error(
                    StatusCode::BAD_REQUEST,
                    "max must be between 1 and 250",
                    &ctx.path,
                )
            })?,
        None => 250,
    };
    let page: usize = match get("page") {
        Some(p) => p
            .parse()
            .map_err(|_| api_error(StatusCode::BAD_REQUEST, "page must be a number", &ctx.path))?,
        None => 0,
    };
    // `page` comes from the caller: a page whose first item can't even be counted is refused
    // rather than wrapped (which would answer some other page) or overflowed.
    let start = page.checked_mul(max).ok_or_else(|| {
        api_error(
            StatusCode::BAD_REQUEST,
            &format!("page {page} is out of range for max {max}"),
            &ctx.path,
        )
    })?;
    let total = items.len();
    let slice: Vec<Value> = items.into_iter().skip(start).take(max).collect();
    let link = |p: usize| {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            if k != "page" && k != "max" {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("max", &max.to_string());
        ser.append_pair("page", &p.to_string());
        format!("{}{}?{}", ctx.origin, ctx.path, ser.finish())
    };
    let next = (start.saturating_add(max) < total).then(|| link(page + 1));
    let prev = (page > 0).then(|| link(page - 1));
    Ok(json!({
        "pageDetails": {"count": slice.len(), "totalCount": total, "prevPageUrl": prev, "nextPageUrl": next},
        key: slice,
    }))
}

async fn account(State(shared): State<AppState>, ctx: Ctx) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let devices = all_devices(st);
    let online = devices.iter().filter(|(_, d)| d.online).count();
    axum::Json(json!({
        "id": 1,
        "uid": crate::ids::guid(shared.seed, &["datto-account"]),
        "name": "Sandbox MSP",
        "currency": "USD",
        "devicesStatus": {"numberOfDevices": devices.len(), "numberOfOnlineDevices": online, "numberOfOfflineDevices": devices.len() - online},
    }))
    .into_response()
}

async fn sites(State(shared): State<AppState>, ctx: Ctx, RawQuery(q): RawQuery) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let items: Vec<Value> = st
        .world
        .companies
        .iter()
        .filter_map(|c| c.rmm_site.as_ref())
        .map(|s| {
            let online = s.devices.iter().filter(|d| d.online).count();
            json!({"id": s.id, "uid": s.uid, "name": s.name, "description": null, "onDemand": false,
                   "devicesStatus": {"numberOfDevices": s.devices.len(), "numberOfOnlineDevices": online,
                                     "numberOfOfflineDevices": s.devices.len() - online}})
        })
        .collect();
    match paged(&ctx, q.as_deref(), "sites", items) {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn account_devices(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let pairs = query_pairs(q.as_deref());
    let hostname = pairs
        .iter()
        .find(|(k, _)| k == "hostname")
        .map(|(_, v)| v.to_ascii_lowercase());
    let items: Vec<Value> = all_devices(st)
        .into_iter()
        .filter(|(_, d)| {
            hostname
                .as_ref()
                .is_none_or(|h| d.hostname.to_ascii_lowercase().contains(h))
        })
        .map(|(s, d)| device_json(s, d))
        .collect();
    match paged(&ctx, q.as_deref(), "devices", items) {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn site_devices(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(site_uid): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let Some(site) = st
        .world
        .companies
        .iter()
        .filter_map(|c| c.rmm_site.as_ref())
        .find(|s| s.uid == site_uid)
    else {
        return api_error(
            StatusCode::NOT_FOUND,
            &format!("Site {site_uid} not found"),
            &ctx.path,
        );
    };
    let items = site.devices.iter().map(|d| device_json(site, d)).collect();
    match paged(&ctx, q.as_deref(), "devices", items) {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn device(State(shared): State<AppState>, ctx: Ctx, Path(uid): Path<String>) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    match all_devices(st).into_iter().find(|(_, d)| d.uid == uid) {
        Some((s, d)) => axum::Json(device_json(s, d)).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            &format!("Device {uid} not found"),
            &ctx.path,
        ),
    }
}

async fn components(State(shared): State<AppState>, ctx: Ctx, RawQuery(q): RawQuery) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let items: Vec<Value> = st
        .world
        .datto
        .iter()
        .flat_map(|d| d.components.iter())
        .map(|c| {
            json!({"id": c.id, "uid": c.uid, "name": c.name, "description": null,
                   "categoryCode": "script", "credentialsRequired": false,
                   "variables": c.variables.iter().enumerate().map(|(i, v)| json!({
                       "name": v, "type": "string", "defaultVal": "", "direction": false,
                       "description": null, "variablesIdx": i})).collect::<Vec<_>>()})
        })
        .collect();
    match paged(&ctx, q.as_deref(), "components", items) {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

fn job_summary(j: &Job) -> Value {
    json!({"id": j.id, "uid": j.uid, "name": j.name, "dateCreated": j.created_at.timestamp_millis(), "status": j.status})
}

fn job_components_json(j: &Job) -> Value {
    json!([{
        "uid": j.component_uid,
        "name": j.component_name,
        "variables": j.variables.plain(),
    }])
}

async fn quickjob(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(device_uid): Path<String>,
    body: Bytes,
) -> Response {
    let response = {
        let (mut guard, now) = shared.lock();
        let st = &mut *guard;
        if let Err(r) = check_access(st, &ctx, now) {
            return r;
        }
        let bad = |m: &str| api_error(StatusCode::BAD_REQUEST, m, &ctx.path);
        let Ok(Value::Object(b)) = parse_json(&body) else {
            return bad("Request body is not a valid quick job.");
        };
        let Some(job_name) = b
            .get("jobName")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
        else {
            return bad("jobName is required.");
        };
        let Some(Value::Object(jc)) = b.get("jobComponent") else {
            return bad("jobComponent is required.");
        };
        let Some(component_uid) = jc.get("componentUid").and_then(Value::as_str) else {
            return bad("jobComponent.componentUid is required.");
        };
        let mut variables = Vec::new();
        match jc.get("variables") {
            None | Some(Value::Null) => {}
            Some(Value::Array(vars)) => {
                for v in vars {
                    let (Some(n), Some(val)) = (
                        v.get("name").and_then(Value::as_str),
                        v.get("value").and_then(Value::as_str),
                    ) else {
                        return bad("Each variable needs a string 'name' and a string 'value'.");
                    };
                    variables.push((n.to_owned(), val.to_owned()));
                }
            }
            Some(_) => return bad("jobComponent.variables must be an array."),
        }
        let variables = Variables(variables);
        let Some(company) = st
            .world
            .companies
            .iter()
            .find(|c| {
                c.rmm_site
                    .as_ref()
                    .is_some_and(|s| s.devices.iter().any(|d| d.uid == device_uid))
            })
            .map(|c: &Company| c.id.clone())
        else {
            return api_error(
                StatusCode::NOT_FOUND,
                &format!("Device {device_uid} not found"),
                &ctx.path,
            );
        };
        let hostname = st
            .world
            .company(&company)
            .and_then(|c| c.rmm_site.as_ref())
            .and_then(|s| s.devices.iter().find(|d| d.uid == device_uid))
            .map(|d| d.hostname.clone())
            .unwrap_or_default();
        let Some(component_name) = st
            .world
            .datto
            .as_ref()
            .and_then(|d| {
                d.components
                    .iter()
                    .find(|c| c.uid.eq_ignore_ascii_case(component_uid))
            })
            .map(|c| c.name.clone())
        else {
            return api_error(
                StatusCode::NOT_FOUND,
                &format!("Component {component_uid} not found"),
                &ctx.path,
            );
        };
        let id = st.world.next_number("job", 90_000_000) + 10_000_000;
        let uid = st.world.new_guid("job");
        let job = Job {
            id,
            uid,
            name: job_name.to_owned(),
            device_uid: device_uid.clone(),
            hostname,
            company: company.clone(),
            component_uid: component_uid.to_owned(),
            component_name,
            variables: variables.clone(),
            created_at: now,
            status: "active".to_owned(),
            correlation: ctx.correlation.clone(),
            taken: false,
            started_at: None,
            run: None,
            callback: None,
        };
        let response =
            json!({"job": job_summary(&job), "jobComponents": job_components_json(&job)});
        let details = json!({
            "jobName": job_name,
            "componentUid": component_uid,
            "variables": variables.redacted(),
        });
        let mut m = ctx.mutation(
            "datto",
            &company,
            "datto.quickjob",
            Some(&device_uid),
            details,
        );
        m.secret_fingerprint = variables.secret_fingerprint();
        if let Some(d) = st.world.datto.as_mut() {
            d.jobs.push(job);
        }
        st.ledger.record(m, now);
        response
    };
    shared.ensure_workers();
    shared.jobs_changed.notify_waiters();
    axum::Json(response).into_response()
}

fn with_job(
    shared: &AppState,
    ctx: &Ctx,
    job_uid: &str,
    f: impl FnOnce(&Job) -> Response,
) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, ctx, now) {
        return r;
    }
    match st
        .world
        .datto
        .as_ref()
        .and_then(|d| d.jobs.iter().find(|j| j.uid == job_uid))
    {
        Some(j) => f(j),
        None => api_error(
            StatusCode::NOT_FOUND,
            &format!("Job {job_uid} not found"),
            &ctx.path,
        ),
    }
}

async fn job(State(shared): State<AppState>, ctx: Ctx, Path(job_uid): Path<String>) -> Response {
    with_job(&shared, &ctx, &job_uid, |j| {
        axum::Json(job_summary(j)).into_response()
    })
}

async fn job_components(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(job_uid): Path<String>,
) -> Response {
    with_job(&shared, &ctx, &job_uid, |j| {
        axum::Json(json!({"jobComponents": job_components_json(j)})).into_response()
    })
}

async fn job_results(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path((job_uid, device_uid)): Path<(String, String)>,
) -> Response {
    let path = ctx.path.clone();
    with_job(&shared, &ctx, &job_uid, |j| {
        if j.device_uid != device_uid {
            return api_error(
                StatusCode::NOT_FOUND,
                &format!("No results for device {device_uid} in job {job_uid}"),
                &path,
            );
        }
        // Datto's vocabulary: `jobDeploymentStatus` is Pending (not picked up: the device is
        // offline, jobs are held, or it waits its start delay), Running, then Success or
        // Failure; `componentStatus` is Success or Failure. A poller that waits for the
        // sandbox's own words would hang on the real service.
        let (status, components) = match &j.run {
            None if j.taken => ("Running", json!([])),
            None => ("Pending", json!([])),
            Some(r) => (
                if r.status == "success" {
                    "Success"
                } else {
                    "Failure"
                },
                json!([{
                    "componentUid": j.component_uid,
                    "componentName": j.component_name,
                    "componentStatus": if r.status == "success" { "Success" } else { "Failure" },
                    "numberOfWarnings": 0,
                    "hasStdOut": !r.stdout.is_empty(),
                    "hasStdErr": !r.stderr.is_empty(),
                }]),
            ),
        };
        axum::Json(json!({
            "jobUid": j.uid,
            "deviceUid": j.device_uid,
            "ranOn": j.run.as_ref().map(|r| r.finished_at.timestamp_millis()),
            "jobDeploymentStatus": status,
            "componentResults": components,
        }))
        .into_response()
    })
}

fn std_stream(
    shared: &AppState,
    ctx: &Ctx,
    job_uid: &str,
    device_uid: &str,
    err: bool,
) -> Response {
    let path = ctx.path.clone();
    with_job(shared, ctx, job_uid, |j| {
        if j.device_uid != device_uid {
            return api_error(
                StatusCode::NOT_FOUND,
                &format!("No results for device {device_uid} in job {job_uid}"),
                &path,
            );
        }
        let data: Vec<Value> = match &j.run {
            None => vec![],
            Some(r) => vec![json!({
                "componentUid": j.component_uid,
                "componentName": j.component_name,
                "stdData": if err { &r.stderr } else { &r.stdout },
            })],
        };
        axum::Json(Value::Array(data)).into_response()
    })
}

async fn job_stdout(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path((job_uid, device_uid)): Path<(String, String)>,
) -> Response {
    std_stream(&shared, &ctx, &job_uid, &device_uid, false)
}

async fn job_stderr(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path((job_uid, device_uid)): Path<(String, String)>,
) -> Response {
    std_stream(&shared, &ctx, &job_uid, &device_uid, true)
}

async fn request_rate(State(shared): State<AppState>, ctx: Ctx) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_access(st, &ctx, now) {
        return r;
    }
    let limit = st
        .world
        .datto
        .as_ref()
        .map_or(600, |d| d.rate_limit_per_minute);
    axum::Json(json!({
        "accountCount": st.datto.window.len(),
        "accountRateLimit": limit,
        "accountCutOffRatio": 0.9,
    }))
    .into_response()
}

/// What the agent needs to run one job, copied out of the locked state.
#[derive(Debug)]
struct Ticket {
    uid: String,
    device_uid: String,
    hostname: String,
    company: String,
    runner: bool,
    component_name: String,
    script_url: Option<String>,
    callback_url: Option<String>,
    token: Option<SecretText>,
    /// The runner protocol (`steward_url` + `steward_job_id`): the script's own result line is
    /// the output, and the callback posts `{stdout, stderr, exit_code, result}`.
    protocol: bool,
    correlation: Option<Correlation>,
    epoch: u64,
}

/// `{steward_url}/v1/runner/jobs/{steward_job_id}{tail}` when the job speaks the runner protocol.
fn protocol_url(j: &Job, tail: &str) -> Option<String> {
    let base = j.var(runner::STEWARD_URL_VAR)?;
    let id = j.var(runner::JOB_ID_VAR)?;
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return None;
    }
    Some(format!(
        "{}/v1/runner/jobs/{id}{tail}",
        base.trim_end_matches('/')
    ))
}

fn take_next(shared: &crate::Shared) -> Option<Ticket> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if st.jobs_held {
        return None;
    }
    let epoch = st.epoch;
    let online = |st: &SandboxState, uid: &str| {
        st.world
            .companies
            .iter()
            .filter_map(|c| c.rmm_site.as_ref())
            .flat_map(|s| s.devices.iter())
            .any(|d| d.uid == uid && d.online)
    };
    let delay = Duration::seconds(st.world.datto.as_ref()?.job_start_delay_seconds);
    let idx = st.world.datto.as_ref()?.jobs.iter().position(|j| {
        j.status == "active" && !j.taken && j.created_at + delay <= now && online(st, &j.device_uid)
    })?;
    let datto = st.world.datto.as_mut()?;
    let runner = datto
        .components
        .iter()
        .find(|c| c.uid.eq_ignore_ascii_case(&datto.jobs[idx].component_uid))
        .is_some_and(|c| c.steward_runner);
    let j = &mut datto.jobs[idx];
    j.taken = true;
    j.started_at = Some(now);
    Some(Ticket {
        uid: j.uid.clone(),
        device_uid: j.device_uid.clone(),
        hostname: j.hostname.clone(),
        company: j.company.clone(),
        runner,
        component_name: j.component_name.clone(),
        script_url: protocol_url(j, "")
            .or_else(|| j.var(runner::SCRIPT_URL_VAR).map(str::to_owned)),
        callback_url: protocol_url(j, "/result")
            .or_else(|| j.var(runner::CALLBACK_URL_VAR).map(str::to_owned)),
        token: j.var(runner::JOB_TOKEN_VAR).map(SecretText::new),
        protocol: protocol_url(j, "").is_some(),
        correlation: j.correlation.clone(),
        epoch,
    })
}

/// The simulated agent: runs jobs one at a time, in creation order.
pub(crate) async fn agent_loop(shared: Weak<crate::Shared>) {
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        if s.closed.load(Ordering::SeqCst) {
            return;
        }
        let notified = s.jobs_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match take_next(&s) {
            Some(t) => run_job(&s, t).await,
            None => {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
            }
        }
    }
}

async fn run_job(s: &crate::Shared, t: Ticket) {
    let started_at = s.clock.now();
    let mut stdout = String::new();
    let mut protocol_result: Option<Value> = None;
    let outcome: Result<Value, RunError> = if !t.runner {
        Err(RunError {
            category: "not_configured".to_owned(),
            message: format!(
                "The sandbox agent only runs the Steward runner component; '{}' is not simulated.",
                t.component_name
            ),
        })
    } else {
        match fetch_script(s, &t).await {
            Err(e) => Err(e),
            Ok(text) => match runner::parse_script(&text) {
                Err(e) => Err(RunError {
                    category: e.category().to_owned(),
                    message: format!("Steward runner refused the script: {e}"),
                }),
                Ok(script) if t.protocol => {
                    // The template prints its one result line; a failure is in that line.
                    let line = apply_template(s, &t, &script);
                    stdout.push_str(&line);
                    stdout.push('\n');
                    protocol_result = serde_json::from_str::<Value>(
                        line.strip_prefix("STEWARD-RESULT ").unwrap_or(&line),
                    )
                    .ok();
                    Ok(Value::Null)
                }
                Ok(script) => {
                    stdout.push_str(&format!(
                        "steward-op {}@{}\n",
                        script.op.name(),
                        script.version
                    ));
                    apply(s, &t, &script)
                }
            },
        }
    };
    let finished_at = s.clock.now();
    let (status, exit_code, result, error, stderr) = match outcome {
        Ok(_) if t.protocol => {
            let failed = protocol_result
                .as_ref()
                .is_some_and(|r| r["status"] == "failed");
            let status = if failed { "failure" } else { "success" };
            (status, 0, protocol_result.clone(), None, String::new())
        }
        Ok(v) => {
            stdout.push_str(&serde_json::to_string_pretty(&v).unwrap_or_default());
            stdout.push('\n');
            ("success", 0, Some(v), None, String::new())
        }
        Err(e) => {
            let stderr = format!("{}\n", e.message);
            ("failure", 1, None, Some(e), stderr)
        }
    };
    let run = RunResult {
        job_uid: t.uid.clone(),
        device_uid: t.device_uid.clone(),
        hostname: t.hostname.clone(),
        exit_code,
        status: status.to_owned(),
        stdout,
        stderr,
        result,
        error,
        started_at,
        finished_at,
    };
    let callback = match &t.callback_url {
        Some(url) if t.protocol => {
            let body = json!({"stdout": run.stdout, "stderr": run.stderr,
                              "exit_code": run.exit_code, "result": run.result});
            Some(post_callback(s, url, t.token.as_ref().map(SecretText::expose), &body).await)
        }
        Some(url) => {
            let body = serde_json::to_value(&run).unwrap_or(Value::Null);
            Some(post_callback(s, url, t.token.as_ref().map(SecretText::expose), &body).await)
        }
        None => None,
    };
    let (mut st, _) = s.lock();
    if st.epoch != t.epoch {
        return;
    }
    if let Some(j) = st
        .world
        .datto
        .as_mut()
        .and_then(|d| d.jobs.iter_mut().find(|j| j.uid == t.uid))
    {
        j.run = Some(run);
        j.callback = callback;
        j.status = "completed".to_owned();
    }
}

async fn fetch_script(s: &crate::Shared, t: &Ticket) -> Result<String, RunError> {
    let fail = |m: String| RunError {
        category: "script_fetch_failed".to_owned(),
        message: m,
    };
    let Some(url) = &t.script_url else {
        return Err(fail(format!(
            "The job variable {} is empty; the runner has no script to run.",
            runner::SCRIPT_URL_VAR
        )));
    };
    let mut req = s.http.get(url);
    if let Some(tok) = &t.token {
        req = req.bearer_auth(tok.expose());
    }
    match req.send().await {
        Ok(r) if r.status().is_success() => r
            .text()
            .await
            .map_err(|e| fail(format!("Reading the script from {url} failed: {e}"))),
        Ok(r) => Err(fail(format!(
            "Fetching the script from {url} failed with HTTP {}.",
            r.status().as_u16()
        ))),
        Err(e) => Err(fail(format!("Fetching the script from {url} failed: {e}"))),
    }
}

fn apply(s: &crate::Shared, t: &Ticket, script: &runner::Script) -> Result<Value, RunError> {
    let (mut guard, now) = s.lock();
    let st = &mut *guard;
    if st.epoch != t.epoch {
        return Err(RunError {
            category: "invalid_operation".to_owned(),
            message: "The sandbox was reset while this job was running.".to_owned(),
        });
    }
    let seed = st.world.seed;
    let Some(company) = st.world.company_mut(&t.company) else {
        return Err(RunError {
            category: "not_configured".to_owned(),
            message: format!("Company {} no longer exists.", t.company),
        });
    };
    let result = crate::onprem::execute(company, seed, &t.hostname, script, now);
    let (value, applied) = match result {
        Ok((v, applied)) => (Ok(v), applied),
        Err(e) => {
            let applied = e.applied.clone();
            (
                Err(RunError {
                    category: e.category.to_owned(),
                    message: e.message,
                }),
                applied,
            )
        }
    };
    for a in applied {
        st.ledger.record(
            Mutation {
                service: "runner",
                method: "RUN".to_owned(),
                path: format!("/datto/api/v2/device/{}/quickjob#{}", t.device_uid, t.uid),
                company: Some(t.company.clone()),
                action: a.action,
                target: Some(a.target),
                details: a.details,
                secret_fingerprint: a.secret_fingerprint,
                correlation: t.correlation.clone(),
            },
            now,
        );
    }
    value
}

/// Runs `script` as its template would, recording its changes; returns its result line.
fn apply_template(s: &crate::Shared, t: &Ticket, script: &runner::Script) -> String {
    let (mut guard, now) = s.lock();
    let st = &mut *guard;
    let template = format!("{}@{}", script.op.name(), script.version);
    let failed = |reason: &str, category: &str| {
        format!(
            "STEWARD-RESULT {}",
            json!({"template": template, "status": "failed", "result": null, "prior": null,
                   "reason": reason, "category": category})
        )
    };
    if st.epoch != t.epoch {
        return failed(
            "The sandbox was reset while this job was running.",
            "invalid_operation",
        );
    }
    let seed = st.world.seed;
    let Some(company) = st.world.company_mut(&t.company) else {
        return failed(
            &format!("Company {} no longer exists.", t.company),
            "not_configured",
        );
    };
    let (line, applied) = crate::onprem::run_template(company, seed, &t.hostname, script, now);
    for a in applied {
        st.ledger.record(
            Mutation {
                service: "runner",
                method: "RUN".to_owned(),
                path: format!("/datto/api/v2/device/{}/quickjob#{}", t.device_uid, t.uid),
                company: Some(t.company.clone()),
                action: a.action,
                target: Some(a.target),
                details: a.details,
                secret_fingerprint: a.secret_fingerprint,
                correlation: t.correlation.clone(),
            },
            now,
        );
    }
    line
}

async fn post_callback(
    s: &crate::Shared,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> PostOutcome {
    let out = post_with_retries(|| {
        let req = s.http.post(url).json(body);
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    })
    .await;
    if !out.delivered {
        tracing::warn!(
            url,
            status = out.status,
            error = out.error.as_deref(),
            "runner callback was not accepted"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables_are_redacted_everywhere_but_feed_the_fingerprint() {
        let vars = |token: &str| {
            Variables(vec![
                ("steward_script_url".to_owned(), "http://h/s/1".to_owned()),
                ("steward_job_token".to_owned(), token.to_owned()),
                ("Admin_Password".to_owned(), "Pa55word!".to_owned()),
            ])
        };
        let v = vars("tok-1234");
        for text in [
            format!("{v:?}"),
            serde_json::to_string(&v).unwrap(),
            json!(v.redacted()).to_string(),
        ] {
            assert!(
                !text.contains("tok-1234") && !text.contains("Pa55word!"),
                "{text}"
            );
            assert!(text.contains("http://h/s/1"), "{text}");
        }
        assert_eq!(v.get("steward_job_token"), Some("tok-1234"));
        assert_eq!(
            v.secret_fingerprint(),
            vars("tok-1234").secret_fingerprint()
        );
        assert_ne!(
            v.secret_fingerprint(),
            vars("tok-5678").secret_fingerprint()
        );
        assert_eq!(
            Variables(vec![("a".to_owned(), "b".to_owned())]).secret_fingerprint(),
            None
        );
    }
}
