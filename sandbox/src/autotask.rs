//! Autotask (Datto PSA) REST for what Steward writes back (tickets query, ticket notes, ticket
//! status), and the webhook sender that tells Steward about new and changed tickets.
//!
//! Webhook deliveries follow Autotask's format: a JSON body `{Action, Guid, EntityType, Id,
//! Fields, EventTime, SequenceNumber, PersonID}` (fields under their REST names) and
//! `X-Hook-Signature: sha1=<base64 HMAC-SHA1>` computed not over the body bytes but over
//! Autotask's *escaped* form of it: inside JSON string values, `& < > ' " \` +` and every
//! non-ASCII UTF-16 unit are written as `\uXXXX` (upper-case hex). Receivers that verify the raw
//! body only will fail on such tickets, as they do against real Autotask.
//!
//! Webhooks fire for tickets the fixture marks `emit_on_start` and for every ticket the admin API
//! creates or updates. Changes made through the REST API by the integration's own API user do not
//! fire (the webhook's excluded-resource setting, which integrations use to avoid loops).

use std::sync::Weak;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha1::Sha1;

use crate::State as SandboxState;
use crate::admin::TicketInput;
use crate::http::{AppState, Ctx, parse_json, query_pairs};
use crate::world::{Ticket, TicketNote};

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) pending: Vec<Pending>,
    pub(crate) deliveries: Vec<Delivery>,
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) action: &'static str,
    pub(crate) ticket: Ticket,
    pub(crate) changed: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delivery {
    pub(crate) sequence_number: i64,
    pub(crate) action: String,
    pub(crate) ticket_id: i64,
    pub(crate) attempts: u32,
    pub(crate) status: Option<u16>,
    pub(crate) error: Option<String>,
    pub(crate) delivered: bool,
}

pub(crate) fn router() -> Router<AppState> {
    let api = || {
        Router::new()
            .route("/zoneInformation", get(zone_information))
            .route("/Tickets", axum::routing::patch(patch_ticket))
            .route("/Tickets/query", post(query_tickets).get(query_tickets_get))
            .route("/Tickets/{id}", get(get_ticket))
            .route("/Tickets/{id}/Notes", post(add_note).get(list_notes))
    };
    Router::new()
        .nest("/atservicesrest/v1.0", api())
        .nest("/ATServicesRest/V1.0", api())
        .nest("/atservicesrest/V1.0", api())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn fallback() -> Response {
    at_error(
        StatusCode::NOT_FOUND,
        "The requested resource does not exist.",
    )
}

async fn method_not_allowed() -> Response {
    at_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "The requested HTTP method is not supported for this resource.",
    )
}

fn at_error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"errors": [message]}))).into_response()
}

pub(crate) fn fault_body(status: StatusCode) -> Value {
    let msg = match status.as_u16() {
        429 => "Rate limit exceeded. Please retry later.",
        500 => "An unexpected error occurred.",
        503 => "The service is temporarily unavailable.",
        _ => "An injected sandbox fault.",
    };
    json!({"errors": [msg]})
}

fn check_auth(st: &SandboxState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(at) = &st.world.autotask else {
        return Err(at_error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    let ok = h("apiintegrationcode").is_some_and(|c| at.integration_code.matches(c))
        && h("username").is_some_and(|u| u.eq_ignore_ascii_case(&at.username))
        && h("secret").is_some_and(|s| at.secret.matches(s));
    if ok {
        Ok(())
    } else {
        Err(at_error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: the UserName, Secret or ApiIntegrationCode header is missing or invalid.",
        ))
    }
}

pub(crate) fn ticket_json(t: &Ticket) -> Value {
    json!({
        "id": t.id,
        "ticketNumber": t.ticket_number,
        "title": t.title,
        "description": t.description,
        "status": t.status,
        "priority": t.priority,
        "queueID": t.queue_id,
        "issueType": t.issue_type,
        "subIssueType": t.sub_issue_type,
        "companyID": t.company_id,
        "createDate": t.create_date,
        "lastActivityDate": t.last_activity_date,
        "userDefinedFields": [],
    })
}

fn note_json(n: &TicketNote) -> Value {
    json!({
        "id": n.id,
        "ticketID": n.ticket_id,
        "title": n.title,
        "description": n.description,
        "noteType": n.note_type,
        "publish": n.publish,
        "createDateTime": n.create_date,
        "creatorResourceID": null,
    })
}

async fn zone_information(ctx: Ctx, RawQuery(q): RawQuery) -> Response {
    let pairs = query_pairs(q.as_deref());
    if !pairs.iter().any(|(k, _)| k.eq_ignore_ascii_case("user")) {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The 'user' query parameter is required.",
        );
    }
    axum::Json(json!({
        "zoneName": "Sandbox",
        "url": format!("{}/autotask/atservicesrest/", ctx.origin),
        "webUrl": format!("{}/autotask/", ctx.origin),
        "ci": 0,
    }))
    .into_response()
}

