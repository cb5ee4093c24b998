//! `/users` and everything hanging off a user: manager, memberOf, licences, sessions,
//! authentication methods, and the deleted-items bin.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::error::{GraphError, GraphResult};
use super::odata::Query;
use super::{
    GROUPS, Kind, SYNCED_USER_CLOUD_WRITABLE, USER_DEFAULT, USER_WRITABLE, USERS, authenticate,
    collection, company, company_mut, entity, find_user, group_json, is_privileged, json_response,
    no_content, ref_target, ts, user_index, user_json,
};
use crate::http::{AppState, Ctx, parse_json};
use crate::secret::{REDACTED, Secret};
use crate::world::{self, AssignedLicense, Password, Tenant, User};

fn body_object(body: &[u8]) -> GraphResult<Map<String, Value>> {
    match parse_json(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(GraphError::invalid_json()),
    }
}

/// Azure AD's default password policy: 8-256 characters, three of four character classes.
pub(crate) fn password_ok(p: &str) -> bool {
    let classes = [
        p.chars().any(|c| c.is_ascii_lowercase()),
        p.chars().any(|c| c.is_ascii_uppercase()),
        p.chars().any(|c| c.is_ascii_digit()),
        p.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    (8..=256).contains(&p.chars().count()) && classes.iter().filter(|b| **b).count() >= 3
}

fn complexity_error() -> GraphError {
    GraphError::bad_request(
        "The specified password does not comply with password complexity requirements. Please provide a different password.",
    )
}

/// Validates the shape of a user body; returns the password (if any) for the caller to store.
fn validate_user_body(body: &Map<String, Value>) -> GraphResult<Option<(String, bool)>> {
    let mut password = None;
    for (k, v) in body {
        if k.starts_with("@odata") {
            continue;
        }
        let Some((_, kind)) = USER_WRITABLE.iter().find(|(n, _)| n == k) else {
            if super::USER_READABLE.contains(&k.as_str()) {
                return Err(GraphError::bad_request(format!(
                    "Property '{k}' is read-only and cannot be set."
                )));
            }
            return Err(GraphError::odata(format!(
                "Property '{k}' does not exist as a declared property or extension property."
            )));
        };
        let ok = match kind {
            Kind::Str => v.is_string() || v.is_null(),
            Kind::Bool => v.is_boolean(),
            Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            Kind::PasswordProfile => {
                let Some(pp) = v.as_object() else {
                    return Err(GraphError::invalid_value(k, "User"));
                };
                for (pk, pv) in pp {
                    match pk.as_str() {
                        "password" if pv.is_string() => {}
                        "forceChangePasswordNextSignIn"
                        | "forceChangePasswordNextSignInWithMfa"
                            if pv.is_boolean() => {}
                        _ => return Err(GraphError::invalid_value(k, "User")),
                    }
                }
                let Some(pw) = pp.get("password").and_then(Value::as_str) else {
                    return Err(GraphError::invalid_value(k, "User"));
                };
                if !password_ok(pw) {
                    return Err(complexity_error());
                }
                let force = pp
                    .get("forceChangePasswordNextSignIn")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                password = Some((pw.to_owned(), force));
                true
            }
        };
        if !ok {
            return Err(GraphError::invalid_value(k, "User"));
        }
    }
    if let Some(loc) = body.get("usageLocation").and_then(Value::as_str) {
        if loc.len() != 2 || !loc.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(GraphError::invalid_value("usageLocation", "User"));
        }
    }
    if let Some(nick) = body.get("mailNickname").and_then(Value::as_str) {
        let bad = nick.is_empty()
            || nick.len() > 64
            || nick
                .chars()
                .any(|c| c.is_whitespace() || "@()\\[]\";:<>,".contains(c));
        if bad {
            return Err(GraphError::invalid_value("mailNickname", "User"));
        }
    }
    Ok(password)
}

