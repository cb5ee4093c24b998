//! The engine against a real, private Redis, with in-process workers and scheduler.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use steward_engine::embedded::Persistence;
use steward_engine::keys::{GROUP, Lane};
use steward_engine::store::{self, Ack, Outcome, RunSnapshot};
use steward_schemas::{CompState, Event, FailureKind, Job, RunStatus, StepFailure, StepState};
use steward_tests::{Env, WorkerOpts, plan, wait_for};

const T: Duration = Duration::from_secs(30);

const ONBOARD: &str = r#"
name: onboard
inputs: {user: {type: string}}
defaults: {on_failure: rollback, retry: {attempts: 4, initial: 50ms, max_delay: 200ms}}
steps:
  - {id: account, op: ledger, with: {key: "account:${{ inputs.user }}"}}
  - {id: sync, op: poll, needs: [account], with: {times: 2, check_after_ms: 50}}
  - {id: license, op: flaky, needs: [sync], with: {times: 2}}
  - {id: groups, op: ledger, needs: [sync], with: {key: "groups:${{ inputs.user }}"}}
  - {id: mailbox, op: ledger, needs: [license, groups], with: {key: "mailbox:${{ steps.account.output.key }}"}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_with_retries_polls_and_branches_completes() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let plan = plan(ONBOARD);
    let run = env.start_run(&plan, json!({"user": "jane"})).await?;
    let status = env.wait_end(run, T).await?;
    assert!(
        matches!(status, RunStatus::Completed { ref failed, .. } if failed.is_empty()),
        "{status:?}"
    );

    let snap = env.store.load(run).await?.context("run")?;
    let steps = &snap.doc.state.steps;
    assert!(
        matches!(steps["license"].state, StepState::Succeeded { attempt, .. } if attempt.get() == 3)
    );
    assert_eq!(steps["sync"].seq, 3, "two polls after the first check");
    let StepState::Succeeded { output, .. } = &steps["mailbox"].state else {
        panic!()
    };
    assert_eq!(
        output["key"], "mailbox:account:jane",
        "outputs flow into later inputs"
    );

    let ledger = env.ledger().await?;
    assert_eq!(ledger.applied.len(), 3);
    assert_eq!(ledger.in_place, 3);

    let history = env.store.history(run).await?;
    let names: Vec<&str> = history.iter().map(|h| h.event.name()).collect();
    assert_eq!(names[0], "run_created");
    assert_eq!(
        names.iter().filter(|n| **n == "timer_fired").count(),
        4,
        "2 polls + 2 retries: {names:?}"
    );
    assert!(
        history.windows(2).all(|w| w[0].at <= w[1].at),
        "history is in time order"
    );
    assert_eq!(history.last().unwrap().status, "completed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_undoes_changes_newest_first_and_lists_irreversible_ones() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let plan = plan(
        r#"
name: r
defaults: {on_failure: rollback, retry: {attempts: 1}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: b, op: ledger, needs: [a], with: {key: b}}
  - {id: pw, op: ledger, needs: [a], with: {key: pw, irreversible: true}}
  - {id: c, op: ledger, needs: [b], with: {key: c}}
  - {id: boom, op: fail, needs: [c, pw], with: {message: "no seats left"}}
"#,
    );
    let run = env.start_run(&plan, json!({})).await?;
    let status = env.wait_end(run, T).await?;
    let RunStatus::RolledBack {
        irreversible,
        cause,
        ..
    } = &status
    else {
        panic!("{status:?}")
    };
    assert_eq!(
        irreversible.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ["pw"]
    );
    assert!(format!("{cause:?}").contains("no seats left"));
    let ledger = env.ledger().await?;
    let order: Vec<String> = ledger
        .undone
        .iter()
        .map(|u| u.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(order, ["c", "b", "a"], "undone newest first");
    assert_eq!(ledger.in_place, 1, "only the irreversible change stays");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_undo_ends_rollback_failed_with_what_is_left() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let plan = plan(
        r#"
name: r
defaults: {on_failure: rollback, retry: {attempts: 2, initial: 20ms}}
steps:
  - {id: a, op: ledger, with: {key: a}}
  - {id: b, op: ledger, needs: [a], with: {key: b, undo_fails: true}}
  - {id: boom, op: fail, needs: [b]}
"#,
    );
    let run = env.start_run(&plan, json!({})).await?;
    let status = env.wait_end(run, T).await?;
    let RunStatus::RollbackFailed { failed, left, .. } = &status else {
        panic!("{status:?}")
    };
    assert_eq!(failed[0].as_str(), "b");
    assert_eq!(left[0].as_str(), "a");
    let snap = env.store.load(run).await?.context("run")?;
    assert!(
        matches!(&snap.doc.state.steps["b"].undo, Some(CompState::Failed { error, .. }) if error.kind == FailureKind::Terminal)
    );
    assert_eq!(env.ledger().await?.in_place, 2, "nothing was undone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_retry_skip_pause_resume_and_cancel() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _worker = env.worker(WorkerOpts::default()).await?;
    let store = &env.store;
    let apply = |run, event: Event| async move { store.apply(run, &event, None, None, None).await };

    // A failure that pauses, then a retry that fails again, then a skip.
    let paused = plan(
        "name: p\ndefaults: {on_failure: pause, retry: {attempts: 1}}\nsteps:\n  - {id: a, op: fail, with: {message: nope}}\n  - {id: b, op: ledger, needs: [a], with: {key: b}}\n",
    );
    let run = env.start_run(&paused, json!({})).await?;
    let paused_on = |run| async move {
        wait_for("the run to pause", T, || async move {
            let s = store.load(run).await?.context("run")?;
            Ok(matches!(s.doc.state.status, RunStatus::Paused { .. }).then_some(s))
        })
        .await
    };
    paused_on(run).await?;
    let Outcome::Refused(e) = apply(run, Event::ResumeRequested { by: "t".into() }).await? else {
        panic!()
    };
    assert!(e.to_string().contains("step `a` failed (nope)"), "{e}");
    assert!(matches!(
        apply(
            run,
            Event::RetryStepRequested {
                step: "a".parse()?,
                by: "t".into()
            }
        )
        .await?,
        Outcome::Applied { .. }
    ));
    let snap = wait_for("the retry to fail", T, || async move {
        let s = store.load(run).await?.context("run")?;
        Ok((s.doc.state.steps["a"].seq == 2
            && matches!(s.doc.state.status, RunStatus::Paused { .. }))
        .then_some(s))
    })
    .await?;
    assert!(
        matches!(snap.doc.state.steps["a"].state, StepState::Failed { attempt, .. } if attempt.get() == 1)
    );
    env.apply_ok(
        run,
        &Event::SkipStepRequested {
            step: "a".parse()?,
            by: "t".into(),
            reason: Some("done by hand".into()),
        },
    )
    .await?;
    assert!(matches!(
        env.wait_end(run, T).await?,
        RunStatus::Completed { .. }
    ));

    // Cancel with rollback while a long step runs: its result is kept, then undone. The step
    // has made its change and holds before reporting, so the cancel lands while it runs.
    let slow = plan(
        "name: s\nsteps:\n  - {id: a, op: ledger, with: {key: slow, hold_ms: 2000}}\n  - {id: b, op: noop, needs: [a]}\n",
    );
    let run = env.start_run(&slow, json!({})).await?;
    let env = &env;
    let slow_step = format!("{run}/a/");
    let slow_step = &slow_step;
    wait_for("the slow step to have made its change", T, || async move {
        let ledger = env.ledger().await?;
        let executions = ledger
            .executions
            .iter()
            .filter(|e| e.starts_with(slow_step));
        Ok((executions.count() == 1).then_some(()))
    })
    .await?;
    env.apply_ok(
        run,
        &Event::CancelRequested {
            by: "t".into(),
            rollback: true,
            reason: None,
        },
    )
    .await?;
    let status = env.wait_end(run, T).await?;
    assert!(matches!(status, RunStatus::RolledBack { .. }), "{status:?}");
    let ledger = env.ledger().await?;
    assert!(ledger.undone.iter().any(|u| u.contains("/a")), "{ledger:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_takes_back_queued_jobs_and_resuming_dispatches_them() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan(
        "name: p\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n  - {id: b, op: ledger, with: {key: b}}\n",
    );
    let run = env.start_run(&plan, json!({})).await?;
    // No worker yet: both jobs sit in the stream.
    let outcome = env
        .store
        .apply(
            run,
            &Event::PauseRequested {
                by: "t".into(),
                reason: None,
            },
            None,
            None,
            None,
        )
        .await?;
    let Outcome::Applied { state, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(
        state
            .steps
            .values()
            .all(|r| matches!(r.state, StepState::Ready { .. })),
        "{state:?}"
    );
    assert_eq!(
        env.steps_len(run).await?,
        0,
        "revoked jobs leave the stream"
    );
    let worker = env.worker(WorkerOpts::default()).await?;
    env.apply_ok(run, &Event::ResumeRequested { by: "t".into() })
        .await?;
    assert!(matches!(
        env.wait_end(run, T).await?,
        RunStatus::Completed { .. }
    ));
    let ledger = env.ledger().await?;
    assert_eq!(ledger.executions.len(), 2, "each job ran once: {ledger:?}");
    worker.stop().await;
    Ok(())
}

/// Reads one first job of a new run as a consumer that will never finish it (a worker that
/// died), and the run as it was when the job was read.
async fn take_as_ghost(env: &Env, consumer: &str) -> Result<(String, Job, u64, RunSnapshot)> {
    let keys = env.store.keys();
    let streams: Vec<String> = keys.all_shards().map(|s| keys.new_steps(s)).collect();
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&streams);
    for _ in &streams {
        cmd.arg(">");
    }
    let reply: redis::streams::StreamReadReply = env.store.db().query(&cmd).await?;
    let entry = reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids)
        .next()
        .context("no job")?;
    let job: Job = serde_json::from_str(&entry.get::<String>("j").context("j")?)?;
    let version: u64 = entry.get::<String>("v").context("v")?.parse()?;
    let run: steward_schemas::RunId = entry.get::<String>("r").context("r")?.parse()?;
    let snap = env.store.load(run).await?.context("the job's run")?;
    Ok((entry.id.clone(), job, version, snap))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_outcome_of_an_old_attempt_changes_nothing() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan(
        "name: s\ndefaults: {retry: {attempts: 3, initial: 10ms}}\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n  - {id: b, op: noop, needs: [a]}\n",
    );
    let run = env.start_run(&plan, json!({})).await?;
    let (entry, job, version, doc) = take_as_ghost(&env, "ghost").await?;
    assert_eq!(job.seq, 1);
    // Attempt 1 is reported failed (say, it timed out); attempt 2 then runs and the run ends.
    let failed = Event::StepFailed {
        step: job.step.clone(),
        seq: 1,
        error: StepFailure::retryable("timeout"),
    };
    let outcome = env
        .store
        .apply(
            run,
            &failed,
            None,
            Some(&Ack {
                entry: entry.clone(),
                lane: Lane::New,
                step: job.step.clone(),
                seq: 1,
            }),
            None,
        )
        .await?;
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    let _worker = env.worker(WorkerOpts::default()).await?;
    assert!(matches!(
        env.wait_end(run, T).await?,
        RunStatus::Completed { .. }
    ));
    let before = env.store.load(run).await?.context("run")?;
    let history_before = env.store.history(run).await?.len();

    // Now attempt 1 "finishes" late, carrying the document it was dispatched with.
    let late = Event::StepSucceeded {
        step: job.step.clone(),
        seq: 1,
        output: json!({"late": true}),
        rollback: steward_schemas::Rollback::Nothing,
    };
    assert_eq!(
        doc.version, version,
        "the run as it was when the job was read"
    );
    let snapshot = doc;
    let outcome = env
        .store
        .apply(
            run,
            &late,
            Some(snapshot),
            Some(&Ack {
                entry,
                lane: Lane::New,
                step: job.step.clone(),
                seq: 1,
            }),
            None,
        )
        .await?;
    assert!(matches!(outcome, Outcome::Ignored { .. }), "{outcome:?}");
    let after = env.store.load(run).await?.context("run")?;
    assert_eq!(after, before, "state and version unchanged");
    assert_eq!(env.store.history(run).await?.len(), history_before);
    assert_eq!(env.steps_len(run).await?, 0, "nothing was enqueued");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_job_is_taken_over_and_poison_jobs_are_parked() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan(
        "name: s\ndefaults: {on_failure: rollback}\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n",
    );
    let survivor = env.start_run(&plan, json!({})).await?;
    take_as_ghost(&env, "ghost-1").await?;
    let worker = env
        .worker(WorkerOpts {
            claim_idle: Duration::from_millis(300),
            max_deliveries: 2,
            ..WorkerOpts::default()
        })
        .await?;
    assert!(matches!(
        env.wait_end(survivor, T).await?,
        RunStatus::Completed { .. }
    ));
    worker.stop().await;

    // A job that two consumers took and lost is parked on its third delivery.
    let poison = env.start_run(&plan, json!({})).await?;
    let (entry, _, _, _) = take_as_ghost(&env, "ghost-2").await?;
    let keys = env.store.keys();
    let stream = keys.new_steps(keys.shard_of(poison));
    env.store
        .db()
        .query::<redis::Value>(
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg("ghost-3")
                .arg(0)
                .arg(&entry),
        )
        .await?;
    let _worker = env
        .worker(WorkerOpts {
            claim_idle: Duration::from_millis(300),
            max_deliveries: 2,
            ..WorkerOpts::default()
        })
        .await?;
    let status = env.wait_end(poison, T).await?;
    assert!(matches!(status, RunStatus::RolledBack { .. }), "{status:?}");
    let snap = env.store.load(poison).await?.context("run")?;
    assert!(
        matches!(&snap.doc.state.steps["a"].state, StepState::Failed { error, .. } if error.kind == FailureKind::Poison)
    );
    assert_eq!(env.stream_len(&keys.dead(keys.shard_of(poison))).await?, 1);
    let ledger = env.ledger().await?;
    assert_eq!(
        ledger.applied.len(),
        1,
        "the poison job never ran: {ledger:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_start_on_time_and_secrets_stay_out() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan(
        "name: s\nsteps:\n  - {id: a, op: noop, with: {output: {password: hunter2, user: jane}}}\n",
    );
    let now = env.store.clock().now();
    let run = env
        .store
        .create_run(store::NewRun {
            plan: plan.clone(),
            company: "contoso".parse()?,
            company_settings: Default::default(),
            inputs: Default::default(),
            requested_by: "t".into(),
            start_at: Some(now.plus(Duration::from_millis(300))),
            ticket: None,
        })
        .await?;
    let snap = env.store.load(run).await?.context("run")?;
    assert_eq!(snap.doc.state.status.name(), "scheduled");
    // The worker and scheduler start only now, so nothing can have started the run before it
    // was seen scheduled.
    let _worker = env.worker(WorkerOpts::default()).await?;
    env.wait_end(run, T).await?;
    let snap = env.store.load(run).await?.context("run")?;
    let StepState::Succeeded { at, output, .. } = &snap.doc.state.steps["a"].state else {
        panic!()
    };
    assert!(
        *at >= now.plus(Duration::from_millis(300)),
        "started no earlier than asked"
    );
    assert_eq!(output["password"], "[redacted]");
    assert_eq!(output["user"], "jane");
    let history = serde_json::to_string(&env.store.history(run).await?)?;
    assert!(!history.contains("hunter2"));

    let err = env
        .start_run(&plan_with_input(), json!({"count": "x"}))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("input `count`: expected a number, got text"),
        "{err}"
    );
    Ok(())
}