async fn get_ticket(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let (st, _) = shared.lock();
    if let Err(r) = check_auth(&st, &ctx.headers) {
        return r;
    }
    let Ok(id) = id.parse::<i64>() else {
        return at_error(StatusCode::BAD_REQUEST, "The ticket id must be an integer.");
    };
    let at = st.world.autotask.as_ref().expect("checked by check_auth");
    match at.tickets.iter().find(|t| t.id == id) {
        Some(t) => axum::Json(json!({"item": ticket_json(t)})).into_response(),
        None => axum::Json(json!({"item": null})).into_response(),
    }
}

async fn query_tickets_get(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> Response {
    let pairs = query_pairs(q.as_deref());
    let Some((_, search)) = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case("search")) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The 'search' query parameter is required.",
        );
    };
    run_query(&shared, &ctx, search.as_bytes())
}

async fn query_tickets(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    run_query(&shared, &ctx, &body)
}

fn run_query(shared: &AppState, ctx: &Ctx, body: &[u8]) -> Response {
    let (st, _) = shared.lock();
    if let Err(r) = check_auth(&st, &ctx.headers) {
        return r;
    }
    let Ok(Value::Object(q)) = parse_json(body) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The request body is not a valid query object.",
        );
    };
    let Some(Value::Array(filter)) = q.get("filter").or_else(|| q.get("Filter")) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "A query requires a 'filter' array.",
        );
    };
    let max = q
        .get("MaxRecords")
        .or_else(|| q.get("maxRecords"))
        .and_then(Value::as_u64)
        .unwrap_or(500)
        .clamp(1, 500) as usize;
    let at = st.world.autotask.as_ref().expect("checked by check_auth");
    let mut items = Vec::new();
    for t in &at.tickets {
        let obj = ticket_json(t);
        match eval_all(filter, &obj) {
            Ok(true) => items.push(obj),
            Ok(false) => {}
            Err(e) => return at_error(StatusCode::BAD_REQUEST, &e),
        }
    }
    items.truncate(max);
    axum::Json(json!({
        "items": items,
        "pageDetails": {"count": items.len(), "requestCount": max, "prevPageUrl": null, "nextPageUrl": null},
    }))
    .into_response()
}

