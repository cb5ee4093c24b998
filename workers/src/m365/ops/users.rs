//! Users in Entra ID through Graph: create, read, update, sign-in on and off, manager, usage
//! location, delete and restore, and waiting for a synced user.

use std::time::Duration;

use serde_json::{Map, Value, json};
use steward_schemas::{OpField, OpSpec, PermissionGroup, Reversibility, Rollback, System};

use super::{
    Body, Ctx, Fail, OpResult, USER_SELECT, catalog, done, find_user, inverse, is_guid, opt_text,
    own, s, seg, synced, synced_refusal, text, user,
};
use crate::op::{OpError, OpOutcome};

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("user.create"), |c, i| Box::pin(create(c, i))));
    v.push((catalog("user.get"), |c, i| Box::pin(get(c, i))));
    v.push((catalog("user.update"), |c, i| Box::pin(update(c, i))));
    v.push((catalog("user.disable"), |c, i| {
        Box::pin(set_enabled(c, i, false))
    }));
    v.push((catalog("user.enable"), |c, i| {
        Box::pin(set_enabled(c, i, true))
    }));
    v.push((catalog("user.set_manager"), |c, i| {
        Box::pin(set_manager(c, i))
    }));
    v.push((&CLEAR_MANAGER, |c, i| Box::pin(clear_manager(c, i))));
    v.push((&SET_USAGE_LOCATION, |c, i| {
        Box::pin(set_usage_location(c, i))
    }));
    v.push((catalog("user.delete"), |c, i| Box::pin(delete(c, i))));
    v.push((&RESTORE, |c, i| Box::pin(restore(c, i))));
    v.push((catalog("directory_sync.wait_for_user"), |c, i| {
        Box::pin(wait_for_user(c, i))
    }));
}

static CLEAR_MANAGER: OpSpec = own(
    "user.clear_manager",
    "remove a user's manager",
    PermissionGroup::Users,
    System::EntraId,
    Reversibility::Reversible,
    &[OpField::required("user", "the user: UPN, or object id")],
    false,
);

static SET_USAGE_LOCATION: OpSpec = own(
    "user.set_usage_location",
    "set a user's usage location (needed before a licence can be assigned)",
    PermissionGroup::Licensing,
    System::EntraId,
    Reversibility::Reversible,
    &[
        OpField::required("user", "the user: UPN, or object id"),
        OpField::required("usage_location", "two-letter ISO country code, e.g. GB"),
    ],
    false,
);

static RESTORE: OpSpec = own(
    "user.restore",
    "restore a deleted user (within 30 days of its deletion)",
    PermissionGroup::Users,
    System::EntraId,
    Reversibility::Reversible,
    &[OpField::required("user", "the deleted user's object id")],
    false,
);

/// The user properties `user.update` may set (writable `user` properties of the Graph v1.0
/// CSDL that onboarding touches; sign-in, password, licences and manager have their own ops).
const UPDATABLE: &[&str] = &[
    "displayName",
    "givenName",
    "surname",
    "jobTitle",
    "department",
    "officeLocation",
    "mobilePhone",
    "businessPhones",
    "companyName",
    "employeeId",
    "employeeType",
    "employeeHireDate",
    "employeeLeaveDateTime",
    "city",
    "country",
    "state",
    "streetAddress",
    "postalCode",
    "preferredLanguage",
    "usageLocation",
    "otherMails",
];

/// The workflow input name → Graph property, for inputs spelled the catalog's way.
fn graph_name(k: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for ch in k.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn mail_nickname(upn: &str) -> String {
    let local = upn.split('@').next().unwrap_or(upn);
    let nick: String = local
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if nick.is_empty() {
        "user".to_owned()
    } else {
        nick
    }
}

fn usage_location(field: &str, v: &str) -> Result<String, Fail> {
    if v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(v.to_ascii_uppercase())
    } else {
        Err(OpError::bad_input(
            field,
            &format!("`{v}` is not a two-letter ISO country code (e.g. GB, US)"),
        )
        .into())
    }
}