fn plan_with_input() -> std::sync::Arc<steward_core::Plan> {
    plan("name: s\ninputs: {count: {type: number}}\nsteps:\n  - {id: a, op: noop}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_runs_each_apply_their_changes_once() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let _w1 = env
        .worker(WorkerOpts {
            concurrency: 8,
            ..WorkerOpts::default()
        })
        .await?;
    let _w2 = env
        .worker(WorkerOpts {
            concurrency: 8,
            scheduler: true,
            ..WorkerOpts::default()
        })
        .await?;
    let plan = plan(ONBOARD);
    let mut runs = Vec::new();
    for i in 0..60 {
        runs.push(
            env.start_run(&plan, json!({"user": format!("u{i}")}))
                .await?,
        );
    }
    for run in &runs {
        assert!(matches!(
            env.wait_end(*run, T).await?,
            RunStatus::Completed { .. }
        ));
    }
    let ledger = env.ledger().await?;
    let mut per: HashMap<&str, usize> = HashMap::new();
    for a in &ledger.applied {
        *per.entry(a.as_str()).or_default() += 1;
    }
    assert_eq!(ledger.applied.len(), 180);
    assert!(per.values().all(|&n| n == 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_worker_hands_back_the_jobs_it_never_started() -> Result<()> {
    use steward_engine::queue::{QueueConfig, StepQueue};
    let env = Env::start(Persistence::None).await?;
    let plan = plan("name: s\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n");
    let runs = [
        env.start_run(&plan, json!({})).await?,
        env.start_run(&plan, json!({})).await?,
        env.start_run(&plan, json!({})).await?,
    ];
    // A long claim idle time: a job left leased would not be taken over within the test.
    let config = QueueConfig {
        consumer: "stopping".into(),
        concurrency: 8,
        block: Duration::from_millis(200),
        claim_idle: Duration::from_secs(600),
        max_deliveries: 3,
    };
    let mut queue = StepQueue::start(env.store.clone(), env.companies(), config);
    let mut running = tokio::time::timeout(T, queue.next())
        .await
        .context("no job within the deadline")?
        .context("a job")?;
    running.start();
    let unstarted = tokio::time::timeout(T, queue.next())
        .await
        .context("no second job within the deadline")?
        .context("a second job")?;
    let unstarted_run = unstarted.run;
    drop(unstarted);
    // The third stays in the queue's buffer, or in the stream if it was not read yet.
    let drain = queue.drain();
    drop(queue);
    let released = drain.release().await;

    let keys = env.store.keys();
    let mut held = 0;
    for (shard, lane) in keys.all_shards().flat_map(|s| Lane::ALL.map(|l| (s, l))) {
        let p: Vec<(String, String, u64, u64)> = env
            .store
            .db()
            .query(
                redis::cmd("XPENDING")
                    .arg(keys.stream(shard, lane))
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(10)
                    .arg("stopping"),
            )
            .await?;
        held += p.len();
    }
    assert_eq!(
        held, 1,
        "only the started job stays leased to the stopped worker"
    );
    assert!((1..=2).contains(&released), "released {released}");

    // A cancel still revokes a handed-back job: its new entry is where the run says it is.
    env.apply_ok(
        unstarted_run,
        &Event::CancelRequested {
            by: "t".into(),
            rollback: false,
            reason: None,
        },
    )
    .await?;
    assert!(matches!(
        env.wait_end(unstarted_run, T).await?,
        RunStatus::Cancelled { .. }
    ));

    // Another worker runs the rest at once, long before the claim idle time.
    let _worker = env.worker(WorkerOpts::default()).await?;
    for run in runs {
        if run == running.run || run == unstarted_run {
            continue;
        }
        assert!(matches!(
            env.wait_end(run, T).await?,
            RunStatus::Completed { .. }
        ));
    }
    let ledger = env.ledger().await?;
    assert_eq!(ledger.executions.len(), 1, "{ledger:?}");
    drop(running);
    Ok(())
}

/// Script calls Redis has run (`INFO commandstats`).
/// A run that stops queueing work (ended here; parked at a gate or on a timer likewise) keeps its
/// history log at its exact size: APPEND leaves a string up to as much again spare, which a run
/// kept for its retention period would carry all that time.
#[tokio::test]
async fn an_idle_runs_history_log_carries_no_spare_room() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let steps: String = (0..6)
        .map(|i| {
            format!(
                "  - {{id: s{i}, op: noop{}}}\n",
                if i > 0 {
                    format!(", needs: [s{}]", i - 1)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    let plan = plan(&format!("name: log_size\nsteps:\n{steps}"));
    let worker = env.worker(WorkerOpts::default()).await?;
    let run = env.start_run(&plan, json!({})).await?;
    let status = env.wait_end(run, T).await?;
    assert!(matches!(status, RunStatus::Completed { .. }), "{status:?}");
    worker.stop().await;
    let key = env.store.keys().log(run);
    let len: u64 = env.store.db().query(redis::cmd("STRLEN").arg(&key)).await?;
    let usage: u64 = env
        .store
        .db()
        .query(redis::cmd("MEMORY").arg("USAGE").arg(&key))
        .await?;
    // Eight entries of a few hundred bytes each; the key, its object and its dictionary entry
    // take about 120 bytes, and the allocator rounds up to a size class (at most a quarter).
    assert!(len > 1000, "the log holds the run's history: {len} bytes");
    assert!(
        usage <= len + len / 4 + 160,
        "the log takes {usage} bytes of memory for {len} bytes of history"
    );
    Ok(())
}

async fn script_calls(env: &Env) -> Result<u64> {
    let info: String = env
        .store
        .db()
        .query(redis::cmd("INFO").arg("commandstats"))
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Group commit: commits of one shard that arrive while its previous script call is in flight go
/// to Redis together, in one call, and each is applied as if alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_of_a_shard_share_script_calls() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan(
        "name: b\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n  - {id: b, op: noop, needs: [a]}\n",
    );
    let before = script_calls(&env).await?;
    let runs =
        futures::future::try_join_all((0..200).map(|_| env.start_run(&plan, json!({})))).await?;
    let calls = script_calls(&env).await? - before;
    // (Each creation first writes its definition, so they reach the lanes spread out: measured
    // 60–145 calls.)
    assert!(calls < 190, "{calls} script calls created 200 runs");
    let mut ids = runs.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "200 distinct runs");
    let worker = env.worker(WorkerOpts::default()).await?;
    for run in &runs {
        let status = env.wait_end(*run, T).await?;
        assert!(matches!(status, RunStatus::Completed { .. }), "{status:?}");
    }
    // Each run's step ran once, and each run's history has its own three entries (created, a, b).
    assert_eq!(env.ledger().await?.executions.len(), 200);
    for run in &runs[..10] {
        assert_eq!(env.store.history(*run).await?.len(), 3, "{run}");
    }
    worker.stop().await;
    Ok(())
}
