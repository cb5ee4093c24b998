//! Housekeeping, beside every scheduler: what would otherwise grow forever.
//!
//! - **Dead consumers.** Every worker start reads under a new consumer name (`host-pid-ulid`), so
//!   each stopped worker leaves a consumer in every shard's group. One idle longer than
//!   `consumer_idle` whose pending list is empty is removed (`XGROUP DELCONSUMER`, in a script
//!   that checks the pending list in the same step, so a job delivered to it meanwhile is never
//!   dropped). A live worker's consumer that happens to be removed is made again by its next
//!   read. One that still holds jobs is left: the reclaimer takes them over first.
//! - **Retention.** Runs that ended `completed`, `cancelled` or `rolled_back` longer than
//!   `retention` ago are deleted with their history and index entries (a script that checks the
//!   run did not change since it was judged). Runs that ended `rollback_failed` are kept: they
//!   wait for a technician. The ended-runs and dead-letter streams are capped where they are
//!   written (`MAXLEN ~`).
//!
//! Each round reads at most `batch` candidates per shard and status, oldest first.

use std::collections::HashMap;
use std::time::Duration;

use redis::Script;
use steward_schemas::{RunId, Timestamp};
use tracing::{debug, info, warn};

use crate::keys::{GROUP, Lane};
use crate::store::{self, Store, decode_run};

const FORGET_RUN: &str = include_str!("../lua/forget_run.lua");
const FORGET_CONSUMER: &str = include_str!("../lua/forget_consumer.lua");

/// The statuses of runs retention deletes (`rollback_failed` waits for a technician).
const FORGOTTEN: [&str; 3] = ["completed", "cancelled", "rolled_back"];

/// What housekeeping keeps.
#[derive(Debug, Clone)]
pub struct HousekeepingConfig {
    /// How often a round runs.
    pub every: Duration,
    /// How long after it ended a run is deleted; `None`: kept forever.
    pub retention: Option<Duration>,
    /// How long a consumer without jobs must have been idle to be removed.
    pub consumer_idle: Duration,
    /// How many runs per shard and status one round looks at.
    pub batch: usize,
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(600),
            retention: Some(Duration::from_secs(90 * 86_400)),
            consumer_idle: Duration::from_secs(3600),
            batch: 500,
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Consumers removed (once per step stream each was in).
    pub consumers: usize,
    /// Ended runs deleted.
    pub runs: usize,
}

/// One round: dead consumers, then ended runs past retention.
pub async fn round(store: &Store, config: &HousekeepingConfig) -> store::Result<Swept> {
    let consumers = forget_consumers(store, config.consumer_idle).await?;
    let runs = match config.retention {
        Some(retention) => forget_runs(store, retention, config.batch.max(1)).await?,
        None => 0,
    };
    Ok(Swept { consumers, runs })
}

/// Runs housekeeping until `shutdown` completes.
pub async fn run(store: Store, config: HousekeepingConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        match round(&store, &config).await {
            Ok(s) if s.consumers + s.runs > 0 => info!(
                consumers = s.consumers,
                runs = s.runs,
                "housekeeping: removed dead consumers and ended runs past retention"
            ),
            Ok(_) => debug!("housekeeping: nothing to remove"),
            Err(e) => warn!(error = %e, "housekeeping: round failed; will try again"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(config.every) => {}
        }
    }
}