fn eval_all(filters: &[Value], obj: &Value) -> Result<bool, String> {
    for f in filters {
        if !eval(f, obj)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn eval(f: &Value, obj: &Value) -> Result<bool, String> {
    let op = f
        .get("op")
        .and_then(Value::as_str)
        .ok_or("every filter item needs an 'op'")?
        .to_ascii_lowercase();
    if op == "and" || op == "or" {
        let items = f
            .get("items")
            .and_then(Value::as_array)
            .ok_or("'and'/'or' filters need 'items'")?;
        let mut results = Vec::new();
        for i in items {
            results.push(eval(i, obj)?);
        }
        return Ok(if op == "and" {
            results.iter().all(|b| *b)
        } else {
            results.iter().any(|b| *b)
        });
    }
    let field = f
        .get("field")
        .and_then(Value::as_str)
        .ok_or("every filter condition needs a 'field'")?;
    let key = ticket_json_key(field)
        .ok_or_else(|| format!("Unable to find {field} in the Ticket entity."))?;
    let have = &obj[key];
    let want = f.get("value").cloned().unwrap_or(Value::Null);
    let eq = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::String(y)) | (Value::String(y), Value::Number(x)) => {
            x.to_string() == *y
        }
        (Value::String(x), Value::String(y)) => x.eq_ignore_ascii_case(y),
        _ => a == b,
    };
    let num = |v: &Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    Ok(match op.as_str() {
        "eq" => eq(have, &want),
        "noteq" => !eq(have, &want),
        "gt" => num(have).zip(num(&want)).is_some_and(|(a, b)| a > b),
        "gte" => num(have).zip(num(&want)).is_some_and(|(a, b)| a >= b),
        "lt" => num(have).zip(num(&want)).is_some_and(|(a, b)| a < b),
        "lte" => num(have).zip(num(&want)).is_some_and(|(a, b)| a <= b),
        "exist" => !have.is_null(),
        "notexist" => have.is_null(),
        "contains" => have
            .as_str()
            .zip(want.as_str())
            .is_some_and(|(a, b)| a.to_lowercase().contains(&b.to_lowercase())),
        "beginswith" => have
            .as_str()
            .zip(want.as_str())
            .is_some_and(|(a, b)| a.to_lowercase().starts_with(&b.to_lowercase())),
        "in" => want
            .as_array()
            .ok_or("'in' needs an array value")?
            .iter()
            .any(|w| eq(have, w)),
        other => return Err(format!("Unsupported filter operator '{other}'.")),
    })
}

fn ticket_json_key(field: &str) -> Option<&'static str> {
    const KEYS: &[&str] = &[
        "id",
        "ticketNumber",
        "title",
        "description",
        "status",
        "priority",
        "queueID",
        "issueType",
        "subIssueType",
        "companyID",
    ];
    KEYS.iter().copied().find(|k| k.eq_ignore_ascii_case(field))
}

async fn patch_ticket(State(shared): State<AppState>, ctx: Ctx, body: Bytes) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_auth(st, &ctx.headers) {
        return r;
    }
    let Ok(Value::Object(b)) = parse_json(&body) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The request body is not a valid Ticket.",
        );
    };
    let Some(id) = b.get("id").or_else(|| b.get("Id")).and_then(Value::as_i64) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The 'id' field is required to update a Ticket.",
        );
    };
    let mut changes = Map::new();
    for (k, v) in &b {
        if k.eq_ignore_ascii_case("id") {
            continue;
        }
        let Some(key) = ticket_json_key(k) else {
            return at_error(
                StatusCode::BAD_REQUEST,
                &format!("Unable to find {k} in the Ticket entity."),
            );
        };
        let valid = match key {
            "title" | "description" => v.is_string(),
            "status" | "priority" | "queueID" | "issueType" | "subIssueType" => v.is_i64(),
            _ => {
                return at_error(
                    StatusCode::BAD_REQUEST,
                    &format!("The field {k} is read-only."),
                );
            }
        };
        if !valid {
            return at_error(
                StatusCode::BAD_REQUEST,
                &format!("The value of {k} has the wrong type."),
            );
        }
        changes.insert(key.to_owned(), v.clone());
    }
    let Some(at) = st.world.autotask.as_mut() else {
        return at_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let Some(t) = at.tickets.iter_mut().find(|t| t.id == id) else {
        return at_error(
            StatusCode::NOT_FOUND,
            &format!("Ticket {id} does not exist."),
        );
    };
    for (k, v) in &changes {
        match k.as_str() {
            "title" => t.title = v.as_str().unwrap_or_default().to_owned(),
            "description" => t.description = v.as_str().unwrap_or_default().to_owned(),
            "status" => t.status = v.as_i64().unwrap_or(t.status),
            "priority" => t.priority = v.as_i64(),
            "queueID" => t.queue_id = v.as_i64(),
            "issueType" => t.issue_type = v.as_i64(),
            "subIssueType" => t.sub_issue_type = v.as_i64(),
            _ => {}
        }
    }
    t.last_activity_date = now;
    let company = t.company.clone();
    st.ledger.record(
        ctx.mutation(
            "autotask",
            &company,
            "ticket.update",
            Some(&id.to_string()),
            Value::Object(changes),
        ),
        now,
    );
    axum::Json(json!({"itemId": id})).into_response()
}

