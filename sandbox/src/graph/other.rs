//! `subscribedSkus`, Intune managed devices, directory role assignments and `$batch`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use super::error::{GraphError, GraphResult};
use super::odata::{EntitySet, Query};
use super::{
    DEVICE_READABLE, DEVICES, SKU_READABLE, authenticate, collection, company, company_mut,
    device_json, entity, find_user, json_response, no_content, sku_json,
};
use crate::http::{AppState, Ctx, parse_json};
use crate::ledger::CORRELATION_HEADER;
use crate::secret::{REDACTED, Secret};
use crate::world::{ROLE_DEFINITIONS, RoleAssignment};

const SKUS: EntitySet = EntitySet {
    resource: "SubscribedSku",
    type_name: "microsoft.graph.subscribedSku",
    filterable: &[],
    schema: super::schema::SUBSCRIBED_SKU,
};

pub(super) async fn subscribed_skus(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &SKUS)?;
    let c = company(&st, &caller)?;
    let skus = c.tenant.skus.iter().map(|s| sku_json(s, c));
    Ok(collection(
        &ctx,
        &query,
        skus,
        SKU_READABLE,
        "subscribedSkus",
        999,
    ))
}

pub(super) async fn list_devices(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &DEVICES)?;
    let c = company(&st, &caller)?;
    let devices = c
        .tenant
        .managed_devices
        .iter()
        .map(|d| device_json(d, &c.tenant));
    Ok(collection(
        &ctx,
        &query,
        devices,
        DEVICE_READABLE,
        "deviceManagement/managedDevices",
        100,
    ))
}

pub(super) async fn user_devices(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &DEVICES)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let devices = c
        .tenant
        .managed_devices
        .iter()
        .filter(|d| d.user_id == u.id)
        .map(|d| device_json(d, &c.tenant));
    Ok(collection(
        &ctx,
        &query,
        devices,
        DEVICE_READABLE,
        "managedDevices",
        100,
    ))
}

pub(super) async fn get_device(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let d = c
        .tenant
        .managed_devices
        .iter()
        .find(|d| d.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let obj = entity(
        &ctx,
        "deviceManagement/managedDevices",
        &Query::default(),
        &device_json(d, &c.tenant),
        DEVICE_READABLE,
    );
    Ok(json_response(StatusCode::OK, obj))
}

/// The wipe parameter that carries a secret.
const UNLOCK_CODE: &str = "macOsUnlockCode";

async fn device_action(
    shared: AppState,
    id: String,
    ctx: Ctx,
    body: Bytes,
    action: &'static str,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match parse_json(&body) {
            Ok(Value::Object(m)) => {
                const WIPE: &[(&str, bool)] = &[
                    ("keepEnrollmentData", true),
                    ("keepUserData", true),
                    (UNLOCK_CODE, false),
                    ("persistEsimDataPlan", true),
                ];
                for (k, v) in &m {
                    let Some((_, is_bool)) = WIPE.iter().find(|(n, _)| n == k) else {
                        return Err(GraphError::odata(format!(
                            "The parameter '{k}' in the request payload is not a valid parameter for the operation '{action}'."
                        )));
                    };
                    if action == "retire"
                        || (*is_bool && !v.is_boolean() && !v.is_null())
                        || (!is_bool && !v.is_string() && !v.is_null())
                    {
                        return Err(GraphError::odata(format!(
                            "The parameter '{k}' in the request payload is not a valid parameter for the operation '{action}'."
                        )));
                    }
                }
                Value::Object(m)
            }
            _ => return Err(GraphError::invalid_json()),
        }
    };
    let c = company_mut(st, &caller)?;
    let d = c
        .tenant
        .managed_devices
        .iter_mut()
        .find(|d| d.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    d.management_state = if action == "wipe" {
        "wipePending".to_owned()
    } else {
        "retirePending".to_owned()
    };
    let did = d.id.clone();
    // The unlock code is the Mac's firmware PIN: the ledger keeps only its digest.
    let mut params = params;
    let mut secret_fingerprint = None;
    if let Some(code) = params.get_mut(UNLOCK_CODE) {
        if let Some(pin) = code.as_str() {
            secret_fingerprint = Some(Secret::new(pin).fingerprint());
            *code = json!(REDACTED);
        }
    }
    let mut m = ctx.mutation(
        "graph",
        &caller.company,
        &format!("device.{action}"),
        Some(&did),
        params,
    );
    m.secret_fingerprint = secret_fingerprint;
    st.ledger.record(m, now);
    Ok(no_content())
}

