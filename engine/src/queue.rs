//! The step queue: Redis streams with consumer groups, plugged into apalis as a [`Backend`].
//!
//! Each shard has two streams: jobs of runs under way, and the first jobs of new runs
//! ([`Lane`]); every worker process reads all of them in one consumer group under a name unique
//! to the process start. Three background tasks feed the worker:
//! - the reader reads continuations first, then new runs (which get their share of the places,
//!   [`NEW_RUN_SHARE`]), blocking on `XREADGROUP … >` over both only when both are empty,
//!   fetching only as many as the worker has room for, so an idle worker picks a job up as soon as it is added (one reader over every
//!   shard on one server; on a Redis Cluster, which refuses a read over several slots, one per
//!   shard, each on a connection to the master that owns it);
//! - the reclaimer takes over jobs that another consumer has held for longer than `claim_idle`
//!   (`XAUTOCLAIM`: that consumer died), and parks a job delivered more than `max_deliveries` times
//!   (a job that kills its worker) in the dead-letter stream, failing its step. It has places of
//!   its own ([`QueueConfig::reserve`]) that the reader never takes, and jobs claimed beyond
//!   the free places wait in a bounded side queue, leased, for the next place that frees up
//!   (ahead of new jobs); so a takeover happens within `claim_idle` and one reclaim interval
//!   however long the backlog of new jobs is;
//! - the lease keeper re-claims (`XCLAIM … JUSTID`) the jobs this process holds, every quarter of
//!   `claim_idle`, so that a long step is not taken over while its worker is alive.
//!
//! Redis errors never stop the worker (apalis treats a backend error as fatal): the tasks log,
//! back off and try again.
//!
//! A graceful stop drains ([`Drain::release`]): the blocked read is woken (`CLIENT UNBLOCK`), and
//! the jobs this process received but never started go back to their streams at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use redis::streams::StreamId;
use redis::{Script, Value};
use steward_schemas::{CompanyId, Event, FailureKind, Job, Phase, RunId, StepFailure};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tower::layer::util::Identity;
use tracing::{debug, error, info, warn};

use crate::companies::{Companies, CompanyRecord};
use crate::keys::{GROUP, Lane};
use crate::store::{self, Ack, JobCheck, Store};

/// Reads at most so many first jobs of new runs over several streams (see `read_new`).
const READ_NEW_RUNS: &str = include_str!("../lua/read_new_runs.lua");

/// Hands unstarted jobs back to the stream (see [`Drain::release`]).
const RELEASE: &str = include_str!("../lua/release.lua");

/// How the queue reads.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// This process's consumer name (unique per process start).
    pub consumer: String,
    /// How many jobs the worker runs at once; the queue holds at most this many.
    pub concurrency: usize,
    /// How long a blocking read waits before it is renewed.
    pub block: Duration,
    /// How long a job may sit with a consumer without renewal before another takes it over.
    pub claim_idle: Duration,
    /// How many deliveries without an outcome make a job poison.
    pub max_deliveries: u64,
}

impl QueueConfig {
    /// Places kept for jobs taken over from a consumer that stopped renewing them: new jobs
    /// never use them, so a takeover waits for no freed place however long the backlog is
    /// (a quarter of `concurrency`, at least one).
    pub fn reserve(&self) -> usize {
        (self.concurrency / 4).max(1)
    }

    /// How many jobs taken over may wait for a place (leased) in the side queue: enough for
    /// every job of several dead workers of this size, bounded so memory is.
    pub fn side_limit(&self) -> usize {
        (self.capacity() * 4).max(64)
    }

    /// How many jobs the worker may run at once: `concurrency` new jobs plus the reserve.
    pub fn capacity(&self) -> usize {
        self.concurrency.max(1) + self.reserve()
    }
}

/// One delivery of a job to this worker.
#[derive(Debug)]
pub struct Delivery {
    /// The shard the job came from.
    pub shard: u16,
    /// Which of the shard's streams.
    pub lane: Lane,
    /// The stream entry.
    pub entry: String,
    /// The run.
    pub run: RunId,
    /// The run's version when the job was enqueued.
    pub version: u64,
    /// The job.
    pub job: Job,
    /// How many times the entry has been delivered (1: first delivery).
    pub deliveries: u64,
    /// The run's company as stored when the job was received (its policy decides whether the
    /// step may run): `Some(None)` if it no longer exists, `None` if it was not fetched.
    pub company: Option<Option<Arc<CompanyRecord>>>,
    company_id: Option<CompanyId>,
    /// Whether the job is still current, as its run said when the batch was read (in the same
    /// round trip as the companies), and when: see [`Delivery::take_check`].
    checked: Option<(Instant, JobCheck)>,
    lease: Lease,
}

impl Delivery {
    /// What the run said of this job when the batch was read, if that is at most `fresh` ago
    /// (the worker asks again otherwise, so the check stays one made right before the op runs).
    pub fn take_check(&mut self, fresh: Duration) -> Option<JobCheck> {
        match self.checked.take() {
            Some((at, check)) if at.elapsed() <= fresh => Some(check),
            _ => None,
        }
    }

    /// The acknowledgement the outcome's transition carries.
    pub fn ack(&self) -> Ack {
        Ack {
            entry: self.entry.clone(),
            lane: self.lane,
            step: self.job.step.clone(),
            seq: self.job.seq,
        }
    }

