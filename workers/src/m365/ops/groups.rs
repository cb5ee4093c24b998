//! Group membership, each group through the API that can change it:
//!
//! | group | API |
//! |---|---|
//! | security, Microsoft 365 | Graph `POST /groups/{id}/members/$ref`, `DELETE …/members/{id}/$ref` |
//! | distribution list, mail-enabled security | Exchange Online `Add-`/`Remove-DistributionGroupMember` (Graph cannot change them) |
//! | dynamic | none: its rule decides; reported as skipped |
//! | synced from on-premises AD | none in the cloud: AD decides; reported as skipped |
//!
//! Membership is checked (Graph `memberOf`) before any change, for every kind.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use steward_schemas::{OpField, OpSpec, PermissionGroup, Reversibility, Rollback, System};

use super::{
    Body, Ctx, Fail, OpResult, catalog, done, inverse, is_guid, odata_str, own, params, s, text,
    user,
};
use crate::m365::graph::BatchRequest;
use crate::op::{OpError, OpOutcome};

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("group.add_member"), |c, i| {
        Box::pin(member(c, i, true))
    }));
    v.push((catalog("group.remove_member"), |c, i| {
        Box::pin(member(c, i, false))
    }));
    v.push((catalog("group.list_memberships"), |c, i| {
        Box::pin(list(c, i))
    }));
    v.push((catalog("group.copy_memberships"), |c, i| {
        Box::pin(copy(c, i))
    }));
    v.push((&REMOVE_MANY, |c, i| Box::pin(remove_many(c, i))));
}

static REMOVE_MANY: OpSpec = own(
    "group.remove_memberships",
    "remove a user from the groups listed (the inverse of group.copy_memberships)",
    PermissionGroup::Groups,
    System::EntraId,
    Reversibility::NotNeeded,
    &[
        OpField::required("user", "the user: UPN, or object id"),
        OpField::required("groups", "the groups' object ids"),
    ],
    true,
);

const GROUP_SELECT: &str = "id,displayName,groupTypes,mailEnabled,securityEnabled,onPremisesSyncEnabled,membershipRule,mail";

/// How a group's membership can be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Security group (Graph).
    Security,
    /// Microsoft 365 group (Graph).
    Unified,
    /// Distribution list or mail-enabled security group (Exchange Online).
    Mail,
    /// Dynamic membership: skipped.
    Dynamic,
    /// Synced from AD: skipped.
    Synced,
}

fn kind(g: &Value) -> Kind {
    let types: Vec<&str> = g["groupTypes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if types.contains(&"DynamicMembership") || g["membershipRule"].as_str().is_some() {
        Kind::Dynamic
    } else if g["onPremisesSyncEnabled"] == json!(true) {
        Kind::Synced
    } else if types.contains(&"Unified") {
        Kind::Unified
    } else if g["mailEnabled"] == json!(true) {
        Kind::Mail
    } else {
        Kind::Security
    }
}

/// Why a group is skipped, or `None` when Steward can change its members.
fn skip_reason(g: &Value) -> Option<String> {
    match kind(g) {
        Kind::Dynamic => Some(format!(
            "`{}` is a dynamic group: its membership rule decides who is in it",
            s(g, "displayName")
        )),
        Kind::Synced => Some(format!(
            "`{}` is synced from on-premises Active Directory: change its members there (ad.add_group_member / ad.remove_group_member)",
            s(g, "displayName")
        )),
        Kind::Security | Kind::Unified | Kind::Mail => None,
    }
}

async fn group(c: &Ctx<'_>, key: &str) -> Result<Value, Fail> {
    if is_guid(key) {
        return c
            .m
            .graph
            .get_opt(&c.call, &format!("/groups/{key}?$select={GROUP_SELECT}"))
            .await?
            .ok_or_else(|| {
                Fail::Op(OpError::Terminal {
                    message: format!("input `group`: no group with id {key} in the tenant"),
                    code: Some("Request_ResourceNotFound".to_owned()),
                })
            });
    }
    let field = if key.contains('@') {
        "mail"
    } else {
        "displayName"
    };
    let found =
        c.m.graph
            .get_all(
                &c.call,
                &format!(
                    "/groups?$filter={field} eq {}&$select={GROUP_SELECT}",
                    odata_str(key)
                ),
            )
            .await?;
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_default()),
        0 => Err(OpError::Terminal {
            message: format!("input `group`: no group named `{key}` in the tenant; check the name or give its object id"),
            code: Some("Request_ResourceNotFound".to_owned()),
        }
        .into()),
        n => Err(OpError::bad_input(
            "group",
            &format!(
                "{n} groups are named `{key}` ({}); give the object id of the one you mean",
                found.iter().map(|g| s(g, "id")).collect::<Vec<_>>().join(", ")
            ),
        )
        .into()),
    }
}

