//! The sandbox's own controls under `/admin`: reset, clock, faults, ledger, world snapshots,
//! tokens, tickets (which fire Autotask webhooks), device online state, job hold/release and
//! per-company on-prem faults. Errors are `{"error": "<code>", "message": "..."}` with a 4xx.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::FaultRule;
use crate::http::{AppState, parse_json, query_pairs};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/reset", post(reset))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route("/world", get(world_all))
        .route("/world/{company}", get(world_one))
        .route("/ledger", get(ledger))
        .route(
            "/faults",
            get(list_faults).post(add_faults).delete(clear_faults),
        )
        .route("/faults/{id}", delete(remove_fault))
        .route("/tokens", get(tokens))
        .route("/tenants", post(add_tenants))
        .route("/tokens/revoke", post(revoke_tokens))
        .route("/tickets", get(list_tickets).post(create_ticket))
        .route("/tickets/{id}", patch(update_ticket))
        .route("/webhooks", get(webhooks))
        .route("/devices/{uid}/offline", post(device_offline))
        .route("/devices/{uid}/online", post(device_online))
        .route("/jobs", get(jobs))
        .route("/jobs/hold", post(hold_jobs))
        .route("/jobs/release", post(release_jobs))
        .route("/companies/{id}/sync/start", post(start_sync))
        .route("/companies/{id}/faults", post(company_faults))
        .route(
            "/companies/{id}/consents/{client_id}",
            axum::routing::put(set_consent).delete(withdraw_consent),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
}

#[derive(Debug)]
pub(crate) struct AdminError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl AdminError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.code, "message": self.message})),
        )
            .into_response()
    }
}

type AdminResult = Result<Response, AdminError>;

fn ok(v: Value) -> AdminResult {
    Ok(axum::Json(v).into_response())
}

fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let v = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(bytes).map_err(|e| AdminError::bad(format!("invalid JSON body: {e}")))?
    };
    serde_path_to_error::deserialize(v)
        .map_err(|e| AdminError::bad(format!("invalid body at `{}`: {}", e.path(), e.inner())))
}

async fn fallback() -> Response {
    AdminError::not_found("no such admin route; see the sandbox README").into_response()
}

async fn method_not_allowed() -> Response {
    AdminError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this admin route does not accept that method; see the sandbox README".to_owned(),
    }
    .into_response()
}

async fn health() -> AdminResult {
    ok(json!({"status": "ok"}))
}

async fn reset(State(shared): State<AppState>) -> AdminResult {
    shared.reset();
    let (st, now) = shared.lock();
    ok(json!({"reset": true, "epoch": st.epoch, "now": now}))
}

