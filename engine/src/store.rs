//! The run store: runs, their history and their transitions on Redis.
//!
//! A transition is computed by the pure state machine on the run's document and committed by one
//! Lua script ([`COMMIT`]) that checks the document's version first (optimistic concurrency): if
//! another transition got there first, the script returns the current run and the transition is
//! computed again on it.
//!
//! A run is stored in parts (storage format 2), one hash field each: its context (`c`, written
//! once), its header (`h`: status and time) and one record per step (`s:<step>`), so a
//! transition writes only the parts it changed; loading a run is one `HGETALL`. Jobs carry the
//! run id, the step, the attempt and the bound input, not the run: the worker reads the run when
//! it checks that the job is still current, in the same round trip. A run an earlier build
//! stored whole (field `d`, format 1) is read as it is, and its next transition rewrites it in
//! parts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use redis::Script;
use serde::Serialize;
use serde_json::{Map, Value};
use steward_core::history::{diff, redact};
use steward_core::inputs::{InputProblem, prepare_inputs};
use steward_core::{Cx, Plan, TransitionError, initial_state, transition};
use steward_schemas::{
    CompanyId, Effect, Event, HistoryEntry, JobRef, RunContext, RunDoc, RunId, RunState, RunStatus,
    StepId, TicketRef, Timestamp, WorkflowDef, WorkflowRef,
};
use tracing::{debug, trace, warn};

use crate::clock::Clock;
use crate::db::{Db, Node};
use crate::keys::{GROUP, Keys, Lane, parse_job_ref};

/// The transition commit script.
pub const COMMIT: &str = include_str!("../lua/commit.lua");

/// How often a transition is recomputed on a newer document before giving up.
const MAX_CONFLICTS: u32 = 64;

/// A store error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No run has this id.
    #[error("no run `{0}`")]
    NoSuchRun(RunId),
    /// A run refers to a definition that is not stored.
    #[error("workflow definition {0} is not stored")]
    NoSuchDefinition(String),
    /// Stored data does not parse.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The run's inputs are wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Inputs(Vec<InputProblem>),
    /// A new run was committed but Redis did not confirm it durable in the chosen mode.
    #[error(
        "run {0} was created, but Redis did not confirm it written to its AOF within 5 s (redis.durability = waitaof); check the Redis server's disk, then look the run up before starting it again"
    )]
    NotDurable(RunId),
    /// The Redis server does not offer the durability configured.
    #[error("{0}")]
    Durability(String),
    /// Something a request would store is larger than its configured limit.
    #[error("{what} would be {size} bytes, more than {setting} ({limit} bytes)")]
    TooLarge {
        /// What (`the run's inputs`).
        what: &'static str,
        /// The field at fault in the request (`inputs`).
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
        /// The setting that holds the limit.
        setting: &'static str,
    },
    /// The run could not be created.
    #[error("the run could not start: {0}")]
    Start(TransitionError),
    /// Too many concurrent transitions on one run.
    #[error("gave up after {0} conflicting writes to one run")]
    Contention(u32),
    /// Redis was set up with another shard count.
    #[error(
        "redis namespace `{namespace}` was set up with {stored} shards, but this process is configured for {configured}; use the same `redis.shards` everywhere"
    )]
    ShardMismatch {
        /// The namespace.
        namespace: String,
        /// The stored count.
        stored: u16,
        /// The configured count.
        configured: u16,
    },
}

/// `pub type Result` for store calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A run's document and its version.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    /// The version (incremented by every committed transition).
    pub version: u64,
    /// The document.
    pub doc: RunDoc,
    /// Whether it is stored whole, as an earlier build did (format 1: field `d`): the next
    /// transition writes every part, and removes the whole copy.
    pub legacy: bool,
}

/// The run hash's field holding the run's context.
const CTX: &str = "c";
/// The run hash's field holding the run's header (status, time of the last change).
const HEADER: &str = "h";
/// The prefix of the run hash's fields that hold one step's record each.
const STEP: &str = "s:";
/// The run hash's field in which an earlier build stored the whole document.
const LEGACY_DOC: &str = "d";

/// The header part of a stored run.
#[derive(Serialize)]
struct HeaderRef<'a> {
    status: &'a RunStatus,
    updated_at: Timestamp,
}

#[derive(serde::Deserialize)]
struct Header {
    status: RunStatus,
    updated_at: Timestamp,
}

/// Reads a run from its hash's fields (`HGETALL`); `None` if it does not exist.
pub fn decode_run(mut fields: HashMap<String, String>) -> Result<Option<RunSnapshot>> {
    let Some(v) = fields.remove("v") else {
        return Ok(None);
    };
    let version: u64 = v
        .parse()
        .map_err(|_| corrupt(format!("run version `{v}`")))?;
    if let Some(d) = fields.remove(LEGACY_DOC) {
        return Ok(Some(RunSnapshot {
            version,
            doc: parse_doc(&d)?,
            legacy: true,
        }));
    }
    let ctx: RunContext = match fields.remove(CTX) {
        Some(c) => serde_json::from_str(&c).map_err(|e| corrupt(format!("run context: {e}")))?,
        None => return Err(corrupt("a run without its context")),
    };
    let header: Header = match fields.remove(HEADER) {
        Some(h) => serde_json::from_str(&h).map_err(|e| corrupt(format!("run header: {e}")))?,
        None => return Err(corrupt(format!("run {} without its header", ctx.run_id))),
    };
    let mut steps = std::collections::BTreeMap::new();
    for (field, value) in fields {
        if let Some(step) = field.strip_prefix(STEP) {
            let id: StepId = step
                .parse()
                .map_err(|_| corrupt(format!("step field `{field}`")))?;
            let record =
                serde_json::from_str(&value).map_err(|e| corrupt(format!("step `{step}`: {e}")))?;
            steps.insert(id, record);
        }
    }
    Ok(Some(RunSnapshot {
        version,
        doc: RunDoc {
            v: RunDoc::VERSION,
            ctx,
            state: RunState {
                status: header.status,
                steps,
                updated_at: header.updated_at,
            },
        },
        legacy: false,
    }))
}