fn check_upn(t: &Tenant, upn: &str, except_id: Option<&str>) -> GraphResult<()> {
    let Some((local, domain)) = upn.split_once('@') else {
        return Err(GraphError::invalid_value("userPrincipalName", "User"));
    };
    if local.is_empty() || local.contains(' ') {
        return Err(GraphError::invalid_value("userPrincipalName", "User"));
    }
    if !t.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        return Err(GraphError::bad_request(
            "The domain portion of the userPrincipalName property is invalid. You must use one of the verified domain names in your organization.",
        ));
    }
    if t.users
        .iter()
        .any(|u| u.upn().eq_ignore_ascii_case(upn) && Some(u.id.as_str()) != except_id)
    {
        return Err(GraphError::upn_conflict());
    }
    Ok(())
}

/// The body as the ledger may keep it.
fn redacted(body: &Map<String, Value>) -> Value {
    let mut b = body.clone();
    if let Some(Value::Object(pp)) = b.get_mut("passwordProfile") {
        if pp.contains_key("password") {
            pp.insert("password".into(), json!(REDACTED));
        }
    }
    Value::Object(b)
}

pub(super) async fn list(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse_advanced(q.as_deref(), &USERS, ctx.eventual())?;
    let c = company(&st, &caller)?;
    let users = c.tenant.users.iter().map(|u| user_json(u, &c.tenant));
    Ok(collection(&ctx, &query, users, USER_DEFAULT, "users", 100))
}

pub(super) async fn get_one(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &USERS)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let obj = entity(
        &ctx,
        "users",
        &query,
        &user_json(u, &c.tenant),
        USER_DEFAULT,
    );
    Ok(json_response(StatusCode::OK, obj))
}