async fn clock(State(shared): State<AppState>) -> AdminResult {
    ok(json!({"now": shared.clock.now(), "offset_seconds": shared.clock.offset_seconds()}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddTenants {
    /// How many.
    count: usize,
    /// Their ids start with it (`<prefix>-00001`).
    #[serde(default = "bench_prefix")]
    prefix: String,
}

fn bench_prefix() -> String {
    "bench".to_owned()
}

/// The most tenants one request adds.
const MAX_ADDED_TENANTS: usize = 100_000;

/// `POST /admin/tenants {count, prefix}`: adds `count` empty cloud-only companies whose tenants
/// consented to every partner app (for load tests: `steward bench --tenants`). Answers their ids
/// and tenant ids.
async fn add_tenants(State(shared): State<AppState>, bytes: Bytes) -> AdminResult {
    let a: AddTenants = body(&bytes)?;
    if a.count == 0 || a.count > MAX_ADDED_TENANTS {
        return Err(AdminError::bad(format!(
            "count must be 1 to {MAX_ADDED_TENANTS}; got {}",
            a.count
        )));
    }
    if a.prefix.is_empty()
        || !a
            .prefix
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(AdminError::bad(
            "prefix: use lowercase letters, digits and `-`",
        ));
    }
    let (mut st, now) = shared.lock();
    let added = st
        .world
        .add_empty_companies(&a.prefix, a.count, now)
        .map_err(AdminError::bad)?;
    ok(json!({"companies": added}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Advance {
    seconds: i64,
}

/// The longest span the admin API accepts for one step of time (about ten years).
const MAX_SPAN_SECONDS: i64 = 10 * 366 * 24 * 3600;
/// How far ahead of real time the clock may get in total (about a hundred years), so that the
/// sandbox's dates stay far from chrono's limits whatever sequence of advances a client sends.
const MAX_OFFSET_SECONDS: i64 = 10 * MAX_SPAN_SECONDS;

/// Checks a caller-supplied span of seconds (`field` names it in the error).
fn span(field: &str, seconds: i64) -> Result<i64, AdminError> {
    if seconds <= 0 || seconds > MAX_SPAN_SECONDS {
        return Err(AdminError::bad(format!(
            "{field} must be a positive number of seconds, at most {MAX_SPAN_SECONDS} (ten years); got {seconds}"
        )));
    }
    Ok(seconds)
}

async fn advance(State(shared): State<AppState>, bytes: Bytes) -> AdminResult {
    let a: Advance = body(&bytes)?;
    span("seconds", a.seconds).map_err(|e| AdminError {
        message: format!("{}; the clock only moves forward", e.message),
        ..e
    })?;
    let ahead = shared.clock.offset_seconds();
    if ahead.saturating_add(a.seconds) > MAX_OFFSET_SECONDS {
        return Err(AdminError::bad(format!(
            "seconds: the clock is already {ahead} seconds ahead and may be at most {MAX_OFFSET_SECONDS} ahead in total; POST /admin/reset to start over"
        )));
    }
    shared.clock.advance(a.seconds);
    // Settle now so background waiters (held jobs, sync) see the new time at once.
    drop(shared.lock());
    shared.jobs_changed.notify_waiters();
    ok(json!({"now": shared.clock.now(), "offset_seconds": shared.clock.offset_seconds()}))
}

async fn world_all(State(shared): State<AppState>) -> AdminResult {
    let (st, now) = shared.lock();
    let mut companies = serde_json::Map::new();
    for c in &st.world.companies {
        if let Some(s) = st.world.snapshot(&c.id, now) {
            companies.insert(c.id.clone(), s);
        }
    }
    ok(json!({
        "now": now,
        "companies": companies,
        "datto": st.world.datto,
        "autotask": st.world.autotask,
    }))
}

async fn world_one(State(shared): State<AppState>, Path(company): Path<String>) -> AdminResult {
    let (st, now) = shared.lock();
    match st.world.snapshot(&company, now) {
        Some(s) => ok(s),
        None => Err(AdminError::not_found(format!("no company '{company}'"))),
    }
}

async fn ledger(State(shared): State<AppState>, RawQuery(q): RawQuery) -> AdminResult {
    let pairs = query_pairs(q.as_deref());
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let since: u64 = match get("since") {
        Some(s) => s
            .parse()
            .map_err(|_| AdminError::bad("since must be a ledger sequence number"))?,
        None => 0,
    };
    let (company, run, action) = (get("company"), get("run"), get("action"));
    let (st, _) = shared.lock();
    let entries: Vec<&crate::ledger::Entry> = st
        .ledger
        .entries()
        .iter()
        .filter(|e| e.seq > since)
        .filter(|e| {
            company
                .as_ref()
                .is_none_or(|c| e.company.as_ref() == Some(c))
        })
        .filter(|e| run.as_ref().is_none_or(|r| e.run.as_ref() == Some(r)))
        .filter(|e| action.as_ref().is_none_or(|a| &e.action == a))
        .collect();
    let duplicates = entries.iter().filter(|e| e.duplicate).count();
    ok(json!({"entries": entries, "count": entries.len(), "duplicates": duplicates}))
}

async fn list_faults(State(shared): State<AppState>) -> AdminResult {
    let (st, _) = shared.lock();
    ok(json!({"rules": st.faults.rules()}))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FaultBody {
    Many { rules: Vec<FaultRule> },
    One(Box<FaultRule>),
}

async fn add_faults(State(shared): State<AppState>, bytes: Bytes) -> AdminResult {
    let b: FaultBody = body(&bytes)?;
    let rules = match b {
        FaultBody::Many { rules } => rules,
        FaultBody::One(r) => vec![*r],
    };
    for (i, r) in rules.iter().enumerate() {
        r.validate()
            .map_err(|e| AdminError::bad(format!("rules[{i}]: {e}")))?;
    }
    let (mut st, _) = shared.lock();
    let ids: Vec<String> = rules
        .into_iter()
        .map(|r| st.faults.add(shared.seed, r))
        .collect();
    Ok((StatusCode::CREATED, axum::Json(json!({"ids": ids}))).into_response())
}

async fn clear_faults(State(shared): State<AppState>) -> AdminResult {
    let (mut st, _) = shared.lock();
    st.faults.clear();
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_fault(State(shared): State<AppState>, Path(id): Path<String>) -> AdminResult {
    let (mut st, _) = shared.lock();
    if st.faults.remove(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(AdminError::not_found(format!("no fault rule '{id}'")))
    }
}

async fn tokens(State(shared): State<AppState>) -> AdminResult {
    let (st, now) = shared.lock();
    ok(st.tokens.summary(now))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    user: Option<String>,
}

async fn revoke_tokens(State(shared): State<AppState>, bytes: Bytes) -> AdminResult {
    let r: Revoke = body(&bytes)?;
    let (mut st, now) = shared.lock();
    let n = st.tokens.revoke(r.user.as_deref(), now);
    ok(json!({"revoked": n}))
}

async fn list_tickets(State(shared): State<AppState>) -> AdminResult {
    let (st, _) = shared.lock();
    match &st.world.autotask {
        Some(a) => ok(json!({"tickets": a.tickets, "notes": a.notes})),
        None => Err(AdminError::not_found("the fixture has no autotask account")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TicketInput {
    #[serde(default)]
    pub(crate) company: Option<String>,
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) status: Option<i64>,
    #[serde(default)]
    pub(crate) priority: Option<i64>,
    #[serde(default)]
    pub(crate) queue_id: Option<i64>,
    #[serde(default)]
    pub(crate) issue_type: Option<i64>,
    #[serde(default)]
    pub(crate) sub_issue_type: Option<i64>,
}

async fn create_ticket(State(shared): State<AppState>, bytes: Bytes) -> AdminResult {
    let input: TicketInput = body(&bytes)?;
    let ticket = {
        let (mut guard, now) = shared.lock();
        crate::autotask::admin_create(&mut guard, input, now).map_err(AdminError::bad)?
    };
    shared.ensure_workers();
    shared.webhooks_changed.notify_one();
    Ok((StatusCode::CREATED, axum::Json(ticket)).into_response())
}

async fn update_ticket(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> AdminResult {
    let id: i64 = id
        .parse()
        .map_err(|_| AdminError::bad(format!("ticket id '{id}' is not a number")))?;
    let input: TicketInput = body(&bytes)?;
    let ticket = {
        let (mut guard, now) = shared.lock();
        crate::autotask::admin_update(&mut guard, id, input, now).map_err(|e| {
            if e.starts_with("no ticket") {
                AdminError::not_found(e)
            } else {
                AdminError::bad(e)
            }
        })?
    };
    shared.ensure_workers();
    shared.webhooks_changed.notify_one();
    ok(ticket)
}

async fn webhooks(State(shared): State<AppState>) -> AdminResult {
    let (st, _) = shared.lock();
    ok(json!({
        "configured": shared.webhook.as_ref().map(|w| &w.url),
        "pending": st.autotask.pending.len(),
        "deliveries": st.autotask.deliveries,
    }))
}

fn set_online(shared: &AppState, uid: &str, online: bool) -> AdminResult {
    let (mut st, now) = shared.lock();
    let device = st
        .world
        .companies
        .iter_mut()
        .filter_map(|c| c.rmm_site.as_mut())
        .flat_map(|s| s.devices.iter_mut())
        .find(|d| d.uid == uid)
        .ok_or_else(|| AdminError::not_found(format!("no RMM device '{uid}'")))?;
    device.online = online;
    if online {
        device.last_seen = now;
    }
    let v = json!({"uid": device.uid, "hostname": device.hostname, "online": online});
    drop(st);
    shared.jobs_changed.notify_waiters();
    ok(v)
}

async fn device_offline(State(shared): State<AppState>, Path(uid): Path<String>) -> AdminResult {
    set_online(&shared, &uid, false)
}

async fn device_online(State(shared): State<AppState>, Path(uid): Path<String>) -> AdminResult {
    set_online(&shared, &uid, true)
}

async fn jobs(State(shared): State<AppState>) -> AdminResult {
    let (st, _) = shared.lock();
    let jobs = st.world.datto.as_ref().map(|d| &d.jobs);
    ok(json!({"held": st.jobs_held, "jobs": jobs}))
}

async fn hold_jobs(State(shared): State<AppState>) -> AdminResult {
    let (mut st, _) = shared.lock();
    st.jobs_held = true;
    ok(json!({"held": true}))
}

async fn release_jobs(State(shared): State<AppState>) -> AdminResult {
    {
        let (mut st, _) = shared.lock();
        st.jobs_held = false;
    }
    shared.jobs_changed.notify_waiters();
    ok(json!({"held": false}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartSync {
    #[serde(default)]
    duration_seconds: Option<i64>,
}

async fn start_sync(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> AdminResult {
    let b: StartSync = body(&bytes)?;
    if let Some(d) = b.duration_seconds {
        span("duration_seconds", d)?;
    }
    let (mut st, now) = shared.lock();
    let c = st
        .world
        .company_mut(&id)
        .ok_or_else(|| AdminError::not_found(format!("no company '{id}'")))?;
    if c.entra_connect.is_none() {
        return Err(AdminError::bad(format!(
            "company '{id}' has no Entra Connect server"
        )));
    }
    match crate::world::start_sync_cycle(c, now, "admin", b.duration_seconds) {
        Ok(cycle) => ok(json!({"started": true, "cycle": cycle})),
        Err(cycle) => ok(json!({"started": false, "busy": true, "cycle": cycle})),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompanyFaults {
    #[serde(default)]
    double_hop_misconfigured: Option<bool>,
    #[serde(default)]
    winrm_unreachable: Option<bool>,
    /// Locks this AD user (sAMAccountName) out, as too many bad passwords would.
    #[serde(default)]
    lock_out: Option<String>,
    /// Gives this AD user's on-prem mailbox (sAMAccountName) an ActiveSync phone partnership.
    #[serde(default)]
    add_mobile_device: Option<String>,
}

async fn company_faults(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    bytes: Bytes,
) -> AdminResult {
    let b: CompanyFaults = body(&bytes)?;
    let now = shared.clock.now();
    let (mut st, _) = shared.lock();
    let c = st
        .world
        .company_mut(&id)
        .ok_or_else(|| AdminError::not_found(format!("no company '{id}'")))?;
    if let Some(m) = b.double_hop_misconfigured {
        let x = c
            .exchange_server
            .as_mut()
            .ok_or_else(|| AdminError::bad(format!("company '{id}' has no Exchange Server")))?;
        x.double_hop_configured = !m;
    }
    if let Some(u) = b.winrm_unreachable {
        let f =
            c.ad.as_mut()
                .ok_or_else(|| AdminError::bad(format!("company '{id}' has no AD forest")))?;
        f.winrm_reachable = !u;
    }
    for (sam, lock) in [(&b.lock_out, true), (&b.add_mobile_device, false)] {
        let Some(sam) = sam else { continue };
        let f =
            c.ad.as_mut()
                .ok_or_else(|| AdminError::bad(format!("company '{id}' has no AD forest")))?;
        let u = f
            .users
            .iter_mut()
            .find(|u| !u.deleted && u.sam_account_name.eq_ignore_ascii_case(sam))
            .ok_or_else(|| AdminError::not_found(format!("no AD user '{sam}' in '{id}'")))?;
        if lock {
            u.locked_out = true;
            continue;
        }
        let n = u.mailbox.as_ref().map_or(0, |m| m.mobile_devices.len());
        let guid = crate::ids::guid(0, &["onprem-device", &u.object_guid, &n.to_string()]);
        let m = u.mailbox.as_mut().ok_or_else(|| {
            AdminError::bad(format!("'{sam}' has no mailbox on the Exchange server"))
        })?;
        m.mobile_devices.push(crate::world::MobileDevice {
            guid,
            friendly_name: format!("iPhone {}", n + 1),
            device_model: "iPhone".to_owned(),
            device_os: "iOS 17.4".to_owned(),
            first_sync_time: now,
        });
    }
    ok(json!({
        "company": id,
        "double_hop_misconfigured": c.exchange_server.as_ref().map(|x| !x.double_hop_configured),
        "winrm_unreachable": c.ad.as_ref().map(|f| !f.winrm_reachable),
    }))
}

/// What a tenant's administrator granted an app (`PUT /admin/companies/{id}/consents/{client}`);
/// an omitted list keeps what is granted now (or, for a new consent, the registration's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentBody {
    #[serde(default)]
    application_permissions: Option<Vec<String>>,
    #[serde(default)]
    delegated_permissions: Option<Vec<String>>,
}

/// Sets an app's grant in a tenant, as an administrator editing the enterprise app's
/// permissions would. Tokens already issued keep the permissions they carry until they expire,
/// as Microsoft's do.
async fn set_consent(
    State(shared): State<AppState>,
    Path((id, client_id)): Path<(String, String)>,
    bytes: Bytes,
) -> AdminResult {
    let b: ConsentBody = body(&bytes)?;
    let (mut st, _) = shared.lock();
    let app = st
        .world
        .app(&client_id)
        .map(|a| {
            (
                a.application_permissions.clone(),
                a.delegated_permissions.clone(),
            )
        })
        .ok_or_else(|| AdminError::not_found(format!("no partner app '{client_id}'")))?;
    let c = st
        .world
        .company_mut(&id)
        .ok_or_else(|| AdminError::not_found(format!("no company '{id}'")))?;
    let current = c
        .tenant
        .consented_apps
        .iter()
        .position(|a| a.client_id.eq_ignore_ascii_case(&client_id));
    let (roles, scopes) = match current {
        Some(i) => (
            c.tenant.consented_apps[i].roles.clone(),
            c.tenant.consented_apps[i].scopes.clone(),
        ),
        None => app,
    };
    let consent = crate::world::Consent {
        client_id: client_id.clone(),
        roles: b.application_permissions.unwrap_or(roles),
        scopes: b.delegated_permissions.unwrap_or(scopes),
    };
    if let Some(i) = current {
        c.tenant.consented_apps.remove(i);
    }
    c.tenant.consented_apps.push(consent.clone());
    ok(json!({
        "company": id,
        "client_id": client_id,
        "application_permissions": consent.roles,
        "delegated_permissions": consent.scopes,
    }))
}

/// Withdraws an app's consent in a tenant (its service principal deleted).
async fn withdraw_consent(
    State(shared): State<AppState>,
    Path((id, client_id)): Path<(String, String)>,
) -> AdminResult {
    let (mut st, _) = shared.lock();
    let c = st
        .world
        .company_mut(&id)
        .ok_or_else(|| AdminError::not_found(format!("no company '{id}'")))?;
    let before = c.tenant.consented_apps.len();
    c.tenant
        .consented_apps
        .retain(|a| !a.client_id.eq_ignore_ascii_case(&client_id));
    ok(
        json!({"company": id, "client_id": client_id, "withdrawn": before != c.tenant.consented_apps.len()}),
    )
}
