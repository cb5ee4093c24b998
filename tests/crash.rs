//! Crash tests: real `steward` processes killed with SIGKILL, frozen with SIGSTOP, and a Redis
//! restarted under them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use steward_core::Plan;
use steward_engine::embedded::Persistence;
use steward_engine::keys::GROUP;
use steward_schemas::{RunId, RunStatus, StepState};
use steward_tests::{Env, Proc, plan, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_steward");

fn worker(env: &Env, dir: &Path, name: &str, claim_idle: &str) -> Result<Proc> {
    let mut args = env.cli_args();
    args.extend(["worker", "--concurrency", "64", "--claim-idle", claim_idle].map(str::to_owned));
    Proc::spawn(Path::new(BIN), dir, name, &args)
}

fn scheduler(env: &Env, dir: &Path, name: &str) -> Result<Proc> {
    let mut args = env.cli_args();
    // Any free port: the default (127.0.0.1:8080) is shared by every test and anything else on
    // the machine.
    args.extend(["serve", "--listen", "127.0.0.1:0", "--tick", "50ms"].map(str::to_owned));
    Proc::spawn(Path::new(BIN), dir, name, &args)
}

async fn start_all(env: &Env, plan: &Arc<Plan>, n: usize) -> Result<Vec<RunId>> {
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        runs.push(env.start_run(plan, json!({"n": i})).await?);
    }
    Ok(runs)
}

/// The processes' logs, for failure messages.
fn logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| p.log_text())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until every run has ended; on timeout, the processes' logs are in the error.
async fn wait_all(
    env: &Env,
    runs: &[RunId],
    timeout: Duration,
    procs: &[&Proc],
) -> Result<HashMap<RunId, RunStatus>> {
    let done = Mutex::new(HashMap::new());
    let done = &done;
    wait_for(
        &format!("{} runs to end", runs.len()),
        timeout,
        || async move {
            for run in runs {
                if done.lock().expect("not poisoned").contains_key(run) {
                    continue;
                }
                // A Redis that is restarting answers with errors for a moment: try again.
                if let Ok(Some(snap)) = env.store.load(*run).await
                    && snap.doc.state.status.is_terminal()
                {
                    let mut done = done.lock().expect("not poisoned");
                    done.insert(*run, snap.doc.state.status);
                }
            }
            let done = done.lock().expect("not poisoned");
            Ok((done.len() == runs.len()).then(|| done.clone()))
        },
    )
    .await
    .with_context(|| {
        let ended = done.lock().map_or(0, |d| d.len());
        format!(
            "{} of {} runs had not ended\n{}",
            runs.len() - ended,
            runs.len(),
            logs(procs)
        )
    })
}

async fn pending_for(env: &Env, consumer_prefix: &str) -> Result<u64> {
    let keys = env.store.keys();
    let mut total = 0;
    for (shard, lane) in keys
        .all_shards()
        .flat_map(|s| steward_engine::keys::Lane::ALL.map(|l| (s, l)))
    {
        let consumers: Vec<redis::Value> = env
            .store
            .db()
            .query(
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(keys.stream(shard, lane))
                    .arg(GROUP),
            )
            .await?;
        for c in consumers {
            let map: HashMap<String, redis::Value> = redis::from_redis_value(c)?;
            let name: String = map
                .get("name")
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or_default();
            let pending: u64 = map
                .get("pending")
                .map(redis::from_redis_value_ref)
                .transpose()?
                .unwrap_or(0);
            if name.starts_with(consumer_prefix) {
                total += pending;
            }
        }
    }
    Ok(total)
}

/// The start of the consumer names of the `steward` process `p` (see
/// [`steward_engine::worker::consumer_name`], whose format this copies; checked by
/// `consumer_names_start_with_the_host_and_pid_the_tests_look_for`).
fn host_pid(p: &Proc) -> String {
    consumer_prefix(p.pid())
}

fn consumer_prefix(pid: u32) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{}-{pid}-", if host.is_empty() { "host" } else { &host },)
}

