//! Cloud ops through the engine: a real Redis, an in-process worker whose registry has the
//! Microsoft 365 connectors, and the sandbox. An onboarding run completes; the same run with a
//! failing last step rolls back every cloud change through the ops' inverses.

mod m365_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use steward_core::Plan;
use steward_engine::embedded::Persistence;
use steward_engine::store::RunSnapshot;
use steward_schemas::{RunId, RunStatus, StepState};
use steward_tests::{Env, InProcess, WorkerOpts};
use steward_workers::Registry;
use steward_workers::m365::MemorySink;

use m365_support::*;

const T: Duration = Duration::from_secs(60);

const ONBOARD: &str = r#"
name: onboard_cloud
inputs: {upn: {type: string}, fail: {type: boolean, default: false}}
defaults: {on_failure: rollback, retry: {attempts: 3, initial: 50ms, max_delay: 200ms}}
steps:
  - {id: create, op: user.create, with: {user_principal_name: "${{ inputs.upn }}", display_name: "Engine Test", usage_location: GB}}
  - {id: licence, op: license.assign, needs: [create], with: {user: "${{ steps.create.output.id }}", sku: SPB}}
  - {id: team, op: group.add_member, needs: [create], with: {user: "${{ steps.create.output.id }}", group: "Retail Team"}}
  - {id: manager, op: user.set_manager, needs: [create], with: {user: "${{ steps.create.output.id }}", manager: megan.bowen@contoso.com}}
  - {id: check, op: fail, needs: [licence, team, manager], when: "${{ inputs.fail }}", with: {message: "HR cancelled the start"}}
"#;

/// Compiles `yaml` (named `file`) with the ops of `registry`, and starts an in-process worker (8
/// steps at once) and scheduler running them; stopped when dropped.
async fn worker_with(
    env: &Env,
    registry: Registry,
    file: &str,
    yaml: &str,
) -> Result<(Arc<Plan>, InProcess)> {
    let plan = Arc::new(Plan::load(file, yaml, Some(&registry))?);
    let worker = env
        .worker(WorkerOpts {
            concurrency: 8,
            registry: Some(registry),
            ..WorkerOpts::default()
        })
        .await?;
    Ok((plan, worker))
}

