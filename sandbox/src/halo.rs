//! HaloPSA REST, for what Steward needs: tickets (created and updated by upsert), actions (notes),
//! client-credentials tokens, and outbound webhooks authenticated with Basic or Bearer
//! credentials, as Halo's webhook configuration offers (Halo signs nothing).
//!
//! Under `/halo`: `POST /auth/token[?tenant=]` (form `grant_type=client_credentials`,
//! `client_id`, `client_secret`, `scope`) → `{access_token, token_type, expires_in}`; then, with
//! `Authorization: Bearer`: `POST /api/Webhook` `[{name, url, authentication_type (0 none,
//! 1 basic, 2 bearer), basic_username, basic_password, bearer_token}]`; `POST /api/Tickets`
//! `[{id?, summary, details, client_id, tickettype_id, category_1, team, customfields}]` (no `id`:
//! a new ticket, event "New Ticket Logged"; with `id`: an update, "Ticket Updated"); `GET
//! /api/Tickets/{id}`; `POST /api/Actions` `[{ticket_id, outcome_id | outcome, hiddenfromuser,
//! note_html}]` (refused without an outcome: "An Outcome must be entered for this Action");
//! `GET /api/Actions?ticket_id=`.
//!
//! A webhook delivery is `{"event": <event name>, "ticket": <the ticket>}` POSTed as JSON.
//! **[unverified]**: Halo's default payload envelope (its guide says it posts "the ticket and
//! action objects"; the field names of the ticket are Halo's REST names), and `bearer_token` as
//! the Webhook API's field name for a bearer credential.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::http::{AppState, Ctx, parse_json, query_pairs};

/// The sandbox's Halo API application: client id.
pub const CLIENT_ID: &str = "sandbox-halo-client";
/// Its client secret.
pub const CLIENT_SECRET: &str = "sandbox-halo-secret";

/// Halo's state in the sandbox.
#[derive(Debug, Default)]
pub(crate) struct Halo {
    tickets: Vec<Map<String, Value>>,
    actions: Vec<Value>,
    webhooks: Vec<Webhook>,
    tokens: Vec<String>,
    next_id: i64,
}

#[derive(Debug, Clone)]
struct Webhook {
    url: String,
    auth: Option<String>,
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/token", post(token))
        .route("/api/Webhook", post(add_webhook))
        .route("/api/Tickets", post(upsert_tickets))
        .route("/api/Tickets/{id}", get(get_ticket))
        .route("/api/Actions", post(add_actions).get(list_actions))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!(message))).into_response()
}

fn check_token(shared: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (st, _) = shared.lock();
    if bearer.is_some_and(|b| st.halo.tokens.iter().any(|t| t == b)) {
        Ok(())
    } else {
        Err(error(StatusCode::UNAUTHORIZED, "Unauthorized"))
    }
}

async fn token(State(shared): State<AppState>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("grant_type") != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if get("client_id") != Some(CLIENT_ID) || get("client_secret") != Some(CLIENT_SECRET) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let (mut st, now) = shared.lock();
    let n = st.halo.tokens.len();
    let token = hex::encode(Sha256::digest(format!(
        "halo:{}:{n}:{}",
        shared.seed,
        now.timestamp_nanos_opt().unwrap_or_default()
    )));
    st.halo.tokens.push(token.clone());
    axum::Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": get("scope").unwrap_or("all")})).into_response()
}

fn array(body: &[u8]) -> Result<Vec<Map<String, Value>>, Response> {
    match parse_json(body) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(o) => Ok(o),
                _ => Err(error(
                    StatusCode::BAD_REQUEST,
                    "Each item must be an object.",
                )),
            })
            .collect(),
        _ => Err(error(StatusCode::BAD_REQUEST, "The body must be an array.")),
    }
}

async fn add_webhook(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = check_token(&shared, &ctx.headers) {
        return r;
    }
    let items = match array(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut added = Vec::new();
    for o in items {
        let Some(url) = o
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http"))
        else {
            return error(StatusCode::BAD_REQUEST, "url is required.");
        };
        let s = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let auth = match o
            .get("authentication_type")
            .and_then(Value::as_i64)
            .unwrap_or(0)
        {
            0 => None,
            1 => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    s("basic_username"),
                    s("basic_password")
                ))
            )),
            2 => Some(format!("Bearer {}", s("bearer_token"))),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Unsupported authentication_type in the sandbox (0, 1 or 2).",
                );
            }
        };
        added.push(json!({"url": url, "authentication_type": o.get("authentication_type").cloned().unwrap_or(json!(0))}));
        let (mut st, _) = shared.lock();
        st.halo.webhooks.push(Webhook {
            url: url.to_owned(),
            auth,
        });
    }
    axum::Json(Value::Array(added)).into_response()
}