    /// Marks the job as started: from now on, if this process stops before the outcome is
    /// committed, the job stays leased to it until another worker takes it over. A job that is
    /// dropped unstarted (the worker stopped first) is handed back to the stream instead.
    pub fn start(&mut self) {
        self.lease.started = true;
    }
}

/// Holds a place in the worker and in the lease keeper's list until the job is done.
#[derive(Debug)]
struct Lease {
    inflight: Arc<Inflight>,
    unstarted: Arc<Unstarted>,
    held: Option<Held>,
    started: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.inflight.remove((held.shard, held.lane), &held.entry);
            if !self.started {
                self.unstarted.push(held);
            }
        }
    }
}

/// A job this process received from the stream (on its first delivery).
#[derive(Debug, Clone)]
struct Held {
    shard: u16,
    lane: Lane,
    entry: String,
    run: RunId,
    /// The run hash's field that records the job's entry (`j:<step>:<seq>`).
    field: String,
    /// Whether this process took it over from another consumer (not handed back: its
    /// delivery count must keep counting towards the poison limit).
    reclaimed: bool,
}

/// Jobs received but never started, to hand back to the stream when the worker stops.
#[derive(Debug, Default)]
struct Unstarted(Mutex<Vec<Held>>);

impl Unstarted {
    fn push(&self, held: Held) {
        self.0
            .lock()
            .expect("the unstarted lock is never poisoned")
            .push(held);
    }

    fn take(&self) -> Vec<Held> {
        std::mem::take(&mut *self.0.lock().expect("the unstarted lock is never poisoned"))
    }
}

/// A stream: a shard and one of its lanes.
type Src = (u16, Lane);

/// The stream entries this process holds, by stream.
#[derive(Debug, Default)]
struct Inflight(Mutex<HashMap<Src, HashSet<String>>>);

impl Inflight {
    fn insert(&self, src: Src, entry: &str) {
        self.0
            .lock()
            .expect("the in-flight lock is never poisoned")
            .entry(src)
            .or_default()
            .insert(entry.to_owned());
    }

    fn remove(&self, src: Src, entry: &str) {
        let mut map = self.0.lock().expect("the in-flight lock is never poisoned");
        if let Some(set) = map.get_mut(&src) {
            set.remove(entry);
        }
    }

    fn snapshot(&self) -> Vec<(Src, Vec<String>)> {
        self.0
            .lock()
            .expect("the in-flight lock is never poisoned")
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(k, s)| (*k, s.iter().cloned().collect()))
            .collect()
    }
}

/// The queue, as an apalis backend. Dropping it stops its background tasks.
#[derive(Debug)]
pub struct StepQueue {
    rx: mpsc::Receiver<Delivery>,
    control: Arc<Control>,
    config: QueueConfig,
}

/// What stops the queue's tasks, shared by the backend and its [`Drain`]; the tasks are
/// aborted when both are gone.
struct Control {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("consumer", &self.shared.config.consumer)
            .finish_non_exhaustive()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in self
            .tasks
            .get_mut()
            .expect("the task list lock is never poisoned")
            .iter()
        {
            t.abort();
        }
    }
}

/// Stops a queue gracefully once its worker has stopped; see [`Drain::release`].
#[derive(Debug)]
pub struct Drain {
    control: Arc<Control>,
}

impl Drain {
    /// Stops the queue's tasks (waking its blocked read) and hands the jobs this process
    /// received but never started back to the stream, so that other workers take them at once
    /// rather than after `claim_idle`. Call it after the worker has stopped. Returns how many
    /// jobs were handed back.
    pub async fn release(self) -> usize {
        let _ = self.control.stop.send(true);
        let tasks = std::mem::take(
            &mut *self
                .control
                .tasks
                .lock()
                .expect("the task list lock is never poisoned"),
        );
        for t in tasks {
            let _ = t.await;
        }
        let shared = &self.control.shared;
        let mut by_shard: HashMap<Src, Vec<Held>> = HashMap::new();
        for held in shared.unstarted.take() {
            if held.reclaimed {
                debug!(entry = %held.entry, "step queue: leaving a job taken over from another worker to be taken over again");
                continue;
            }
            by_shard
                .entry((held.shard, held.lane))
                .or_default()
                .push(held);
        }
        let mut released = 0;
        for ((shard, lane), held) in by_shard {
            let keys = shared.store.keys();
            let mut invocation = shared.release.prepare_invoke();
            invocation
                .key(keys.stream(shard, lane))
                .arg(GROUP)
                .arg(&shared.config.consumer)
                .arg(lane.prefix());
            for h in &held {
                invocation.key(keys.run(h.run)).arg(&h.entry).arg(&h.field);
            }
            match shared.store.db().script::<usize>(&invocation).await {
                Ok(n) => released += n,
                Err(e) => {
                    warn!(error = %e, shard, jobs = held.len(), "step queue: cannot hand jobs back; other workers will take them over after the claim idle time")
                }
            }
        }
        if released > 0 {
            info!(
                released,
                "step queue: handed back the jobs this worker received but never started"
            );
        }
        released
    }
}