/// The run hash's fields a transition writes (field, value) and removes.
type Parts = (Vec<(String, String)>, Vec<String>);

/// The parts of a run a transition writes: every part when the run is new (or stored whole by
/// an earlier build), else those that changed; and the parts to remove.
fn parts(before: Option<&RunState>, doc: &RunDoc, legacy: bool) -> Result<Parts> {
    let mut set = Vec::new();
    let mut del = Vec::new();
    let before = before.filter(|_| !legacy);
    if before.is_none() {
        set.push((CTX.to_owned(), json(&doc.ctx)?));
    }
    if legacy {
        del.push(LEGACY_DOC.to_owned());
    }
    let after = &doc.state;
    if before.is_none_or(|b| b.status != after.status || b.updated_at != after.updated_at) {
        set.push((
            HEADER.to_owned(),
            json(&HeaderRef {
                status: &after.status,
                updated_at: after.updated_at,
            })?,
        ));
    }
    for (id, record) in &after.steps {
        if before.is_none_or(|b| b.steps.get(id) != Some(record)) {
            set.push((format!("{STEP}{id}"), json(record)?));
        }
    }
    if let Some(b) = before {
        for id in b.steps.keys() {
            if !after.steps.contains_key(id) {
                del.push(format!("{STEP}{id}"));
            }
        }
    }
    Ok((set, del))
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(corrupt)
}

/// The job whose outcome a transition reports: acknowledged in the same script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The stream entry.
    pub entry: String,
    /// The stream it is in.
    pub lane: Lane,
    /// The job's step.
    pub step: StepId,
    /// The job's sequence number.
    pub seq: u32,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The transition was committed.
    Applied {
        /// The run's new version.
        version: u64,
        /// The run's new state.
        state: RunState,
    },
    /// The event changed nothing (stale, duplicate or late).
    Ignored {
        /// Why.
        reason: String,
    },
    /// The event was refused (a technician's request that does not apply now).
    Refused(TransitionError),
}

/// What a new run is started with.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// The compiled workflow.
    pub plan: Arc<Plan>,
    /// The company it acts on.
    pub company: CompanyId,
    /// The company's settings, pinned into the run.
    pub company_settings: Map<String, Value>,
    /// The inputs given (defaults are applied and types checked here).
    pub inputs: Map<String, Value>,
    /// Who or what started it.
    pub requested_by: String,
    /// A scheduled start.
    pub start_at: Option<Timestamp>,
    /// The PSA ticket it works on.
    pub ticket: Option<TicketRef>,
}

/// When a new run counts as started (`redis.durability`): what a power loss right after the
/// API answered may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Redis's AOF with `appendfsync everysec`: up to a second of accepted runs.
    #[default]
    Everysec,
    /// The server fsyncs its AOF before every reply (`appendfsync always`, checked at start):
    /// nothing acknowledged.
    Always,
    /// After creating a run, `WAITAOF 1 0` until the local AOF has it (Redis 7.2 or later,
    /// checked at start): nothing acknowledged, without paying an fsync per write elsewhere.
    Waitaof,
}

/// How much one run may store (`[limits]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A run's inputs, as JSON.
    pub max_input_bytes: usize,
    /// One step's output, as JSON; a larger output is replaced by a note naming the limit.
    pub max_output_bytes: usize,
    /// A run's document when it is created, as JSON (inputs, company settings, steps).
    pub max_document_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_input_bytes: 64 * 1024,
            max_output_bytes: 256 * 1024,
            max_document_bytes: 1024 * 1024,
        }
    }
}

/// Runs on Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    keys: Keys,
    clock: Arc<dyn Clock>,
    commit: Arc<Script>,
    plans: Arc<RwLock<HashMap<String, Arc<Plan>>>>,
    /// Seals secret inputs when a run is created (see `crate::secrets::runs`).
    secrets: Option<Arc<crate::secrets::Keyring>>,
    /// Where a definition Redis lost can be found again (serve's workflow files).
    fallback: Option<DefinitionSource>,
    /// This process's counters (see [`crate::metrics`]), shared by every clone.
    metrics: Arc<crate::metrics::Metrics>,
    /// How much one run may store.
    limits: Limits,
    /// When a new run counts as started.
    durability: Durability,
    /// The group commits of `WAITAOF` waits (see `crate::durable`), opened on the first new
    /// run in `waitaof` mode: one for a server, one per shard on a cluster (a shard's marker
    /// lives on the master that holds the shard's runs).
    lanes: Arc<tokio::sync::Mutex<HashMap<u16, Arc<crate::durable::Lane>>>>,
    /// Group commit: one queue per shard (see [`Batches`]).
    batches: Arc<Batches>,
}

/// The most commits one script call carries.
const MAX_BATCH: usize = 32;

/// One commit waiting for its shard's next script call.
struct Pending {
    keys: Vec<String>,
    args: Vec<String>,
    reply: tokio::sync::oneshot::Sender<redis::RedisResult<Vec<String>>>,
}

/// Group commit: the commits of one shard go through one task, which sends what has gathered
/// while its previous call was in flight as one call of the commit script (`batch` mode): a
/// worker finishing several steps of a shard at once pays one script call and one round trip
/// for them. A lone commit is sent as it is, so a quiet system waits for nothing.
#[derive(Default)]
struct Batches {
    lanes: std::sync::Mutex<HashMap<u16, tokio::sync::mpsc::UnboundedSender<Pending>>>,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

impl Batches {
    /// Sends one commit through its shard's lane (started on first use).
    async fn send(
        &self,
        db: &Db,
        script: &Arc<Script>,
        shard: u16,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> redis::RedisResult<Vec<String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let pending = Pending {
            keys,
            args,
            reply: tx,
        };
        {
            let mut lanes = self
                .lanes
                .lock()
                .expect("the commit lanes lock is never poisoned");
            let lane = lanes.entry(shard).or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(run_lane(db.clone(), script.clone(), rx));
                tx
            });
            if let Err(back) = lane.send(pending) {
                // The lane's task is gone (its runtime stopped): a new one takes it.
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(run_lane(db.clone(), script.clone(), rx));
                let _ = tx.send(back.0);
                *lane = tx;
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "the commit lane stopped",
            )))
        })
    }
}

