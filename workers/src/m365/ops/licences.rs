//! Licences: assign (after checking a seat is free) and remove, each the other's inverse.

use serde_json::{Value, json};
use steward_schemas::{OpField, OpSpec, PermissionGroup, Reversibility, Rollback, System};

use super::{Body, Ctx, Fail, OpResult, catalog, done, inverse, own, s, text, user};
use crate::op::OpError;

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("license.assign"), |c, i| Box::pin(assign(c, i))));
    v.push((catalog("license.remove"), |c, i| Box::pin(remove(c, i))));
    v.push((&RESTORE, |c, i| Box::pin(restore(c, i))));
}

static RESTORE: OpSpec = own(
    "license.restore",
    "give a user back a licence with the plans it had (the inverse of license.remove)",
    PermissionGroup::Licensing,
    System::EntraId,
    Reversibility::Reversible,
    &[
        OpField::required("user", "the user: UPN, or object id"),
        OpField::required("sku", "the SKU id"),
        OpField::optional("disabled_plans", "the service plans that were disabled"),
    ],
    true,
);

/// A SKU of the tenant, by part number (`SPB`) or id.
async fn sku(c: &Ctx<'_>, wanted: &str) -> Result<Value, Fail> {
    let skus = c.m.graph.get_all(&c.call, "/subscribedSkus").await?;
    skus.iter()
        .find(|k| {
            s(k, "skuId").eq_ignore_ascii_case(wanted)
                || s(k, "skuPartNumber").eq_ignore_ascii_case(wanted)
        })
        .cloned()
        .ok_or_else(|| {
            let have: Vec<&str> = skus.iter().map(|k| s(k, "skuPartNumber")).collect();
            Fail::Op(OpError::bad_input(
                "sku",
                &format!(
                    "the tenant has no subscription to `{wanted}`; it has: {}",
                    if have.is_empty() {
                        "none".to_owned()
                    } else {
                        have.join(", ")
                    }
                ),
            ))
        })
}

/// The user's assignment of `sku_id`, if any.
fn assignment(u: &Value, sku_id: &str) -> Option<Value> {
    u.get("assignedLicenses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|l| s(l, "skuId").eq_ignore_ascii_case(sku_id))
                .cloned()
        })
}

async fn add(c: &Ctx<'_>, user_id: &str, sku_id: &str, disabled: &Value) -> Result<(), Fail> {
    c.m.graph
        .post(
            &c.call,
            &format!("/users/{user_id}/assignLicense"),
            &json!({"addLicenses": [{"disabledPlans": disabled, "skuId": sku_id}], "removeLicenses": []}),
        )
        .await?;
    Ok(())
}

async fn assign(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let k = sku(c, text(input, "sku")?).await?;
    let (uid, sku_id, part) = (s(&u, "id"), s(&k, "skuId"), s(&k, "skuPartNumber"));
    let current = assignment(&u, sku_id);
    let prior = c.prior(json!({"assigned": current.is_some()})).await?;
    if current.is_none() {
        let enabled = k["prepaidUnits"]["enabled"].as_i64().unwrap_or(0);
        let consumed = k["consumedUnits"].as_i64().unwrap_or(0);
        if consumed >= enabled {
            return Err(OpError::Terminal {
                message: format!(
                    "no free seat of {part} ({sku_id}): {consumed} of {enabled} in use; buy a seat or free one, then retry the step"
                ),
                code: Some("no_free_seat".to_owned()),
            }
            .into());
        }
        if u.get("usageLocation").is_none_or(Value::is_null) {
            return Err(OpError::Terminal {
                message: format!(
                    "{} has no usage location, and Microsoft assigns no licence without one; set it first (user.set_usage_location)",
                    s(&u, "userPrincipalName")
                ),
                code: Some("no_usage_location".to_owned()),
            }
            .into());
        }
        add(c, uid, sku_id, &json!([])).await?;
    }
    let rollback = if prior["assigned"] == json!(false) {
        inverse("license.remove", json!({"user": uid, "sku": sku_id}), prior)
    } else {
        Rollback::Nothing
    };
    done(json!({"sku_id": sku_id, "sku": part}), rollback)
}

async fn remove(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let k = sku(c, text(input, "sku")?).await?;
    let (uid, sku_id, part) = (s(&u, "id"), s(&k, "skuId"), s(&k, "skuPartNumber"));
    let current = assignment(&u, sku_id);
    let prior = c
        .prior(json!({"assigned": current.is_some(), "disabledPlans": current.as_ref().map(|l| l["disabledPlans"].clone())}))
        .await?;
    if current.is_some() {
        c.m.graph
            .post(
                &c.call,
                &format!("/users/{uid}/assignLicense"),
                &json!({"addLicenses": [], "removeLicenses": [sku_id]}),
            )
            .await?;
    }
    let rollback = if prior["assigned"] == json!(true) {
        inverse(
            "license.restore",
            json!({"user": uid, "sku": sku_id, "disabled_plans": prior["disabledPlans"]}),
            prior,
        )
    } else {
        Rollback::Nothing
    };
    done(json!({"sku_id": sku_id, "sku": part}), rollback)
}

async fn restore(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let sku_id = text(input, "sku")?;
    let disabled = match input.get("disabled_plans") {
        None | Some(Value::Null) => json!([]),
        Some(v @ Value::Array(_)) => v.clone(),
        Some(v) => {
            return Err(OpError::bad_input(
                "disabled_plans",
                &format!("expected a list of plan ids, got {v}"),
            )
            .into());
        }
    };
    let uid = s(&u, "id");
    let current = assignment(&u, sku_id);
    let prior = c.prior(json!({"assigned": current.is_some()})).await?;
    if current.is_none() {
        add(c, uid, sku_id, &disabled).await?;
    }
    let rollback = if prior["assigned"] == json!(false) {
        inverse("license.remove", json!({"user": uid, "sku": sku_id}), prior)
    } else {
        Rollback::Nothing
    };
    done(json!({"sku_id": sku_id}), rollback)
}