async fn add_note(
    State(shared): State<AppState>,
    ctx: Ctx,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    if let Err(r) = check_auth(st, &ctx.headers) {
        return r;
    }
    let Ok(ticket_id) = id.parse::<i64>() else {
        return at_error(StatusCode::BAD_REQUEST, "The ticket id must be an integer.");
    };
    let Ok(Value::Object(b)) = parse_json(&body) else {
        return at_error(
            StatusCode::BAD_REQUEST,
            "The request body is not a valid TicketNote.",
        );
    };
    let get = |k: &str| {
        b.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v)
    };
    if let Some(tid) = get("TicketID") {
        if tid.as_i64() != Some(ticket_id) {
            return at_error(
                StatusCode::BAD_REQUEST,
                "TicketID in the body does not match the parent ticket in the URL.",
            );
        }
    }
    let description = match get("Description") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return at_error(
                StatusCode::BAD_REQUEST,
                "The Description field is required for a TicketNote.",
            );
        }
    };
    if description.chars().count() > 32_000 {
        return at_error(
            StatusCode::BAD_REQUEST,
            "Description exceeds 32000 characters.",
        );
    }
    let title = match get("Title") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return at_error(
                StatusCode::BAD_REQUEST,
                "The Title field is required for a TicketNote.",
            );
        }
    };
    let int = |k: &str, default: i64| -> Result<i64, Response> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.as_i64().ok_or_else(|| {
                at_error(
                    StatusCode::BAD_REQUEST,
                    &format!("The value of {k} must be an integer."),
                )
            }),
        }
    };
    let note_type = match int("NoteType", 1) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let publish = match int("Publish", 1) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(at) = st.world.autotask.as_mut() else {
        return at_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    };
    let Some(t) = at.tickets.iter_mut().find(|t| t.id == ticket_id) else {
        return at_error(
            StatusCode::NOT_FOUND,
            &format!("Ticket {ticket_id} does not exist."),
        );
    };
    t.last_activity_date = now;
    let company = t.company.clone();
    let note_id = at.next_note_id;
    at.next_note_id += 1;
    at.notes.push(TicketNote {
        id: note_id,
        ticket_id,
        title: title.clone(),
        description: description.clone(),
        note_type,
        publish,
        create_date: now,
    });
    st.ledger.record(
        ctx.mutation(
            "autotask",
            &company,
            "ticket.add_note",
            Some(&ticket_id.to_string()),
            json!({"title": title, "description": description, "noteType": note_type, "publish": publish}),
        ),
        now,
    );
    axum::Json(json!({"itemId": note_id})).into_response()
}

async fn list_notes(State(shared): State<AppState>, ctx: Ctx, Path(id): Path<String>) -> Response {
    let (st, _) = shared.lock();
    if let Err(r) = check_auth(&st, &ctx.headers) {
        return r;
    }
    let Ok(ticket_id) = id.parse::<i64>() else {
        return at_error(StatusCode::BAD_REQUEST, "The ticket id must be an integer.");
    };
    let at = st.world.autotask.as_ref().expect("checked by check_auth");
    let items: Vec<Value> = at
        .notes
        .iter()
        .filter(|n| n.ticket_id == ticket_id)
        .map(note_json)
        .collect();
    axum::Json(json!({
        "items": items,
        "pageDetails": {"count": items.len(), "requestCount": 500, "prevPageUrl": null, "nextPageUrl": null},
    }))
    .into_response()
}

