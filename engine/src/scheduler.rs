//! The scheduler: fires due durable timers from each shard's timer index.
//!
//! One pipelined read per tick covers every shard, however many runs are parked: nothing polls
//! per run. Several schedulers may run; a timer fires once because the transition script disarms
//! it atomically (`ZREM` must succeed) when it commits the `timer_fired` event.
//!
//! Wherever a scheduler runs (`steward serve`, `steward worker --with-scheduler`), the watchdog
//! ([`crate::watchdog`]) runs beside it.

use std::time::Duration;

use futures::StreamExt;
use steward_schemas::{Event, RunId, TimerKey};
use tracing::{debug, error, warn};

use crate::store::{self, Store};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How often it looks for due timers when none were due.
    pub tick: Duration,
    /// How many due timers it takes per shard per round.
    pub batch: usize,
    /// How many timers it fires at once.
    pub concurrency: usize,
}

/// How long a timer whose run cannot take it (corrupt data) waits before it is tried again.
pub const DEFER_BROKEN: Duration = Duration::from_secs(60);

/// Runs until `shutdown` completes.
pub async fn run(store: Store, config: SchedulerConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut wait = Duration::ZERO;
    loop {
        let round = tokio::select! {
            () = &mut shutdown => return,
            r = round(&store, &config) => r,
        };
        match round {
            Ok(Round { due: 0, .. }) => wait = config.tick,
            Ok(Round { due, fired }) if fired == due => {
                debug!(timers = fired, "timers fired");
                wait = Duration::ZERO;
            }
            Ok(Round { due, fired }) => {
                // Some could not be fired (Redis trouble, contention): back off rather than
                // spin on them; they stay due.
                wait = backoff(wait);
                warn!(due, fired, retry_in = ?wait, "scheduler: some timers could not be fired");
            }
            Err(e) => {
                wait = backoff(wait);
                warn!(error = %e, retry_in = ?wait, "scheduler: cannot read timers");
            }
        }
        if !wait.is_zero() {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

fn backoff(prev: Duration) -> Duration {
    (prev * 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

/// What a round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Timers that were due.
    pub due: usize,
    /// Timers dealt with: fired, found stale, or removed because they can never fire.
    pub fired: usize,
}

/// Fires every timer due now.
pub async fn round(store: &Store, config: &SchedulerConfig) -> store::Result<Round> {
    let keys = store.keys();
    let now_ms = store.clock().now().as_millis();
    let mut pipe = redis::pipe();
    for shard in keys.all_shards() {
        pipe.cmd("ZRANGEBYSCORE")
            .arg(keys.timers(shard))
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(config.batch);
    }
    let due: Vec<Vec<String>> = store.db().pipe(&pipe).await?;
    let due: Vec<(u16, String)> = keys
        .all_shards()
        .zip(due)
        .flat_map(|(shard, members)| members.into_iter().map(move |m| (shard, m)))
        .collect();
    let n = due.len();
    let fired = futures::stream::iter(due)
        .map(|(shard, member)| fire(store, shard, member))
        .buffer_unordered(config.concurrency.max(1))
        .filter(|done| std::future::ready(*done))
        .count()
        .await;
    Ok(Round { due: n, fired })
}

/// Fires one timer; whether it is dealt with (false: it stays due, to be tried again).
async fn fire(store: &Store, shard: u16, member: String) -> bool {
    if let Some(id) = member.strip_prefix(crate::schedules::TIMER_PREFIX) {
        return crate::schedules::Schedules::new(store.clone())
            .fire_timer(id)
            .await
            .unwrap_or_else(|e| {
                warn!(schedule = id, error = %e, "scheduler: cannot fire a schedule; will retry");
                false
            });
    }
    let parsed = member.split_once('|').and_then(|(run, key)| {
        Some((
            run.parse::<RunId>().ok()?,
            key.parse::<TimerKey>().ok()?,
            key,
        ))
    });
    let Some((run, timer, key)) = parsed else {
        error!(%member, "scheduler: malformed timer; removing it");
        return store.remove_timer(shard, &member).await.is_ok();
    };
    let event = Event::TimerFired { timer };
    match store.apply(run, &event, None, None, Some(key)).await {
        Ok(store::Outcome::Applied { .. }) => {
            store.metrics().count("steward_timers_fired_total", &[]);
            true
        }
        Ok(_) | Err(store::Error::NoSuchRun(_)) => true,
        Err(e @ (store::Error::Redis(_) | store::Error::Contention(_))) => {
            warn!(run.id = %run, error = %e, "scheduler: cannot fire a timer; will retry");
            false
        }
        Err(e) => {
            // The run's data is broken: keep the timer (a technician may repair the run) but
            // do not try it again every round.
            let at = store.clock().now().plus(DEFER_BROKEN);
            error!(run.id = %run, error = %e, timer = %member, retry_at = %at, "scheduler: cannot fire a timer; deferring it");
            let _ = store.defer_timer(shard, &member, at).await;
            true
        }
    }
}
