//! On-prem faults through the engine and the sandbox's Datto: a device offline, WinRM
//! unreachable, Entra Connect busy, quick jobs held by the RMM, and Datto's rate limit (429, then
//! the 403 block) shared by every worker through Redis.

mod onprem_support;

use std::time::Duration;

use anyhow::{Context as _, Result};
use onprem_support::{T, World, company};
use serde_json::{Value, json};
use steward_schemas::{RunStatus, StepState};
use steward_workers::rmm::datto::{self, Datto};
use steward_workers::rmm::{Error as RmmError, Rmm as _};

const JOIN: &str = r#"
name: onprem_join
inputs: {upn: {type: string}, group: {type: string}}
defaults: {retry: {attempts: 2, initial: 50ms, max_delay: 100ms}}
steps:
  - {id: join, op: group.add_member, with: {user: "${{ inputs.upn }}", group: "${{ inputs.group }}"}}
"#;

const SYNC: &str = r#"
name: onprem_sync
steps:
  - {id: sync, op: directory_sync.start_delta}
"#;

fn fab(id: &str, identity: &str) -> steward_schemas::Company {
    company(
        id,
        json!({
            "identity_provider": identity,
            "mailbox_provider": "exchange_hybrid",
            "tenant_id": "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f",
            "ad_runner": "FAB-RUNNER01",
            "entra_connect_server": if identity == "hybrid" { json!("FAB-AADC01") } else { Value::Null },
            "exchange_server": "FAB-EXCH01",
            "rmm": {"provider": "datto", "site": "fabrikam"},
            "defaults": {"ou": "OU=Staff,DC=fabrikam,DC=local"},
        }),
    )
}

