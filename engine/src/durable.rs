//! Group commit for `redis.durability = waitaof`.
//!
//! `WAITAOF 1 0 T` blocks the connection it is sent on until the server has fsynced its AOF up
//! to that connection's last write. Sent on the shared, multiplexed connection after each new
//! run, it held every other request of the process behind it for up to a second (the `everysec`
//! fsync), so run creation crawled at a few runs per second. Instead, a run's creator asks this
//! lane, after its commit has been answered; the lane, on a connection of its own, writes one
//! small marker (`INCR <ns>:durable`) and sends `WAITAOF 1 0 T` after it, answering every
//! request that arrived before that pair was sent. Replication offsets are global and grow
//! with every write, so the marker's offset is past every such commit, whichever connection
//! made it: one fsync confirms the whole batch.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::db::Db;

/// How long a new run waits for `WAITAOF`, ms.
pub(crate) const WAITAOF_TIMEOUT_MS: u64 = 5000;

type Reply = oneshot::Sender<Result<u64, String>>;

/// The lane: a task with its own connection, batching waits.
#[derive(Debug)]
pub(crate) struct Lane {
    tx: mpsc::UnboundedSender<Reply>,
}

impl Lane {
    /// Opens the lane's connection and starts its task; `marker` is the key it increments.
    pub(crate) async fn start(db: &Db, marker: String) -> redis::RedisResult<Self> {
        let mut conn = db
            .blocking(Duration::from_millis(WAITAOF_TIMEOUT_MS), Some(&marker))
            .await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut pipe = redis::pipe();
                pipe.cmd("INCR")
                    .arg(&marker)
                    .ignore()
                    .cmd("WAITAOF")
                    .arg(1)
                    .arg(0)
                    .arg(WAITAOF_TIMEOUT_MS);
                let answer: Result<u64, String> = conn
                    .pipe::<(Vec<u64>,)>(&pipe)
                    .await
                    .map(|(counts,)| counts.first().copied().unwrap_or(0))
                    .map_err(|e| e.to_string());
                for reply in batch {
                    let _ = reply.send(answer.clone());
                }
            }
        });
        Ok(Self { tx })
    }

    /// Waits until every write answered before this call is in the local AOF on disk; returns
    /// how many local AOFs confirmed it (1, or 0 when `WAITAOF` timed out).
    pub(crate) async fn wait(&self) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(reply)
            .map_err(|_| "the durability lane has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the durability lane has stopped".to_owned())?
    }
}

/// Redis releases whose `WAITAOF` can answer before the AOF is fsynced under `appendfsync
/// everysec`: from 7.4.0, when "update fsynced_reploff_pending even if there's nothing to
/// fsync" (redis/redis#12622) went in, until redis/redis#13793 (merged February 2025). Checked
/// here: 7.4.1 loses acknowledged runs in `tests/powerloss.rs`, and the same build with that
/// one condition fixed loses none. Not checked: which later 7.4 release carries the fix, so
/// 7.4.0 to 7.4.2 (January 2025) are refused and later ones are trusted.
pub(crate) fn waitaof_is_broken(version: &str) -> bool {
    let mut parts = version
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    major == 7 && minor == 4 && patch <= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_releases_with_the_early_waitaof_are_known() {
        for broken in ["7.4.0", "7.4.1", "7.4.2"] {
            assert!(waitaof_is_broken(broken), "{broken}");
        }
        for fine in ["7.2.4", "7.2.6", "7.4.3", "8.0.2", "8.2.1", "7.0.15"] {
            assert!(!waitaof_is_broken(fine), "{fine}");
        }
    }
}