/// Creates a ticket from the admin API and queues its `Create` webhook.
pub(crate) fn admin_create(
    st: &mut SandboxState,
    input: TicketInput,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    let company = input.company.ok_or("company is required")?;
    let title = input.title.ok_or("title is required")?;
    if title.trim().is_empty() {
        return Err("title must not be empty".to_owned());
    }
    let company_id = st
        .world
        .company(&company)
        .ok_or_else(|| format!("no company '{company}'"))?
        .autotask_company_id;
    let at = st
        .world
        .autotask
        .as_mut()
        .ok_or("the fixture has no autotask account")?;
    let id = at.next_ticket_id;
    at.next_ticket_id += 1;
    let t = Ticket {
        id,
        company,
        company_id,
        ticket_number: format!("T{}.{:04}", now.format("%Y%m%d"), id % 10_000),
        title,
        description: input.description.unwrap_or_default(),
        status: input.status.unwrap_or(1),
        priority: input.priority,
        queue_id: input.queue_id,
        issue_type: input.issue_type,
        sub_issue_type: input.sub_issue_type,
        create_date: now,
        last_activity_date: now,
        emit_on_start: false,
    };
    at.tickets.push(t.clone());
    let v = ticket_json(&t);
    st.autotask.pending.push(Pending {
        action: "Create",
        ticket: t,
        changed: vec![],
    });
    Ok(v)
}

/// Updates a ticket from the admin API and queues its `Update` webhook with the changed fields.
pub(crate) fn admin_update(
    st: &mut SandboxState,
    id: i64,
    input: TicketInput,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    if input.company.is_some() {
        return Err("a ticket's company can't be changed".to_owned());
    }
    let at = st
        .world
        .autotask
        .as_mut()
        .ok_or("the fixture has no autotask account")?;
    let t = at
        .tickets
        .iter_mut()
        .find(|t| t.id == id)
        .ok_or_else(|| format!("no ticket {id}"))?;
    let mut changed = Vec::new();
    if let Some(v) = input.title {
        t.title = v;
        changed.push("title".to_owned());
    }
    if let Some(v) = input.description {
        t.description = v;
        changed.push("description".to_owned());
    }
    if let Some(v) = input.status {
        t.status = v;
        changed.push("status".to_owned());
    }
    if let Some(v) = input.priority {
        t.priority = Some(v);
        changed.push("priority".to_owned());
    }
    if let Some(v) = input.queue_id {
        t.queue_id = Some(v);
        changed.push("queueID".to_owned());
    }
    if let Some(v) = input.issue_type {
        t.issue_type = Some(v);
        changed.push("issueType".to_owned());
    }
    if let Some(v) = input.sub_issue_type {
        t.sub_issue_type = Some(v);
        changed.push("subIssueType".to_owned());
    }
    if changed.is_empty() {
        return Err("nothing to update".to_owned());
    }
    t.last_activity_date = now;
    let t = t.clone();
    let v = ticket_json(&t);
    st.autotask.pending.push(Pending {
        action: "Update",
        ticket: t,
        changed,
    });
    Ok(v)
}

/// The webhook body for one event. Create carries every subscribed field; Update the changed
/// ones plus the display-always fields (id, ticketNumber, companyID).
pub(crate) fn payload(p: &Pending, guid: &str, seq: i64, now: DateTime<Utc>) -> Value {
    let all = ticket_json(&p.ticket);
    let mut fields = Map::new();
    for (k, v) in all.as_object().into_iter().flatten() {
        if matches!(
            k.as_str(),
            "createDate" | "lastActivityDate" | "userDefinedFields"
        ) {
            continue;
        }
        let always = matches!(k.as_str(), "id" | "ticketNumber" | "companyID");
        if p.action == "Create" || always || p.changed.iter().any(|c| c == k) {
            fields.insert(k.clone(), v.clone());
        }
    }
    json!({
        "Action": p.action,
        "Guid": guid,
        "EntityType": "Ticket",
        "Id": p.ticket.id,
        "Fields": fields,
        "EventTime": now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "SequenceNumber": seq,
        "PersonID": null,
    })
}

