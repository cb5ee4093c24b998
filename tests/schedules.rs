//! Durable schedules: fired through the scheduler's timer index, once per tick however many
//! schedulers look, a tick missed while nothing ran fired once, and firings run by a consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::Map;
use steward_engine::embedded::Persistence;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::schedules::{Runner, Schedule, Schedules, Target, WorkflowRun};
use steward_engine::store::Store;
use steward_engine::{Clock, Db, Keys};
use steward_schemas::Timestamp;
use steward_tests::{Env, wait_for};

/// A clock the test moves.
#[derive(Debug, Default)]
struct Manual(AtomicI64);

impl Clock for Manual {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

async fn store_with(env: &Env, clock: Arc<Manual>) -> Result<Store> {
    let db = Db::connect(&env.redis.url(), Duration::from_secs(5)).await?;
    let keys = Keys::new(&env.namespace, env.shards)?;
    let store = Store::new(db, keys, clock);
    store.prepare().await?;
    Ok(store)
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        tick: Duration::from_millis(10),
        batch: 100,
        concurrency: 4,
    }
}

fn schedule(id: &str, cron: &str, target: Target) -> Schedule {
    Schedule {
        id: id.to_owned(),
        cron: cron.to_owned(),
        time_zone: "UTC".to_owned(),
        target,
        created_by: "test".to_owned(),
        created_at: Timestamp::from_millis(0),
    }
}

async fn firings(store: &Store, s: &Schedules) -> Result<u64> {
    Ok(store
        .db()
        .query(redis::cmd("XLEN").arg(s.firings_key()))
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_fires_once_across_schedulers_and_missed_ticks_fire_once() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let clock = Arc::new(Manual::default());
    // 2026-12-06T10:00:00Z.
    let t0 = 1_796_551_200_000;
    clock.0.store(t0, Ordering::SeqCst);
    let a = store_with(&env, clock.clone()).await?;
    let b = store_with(&env, clock.clone()).await?;
    let s = Schedules::new(a.clone());
    let view = s
        .add(schedule("hourly", "0 * * * *", Target::TokenRefresh))
        .await?;
    assert_eq!(
        view.next_tick.map(|t| t.to_string()).as_deref(),
        Some("2026-12-06T11:00:00.000000Z")
    );
    let err = s
        .add(schedule("hourly", "0 * * * *", Target::TokenRefresh))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");

    // Not due yet: nothing fires.
    scheduler::round(&a, &config()).await?;
    assert_eq!(firings(&a, &s).await?, 0);

    // Due: two schedulers race on the same tick; one firing.
    clock.0.store(t0 + 3_600_000, Ordering::SeqCst);
    let cfg = config();
    let (ra, rb) = tokio::join!(scheduler::round(&a, &cfg), scheduler::round(&b, &cfg));
    let _ = (ra?, rb?);
    assert_eq!(firings(&a, &s).await?, 1);
    let view = s.get("hourly").await?.expect("schedule");
    assert_eq!(
        view.last_fired.map(|t| t.to_string()).as_deref(),
        Some("2026-12-06T11:00:00.000000Z")
    );
    assert_eq!(
        view.next_tick.map(|t| t.to_string()).as_deref(),
        Some("2026-12-06T12:00:00.000000Z")
    );

    // Everything down for ten hours: the missed ticks fire once, then the cadence resumes.
    clock
        .0
        .store(t0 + 11 * 3_600_000 + 60_000, Ordering::SeqCst);
    scheduler::round(&a, &config()).await?;
    scheduler::round(&b, &config()).await?;
    assert_eq!(firings(&a, &s).await?, 2);
    let view = s.get("hourly").await?.expect("schedule");
    assert_eq!(
        view.next_tick.map(|t| t.to_string()).as_deref(),
        Some("2026-12-06T22:00:00.000000Z")
    );

    // Removed: its timer goes with it.
    assert!(s.remove("hourly").await?);
    clock.0.store(t0 + 24 * 3_600_000, Ordering::SeqCst);
    scheduler::round(&a, &config()).await?;
    assert_eq!(firings(&a, &s).await?, 2);
    assert!(s.get("hourly").await?.is_none());
    Ok(())
}

/// Counts the firings it runs; fails the first `fail` of them.
#[derive(Debug, Default)]
struct Counting {
    runs: AtomicUsize,
    fail: AtomicUsize,
}

impl Runner for Counting {
    fn run<'a>(
        &'a self,
        _schedule: &'a Schedule,
        _firing: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
            {
                return Err("a failure the test asked for".to_owned());
            }
            self.runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firings_are_run_by_a_consumer_and_a_failed_one_is_run_again() -> Result<()> {
    let env = Env::start(Persistence::None).await?;
    let store = env.store().await?;
    let s = Schedules::new(store.clone());
    s.add(schedule(
        "nightly",
        "0 3 * * *",
        Target::Workflow {
            workflow: "w".to_owned(),
            runs: vec![WorkflowRun {
                company: "contoso".parse()?,
                inputs: Map::new(),
            }],
        },
    ))
    .await?;
    let bad = s
        .add(schedule("bad", "0 3 * *", Target::TokenRefresh))
        .await
        .unwrap_err();
    assert!(bad.to_string().starts_with("cron:"), "{bad}");
    let runner = Arc::new(Counting::default());
    runner.fail.store(1, Ordering::SeqCst);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let task = tokio::spawn(steward_engine::schedules::run_firings(
        s.clone(),
        runner.clone(),
        "consumer-1".to_owned(),
        until(rx.clone()),
    ));
    s.run_now("nightly", "admin@msp.example").await?;
    assert!(s.run_now("nope", "admin@msp.example").await.is_err());
    // The first run fails: the firing stays pending, unacknowledged.
    wait_for("the failed firing", Duration::from_secs(10), || async {
        Ok((runner.fail.load(Ordering::SeqCst) == 0).then_some(()))
    })
    .await?;
    assert_eq!(runner.runs.load(Ordering::SeqCst), 0);
    // A pending firing is read again by XAUTOCLAIM after its idle time; make it idle.
    let pending: redis::Value = store
        .db()
        .query(redis::cmd("XPENDING").arg(s.firings_key()).arg("serve"))
        .await?;
    assert!(format!("{pending:?}").contains("consumer-1"), "{pending:?}");
    let _ = stop.send(true);
    let _ = task.await;
    // The consumer died with it pending: once idle for a minute, another consumer takes it
    // over (the test makes it look an hour idle rather than wait).
    let entries: Vec<redis::Value> = store
        .db()
        .query(redis::cmd("XRANGE").arg(s.firings_key()).arg("-").arg("+"))
        .await?;
    let id = match &entries[0] {
        redis::Value::Array(parts) => match &parts[0] {
            redis::Value::BulkString(b) => String::from_utf8(b.clone())?,
            other => anyhow::bail!("{other:?}"),
        },
        other => anyhow::bail!("{other:?}"),
    };
    store
        .db()
        .query::<redis::Value>(
            redis::cmd("XCLAIM")
                .arg(s.firings_key())
                .arg("serve")
                .arg("consumer-1")
                .arg(0)
                .arg(&id)
                .arg("IDLE")
                .arg(3_600_000),
        )
        .await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(steward_engine::schedules::run_firings(
        s.clone(),
        runner.clone(),
        "consumer-2".to_owned(),
        until(rx),
    ));
    wait_for(
        "the firing to be run again",
        Duration::from_secs(10),
        || async { Ok((runner.runs.load(Ordering::SeqCst) == 1).then_some(())) },
    )
    .await?;
    let _ = stop.send(true);
    let _ = task.await;
    Ok(())
}
