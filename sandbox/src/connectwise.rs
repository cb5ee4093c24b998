//! ConnectWise PSA (Manage) REST, for what Steward needs: service tickets and their notes, and
//! callbacks (ConnectWise's webhooks) that tell a subscriber about ticket changes, signed as
//! ConnectWise signs them.
//!
//! Under `/connectwise/v4_6_release/apis/3.0`. Every request needs `Authorization: Basic
//! base64(company+publicKey:privateKey)` and a `clientId` header (401 / 400 otherwise), with the
//! sandbox's API member [`COMPANY`], [`PUBLIC_KEY`], [`PRIVATE_KEY`].
//!
//! Callbacks: `POST /system/callbacks {url, objectId, type: "Ticket", level, description,
//! inactiveFlag}`. Each ticket added or updated through this API is POSTed to every active
//! ticket callback as `{Action: added|updated, Type: "ticket", ID, MemberId, CompanyId, FromUrl,
//! Entity: "<the ticket as a JSON string>", Metadata: {key_url}}` with `x-content-signature:
//! base64(HMAC-SHA256(key = SHA-256(signing key), body))`; the signing key is served at
//! `key_url` (authenticated like the rest of the API). **[unverified]**: the real `key_url`
//! path (here `/system/callbacks/{id}/key`), and whether ConnectWise fires callbacks for changes
//! the subscribing member makes itself (here it does, as for any member).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::http::{AppState, Ctx, parse_json};

/// The sandbox API member's company id (the login company).
pub const COMPANY: &str = "sandboxmsp";
/// Its public key.
pub const PUBLIC_KEY: &str = "sandbox-cw-public";
/// Its private key.
pub const PRIVATE_KEY: &str = "sandbox-cw-private";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// ConnectWise's state in the sandbox.
#[derive(Debug, Default)]
pub(crate) struct Cw {
    tickets: Vec<Map<String, Value>>,
    notes: Vec<Value>,
    callbacks: Vec<Callback>,
    next_id: i64,
}

#[derive(Debug, Clone)]
struct Callback {
    id: i64,
    url: String,
    kind: String,
    inactive: bool,
    signing_key: String,
    description: String,
    level: String,
    object_id: i64,
}

impl Callback {
    fn json(&self) -> Value {
        json!({"id": self.id, "url": self.url, "type": self.kind, "level": self.level, "objectId": self.object_id, "description": self.description, "inactiveFlag": self.inactive})
    }
}

pub(crate) fn router() -> Router<AppState> {
    let api = Router::new()
        .route("/system/callbacks", post(add_callback).get(list_callbacks))
        .route("/system/callbacks/{id}/key", get(signing_key))
        .route("/service/tickets", post(add_ticket))
        .route("/service/tickets/{id}", get(get_ticket).patch(patch_ticket))
        .route(
            "/service/tickets/{id}/notes",
            post(add_note).get(list_notes),
        );
    Router::new()
        .nest("/v4_6_release/apis/3.0", api)
        .fallback(|| async {
            cw_error(
                StatusCode::NOT_FOUND,
                "NotFound",
                "The requested resource was not found.",
            )
        })
}

fn cw_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": code, "message": message})),
    )
        .into_response()
}

fn check_auth(headers: &HeaderMap) -> Result<(), Response> {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let want = format!(
        "Basic {}",
        B64.encode(format!("{COMPANY}+{PUBLIC_KEY}:{PRIVATE_KEY}"))
    );
    if h("authorization") != Some(want.as_str()) {
        return Err(cw_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Authentication failed: invalid company, public key or private key.",
        ));
    }
    if h("clientid").is_none_or(|c| c.trim().is_empty()) {
        return Err(cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidClientId",
            "A clientId header is required.",
        ));
    }
    Ok(())
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Response> {
    match parse_json(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "The request body is not a valid object.",
        )),
    }
}

