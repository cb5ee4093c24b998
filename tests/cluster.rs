//! Steward on a real Redis Cluster: three masters that the test starts
//! (`redis-server --cluster-enabled yes` ×3, `redis-cli --cluster create`), with the shards spread
//! over all of them; real `steward serve` and `steward worker` processes, one of them killed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use steward_engine::db::Node;
use steward_schemas::{RunId, RunStatus, StepState};
use steward_tests::procs::{
    self, HOLDING, LoadErrors, assert_applied_once, assert_taken_over_once, logs, start_runs,
    wait_in_the_middle,
};
use steward_tests::{Env, Proc, WorkerOpts, plan, wait_for};
use steward_workers::conn::slot_of;

const BIN: &str = env!("CARGO_BIN_EXE_steward");
const SHARDS: u16 = 8;
const T: Duration = Duration::from_secs(90);

/// The runs' steps' states, counted (for failure messages).
fn steps_summary(env: &Env, runs: &[RunId]) -> String {
    let runtime = tokio::runtime::Handle::current();
    let store = env.store.clone();
    let runs = runs.to_vec();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
            for run in runs {
                if let Ok(Some(snap)) = store.load(run).await {
                    for (id, rec) in &snap.doc.state.steps {
                        let state = serde_json::to_value(&rec.state)
                            .ok()
                            .and_then(|v| {
                                v.get("state").and_then(|s| s.as_str()).map(str::to_owned)
                            })
                            .unwrap_or_else(|| {
                                format!("{:?}", rec.state).chars().take(40).collect()
                            });
                        let state = if state == "failed" {
                            format!("{:?}", rec.state)
                        } else {
                            state
                        };
                        *counts.entry(format!("{id}: {state}")).or_default() += 1;
                    }
                }
            }
            format!("{counts:?}")
        })
    })
    .join()
    .unwrap_or_default()
}

/// Which master (port) owns each shard's slot; fails unless every master owns at least one.
async fn shard_owners(env: &Env) -> Result<HashMap<u16, u16>> {
    let slots = env.store.db().slots().await?;
    let keys = env.store.keys();
    let mut owners = HashMap::new();
    for shard in keys.all_shards() {
        let slot = slot_of(keys.steps(shard).as_bytes());
        let (_, _, _, port) = slots
            .iter()
            .find(|(start, end, _, _)| (*start..=*end).contains(&slot))
            .with_context(|| format!("no master owns slot {slot}"))?;
        owners.insert(shard, *port);
    }
    let used: BTreeSet<u16> = owners.values().copied().collect();
    let all: BTreeSet<u16> = env
        .redis
        .cluster()
        .context("a cluster")?
        .ports()
        .into_iter()
        .collect();
    assert_eq!(
        used, all,
        "every master owns some shards (shard → master port: {owners:?})"
    );
    Ok(owners)
}