/// Never produced: the queue retries Redis errors itself. apalis needs an error type.
#[derive(Debug, thiserror::Error)]
#[error("step queue closed")]
pub struct QueueClosed;

struct Shared {
    store: Store,
    companies: Companies,
    config: QueueConfig,
    inflight: Arc<Inflight>,
    unstarted: Arc<Unstarted>,
    release: Script,
    /// Places for new jobs (`concurrency`).
    permits: Arc<Semaphore>,
    /// Places only jobs taken over use (see [`QueueConfig::reserve`]).
    reserve: Arc<Semaphore>,
    /// Jobs taken over that wait for a place (at most [`QueueConfig::side_limit`]), leased.
    side: Mutex<VecDeque<(Src, StreamId, u64)>>,
    /// Wakes [`drain_side`].
    side_ready: tokio::sync::Notify,
    tx: mpsc::Sender<Delivery>,
    stop: watch::Receiver<bool>,
    src_of_key: HashMap<String, Src>,
}

impl StepQueue {
    /// Starts reading. Call [`Store::prepare`] first (it creates the consumer groups).
    pub fn start(store: Store, companies: Companies, config: QueueConfig) -> Self {
        let capacity = config.concurrency.max(1);
        // Every delivery in the channel holds a place, so it never holds more than all places.
        let (tx, rx) = mpsc::channel(config.capacity());
        let (stop_tx, stop) = watch::channel(false);
        let keys = store.keys().clone();
        let shared = Arc::new(Shared {
            src_of_key: keys
                .all_shards()
                .flat_map(|s| Lane::ALL.map(|l| (keys.stream(s, l), (s, l))))
                .collect(),
            store,
            companies,
            config: config.clone(),
            inflight: Arc::default(),
            unstarted: Arc::default(),
            release: Script::new(RELEASE),
            permits: Arc::new(Semaphore::new(capacity)),
            reserve: Arc::new(Semaphore::new(config.reserve())),
            side: Mutex::default(),
            side_ready: tokio::sync::Notify::new(),
            tx,
            stop,
        });
        // One server: one reader over every shard's stream. A cluster refuses a read over
        // streams in different slots, so there each shard has its own reader (and connection to
        // the master that owns the shard).
        let readers: Vec<Vec<u16>> = if shared.store.db().is_cluster() {
            keys.all_shards().map(|s| vec![s]).collect()
        } else {
            vec![keys.all_shards().collect()]
        };
        let mut tasks: Vec<JoinHandle<()>> = readers
            .into_iter()
            .map(|shards| tokio::spawn(read_new(shared.clone(), shards)))
            .collect();
        tasks.extend([
            tokio::spawn(reclaim(shared.clone())),
            tokio::spawn(drain_side(shared.clone())),
            tokio::spawn(keep_leases(shared.clone())),
        ]);
        info!(consumer = %config.consumer, concurrency = capacity, reserve = config.reserve(), "step queue started");
        Self {
            rx,
            control: Arc::new(Control {
                stop: stop_tx,
                tasks: Mutex::new(tasks),
                shared,
            }),
            config,
        }
    }

    /// The next job, outside an apalis worker; `None` once the queue has stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// The handle that stops the queue gracefully after its worker has stopped.
    pub fn drain(&self) -> Drain {
        Drain {
            control: self.control.clone(),
        }
    }

    /// Stops the background tasks. Jobs already received stay leased to this consumer until
    /// [`Drain::release`] hands them back, or `claim_idle` passes and another worker takes them
    /// over.
    pub fn stop(&self) {
        let _ = self.control.stop.send(true);
    }
}