/// The groups `user_id` is a direct member of.
async fn groups_of(c: &Ctx<'_>, user_id: &str) -> Result<Vec<Value>, Fail> {
    Ok(c.m
        .graph
        .get_all(
            &c.call,
            &format!("/users/{user_id}/memberOf/microsoft.graph.group?$select={GROUP_SELECT}"),
        )
        .await?)
}

fn ids(groups: &[Value]) -> BTreeSet<String> {
    groups
        .iter()
        .map(|g| s(g, "id").to_ascii_lowercase())
        .collect()
}

/// Adds or removes `u` in `g`, through the API that can (the caller checked it needs doing).
async fn change(c: &Ctx<'_>, g: &Value, u: &Value, add: bool) -> Result<(), Fail> {
    let (gid, uid) = (s(g, "id"), s(u, "id"));
    match kind(g) {
        Kind::Security | Kind::Unified => {
            let r = if add {
                c.m.graph
                    .post(
                        &c.call,
                        &format!("/groups/{gid}/members/$ref"),
                        &c.m.graph.directory_object(uid),
                    )
                    .await
            } else {
                c.m.graph
                    .delete(&c.call, &format!("/groups/{gid}/members/{uid}/$ref"))
                    .await
            };
            match r {
                Ok(_) => Ok(()),
                // Removing what is already gone.
                Err(e) if !add && e.is_not_found() => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Kind::Mail => {
            let cmdlet = if add {
                "Add-DistributionGroupMember"
            } else {
                "Remove-DistributionGroupMember"
            };
            let identity = if s(g, "mail").is_empty() {
                gid
            } else {
                s(g, "mail")
            };
            let r =
                c.m.exo
                    .invoke(
                        &c.call,
                        cmdlet,
                        params(&[
                            ("Identity", json!(identity)),
                            ("Member", json!(s(u, "userPrincipalName"))),
                            ("BypassSecurityGroupManagerCheck", json!(true)),
                            ("Confirm", json!(false)),
                        ]),
                    )
                    .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) => {
                    let ex = e
                        .service_error()
                        .and_then(|s| s.exception_name().map(str::to_owned));
                    match ex.as_deref() {
                        Some("MemberAlreadyExistsException") if add => Ok(()),
                        Some("MemberNotFoundException") if !add => Ok(()),
                        _ => Err(e.into()),
                    }
                }
            }
        }
        Kind::Dynamic | Kind::Synced => Ok(()),
    }
}

async fn member(c: &Ctx<'_>, input: &Value, add: bool) -> OpResult {
    let u = user(c, input, "user").await?;
    let g = group(c, text(input, "group")?).await?;
    let (gid, uid) = (s(&g, "id").to_owned(), s(&u, "id").to_owned());
    if let Some(reason) = skip_reason(&g) {
        return done(
            json!({"skipped": true, "reason": reason, "group": gid}),
            Rollback::Nothing,
        );
    }
    let is_member = ids(&groups_of(c, &uid).await?).contains(&gid.to_ascii_lowercase());
    let prior = c.prior(json!({"member": is_member})).await?;
    if is_member != add {
        match change(c, &g, &u, add).await {
            Ok(()) => {}
            Err(Fail::M365(e)) if e.is_not_found() && kind(&g) == Kind::Mail => {
                return super::not_provisioned(c, s(&u, "userPrincipalName"), e);
            }
            Err(e) => return Err(e),
        }
    }
    let rollback = if prior["member"] == json!(!add) {
        inverse(
            if add {
                "group.remove_member"
            } else {
                "group.add_member"
            },
            json!({"user": uid, "group": gid}),
            prior,
        )
    } else {
        Rollback::Nothing
    };
    done(json!({"group": gid, "via": via(&g)}), rollback)
}

fn via(g: &Value) -> &'static str {
    match kind(g) {
        Kind::Mail => "exchange_online",
        Kind::Security | Kind::Unified => "graph",
        Kind::Dynamic | Kind::Synced => "none",
    }
}

