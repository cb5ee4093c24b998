//! `steward demo`: a private Redis, an in-process worker and scheduler, and two runs of the
//! sample workflow — one that completes, one that fails at the end and rolls back.

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
use steward_workers::testing::ledger_keys;
use steward_workers::{Registry, Services};
use tokio::sync::watch;

const DEMO: &str = include_str!("../workflows/demo.yaml");

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
    let companies = Companies::new(db.clone(), "demo", Arc::new(SystemClock));
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
        let snap = store.load(*run).await?.context("run vanished")?;
        let history = store.history(*run).await?;
        crate::print::status(&snap, &history, &plan);
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
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = scheduler.await;
    drop(server);
    Ok(ExitCode::SUCCESS)
}