pub(super) async fn create(
    State(shared): State<AppState>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let body = body_object(&body)?;
    let password = validate_user_body(&body)?;
    for required in [
        "accountEnabled",
        "displayName",
        "mailNickname",
        "passwordProfile",
        "userPrincipalName",
    ] {
        if body.get(required).is_none_or(Value::is_null) {
            return Err(GraphError::invalid_value(required, "User"));
        }
    }
    let upn = body
        .get("userPrincipalName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    check_upn(&company(st, &caller)?.tenant, &upn, None)?;
    let id = st.world.new_guid("user");
    let mut props = Map::new();
    for (k, v) in &body {
        if k == "passwordProfile" || k.starts_with("@odata") || v.is_null() {
            continue;
        }
        props.insert(k.clone(), v.clone());
    }
    props.entry("userType").or_insert_with(|| json!("Member"));
    let (pw, force) =
        password.ok_or_else(|| GraphError::invalid_value("passwordProfile", "User"))?;
    let secret = Secret::new(&pw);
    let user = User {
        id: id.clone(),
        props,
        password: Some(Password {
            value: secret.clone(),
            force_change_next_sign_in: force,
            set_at: now,
        }),
        licenses: vec![],
        manager: None,
        auth_methods: vec![],
        on_prem: None,
        created_at: now,
        deleted_at: None,
        sessions_revoked_at: None,
        mailbox_wanted: None,
    };
    let c = company_mut(st, &caller)?;
    let obj = entity(
        &ctx,
        "users",
        &Query::default(),
        &user_json(&user, &c.tenant),
        USER_DEFAULT,
    );
    c.tenant.users.push(user);
    let mut m = ctx.mutation(
        "graph",
        &caller.company,
        "user.create",
        Some(&id),
        redacted(&body),
    );
    m.secret_fingerprint = Some(secret.fingerprint());
    st.ledger.record(m, now);
    Ok(json_response(StatusCode::CREATED, obj))
}

pub(super) async fn update(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let body = body_object(&body)?;
    let password = validate_user_body(&body)?;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let user_id = c.tenant.users[idx].id.clone();
    if c.tenant.users[idx].synced() {
        if body
            .keys()
            .any(|k| !k.starts_with("@odata") && !SYNCED_USER_CLOUD_WRITABLE.contains(&k.as_str()))
        {
            return Err(GraphError::synced_object());
        }
    }
    if is_privileged(&c.tenant, &user_id) {
        return Err(GraphError::denied());
    }
    for required in [
        "displayName",
        "mailNickname",
        "userPrincipalName",
        "accountEnabled",
    ] {
        if body.get(required).is_some_and(Value::is_null) {
            return Err(GraphError::invalid_value(required, "User"));
        }
    }
    if let Some(upn) = body.get("userPrincipalName").and_then(Value::as_str) {
        check_upn(&c.tenant, upn, Some(&user_id))?;
    }
    let user = &mut c.tenant.users[idx];
    let mut secret_fp = None;
    for (k, v) in &body {
        if k.starts_with("@odata") || k == "passwordProfile" {
            continue;
        }
        if v.is_null() {
            user.props.remove(k);
        } else {
            user.props.insert(k.clone(), v.clone());
        }
    }
    if let Some((pw, force)) = password {
        let secret = Secret::new(&pw);
        secret_fp = Some(secret.fingerprint());
        user.password = Some(Password {
            value: secret,
            force_change_next_sign_in: force,
            set_at: now,
        });
    }
    if !body.is_empty() {
        let action = if body.contains_key("passwordProfile") && body.len() == 1 {
            "user.reset_password"
        } else {
            "user.update"
        };
        let mut m = ctx.mutation(
            "graph",
            &caller.company,
            action,
            Some(&user_id),
            redacted(&body),
        );
        m.secret_fingerprint = secret_fp;
        st.ledger.record(m, now);
    }
    Ok(no_content())
}

pub(super) async fn delete_user(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    if c.tenant.users[idx].synced() {
        return Err(GraphError::synced_object());
    }
    let user_id = c.tenant.users[idx].id.clone();
    if is_privileged(&c.tenant, &user_id) {
        return Err(GraphError::denied());
    }
    let mut u = c.tenant.users.remove(idx);
    u.deleted_at = Some(now);
    world::remove_references(&mut c.tenant, &u.id);
    c.tenant.deleted_users.push(u);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.delete",
            Some(&user_id),
            json!({}),
        ),
        now,
    );
    Ok(no_content())
}

pub(super) async fn get_manager(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let m = u
        .manager
        .as_ref()
        .and_then(|mid| c.tenant.users.iter().find(|x| &x.id == mid))
        .ok_or_else(|| GraphError::not_found("manager"))?;
    let obj = entity(
        &ctx,
        "directoryObjects",
        &Query::default(),
        &user_json(m, &c.tenant),
        USER_DEFAULT,
    );
    Ok(json_response(StatusCode::OK, obj))
}

/// `GET /users/{id}/manager/$ref`: the manager as a reference (`@odata.id`), 404 when none.
pub(super) async fn get_manager_ref(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let m = u
        .manager
        .as_ref()
        .and_then(|mid| c.tenant.users.iter().find(|x| &x.id == mid))
        .ok_or_else(|| GraphError::not_found("manager"))?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/graph/v1.0/$metadata#$ref", ctx.origin),
            "@odata.id": super::directory_ref(&ctx.origin, &c.tenant.id, &m.id, "User"),
        }),
    ))
}

pub(super) async fn set_manager(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let body = parse_json(&body).map_err(|_| GraphError::invalid_json())?;
    let manager_id = ref_target(&body)?;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    if !c.tenant.users.iter().any(|u| u.id == manager_id) {
        return Err(GraphError::not_found(&manager_id));
    }
    let user = &mut c.tenant.users[idx];
    if user.synced() {
        return Err(GraphError::synced_object());
    }
    if user.id == manager_id {
        return Err(GraphError::bad_request(
            "Invalid object identifier: a user cannot be their own manager.",
        ));
    }
    user.manager = Some(manager_id.clone());
    let user_id = user.id.clone();
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.set_manager",
            Some(&user_id),
            json!({"manager": manager_id}),
        ),
        now,
    );
    Ok(no_content())
}