/// Waits until every run has ended; on timeout, the processes' logs are in the error.
async fn wait_all(env: &Env, runs: &[RunId], procs: &[&Proc]) -> Result<HashMap<RunId, RunStatus>> {
    procs::wait_all(env, runs, T, LoadErrors::Fail, || logs(env, procs)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_scans_and_transactions_respect_slots_on_a_cluster() -> Result<()> {
    let env = Env::start_cluster(SHARDS).await?;
    shard_owners(&env).await?;
    let db = env.store.db();
    let keys = env.store.keys();
    // A pipeline over every shard (every master), with a keyless command and an ignored one in
    // the middle: the replies come back in the pipeline's order.
    let mut set = redis::pipe();
    for shard in keys.all_shards() {
        set.cmd("SET")
            .arg(format!("{}:x:{{s{shard:03}}}", keys.namespace()))
            .arg(format!("v{shard}"))
            .ignore();
    }
    let () = db.pipe(&set).await?;
    let mut get = redis::pipe();
    for shard in (0..SHARDS).rev() {
        get.cmd("GET")
            .arg(format!("{}:x:{{s{shard:03}}}", keys.namespace()));
        if shard == 3 {
            get.cmd("PING");
            get.cmd("INCR").arg("unrelated").ignore();
        }
    }
    let got: Vec<String> = db.pipe(&get).await?;
    let mut want: Vec<String> = (0..SHARDS).rev().map(|s| format!("v{s}")).collect();
    let at = want.iter().position(|v| v == "v3").expect("shard 3") + 1;
    want.insert(at, "PONG".to_owned());
    assert_eq!(got, want);

    // A transaction stays in one slot; one over two slots is refused, not half applied.
    let mut tx = redis::pipe();
    tx.atomic()
        .cmd("SET")
        .arg(format!("{}:y:{{s000}}", keys.namespace()))
        .arg(1)
        .cmd("SET")
        .arg(format!("{}:y:{{s001}}", keys.namespace()))
        .arg(1);
    let err = db.pipe::<()>(&tx).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("slot"),
        "a cross-slot transaction is refused: {err}"
    );
    let exists: u64 = db
        .query(
            redis::cmd("EXISTS")
                .arg(format!("{}:y:{{s000}}", keys.namespace()))
                .arg(format!("{}:y:{{s001}}", keys.namespace())),
        )
        .await?;
    assert_eq!(exists, 0);

    // SCAN on every master finds every shard's key.
    let masters = db.masters().await?;
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert!(masters.iter().all(|m| matches!(m, Node::Addr(..))));
    let mut found = BTreeSet::new();
    for node in &masters {
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = db
                .query_on(
                    node,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{}:x:*", keys.namespace())),
                )
                .await?;
            found.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    assert_eq!(found.len(), usize::from(SHARDS), "{found:?}");
    Ok(())
}

const GATED: &str = r#"
name: gated
inputs: {n: {type: number}}
defaults: {retry: {attempts: 3, initial: 100ms, max_delay: 200ms}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: wait, op: poll, needs: [a], with: {times: 2, check_after_ms: 100}}
  - {id: flaky, op: flaky, needs: [a], with: {times: 1}}
  - id: approval
    needs: [wait]
    gate: {approvers: company, expires_in: 24h}
  - {id: c, op: ledger, needs: [approval, flaky], with: {key: c}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_with_a_gate_and_timers_complete_through_steward_processes_on_a_cluster() -> Result<()>
{
    let env = Env::start_cluster(SHARDS).await?;
    let owners = shard_owners(&env).await?;
    // The company's approvers are enabled technicians, so the gates open for them.
    env.add_approvers().await?;
    let dir = tempfile::tempdir()?;
    let mut first = procs::worker(&env, BIN, dir.path(), "worker-a", "5s")?;
    let second = procs::worker(&env, BIN, dir.path(), "worker-b", "5s")?;
    let sched = procs::scheduler(&env, BIN, dir.path(), "serve")?;
    let procs = [&first, &second, &sched];
    let gated = plan(GATED);
    let runs = start_runs(&env, &gated, 24).await?;
    let masters: HashSet<u16> = runs
        .iter()
        .map(|r| owners[&env.store.keys().shard_of(*r)])
        .collect();
    assert_eq!(masters.len(), 3, "the runs live on every master");

    // Every gate opens after its timers fired (the scheduler) and its steps ran (the workers).
    wait_for("every gate to open", T, || async {
        for run in &runs {
            let snap = env.store.load(*run).await?.context("run")?;
            if !matches!(
                snap.doc.state.steps["approval"].state,
                StepState::AwaitingApproval { .. }
            ) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
    .with_context(|| logs(&env, &procs))
    .with_context(|| steps_summary(&env, &runs))?;

    // `/metrics`' pipeline over every shard (split per slot) adds up.
    let page = steward_engine::metrics::page(&env.store).await;
    assert!(page.contains("steward_redis_up 1"), "{page}");
    let open: u64 = page
        .lines()
        .filter(|l| l.starts_with("steward_gates_open{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(open, 24, "{page}");

    for run in &runs {
        env.approve(*run, "approval", "alice@msp.example").await?;
    }
    let ended = wait_all(&env, &runs, &procs).await?;
    assert!(
        ended
            .values()
            .all(|s| matches!(s, RunStatus::Completed { failed, .. } if failed.is_empty())),
        "{ended:?}"
    );
    assert_applied_once(&env, 2 * runs.len(), "a and c for every run").await?;
    for run in &runs {
        let history = env.store.history(*run).await?;
        let fired = history
            .iter()
            .filter(|h| h.event.name() == "timer_fired")
            .count();
        assert_eq!(fired, 3, "{run}: 2 polls + 1 retry");
    }

    // A graceful stop wakes every shard's blocked read on its own master (`CLIENT UNBLOCK` there):
    // the worker exits well before its reads (`worker.block`, 5 s) would have ended by themselves.
    first.signal("TERM")?;
    let stopping = std::time::Instant::now();
    wait_for("worker A to exit", Duration::from_secs(4), || {
        let alive = first.alive();
        async move { Ok((!alive).then_some(())) }
    })
    .await
    .with_context(|| logs(&env, &[&first]))?;
    eprintln!("worker stopped in {:?}", stopping.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_steps_are_taken_over_and_applied_once_on_a_cluster() -> Result<()> {
    let env = Env::start_cluster(SHARDS).await?;
    shard_owners(&env).await?;
    let dir = tempfile::tempdir()?;
    let holding = plan(HOLDING);
    let mut first = procs::worker(&env, BIN, dir.path(), "worker-a", "5s")?;
    let runs = start_runs(&env, &holding, 16).await?;
    // Kill when the first worker has applied every `b` and holds them all (each lasts 5 s).
    wait_in_the_middle(&env, &first, 16, 16).await?;
    first.kill9();
    let second = procs::worker(&env, BIN, dir.path(), "worker-b", "2s")?;
    let ended = wait_all(&env, &runs, &[&second]).await?;
    if !ended
        .values()
        .all(|s| matches!(s, RunStatus::Completed { failed, .. } if failed.is_empty()))
    {
        bail!(
            "not every run completed: {ended:?}\n{}",
            logs(&env, &[&second])
        );
    }
    let ledger = assert_applied_once(&env, 3 * runs.len(), "a, b and c for every run").await?;
    assert_taken_over_once(&env, &ledger, &runs, 16).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durability_check_asks_every_master() -> Result<()> {
    use steward_engine::store::Durability;
    let env = Env::start_cluster(SHARDS).await?;
    let store = env.store.clone().with_durability(Durability::Always);
    let ports = env.redis.cluster().context("a cluster")?.ports();
    let set = async |port: u16, name: &str, value: &str| -> Result<()> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await?;
        Ok(())
    };
    // Every master but the last fsyncs before each reply: the last one's runs could be lost.
    for &port in &ports[..ports.len() - 1] {
        set(port, "appendonly", "yes").await?;
        set(port, "appendfsync", "always").await?;
    }
    let err = store
        .check_durability()
        .await
        .expect_err("one master without AOF: always is refused")
        .to_string();
    assert!(err.contains("appendonly no"), "{err}");
    let last = ports[ports.len() - 1];
    set(last, "appendonly", "yes").await?;
    let err = store
        .check_durability()
        .await
        .expect_err("one master with appendfsync everysec: always is refused")
        .to_string();
    assert!(err.contains("appendfsync everysec"), "{err}");
    set(last, "appendfsync", "always").await?;
    store.check_durability().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_moved_to_another_master_are_followed() -> Result<()> {
    let env = Env::start_cluster(SHARDS).await?;
    let owners = shard_owners(&env).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let flow = plan(
        r#"
name: moving
inputs: {n: {type: number}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: wait, op: poll, needs: [a], with: {times: 1, check_after_ms: 50}}
  - {id: c, op: ledger, needs: [wait], with: {key: c}}
"#,
    );
    let before = start_runs(&env, &flow, 8).await?;
    wait_all(&env, &before, &[]).await?;

    // Every shard of the first master moves to the second (keys, streams and consumer groups
    // included), while the worker's readers are blocked on the first.
    let cluster = env.redis.cluster().context("a cluster")?;
    let (from, to) = (cluster.ports()[0], cluster.ports()[1]);
    let moved: HashSet<u16> = owners
        .iter()
        .filter(|(_, port)| **port == from)
        .map(|(shard, _)| *shard)
        .collect();
    assert!(!moved.is_empty(), "{owners:?}");
    for shard in &moved {
        cluster
            .move_slot(slot_of(env.store.keys().steps(*shard).as_bytes()), to)
            .await?;
    }
    let slots = env.store.db().slots().await?;
    for shard in &moved {
        let slot = slot_of(env.store.keys().steps(*shard).as_bytes());
        assert!(
            slots
                .iter()
                .any(|(start, end, _, port)| (*start..=*end).contains(&slot) && *port == to),
            "shard {shard} is on {to} now: {slots:?}"
        );
    }

    // New runs, until at least four are in the moved shards, all complete.
    let mut after = Vec::new();
    let mut in_moved = 0;
    while in_moved < 4 {
        let run = env.start_run(&flow, json!({"n": after.len()})).await?;
        if moved.contains(&env.store.keys().shard_of(run)) {
            in_moved += 1;
        }
        after.push(run);
        assert!(after.len() < 500, "runs land in every shard");
    }
    let ended = wait_all(&env, &after, &[]).await?;
    assert!(
        ended
            .values()
            .all(|s| matches!(s, RunStatus::Completed { failed, .. } if failed.is_empty())),
        "{ended:?}"
    );
    assert_applied_once(
        &env,
        2 * (before.len() + after.len()),
        "a and c for every run",
    )
    .await?;
    Ok(())
}
