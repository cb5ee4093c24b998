//! The watchdog: finds runs that are `running` but that nothing will move (no queued or
//! delivered job, no armed timer, no open gate), whatever the cause (a job acknowledged without
//! its transition, a timer removed, a bug), repairs what it can through the normal fenced path
//! and pauses the rest with a reason a technician can act on.
//!
//! It runs beside the timer loop of every scheduler ([`crate::scheduler::run`]). Cheaply: each
//! round reads at most `batch` runs of each shard's `running` index (a cursor per shard, so the
//! whole index is covered over successive rounds), with two pipelined round trips: the runs'
//! documents and queued-job fields, then the stream entries and timers their steps wait on. A run
//! that looks stuck is only a suspect: it is acted on if it still looks stuck, at the same
//! version (nothing committed in between), after `stuck_after`. Repairs are transitions like any
//! other, fenced on the step's sequence number, so several schedulers repairing the same run
//! change it once:
//! - a step `queued` whose job is gone from the stream: `jobs_revoked` for it, which dispatches
//!   the attempt again under a new sequence number (a late outcome of the lost job is fenced out);
//! - a step `retrying` or `polling` whose timer is gone: the timer fires now;
//! - anything else (steps `ready` in a running run, nothing in flight at all): the run is paused
//!   with a reason; resuming it dispatches what is ready.
//!
//! `steward_stuck_runs_total{action}` counts what it did.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_schemas::{
    Event, JobRef, Phase, RunDoc, RunId, RunStatus, StepId, StepState, TimerKey, TimerKind,
};
use tracing::{debug, error, warn};

use crate::store::{self, Outcome, Store, decode_run};

/// How the watchdog runs.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// How often a round runs.
    pub every: Duration,
    /// How long a run must look stuck, unchanged, before it is repaired or paused.
    pub stuck_after: Duration,
    /// How many running runs of each shard one round reads.
    pub batch: usize,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(10),
            stuck_after: Duration::from_secs(60),
            batch: 200,
        }
    }
}

/// What would move a stuck run.
#[derive(Debug, Clone, PartialEq)]
enum Repair {
    /// Dispatch the step's attempt again (its job is lost).
    Requeue(JobRef),
    /// Fire the step's lost timer now.
    Fire(TimerKey),
}

/// A run that nothing will move.
#[derive(Debug, Clone, PartialEq)]
struct Stuck {
    version: u64,
    repairs: Vec<Repair>,
}

/// What a round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    /// Runs read.
    pub checked: usize,
    /// Runs that look stuck and wait for `stuck_after` to pass.
    pub suspects: usize,
    /// Runs repaired (a job dispatched again or a timer fired).
    pub repaired: usize,
    /// Runs paused with a reason.
    pub paused: usize,
}

/// The watchdog's memory between rounds.
#[derive(Debug, Default)]
pub struct Watchdog {
    config: WatchdogConfig,
    cursors: HashMap<u16, usize>,
    suspects: HashMap<RunId, (u64, Instant)>,
}