pub(super) async fn remove_manager(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let user = &mut c.tenant.users[idx];
    if user.synced() {
        return Err(GraphError::synced_object());
    }
    if user.manager.take().is_none() {
        return Err(GraphError::not_found("manager"));
    }
    let user_id = user.id.clone();
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.remove_manager",
            Some(&user_id),
            json!({}),
        ),
        now,
    );
    Ok(no_content())
}

pub(super) async fn member_of(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &GROUPS)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let groups = c
        .tenant
        .groups
        .iter()
        .filter(|g| g.members.contains(&u.id))
        .map(group_json);
    // The cast to microsoft.graph.group (or its alias graph.group) answers a collection of
    // groups.
    let context =
        if ctx.path.ends_with("/microsoft.graph.group") || ctx.path.ends_with("/graph.group") {
            "groups"
        } else {
            "directoryObjects"
        };
    Ok(collection(
        &ctx,
        &query,
        groups,
        super::GROUP_READABLE,
        context,
        100,
    ))
}

pub(super) async fn assign_license(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let body = body_object(&body)?;
    let missing: Vec<&str> = ["addLicenses", "removeLicenses"]
        .into_iter()
        .filter(|k| !body.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(GraphError::bad_request(format!(
            "One or more parameters of the operation 'assignLicense' are missing from the request payload. The missing parameters are: {}.",
            missing.join(", ")
        )));
    }
    let null_guid = || {
        GraphError::odata(
            "A null value was found with the expected type 'Edm.Guid[Nullable=False]'. The expected type 'Edm.Guid[Nullable=False]' does not allow null values.",
        )
    };
    let Some(add) = body.get("addLicenses").and_then(Value::as_array) else {
        return Err(GraphError::invalid_value("addLicenses", "User"));
    };
    let Some(remove) = body.get("removeLicenses").and_then(Value::as_array) else {
        return Err(GraphError::invalid_value("removeLicenses", "User"));
    };
    let mut adds: Vec<AssignedLicense> = Vec::new();
    for a in add {
        let Some(obj) = a.as_object() else {
            return Err(GraphError::invalid_value("addLicenses", "User"));
        };
        let sku = match obj.get("skuId") {
            None | Some(Value::Null) => return Err(null_guid()),
            Some(Value::String(s)) if crate::ids::is_guid(s) => s.to_ascii_lowercase(),
            Some(_) => return Err(GraphError::invalid_value("skuId", "AssignedLicense")),
        };
        let disabled = match obj.get("disabledPlans") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| GraphError::invalid_value("disabledPlans", "AssignedLicense"))?,
            Some(_) => {
                return Err(GraphError::invalid_value(
                    "disabledPlans",
                    "AssignedLicense",
                ));
            }
        };
        adds.push(AssignedLicense {
            sku_id: sku,
            disabled_plans: disabled,
        });
    }
    let mut removes = Vec::new();
    for r in remove {
        match r {
            Value::Null => return Err(null_guid()),
            Value::String(s) if crate::ids::is_guid(s) => removes.push(s.to_ascii_lowercase()),
            _ => return Err(GraphError::invalid_value("removeLicenses", "User")),
        }
    }
    let seed = st.world.seed;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    for sku in adds.iter().map(|a| &a.sku_id).chain(removes.iter()) {
        if !c.tenant.skus.iter().any(|s| &s.sku_id == sku) {
            return Err(GraphError::bad_request(format!(
                "License {sku} does not correspond to a valid company License."
            )));
        }
    }
    let user = &c.tenant.users[idx];
    if !adds.is_empty() && user.str_prop("usageLocation").is_none() {
        return Err(GraphError::bad_request(
            "License assignment cannot be done for user with invalid usage location.",
        ));
    }
    for a in &adds {
        if user.licenses.iter().any(|l| l.sku_id == a.sku_id) || removes.contains(&a.sku_id) {
            continue;
        }
        let sku = c
            .tenant
            .skus
            .iter()
            .find(|s| s.sku_id == a.sku_id)
            .expect("checked above");
        if world::consumed_units(&c.tenant, &a.sku_id) >= sku.seats {
            let msg = format!(
                "Subscription with SKU {} does not have any available licenses.",
                a.sku_id
            );
            let mut e = GraphError::bad_request(msg.clone());
            e.details = vec![json!({"code": "CountViolation", "message": msg, "target": a.sku_id})];
            return Err(e);
        }
    }
    let user = &mut c.tenant.users[idx];
    user.licenses.retain(|l| !removes.contains(&l.sku_id));
    for a in &adds {
        match user.licenses.iter_mut().find(|l| l.sku_id == a.sku_id) {
            Some(l) => l.disabled_plans = a.disabled_plans.clone(),
            None => user.licenses.push(a.clone()),
        }
    }
    let user_id = user.id.clone();
    world::ensure_mailbox(c, seed, &user_id, now, false);
    let obj = entity(
        &ctx,
        "users",
        &Query::default(),
        &user_json(&c.tenant.users[idx], &c.tenant),
        USER_DEFAULT,
    );
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.assign_license",
            Some(&user_id),
            json!({"addLicenses": adds.iter().map(|a| &a.sku_id).collect::<Vec<_>>(), "removeLicenses": removes}),
        ),
        now,
    );
    Ok(json_response(StatusCode::OK, obj))
}