/// Waits until `run`'s status is `done` (`what`, for the timeout's message); its snapshot.
async fn wait_until(
    env: &Env,
    run: RunId,
    what: &str,
    done: impl Fn(&RunStatus) -> bool,
) -> Result<RunSnapshot> {
    let (store, done) = (&env.store, &done);
    steward_tests::wait_for(what, T, || async move {
        let snap = store.load(run).await?.context("run")?;
        Ok(done(&snap.doc.state.status).then_some(snap))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_onboarding_run_completes_and_a_cancelled_one_rolls_back() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let sink = MemorySink::new();
    let m = m365_shared(&sb.base_url, &env, &sink);
    let (plan, _worker) =
        worker_with(&env, Registry::with_m365(m), "onboard.yaml", ONBOARD).await?;

    let run = env
        .start_run(&plan, json!({"upn": "engine.one@contoso.com"}))
        .await?;
    let status = env.wait_end(run, T).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}"
    );
    let snap = env.store.load(run).await?.context("run")?;
    let StepState::Succeeded { output, .. } = &snap.doc.state.steps["create"].state else {
        panic!("create did not succeed");
    };
    let id = output["id"].as_str().context("id")?.to_owned();
    assert_eq!(output["delivery"]["kind"], "one_time_secret");
    let doc = serde_json::to_string(&snap.doc)?;
    let (_, password) = sink
        .read(&format!("{run}/create"))
        .context("kept password")?;
    assert!(
        !doc.contains(password.expose()),
        "the password reached the run document"
    );
    let world = admin(&sb, "GET", "/world/contoso", None).await?;
    let user = find(&world, &id)?;
    assert_eq!(user["licenses"].as_array().map(Vec::len), Some(1), "{user}");

    // The same onboarding, cancelled by its last step: every cloud change is undone.
    let run = env
        .start_run(
            &plan,
            json!({"upn": "engine.two@contoso.com", "fail": true}),
        )
        .await?;
    let status = env.wait_end(run, T).await?;
    assert!(matches!(status, RunStatus::RolledBack { .. }), "{status:?}");
    let snap = env.store.load(run).await?.context("run")?;
    let StepState::Succeeded { output, .. } = &snap.doc.state.steps["create"].state else {
        panic!("create did not succeed");
    };
    let id = output["id"].as_str().context("id")?.to_owned();
    let ledger = admin(&sb, "GET", &format!("/ledger?run={run}"), None).await?;
    let actions: Vec<(String, String)> = ledger["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap_or("").to_owned(),
                e["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    println!("ledger of the rolled-back run: {actions:?}");
    assert_eq!(ledger["duplicates"], json!(0));
    for step in ["create", "licence", "team", "manager"] {
        assert!(
            actions.iter().any(|(s, _)| s == step),
            "{step} changed nothing: {actions:?}"
        );
        assert!(
            actions.iter().any(|(s, _)| s == &format!("{step}/undo")),
            "{step} was not undone: {actions:?}"
        );
    }
    let world = admin(&sb, "GET", "/world/contoso", None).await?;
    let user = find(&world, &id)?;
    assert!(
        !user["deleted_at"].is_null(),
        "the rollback did not delete the user: {user}"
    );
    assert_eq!(
        user["licenses"],
        json!([]),
        "the rollback did not free the seat: {user}"
    );
    assert!(user["manager"].is_null(), "{user}");
    Ok(())
}

/// The user `id` in a company snapshot.
fn find(world: &Value, id: &str) -> Result<Value> {
    fn walk(v: &Value, id: &str) -> Option<Value> {
        match v {
            Value::Object(m) => {
                if m.get("id").and_then(Value::as_str) == Some(id) && m.contains_key("licenses") {
                    return Some(v.clone());
                }
                m.values().find_map(|x| walk(x, id))
            }
            Value::Array(a) => a.iter().find_map(|x| walk(x, id)),
            _ => None,
        }
    }
    walk(world, id).with_context(|| format!("no user {id} in the snapshot"))
}

const LICENCE: &str = r#"
name: licence_only
inputs: {user: {type: string}}
defaults: {retry: {attempts: 3, initial: 50ms, max_delay: 200ms}}
steps:
  - {id: licence, op: license.assign, with: {user: "${{ inputs.user }}", sku: O365_BUSINESS_ESSENTIALS}}
"#;

/// A tenant whose consent lacks the permission an op needs: Graph answers 403, the step is not
/// retried, and the run pauses with the diagnosis (which permission, and the re-consent); once
/// the tenant grants it, resuming the run completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_missing_a_permission_pauses_the_run_with_the_fix() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let sink = MemorySink::new();
    // Enough to read the user and the SKUs, nothing that assigns licences (User.ReadWrite.All
    // would: Graph accepts it for assignLicense too).
    let without = ["User.Read.All", "Organization.Read.All"];
    let consent = format!("/companies/contoso/consents/{CLIENT_ID}");
    admin(
        &sb,
        "PUT",
        &consent,
        Some(json!({"application_permissions": without})),
    )
    .await?;
    let m = m365_shared(&sb.base_url, &env, &sink);
    let (plan, _worker) =
        worker_with(&env, Registry::with_m365(m), "licence.yaml", LICENCE).await?;
    let run = env
        .start_run(&plan, json!({"user": "megan.bowen@contoso.com"}))
        .await?;
    let paused = wait_until(&env, run, "the run to stop", |s| {
        !matches!(s, RunStatus::Running)
    })
    .await?;
    assert!(
        matches!(paused.doc.state.status, RunStatus::Paused { .. }),
        "{:?}\n{:?}",
        paused.doc.state.status,
        env.store.history(run).await?
    );
    let text = serde_json::to_string(&paused.doc.state)?;
    for want in [
        "Authorization_RequestDenied",
        "Grant LicenseAssignment.ReadWrite.All (application permission of Microsoft Graph)",
        "steward tenants connect contoso",
    ] {
        assert!(text.contains(want), "the pause lacks {want:?}: {text}");
    }
    // One attempt, blocked rather than failed: a missing permission burns no retries.
    let refused = admin(&sb, "GET", "/ledger", None).await?;
    assert!(
        !refused.to_string().contains("assignLicense"),
        "nothing was changed: {refused}"
    );
    let history = env.store.history(run).await?;
    let blocked = history
        .iter()
        .filter(|e| matches!(e.event, steward_schemas::Event::StepBlocked { .. }))
        .count();
    let failed = history
        .iter()
        .filter(|e| matches!(e.event, steward_schemas::Event::StepFailed { .. }))
        .count();
    assert_eq!((blocked, failed), (1, 0), "{history:?}");

    // The administrator grants it (a re-consent); the technician resumes; the run completes.
    admin(
        &sb,
        "PUT",
        &consent,
        Some(json!({"application_permissions": steward_workers::m365::permissions::APPLICATION})),
    )
    .await?;
    env.apply_ok(
        run,
        &steward_schemas::Event::ResumeRequested { by: "t".into() },
    )
    .await?;
    let status = env.wait_end(run, T).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}"
    );
    Ok(())
}