impl Watchdog {
    /// A watchdog with `config`.
    pub fn new(config: WatchdogConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// One round: the suspects again, then the next batch of each shard's running runs.
    pub async fn round(&mut self, store: &Store) -> store::Result<Found> {
        let keys = store.keys();
        let mut runs: Vec<RunId> = self.suspects.keys().copied().collect();
        let mut pipe = redis::pipe();
        let shards: Vec<u16> = keys.all_shards().collect();
        for shard in &shards {
            let from = self.cursors.get(shard).copied().unwrap_or(0);
            pipe.cmd("ZRANGE")
                .arg(keys.runs_in_status(*shard, "running"))
                .arg(from)
                .arg(from + self.config.batch.max(1) - 1);
        }
        let pages: Vec<Vec<String>> = store.db().pipe(&pipe).await?;
        for (shard, page) in shards.iter().zip(pages) {
            let from = self.cursors.get(shard).copied().unwrap_or(0);
            // A short page is the end of the index: start again next round.
            let next = if page.len() < self.config.batch.max(1) {
                0
            } else {
                from + page.len()
            };
            self.cursors.insert(*shard, next);
            runs.extend(page.iter().filter_map(|r| r.parse::<RunId>().ok()));
        }
        runs.sort();
        runs.dedup();
        let mut found = Found {
            checked: runs.len(),
            ..Found::default()
        };
        let stuck = diagnose(store, &runs).await?;
        let now = Instant::now();
        self.suspects.retain(|run, _| stuck.contains_key(run));
        for (run, s) in stuck {
            let since = match self.suspects.get(&run) {
                Some((version, since)) if *version == s.version => *since,
                _ => {
                    self.suspects.insert(run, (s.version, now));
                    now
                }
            };
            if now.duration_since(since) < self.config.stuck_after {
                found.suspects += 1;
                continue;
            }
            self.suspects.remove(&run);
            match repair(store, run, &s).await {
                Ok(true) => found.repaired += 1,
                Ok(false) => found.paused += 1,
                Err(e) => {
                    warn!(run.id = %run, error = %e, "watchdog: cannot repair a stuck run; will look again")
                }
            }
        }
        Ok(found)
    }
}

/// Runs the watchdog until `shutdown` completes.
pub async fn run(store: Store, config: WatchdogConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let every = config.every;
    let mut dog = Watchdog::new(config);
    loop {
        match dog.round(&store).await {
            Ok(f) if f.repaired + f.paused > 0 => {
                warn!(
                    repaired = f.repaired,
                    paused = f.paused,
                    "watchdog: found runs that nothing would move"
                );
            }
            Ok(f) => debug!(checked = f.checked, suspects = f.suspects, "watchdog round"),
            Err(e) => warn!(error = %e, "watchdog: cannot read runs"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// The runs of `runs` that are running and that nothing will move, with what would move them.
async fn diagnose(store: &Store, runs: &[RunId]) -> store::Result<HashMap<RunId, Stuck>> {
    let keys = store.keys();
    if runs.is_empty() {
        return Ok(HashMap::new());
    }
    let mut pipe = redis::pipe();
    for run in runs {
        pipe.cmd("HGETALL").arg(keys.run(*run));
    }
    let replies: Vec<HashMap<String, String>> = store.db().pipe(&pipe).await?;
    // What each run's steps wait on: (run, version, doc, queued jobs' entry fields).
    let mut docs: Vec<(RunId, u64, RunDoc)> = Vec::new();
    let mut checks = redis::pipe();
    let mut wanted: Vec<(usize, Want)> = Vec::new();
    for (run, fields) in runs.iter().zip(replies) {
        let queued: Vec<String> = fields
            .keys()
            .filter(|f| f.starts_with("j:"))
            .cloned()
            .collect();
        let (version, doc) = match decode_run(fields) {
            Ok(Some(snap)) => (snap.version, snap.doc),
            Ok(None) => continue,
            Err(e) => {
                error!(run.id = %run, error = %e, "watchdog: the run's document does not parse; leaving it");
                continue;
            }
        };
        if !matches!(doc.state.status, RunStatus::Running) {
            continue;
        }
        let i = docs.len();
        for (step, rec) in &doc.state.steps {
            match &rec.state {
                StepState::Queued { .. } => {
                    let field = format!("j:{step}:{}", rec.seq);
                    if queued.contains(&field) {
                        // Is the entry it names still in the stream?
                        checks.cmd("HGET").arg(keys.run(*run)).arg(&field);
                        wanted.push((i, Want::Field(step.clone(), rec.seq)));
                    } else {
                        checks.cmd("ECHO").arg("");
                        wanted.push((i, Want::Lost(step.clone(), rec.seq)));
                    }
                }
                StepState::Retrying { .. } | StepState::Polling { .. } => {
                    let kind = if matches!(rec.state, StepState::Retrying { .. }) {
                        TimerKind::Retry
                    } else {
                        TimerKind::Poll
                    };
                    let key = TimerKey::step(kind, step.clone(), rec.seq);
                    checks
                        .cmd("ZSCORE")
                        .arg(keys.timers(keys.shard_of(*run)))
                        .arg(format!("{run}|{key}"));
                    wanted.push((i, Want::Timer(key)));
                }
                _ => {}
            }
        }
        docs.push((*run, version, doc));
    }
    let answers: Vec<redis::Value> = if wanted.is_empty() {
        Vec::new()
    } else {
        store.db().pipe(&checks).await?
    };
    // Entries named by queued-job fields: are they in their streams?
    let mut entries = redis::pipe();
    let mut named: Vec<(usize, StepId, u32)> = Vec::new();
    let mut moving = vec![false; docs.len()];
    let mut repairs: Vec<Vec<Repair>> = vec![Vec::new(); docs.len()];
    for ((i, want), answer) in wanted.into_iter().zip(&answers) {
        let run = docs[i].0;
        match want {
            Want::Field(step, seq) => {
                let id: Option<String> = redis::from_redis_value_ref(answer).ok().flatten();
                match id {
                    Some(at) => {
                        let (lane, id) = crate::keys::parse_job_ref(&at);
                        entries
                            .cmd("XRANGE")
                            .arg(keys.stream(keys.shard_of(run), lane))
                            .arg(id)
                            .arg(id);
                        named.push((i, step, seq));
                    }
                    None => repairs[i].push(requeue(step, seq)),
                }
            }
            Want::Lost(step, seq) => repairs[i].push(requeue(step, seq)),
            Want::Timer(key) => {
                let armed: Option<f64> = redis::from_redis_value_ref(answer).ok().flatten();
                if armed.is_some() {
                    moving[i] = true;
                } else {
                    repairs[i].push(Repair::Fire(key));
                }
            }
        }
    }
    if !named.is_empty() {
        let found: Vec<redis::streams::StreamRangeReply> = store.db().pipe(&entries).await?;
        for ((i, step, seq), reply) in named.into_iter().zip(found) {
            if reply.ids.is_empty() {
                repairs[i].push(requeue(step, seq));
            } else {
                moving[i] = true;
            }
        }
    }
    let mut stuck = HashMap::new();
    for (i, (run, version, doc)) in docs.into_iter().enumerate() {
        let gate_open = doc
            .state
            .steps
            .values()
            .any(|r| matches!(r.state, StepState::AwaitingApproval { .. }));
        // Something lost is repaired even while other branches move; a run with nothing lost
        // and nothing in flight is stuck as a whole.
        if !repairs[i].is_empty() || !(moving[i] || gate_open) {
            stuck.insert(
                run,
                Stuck {
                    version,
                    repairs: std::mem::take(&mut repairs[i]),
                },
            );
        }
    }
    Ok(stuck)
}

enum Want {
    /// A queued step whose job field exists: read it.
    Field(StepId, u32),
    /// A queued step without a job field.
    Lost(StepId, u32),
    /// A step waiting on this timer.
    Timer(TimerKey),
}

fn requeue(step: StepId, seq: u32) -> Repair {
    Repair::Requeue(JobRef {
        step,
        seq,
        phase: Phase::Run,
    })
}

/// Repairs a stuck run (true) or pauses it with a reason (false).
async fn repair(store: &Store, run: RunId, stuck: &Stuck) -> store::Result<bool> {
    let metrics = store.metrics();
    let mut repaired = false;
    for r in &stuck.repairs {
        let (event, action, what) = match r {
            Repair::Requeue(job) => (
                Event::JobsRevoked {
                    jobs: vec![job.clone()],
                },
                "requeued",
                format!("step `{}`'s job was lost; dispatched it again", job.step),
            ),
            Repair::Fire(key) => (
                Event::TimerFired { timer: key.clone() },
                "timer_fired",
                format!("the timer `{key}` was lost; fired it now"),
            ),
        };
        match store.apply(run, &event, None, None, None).await? {
            Outcome::Applied { .. } => {
                warn!(run.id = %run, "watchdog: {what}");
                metrics.count("steward_stuck_runs_total", &[("action", action)]);
                repaired = true;
            }
            Outcome::Ignored { reason } => {
                debug!(run.id = %run, %reason, "watchdog: the run moved on; nothing to repair")
            }
            Outcome::Refused(e) => warn!(run.id = %run, error = %e, "watchdog: repair refused"),
        }
    }
    if repaired || !stuck.repairs.is_empty() {
        return Ok(true);
    }
    let reason = "paused by the watchdog: the run was running with no job queued or running, no timer armed and no gate open, so nothing would have moved it; check its steps (steward status RUN), then resume it to dispatch what is ready, or cancel it".to_owned();
    match store
        .apply(
            run,
            &Event::PauseRequested {
                by: "steward watchdog".to_owned(),
                reason: Some(reason),
            },
            None,
            None,
            None,
        )
        .await?
    {
        Outcome::Applied { .. } => {
            error!(run.id = %run, "watchdog: paused a run that nothing would move");
            metrics.count("steward_stuck_runs_total", &[("action", "paused")]);
        }
        other => debug!(run.id = %run, ?other, "watchdog: the run moved on"),
    }
    Ok(false)
}