pub(super) async fn revoke_sessions(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let user = &mut c.tenant.users[idx];
    user.sessions_revoked_at = Some(now);
    let (user_id, upn) = (user.id.clone(), user.upn().to_owned());
    st.tokens.revoke(Some(&upn), now);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.revoke_sessions",
            Some(&user_id),
            json!({}),
        ),
        now,
    );
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/graph/v1.0/$metadata#Edm.Boolean", ctx.origin),
            "value": true
        }),
    ))
}

/// The Graph path segment for each method kind (`DELETE /users/{id}/authentication/{segment}/{id}`).
pub(crate) const METHOD_SEGMENTS: &[(&str, &str)] = &[
    ("microsoftAuthenticator", "microsoftAuthenticatorMethods"),
    ("phone", "phoneMethods"),
    ("fido2", "fido2Methods"),
    ("softwareOath", "softwareOathMethods"),
    ("windowsHelloForBusiness", "windowsHelloForBusinessMethods"),
    ("email", "emailMethods"),
    ("temporaryAccessPass", "temporaryAccessPassMethods"),
];

/// The well-known id of every user's password method.
pub(crate) const PASSWORD_METHOD_ID: &str = "28c10230-6103-485e-b985-444c60001490";

fn method_json(kind: &str, id: &str, display: Option<&str>, created: DateTime<Utc>) -> Value {
    let mut m = json!({
        "@odata.type": format!("#microsoft.graph.{kind}AuthenticationMethod"),
        "id": id,
        "createdDateTime": ts(created),
    });
    match kind {
        "phone" => {
            m["phoneNumber"] = json!("+1 2065550123");
            m["phoneType"] = json!("mobile");
            m["smsSignInState"] = json!("notAllowedByPolicy");
        }
        "email" => m["emailAddress"] = json!("recovery@example.com"),
        _ => m["displayName"] = json!(display.unwrap_or(kind)),
    }
    m
}