impl Drop for StepQueue {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Backend for StepQueue {
    type Task = Task<Delivery>;
    type Error = QueueClosed;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| Ok(Task::new(d))))
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.stop();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for StepQueue {
    type Args = Delivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = QueueConfig;
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

/// Sleeps, unless the queue is stopping; returns whether it is.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

fn backoff(prev: Duration) -> Duration {
    (prev * 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

/// New runs' share of the places when continuations keep coming: once this many less one
/// continuation jobs were taken since new runs were last read, they are read first (a read may
/// bring one continuation per shard, so that is one new run in this many to this many + the
/// shard count), so they are never starved.
pub const NEW_RUN_SHARE: usize = 8;

/// Which lane a reader reads first, and how many places that read may take: continuations
/// first, but new runs get their share ([`NEW_RUN_SHARE`]) of the places, counted across reads
/// (a busy worker frees one place at a time).
#[derive(Debug, Default)]
struct Fairness {
    /// Continuation jobs taken since the last read of the new-runs streams.
    since_new: usize,
    /// Whether that read found jobs (new runs wait).
    new_waiting: bool,
}

impl Fairness {
    /// The lanes in the order to read them, and how many of `room` places the first may take
    /// (the second takes what is left).
    fn plan(&self, room: usize) -> ([Lane; 2], usize) {
        if self.since_new + 1 >= NEW_RUN_SHARE {
            return ([Lane::New, Lane::Continuing], room.div_ceil(NEW_RUN_SHARE));
        }
        let share = if self.new_waiting {
            room / NEW_RUN_SHARE
        } else {
            0
        };
        ([Lane::Continuing, Lane::New], room - share)
    }

    /// Counts `n` jobs read from `lane`'s streams.
    fn took(&mut self, lane: Lane, n: usize) {
        match lane {
            Lane::Continuing => self.since_new += n,
            Lane::New => {
                self.since_new = 0;
                self.new_waiting = n > 0;
            }
        }
    }
}

/// Reads new jobs from the streams of `shards` (every shard on one server; one on a cluster):
/// continuations first (jobs of runs under way), then the first jobs of new runs, which get
/// their share of the places ([`Fairness`]); blocks on both only when both are empty.
async fn read_new(shared: Arc<Shared>, shards: Vec<u16>) {
    let mut stop = shared.stop.clone();
    let mut wait = Duration::ZERO;
    let keys = shared.store.keys().clone();
    let lane_streams =
        |lane: Lane| -> Vec<String> { shards.iter().map(|&s| keys.stream(s, lane)).collect() };
    let continuing = lane_streams(Lane::Continuing);
    let new_runs = lane_streams(Lane::New);
    let both: Vec<String> = continuing.iter().chain(&new_runs).cloned().collect();
    let mut conn = loop {
        match shared
            .store
            .db()
            .blocking(shared.config.block, continuing.first().map(String::as_str))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                wait = backoff(wait);
                warn!(error = %e, retry_in = ?wait, "step queue: cannot open the reading connection");
                if pause(&mut stop, wait).await {
                    return;
                }
            }
        }
    };
    let block_ms = u64::try_from(shared.config.block.as_millis()).unwrap_or(u64::MAX);
    let max_batch = shared.config.concurrency.clamp(1, 512);
    let mut blocked: Option<crate::db::Blocked> = None;
    let mut fairness = Fairness::default();
    // Where the next read of some of the new-runs streams starts.
    let mut next_new = 0;
    // The read-new-runs script, sent by hash (its text once, on NOSCRIPT).
    let read_new_sha = Script::new(READ_NEW_RUNS).get_hash().to_owned();
    // Set when a pass of non-blocking reads found nothing and the blocking read that followed
    // brought fewer jobs than there were places: the streams are being drained as jobs come, so
    // the next read blocks at once (it returns at once if anything is there) instead of asking
    // every stream again first. A light load costs one read per job, not three.
    let mut idle = false;
    // COUNT applies per stream, so a read can return more entries than there are free places
    // (at most one per shard too many). Those wait here, leased (the lease keeper renews them),
    // and go to the worker before anything new is read.
    let mut backlog: VecDeque<(Src, StreamId)> = VecDeque::new();
    // Each stream's share of `places`, rounded down (but at least one); the same whether one
    // reader reads every shard or each shard has its own.
    let count = |places: usize| (places / usize::from(keys.shards())).max(1);
    let read_cmd = |streams: &[String], count: usize, block: Option<u64>| {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&shared.config.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(ms) = block {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(streams);
        for _ in streams {
            cmd.arg(">");
        }
        cmd
    };
    loop {
        if *stop.borrow() {
            hold_back(&shared, backlog);
            return;
        }
        if let Some((src, entry)) = backlog.pop_front() {
            let permit = tokio::select! {
                p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = stop.changed() => {
                    backlog.push_front((src, entry));
                    hold_back(&shared, backlog);
                    return;
                }
            };
            let mut batch: Vec<Delivery> = prepare(&shared, src, &entry, 1, permit)
                .into_iter()
                .collect();
            while !backlog.is_empty() {
                let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
                    break;
                };
                if let Some((src, entry)) = backlog.pop_front() {
                    batch.extend(prepare(&shared, src, &entry, 1, permit));
                }
            }
            send_batch(&shared, batch).await;
            continue;
        }
        // Wait for room, but hold no place while reading: the reclaimer needs places too.
        // Places are taken per entry received.
        tokio::select! {
            p = shared.permits.acquire() => match p { Ok(p) => drop(p), Err(_) => return },
            _ = stop.changed() => return,
        }
        // Without blocking: the lane that goes first, then the other with the places left.
        let room = shared.permits.available_permits().clamp(1, max_batch);
        if idle {
            idle = false;
        } else {
            let (order, first) = fairness.plan(room);
            let mut batch = Vec::new();
            let mut failed = None;
            for (i, lane) in order.into_iter().enumerate() {
                let places = if i == 0 {
                    first
                } else {
                    shared.permits.available_permits().min(max_batch)
                };
                if places == 0 {
                    break;
                }
                let cmd = match lane {
                    // Rounded up: rounded down, a read over several streams could leave places to
                    // new runs while continuations wait (10 places over 8 shards: 8 at most). Those
                    // read beyond the places wait in the backlog, which is where they belong.
                    Lane::Continuing => read_cmd(
                        &continuing,
                        places.div_ceil(usize::from(keys.shards())),
                        None,
                    ),
                    // Never more new runs than places: each one taken beyond them would wait in the
                    // backlog ahead of the continuations that come meanwhile (and a burst would be
                    // worked breadth-first again). Over several streams, a script reads them in
                    // turn, starting one shard further each time.
                    Lane::New if new_runs.len() > 1 => {
                        let mut cmd = redis::cmd("EVALSHA");
                        cmd.arg(&read_new_sha).arg(new_runs.len());
                        for k in 0..new_runs.len() {
                            cmd.arg(&new_runs[(next_new + k) % new_runs.len()]);
                        }
                        next_new = (next_new + 1) % new_runs.len();
                        cmd.arg(GROUP).arg(&shared.config.consumer).arg(places);
                        cmd
                    }
                    Lane::New => read_cmd(&new_runs, count(places), None),
                };
                let mut answer = conn
                    .query::<Option<redis::streams::StreamReadReply>>(&cmd)
                    .await;
                if matches!(&answer, Err(e) if e.code() == Some("NOSCRIPT")) {
                    // Redis restarted or flushed its scripts: load it, and read again.
                    match conn
                        .query::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(READ_NEW_RUNS))
                        .await
                    {
                        Ok(_) => {
                            answer = conn
                                .query::<Option<redis::streams::StreamReadReply>>(&cmd)
                                .await;
                        }
                        Err(e) => answer = Err(e),
                    }
                }
                match answer {
                    Ok(reply) => {
                        let entries: Vec<_> = reply
                            .map(|r| entries_of(&shared, r).collect())
                            .unwrap_or_default();
                        fairness.took(lane, entries.len());
                        take(&shared, entries, &mut batch, &mut backlog);
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let got = !batch.is_empty() || !backlog.is_empty();
            send_batch(&shared, batch).await;
            if let Some(e) = failed {
                // The connection may be a new one now.
                blocked = None;
                wait = backoff(wait);
                warn!(error = %e, retry_in = ?wait, "step queue: read failed");
                regroup(&shared, &e).await;
                if pause(&mut stop, wait).await {
                    hold_back(&shared, backlog);
                    return;
                }
                continue;
            }
            wait = Duration::ZERO;
            if got {
                continue;
            }
        }
        // Both lanes are empty: block on both.
        let room = shared.permits.available_permits().clamp(1, max_batch);
        let cmd = read_cmd(&both, count(room), Some(block_ms));
        if blocked.is_none() {
            blocked = conn.blocked().await.ok();
        }
        let read = conn.query::<Option<redis::streams::StreamReadReply>>(&cmd);
        tokio::pin!(read);
        let reply = tokio::select! {
            r = &mut read => match r {
                Ok(r) => { wait = Duration::ZERO; r }
                Err(e) => {
                    // The connection may be a new one now.
                    blocked = None;
                    wait = backoff(wait);
                    warn!(error = %e, retry_in = ?wait, "step queue: read failed");
                    regroup(&shared, &e).await;
                    if pause(&mut stop, wait).await { return; }
                    continue;
                }
            },
            _ = stop.changed() => {
                // Wake the read rather than abandon it: Redis may already have delivered
                // entries to it, and those are handed back when the worker has stopped.
                if let Some(blocked) = &blocked
                    && let Err(e) = shared.store.db().unblock(blocked).await
                {
                    debug!(error = %e, "step queue: cannot wake the blocked read");
                }
                let last = tokio::time::timeout(shared.config.block + Duration::from_secs(1), read).await;
                if let Ok(Ok(Some(reply))) = last {
                    backlog.extend(entries_of(&shared, reply));
                }
                hold_back(&shared, backlog);
                return;
            }
        };
        let Some(reply) = reply else { continue };
        let entries: Vec<_> = entries_of(&shared, reply).collect();
        idle = entries.len() < room;
        for lane in Lane::ALL {
            fairness.took(
                lane,
                entries.iter().filter(|((_, l), _)| *l == lane).count(),
            );
        }
        let mut batch = Vec::new();
        take(&shared, entries, &mut batch, &mut backlog);
        send_batch(&shared, batch).await;
    }
}

/// Gives each entry read a free place (into `batch`), or leases it in `backlog` when there is
/// none.
fn take(
    shared: &Shared,
    entries: Vec<(Src, StreamId)>,
    batch: &mut Vec<Delivery>,
    backlog: &mut VecDeque<(Src, StreamId)>,
) {
    for (src, entry) in entries {
        match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => batch.extend(prepare(shared, src, &entry, 1, permit)),
            Err(_) => {
                shared.inflight.insert(src, &entry.id);
                backlog.push_back((src, entry));
            }
        }
    }
}

/// After Redis lost its data (a restart without persistence, a restore, a failover to an empty
/// replica) the streams and their consumer group are gone: creates them again so the worker
/// reads new jobs. The jobs it held from before are checked against their runs before they run
/// (see `Runtime::execute`).
async fn regroup(shared: &Shared, e: &redis::RedisError) {
    if e.code() != Some("NOGROUP") {
        return;
    }
    match shared.store.prepare().await {
        Ok(()) => warn!(
            "step queue: the consumer group was missing (Redis lost its data?); created it again"
        ),
        Err(e) => warn!(error = %e, "step queue: cannot create the consumer group again"),
    }
}

/// A read's entries, with their streams.
fn entries_of(
    shared: &Shared,
    reply: redis::streams::StreamReadReply,
) -> impl Iterator<Item = (Src, StreamId)> + use<'_> {
    reply.keys.into_iter().flat_map(move |stream| {
        let src = shared.src_of_key.get(&stream.key).copied();
        stream
            .ids
            .into_iter()
            .filter_map(move |entry| Some((src?, entry)))
    })
}

/// Leaves entries this process read but will not start to [`Drain::release`].
fn hold_back(shared: &Shared, entries: impl IntoIterator<Item = (Src, StreamId)>) {
    for ((shard, lane), entry) in entries {
        shared.inflight.remove((shard, lane), &entry.id);
        let job = entry_field(&entry.map, "j").and_then(|j| serde_json::from_str::<Job>(&j).ok());
        let run = entry_field(&entry.map, "r").and_then(|r| r.parse::<RunId>().ok());
        if let (Some(job), Some(run)) = (job, run) {
            shared.unstarted.push(Held {
                shard,
                lane,
                entry: entry.id,
                run,
                field: job_field(&job),
                reclaimed: false,
            });
        }
    }
}

/// The run hash's field that records where a job is queued (see `commit.lua`).
fn job_field(job: &Job) -> String {
    format!("j:{}:{}", job.step, job.seq)
}

/// A string field of a stream entry.
fn entry_field(fields: &HashMap<String, Value>, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(|v| redis::from_redis_value_ref(v).ok())
}

/// An entry's run, run version and job. (Entries an earlier build wrote also carry a copy of
/// the run's document, `d`: it is not read.)
fn parse_entry(fields: &HashMap<String, Value>) -> Option<(RunId, u64, Job)> {
    let field = |name: &str| entry_field(fields, name);
    let run: RunId = field("r")?.parse().ok()?;
    let version: u64 = field("v")?.parse().ok()?;
    let job: Job = serde_json::from_str(&field("j")?).ok()?;
    Some((run, version, job))
}

/// Parses an entry into a delivery. A malformed entry (perhaps written by a newer version) is
/// left unacknowledged: another worker may read it, and one delivered too often is parked.
fn prepare(
    shared: &Shared,
    (shard, lane): Src,
    entry: &StreamId,
    deliveries: u64,
    permit: OwnedSemaphorePermit,
) -> Option<Delivery> {
    let id = entry.id.as_str();
    let field = |name: &str| entry_field(&entry.map, name);
    let Some((run, version, job)) = parse_entry(&entry.map) else {
        shared.inflight.remove((shard, lane), id);
        error!(
            entry = id,
            shard,
            ?lane,
            deliveries,
            "step queue: this worker cannot read the entry; leaving it to another worker or, after {} deliveries, to the dead-letter stream",
            shared.config.max_deliveries
        );
        return None;
    };
    shared.inflight.insert((shard, lane), id);
    let held = Held {
        shard,
        lane,
        entry: id.to_owned(),
        run,
        field: job_field(&job),
        reclaimed: deliveries > 1,
    };
    Some(Delivery {
        shard,
        lane,
        entry: id.to_owned(),
        run,
        version,
        job,
        deliveries,
        company: None,
        company_id: field("c").and_then(|c| c.parse().ok()),
        checked: None,
        lease: Lease {
            inflight: shared.inflight.clone(),
            unstarted: shared.unstarted.clone(),
            held: Some(held),
            started: false,
            _permit: permit,
        },
    })
}

/// Fetches the batch's companies and runs in one round trip (after the jobs were read, so a
/// policy changed before a job was dispatched is seen), checks each job against its run (see
/// [`Store::check_job`]) and hands the jobs to the worker. What cannot be read here is read by
/// the worker, one job at a time.
async fn send_batch(shared: &Shared, mut batch: Vec<Delivery>) {
    if batch.is_empty() {
        return;
    }
    let mut ids: Vec<CompanyId> = batch.iter().filter_map(|d| d.company_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut pipe = redis::pipe();
    if !ids.is_empty() {
        let keys: Vec<String> = ids.iter().map(|id| shared.companies.key(id)).collect();
        pipe.cmd("MGET").arg(keys);
    }
    for d in &batch {
        pipe.cmd("HGETALL").arg(shared.store.keys().run(d.run));
    }
    match shared.store.db().pipe::<Vec<Value>>(&pipe).await {
        Ok(mut replies) if replies.len() == batch.len() + usize::from(!ids.is_empty()) => {
            let runs = replies.split_off(usize::from(!ids.is_empty()));
            if let Some(companies) = replies.pop() {
                let records: Vec<Option<String>> =
                    redis::from_redis_value(companies).unwrap_or_default();
                // Absent: `Some(None)`. Unparseable: not set, for the worker to read and report.
                let found: HashMap<&CompanyId, Option<Arc<CompanyRecord>>> = ids
                    .iter()
                    .zip(records)
                    .filter_map(|(id, json)| match json {
                        None => Some((id, None)),
                        Some(json) => parse_company(&json).map(|r| (id, Some(r))),
                    })
                    .collect();
                for d in &mut batch {
                    if let Some(record) = d.company_id.as_ref().and_then(|id| found.get(id)) {
                        d.company = Some(record.clone());
                    }
                }
            }
            let now = Instant::now();
            for (d, fields) in batch.iter_mut().zip(runs) {
                // A run that does not parse is left to the worker's own read, which says so.
                d.checked = redis::from_redis_value::<HashMap<String, String>>(fields)
                    .ok()
                    .and_then(|fields| store::job_check(fields, &d.ack()).ok())
                    .map(|c| (now, c));
            }
        }
        Ok(_) => {
            warn!("step queue: an unexpected reply to the batch's reads; the worker reads again")
        }
        Err(e) => {
            warn!(error = %e, "step queue: cannot read the batch's companies and runs; the worker will")
        }
    }
    for d in batch {
        if shared.tx.send(d).await.is_err() {
            debug!("step queue: the worker is gone");
            return;
        }
    }
}

/// A company's stored record; one that does not parse is left for the worker to read and report.
fn parse_company(json: &str) -> Option<Arc<CompanyRecord>> {
    crate::companies::parse(json).ok().map(Arc::new)
}

async fn reclaim(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let keys = shared.store.keys().clone();
    let idle_ms = u64::try_from(shared.config.claim_idle.as_millis()).unwrap_or(u64::MAX);
    let every = (shared.config.claim_idle / 2).max(Duration::from_millis(50));
    loop {
        if pause(&mut stop, every).await {
            return;
        }
        for (shard, lane) in keys.all_shards().flat_map(|s| Lane::ALL.map(|l| (s, l))) {
            let mut cursor = "0-0".to_owned();
            loop {
                // Places are taken before claiming (the reserve's first: new jobs never take
                // it), so a job claimed starts at once; claimed beyond them, jobs wait in the
                // side queue, leased (renewed like every job this process holds, so not claimed
                // again), and take the next place that frees up, before any new job. Either
                // way a takeover does not wait for the backlog.
                let places = take_places(&shared, 100);
                let room = places.len() + shared.side_room();
                if room == 0 {
                    break;
                }
                let cmd = {
                    let mut c = redis::cmd("XAUTOCLAIM");
                    c.arg(keys.stream(shard, lane))
                        .arg(GROUP)
                        .arg(&shared.config.consumer)
                        .arg(idle_ms)
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(room);
                    c
                };
                let reply: redis::streams::StreamAutoClaimReply =
                    match shared.store.db().query(&cmd).await {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(error = %e, shard, ?lane, "step queue: reclaim failed");
                            regroup(&shared, &e).await;
                            break;
                        }
                    };
                debug!(shard, claimed = reply.claimed.len(), next = %reply.next_stream_id, "step queue: reclaim pass");
                if !reply.claimed.is_empty() {
                    take_over(&shared, (shard, lane), reply.claimed, places).await;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
    }
}

impl Shared {
    /// How many more jobs the side queue takes.
    fn side_room(&self) -> usize {
        let len = self
            .side
            .lock()
            .expect("the side queue lock is never poisoned")
            .len();
        self.config.side_limit().saturating_sub(len)
    }
}

/// Starts the jobs taken over that found no free place, each on the next place that frees up
/// (ahead of new jobs: the reader asks for places after this task does, and a semaphore serves
/// waiters in order).
async fn drain_side(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    loop {
        let next = shared
            .side
            .lock()
            .expect("the side queue lock is never poisoned")
            .pop_front();
        let Some((src, entry, deliveries)) = next else {
            tokio::select! {
                () = shared.side_ready.notified() => continue,
                _ = stop.changed() => break,
            }
        };
        let permit = tokio::select! {
            p = shared.reserve.clone().acquire_owned() => p.ok(),
            p = shared.permits.clone().acquire_owned() => p.ok(),
            _ = stop.changed() => None,
        };
        let Some(permit) = permit else {
            shared.inflight.remove(src, &entry.id);
            break;
        };
        let batch: Vec<Delivery> = prepare(&shared, src, &entry, deliveries, permit)
            .into_iter()
            .collect();
        send_batch(&shared, batch).await;
    }
    // Stopping: these were taken over from another consumer; they are left to be taken over
    // again (their delivery count keeps counting towards the poison limit).
    for (src, entry, _) in std::mem::take(
        &mut *shared
            .side
            .lock()
            .expect("the side queue lock is never poisoned"),
    ) {
        shared.inflight.remove(src, &entry.id);
    }
}

/// Up to `max` free places for jobs taken over: the reserve's, then the worker's own.
fn take_places(shared: &Shared, max: usize) -> Vec<OwnedSemaphorePermit> {
    let mut places = Vec::new();
    for pool in [&shared.reserve, &shared.permits] {
        while places.len() < max {
            match pool.clone().try_acquire_owned() {
                Ok(p) => places.push(p),
                Err(_) => break,
            }
        }
    }
    // `take_over` pops places from the end: the reserve's first.
    places.reverse();
    places
}

/// Starts jobs claimed from other consumers, one place of `places` each (the rest are given
/// back; jobs beyond them go to the side queue), or parks those delivered too often.
async fn take_over(
    shared: &Shared,
    src: Src,
    claimed: Vec<StreamId>,
    mut places: Vec<OwnedSemaphorePermit>,
) {
    let keys = shared.store.keys();
    let (shard, lane) = src;
    let mut pipe = redis::pipe();
    for entry in &claimed {
        pipe.cmd("XPENDING")
            .arg(keys.stream(shard, lane))
            .arg(GROUP)
            .arg(&entry.id)
            .arg(&entry.id)
            .arg(1);
    }
    let counts: Vec<Vec<(String, String, u64, u64)>> = match shared.store.db().pipe(&pipe).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "step queue: cannot read delivery counts");
            return;
        }
    };
    let mut batch = Vec::new();
    for (entry, count) in claimed.into_iter().zip(counts) {
        let deliveries = count.first().map_or(1, |c| c.3);
        info!(entry = %entry.id, shard, deliveries, "step queue: took over a job from a consumer that stopped renewing it");
        shared
            .store
            .metrics()
            .count("steward_jobs_taken_over_total", &[]);
        if deliveries > shared.config.max_deliveries {
            park(shared, src, &entry, deliveries).await;
            continue;
        }
        match places.pop() {
            Some(permit) => batch.extend(prepare(shared, src, &entry, deliveries, permit)),
            None => {
                shared.inflight.insert(src, &entry.id);
                shared
                    .side
                    .lock()
                    .expect("the side queue lock is never poisoned")
                    .push_back((src, entry, deliveries));
                shared.side_ready.notify_one();
            }
        }
    }
    drop(places);
    send_batch(shared, batch).await;
}

/// Parks a job delivered more than `max_deliveries` times: its step fails, and the job goes to
/// the dead-letter stream, in one script. An entry too malformed to name its run and step is
/// moved to the dead-letter stream as it is.
async fn park(shared: &Shared, (shard, lane): Src, entry: &StreamId, deliveries: u64) {
    let field = |name: &str| entry_field(&entry.map, name);
    let run = field("r").and_then(|r| r.parse::<RunId>().ok());
    let job_json = field("j");
    let job = job_json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Job>(j).ok());
    let (Some(run), Some(job_json), Some(job)) = (run, job_json, job) else {
        error!(entry = %entry.id, shard, deliveries, "step queue: parking an entry no worker can read");
        if let Err(e) = dead_letter_raw(shared, (shard, lane), entry).await {
            warn!(error = %e, "step queue: parking failed; will retry");
        }
        return;
    };
    let message = if parse_entry(&entry.map).is_some() {
        format!(
            "the job was delivered {deliveries} times without an outcome (its worker keeps stopping); it was moved to the dead-letter stream"
        )
    } else {
        format!(
            "no worker could read the job's queue entry in {deliveries} deliveries (was it written by another Steward version?); it was moved to the dead-letter stream"
        )
    };
    let error = StepFailure {
        kind: FailureKind::Poison,
        message,
        code: None,
        retry_after: None,
    };
    let event = match job.phase {
        Phase::Run => Event::StepFailed {
            step: job.step.clone(),
            seq: job.seq,
            error,
        },
        Phase::Undo => Event::UndoFailed {
            step: job.step.clone(),
            seq: job.seq,
            error,
        },
    };
    let ack = Ack {
        entry: entry.id.clone(),
        lane,
        step: job.step.clone(),
        seq: job.seq,
    };
    error!(run.id = %run, step.name = %job.step, deliveries, shard, "step queue: parking a poison job");
    match shared.store.park(run, &event, &ack, &job_json).await {
        Ok(_) => shared
            .store
            .metrics()
            .count("steward_jobs_dead_lettered_total", &[]),
        Err(e) => warn!(error = %e, "step queue: parking failed; will retry"),
    }
}

