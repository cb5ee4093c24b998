//! The scheduler: fires due durable timers from each shard's timer index.
//!
//! One pipelined read per tick covers every shard, however many runs are parked: nothing polls
//! per run. Several schedulers may run; a timer fires once because the transition script disarms
//! it atomically (`ZREM` must succeed) when it commits the `timer_fired` event.

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

/// Runs until `shutdown` completes.
pub async fn run(store: Store, config: SchedulerConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut wait = Duration::ZERO;
    loop {
        let fired = tokio::select! {
            () = &mut shutdown => return,
            n = round(&store, &config) => n,
        };
        match fired {
            Ok(0) => wait = config.tick,
            Ok(n) => {
                debug!(timers = n, "timers fired");
                wait = Duration::ZERO;
            }
            Err(e) => {
                wait = (wait * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
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

/// Fires every timer due now; returns how many.
pub async fn round(store: &Store, config: &SchedulerConfig) -> store::Result<usize> {
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
    futures::stream::iter(due)
        .for_each_concurrent(config.concurrency.max(1), |(shard, member)| {
            fire(store, shard, member)
        })
        .await;
    Ok(n)
}

async fn fire(store: &Store, shard: u16, member: String) {
    let parsed = member.split_once('|').and_then(|(run, key)| {
        Some((
            run.parse::<RunId>().ok()?,
            key.parse::<TimerKey>().ok()?,
            key,
        ))
    });
    let Some((run, timer, key)) = parsed else {
        error!(%member, "scheduler: malformed timer; removing it");
        let _ = store.remove_timer(shard, &member).await;
        return;
    };
    let event = Event::TimerFired { timer };
    match store.apply(run, &event, None, None, Some(key)).await {
        Ok(_) | Err(store::Error::NoSuchRun(_)) => {}
        Err(store::Error::Redis(e)) => {
            warn!(run.id = %run, error = %e, "scheduler: cannot fire a timer; will retry")
        }
        Err(e) => {
            error!(run.id = %run, error = %e, timer = %member, "scheduler: cannot fire a timer; removing it");
            let _ = store.remove_timer(shard, &member).await;
        }
    }
}