pub(super) async fn list_methods(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let mut value = vec![json!({
        "@odata.type": "#microsoft.graph.passwordAuthenticationMethod",
        "id": PASSWORD_METHOD_ID,
        "password": null,
        "createdDateTime": ts(u.password.as_ref().map_or(u.created_at, |p| p.set_at)),
    })];
    value.extend(
        u.auth_methods
            .iter()
            .map(|m| method_json(&m.kind, &m.id, m.display_name.as_deref(), m.created_at)),
    );
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/graph/v1.0/$metadata#users('{}')/authentication/methods", ctx.origin, u.id),
            "value": value,
        }),
    ))
}

pub(super) async fn delete_method(
    State(shared): State<AppState>,
    Path((id, segment, method_id)): Path<(String, String, String)>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    if segment == "passwordMethods" {
        return Err(GraphError::odata(
            "The password authentication method cannot be deleted.",
        ));
    }
    let Some((kind, _)) = METHOD_SEGMENTS.iter().find(|(_, s)| *s == segment) else {
        return Err(GraphError::new(
            StatusCode::NOT_FOUND,
            "BadRequest",
            format!("Resource not found for the segment '{segment}'."),
        ));
    };
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let user = &mut c.tenant.users[idx];
    let pos = user
        .auth_methods
        .iter()
        .position(|m| m.id.eq_ignore_ascii_case(&method_id) && m.kind == *kind)
        .ok_or_else(|| GraphError::not_found(&method_id))?;
    user.auth_methods.remove(pos);
    let user_id = user.id.clone();
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.delete_auth_method",
            Some(&user_id),
            json!({"kind": kind, "method": method_id}),
        ),
        now,
    );
    Ok(no_content())
}

/// `resetPassword` on the password method: an admin reset that, for a directory-synced user, is
/// written back to on-prem AD (password writeback through Entra Connect). Answers 202 with the
/// `Location` of a long-running operation, as Graph does. `newPassword` is optional, as Microsoft
/// documents: for a cloud-only user, leaving it out makes the service generate one and answer it
/// in the body (`passwordResetResponse`); a synced user's writeback needs it.
pub(super) async fn reset_password(
    State(shared): State<AppState>,
    Path((id, method_id)): Path<(String, String)>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    // Microsoft documents resetPassword as not supported with application permissions: only a
    // user's delegated rights may call it.
    if caller.app_only {
        return Err(GraphError::denied());
    }
    let params = body_object(&body)?;
    if let Some(k) = params.keys().find(|k| k.as_str() != "newPassword") {
        return Err(GraphError::odata(format!(
            "The parameter '{k}' in the request payload is not a valid parameter for the operation 'resetPassword'."
        )));
    }
    let given = match params.get("newPassword") {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => {
            return Err(GraphError::invalid_value(
                "newPassword",
                "passwordAuthenticationMethod",
            ));
        }
    };
    let generated = given.is_none();
    let op_id = st.world.new_guid("operation");
    // A system-generated password: from the sandbox's seeded ids, strong enough for any policy.
    let pw = given.unwrap_or_else(|| {
        format!(
            "Sbx-{}!a9",
            st.world.new_guid("generated-password").replace('-', "")
        )
    });
    let c = company_mut(st, &caller)?;
    let idx = user_index(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    if !method_id.eq_ignore_ascii_case(PASSWORD_METHOD_ID) {
        return Err(GraphError::not_found(&method_id));
    }
    let user_id = c.tenant.users[idx].id.clone();
    if is_privileged(&c.tenant, &user_id) {
        return Err(GraphError::denied());
    }
    let secret = Secret::new(&pw);
    let password = Password {
        value: secret.clone(),
        force_change_next_sign_in: true,
        set_at: now,
    };
    let writeback = c.tenant.users[idx].on_prem.clone();
    if generated && writeback.is_some() {
        return Err(GraphError::bad_request(
            "newPassword is required to reset the password of a user whose password is written back to on-premises Active Directory.",
        ));
    }
    match &writeback {
        Some(link) => {
            if c.entra_connect.is_none() {
                return Err(GraphError::bad_request(
                    "Password writeback is not enabled for this tenant.",
                ));
            }
            let Some(forest) = c.ad.as_mut() else {
                return Err(GraphError::bad_request(
                    "Password writeback is not enabled for this tenant.",
                ));
            };
            let long_enough = pw.chars().count() >= forest.min_password_length;
            if !long_enough || !password_ok(&pw) {
                return Err(complexity_error());
            }
            let Some(a) = forest.users.iter_mut().find(|u| {
                !u.deleted
                    && u.sam_account_name
                        .eq_ignore_ascii_case(&link.sam_account_name)
            }) else {
                return Err(GraphError::not_found(&id));
            };
            a.password = Some(password);
        }
        None => {
            if !password_ok(&pw) {
                return Err(complexity_error());
            }
            c.tenant.users[idx].password = Some(password);
        }
    }
    c.tenant
        .password_operations
        .push((op_id.clone(), user_id.clone(), now));
    let mut m = ctx.mutation(
        "graph",
        &caller.company,
        "user.reset_password",
        Some(&user_id),
        json!({"newPassword": REDACTED, "writeback": writeback.is_some()}),
    );
    m.secret_fingerprint = Some(secret.fingerprint());
    st.ledger.record(m, now);
    let location = format!(
        "{}/graph/v1.0/users/{user_id}/authentication/operations/{op_id}",
        ctx.origin
    );
    let mut resp = if generated {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.passwordResetResponse",
                "newPassword": pw,
            })),
        )
            .into_response()
    } else {
        StatusCode::ACCEPTED.into_response()
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&location) {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

pub(super) async fn get_operation(
    State(shared): State<AppState>,
    Path((id, op_id)): Path<(String, String)>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let u = find_user(&c.tenant, &id).ok_or_else(|| GraphError::not_found(&id))?;
    let (op, _, created) = c
        .tenant
        .password_operations
        .iter()
        .find(|(o, uid, _)| o.eq_ignore_ascii_case(&op_id) && *uid == u.id)
        .ok_or_else(|| GraphError::not_found(&op_id))?;
    Ok(json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/graph/v1.0/$metadata#users('{}')/authentication/operations/$entity", ctx.origin, u.id),
            "id": op,
            "createdDateTime": ts(*created),
            "lastActionDateTime": ts(*created),
            "resourceLocation": null,
            "status": "succeeded",
            "statusDetail": null,
        }),
    ))
}