/// Autotask's escaped form of a JSON text, which is what it signs.
pub(crate) fn escape_for_signature(json_text: &str) -> String {
    let mut out = String::with_capacity(json_text.len());
    let mut in_string = false;
    let mut escaped = false;
    for ch in json_text.chars() {
        if in_string && escaped {
            // The character after a backslash: `\"` becomes `\u0022`, the rest stay.
            if ch == '"' {
                out.pop();
                out.push_str("\\u0022");
            } else {
                out.push(ch);
            }
            escaped = false;
            continue;
        }
        match ch {
            '\\' if in_string => {
                escaped = true;
                out.push(ch);
            }
            '"' => {
                in_string = !in_string;
                out.push(ch);
            }
            c if in_string => match c {
                '&' | '<' | '>' | '\'' | '`' | '+' => {
                    out.push_str(&format!("\\u{:04X}", c as u32));
                }
                c if (c as u32) > 127 => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                c => out.push(c),
            },
            c => out.push(c),
        }
    }
    out
}

pub(crate) fn signature(secret: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(escape_for_signature(body).as_bytes());
    format!(
        "sha1={}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Delivers queued webhooks in order, one at a time.
pub(crate) async fn webhook_loop(shared: Weak<crate::Shared>) {
    loop {
        let Some(s) = shared.upgrade() else {
            return;
        };
        if s.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let notified = s.webhooks_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let (mut st, now) = s.lock();
            if st.autotask.pending.is_empty() {
                None
            } else {
                let p = st.autotask.pending.remove(0);
                match (&s.webhook, st.world.autotask.as_mut()) {
                    (Some(_), Some(at)) => {
                        at.webhook_sequence += 1;
                        let seq = at.webhook_sequence;
                        let body = payload(&p, &at.webhook_guid, seq, now).to_string();
                        st.autotask.deliveries.push(Delivery {
                            sequence_number: seq,
                            action: p.action.to_owned(),
                            ticket_id: p.ticket.id,
                            attempts: 0,
                            status: None,
                            error: None,
                            delivered: false,
                        });
                        Some((seq, body, st.epoch))
                    }
                    _ => Some((0, String::new(), st.epoch)),
                }
            }
        };
        match next {
            None => {
                // Bounded wait, so a dropped sandbox lets this task end.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notified).await;
            }
            Some((0, _, _)) => {}
            Some((seq, body, epoch)) => {
                let Some(target) = s.webhook.as_ref() else {
                    continue;
                };
                let sig = signature(&target.secret, &body);
                let outcome = crate::http::post_with_retries(|| {
                    s.http
                        .post(&target.url)
                        .header("content-type", "application/json")
                        .header("x-hook-signature", &sig)
                        .body(body.clone())
                })
                .await;
                if !outcome.delivered {
                    tracing::warn!(
                        url = %target.url,
                        status = outcome.status,
                        error = outcome.error.as_deref(),
                        "autotask webhook delivery failed"
                    );
                }
                let (mut st, _) = s.lock();
                if st.epoch == epoch {
                    if let Some(d) = st
                        .autotask
                        .deliveries
                        .iter_mut()
                        .find(|d| d.sequence_number == seq)
                    {
                        d.attempts = outcome.attempts;
                        d.delivered = outcome.delivered;
                        d.status = outcome.status;
                        d.error = outcome.error;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_autotask_rules() {
        let text = r#"{"Title":"Tom & Jerry <x> 'y' `z` a+b \"q\" café 😀","N":1}"#;
        let e = escape_for_signature(text);
        assert_eq!(
            e,
            r#"{"Title":"Tom \u0026 Jerry \u003Cx\u003E \u0027y\u0027 \u0060z\u0060 a\u002Bb \u0022q\u0022 caf\u00E9 \uD83D\uDE00","N":1}"#
        );
        // Outside strings nothing changes.
        assert_eq!(escape_for_signature("{\"a\":1}"), "{\"a\":1}");
        // A backslash escape that isn't a quote stays as it is.
        assert_eq!(
            escape_for_signature(r#"{"a":"x\\y\n"}"#),
            r#"{"a":"x\\y\n"}"#
        );
    }

    #[test]
    fn signature_format() {
        let s = signature("secret", "{\"a\":\"b\"}");
        assert!(s.starts_with("sha1="));
        assert_eq!(s.len(), 5 + 28);
    }
}