async fn device_uid(w: &World, host: &str) -> Result<String> {
    let world = w.admin("GET", "/world/fabrikam", None).await?;
    world["rmm_site"]["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .find(|d| d["hostname"] == host)
        .and_then(|d| d["uid"].as_str())
        .map(str::to_owned)
        .context("no such device")
}

async fn jobs(w: &World) -> Result<usize> {
    Ok(w.admin("GET", "/jobs", None).await?["jobs"]
        .as_array()
        .map_or(0, Vec::len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_sends_no_job_and_the_history_says_why() -> Result<()> {
    let w = World::start(vec![fab("fab", "on_prem_ad")], Duration::from_secs(5)).await?;
    let runner = device_uid(&w, "FAB-RUNNER01").await?;
    w.admin("POST", &format!("/devices/{runner}/offline"), None)
        .await?;
    let run = w
        .run(
            JOIN,
            "fab",
            json!({"upn": "chris.kim@fabrikam.com", "group": "VPN Users"}),
        )
        .await?;
    // Retried later (after the diagnosis's wait), not failed: Datto would hold or expire it.
    let store = &w.env.store;
    let error = steward_tests::wait_for("the step to wait for a retry", T, || async move {
        let snap = store.load(run).await?.context("run")?;
        Ok(match &snap.doc.state.steps["join"].state {
            StepState::Retrying { error, .. } => Some(error.clone()),
            _ => None,
        })
    })
    .await?;
    assert_eq!(error.code.as_deref(), Some("device_offline"), "{error:?}");
    assert!(
        error.message.contains("FAB-RUNNER01 is offline") && error.retry_after.is_some(),
        "{error:?}"
    );
    assert_eq!(
        jobs(&w).await?,
        0,
        "a quick job was sent to an offline device"
    );
    // Back online: the same step succeeds.
    w.admin("POST", &format!("/devices/{runner}/online"), None)
        .await?;
    let run = w
        .run(
            JOIN,
            "fab",
            json!({"upn": "chris.kim@fabrikam.com", "group": "VPN Users"}),
        )
        .await?;
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winrm_unreachable_pauses_for_a_technician_resume_runs_it_again_and_held_jobs_wait_without_a_worker()
-> Result<()> {
    let w = World::start(vec![fab("fab", "on_prem_ad")], Duration::from_secs(3600)).await?;
    w.admin(
        "POST",
        "/companies/fabrikam/faults",
        Some(json!({"winrm_unreachable": true})),
    )
    .await?;
    let run = w
        .run(
            JOIN,
            "fab",
            json!({"upn": "chris.kim@fabrikam.com", "group": "VPN Users"}),
        )
        .await?;
    let store = &w.env.store;
    let paused = steward_tests::wait_for("the run to pause", T, || async move {
        let snap = store.load(run).await?.context("run")?;
        Ok(matches!(snap.doc.state.status, RunStatus::Paused { .. }).then_some(snap))
    })
    .await?;
    let why = serde_json::to_string(&paused.doc.state.status)?;
    assert!(
        why.contains("WinRM") && why.contains("Enable-PSRemoting"),
        "{why}"
    );
    assert_eq!(
        jobs(&w).await?,
        1,
        "a diagnosed configuration problem burns no retries"
    );
    w.admin(
        "POST",
        "/companies/fabrikam/faults",
        Some(json!({"winrm_unreachable": false})),
    )
    .await?;
    // Fixed: the technician resumes, and the step runs again (a fresh job, not the old answer).
    w.env
        .apply_ok(
            run,
            &steward_schemas::Event::ResumeRequested {
                by: "alice@msp.example".to_owned(),
            },
        )
        .await?;
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}\n{}",
        w.history(run).await?
    );
    assert_eq!(jobs(&w).await?, 2);

    // Held quick jobs: the step waits (pending, its check an hour away), no worker is busy.
    w.admin("POST", "/jobs/hold", None).await?;
    let run = w
        .run(
            JOIN,
            "fab",
            json!({"upn": "chris.kim@fabrikam.com", "group": "Sales"}),
        )
        .await?;
    let note = steward_tests::wait_for("the step to wait", T, || async move {
        let snap = store.load(run).await?.context("run")?;
        Ok(match &snap.doc.state.steps["join"].state {
            StepState::Polling { note, .. } => note.clone(),
            _ => None,
        })
    })
    .await?;
    assert!(note.contains("ad.add_group_member"), "{note}");
    w.admin("POST", "/jobs/release", None).await?;
    let status = w.end(run).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_sync_is_retried_later_not_failed() -> Result<()> {
    let w = World::start(vec![fab("fab", "hybrid")], Duration::from_secs(5)).await?;
    w.admin(
        "POST",
        "/companies/fabrikam/sync/start",
        Some(json!({"duration_seconds": 3600})),
    )
    .await?;
    let run = w.run(SYNC, "fab", json!({})).await?;
    let store = &w.env.store;
    // The step waits for the running cycle (pending, no attempt used up), its check a minute
    // away; it is neither failed nor retrying.
    let (note, attempt) =
        steward_tests::wait_for("the step to wait for the cycle", T, || async move {
            let snap = store.load(run).await?.context("run")?;
            Ok(match &snap.doc.state.steps["sync"].state {
                StepState::Polling { note, job, .. }
                    if note.as_deref().is_some_and(|n| n.contains("AAD is busy")) =>
                {
                    Some((note.clone().unwrap_or_default(), job.attempt))
                }
                _ => None,
            })
        })
        .await?;
    assert!(
        note.contains("sync_busy") || note.contains("tries again"),
        "{note}"
    );
    assert_eq!(attempt.get(), 1, "no attempt used up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_backs_off_every_worker_and_the_403_after_it_is_a_temporary_block() -> Result<()> {
    let w = World::start(vec![], Duration::from_secs(5)).await?;
    let second = |ns: &str| -> Result<Datto> {
        let mut c = datto::Config::new(
            &format!("{}/datto", w.sb.base_url),
            steward_engine::runner::SANDBOX_DATTO_KEY,
            steward_engine::runner::SANDBOX_DATTO_SECRET,
            "x",
        )?;
        c.requests_per_minute = 500;
        Ok(Datto::new(
            c,
            Some(datto::Shared {
                redis: w.env.store.db().manager(),
                namespace: ns.to_owned(),
            }),
        )?)
    };
    // Two workers sharing the namespace.
    let a = second(&w.env.namespace)?;
    let b = second(&w.env.namespace)?;
    a.device("FAB-RUNNER01").await?;
    w.admin(
        "POST",
        "/faults",
        Some(json!({"path": "/datto/api/v2/**", "sequence": [
            {"status": 429, "retry_after": 3},
            {"status": 403},
        ]})),
    )
    .await?;
    a.forget_devices();
    let e = a.device("FAB-RUNNER01").await.expect_err("429");
    assert!(matches!(e, RmmError::Throttled { .. }), "{e:?}");
    // The other worker does not call Datto while the cool-down lasts.
    let sent = b.requests();
    let e = b.device("FAB-RUNNER01").await.expect_err("cool-down");
    assert!(matches!(e, RmmError::Throttled { .. }), "{e:?}");
    assert_eq!(
        b.requests(),
        sent,
        "the second worker called Datto during the cool-down"
    );
    // After the cool-down, Datto answers 403: a block, not a permission error, for everyone.
    let e = steward_tests::wait_for("the cool-down to end", Duration::from_secs(10), || async {
        match a.device("FAB-RUNNER01").await {
            Err(RmmError::Throttled { .. }) => Ok(None),
            other => Ok(Some(other)),
        }
    })
    .await?
    .expect_err("403");
    assert!(matches!(e, RmmError::Blocked { .. }), "{e:?}");
    assert!(e.is_retryable() && e.to_string().contains("blocked"), "{e}");
    let e = b.device("FAB-RUNNER01").await.expect_err("blocked");
    assert!(
        matches!(e, RmmError::Blocked { .. } | RmmError::Throttled { .. }),
        "{e:?}"
    );
    Ok(())
}
