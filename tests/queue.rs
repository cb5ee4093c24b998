//! The step queue and the scheduler at their edges: more entries read than places, poison and
//! unreadable entries, and timers whose run cannot take them.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use steward_engine::embedded::Persistence;
use steward_engine::keys::{GROUP, Lane, job_ref};
use steward_engine::scheduler::{self, Round, SchedulerConfig};
use steward_engine::store::{Ack, NewRun, Outcome};
use steward_schemas::{
    Event, FailureKind, Job, RunId, RunStatus, StepFailure, StepState, Timestamp,
};
use steward_tests::{Env, WorkerOpts, plan, wait_for};

const T: Duration = Duration::from_secs(30);

/// How many entries of a shard's step stream `consumer` holds.
async fn held_by(env: &Env, consumer: &str) -> Result<usize> {
    let keys = env.store.keys();
    let mut n = 0;
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
                    .arg(100)
                    .arg(consumer),
            )
            .await?;
        n += p.len();
    }
    Ok(n)
}

async fn xlen(env: &Env, key: &str) -> Result<u64> {
    Ok(env.store.db().query(redis::cmd("XLEN").arg(key)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_read_beyond_the_free_places_stay_leased_and_run_once() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let keys = env.store.keys();
    // Each step `a` holds for longer than the claim idle time, after applying its change.
    let plan = plan(
        "name: s\nsteps:\n  - {id: z, op: noop}\n  - {id: a, op: ledger, needs: [z], with: {key: a, hold_ms: 900}}\n",
    );
    // One run per shard, under way (their first steps run by hand): one read of a worker with
    // one place returns a continuation from each. (A worker never reads more new runs than it
    // has places.)
    let mut shards = HashSet::new();
    let mut runs = Vec::new();
    while shards.len() < usize::from(keys.shards()) {
        let run = env.start_run(&plan, json!({})).await?;
        shards.insert(keys.shard_of(run));
        runs.push(run);
    }
    assert_eq!(
        first_steps_by_hand(&env, None, 10_000).await?.len(),
        runs.len()
    );
    let opts = |consumer: &str, concurrency| WorkerOpts {
        concurrency,
        claim_idle: Duration::from_millis(300),
        consumer: Some(consumer.to_owned()),
        scheduler: false,
        ..WorkerOpts::default()
    };
    let _narrow = env.worker(opts("narrow", 1)).await?;
    wait_for(
        "the narrow worker to read more jobs than it has places",
        T,
        || async { Ok((held_by(&env, "narrow").await? > 1).then_some(())) },
    )
    .await?;
    // Another worker, looking for jobs to take over, must find none of those.
    let _wide = env.worker(opts("wide", 8)).await?;
    for run in &runs {
        let status = env.wait_end(*run, T).await?;
        assert!(matches!(status, RunStatus::Completed { .. }), "{status:?}");
    }
    let ledger = env.ledger().await?;
    assert_eq!(
        ledger.executions.len(),
        runs.len(),
        "every job ran once: {ledger:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_a_job_twice_dead_letters_it_once() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let plan = plan("name: s\nsteps:\n  - {id: a, op: noop}\n");
    let run = env.start_run(&plan, json!({})).await?;
    let keys = env.store.keys();
    // A run's first job is in the new-runs stream.
    let stream = keys.new_steps(keys.shard_of(run));
    // Take the job as a consumer that then dies.
    let entry = env
        .read_as("ghost", &stream, 1)
        .await?
        .into_iter()
        .next()
        .context("the job")?;
    let job_json: String = entry.get("j").context("j")?;
    let job: Job = serde_json::from_str(&job_json)?;
    let ack = Ack {
        entry: entry.id.clone(),
        lane: Lane::New,
        step: job.step.clone(),
        seq: job.seq,
    };
    let event = Event::StepFailed {
        step: job.step.clone(),
        seq: job.seq,
        error: StepFailure {
            kind: FailureKind::Poison,
            message: "test".into(),
            code: None,
            retry_after: None,
        },
    };
    // Two workers park it (both took it over): one dead letter, one failure.
    env.store.park(run, &event, &ack, &job_json).await?;
    env.store.park(run, &event, &ack, &job_json).await?;
    assert_eq!(xlen(&env, &keys.dead(keys.shard_of(run))).await?, 1);
    let snap = env.store.load(run).await?.context("run")?;
    assert!(
        matches!(&snap.doc.state.steps["a"].state, StepState::Failed { error, .. } if error.kind == FailureKind::Poison),
        "{:?}",
        snap.doc.state.steps["a"].state
    );
    assert_eq!(xlen(&env, &stream).await?, 0, "the job left the queue");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_entries_are_left_to_others_then_dead_lettered_and_bad_copies_are_reread()
-> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let keys = env.store.keys();
    let plan = plan("name: s\nsteps:\n  - {id: a, op: ledger, with: {key: a}}\n");

    // A job whose copy of the run document is damaged: the worker reads the run instead.
    let run = env.start_run(&plan, json!({})).await?;
    let stream = keys.new_steps(keys.shard_of(run));
    let entries: redis::streams::StreamRangeReply = env
        .store
        .db()
        .query(redis::cmd("XRANGE").arg(&stream).arg("-").arg("+"))
        .await?;
    let entry = entries.ids[0].clone();
    let field = |name: &str| -> Result<String> { entry.get(name).context(name.to_owned()) };
    let damaged: String = env
        .store
        .db()
        .query(
            redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("r")
                .arg(field("r")?)
                .arg("v")
                .arg(field("v")?)
                .arg("j")
                .arg(field("j")?)
                .arg("d")
                .arg("{not a document")
                .arg("c")
                .arg(field("c")?),
        )
        .await?;
    env.store
        .db()
        .query::<()>(redis::cmd("XDEL").arg(&stream).arg(&entry.id))
        .await?;
    assert_ne!(damaged, entry.id);
    // The run records where its job is queued (workers check it before running the op).
    let fields: std::collections::HashMap<String, String> = env
        .store
        .db()
        .query(redis::cmd("HGETALL").arg(keys.run(run)))
        .await?;
    let (at, _) = fields
        .iter()
        .find(|(_, v)| **v == job_ref(Lane::New, &entry.id))
        .context("the run's record of its queued job")?;
    env.store
        .db()
        .query::<()>(
            redis::cmd("HSET")
                .arg(keys.run(run))
                .arg(at)
                .arg(job_ref(Lane::New, &damaged)),
        )
        .await?;

    // An entry no version of Steward wrote.
    let garbage_run = env.start_run(&plan, json!({})).await?;
    // (In the continuations' stream: a worker reads both.)
    let garbage_stream = keys.steps(keys.shard_of(garbage_run));
    env.store
        .db()
        .query::<String>(
            redis::cmd("XADD")
                .arg(&garbage_stream)
                .arg("*")
                .arg("r")
                .arg(garbage_run.to_string())
                .arg("j")
                .arg("{\"from\": \"the future\"}"),
        )
        .await?;

    let _worker = env
        .worker(WorkerOpts {
            claim_idle: Duration::from_millis(200),
            max_deliveries: 2,
            ..WorkerOpts::default()
        })
        .await?;
    assert!(matches!(
        env.wait_end(run, T).await?,
        RunStatus::Completed { .. }
    ));
    let dead = keys.dead(keys.shard_of(garbage_run));
    wait_for("the unreadable entry to be dead-lettered", T, || async {
        Ok((xlen(&env, &dead).await? == 1).then_some(()))
    })
    .await?;
    let parked: redis::streams::StreamRangeReply = env
        .store
        .db()
        .query(redis::cmd("XRANGE").arg(&dead).arg("-").arg("+"))
        .await?;
    let raw: String = parked.ids[0].get("raw").context("raw")?;
    assert!(raw.contains("the future"), "kept as it was: {raw}");
    // Nothing of it is left pending, and the other jobs ran.
    let pending: Vec<(String, String, u64, u64)> = env
        .store
        .db()
        .query(
            redis::cmd("XPENDING")
                .arg(&garbage_stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(10),
        )
        .await?;
    assert!(pending.is_empty(), "{pending:?}");
    assert!(matches!(
        env.wait_end(garbage_run, T).await?,
        RunStatus::Completed { .. }
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_whose_run_is_broken_is_deferred_not_dropped() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let keys = env.store.keys();
    let plan = plan("name: s\nsteps:\n  - {id: a, op: noop}\n");
    let now = env.store.clock().now();
    let run = env
        .store
        .create_run(NewRun {
            plan: plan.clone(),
            company: "contoso".parse()?,
            company_settings: Default::default(),
            inputs: Default::default(),
            requested_by: "t".into(),
            start_at: Some(now.plus(Duration::from_millis(50))),
            ticket: None,
        })
        .await?;
    // The run's workflow definition is lost; a fresh process has no copy of it.
    env.store
        .db()
        .query::<()>(redis::cmd("DEL").arg(keys.definition(plan.hash())))
        .await?;
    let store = env.store().await?;
    let timers = keys.timers(keys.shard_of(run));
    let config = SchedulerConfig {
        tick: Duration::from_millis(20),
        batch: 100,
        concurrency: 4,
    };
    let round = wait_for("the timer to be due", T, || async {
        let r = scheduler::round(&store, &config).await?;
        Ok((r.due > 0).then_some(r))
    })
    .await?;
    assert_eq!(round, Round { due: 1, fired: 1 });
    let members: Vec<(String, f64)> = env
        .store
        .db()
        .query(
            redis::cmd("ZRANGE")
                .arg(&timers)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await?;
    assert_eq!(members.len(), 1, "the timer is kept: {members:?}");
    let later = store.clock().now().as_millis() as f64 + 30_000.0;
    assert!(members[0].1 > later, "and moved on: {members:?}");
    // Nothing is due now: the scheduler does not spin on it.
    assert_eq!(
        scheduler::round(&store, &config).await?,
        Round { due: 0, fired: 0 }
    );
    Ok(())
}

/// Runs queued first steps of new runs by hand (as a worker would, reporting success): up to
/// `count` of each shard's (of `only` if given), oldest first; the runs.
async fn first_steps_by_hand(env: &Env, only: Option<u16>, count: usize) -> Result<Vec<RunId>> {
    let keys = env.store.keys();
    let mut done_runs = Vec::new();
    for shard in keys.all_shards().filter(|s| only.is_none_or(|o| o == *s)) {
        let entries = env
            .read_as("by-hand", &keys.new_steps(shard), count)
            .await?;
        for entry in entries {
            let run: RunId = entry.get::<String>("r").context("r")?.parse()?;
            let job: Job = serde_json::from_str(&entry.get::<String>("j").context("j")?)?;
            let ack = Ack {
                entry: entry.id.clone(),
                lane: Lane::New,
                step: job.step.clone(),
                seq: job.seq,
            };
            let done = Event::StepSucceeded {
                step: job.step.clone(),
                seq: job.seq,
                output: json!({}),
                rollback: steward_schemas::Rollback::Nothing,
            };
            let outcome = env.store.apply(run, &done, None, Some(&ack), None).await?;
            assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
            done_runs.push(run);
        }
    }
    Ok(done_runs)
}

/// When each of `runs` completed (waiting for them).
async fn ended_at(env: &Env, runs: &[RunId]) -> Result<Vec<Timestamp>> {
    let mut at = Vec::new();
    for run in runs {
        match env.wait_end(*run, Duration::from_secs(60)).await? {
            RunStatus::Completed { at: t, .. } => at.push(t),
            other => anyhow::bail!("{run}: {other:?}"),
        }
    }
    Ok(at)
}

/// When a step of `run` succeeded.
async fn succeeded_at(env: &Env, run: RunId, step: &str) -> Result<Timestamp> {
    let snap = env.store.load(run).await?.context("the run")?;
    match &snap.doc.state.steps[step].state {
        StepState::Succeeded { at, .. } => Ok(*at),
        other => anyhow::bail!("{run} {step}: {other:?}"),
    }
}

/// Issue 12 item 4: a step of a run already under way is dispatched before the queued first
/// steps of new runs (it used to wait behind all of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuing_step_is_dispatched_before_queued_first_steps_of_new_runs() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let keys = env.store.keys();
    let plan = plan("name: s\nsteps:\n  - {id: a, op: noop}\n  - {id: b, op: noop, needs: [a]}\n");
    let early = env.start_run(&plan, json!({})).await?;
    let mut burst = Vec::new();
    for _ in 0..199 {
        burst.push(env.start_run(&plan, json!({})).await?);
    }
    // The first run's first step runs (by hand, as a worker would) while no worker is up: its
    // second step is queued after the 199 other runs' first steps.
    assert_eq!(
        first_steps_by_hand(&env, Some(keys.shard_of(early)), 1).await?,
        vec![early]
    );
    // The queue as it is: one continuation, 199 first steps.
    let mut continuing = 0;
    let mut new = 0;
    for shard in keys.all_shards() {
        continuing += xlen(&env, &keys.steps(shard)).await?;
        new += xlen(&env, &keys.new_steps(shard)).await?;
    }
    assert_eq!((continuing, new), (1, 199));

    // One place: jobs run one after another, in the order the worker takes them.
    let _worker = env
        .worker(WorkerOpts {
            concurrency: 1,
            ..WorkerOpts::default()
        })
        .await?;
    for run in burst.iter().chain([&early]) {
        assert!(matches!(
            env.wait_end(*run, T).await?,
            RunStatus::Completed { .. }
        ));
    }
    let second = succeeded_at(&env, early, "b").await?;
    let mut before = 0;
    for run in &burst {
        if succeeded_at(&env, *run, "a").await? < second {
            before += 1;
        }
    }
    assert_eq!(
        before, 0,
        "the continuation ran first, not behind {before} new runs' first steps"
    );
    Ok(())
}

/// Issue 12 item 4: continuations go first, but not always: new runs still start while runs
/// under way keep queueing their next steps (they get their share of the places).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_runs_start_while_continuations_keep_coming() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let mut yaml = "name: long\nsteps:\n  - {id: s0, op: noop}\n".to_owned();
    for i in 1..60 {
        yaml.push_str(&format!(
            "  - {{id: s{i}, op: noop, needs: [s{}]}}\n",
            i - 1
        ));
    }
    let long = plan(&yaml);
    let short = plan("name: short\nsteps:\n  - {id: a, op: noop}\n");
    let _worker = env
        .worker(WorkerOpts {
            concurrency: 1,
            ..WorkerOpts::default()
        })
        .await?;
    let mut longs = Vec::new();
    for _ in 0..8 {
        longs.push(env.start_run(&long, json!({})).await?);
    }
    // Once the long runs are under way, there is always a continuation queued until they end
    // (8 × 60 steps, one place).
    let store = &env.store;
    let first = longs[0];
    wait_for("the long runs to be under way", T, || async move {
        let snap = store.load(first).await?.context("the run")?;
        Ok(matches!(
            snap.doc.state.steps["s2"].state,
            StepState::Succeeded { .. }
        )
        .then_some(()))
    })
    .await?;
    let mut shorts = Vec::new();
    for _ in 0..8 {
        shorts.push(env.start_run(&short, json!({})).await?);
    }
    let long_ends = ended_at(&env, &longs).await?;
    let short_ends = ended_at(&env, &shorts).await?;
    let last_short = short_ends.iter().max().context("short runs")?;
    let first_long = long_ends.iter().min().context("long runs")?;
    assert!(
        last_short < first_long,
        "every new run ended before the first long run: {last_short:?} vs {first_long:?}"
    );
    Ok(())
}