pub(super) async fn list_deleted(
    State(shared): State<AppState>,
    ctx: Ctx,
    RawQuery(q): RawQuery,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let query = Query::parse(q.as_deref(), &USERS)?;
    let c = company(&st, &caller)?;
    let mut defaults = USER_DEFAULT.to_vec();
    defaults.push("deletedDateTime");
    let users = c
        .tenant
        .deleted_users
        .iter()
        .map(|u| user_json(u, &c.tenant));
    Ok(collection(
        &ctx,
        &query,
        users,
        &defaults,
        "directoryObjects",
        100,
    ))
}

pub(super) async fn get_deleted(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
) -> GraphResult<Response> {
    let (st, now) = shared.lock();
    let caller = authenticate(&st, &ctx, now)?;
    let c = company(&st, &caller)?;
    let u = c
        .tenant
        .deleted_users
        .iter()
        .find(|u| u.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let mut defaults = USER_DEFAULT.to_vec();
    defaults.push("deletedDateTime");
    let obj = entity(
        &ctx,
        "directoryObjects",
        &Query::default(),
        &user_json(u, &c.tenant),
        &defaults,
    );
    Ok(json_response(StatusCode::OK, obj))
}

pub(super) async fn purge_deleted(
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
        .deleted_users
        .iter()
        .position(|u| u.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let u = c.tenant.deleted_users.remove(pos);
    c.exchange_online.mailboxes.retain(|m| m.user_id != u.id);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.purge",
            Some(&u.id),
            json!({}),
        ),
        now,
    );
    Ok(no_content())
}