/// Removes consumers idle longer than `idle` that hold no job.
async fn forget_consumers(store: &Store, idle: Duration) -> store::Result<usize> {
    let keys = store.keys();
    let streams: Vec<(u16, String)> = keys
        .all_shards()
        .flat_map(|s| Lane::ALL.map(|l| (s, keys.stream(s, l))))
        .collect();
    let mut pipe = redis::pipe();
    for (_, stream) in &streams {
        pipe.cmd("XINFO").arg("CONSUMERS").arg(stream).arg(GROUP);
    }
    // A shard whose group does not exist yet answers an error: nothing to remove there.
    let replies: Vec<redis::Value> = match store.db().pipe(&pipe).await {
        Ok(r) => r,
        Err(e) if e.code() == Some("NOGROUP") => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let script = Script::new(FORGET_CONSUMER);
    let mut removed = 0;
    for ((shard, stream), reply) in streams.iter().zip(replies) {
        let consumers: Vec<HashMap<String, redis::Value>> =
            redis::from_redis_value(reply).unwrap_or_default();
        for c in consumers {
            let field = |name: &str| c.get(name);
            let name: Option<String> =
                field("name").and_then(|v| redis::from_redis_value_ref(v).ok());
            let pending: u64 = field("pending")
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or(1);
            let idle: u64 = field("idle")
                .and_then(|v| redis::from_redis_value_ref(v).ok())
                .unwrap_or(0);
            let Some(name) = name else { continue };
            if pending > 0 || idle < idle_ms {
                continue;
            }
            let mut inv = script.prepare_invoke();
            inv.key(stream).arg(GROUP).arg(&name);
            if store.db().script::<u8>(&inv).await? == 1 {
                debug!(consumer = %name, shard, "housekeeping: removed a consumer that holds no job");
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Deletes runs that ended (completed, cancelled, rolled back) longer than `retention` ago.
async fn forget_runs(store: &Store, retention: Duration, batch: usize) -> store::Result<usize> {
    let keys = store.keys();
    let now = store.clock().now();
    let cutoff = Timestamp::from_micros(
        now.as_micros()
            .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
    );
    // Candidates: created before the cutoff (a run ends after it is created), oldest first.
    let mut pipe = redis::pipe();
    let mut lists = Vec::new();
    for shard in keys.all_shards() {
        for status in FORGOTTEN {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(keys.runs_in_status(shard, status))
                .arg("-inf")
                .arg(cutoff.as_micros())
                .arg("LIMIT")
                .arg(0)
                .arg(batch);
            lists.push((shard, status));
        }
    }
    let found: Vec<Vec<String>> = store.db().pipe(&pipe).await?;
    let candidates: Vec<(u16, &str, RunId)> = lists
        .into_iter()
        .zip(found)
        .flat_map(|((shard, status), runs)| {
            runs.into_iter()
                .filter_map(move |r| Some((shard, status, r.parse::<RunId>().ok()?)))
        })
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for (_, _, run) in &candidates {
        pipe.cmd("HGETALL").arg(keys.run(*run));
    }
    let docs: Vec<HashMap<String, String>> = store.db().pipe(&pipe).await?;
    let script = Script::new(FORGET_RUN);
    let mut removed = 0;
    for ((shard, status, run), fields) in candidates.into_iter().zip(docs) {
        if fields.is_empty() {
            // Only the index entry is left (a run deleted by hand): drop it.
            store
                .db()
                .query::<()>(
                    redis::cmd("ZREM")
                        .arg(keys.runs_in_status(shard, status))
                        .arg(run.to_string()),
                )
                .await?;
            continue;
        }
        let (v, doc) = match decode_run(fields) {
            Ok(Some(snap)) => (snap.version.to_string(), snap.doc),
            Ok(None) => continue,
            Err(e) => {
                warn!(run.id = %run, error = %e, "housekeeping: the run's document does not parse; keeping it");
                continue;
            }
        };
        if doc.state.status.name() != status || doc.state.updated_at > cutoff {
            continue;
        }
        let mut inv = script.prepare_invoke();
        inv.key(keys.run(run))
            .key(keys.log(run))
            .key(keys.runs(shard))
            .key(keys.runs_in_status(shard, status))
            .key(keys.runs_of_company(shard, &doc.ctx.company))
            .key(keys.history(run))
            .arg(run.to_string())
            .arg(&v);
        if store.db().script::<u8>(&inv).await? == 1 {
            removed += 1;
        }
    }
    Ok(removed)
}