async fn create(c: &Ctx<'_>, input: &Value) -> OpResult {
    let upn = text(input, "user_principal_name")?;
    let display = text(input, "display_name")?;
    if opt_text(input, "ou")?.is_some() {
        return Err(OpError::bad_input(
            "ou",
            "is for Active Directory; a cloud-only company's users have no OU, so leave it out",
        )
        .into());
    }
    match opt_text(input, "password_ref")? {
        None | Some("generate") => {}
        Some(_) => {
            return Err(OpError::bad_input(
                "password_ref",
                "reading a chosen password from the secret store is not supported yet; leave it out (or write `generate`) and a password is generated and delivered by one-time link",
            )
            .into());
        }
    }
    let existing = find_user(c, upn).await?;
    let prior = c.prior(json!({"existed": existing.is_some()})).await?;
    let ours = prior["existed"] == json!(false);
    if let Some(u) = existing {
        if !ours {
            return Err(OpError::Terminal {
                message: format!(
                    "a user {upn} already exists (object id {}); choose another UPN, or use user.update to change that user",
                    s(&u, "id")
                ),
                code: Some("ObjectConflict".to_owned()),
            }
            .into());
        }
        // An earlier attempt created it and its answer was lost: the password it used is the one
        // kept under this step (the sink gives the same one back), already delivered.
        let kept = keep_password(c, upn).await?;
        return created(&u, &kept.reference);
    }
    let kept = keep_password(c, upn).await?;
    let mut body = Map::new();
    body.insert("accountEnabled".into(), json!(true));
    body.insert("displayName".into(), json!(display));
    body.insert("mailNickname".into(), json!(mail_nickname(upn)));
    body.insert("userPrincipalName".into(), json!(upn));
    body.insert(
        "passwordProfile".into(),
        json!({"forceChangePasswordNextSignIn": true, "password": kept.secret.expose()}),
    );
    for field in ["given_name", "surname", "job_title", "department"] {
        if let Some(v) = opt_text(input, field)? {
            body.insert(graph_name(field), json!(v));
        }
    }
    if let Some(v) = opt_text(input, "usage_location")? {
        body.insert(
            "usageLocation".into(),
            json!(usage_location("usage_location", v)?),
        );
    }
    match c
        .m
        .graph
        .post(&c.call, "/users", &Value::Object(body))
        .await
    {
        Ok(answer) => created(&answer.body.unwrap_or_default(), &kept.reference),
        // A 400 may be this step's earlier request, landed after its answer was lost: if the
        // user is there now, it is ours (the prior state says it was not there before).
        Err(e) if e.service_error().is_some_and(|s| s.status == 400) => {
            match find_user(c, upn).await? {
                Some(u) => created(&u, &kept.reference),
                None => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The password kept for this step: generated (CSPRNG) on the first attempt, the same one on
/// every later attempt.
async fn keep_password(c: &Ctx<'_>, upn: &str) -> Result<crate::m365::secret_out::Kept, Fail> {
    Ok(c.m
        .secrets
        .keep(
            &c.cx.idempotency_key(),
            &format!("initial password of {upn}"),
            super::security::generate_password(),
        )
        .await
        .map_err(|e| OpError::retryable(e.to_string()))?)
}

fn created(u: &Value, reference: &str) -> OpResult {
    let id = s(u, "id").to_owned();
    done(
        json!({
            "id": id,
            "user_principal_name": s(u, "userPrincipalName"),
            "delivery": {"kind": "one_time_secret", "reference": reference},
        }),
        inverse(
            "user.delete",
            json!({"user": id}),
            json!({"existed": false}),
        ),
    )
}

async fn get(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    Ok(OpOutcome::done(json!({
        "id": s(&u, "id"),
        "user_principal_name": s(&u, "userPrincipalName"),
        "display_name": s(&u, "displayName"),
        "account_enabled": u.get("accountEnabled").cloned().unwrap_or(Value::Null),
        "synced": synced(&u),
        "usage_location": u.get("usageLocation").cloned().unwrap_or(Value::Null),
        "mail": u.get("mail").cloned().unwrap_or(Value::Null),
    })))
}

async fn update(c: &Ctx<'_>, input: &Value) -> OpResult {
    let key = text(input, "user")?;
    let Some(Value::Object(wanted)) = input.get("attributes") else {
        return Err(OpError::bad_input(
            "attributes",
            "must be a map of user properties to values, e.g. {jobTitle: Manager}",
        )
        .into());
    };
    let mut desired = Map::new();
    for (k, v) in wanted {
        let name = if k.contains('_') {
            graph_name(k)
        } else {
            k.clone()
        };
        if !UPDATABLE.contains(&name.as_str()) {
            return Err(OpError::bad_input(
                &format!("attributes.{k}"),
                &format!(
                    "is not a user property this op sets; use one of: {}",
                    UPDATABLE.join(", ")
                ),
            )
            .into());
        }
        desired.insert(name, v.clone());
    }
    if desired.is_empty() {
        return Err(
            OpError::bad_input("attributes", "is empty; name at least one property").into(),
        );
    }
    let select: Vec<&str> = desired.keys().map(String::as_str).collect();
    let u =
        c.m.graph
            .get_opt(
                &c.call,
                &format!(
                    "/users/{}?$select=id,userPrincipalName,onPremisesSyncEnabled,{}",
                    seg(key),
                    select.join(",")
                ),
            )
            .await?
            .ok_or_else(|| OpError::bad_input("user", &format!("no user `{key}` in the tenant")))?;
    let current: Map<String, Value> = desired
        .keys()
        .map(|k| (k.clone(), u.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    let prior = c.prior(Value::Object(current.clone())).await?;
    let changes: Map<String, Value> = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let synced_only = ["usageLocation"];
    if synced(&u) && changes.keys().any(|k| !synced_only.contains(&k.as_str())) {
        return Err(synced_refusal(
            &u,
            "these attributes",
            "ad.* ops on the AD runner",
        ));
    }
    if !changes.is_empty() {
        c.m.graph
            .patch(
                &c.call,
                &format!("/users/{}", s(&u, "id")),
                &Value::Object(changes),
            )
            .await?;
    }
    // Undo what this step changed: the prior values of the properties that differed.
    let undo: Map<String, Value> = desired
        .iter()
        .filter_map(|(k, v)| {
            let before = prior.get(k).cloned().unwrap_or(Value::Null);
            (before != *v).then(|| (k.clone(), before))
        })
        .collect();
    let rollback = if undo.is_empty() {
        Rollback::Nothing
    } else {
        inverse(
            "user.update",
            json!({"user": s(&u, "id"), "attributes": undo}),
            prior,
        )
    };
    done(json!({}), rollback)
}

async fn set_enabled(c: &Ctx<'_>, input: &Value, enabled: bool) -> OpResult {
    let u = user(c, input, "user").await?;
    let current = u.get("accountEnabled").and_then(Value::as_bool);
    let prior = c.prior(json!({"accountEnabled": current})).await?;
    if current != Some(enabled) {
        if synced(&u) {
            // Graph lets a cloud change of accountEnabled through, but Entra Connect puts AD's
            // value back on its next cycle.
            return Err(synced_refusal(
                &u,
                "sign-in",
                "ad.set_enabled on the AD runner, then a delta sync",
            ));
        }
        c.m.graph
            .patch(
                &c.call,
                &format!("/users/{}", s(&u, "id")),
                &json!({"accountEnabled": enabled}),
            )
            .await?;
    }
    let rollback = if prior["accountEnabled"] == json!(!enabled) {
        inverse(
            if enabled {
                "user.disable"
            } else {
                "user.enable"
            },
            json!({"user": s(&u, "id")}),
            prior,
        )
    } else {
        Rollback::Nothing
    };
    done(json!({}), rollback)
}

async fn manager_of(c: &Ctx<'_>, id: &str) -> Result<Option<String>, Fail> {
    Ok(c.m
        .graph
        .get_opt(&c.call, &format!("/users/{id}/manager?$select=id"))
        .await?
        .map(|m| s(&m, "id").to_owned()))
}

fn manager_rollback(
    user_id: &str,
    before: Option<&str>,
    now: Option<&str>,
    prior: Value,
) -> Rollback {
    if before == now {
        return Rollback::Nothing;
    }
    match before {
        Some(m) => inverse(
            "user.set_manager",
            json!({"user": user_id, "manager": m}),
            prior,
        ),
        None => inverse("user.clear_manager", json!({"user": user_id}), prior),
    }
}

async fn set_manager(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let mgr = user(c, input, "manager").await?;
    let (id, mid) = (s(&u, "id"), s(&mgr, "id"));
    if id == mid {
        return Err(OpError::bad_input("manager", "is the user themself").into());
    }
    let current = manager_of(c, id).await?;
    let prior = c.prior(json!({"manager": current})).await?;
    if current.as_deref() != Some(mid) {
        if synced(&u) {
            return Err(synced_refusal(
                &u,
                "the manager",
                "ad.set_manager on the AD runner",
            ));
        }
        c.m.graph
            .send(
                &c.call,
                reqwest::Method::PUT,
                &format!("/users/{id}/manager/$ref"),
                Some(&c.m.graph.directory_object(mid)),
            )
            .await?;
    }
    let before = prior["manager"].as_str().map(str::to_owned);
    done(
        json!({"manager": mid}),
        manager_rollback(id, before.as_deref(), Some(mid), prior),
    )
}

async fn clear_manager(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let id = s(&u, "id");
    let current = manager_of(c, id).await?;
    let prior = c.prior(json!({"manager": current})).await?;
    if current.is_some() {
        if synced(&u) {
            return Err(synced_refusal(
                &u,
                "the manager",
                "ad.set_manager on the AD runner",
            ));
        }
        match c
            .m
            .graph
            .delete(&c.call, &format!("/users/{id}/manager/$ref"))
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let before = prior["manager"].as_str().map(str::to_owned);
    done(
        json!({}),
        manager_rollback(id, before.as_deref(), None, prior),
    )
}

async fn set_usage_location(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let wanted = usage_location("usage_location", text(input, "usage_location")?)?;
    let current = u
        .get("usageLocation")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let prior = c.prior(json!({"usageLocation": current})).await?;
    if current.as_deref() != Some(wanted.as_str()) {
        c.m.graph
            .patch(
                &c.call,
                &format!("/users/{}", s(&u, "id")),
                &json!({"usageLocation": wanted}),
            )
            .await?;
    }
    let rollback = if prior["usageLocation"] == json!(wanted) {
        Rollback::Nothing
    } else {
        inverse(
            "user.update",
            json!({"user": s(&u, "id"), "attributes": {"usageLocation": prior["usageLocation"]}}),
            prior,
        )
    };
    done(json!({"usage_location": wanted}), rollback)
}

async fn deleted_item(c: &Ctx<'_>, id: &str) -> Result<Option<Value>, Fail> {
    if !is_guid(id) {
        return Ok(None);
    }
    Ok(c.m
        .graph
        .get_opt(&c.call, &format!("/directory/deletedItems/{id}"))
        .await?)
}

async fn delete(c: &Ctx<'_>, input: &Value) -> OpResult {
    let key = text(input, "user")?;
    let live = find_user(c, key).await?;
    let gone = match &live {
        Some(_) => None,
        None => {
            // Deleted users are found by object id only: a UPN is resolved through what an
            // earlier attempt of this step recorded.
            let recorded = c.m.prior.get(&c.cx.idempotency_key()).await?;
            let id = recorded
                .as_ref()
                .and_then(|r| r["id"].as_str())
                .unwrap_or(key)
                .to_owned();
            deleted_item(c, &id).await?
        }
    };
    let id = match (&live, &gone) {
        (Some(u), _) => s(u, "id").to_owned(),
        (None, Some(d)) => s(d, "id").to_owned(),
        (None, None) => {
            return Err(OpError::Terminal {
                message: format!(
                    "input `user`: no user `{key}` in the tenant or its deleted items (a deleted user is found by object id only)"
                ),
                code: Some("Request_ResourceNotFound".to_owned()),
            }
            .into());
        }
    };
    let prior = c
        .prior(json!({"existed": live.is_some(), "id": id, "user_principal_name": live.as_ref().map(|u| s(u, "userPrincipalName"))}))
        .await?;
    if let Some(u) = &live {
        if synced(u) {
            return Err(synced_refusal(
                u,
                "the account",
                "ad.remove_user on the AD runner, then a delta sync",
            ));
        }
        match c.m.graph.delete(&c.call, &format!("/users/{id}")).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let rollback = if prior["existed"] == json!(true) {
        inverse("user.restore", json!({"user": id}), prior)
    } else {
        Rollback::Nothing
    };
    done(json!({"id": id}), rollback)
}

async fn restore(c: &Ctx<'_>, input: &Value) -> OpResult {
    let id = text(input, "user")?;
    if !is_guid(id) {
        return Err(
            OpError::bad_input("user", "must be the deleted user's object id (a GUID)").into(),
        );
    }
    let live = find_user(c, id).await?;
    let prior = c.prior(json!({"deleted": live.is_none()})).await?;
    if live.is_none() {
        if deleted_item(c, id).await?.is_none() {
            return Err(OpError::Terminal {
                message: format!(
                    "user {id} is neither in the tenant nor in its deleted items (deleted users are purged after 30 days)"
                ),
                code: Some("Request_ResourceNotFound".to_owned()),
            }
            .into());
        }
        c.m.graph
            .post(
                &c.call,
                &format!("/directory/deletedItems/{id}/restore"),
                &json!({}),
            )
            .await?;
    }
    let rollback = if prior["deleted"] == json!(true) {
        inverse("user.delete", json!({"user": id}), prior)
    } else {
        Rollback::Nothing
    };
    done(json!({"id": id}), rollback)
}

async fn wait_for_user(c: &Ctx<'_>, input: &Value) -> OpResult {
    let key = text(input, "user")?;
    let found = if key.contains('@') || is_guid(key) {
        find_user(c, key).await?
    } else {
        // A sAMAccountName: synced users carry it.
        c.m.graph
            .get_all(
                &c.call,
                &format!(
                    "/users?$filter=onPremisesSamAccountName eq {}&$select={USER_SELECT}",
                    super::odata_str(key)
                ),
            )
            .await?
            .into_iter()
            .next()
    };
    match found {
        Some(u) => Ok(OpOutcome::done(json!({"id": s(&u, "id")}))),
        None => Ok(OpOutcome::Pending {
            check_after: Duration::from_secs(60),
            note: Some(format!(
                "{key} has not reached Entra ID yet (waiting for Entra Connect)"
            )),
        }),
    }
}