fn summary(g: &Value) -> Value {
    json!({
        "id": s(g, "id"),
        "display_name": s(g, "displayName"),
        "kind": match kind(g) {
            Kind::Security => "security",
            Kind::Unified => "microsoft_365",
            Kind::Mail => "mail_enabled",
            Kind::Dynamic => "dynamic",
            Kind::Synced => "synced",
        },
    })
}

async fn list(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let groups = groups_of(c, s(&u, "id")).await?;
    Ok(OpOutcome::done(json!({
        "groups": groups.iter().map(summary).collect::<Vec<_>>(),
    })))
}

async fn copy(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let t = user(c, input, "template").await?;
    let uid = s(&u, "id").to_owned();
    if uid == s(&t, "id") {
        return Err(OpError::bad_input("template", "is the user themself").into());
    }
    let template_groups = groups_of(c, s(&t, "id")).await?;
    let mine = ids(&groups_of(c, &uid).await?);
    let prior = c
        .prior(json!({"groups": mine.iter().collect::<Vec<_>>()}))
        .await?;
    let before: BTreeSet<String> = prior["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let mut skipped = Vec::new();
    let mut graph_adds = Vec::new();
    let mut exo_adds = Vec::new();
    for g in &template_groups {
        if let Some(reason) = skip_reason(g) {
            skipped.push(
                json!({"group": s(g, "id"), "display_name": s(g, "displayName"), "reason": reason}),
            );
            continue;
        }
        if mine.contains(&s(g, "id").to_ascii_lowercase()) {
            continue;
        }
        match kind(g) {
            Kind::Mail => exo_adds.push(g.clone()),
            _ => graph_adds.push(g.clone()),
        }
    }
    // Graph's adds go in $batch (at most 20 a batch).
    let requests: Vec<BatchRequest> = graph_adds
        .iter()
        .enumerate()
        .map(|(i, g)| {
            BatchRequest::new(
                i.to_string(),
                Method::POST,
                format!("/groups/{}/members/$ref", s(g, "id")),
                Some(c.m.graph.directory_object(&uid)),
            )
        })
        .collect();
    if !requests.is_empty() {
        let answers = c.m.graph.batch(&c.call, &requests).await?;
        let mut recheck = false;
        for (a, g) in answers.iter().zip(&graph_adds) {
            if let Some(e) = a.error(&format!("POST /groups/{}/members/$ref", s(g, "id"))) {
                if a.status == 400 {
                    // Perhaps already a member (added meanwhile): decided below from memberOf.
                    recheck = true;
                } else {
                    return Err(e.into());
                }
            }
        }
        if recheck {
            let now = ids(&groups_of(c, &uid).await?);
            if let Some(g) = graph_adds
                .iter()
                .find(|g| !now.contains(&s(g, "id").to_ascii_lowercase()))
            {
                return Err(OpError::terminal(format!(
                    "Microsoft Graph refused to add {} to `{}`",
                    s(&u, "userPrincipalName"),
                    s(g, "displayName")
                ))
                .into());
            }
        }
    }
    for g in &exo_adds {
        match change(c, g, &u, true).await {
            Ok(()) => {}
            Err(Fail::M365(e)) if e.is_not_found() => {
                return super::not_provisioned(c, s(&u, "userPrincipalName"), e);
            }
            Err(e) => return Err(e),
        }
    }
    // Undo removes what this step added: the template's groups the user was not in before.
    let added: Vec<Value> = template_groups
        .iter()
        .filter(|g| skip_reason(g).is_none())
        .filter(|g| !before.contains(&s(g, "id").to_ascii_lowercase()))
        .map(summary)
        .collect();
    let added_ids: Vec<&str> = added.iter().map(|g| s(g, "id")).collect();
    let rollback = if added.is_empty() {
        Rollback::Nothing
    } else {
        inverse(
            "group.remove_memberships",
            json!({"user": uid, "groups": added_ids}),
            prior,
        )
    };
    done(json!({"added": added, "skipped": skipped}), rollback)
}

async fn remove_many(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let Some(list) = input.get("groups").and_then(Value::as_array) else {
        return Err(OpError::bad_input("groups", "must be a list of group object ids").into());
    };
    let uid = s(&u, "id").to_owned();
    let mine = ids(&groups_of(c, &uid).await?);
    for id in list.iter().filter_map(Value::as_str) {
        if !mine.contains(&id.to_ascii_lowercase()) {
            continue;
        }
        let g = group(c, id).await?;
        if skip_reason(&g).is_none() {
            change(c, &g, &u, false).await?;
        }
    }
    done(json!({}), Rollback::Nothing)
}
