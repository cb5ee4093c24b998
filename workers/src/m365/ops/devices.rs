//! Intune managed devices through Graph: list a user's, wipe, retire (one device, or every device
//! of a user: `GET /users/{id}/managedDevices`, then `POST
//! /deviceManagement/managedDevices/{id}/wipe` or `/retire` for each). A wipe or retire is
//! idempotent by the device's management state (`wipePending`, `retirePending`, …) and cannot be
//! undone.

use reqwest::Method;
use serde_json::{Value, json};
use steward_schemas::OpSpec;

use super::{Body, Ctx, OpResult, catalog, done, irreversible, s, seg, text, user};
use crate::op::{OpError, OpOutcome};

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("device.list"), |c, i| Box::pin(list(c, i))));
    v.push((catalog("device.wipe"), |c, i| {
        Box::pin(action(c, i, Action::Wipe))
    }));
    v.push((catalog("device.retire"), |c, i| {
        Box::pin(action(c, i, Action::Retire))
    }));
    v.push((catalog("device.wipe_all"), |c, i| {
        Box::pin(all_of_user(c, i, Action::Wipe))
    }));
    v.push((catalog("device.retire_all"), |c, i| {
        Box::pin(all_of_user(c, i, Action::Retire))
    }));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Wipe,
    Retire,
}

fn summary(d: &Value) -> Value {
    json!({
        "id": s(d, "id"),
        "device_name": s(d, "deviceName"),
        "operating_system": s(d, "operatingSystem"),
        "compliance_state": s(d, "complianceState"),
        "management_state": s(d, "managementState"),
    })
}

async fn list(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user(c, input, "user").await?;
    let devices =
        c.m.graph
            .get_all(&c.call, &format!("/users/{}/managedDevices", s(&u, "id")))
            .await?;
    Ok(OpOutcome::done(json!({
        "devices": devices.iter().map(summary).collect::<Vec<_>>(),
    })))
}

async fn action(c: &Ctx<'_>, input: &Value, action: Action) -> OpResult {
    let id = text(input, "device")?;
    let d =
        c.m.graph
            .get_opt(
                &c.call,
                &format!("/deviceManagement/managedDevices/{}", seg(id)),
            )
            .await?
            .ok_or_else(|| OpError::Terminal {
                message: format!("input `device`: no managed device {id} in the tenant"),
                code: Some("ResourceNotFound".to_owned()),
            })?;
    let state = s(&d, "managementState").to_owned();
    let prior = c.prior(json!({"managementState": state})).await?;
    act(c, &d, action).await?;
    done(
        json!({"device": summary(&d)}),
        irreversible(
            match action {
                Action::Wipe => "a wiped device cannot be restored",
                Action::Retire => "a retired device must be enrolled again",
            },
            prior,
        ),
    )
}

/// Every managed device of the user, each wiped or retired (those already on their way are
/// left as they are, so a repeated attempt sends nothing twice).
async fn all_of_user(c: &Ctx<'_>, input: &Value, action: Action) -> OpResult {
    let u = user(c, input, "user").await?;
    let devices =
        c.m.graph
            .get_all(
                &c.call,
                &format!("/users/{}/managedDevices", seg(s(&u, "id"))),
            )
            .await?;
    let prior = c
        .prior(json!({"devices": devices.iter().map(|d| json!({"id": s(d, "id"), "managementState": s(d, "managementState")})).collect::<Vec<_>>()}))
        .await?;
    for d in &devices {
        act(c, d, action).await?;
    }
    done(
        json!({"devices": devices.iter().map(summary).collect::<Vec<_>>()}),
        irreversible(
            match action {
                Action::Wipe => "wiped devices cannot be restored",
                Action::Retire => "retired devices must be enrolled again",
            },
            prior,
        ),
    )
}

/// Sends the wipe or retire for one device unless its state says it is already under way.
async fn act(c: &Ctx<'_>, d: &Value, action: Action) -> Result<(), super::Fail> {
    let state = s(d, "managementState");
    let (done_states, path, body): (&[&str], &str, Option<Value>) = match action {
        Action::Wipe => (
            &["wipePending", "wipeIssued"],
            "wipe",
            Some(json!({"keepEnrollmentData": false, "keepUserData": false})),
        ),
        Action::Retire => (
            &["retirePending", "retireIssued", "wipePending", "wipeIssued"],
            "retire",
            None,
        ),
    };
    if !done_states.contains(&state) {
        c.m.graph
            .send(
                &c.call,
                Method::POST,
                &format!(
                    "/deviceManagement/managedDevices/{}/{path}",
                    seg(s(d, "id"))
                ),
                body.as_ref(),
            )
            .await?;
    }
    Ok(())
}