pub(super) async fn wipe_device(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    device_action(shared, id, ctx, body, "wipe").await
}

pub(super) async fn retire_device(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    device_action(shared, id, ctx, body, "retire").await
}

/// The entity set role assignment responses name in `@odata.context`.
const ROLE_ASSIGNMENTS_SET: &str = "roleManagement/directory/roleAssignments";

const ROLE_ASSIGNMENTS: EntitySet = EntitySet {
    resource: "unifiedRoleAssignment",
    type_name: "microsoft.graph.unifiedRoleAssignment",
    filterable: &["principalId", "roleDefinitionId", "directoryScopeId", "id"],
    schema: super::schema::UNIFIED_ROLE_ASSIGNMENT,
};

/// The role assignment properties the sandbox models (and returns without `$select`).
const ROLE_ASSIGNMENT_READABLE: &[&str] = &[
    "id",
    "principalId",
    "roleDefinitionId",
    "directoryScopeId",
    "appScopeId",
];

fn assignment_json(r: &RoleAssignment) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), json!(r.id));
    m.insert("principalId".into(), json!(r.principal_id));
    m.insert("roleDefinitionId".into(), json!(r.role_definition_id));
    m.insert("directoryScopeId".into(), json!(r.directory_scope_id));
    m.insert("appScopeId".into(), Value::Null);
    m
}

pub(super) async fn role_definitions(
    State(shared): State<AppState>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    authenticate(&st, &ctx, now)?;
    let value: Vec<Value> = ROLE_DEFINITIONS
        .iter()
        .map(|(id, name)| json!({"id": id, "templateId": id, "displayName": name, "isBuiltIn": true, "isEnabled": true}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/graph/v1.0/$metadata#roleManagement/directory/roleDefinitions", ctx.origin),
            "value": value,
        }),
    ))
}

pub(super) async fn list_role_assignments(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &ROLE_ASSIGNMENTS)?;
    let c = company(&st, &caller)?;
    let assignments = c.tenant.role_assignments.iter().map(assignment_json);
    Ok(collection(
        &ctx,
        &query,
        assignments,
        ROLE_ASSIGNMENT_READABLE,
        ROLE_ASSIGNMENTS_SET,
        100,
    ))
}