async fn add_callback(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let o = match object(&body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(url) = o
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| u.starts_with("http"))
    else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "url is required and must be an http(s) URL.",
        );
    };
    let Some(kind) = o.get("type").and_then(Value::as_str) else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "type is required.",
        );
    };
    let (mut st, now) = shared.lock();
    let cw = &mut st.connectwise;
    cw.next_id += 1;
    let cb = Callback {
        id: cw.next_id,
        url: url.to_owned(),
        kind: kind.to_owned(),
        inactive: o
            .get("inactiveFlag")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        signing_key: hex::encode(Sha256::digest(format!(
            "{}:{}:{}",
            shared.seed,
            cw.next_id,
            now.timestamp_nanos_opt().unwrap_or_default()
        ))),
        description: o
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        level: o
            .get("level")
            .and_then(Value::as_str)
            .unwrap_or("Owner")
            .to_owned(),
        object_id: o.get("objectId").and_then(Value::as_i64).unwrap_or(1),
    };
    let v = cb.json();
    cw.callbacks.push(cb);
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn list_callbacks(State(shared): State<AppState>, ctx: Ctx) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let (st, _) = shared.lock();
    axum::Json(
        st.connectwise
            .callbacks
            .iter()
            .map(Callback::json)
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn signing_key(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let (st, _) = shared.lock();
    match st.connectwise.callbacks.iter().find(|c| c.id == id) {
        Some(c) => axum::Json(json!({"signing_key": c.signing_key})).into_response(),
        None => cw_error(StatusCode::NOT_FOUND, "NotFound", "Callback not found."),
    }
}

fn reference(v: Option<&Value>) -> Option<Value> {
    match v? {
        Value::Object(o)
            if o.get("id").is_some_and(Value::is_i64)
                || o.get("name").is_some_and(Value::is_string) =>
        {
            Some(Value::Object(o.clone()))
        }
        _ => None,
    }
}

async fn add_ticket(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let o = match object(&body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(summary) = o
        .get("summary")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "summary is required.",
        );
    };
    if summary.chars().count() > 100 {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "summary may be at most 100 characters.",
        );
    }
    let Some(company) = reference(o.get("company")) else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "company is required ({\"id\": N}).",
        );
    };
    let (mut st, now) = shared.lock();
    let cw = &mut st.connectwise;
    cw.next_id += 1;
    let id = cw.next_id;
    let mut t = Map::new();
    t.insert("id".into(), json!(id));
    t.insert("summary".into(), json!(summary));
    t.insert(
        "initialDescription".into(),
        o.get("initialDescription").cloned().unwrap_or(json!("")),
    );
    t.insert("company".into(), company);
    for k in ["board", "type", "subType", "item", "status"] {
        if let Some(r) = reference(o.get(k)) {
            t.insert(k.into(), r);
        }
    }
    t.insert(
        "customFields".into(),
        o.get("customFields").cloned().unwrap_or(json!([])),
    );
    t.insert("_info".into(), json!({"lastUpdated": now.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "dateEntered": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()}));
    cw.tickets.push(t.clone());
    let company_id = t["company"]["id"].to_string();
    st.ledger.record(
        ctx.mutation(
            "connectwise",
            &company_id,
            "ticket.create",
            Some(&id.to_string()),
            json!({"summary": summary}),
        ),
        now,
    );
    let sends = deliveries(&st.connectwise, "added", &t, &ctx.origin);
    drop(st);
    send_all(&shared, sends);
    (StatusCode::CREATED, axum::Json(Value::Object(t))).into_response()
}

async fn get_ticket(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let (st, _) = shared.lock();
    match st.connectwise.tickets.iter().find(|t| t["id"] == id) {
        Some(t) => axum::Json(Value::Object(t.clone())).into_response(),
        None => cw_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Ticket with id {id} was not found."),
        ),
    }
}

/// JSON Patch (`[{op: replace, path, value}]`), as ConnectWise takes it.
async fn patch_ticket(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let Ok(Value::Array(ops)) = parse_json(&body) else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "The body must be a JSON Patch array.",
        );
    };
    let (mut st, now) = shared.lock();
    let Some(t) = st.connectwise.tickets.iter_mut().find(|t| t["id"] == id) else {
        return cw_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Ticket with id {id} was not found."),
        );
    };
    let mut changed = Map::new();
    for op in &ops {
        let (Some("replace" | "add"), Some(path), Some(value)) = (
            op.get("op").and_then(Value::as_str),
            op.get("path").and_then(Value::as_str),
            op.get("value"),
        ) else {
            return cw_error(
                StatusCode::BAD_REQUEST,
                "InvalidObject",
                "Each operation needs op (replace), path and value.",
            );
        };
        let field = path.trim_start_matches('/');
        if !matches!(
            field,
            "summary"
                | "initialDescription"
                | "board"
                | "type"
                | "subType"
                | "item"
                | "status"
                | "customFields"
        ) {
            return cw_error(
                StatusCode::BAD_REQUEST,
                "InvalidObject",
                &format!("{field} cannot be changed."),
            );
        }
        t.insert(field.to_owned(), value.clone());
        changed.insert(field.to_owned(), value.clone());
    }
    t.insert(
        "_info".into(),
        json!({"lastUpdated": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()}),
    );
    let t = t.clone();
    let company_id = t["company"]["id"].to_string();
    st.ledger.record(
        ctx.mutation(
            "connectwise",
            &company_id,
            "ticket.update",
            Some(&id.to_string()),
            Value::Object(changed),
        ),
        now,
    );
    let sends = deliveries(&st.connectwise, "updated", &t, &ctx.origin);
    drop(st);
    send_all(&shared, sends);
    axum::Json(Value::Object(t)).into_response()
}