/// Optional parameters of `directoryObject/restore`.
pub(crate) const RESTORE_PARAMS: &[&str] = &["autoReconcileProxyConflict", "newUserPrincipalName"];

pub(super) async fn restore_deleted(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> GraphResult<Response> {
    let (mut guard, now) = shared.lock();
    let st = &mut *guard;
    let caller = authenticate(st, &ctx, now)?;
    let params = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        body_object(&body)?
    };
    for (k, v) in &params {
        let ok = RESTORE_PARAMS.contains(&k.as_str())
            && if k == "newUserPrincipalName" {
                v.is_string()
            } else {
                v.is_boolean()
            };
        if !ok {
            return Err(GraphError::odata(format!(
                "The parameter '{k}' in the request payload is not a valid parameter for the operation 'restore'."
            )));
        }
    }
    let new_upn = params
        .get("newUserPrincipalName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let c = company_mut(st, &caller)?;
    let pos = c
        .tenant
        .deleted_users
        .iter()
        .position(|u| u.id.eq_ignore_ascii_case(&id))
        .ok_or_else(|| GraphError::not_found(&id))?;
    let upn = new_upn
        .clone()
        .unwrap_or_else(|| c.tenant.deleted_users[pos].upn().to_owned());
    if new_upn.is_some() {
        check_upn(&c.tenant, &upn, None)?;
    } else if c
        .tenant
        .users
        .iter()
        .any(|u| u.upn().eq_ignore_ascii_case(&upn))
    {
        return Err(GraphError::upn_conflict());
    }
    let mut u = c.tenant.deleted_users.remove(pos);
    u.deleted_at = None;
    u.props.insert("userPrincipalName".into(), json!(upn));
    let user_id = u.id.clone();
    let obj = user_json(&u, &c.tenant);
    c.tenant.users.push(u);
    st.ledger.record(
        ctx.mutation(
            "graph",
            &caller.company,
            "user.restore",
            Some(&user_id),
            json!({}),
        ),
        now,
    );
    let obj = entity(
        &ctx,
        "directoryObjects",
        &Query::default(),
        &obj,
        USER_DEFAULT,
    );
    Ok(json_response(StatusCode::OK, obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy() {
        assert!(password_ok("Passw0rd!"));
        assert!(password_ok("abcDEF123"));
        assert!(!password_ok("short1A"));
        assert!(!password_ok("alllowercase"));
        assert!(!password_ok("lowercase123"));
    }

    #[test]
    fn body_validation() {
        let ok = json!({"displayName": "x", "passwordProfile": {"password": "Passw0rd!"}});
        let pw = validate_user_body(ok.as_object().unwrap()).unwrap();
        assert_eq!(pw, Some(("Passw0rd!".to_owned(), true)));
        let bad = json!({"accountEnabled": "yes"});
        assert_eq!(
            validate_user_body(bad.as_object().unwrap())
                .unwrap_err()
                .message,
            "Invalid value specified for property 'accountEnabled' of resource 'User'."
        );
        let unknown = json!({"favouriteColour": "blue"});
        assert!(validate_user_body(unknown.as_object().unwrap()).is_err());
        let ro = json!({"id": "x"});
        assert!(
            validate_user_body(ro.as_object().unwrap())
                .unwrap_err()
                .message
                .contains("read-only")
        );
        let weak = json!({"passwordProfile": {"password": "weak"}});
        assert!(
            validate_user_body(weak.as_object().unwrap())
                .unwrap_err()
                .message
                .contains("complexity")
        );
        let loc = json!({"usageLocation": "GBR"});
        assert!(validate_user_body(loc.as_object().unwrap()).is_err());
        let r = redacted(
            json!({"passwordProfile": {"password": "Passw0rd!"}})
                .as_object()
                .unwrap(),
        );
        assert_eq!(r["passwordProfile"]["password"], REDACTED);
    }
}