pub(super) async fn get_role_assignment(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let r = c
        .tenant
        .role_assignments
        .iter()
        .find(|r| r.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let obj = entity(
        &ctx,
        ROLE_ASSIGNMENTS_SET,
        &Query::default(),
        &assignment_json(r),
        ROLE_ASSIGNMENT_READABLE,
    );
    Ok(json_response(StatusCode::OK, obj))
}

pub(super) async fn create_role_assignment(
    State(shared): State<AppState>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let Ok(Value::Object(body)) = parse_json(&body) else {
        return Err(GraphError::invalid_json());
    };
    let get = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(principal), Some(role)) = (get("principalId"), get("roleDefinitionId")) else {
        return Err(GraphError::bad_request(
            "Invalid request: principalId and roleDefinitionId are required.",
        ));
    };
    let scope = get("directoryScopeId").unwrap_or_else(|| "/".to_owned());
    if !ROLE_DEFINITIONS
        .iter()
        .any(|(id, _)| id.eq_ignore_ascii_case(&role))
    {
        return Err(GraphError::not_found(&role));
    }
    let id = st.world.new_guid("roleassignment");
    let c = company_mut(st, &caller)?;
    if !c
        .tenant
        .users
        .iter()
        .any(|u| u.id.eq_ignore_ascii_case(&principal))
    {
        return Err(GraphError::not_found(&principal));
    }
    if c.tenant.role_assignments.iter().any(|r| {
        r.principal_id.eq_ignore_ascii_case(&principal)
            && r.role_definition_id.eq_ignore_ascii_case(&role)
            && r.directory_scope_id == scope
    }) {
        return Err(GraphError::bad_request(
            "A conflicting object with one or more of the specified property values is present in the directory.",
        ));
    }
    let r = RoleAssignment {
        id,
        principal_id: principal.to_ascii_lowercase(),
        role_definition_id: role.to_ascii_lowercase(),
        directory_scope_id: scope,
    };
    let obj = assignment_json(&r);
    c.tenant.role_assignments.push(r);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "role.assign",
            Some(&principal.to_ascii_lowercase()),
            json!({"roleDefinitionId": role, "directoryScopeId": obj["directoryScopeId"]}),
        ),
        now,
    );
    let obj = entity(
        &ctx,
        ROLE_ASSIGNMENTS_SET,
        &Query::default(),
        &obj,
        ROLE_ASSIGNMENT_READABLE,
    );
    Ok(json_response(StatusCode::CREATED, obj))
}

pub(super) async fn delete_role_assignment(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let c = company_mut(st, &caller)?;
    let pos = c
        .tenant
        .role_assignments
        .iter()
        .position(|r| r.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let r = c.tenant.role_assignments.remove(pos);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "role.unassign",
            Some(&r.principal_id),
            json!({"roleDefinitionId": r.role_definition_id, "assignment": r.id}),
        ),
        now,
    );
    Ok(no_content())
}

/// Graph's documented limit of requests per `$batch`.
pub(crate) const BATCH_LIMIT: usize = 20;