#[test]
fn consumer_names_start_with_the_host_and_pid_the_tests_look_for() {
    // The crash tests find a process's jobs by this prefix; a change of the engine's format must
    // fail here, not as a wait that times out.
    let name = steward_engine::worker::consumer_name();
    let prefix = consumer_prefix(std::process::id());
    let rest = name.strip_prefix(&prefix).unwrap_or_else(|| {
        panic!("consumer name {name:?} does not start with {prefix:?}: update `consumer_prefix`")
    });
    assert!(
        rest.parse::<ulid::Ulid>().is_ok(),
        "consumer name {name:?}: {rest:?} after the host and pid is not a ULID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_steps_are_taken_over_and_applied_once() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    // Two shapes: a kill in the middle of a sleep step, and a kill between a change and its report.
    let sleeping = plan(
        r#"
name: sleeping
inputs: {n: {type: number}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: nap, op: sleep, needs: [a], with: {ms: 5000}}
  - {id: c, op: ledger, needs: [nap], with: {key: c}}
"#,
    );
    let holding = plan(
        r#"
name: holding
inputs: {n: {type: number}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: b, op: ledger, needs: [a], with: {key: b, hold_ms: 5000}}
  - {id: c, op: ledger, needs: [b], with: {key: c}}
"#,
    );
    // Claim idle times well above the lease renewal's cadence, so that neither worker takes its
    // own long-held steps over from itself on a loaded machine (that would be a third execution).
    let mut first = worker(&env, dir.path(), "worker-a", "5s")?;
    let mut runs = start_all(&env, &sleeping, 10).await?;
    let holders = start_all(&env, &holding, 10).await?;
    runs.extend(&holders);
    // Kill when the first worker is sleeping through every `nap` and has applied every `b` (both
    // last 5 s, so that the 20 steps, started within moments of each other, are all held at once
    // long enough to be seen even on a loaded machine).
    wait_for(
        "worker A to be in the middle of 20 steps",
        Duration::from_secs(30),
        || async {
            let ledger = env.ledger().await?;
            let applied_b = ledger.applied.iter().filter(|a| a.ends_with("/b")).count();
            let held = pending_for(&env, &host_pid(&first)).await?;
            Ok((applied_b == 10 && held >= 20).then_some(()))
        },
    )
    .await
    .with_context(|| first.log_text())?;
    first.kill9();
    let second = worker(&env, dir.path(), "worker-b", "2s")?;

    let ended = wait_all(&env, &runs, Duration::from_secs(60), &[&second]).await?;
    assert!(
        ended
            .values()
            .all(|s| matches!(s, RunStatus::Completed { .. })),
        "{ended:?}"
    );

    let ledger = env.ledger().await?;
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for a in &ledger.applied {
        *applied.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(
        ledger.applied.len(),
        50,
        "a and c for every run, b for the holders"
    );
    assert!(
        applied.values().all(|&n| n == 1),
        "every change applied once"
    );
    let b_executions = ledger
        .executions
        .iter()
        .filter(|e| e.contains("/b/"))
        .count();
    assert_eq!(
        b_executions, 20,
        "each interrupted `b` ran again on the survivor (executed twice, applied once)"
    );

    for run in &runs {
        let snap = env.store.load(*run).await?.context("run")?;
        for (id, rec) in &snap.doc.state.steps {
            assert_eq!(
                rec.seq, 1,
                "{run} {id}: dispatched once, never enqueued twice"
            );
        }
        // The survivor finished the interrupted step (within `wait_all`'s deadline: how soon is
        // for the benchmarks).
        let taken = if snap.doc.ctx.workflow.name == "sleeping" {
            "nap"
        } else {
            "b"
        };
        assert!(
            matches!(
                snap.doc.state.steps[taken].state,
                StepState::Succeeded { .. }
            ),
            "{run}: `{taken}` {:?}",
            snap.doc.state.steps[taken].state
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_schedulers_due_timers_fire_after_restart() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    let plan = plan(
        r#"
name: timers
inputs: {n: {type: number}}
defaults: {retry: {attempts: 4, initial: 200ms, max_delay: 400ms}}
steps:
  - {id: wait, op: poll, with: {times: 3, check_after_ms: 200}}
  - {id: flaky, op: flaky, needs: [wait], with: {times: 2}}
"#,
    );
    let work = worker(&env, dir.path(), "worker", "5s")?;
    let mut sched = scheduler(&env, dir.path(), "scheduler-1")?;
    let runs = start_all(&env, &plan, 30).await?;
    let keys = env.store.keys().clone();
    wait_for(
        "some timers to have fired",
        Duration::from_secs(30),
        || async {
            let mut progressed = 0;
            for run in &runs {
                let snap = env.store.load(*run).await?.context("run")?;
                if snap.doc.state.steps["wait"].seq >= 2 {
                    progressed += 1;
                }
            }
            Ok((progressed > 0).then_some(()))
        },
    )
    .await
    .with_context(|| logs(&[&work, &sched]))?;
    sched.kill9();
    let due = || async {
        let now = env.store.clock().now().as_millis();
        let mut n = 0u64;
        for shard in keys.all_shards() {
            n += env
                .store
                .db()
                .query::<u64>(
                    redis::cmd("ZCOUNT")
                        .arg(keys.timers(shard))
                        .arg("-inf")
                        .arg(now),
                )
                .await?;
        }
        anyhow::Ok(n)
    };
    wait_for(
        "timers to fall due with no scheduler",
        Duration::from_secs(10),
        || async { Ok((due().await? > 0).then_some(())) },
    )
    .await
    .with_context(|| logs(&[&work]))?;
    let second = scheduler(&env, dir.path(), "scheduler-2")?;
    let ended = wait_all(&env, &runs, Duration::from_secs(60), &[&work, &second]).await?;
    assert!(
        ended
            .values()
            .all(|s| matches!(s, RunStatus::Completed { .. })),
        "{ended:?}"
    );
    for run in &runs {
        let snap = env.store.load(*run).await?.context("run")?;
        assert_eq!(
            snap.doc.state.steps["wait"].seq, 4,
            "three polls, none lost"
        );
        assert!(
            matches!(snap.doc.state.steps["flaky"].state, StepState::Succeeded { attempt, .. } if attempt.get() == 3)
        );
    }
    let mut left = 0usize;
    for shard in keys.all_shards() {
        let members: Vec<String> = env
            .store
            .db()
            .query(redis::cmd("ZRANGE").arg(keys.timers(shard)).arg(0).arg(-1))
            .await?;
        // Schedules (`sched:…`, the built-in token refresh) keep their next tick armed.
        left += members
            .iter()
            .filter(|m| !m.starts_with(steward_engine::schedules::TIMER_PREFIX))
            .count();
    }
    assert_eq!(left, 0, "no run timer left armed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_in_the_middle_of_200_runs_loses_nothing() -> Result<()> {
    let mut env = Env::start(Persistence::AofEverySec).await?;
    let dir = tempfile::tempdir()?;
    let plan = plan(
        r#"
name: busy
inputs: {n: {type: number}}
defaults: {retry: {attempts: 5, initial: 100ms, max_delay: 300ms}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: wait, op: poll, needs: [a], with: {times: 3, check_after_ms: 300}}
  - {id: flaky, op: flaky, needs: [wait], with: {times: 1}}
  - {id: b, op: ledger, needs: [flaky], with: {key: b}}
"#,
    );
    let w1 = worker(&env, dir.path(), "worker-1", "3s")?;
    let w2 = worker(&env, dir.path(), "worker-2", "3s")?;
    let s = scheduler(&env, dir.path(), "scheduler")?;
    let runs = start_all(&env, &plan, 200).await?;
    // Restart while every run is in flight: some have made progress, none can have ended (each
    // waits for three polls 300 ms apart).
    let ended_before = wait_for("runs to make progress", Duration::from_secs(30), || async {
        let (mut progressed, mut ended) = (0, 0);
        for run in &runs {
            let snap = env.store.load(*run).await?.context("run")?;
            if snap.doc.state.steps["wait"].seq >= 2 {
                progressed += 1;
            }
            if snap.doc.state.status.is_terminal() {
                ended += 1;
            }
        }
        Ok((progressed >= 50).then_some(ended))
    })
    .await
    .with_context(|| logs(&[&w1, &w2, &s]))?;
    // A run that has ended had made progress for at least a second (three polls 300 ms apart, a
    // retry), and fewer than 50 had made progress one look earlier: few can have ended.
    assert!(
        runs.len() - ended_before >= runs.len() / 4,
        "the restart must happen while runs are in flight: {ended_before} of {} had ended",
        runs.len()
    );
    env.redis.shutdown();
    env.redis.restart()?;
    let ended = wait_all(&env, &runs, Duration::from_secs(90), &[&w1, &w2, &s]).await?;
    let wrong: Vec<_> = ended
        .iter()
        .filter(|(_, s)| !matches!(s, RunStatus::Completed { failed, .. } if failed.is_empty()))
        .collect();
    assert!(wrong.is_empty(), "runs in a wrong state: {wrong:?}");
    let ledger = env.ledger().await?;
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for a in &ledger.applied {
        *applied.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(applied.len(), 400, "every run's two changes");
    assert!(applied.values().all(|&n| n == 1), "each applied once");
    // Ops whose system was the restarting Redis may have failed and been retried; but every
    // dispatch of a step follows its start, a retryable failure or a poll, never a duplicate.
    for run in &runs {
        let snap = env.store.load(*run).await?.context("run")?;
        let history = env.store.history(*run).await?;
        for step in ["a", "wait", "flaky", "b"] {
            let changes: Vec<&String> = history
                .iter()
                .flat_map(|h| &h.changes)
                .filter(|c| c.starts_with(&format!("{step}: ")))
                .collect();
            let dispatched = changes.iter().filter(|c| c.contains("-> queued")).count();
            let again = changes
                .iter()
                .filter(|c| c.contains("queued -> retrying") || c.contains("queued -> polling"))
                .count();
            assert_eq!(dispatched, again + 1, "{run} {step}: {changes:?}");
            assert_eq!(
                snap.doc.state.steps[step].seq as usize, dispatched,
                "{run} {step}"
            );
        }
    }
    let mut procs = [w1, w2, s];
    for p in &mut procs {
        assert!(
            p.alive(),
            "a process did not survive the restart:\n{}",
            p.log_text()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_workers_late_report_changes_nothing() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let dir = tempfile::tempdir()?;
    let plan = plan(
        "name: late\ninputs: {n: {type: number}}\nsteps:\n  - {id: s, op: ledger, with: {key: s, hold_ms: 2000}}\n  - {id: t, op: noop, needs: [s]}\n",
    );
    let frozen = worker(&env, dir.path(), "frozen", "1s")?;
    let run = env.start_run(&plan, json!({"n": 1})).await?;
    // Freeze it once it has made the change: it then holds for 2 s before reporting.
    wait_for(
        "the first worker to have made the change",
        Duration::from_secs(30),
        || async { Ok((env.ledger().await?.executions.len() == 1).then_some(())) },
    )
    .await
    .with_context(|| frozen.log_text())?;
    assert!(
        pending_for(&env, &host_pid(&frozen)).await? > 0,
        "the first worker holds the job"
    );
    frozen.signal("STOP")?;
    let thawed = worker(&env, dir.path(), "thawed", "2s")?;
    let status = env.wait_end(run, Duration::from_secs(30)).await?;
    assert!(matches!(status, RunStatus::Completed { .. }), "{status:?}");
    let before = env.store.load(run).await?.context("run")?;
    let history = env.store.history(run).await?.len();

    frozen.signal("CONT")?;
    wait_for(
        "the frozen worker's late report",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&frozen.log)?;
            Ok(log.contains("outcome ignored").then_some(()))
        },
    )
    .await
    .with_context(|| format!("{}\n{}", frozen.log_text(), thawed.log_text()))?;
    let after = env.store.load(run).await?.context("run")?;
    assert_eq!(after, before, "the late report changed nothing");
    assert_eq!(env.store.history(run).await?.len(), history);
    let ledger = env.ledger().await?;
    assert_eq!(ledger.executions.len(), 2, "the step ran on both workers");
    assert_eq!(ledger.applied.len(), 1, "and was applied once");
    assert_eq!(
        env.steps_len(run).await?,
        0,
        "nothing was enqueued by the late report"
    );
    Ok(())
}