/// Steward's list of the permissions its registration needs is the sandbox's default grant, and
/// every permission the diagnosis names is one the sandbox's Graph accepts for that request.
#[test]
fn the_registrations_permissions_match_what_graph_enforces() {
    use steward_workers::m365::permissions::{self, Kind};
    assert_eq!(
        permissions::APPLICATION,
        steward_sandbox::GRAPH_APPLICATION_PERMISSIONS
    );
    assert_eq!(
        permissions::DELEGATED,
        steward_sandbox::GRAPH_DELEGATED_PERMISSIONS
    );
    for (method, path) in [
        ("GET", "/users/u"),
        ("POST", "/users"),
        ("PATCH", "/users/u"),
        ("DELETE", "/users/u"),
        ("PUT", "/users/u/manager/$ref"),
        ("GET", "/users/u/memberOf/microsoft.graph.group"),
        ("POST", "/users/u/assignLicense"),
        ("POST", "/users/u/revokeSignInSessions"),
        ("GET", "/users/u/authentication/methods"),
        ("DELETE", "/users/u/authentication/phoneMethods/m"),
        ("POST", "/users/u/authentication/methods/m/resetPassword"),
        ("GET", "/users/u/managedDevices"),
        ("GET", "/groups/g"),
        ("POST", "/groups/g/members/$ref"),
        ("DELETE", "/groups/g/members/u/$ref"),
        ("GET", "/subscribedSkus"),
        ("POST", "/deviceManagement/managedDevices/d/wipe"),
        ("POST", "/deviceManagement/managedDevices/d/retire"),
        ("GET", "/directory/deletedItems/d"),
        ("POST", "/directory/deletedItems/d/restore"),
        ("GET", "/roleManagement/directory/roleAssignments"),
        ("POST", "/roleManagement/directory/roleAssignments"),
        ("DELETE", "/roleManagement/directory/roleAssignments/r"),
    ] {
        let (kind, p) = permissions::needed(&format!("{method} /graph/v1.0{path}"))
            .unwrap_or_else(|| panic!("{method} {path}: no permission named"));
        let req = steward_sandbox::graph_requirement(&method.parse().unwrap(), path)
            .unwrap_or_else(|| panic!("{method} {path}: the sandbox has no requirement"));
        let accepted = match kind {
            Kind::Application => req.application,
            Kind::Delegated => req.delegated,
        }
        .unwrap_or_default();
        assert!(
            accepted.contains(&p),
            "{method} {path}: Graph does not accept {kind} {p} (accepts {accepted:?})"
        );
    }
}

/// A tenant connection with a certificate credential: the token requests carry a client
/// assertion signed with the certificate's key (the secret on record is wrong, so a secret
/// would be refused), and a Graph op runs end to end through the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_certificate_runs_a_graph_op() -> Result<()> {
    use steward_workers::m365::assertion::{Algorithm, ClientCertificate};
    let env = Env::start(Persistence::None).await?;
    let sb = sandbox().await?;
    let creds = credentials();
    for alg in [Algorithm::Ps256, Algorithm::Rs256] {
        let cert = ClientCertificate::from_pem(
            include_str!("../sandbox/fixtures/certs/steward.cert.pem"),
            steward_workers::m365::Secret::new(include_str!(
                "../sandbox/fixtures/certs/steward.key.pem"
            )),
            alg,
            None,
        )?;
        let mut conn = connection(CONTOSO);
        conn.client_secret = steward_workers::m365::Secret::new("not-the-secret");
        conn.certificate = Some(cert);
        creds.connect("contoso", conn);
        let sink = MemorySink::new();
        let m = m365_at(&sb.base_url, &creds, None, &sink);
        let (plan, worker) =
            worker_with(&env, Registry::with_m365(m), "licence.yaml", LICENCE).await?;
        let before = tokens_issued(&sb).await?;
        let run = env
            .start_run(&plan, json!({"user": "megan.bowen@contoso.com"}))
            .await?;
        let status = env.wait_end(run, T).await?;
        assert!(
            matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
            "{alg}: {status:?}\n{:?}",
            env.store.history(run).await?
        );
        assert!(
            tokens_issued(&sb).await? > before,
            "{alg}: no token was issued"
        );
        drop(worker);
    }
    // With a certificate the app registration does not hold, Microsoft's refusal is kept:
    // AADSTS700027, terminal.
    let other = ClientCertificate::from_pem(
        include_str!("../sandbox/fixtures/certs/other.cert.pem"),
        steward_workers::m365::Secret::new(include_str!("../sandbox/fixtures/certs/other.key.pem")),
        Algorithm::Rs256,
        None,
    )?;
    let mut conn = connection(CONTOSO);
    conn.certificate = Some(other);
    let m = m365_at(&sb.base_url, &credentials(), None, &MemorySink::new());
    let err = m
        .tokens
        .token(
            &conn,
            steward_workers::m365::Resource::Graph,
            steward_workers::m365::Grant::App,
        )
        .await
        .err()
        .context("refused")?;
    assert!(err.to_string().contains("700027"), "{err}");
    // Through the engine, the run pauses with the fix rather than waiting for a consent.
    let creds = credentials();
    creds.connect("contoso", conn);
    let m = m365_at(&sb.base_url, &creds, None, &MemorySink::new());
    let (plan, _worker) =
        worker_with(&env, Registry::with_m365(m), "licence.yaml", LICENCE).await?;
    let run = env
        .start_run(&plan, json!({"user": "megan.bowen@contoso.com"}))
        .await?;
    let paused = wait_until(&env, run, "the run to pause", |s| {
        matches!(s, RunStatus::Paused { .. })
    })
    .await?;
    let text = serde_json::to_string(&paused.doc.state)?;
    assert!(
        text.contains("AADSTS700027") && text.contains("steward tenants certificate"),
        "{text}"
    );
    Ok(())
}