async fn upsert_tickets(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = check_token(&shared, &ctx.headers) {
        return r;
    }
    let items = match array(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut out = Vec::new();
    let mut sends = Vec::new();
    let (mut st, now) = shared.lock();
    for o in items {
        let stamp = now.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        let (event, ticket) = match o.get("id").and_then(Value::as_i64) {
            Some(id) => {
                let Some(t) = st.halo.tickets.iter_mut().find(|t| t["id"] == id) else {
                    return error(StatusCode::NOT_FOUND, &format!("Ticket {id} not found."));
                };
                for (k, v) in &o {
                    if k != "id" {
                        t.insert(k.clone(), v.clone());
                    }
                }
                t.insert("lastactiondate".into(), json!(stamp));
                ("Ticket Updated", t.clone())
            }
            None => {
                let Some(summary) = o
                    .get("summary")
                    .and_then(Value::as_str)
                    .filter(|s| !s.trim().is_empty())
                else {
                    return error(StatusCode::BAD_REQUEST, "summary is required.");
                };
                if o.get("client_id").and_then(Value::as_i64).is_none() {
                    return error(StatusCode::BAD_REQUEST, "client_id is required.");
                }
                st.halo.next_id += 1;
                let mut t = o.clone();
                t.insert("id".into(), json!(st.halo.next_id));
                t.insert("summary".into(), json!(summary));
                t.insert("dateoccurred".into(), json!(stamp));
                t.insert("lastactiondate".into(), json!(stamp));
                st.halo.tickets.push(t.clone());
                ("New Ticket Logged", t)
            }
        };
        let company = ticket
            .get("client_id")
            .map(Value::to_string)
            .unwrap_or_default();
        st.ledger.record(
            ctx.mutation(
                "halo",
                &company,
                if event == "New Ticket Logged" {
                    "ticket.create"
                } else {
                    "ticket.update"
                },
                Some(&ticket["id"].to_string()),
                json!({"summary": ticket.get("summary")}),
            ),
            now,
        );
        let body = json!({"event": event, "ticket": Value::Object(ticket.clone())}).to_string();
        for w in &st.halo.webhooks {
            sends.push((w.url.clone(), w.auth.clone(), body.clone()));
        }
        out.push(Value::Object(ticket));
    }
    drop(st);
    for (url, auth, body) in sends {
        let http = shared.http.clone();
        tokio::spawn(async move {
            let res = crate::http::post_with_retries(|| {
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                match &auth {
                    Some(a) => r.header("authorization", a),
                    None => r,
                }
            })
            .await;
            if !res.delivered {
                tracing::warn!(%url, status = res.status, "halo webhook delivery failed");
            }
        });
    }
    let one = out.len() == 1;
    axum::Json(if one {
        out.remove(0)
    } else {
        Value::Array(out)
    })
    .into_response()
}

async fn get_ticket(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<i64>) -> Response {
    if let Err(r) = check_token(&shared, &ctx.headers) {
        return r;
    }
    let (st, _) = shared.lock();
    match st.halo.tickets.iter().find(|t| t["id"] == id) {
        Some(t) => axum::Json(Value::Object(t.clone())).into_response(),
        None => error(StatusCode::NOT_FOUND, &format!("Ticket {id} not found.")),
    }
}

async fn add_actions(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = check_token(&shared, &ctx.headers) {
        return r;
    }
    let items = match array(&body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let (mut st, now) = shared.lock();
    let mut out = Vec::new();
    for o in items {
        let Some(ticket) = o.get("ticket_id").and_then(Value::as_i64) else {
            return error(StatusCode::BAD_REQUEST, "ticket_id is required.");
        };
        if o.get("outcome_id").and_then(Value::as_i64).is_none()
            && o.get("outcome").and_then(Value::as_str).is_none()
        {
            return error(
                StatusCode::BAD_REQUEST,
                "An Outcome must be entered for this Action",
            );
        }
        let Some(company) = st
            .halo
            .tickets
            .iter()
            .find(|t| t["id"] == ticket)
            .map(|t| t.get("client_id").map(Value::to_string).unwrap_or_default())
        else {
            return error(
                StatusCode::NOT_FOUND,
                &format!("Ticket {ticket} not found."),
            );
        };
        st.halo.next_id += 1;
        let mut a = o.clone();
        a.insert("id".into(), json!(st.halo.next_id));
        a.insert(
            "datetime".into(),
            json!(now.format("%Y-%m-%dT%H:%M:%S%.3f").to_string()),
        );
        st.ledger.record(
            ctx.mutation(
                "halo",
                &company,
                "ticket.add_note",
                Some(&ticket.to_string()),
                json!({"note_html": o.get("note_html"), "hiddenfromuser": o.get("hiddenfromuser")}),
            ),
            now,
        );
        st.halo.actions.push(Value::Object(a.clone()));
        out.push(Value::Object(a));
    }
    axum::Json(Value::Array(out)).into_response()
}

async fn list_actions(State(shared): State<AppState>, ctx: Ctx, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = check_token(&shared, &ctx.headers) {
        return r;
    }
    let pairs = query_pairs(q.as_deref());
    let ticket: Option<i64> = pairs
        .iter()
        .find(|(k, _)| k == "ticket_id")
        .and_then(|(_, v)| v.parse().ok());
    let (st, _) = shared.lock();
    let actions: Vec<Value> = st
        .halo
        .actions
        .iter()
        .filter(|a| ticket.is_none_or(|t| a["ticket_id"] == t))
        .cloned()
        .collect();
    axum::Json(json!({"record_count": actions.len(), "actions": actions})).into_response()
}
