//! Crash tests: real `steward` processes killed with SIGKILL, frozen with SIGSTOP, and a Redis
//! restarted under them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use steward_engine::embedded::Persistence;
use steward_schemas::{RunId, RunStatus, StepState};
use steward_tests::procs::{
    self, HOLDING, LoadErrors, assert_applied_once, assert_taken_over_once, held_by, logs,
    start_runs, wait_in_the_middle,
};
use steward_tests::{Env, Proc, plan, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_steward");

/// Waits until every run has ended (trying a run again while Redis restarts); on timeout, the
/// processes' logs are in the error.
async fn wait_all(
    env: &Env,
    runs: &[RunId],
    timeout: Duration,
    procs: &[&Proc],
) -> Result<HashMap<RunId, RunStatus>> {
    procs::wait_all(env, runs, timeout, LoadErrors::Retry, || logs(env, procs)).await
}

#[test]
fn consumer_names_start_with_the_host_and_pid_the_tests_look_for() {
    // The crash tests find a process's jobs by this prefix; a change of the engine's format must
    // fail here, not as a wait that times out.
    let name = steward_engine::worker::consumer_name();
    let prefix = procs::consumer_prefix(std::process::id());
    let rest = name.strip_prefix(&prefix).unwrap_or_else(|| {
        panic!(
            "consumer name {name:?} does not start with {prefix:?}: update `procs::consumer_prefix`"
        )
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
    let holding = plan(HOLDING);
    // Claim idle times well above the lease renewal's cadence, so that neither worker takes its
    // own long-held steps over from itself on a loaded machine (that would be a third execution).
    let mut first = procs::worker(&env, BIN, dir.path(), "worker-a", "5s")?;
    let mut runs = start_runs(&env, &sleeping, 10).await?;
    let holders = start_runs(&env, &holding, 10).await?;
    runs.extend(&holders);
    // Kill when the first worker is sleeping through every `nap` and has applied every `b` (both
    // last 5 s, so that the 20 steps, started within moments of each other, are all held at once
    // long enough to be seen even on a loaded machine).
    wait_in_the_middle(&env, &first, 10, 20).await?;
    first.kill9();
    let second = procs::worker(&env, BIN, dir.path(), "worker-b", "2s")?;

    let ended = wait_all(&env, &runs, Duration::from_secs(60), &[&second]).await?;
    assert!(
        ended
            .values()
            .all(|s| matches!(s, RunStatus::Completed { .. })),
        "{ended:?}"
    );

    let ledger = assert_applied_once(&env, 50, "a and c for every run, b for the holders").await?;
    // The holders' 10 interrupted `b`s (a `nap` records nothing in the ledger).
    assert_taken_over_once(&env, &ledger, &runs, 10).await?;

    for run in &runs {
        let snap = env.store.load(*run).await?.context("run")?;
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
    let work = procs::worker(&env, BIN, dir.path(), "worker", "5s")?;
    let mut sched = procs::scheduler(&env, BIN, dir.path(), "scheduler-1")?;
    let runs = start_runs(&env, &plan, 30).await?;
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
    .with_context(|| logs(&env, &[&work, &sched]))?;
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
    .with_context(|| logs(&env, &[&work]))?;
    let second = procs::scheduler(&env, BIN, dir.path(), "scheduler-2")?;
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
    let w1 = procs::worker(&env, BIN, dir.path(), "worker-1", "3s")?;
    let w2 = procs::worker(&env, BIN, dir.path(), "worker-2", "3s")?;
    let s = procs::scheduler(&env, BIN, dir.path(), "scheduler")?;
    let runs = start_runs(&env, &plan, 200).await?;
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
    .with_context(|| logs(&env, &[&w1, &w2, &s]))?;
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
    assert_applied_once(&env, 400, "every run's two changes").await?;
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
    let frozen = procs::worker(&env, BIN, dir.path(), "frozen", "1s")?;
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
        held_by(&env, &frozen).await? > 0,
        "the first worker holds the job"
    );
    frozen.signal("STOP")?;
    let thawed = procs::worker(&env, BIN, dir.path(), "thawed", "2s")?;
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