async fn add_note(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(id): Path<i64>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let o = match object(&body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let Some(text) = o
        .get("text")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
    else {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "text is required.",
        );
    };
    let flag = |k: &str| o.get(k).and_then(Value::as_bool).unwrap_or(false);
    let (detail, internal, resolution) = (
        flag("detailDescriptionFlag"),
        flag("internalAnalysisFlag"),
        flag("resolutionFlag"),
    );
    if !(detail || internal || resolution) {
        return cw_error(
            StatusCode::BAD_REQUEST,
            "InvalidObject",
            "One of detailDescriptionFlag, internalAnalysisFlag or resolutionFlag must be true.",
        );
    }
    let (mut st, now) = shared.lock();
    let Some(t) = st.connectwise.tickets.iter().find(|t| t["id"] == id) else {
        return cw_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("Ticket with id {id} was not found."),
        );
    };
    let company_id = t["company"]["id"].to_string();
    st.connectwise.next_id += 1;
    let note = json!({"id": st.connectwise.next_id, "ticketId": id, "text": text, "detailDescriptionFlag": detail, "internalAnalysisFlag": internal, "resolutionFlag": resolution, "dateCreated": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()});
    st.connectwise.notes.push(note.clone());
    st.ledger.record(
        ctx.mutation(
            "connectwise",
            &company_id,
            "ticket.add_note",
            Some(&id.to_string()),
            json!({"text": text, "internalAnalysisFlag": internal}),
        ),
        now,
    );
    (StatusCode::CREATED, axum::Json(note)).into_response()
}

async fn list_notes(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    if let Err(r) = check_auth(&ctx.headers) {
        return r;
    }
    let (st, _) = shared.lock();
    axum::Json(
        st.connectwise
            .notes
            .iter()
            .filter(|n| n["ticketId"] == id)
            .cloned()
            .collect::<Vec<_>>(),
    )
    .into_response()
}

/// ConnectWise's signature of a body with a signing key.
pub fn signature(signing_key: &str, body: &[u8]) -> String {
    let key = Sha256::digest(signing_key.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(body);
    B64.encode(mac.finalize().into_bytes())
}

fn deliveries(
    cw: &Cw,
    action: &str,
    t: &Map<String, Value>,
    origin: &str,
) -> Vec<(String, String, String)> {
    cw.callbacks
        .iter()
        .filter(|c| !c.inactive && c.kind.eq_ignore_ascii_case("ticket"))
        .map(|c| {
            let body = json!({
                "Action": action, "Type": "ticket", "ID": t["id"], "MemberId": "api", "CompanyId": COMPANY,
                "FromUrl": origin, "Entity": Value::Object(t.clone()).to_string(),
                "Metadata": {"key_url": format!("{origin}/connectwise/v4_6_release/apis/3.0/system/callbacks/{}/key", c.id)},
            })
            .to_string();
            let sig = signature(&c.signing_key, body.as_bytes());
            (c.url.clone(), body, sig)
        })
        .collect()
}

fn send_all(shared: &AppState, sends: Vec<(String, String, String)>) {
    for (url, body, sig) in sends {
        let http = shared.http.clone();
        tokio::spawn(async move {
            let out = crate::http::post_with_retries(|| {
                http.post(&url)
                    .header("content-type", "application/json")
                    .header("x-content-signature", &sig)
                    .body(body.clone())
            })
            .await;
            if !out.delivered {
                tracing::warn!(%url, status = out.status, "connectwise callback delivery failed");
            }
        });
    }
}
