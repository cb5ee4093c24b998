//! Directory roles through Graph's unified role management: assign (tenant-wide scope `/`) and
//! remove, each the other's inverse.

use serde_json::{Value, json};
use steward_schemas::{OpSpec, Rollback};

use super::{Body, Ctx, Fail, OpResult, catalog, done, inverse, odata_str, s, text, user};
use crate::op::OpError;

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("role.assign"), |c, i| Box::pin(role(c, i, true))));
    v.push((catalog("role.remove"), |c, i| Box::pin(role(c, i, false))));
}

/// A built-in or custom role, by display name or (template) id.
async fn definition(c: &Ctx<'_>, wanted: &str) -> Result<Value, Fail> {
    let all =
        c.m.graph
            .get_all(&c.call, "/roleManagement/directory/roleDefinitions")
            .await?;
    all.iter()
        .find(|d| {
            s(d, "displayName").eq_ignore_ascii_case(wanted)
                || s(d, "id").eq_ignore_ascii_case(wanted)
                || s(d, "templateId").eq_ignore_ascii_case(wanted)
        })
        .cloned()
        .ok_or_else(|| {
            Fail::Op(OpError::bad_input(
                "role",
                &format!("no directory role `{wanted}`; give a role's display name (e.g. User Administrator) or template id"),
            ))
        })
}

async fn role(c: &Ctx<'_>, input: &Value, assign: bool) -> OpResult {
    let u = user(c, input, "user").await?;
    let d = definition(c, text(input, "role")?).await?;
    let (uid, rid) = (s(&u, "id").to_owned(), s(&d, "id").to_owned());
    let assignments =
        c.m.graph
            .get_all(
                &c.call,
                &format!(
                    "/roleManagement/directory/roleAssignments?$filter=principalId eq {}",
                    odata_str(&uid)
                ),
            )
            .await?;
    let existing: Vec<String> = assignments
        .iter()
        .filter(|a| {
            s(a, "roleDefinitionId").eq_ignore_ascii_case(&rid)
                && matches!(s(a, "directoryScopeId"), "/" | "")
        })
        .map(|a| s(a, "id").to_owned())
        .collect();
    let prior = c.prior(json!({"assigned": !existing.is_empty()})).await?;
    if assign && existing.is_empty() {
        c.m.graph
            .post(
                &c.call,
                "/roleManagement/directory/roleAssignments",
                &json!({"principalId": uid, "roleDefinitionId": rid, "directoryScopeId": "/"}),
            )
            .await?;
    }
    if !assign {
        for id in &existing {
            match c
                .m
                .graph
                .delete(
                    &c.call,
                    &format!("/roleManagement/directory/roleAssignments/{id}"),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let rollback = if prior["assigned"] == json!(!assign) {
        inverse(
            if assign { "role.remove" } else { "role.assign" },
            json!({"user": uid, "role": rid}),
            prior,
        )
    } else {
        Rollback::Nothing
    };
    done(
        json!({"role": s(&d, "displayName"), "role_id": rid}),
        rollback,
    )
}