/// Moves an unreadable entry, fields as they are, to the shard's dead-letter stream and
/// acknowledges it (one transaction; both keys are in the shard's slot).
async fn dead_letter_raw(
    shared: &Shared,
    (shard, lane): Src,
    entry: &StreamId,
) -> redis::RedisResult<()> {
    let keys = shared.store.keys();
    let raw: serde_json::Map<String, serde_json::Value> = entry
        .map
        .iter()
        .map(|(k, v)| {
            let text = redis::from_redis_value_ref::<String>(v).unwrap_or_default();
            (k.clone(), serde_json::Value::String(text))
        })
        .collect();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(keys.dead(shard))
        .arg("MAXLEN")
        .arg("~")
        .arg(10_000)
        .arg("*")
        .arg("run")
        .arg(entry_field(&entry.map, "r").unwrap_or_default())
        .arg("raw")
        .arg(serde_json::Value::Object(raw).to_string())
        .ignore()
        .cmd("XACK")
        .arg(keys.stream(shard, lane))
        .arg(GROUP)
        .arg(&entry.id)
        .ignore()
        .cmd("XDEL")
        .arg(keys.stream(shard, lane))
        .arg(&entry.id)
        .ignore();
    shared.store.db().pipe::<()>(&pipe).await
}

async fn keep_leases(shared: Arc<Shared>) {
    let mut stop = shared.stop.clone();
    let keys = shared.store.keys().clone();
    let every = (shared.config.claim_idle / 4).max(Duration::from_millis(25));
    let min_idle = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    loop {
        if pause(&mut stop, every).await {
            return;
        }
        let held = shared.inflight.snapshot();
        if held.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        for ((shard, lane), ids) in &held {
            // Only entries idle for a while are renewed: one another consumer has just taken
            // over (because this process stalled) is left with it.
            pipe.cmd("XCLAIM")
                .arg(keys.stream(*shard, *lane))
                .arg(GROUP)
                .arg(&shared.config.consumer)
                .arg(min_idle)
                .arg(ids)
                .arg("JUSTID")
                .ignore();
        }
        if let Err(e) = shared.store.db().pipe::<()>(&pipe).await {
            warn!(error = %e, "step queue: lease renewal failed");
        }
    }
}