/// `$batch`: each inner request goes through the whole router (so auth, faults and the ledger
/// apply to it exactly as to a direct call), in order, honouring `dependsOn`.
pub(super) async fn batch(
    State(shared): State<AppState>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    {
        let (st, now) = shared.lock();
        authenticate(&st, &ctx, now)?;
    }
    let Ok(Value::Object(body)) = parse_json(&body) else {
        return Err(GraphError::invalid_json());
    };
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return Err(GraphError::odata(
            "Invalid batch payload format: 'requests' is required.",
        ));
    };
    if requests.is_empty() {
        return Err(GraphError::odata(
            "Invalid batch payload format: 'requests' is empty.",
        ));
    }
    if requests.len() > BATCH_LIMIT {
        return Err(GraphError::odata(format!(
            "Limit of {BATCH_LIMIT} requests exceeded: the batch contains {} requests.",
            requests.len()
        )));
    }
    let mut seen = Vec::new();
    for r in requests {
        let id = r.get("id").and_then(Value::as_str);
        let method = r.get("method").and_then(Value::as_str);
        let url = r.get("url").and_then(Value::as_str);
        let (Some(id), Some(_), Some(_)) = (id, method, url) else {
            return Err(GraphError::odata(
                "Invalid batch payload format: each request needs 'id', 'method' and 'url'.",
            ));
        };
        if seen.iter().any(|s: &&str| s.eq_ignore_ascii_case(id)) {
            return Err(GraphError::odata(format!(
                "Invalid batch payload format: duplicate request id '{id}'."
            )));
        }
        seen.push(id);
        // URLs are relative to the version (`/users/…`); [unverified] the exact message Graph
        // gives for an absolute one.
        let url = r["url"].as_str().unwrap_or_default();
        if url.contains("://") {
            return Err(GraphError::odata(format!(
                "Invalid request: the url of request id {id} must be relative, e.g. /users/…"
            )));
        }
        // A write without a body or without its Content-Type fails the whole batch.
        let method = r["method"]
            .as_str()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let has_body = r.get("body").is_some_and(|b| !b.is_null());
        let has_content_type = r
            .get("headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type")));
        if matches!(method.as_str(), "POST" | "PATCH" | "PUT") && !(has_body && has_content_type) {
            return Err(GraphError::odata(format!(
                "Write request id : {id} does not contain Content-Type header or body."
            )));
        }
    }
    let app = crate::http::router(shared.clone());
    let mut statuses: Vec<(String, u16)> = Vec::new();
    let mut responses = Vec::new();
    for r in requests {
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let deps: Vec<String> = match r.get("dependsOn") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        };
        let failed_dep = deps.iter().any(|d| {
            statuses
                .iter()
                .find(|(i, _)| i == d)
                .is_none_or(|(_, s)| !(200..300).contains(s))
        });
        if failed_dep {
            statuses.push((id.clone(), 424));
            responses.push(json!({
                "id": id, "status": 424, "headers": {},
                "body": GraphError::new(StatusCode::FAILED_DEPENDENCY, "BadRequest", "Failed dependency.").body(),
            }));
            continue;
        }
        let method = r["method"].as_str().unwrap_or("GET").to_ascii_uppercase();
        let url = r["url"].as_str().unwrap_or_default();
        let url = url
            .strip_prefix("https://graph.microsoft.com/v1.0")
            .unwrap_or(url);
        let uri = format!("/graph/v1.0/{}", url.trim_start_matches('/'));
        let mut builder = Request::builder().method(method.as_str()).uri(&uri);
        for (k, v) in ctx.headers.iter() {
            if k == "authorization"
                || k == CORRELATION_HEADER
                || k == "host"
                || k == "forwarded"
                || k == "x-forwarded-proto"
                || k == "x-forwarded-host"
            {
                builder = builder.header(k, v);
            }
        }
        if let Some(Value::Object(h)) = r.get("headers") {
            for (k, v) in h {
                if let Some(v) = v.as_str() {
                    builder = builder.header(k.as_str(), v);
                }
            }
        }
        let has_body = r.get("body").is_some_and(|b| !b.is_null());
        let has_content_type = r
            .get("headers")
            .and_then(Value::as_object)
            .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type")));
        if has_body && !has_content_type {
            // Graph's batching rules: a request with a body must say what the body is.
            statuses.push((id.clone(), 400));
            responses.push(json!({"id": id, "status": 400, "headers": {},
                "body": GraphError::odata("Content-Type header must be specified in the headers of a batch request that has a body.").body()}));
            continue;
        }
        let inner_body = match r.get("body") {
            Some(b) if !b.is_null() => Body::from(b.to_string()),
            _ => Body::empty(),
        };
        let Ok(req) = builder.body(inner_body) else {
            statuses.push((id.clone(), 400));
            responses.push(json!({"id": id, "status": 400, "headers": {},
                "body": GraphError::odata("Invalid request in batch.").body()}));
            continue;
        };
        let resp = match app.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status().as_u16();
        let mut headers = Map::new();
        for name in ["retry-after", "content-type", "location"] {
            if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
                let key = if name == "content-type" {
                    "Content-Type"
                } else {
                    name
                };
                headers.insert(key.to_owned(), json!(v));
            }
        }
        let bytes = axum::body::to_bytes(resp.into_body(), 4 * 1024 * 1024)
            .await
            .unwrap_or_default();
        let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
        statuses.push((id.clone(), status));
        let mut entry = json!({"id": id, "status": status, "headers": headers});
        if !body.is_null() {
            entry["body"] = body;
        }
        responses.push(entry);
    }
    // Graph answers in any order, not the order asked: so does the sandbox (shuffled from its
    // seed and the batch's ids, so a run is reproducible).
    {
        use rand::SeedableRng as _;
        use rand::seq::SliceRandom as _;
        let ids: String = seen.concat();
        let mix = crate::ids::number(shared.seed, &["batch-order", &ids], u64::MAX);
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix);
        responses.shuffle(&mut rng);
    }
    Ok(json_response(
        StatusCode::OK,
        json!({ "responses": responses }),
    ))
}