/// A shard's commit lane: one script call at a time, carrying everything that is waiting.
async fn run_lane(
    db: Db,
    script: Arc<Script>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if batch.len() == 1 {
            let p = batch.pop().expect("one commit");
            let mut inv = script.prepare_invoke();
            for k in &p.keys {
                inv.key(k);
            }
            for a in &p.args {
                inv.arg(a);
            }
            let _ = p.reply.send(db.script::<Vec<String>>(&inv).await);
            continue;
        }
        let mut inv = script.prepare_invoke();
        inv.arg("batch");
        for p in &batch {
            inv.arg(p.keys.len()).arg(p.args.len());
            for a in &p.args {
                inv.arg(a);
            }
            for k in &p.keys {
                inv.key(k);
            }
        }
        match db.script::<Vec<Vec<String>>>(&inv).await {
            Ok(replies) if replies.len() == batch.len() => {
                for (p, reply) in batch.into_iter().zip(replies) {
                    let result = if reply.first().map(String::as_str) == Some("error") {
                        Err(redis::RedisError::from((
                            redis::ErrorKind::Extension,
                            "commit script error",
                            reply.get(1).cloned().unwrap_or_default(),
                        )))
                    } else {
                        Ok(reply)
                    };
                    let _ = p.reply.send(result);
                }
            }
            Ok(replies) => {
                let n = replies.len();
                for p in batch {
                    let _ = p.reply.send(Err(redis::RedisError::from((
                        redis::ErrorKind::Extension,
                        "batched commit reply",
                        format!("{n} replies for more commits"),
                    ))));
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(redis::RedisError::from((
                        e.kind(),
                        "batched commit failed",
                        e.to_string(),
                    ))));
                }
            }
        }
    }
}

/// Finds a compiled workflow by content hash outside Redis (the workflow files a server
/// offers), so that a definition Redis lost is written back as soon as a run needs it.
#[derive(Clone)]
pub struct DefinitionSource(Arc<FindPlan>);

/// Looks a compiled workflow up by content hash.
type FindPlan = dyn Fn(&str) -> Option<Arc<Plan>> + Send + Sync;

impl DefinitionSource {
    /// A source that looks plans up with `find`.
    pub fn new(find: impl Fn(&str) -> Option<Arc<Plan>> + Send + Sync + 'static) -> Self {
        Self(Arc::new(find))
    }
}

impl std::fmt::Debug for DefinitionSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DefinitionSource")
    }
}

/// Whether a job a worker received is still worth running (see [`Store::check_job`]).
#[derive(Debug, Clone, PartialEq)]
pub enum JobCheck {
    /// The run exists and the job is its current attempt; the run as it is.
    Current(Box<RunSnapshot>),
    /// The run does not exist (it was never committed, or Redis lost it).
    RunGone,
    /// The run exists but no longer records this job (revoked, already reported, superseded).
    Stale,
}

/// What a run's stored fields (its hash, as `HGETALL` returns it) say of one of its jobs: see
/// [`Store::check_job`]. The step queue asks with the batch it read, in the same round trip as
/// the jobs' companies.
pub fn job_check(mut fields: HashMap<String, String>, ack: &Ack) -> Result<JobCheck> {
    let at = fields.remove(&format!("j:{}:{}", ack.step, ack.seq));
    Ok(match (decode_run(fields)?, at) {
        (None, _) => JobCheck::RunGone,
        (Some(snap), Some(at)) if parse_job_ref(&at) == (ack.lane, ack.entry.as_str()) => {
            JobCheck::Current(Box::new(snap))
        }
        (Some(_), _) => JobCheck::Stale,
    })
}

#[derive(Serialize, Default)]
struct CommitPlan<'a> {
    run: String,
    /// The run's company (jobs carry it, so workers fetch its policy with the batch).
    #[serde(skip_serializing_if = "String::is_empty")]
    company: String,
    group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<AckRef<'a>>,
    /// The transition starts the run: its jobs go to the shard's new-runs stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    new: bool,
    /// How many field/value pairs of the run hash are written (ARGV[4…]).
    set: usize,
    /// The run hash's fields to remove.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    del: Vec<String>,
    /// History entries: their ARGV indexes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hist: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    jobs: Vec<JobEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    zadd: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    zrem: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    revoke: Vec<RevokeEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead: Option<String>,
    /// Open gates to list in approvers' inboxes: (ms, approver's inbox key index, step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbox_add: Vec<(String, u32, String)>,
    /// Gates to take out of approvers' inboxes: (approver's inbox key index, step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    inbox_rem: Vec<(u32, String)>,
    /// Index keys (1-based, in KEYS) of the run's company index (added on creation) and of the
    /// status indexes it leaves and enters.
    #[serde(skip_serializing_if = "Option::is_none")]
    idx_company: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idx_from: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idx_to: Option<u32>,
    /// The run's creation time (µs): the score in the company and status indexes.
    #[serde(skip_serializing_if = "String::is_empty")]
    idx_score: String,
    /// Keys beyond the eight fixed ones (indexes and inboxes), passed as KEYS[9…].
    #[serde(skip)]
    extra_keys: Vec<String>,
    /// The strings `hist` and `jobs` name (0-based here; ARGV indexes once the fields to write
    /// are known).
    #[serde(skip)]
    strings: Vec<String>,
}

