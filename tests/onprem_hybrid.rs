//! The hybrid flow end to end: a user created in AD through the RMM, the Entra Connect delta
//! sync on its server (from the AD runner by PowerShell remoting), a durable wait until Entra ID
//! shows the user, then cloud ops (a licence) through Graph — and `hybrid_no_sync`, which writes
//! both directories.

mod m365_support;
mod onprem_support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use m365_support::m365_shared;
use onprem_support::{T, World, company};
use serde_json::json;
use steward_schemas::{RunStatus, StepState};
use steward_workers::Registry;
use steward_workers::rmm::jobs::Binding;

const ONBOARD: &str = r#"
name: hybrid_onboard
inputs: {upn: {type: string}}
defaults: {retry: {attempts: 3, initial: 50ms, max_delay: 100ms}}
steps:
  - {id: create, op: user.create, with: {user_principal_name: "${{ inputs.upn }}", display_name: "Grace Hopper", given_name: Grace, surname: Hopper}}
  - {id: licence, op: license.assign, needs: [create], with: {user: "${{ inputs.upn }}", sku: SPB}}
"#;

async fn world(identity: &str) -> Result<World> {
    let mut w = World::start(
        vec![company(
            "fabrikam",
            json!({
                "identity_provider": identity,
                "mailbox_provider": "exchange_online",
                "tenant_id": "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
                "ad_runner": "FAB-RUNNER01",
                "entra_connect_server": if identity == "hybrid" { json!("FAB-AADC01") } else { serde_json::Value::Null },
                "rmm": {"provider": "datto", "site": "fabrikam"},
                "defaults": {"ou": "OU=Staff,DC=fabrikam,DC=local", "usage_location": "US"},
            }),
        )],
        Duration::from_secs(3600),
    )
    .await?;
    let m = m365_shared(&w.sb.base_url, &w.env, &w.sink);
    let registry = Registry::connected(Some(m), Some(w.onprem(Duration::from_secs(3600))));
    w.start_worker_with(registry).await?;
    Ok(w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_creates_in_ad_syncs_waits_for_entra_then_licenses_in_the_cloud() -> Result<()> {
    let w = world("hybrid").await?;
    let upn = "grace.hopper@fabrikam.com";
    let run = w.run(ONBOARD, "fabrikam", json!({"upn": upn})).await?;
    let store = &w.env.store;
    // The user is in AD and the sync has started; the step waits for Entra ID, durably.
    let note = steward_tests::wait_for("the wait for Entra ID", T, || async move {
        let snap = store.load(run).await?.context("run")?;
        Ok(match &snap.doc.state.steps["create"].state {
            StepState::Polling { note: Some(n), .. } if n.contains("graph.wait_for_user") => {
                Some(n.clone())
            }
            _ => None,
        })
    })
    .await?;
    assert!(note.contains("3 of 4"), "{note}");
    let ad = w
        .ad_user("fabrikam", "grace.hopper")
        .await?
        .context("in AD")?;
    assert_eq!(ad["deleted"], false);
    let changes = w.changes("fabrikam").await?;
    assert!(
        changes.iter().any(|c| c.starts_with("adsync.start_delta")),
        "{changes:#?}"
    );
    // Entra Connect's cycle ends (sandbox time), and the step's next check finds the user.
    w.admin("POST", "/clock/advance", Some(json!({"seconds": 600})))
        .await?;
    let seq = store.load(run).await?.context("run")?.doc.state.steps["create"].seq;
    steward_engine::runner::wake(
        store,
        &Binding {
            run: run.to_string(),
            step: "create".to_owned(),
            seq,
            phase: "run".to_owned(),
        },
    )
    .await?;
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}\n{}",
        w.history(run).await?
    );
    let snap = store.load(run).await?.context("run")?;
    let StepState::Succeeded { output, .. } = &snap.doc.state.steps["create"].state else {
        panic!("create did not succeed");
    };
    let actions: Vec<&str> = output["actions"]
        .as_array()
        .context("actions")?
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "ad.new_user",
            "adsync.start_delta",
            "graph.wait_for_user",
            "graph.set_usage_location"
        ]
    );
    assert!(
        output["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{output}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_no_sync_writes_both_directories_with_the_same_values() -> Result<()> {
    let w = world("hybrid_no_sync").await?;
    let one = r#"
name: no_sync_create
inputs: {upn: {type: string}}
steps:
  - {id: create, op: user.create, with: {user_principal_name: "${{ inputs.upn }}", display_name: "Alan Turing", given_name: Alan, surname: Turing, usage_location: GB}}
"#;
    let upn = "alan.turing@fabrikam.com";
    let run = w.run(one, "fabrikam", json!({"upn": upn})).await?;
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}\n{}",
        w.history(run).await?
    );
    let snap = w.env.store.load(run).await?.context("run")?;
    let StepState::Succeeded { output, .. } = &snap.doc.state.steps["create"].state else {
        panic!("create did not succeed");
    };
    let actions: Vec<&str> = output["actions"]
        .as_array()
        .context("actions")?
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(actions, ["ad.new_user", "graph.create_user"]);
    let ad = w
        .ad_user("fabrikam", "alan.turing")
        .await?
        .context("in AD")?;
    assert_eq!(ad["display_name"], "Alan Turing");
    assert!(
        output["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{output}"
    );
    assert_eq!(output["user_principal_name"], upn);
    // One password, generated once, kept for the technician; both directories got it.
    let (_, secret) = w
        .sink
        .read(&format!("{run}/create"))
        .context("the kept password")?;
    let ledger = w
        .admin("GET", "/ledger?company=fabrikam", None)
        .await?
        .to_string();
    assert!(!ledger.contains(secret.expose()));
    Ok(())
}
