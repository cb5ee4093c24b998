//! `steward demo`: a private Redis, an in-process worker, scheduler and HTTP API, and three runs
//! of the sample workflow — one that completes, one that fails at the end and rolls back, and one
//! for a company whose policy wants an approver's yes first, approved through a signed link.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Map, json};
use steward_core::Plan;
use steward_engine::bench::Waiter;
use steward_engine::companies::{self, Companies};
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::planner::{Planner, StartRun};
use steward_engine::queue::QueueConfig;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::store::Store;
use steward_engine::worker::{self, Runtime};
use steward_engine::{Db, Keys, SystemClock};
use steward_schemas::{
    CompanyScope, GroupSetting, Level, PermissionGroup, Permissions, Profile, Role, RunId,
    RunStatus, StepState,
};
use steward_workers::testing::ledger_keys;
use steward_workers::{Registry, Services};
use tokio::sync::watch;

const DEMO: &str = include_str!("../../workflows/demo.yaml");

pub(crate) async fn run() -> Result<ExitCode> {
    println!("Starting a private Redis (AOF, appendfsync everysec)…");
    let server = RedisServer::start(Persistence::AofEverySec)?;
    let keys = Keys::new("demo", 4)?;
    let db = Db::connect(&server.url(), Duration::from_secs(5)).await?;
    let store = Store::new(db.clone(), keys, Arc::new(SystemClock));
    store.prepare().await?;
    let registry = Registry::builtin();
    let plan = Arc::new(Plan::load("workflows/demo.yaml", DEMO, Some(&registry))?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let companies = Companies::for_store(&store);
    companies::ensure(
        &companies,
        companies::sample("contoso", &["lead@msp.example"]),
    )
    .await?;
    let planner = Planner {
        store: store.clone(),
        companies: companies.clone(),
        registry: Arc::new(Registry::builtin()),
    };
    let runtime = Arc::new(Runtime {
        store: store.clone(),
        companies,
        registry,
        services: Services {
            redis: Some(db.manager()),
            namespace: "demo".to_owned(),
        },
    });
    let queue = QueueConfig {
        consumer: worker::consumer_name(),
        concurrency: 16,
        block: Duration::from_secs(1),
        claim_idle: Duration::from_secs(10),
        max_deliveries: 5,
    };
    let worker = tokio::spawn(worker::run(runtime, queue, stopped(stop_rx.clone())));
    let sched_config = SchedulerConfig {
        tick: Duration::from_millis(50),
        batch: 100,
        concurrency: 16,
    };
    let scheduler = tokio::spawn(scheduler::run(
        store.clone(),
        sched_config,
        stopped(stop_rx),
    ));

    let mut waiter = Waiter::new(&store).await?;
    let mut runs = Vec::new();
    for (user, fail) in [("jane.doe", false), ("john.roe", true)] {
        let inputs: Map<_, _> = json!({ "user": user, "fail_at_end": fail })
            .as_object()
            .cloned()
            .unwrap_or_default();
        let run = planner
            .start(StartRun {
                plan: plan.clone(),
                company: "contoso".parse()?,
                inputs,
                requested_by: "demo".to_owned(),
                ticket: None,
                start_at: None,
            })
            .await?;
        println!(
            "Started {run} for {user}{}",
            if fail {
                " (its last step will fail)"
            } else {
                ""
            }
        );
        runs.push(run);
    }
    waiter
        .wait_all(
            &store,
            &runs.iter().copied().collect(),
            Duration::from_secs(60),
        )
        .await
        .context("the demo runs did not finish")?;
    for run in &runs {
        println!();
        show(&store, *run).await?;
    }
    let [_, state, applied, undone] = ledger_keys("demo");
    let applied: Vec<String> = db
        .query(redis::cmd("LRANGE").arg(&applied).arg(0).arg(-1))
        .await?;
    let undone: Vec<String> = db
        .query(redis::cmd("LRANGE").arg(&undone).arg(0).arg(-1))
        .await?;
    let left: usize = db.query(redis::cmd("HLEN").arg(&state)).await?;
    println!();
    println!(
        "The ledger (the demo's stand-in for a directory): {} changes applied, {} undone, {left} in place.",
        applied.len(),
        undone.len()
    );
    println!(
        "The failed run's changes were undone newest first; its password reset is listed as irreversible."
    );

    approval(&store, &planner, &plan).await?;

    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = scheduler.await;
    drop(server);
    Ok(ExitCode::SUCCESS)
}

async fn show(store: &Store, run: RunId) -> Result<()> {
    let view = steward_engine::api::runs::RunView::load(store, run)
        .await?
        .context("run vanished")?;
    crate::print::run(&view, false)
}

/// The third run: a company whose policy wants an approver's yes before user changes; the
/// approver decides through a signed one-time link served by the HTTP API.
async fn approval(store: &Store, planner: &Planner, plan: &Arc<Plan>) -> Result<()> {
    let approver = "lead@msp.example";
    let mut fabrikam = companies::sample("fabrikam", &[approver]);
    fabrikam.name = "Fabrikam Ltd".to_owned();
    fabrikam.custom_instructions =
        "Confirm the start date with Fabrikam's office manager before approving.".to_owned();
    fabrikam.permissions = Permissions {
        profile: Profile::ItAdmin,
        groups: [(
            PermissionGroup::Users,
            GroupSetting {
                level: Level::ReadWrite,
                requires_approval: true,
            },
        )]
        .into(),
    };
    companies::ensure(&planner.companies, fabrikam).await?;

    let auth = steward_engine::auth::Auth::for_store(store);
    let lead = match auth.technician_by_email(approver).await? {
        Some(t) => t,
        None => {
            auth.add_technician(approver, "Team lead", Role::Technician, CompanyScope::ALL)
                .await?
        }
    };
    let (_, token) = auth.create_token(lead.id, "demo").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = steward_engine::api::state(
        store.clone(),
        planner.registry.clone(),
        steward_engine::planner::Workflows::default(),
        None,
        base.clone(),
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, steward_engine::api::app(state)).await;
    });

    println!();
    println!(
        "Fabrikam's policy wants an approver's yes before any change to users; the HTTP API is at {base}."
    );
    let inputs: Map<_, _> = json!({ "user": "ann.lee" })
        .as_object()
        .cloned()
        .unwrap_or_default();
    let run = planner
        .start(StartRun {
            plan: plan.clone(),
            company: "fabrikam".parse()?,
            inputs,
            requested_by: "tech@msp.example".to_owned(),
            ticket: None,
            start_at: None,
        })
        .await?;
    println!("Started {run} for ann.lee at Fabrikam; the policy put a gate before its first step.");
    let gate = steward_core::policy::POLICY_GATE;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let snap = store.load(run).await?.context("run vanished")?;
        if matches!(
            snap.doc.state.steps.get(gate).map(|s| &s.state),
            Some(StepState::AwaitingApproval { .. })
        ) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the gate did not open within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let http = reqwest::Client::new();
    let links: serde_json::Value = http
        .post(format!("{base}/v1/approvals/{run}/{gate}/links"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let approve_url = links["approve_url"]
        .as_str()
        .context("no approve link")?
        .to_owned();
    println!("The approver's one-time links (for an email, a Teams message or a ticket note):");
    println!("  approve  {approve_url}");
    println!(
        "  reject   {}",
        links["reject_url"].as_str().unwrap_or_default()
    );
    let view: serde_json::Value = http
        .get(&approve_url)
        .header("accept", "application/json")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let g = &view["gate"];
    println!(
        "Opening the link shows what the gate unlocks at {} ({}):",
        g["company_name"].as_str().unwrap_or_default(),
        g["company"].as_str().unwrap_or_default()
    );
    for u in g["unlocks"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<8} by {:<18} {}",
            u["step"].as_str().unwrap_or_default(),
            u["op"].as_str().unwrap_or_default(),
            u["route"].as_str().unwrap_or_default(),
            u["params"]
        );
    }
    println!(
        "  instructions: {}",
        g["custom_instructions"].as_str().unwrap_or_default()
    );
    let mut waiter = Waiter::new(store).await?;
    let used = http.post(&approve_url).send().await?;
    println!("Approving through the link: HTTP {}", used.status());
    let again = http.post(&approve_url).send().await?;
    let again_status = again.status();
    let again_body: serde_json::Value = again.json().await.unwrap_or_default();
    println!(
        "Using it again: HTTP {again_status} ({})",
        again_body["error"]["message"].as_str().unwrap_or_default()
    );

    waiter
        .wait_all(store, &[run].into_iter().collect(), Duration::from_secs(60))
        .await
        .context("the approved run did not finish")?;
    println!();
    show(store, run).await?;
    let snap = store.load(run).await?.context("run vanished")?;
    server.abort();
    anyhow::ensure!(
        matches!(snap.doc.state.status, RunStatus::Completed { .. }),
        "the approved run did not complete"
    );
    Ok(())
}