impl CommitPlan<'_> {
    /// The KEYS index of `key`, adding it to the extra keys if needed.
    fn key(&mut self, key: String) -> u32 {
        let pos = match self.extra_keys.iter().position(|k| k == &key) {
            Some(p) => p,
            None => {
                self.extra_keys.push(key);
                self.extra_keys.len() - 1
            }
        };
        u32::try_from(pos).expect("fewer than 2^32 keys") + 9
    }

    /// Adds a string argument; its index in `strings`.
    fn string(&mut self, value: String) -> usize {
        self.strings.push(value);
        self.strings.len() - 1
    }
}

#[derive(Serialize)]
struct AckRef<'a> {
    id: &'a str,
    /// The job came from the new-runs stream.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    new: bool,
    step: &'a str,
    seq: u32,
}

#[derive(Serialize)]
struct JobEntry {
    step: String,
    seq: u32,
    /// The job's JSON: its ARGV index.
    a: usize,
}

#[derive(Serialize)]
struct RevokeEntry {
    step: String,
    seq: u32,
    #[serde(rename = "ref")]
    job: String,
}

enum Reply {
    Ok { version: u64, revoked: Vec<JobRef> },
    Conflict(Option<Box<RunSnapshot>>),
    StaleTimer,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

impl Store {
    /// A store on `db` with the given key layout.
    pub fn new(db: Db, keys: Keys, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            keys,
            clock,
            commit: Arc::new(Script::new(COMMIT)),
            plans: Arc::default(),
            secrets: None,
            fallback: None,
            metrics: Arc::default(),
            limits: Limits::default(),
            durability: Durability::default(),
            lanes: Arc::default(),
            batches: Arc::default(),
        }
    }

    /// This store, confirming new runs durable in mode `durability`.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Checks that the Redis server offers the configured durability; call at start. A server
    /// whose `CONFIG` command is disabled (managed Redis) is trusted for `always`.
    pub async fn check_durability(&self) -> Result<()> {
        // Every master of a cluster holds runs: the weakest setting among them is the one that
        // counts (`weak` says whether a value is the weaker kind).
        let masters = self.db.masters().await.unwrap_or_else(|_| vec![Node::Any]);
        let config = |name: &'static str, weak: fn(&str) -> bool| {
            let masters = &masters;
            async move {
                let mut found: Option<String> = None;
                for node in masters {
                    let value = self
                        .db
                        .query_on::<Vec<String>>(node, redis::cmd("CONFIG").arg("GET").arg(name))
                        .await
                        .ok()
                        .and_then(|v| v.get(1).cloned());
                    if let Some(v) = value
                        && (found.is_none() || weak(&v))
                    {
                        found = Some(v);
                    }
                }
                found
            }
        };
        let aof = config("appendonly", |v| v == "no").await;
        let fsync = config("appendfsync", |v| v != "always").await;
        match self.durability {
            Durability::Everysec => {
                if aof.as_deref() == Some("no") {
                    warn!(
                        "redis.durability = everysec, but the Redis server has appendonly no: every run since its last snapshot is lost if it stops; set appendonly yes (deploy/redis.conf)"
                    );
                }
                Ok(())
            }
            Durability::Always => match (aof.as_deref(), fsync.as_deref()) {
                (Some("yes"), Some("always")) | (None, _) => Ok(()),
                (aof, fsync) => Err(Error::Durability(format!(
                    "redis.durability = always needs the Redis server to fsync its AOF before every reply, but it has appendonly {} and appendfsync {}; set `appendonly yes` and `appendfsync always` in its redis.conf (or CONFIG SET), or choose redis.durability = everysec",
                    aof.unwrap_or("?"),
                    fsync.unwrap_or("?")
                ))),
            },
            Durability::Waitaof => {
                let mut probe = Ok(redis::Value::Nil);
                let mut at = Node::Any;
                for node in &masters {
                    probe = self
                        .db
                        .query_on::<redis::Value>(node, redis::cmd("WAITAOF").arg(0).arg(0).arg(1))
                        .await;
                    at = node.clone();
                    if probe.is_err() {
                        break;
                    }
                }
                if let Err(e) = probe {
                    let version = self.server_version(&at).await;
                    return Err(Error::Durability(format!(
                        "redis.durability = waitaof needs WAITAOF (Redis 7.2 or later); this server (version {version}) answered: {e}; upgrade Redis, or choose redis.durability = always (appendfsync always) or everysec"
                    )));
                }
                if aof.as_deref() == Some("no") {
                    return Err(Error::Durability("redis.durability = waitaof needs the Redis server's AOF: set appendonly yes (deploy/redis.conf)".to_owned()));
                }
                if fsync.as_deref() != Some("always") {
                    for node in &masters {
                        let version = self.server_version(node).await;
                        if crate::durable::waitaof_is_broken(&version) {
                            return Err(Error::Durability(format!(
                                "redis.durability = waitaof cannot be trusted on Redis {version}: its WAITAOF can answer before the AOF is fsynced under appendfsync {} (redis/redis#13793, fixed in 2025), so a power cut loses runs it confirmed; use a Redis release with that fix (or 7.2), or choose redis.durability = always",
                                fsync.as_deref().unwrap_or("everysec")
                            )));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The `redis_version` of the server (or the cluster's master `node`), or `unknown`.
    async fn server_version(&self, node: &Node) -> String {
        self.db
            .query_on::<String>(node, redis::cmd("INFO").arg("server"))
            .await
            .ok()
            .and_then(|i| {
                i.lines().find_map(|l| {
                    l.strip_prefix("redis_version:")
                        .map(|v| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".to_owned())
    }

    /// The durability lane for a new run (started on first use).
    async fn lane(&self, run: RunId) -> Result<Arc<crate::durable::Lane>> {
        let shard = if self.db.is_cluster() {
            self.keys.shard_of(run)
        } else {
            0
        };
        let mut lanes = self.lanes.lock().await;
        if let Some(lane) = lanes.get(&shard) {
            return Ok(lane.clone());
        }
        let lane = Arc::new(
            crate::durable::Lane::start(&self.db, self.keys.durability_marker(shard)).await?,
        );
        lanes.insert(shard, lane.clone());
        Ok(lane)
    }

    /// This store, with `limits` on what one run may store.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits on what one run may store.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// This process's counters and histograms (one registry shared by every clone of the store,
    /// so the queue, the worker, the scheduler and the API count into the same page).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// This store, finding definitions Redis lost in `source` and writing them back.
    pub fn with_definitions(mut self, source: DefinitionSource) -> Self {
        self.fallback = Some(source);
        self
    }

    /// This store, sealing secret inputs with `ring` (without one, a run with a secret input is
    /// refused).
    pub fn with_secrets(mut self, ring: Option<Arc<crate::secrets::Keyring>>) -> Self {
        self.secrets = ring;
        self
    }

    /// The keyring secrets are sealed and opened with, if this process has one.
    pub fn secrets(&self) -> Option<&crate::secrets::Keyring> {
        self.secrets.as_deref()
    }

    /// [`Store::secrets`], shared.
    pub fn secrets_arc(&self) -> Option<Arc<crate::secrets::Keyring>> {
        self.secrets.clone()
    }

    /// The connection.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Checks the shard count against the namespace's and creates the consumer groups. Every
    /// process calls this at start.
    pub async fn prepare(&self) -> Result<()> {
        let meta = self.keys.meta();
        let mut pipe = redis::pipe();
        pipe.hset_nx(&meta, "shards", self.keys.shards())
            .ignore()
            .hget(&meta, "shards");
        let (stored,): (u16,) = self.db.pipe(&pipe).await?;
        if stored != self.keys.shards() {
            return Err(Error::ShardMismatch {
                namespace: self.keys.namespace().to_owned(),
                stored,
                configured: self.keys.shards(),
            });
        }
        for (shard, lane) in self
            .keys
            .all_shards()
            .flat_map(|s| Lane::ALL.map(|l| (s, l)))
        {
            let created: redis::RedisResult<()> = self
                .db
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(self.keys.stream(shard, lane))
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM"),
                )
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Stores a definition so workers can load it by hash: one `SET NX`, every time a run is
    /// created (even when this process has the plan cached), so a definition Redis lost (a
    /// second of AOF, a failover to a lagging replica, a restore) is written back by the next
    /// run of that workflow.
    pub async fn put_definition(&self, plan: &Plan) -> Result<()> {
        let hash = plan.hash().to_owned();
        let json = serde_json::to_string(plan.def()).map_err(corrupt)?;
        let written: Option<String> = self
            .db
            .query(
                redis::cmd("SET")
                    .arg(self.keys.definition(&hash))
                    .arg(json)
                    .arg("NX"),
            )
            .await?;
        let cached = self
            .plans
            .read()
            .expect("the plan cache lock is never poisoned")
            .contains_key(&hash);
        if written.is_some() && cached {
            warn!(workflow = %plan.def().name, version = plan.def().version, %hash, "the workflow definition was missing from Redis; wrote it back");
        }
        self.plans
            .write()
            .expect("the plan cache lock is never poisoned")
            .entry(hash)
            .or_insert_with(|| Arc::new(plan.clone()));
        Ok(())
    }

    /// The plan with this content hash (cached: definitions never change).
    pub async fn plan(&self, hash: &str) -> Result<Arc<Plan>> {
        if let Some(plan) = self
            .plans
            .read()
            .expect("the plan cache lock is never poisoned")
            .get(hash)
        {
            return Ok(plan.clone());
        }
        let json: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(self.keys.definition(hash)))
            .await?;
        let Some(json) = json else {
            // Lost by Redis: written back from the workflow files, if this process has them.
            if let Some(plan) = self.fallback.as_ref().and_then(|f| (f.0)(hash)) {
                self.put_definition(&plan).await?;
                warn!(workflow = %plan.def().name, version = plan.def().version, %hash, "a run's workflow definition was missing from Redis; wrote it back from the workflow files");
                return Ok(plan);
            }
            return Err(Error::NoSuchDefinition(hash.to_owned()));
        };
        let def: WorkflowDef =
            serde_json::from_str(&json).map_err(|e| corrupt(format!("definition {hash}: {e}")))?;
        let plan = Plan::compile(def, None)
            .map_err(|p| corrupt(format!("definition {hash} no longer compiles: {p:?}")))?;
        let plan = Arc::new(plan);
        self.plans
            .write()
            .expect("the plan cache lock is never poisoned")
            .insert(hash.to_owned(), plan.clone());
        Ok(plan)
    }

    /// Creates a run and starts it (or schedules its start): one round trip once the definition
    /// is stored.
    pub async fn create_run(&self, new: NewRun) -> Result<RunId> {
        let company_inputs = new
            .company_settings
            .get("defaults")
            .and_then(|d| d.get("inputs"))
            .and_then(Value::as_object);
        let given = steward_core::inputs::with_company_defaults(
            new.plan.def(),
            &new.inputs,
            company_inputs,
        );
        let inputs = prepare_inputs(new.plan.def(), &given).map_err(Error::Inputs)?;
        let size = serde_json::to_string(&inputs).map_err(corrupt)?.len();
        if size > self.limits.max_input_bytes {
            return Err(Error::TooLarge {
                what: "the run's inputs",
                field: "inputs",
                size,
                limit: self.limits.max_input_bytes,
                setting: "limits.max-input-bytes",
            });
        }
        self.put_definition(&new.plan).await?;
        let now = self.clock.now();
        let run_id = RunId::from_ulid(ulid::Ulid::from_datetime(now.to_datetime().into()));
        // Secret inputs are stored sealed for this run, everywhere the run goes.
        let inputs =
            crate::secrets::runs::seal_inputs(self.secrets(), new.plan.def(), run_id, inputs)
                .map_err(Error::Inputs)?;
        let ctx = RunContext {
            run_id,
            workflow: WorkflowRef {
                name: new.plan.def().name.clone(),
                version: new.plan.def().version,
                hash: new.plan.hash().to_owned(),
            },
            company: new.company,
            company_settings: new.company_settings,
            inputs,
            requested_by: new.requested_by,
            ticket: new.ticket,
            created_at: now,
        };
        let state = initial_state(&new.plan, now);
        let event = Event::RunCreated {
            start_at: new.start_at,
        };
        let t = transition(&new.plan, &ctx, &state, &event, &Cx { now }).map_err(Error::Start)?;
        let doc = RunDoc {
            v: RunDoc::VERSION,
            ctx,
            state: t.next,
        };
        let mut plan = self.commit_plan(
            run_id, &doc.ctx, &event, &state, &doc.state, &t.effects, now,
        )?;
        plan.created = Some(now.as_micros().to_string());
        match self.commit(run_id, 0, None, false, &doc, plan).await? {
            Reply::Ok { .. } => {
                if self.durability == Durability::Waitaof {
                    let lane = self.lane(run_id).await?;
                    match lane.wait().await {
                        Ok(local) if local >= 1 => {}
                        Ok(_) => return Err(Error::NotDurable(run_id)),
                        Err(e) => {
                            warn!(run = %run_id, error = %e, "no WAITAOF answer for a new run");
                            return Err(Error::NotDurable(run_id));
                        }
                    }
                }
                Ok(run_id)
            }
            Reply::Conflict(_) | Reply::StaleTimer => {
                Err(corrupt(format!("run id {run_id} was already taken")))
            }
        }
    }

    /// Whether a job received from the queue is still the run's current attempt, and the run as
    /// it is: one read of the run hash (its parts, and the field that records where the job is
    /// queued). Workers ask this right before running an op, so a job received before Redis
    /// lost writes (or revoked since) is never run for a run that no longer exists or has moved
    /// on.
    pub async fn check_job(&self, run: RunId, ack: &Ack) -> Result<JobCheck> {
        let fields: HashMap<String, String> = self
            .db
            .query(redis::cmd("HGETALL").arg(self.keys.run(run)))
            .await?;
        job_check(fields, ack)
    }

    /// Acknowledges a job without changing its run (it was not run: see [`Store::check_job`]).
    pub async fn drop_job(&self, run: RunId, ack: &Ack) -> Result<()> {
        self.ack_only(run, Some((ack, None)), None).await
    }

    /// A run's document.
    pub async fn load(&self, run: RunId) -> Result<Option<RunSnapshot>> {
        let fields: HashMap<String, String> = self
            .db
            .query(redis::cmd("HGETALL").arg(self.keys.run(run)))
            .await?;
        decode_run(fields)
    }

    /// Runs' documents, in one round trip; a run that does not exist, or does not parse, is
    /// `None` (logged).
    pub async fn load_many(&self, runs: &[RunId]) -> redis::RedisResult<Vec<Option<RunSnapshot>>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for run in runs {
            pipe.cmd("HGETALL").arg(self.keys.run(*run));
        }
        let replies: Vec<HashMap<String, String>> = self.db.pipe(&pipe).await?;
        Ok(runs
            .iter()
            .zip(replies)
            .map(|(run, fields)| match decode_run(fields) {
                Ok(snap) => snap,
                Err(e) => {
                    warn!(run.id = %run, error = %e, "a stored run does not parse");
                    None
                }
            })
            .collect())
    }

    /// Applies an event to a run. `snapshot` (a document the caller already holds, e.g. the one
    /// its job carried) saves a read; `ack` is the job this event reports on; `timer` is the
    /// timer that fired (it must still be armed, and is disarmed in the same script).
    pub async fn apply(
        &self,
        run: RunId,
        event: &Event,
        snapshot: Option<RunSnapshot>,
        ack: Option<&Ack>,
        timer: Option<&str>,
    ) -> Result<Outcome> {
        self.apply_acking(run, event, snapshot, ack.map(|a| (a, None)), timer)
            .await
    }

    /// [`Store::apply`], where the acknowledgement can also move the job to the dead-letter
    /// stream (`Some(job JSON)`), in the same script as the transition.
    async fn apply_acking(
        &self,
        run: RunId,
        event: &Event,
        snapshot: Option<RunSnapshot>,
        ack: Option<(&Ack, Option<&str>)>,
        timer: Option<&str>,
    ) -> Result<Outcome> {
        let mut snap = match snapshot {
            Some(s) => s,
            None => match self.load(run).await? {
                Some(s) => s,
                None => {
                    self.ack_only(run, ack, timer).await?;
                    return Err(Error::NoSuchRun(run));
                }
            },
        };
        for _ in 0..MAX_CONFLICTS {
            let plan = self.plan(&snap.doc.ctx.workflow.hash).await?;
            let now = self.clock.now();
            let t = match transition(&plan, &snap.doc.ctx, &snap.doc.state, event, &Cx { now }) {
                Ok(t) => t,
                Err(e) => {
                    self.ack_only(run, ack, timer).await?;
                    return Ok(Outcome::Refused(e));
                }
            };
            if let Some(reason) = t.ignored {
                trace!(run.id = %run, event = event.name(), %reason, "event ignored");
                self.ack_only(run, ack, timer).await?;
                return Ok(Outcome::Ignored { reason });
            }
            let doc = RunDoc {
                v: RunDoc::VERSION,
                ctx: snap.doc.ctx.clone(),
                state: t.next,
            };
            let mut plan = self.commit_plan(
                run,
                &doc.ctx,
                event,
                &snap.doc.state,
                &doc.state,
                &t.effects,
                now,
            )?;
            plan.ack = ack.map(|(a, _)| AckRef {
                id: &a.entry,
                new: a.lane == Lane::New,
                step: a.step.as_str(),
                seq: a.seq,
            });
            plan.dead = ack.and_then(|(_, dead)| dead.map(str::to_owned));
            plan.timer = timer.map(str::to_owned);
            match self
                .commit(
                    run,
                    snap.version,
                    Some(&snap.doc.state),
                    snap.legacy,
                    &doc,
                    plan,
                )
                .await?
            {
                Reply::Ok { version, revoked } => {
                    // Effects are not logged: jobs carry inputs taken from tickets.
                    trace!(run.id = %run, version, effects = t.effects.len(), "transition committed");
                    if revoked.is_empty() {
                        return Ok(Outcome::Applied {
                            version,
                            state: doc.state,
                        });
                    }
                    debug!(run.id = %run, jobs = revoked.len(), "jobs revoked");
                    let follow = Event::JobsRevoked { jobs: revoked };
                    return Box::pin(self.apply(
                        run,
                        &follow,
                        Some(RunSnapshot {
                            version,
                            doc,
                            legacy: false,
                        }),
                        None,
                        None,
                    ))
                    .await;
                }
                Reply::Conflict(Some(current)) => snap = *current,
                Reply::Conflict(None) => {
                    self.ack_only(run, ack, timer).await?;
                    return Err(Error::NoSuchRun(run));
                }
                Reply::StaleTimer => {
                    return Ok(Outcome::Ignored {
                        reason: "the timer had already fired".to_owned(),
                    });
                }
            }
        }
        warn!(run.id = %run, event = event.name(), "too many conflicting writes");
        Err(Error::Contention(MAX_CONFLICTS))
    }

    /// Acknowledges a job (moving it to the dead-letter stream if asked) and disarms a timer
    /// without changing the run.
    async fn ack_only(
        &self,
        run: RunId,
        ack: Option<(&Ack, Option<&str>)>,
        timer: Option<&str>,
    ) -> Result<()> {
        if ack.is_none() && timer.is_none() {
            return Ok(());
        }
        let keys = self.keys.commit_keys(run);
        let mut plan = CommitPlan {
            run: run.to_string(),
            group: GROUP,
            ack: ack.map(|(a, _)| AckRef {
                id: &a.entry,
                new: a.lane == Lane::New,
                step: a.step.as_str(),
                seq: a.seq,
            }),
            dead: ack.and_then(|(_, dead)| dead.map(str::to_owned)),
            ..CommitPlan::default()
        };
        if let Some(timer) = timer {
            plan.zrem.push(timer.to_owned());
        }
        let plan = serde_json::to_string(&plan).map_err(corrupt)?;
        let mut inv = self.commit.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg("0").arg("").arg(plan);
        self.db.script::<Vec<String>>(&inv).await?;
        Ok(())
    }

    /// Reports a job's step failed and moves the job to the dead-letter stream, in the same
    /// script (it was delivered too often without an outcome: its worker keeps dying on it).
    pub async fn park(
        &self,
        run: RunId,
        event: &Event,
        ack: &Ack,
        job_json: &str,
    ) -> Result<Outcome> {
        match self
            .apply_acking(run, event, None, Some((ack, Some(job_json))), None)
            .await
        {
            Err(Error::NoSuchRun(_)) => Ok(Outcome::Ignored {
                reason: "the run no longer exists".to_owned(),
            }),
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_plan(
        &self,
        run: RunId,
        ctx: &RunContext,
        event: &Event,
        before: &RunState,
        after: &RunState,
        effects: &[Effect],
        now: Timestamp,
    ) -> Result<CommitPlan<'static>> {
        let shard = self.keys.shard_of(run);
        let mut plan = CommitPlan {
            run: run.to_string(),
            company: ctx.company.to_string(),
            group: GROUP,
            // A run that has not started a step yet queues its first jobs behind no one's
            // continuation: workers read the new-runs stream after the other (see `queue`).
            new: matches!(
                before.status,
                RunStatus::Created | RunStatus::Scheduled { .. }
            ),
            ..CommitPlan::default()
        };
        let mut event_json = serde_json::to_value(event).map_err(corrupt)?;
        redact(&mut event_json);
        let entry = serde_json::json!({
            "at": now,
            "event": event_json,
            "status": after.status.name(),
            "changes": diff(before, after),
        });
        // One line of the run's history log (JSON never holds a raw newline).
        let at = plan.string(format!("{entry}\n"));
        plan.hist.push(at);
        let (from, to) = (before.status.name(), after.status.name());
        if from != to {
            plan.idx_score = ctx.created_at.as_micros().to_string();
            if matches!(before.status, RunStatus::Created) {
                plan.idx_company = Some(plan.key(self.keys.runs_of_company(shard, &ctx.company)));
            } else {
                plan.idx_from = Some(plan.key(self.keys.runs_in_status(shard, from)));
            }
            plan.idx_to = Some(plan.key(self.keys.runs_in_status(shard, to)));
        }
        for effect in effects {
            match effect {
                Effect::EnqueueStep { job } => {
                    let a = plan.string(json(job)?);
                    plan.jobs.push(JobEntry {
                        step: job.step.to_string(),
                        seq: job.seq,
                        a,
                    });
                }
                Effect::ScheduleTimer { key, at } => plan
                    .zadd
                    .push((at.as_millis().to_string(), key.to_string())),
                Effect::CancelTimer { key } => plan.zrem.push(key.to_string()),
                Effect::RevokeJobs { jobs } => {
                    for job in jobs {
                        plan.revoke.push(RevokeEntry {
                            step: job.step.to_string(),
                            seq: job.seq,
                            job: serde_json::to_string(job).map_err(corrupt)?,
                        });
                    }
                }
                Effect::RunEnded { status } => plan.ended = Some(status.clone()),
                Effect::IndexGate {
                    step,
                    approvers,
                    since,
                } => {
                    for a in approvers {
                        let k = plan.key(self.keys.inbox(shard, a));
                        plan.inbox_add
                            .push((since.as_millis().to_string(), k, step.to_string()));
                    }
                    // The shard's index of open gates, for their age in `/metrics`.
                    let k = plan.key(self.keys.gates(shard));
                    plan.inbox_add
                        .push((since.as_millis().to_string(), k, step.to_string()));
                }
                Effect::UnindexGate { step, approvers } => {
                    for a in approvers {
                        let k = plan.key(self.keys.inbox(shard, a));
                        plan.inbox_rem.push((k, step.to_string()));
                    }
                    let k = plan.key(self.keys.gates(shard));
                    plan.inbox_rem.push((k, step.to_string()));
                }
            }
        }
        Ok(plan)
    }

    /// Commits `doc` as the run's next version. `before` is the state the transition was
    /// computed from (`None` for a new run); only the parts that changed are written, unless the
    /// run is stored whole by an earlier build (`legacy`).
    async fn commit(
        &self,
        run: RunId,
        expected: u64,
        before: Option<&RunState>,
        legacy: bool,
        doc: &RunDoc,
        mut plan: CommitPlan<'_>,
    ) -> Result<Reply> {
        let keys = self.keys.commit_keys(run);
        let (set, del) = parts(before, doc, legacy)?;
        // Checked when a run is created; later growth comes from step outputs, each capped by
        // the worker (refusing a worker's outcome here would leave its job to be run again).
        if expected == 0 {
            let size: usize = set.iter().map(|(f, v)| f.len() + v.len()).sum();
            if size > self.limits.max_document_bytes {
                return Err(Error::TooLarge {
                    what: "the run's document",
                    field: "inputs",
                    size,
                    limit: self.limits.max_document_bytes,
                    setting: "limits.max-document-bytes",
                });
            }
        }
        let extra = std::mem::take(&mut plan.extra_keys);
        let strings = std::mem::take(&mut plan.strings);
        // ARGV: 1 version, 2 mode, 3 plan, then the pairs, then the strings.
        let offset = 4 + 2 * set.len();
        plan.set = set.len();
        plan.del = del;
        for h in &mut plan.hist {
            *h += offset;
        }
        for j in &mut plan.jobs {
            j.a += offset;
        }
        let plan = serde_json::to_string(&plan).map_err(corrupt)?;
        let mut args = Vec::with_capacity(3 + 2 * set.len() + strings.len());
        args.extend([expected.to_string(), "w".to_owned(), plan]);
        for (field, value) in set {
            args.extend([field, value]);
        }
        args.extend(strings);
        let keys: Vec<String> = keys.into_iter().chain(extra).collect();
        // One lane per shard, on a single server too: one lane for all (measured) cut script
        // calls from 0.35 to 0.08 per step but not Redis's CPU per step (the cost is in each
        // commit's work, not the calls), and doubled a workflow's time under way, since every
        // commit then waits for the one call in flight.
        let reply = self
            .batches
            .send(&self.db, &self.commit, self.keys.shard_of(run), keys, args)
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let version = reply
                    .get(1)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| corrupt("commit reply"))?;
                let revoked = reply[2..]
                    .iter()
                    .map(|r| {
                        serde_json::from_str(r).map_err(|e| corrupt(format!("revoked job: {e}")))
                    })
                    .collect::<Result<_>>()?;
                Ok(Reply::Ok { version, revoked })
            }
            Some("conflict") => {
                let fields: HashMap<String, String> = reply[2..]
                    .chunks_exact(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect();
                Ok(Reply::Conflict(decode_run(fields)?.map(Box::new)))
            }
            Some("stale_timer") => Ok(Reply::StaleTimer),
            other => Err(corrupt(format!("unexpected commit reply {other:?}"))),
        }
    }

    /// Removes a timer that can never be fired (its entry is malformed).
    pub async fn remove_timer(&self, shard: u16, member: &str) -> Result<()> {
        self.db
            .query::<()>(redis::cmd("ZREM").arg(self.keys.timers(shard)).arg(member))
            .await?;
        Ok(())
    }

    /// Moves a timer that could not be fired to `at`, if it is still armed.
    pub async fn defer_timer(&self, shard: u16, member: &str, at: Timestamp) -> Result<()> {
        self.db
            .query::<()>(
                redis::cmd("ZADD")
                    .arg(self.keys.timers(shard))
                    .arg("XX")
                    .arg(at.as_millis())
                    .arg(member),
            )
            .await?;
        Ok(())
    }

    /// A run's history, oldest first: the entries an earlier build wrote to its stream, then
    /// the log.
    pub async fn history(&self, run: RunId) -> Result<Vec<HistoryEntry>> {
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE")
            .arg(self.keys.history(run))
            .arg("-")
            .arg("+")
            .cmd("GET")
            .arg(self.keys.log(run));
        let (stream, log): (redis::streams::StreamRangeReply, Option<String>) =
            self.db.pipe(&pipe).await?;
        let parse = |raw: &str| -> Result<HistoryEntry> {
            serde_json::from_str(raw).map_err(|e| corrupt(format!("history entry: {e}")))
        };
        let mut out = Vec::new();
        for entry in &stream.ids {
            let raw: String = entry
                .get("e")
                .ok_or_else(|| corrupt("history entry without `e`"))?;
            out.push(parse(&raw)?);
        }
        for line in log.as_deref().unwrap_or_default().lines() {
            if !line.is_empty() {
                out.push(parse(line)?);
            }
        }
        Ok(out)
    }

    /// The newest entry id of every shard's ended-runs stream: where to start waiting.
    pub async fn ended_cursor(&self) -> Result<Vec<String>> {
        let mut pipe = redis::pipe();
        for shard in self.keys.all_shards() {
            pipe.cmd("XREVRANGE")
                .arg(self.keys.ended(shard))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<redis::streams::StreamRangeReply> = self.db.pipe(&pipe).await?;
        Ok(replies
            .into_iter()
            .map(|r| {
                r.ids
                    .first()
                    .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
            })
            .collect())
    }
}

/// Parses a stored document.
pub fn parse_doc(json: &str) -> Result<RunDoc> {
    serde_json::from_str(json).map_err(|e| corrupt(format!("run document: {e}")))
}
