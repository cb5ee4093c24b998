//! The benchmark behind `steward bench`: workflows of K sequential no-op steps through the real
//! store, queue and worker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::Map;
use steward_core::Plan;
use steward_schemas::{RunId, RunStatus, StepState, Timestamp};
use steward_workers::{Registry, Services};
use tokio::sync::oneshot;

use crate::companies::Companies;
use crate::db::Db;
use crate::queue::QueueConfig;
use crate::store::{self, NewRun, Store};
use crate::worker::{self, Runtime};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// How many workflows.
    pub workflows: usize,
    /// Steps per workflow (sequential no-ops).
    pub steps: usize,
    /// Worker concurrency.
    pub concurrency: usize,
    /// One workflow at a time instead of all at once.
    pub serial: bool,
    /// Open loop instead: start this many workflows per second, whatever the engine's pace, for
    /// `duration`; `workflows` is ignored.
    pub rate: Option<f64>,
    /// How long the open loop runs.
    pub duration: Duration,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Workflows completed per second.
    pub workflows_per_s: f64,
    /// Steps completed per second.
    pub steps_per_s: f64,
    /// Median end-to-end latency of a workflow (creation to completion), ms.
    pub p50_ms: f64,
    /// 90th percentile of the same, ms.
    pub p90_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// The slowest workflow, ms.
    pub max_ms: f64,
    /// Median latency of one step (from the previous transition's commit to its own), ms.
    pub step_p50_ms: f64,
    /// A workflow's time under way, from its first step's end to its own end (without the wait
    /// for its first step), median.
    pub underway_p50_ms: f64,
    /// The same, 99th percentile.
    pub underway_p99_ms: f64,
    /// Redis round trips the worker made per step.
    pub round_trips_per_step: f64,
    /// Redis round trips the client made per workflow (creating it and waiting for it).
    pub client_round_trips_per_workflow: f64,
    /// Commands Redis executed per step, scripts' inner calls included (`INFO stats`).
    pub redis_commands_per_step: f64,
    /// CPU time the Redis server spent per step, user + system, all its threads (`INFO cpu`), µs.
    pub redis_cpu_us_per_step: f64,
    /// Bytes Redis received per step, from every client (`INFO stats` total_net_input_bytes).
    pub redis_bytes_in_per_step: f64,
    /// Bytes Redis sent per step, to every client (`INFO stats` total_net_output_bytes).
    pub redis_bytes_out_per_step: f64,
    /// Socket reads Redis made per step, from every client (`INFO stats`
    /// total_reads_processed): how many separate arrivals of commands it woke up for. Each costs
    /// a system call and an event-loop turn whether it carries one command or fifty.
    pub redis_reads_per_step: f64,
    /// Socket writes Redis made per step (`INFO stats` total_writes_processed).
    pub redis_writes_per_step: f64,
    /// CPU time this process (the worker and the client that creates and waits for the runs,
    /// together) spent per step, user + system, µs; `None` where `/proc/self/stat` is not there.
    pub process_cpu_us_per_step: Option<f64>,
    /// Redis's own accounting per command while measuring (`INFO commandstats`), costliest
    /// first: a script's time includes the commands it called, which are also listed.
    pub redis_command_costs: Vec<CommandCost>,
    /// The open loop's target rate (workflows/s), when it ran one.
    pub target_rate: Option<f64>,
    /// Workflows measured.
    pub workflows: usize,
    /// Steps per workflow.
    pub steps: usize,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Serial or burst.
    pub mode: &'static str,
    /// Wall time of the measured part, s.
    pub elapsed_s: f64,
    /// Redis's persistence setting while measuring (`appendonly`, `appendfsync`).
    pub redis_persistence: String,
}

/// One command's share of Redis's work while measuring.
#[derive(Debug, Clone, Serialize)]
pub struct CommandCost {
    /// The command (`evalsha`, `xreadgroup`, `hset`, …).
    pub command: String,
    /// Calls per step.
    pub calls_per_step: f64,
    /// Microseconds Redis spent in it per step (its own measure: command execution only, not
    /// reading, parsing or replying).
    pub us_per_step: f64,
}

/// A benchmark failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Runs did not finish.
    #[error("{0}")]
    Stuck(String),
    /// The benchmark company could not be made.
    #[error(transparent)]
    Companies(#[from] crate::companies::Error),
}

fn workflow(steps: usize) -> Plan {
    let mut yaml = String::from("name: bench\nsteps:\n");
    for i in 0..steps {
        if i == 0 {
            yaml.push_str("  - {id: s0, op: noop}\n");
        } else {
            yaml.push_str(&format!(
                "  - {{id: s{i}, op: noop, needs: [s{}]}}\n",
                i - 1
            ));
        }
    }
    Plan::load("bench", &yaml, Some(&Registry::builtin()))
        .expect("the generated benchmark workflow is valid")
}

/// Runs the benchmark: `store` is the client's, `worker_db` the worker's own connection (so
/// their round trips are counted apart). Both must use the same namespace.
pub async fn run(store: Store, worker_db: Db, config: BenchConfig) -> Result<BenchReport, Error> {
    store.prepare().await?;
    let plan = Arc::new(workflow(config.steps.max(1)));
    let (stop_tx, worker) =
        start_worker(&store, &worker_db, &[], config.concurrency.max(1)).await?;

    let new_run = || NewRun {
        plan: plan.clone(),
        company: "bench".parse().expect("a valid company id"),
        company_settings: Map::new(),
        inputs: Map::new(),
        requested_by: "bench".to_owned(),
        start_at: None,
        ticket: None,
    };

    // Warm up: connections, script cache, allocator.
    let warm = config.workflows.clamp(1, 50);
    let mut waiter = Waiter::new(&store).await?;
    let mut ids = HashSet::new();
    for _ in 0..warm {
        ids.insert(store.create_run(new_run()).await?);
    }
    waiter
        .wait_all(&store, &ids, Duration::from_secs(60))
        .await?;

    let redis_before = RedisCounters::read(&store).await?;
    let process_cpu_before = process_cpu_s();
    let worker_rt_before = worker_db.round_trips();
    let client_rt_before = store.db().round_trips();
    let started = Instant::now();
    let mut latencies_ms = Vec::with_capacity(config.workflows);
    let mut runs = Vec::with_capacity(config.workflows);
    if let Some(rate) = config.rate {
        runs = open_loop(&store, rate, config.duration, &new_run).await?;
        let set: HashSet<RunId> = runs.iter().copied().collect();
        waiter
            .wait_all(&store, &set, Duration::from_secs(600))
            .await?;
    } else if config.serial {
        for _ in 0..config.workflows {
            let t0 = Instant::now();
            let id = store.create_run(new_run()).await?;
            waiter
                .wait_all(&store, &HashSet::from([id]), Duration::from_secs(30))
                .await?;
            latencies_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            runs.push(id);
        }
    } else {
        let created: Vec<store::Result<RunId>> = futures::stream::iter(0..config.workflows)
            .map(|_| store.create_run(new_run()))
            .buffer_unordered(256)
            .collect()
            .await;
        runs = created.into_iter().collect::<store::Result<_>>()?;
        let set: HashSet<RunId> = runs.iter().copied().collect();
        waiter
            .wait_all(&store, &set, Duration::from_secs(600))
            .await?;
    }
    let elapsed = started.elapsed();
    let worker_rt = worker_db.round_trips() - worker_rt_before;
    let client_rt = store.db().round_trips() - client_rt_before;
    let redis = RedisCounters::read(&store).await?.since(&redis_before);
    let process_cpu = process_cpu_s().zip(process_cpu_before).map(|(a, b)| a - b);
    let _ = stop_tx.send(());
    let _ = worker.await;

    // Latencies from the runs' own timestamps.
    let mut step_ms = Vec::with_capacity(runs.len() * config.steps);
    let mut e2e_ms = Vec::with_capacity(runs.len());
    let mut underway_ms = Vec::with_capacity(runs.len());
    for chunk in runs.chunks(500) {
        for (id, snap) in chunk.iter().zip(store.load_many(chunk).await?) {
            let doc = snap
                .ok_or_else(|| Error::Stuck(format!("run {id} is gone")))?
                .doc;
            let RunStatus::Completed { at, .. } = doc.state.status else {
                return Err(Error::Stuck(format!(
                    "run {} ended {}",
                    doc.ctx.run_id,
                    doc.state.status.name()
                )));
            };
            e2e_ms.push(ms(at, doc.ctx.created_at));
            let mut prev = doc.ctx.created_at;
            let mut done: Vec<Timestamp> = doc
                .state
                .steps
                .values()
                .filter_map(|r| match r.state {
                    StepState::Succeeded { at, .. } => Some(at),
                    _ => None,
                })
                .collect();
            done.sort();
            if let Some(first) = done.first() {
                underway_ms.push(ms(at, *first));
            }
            for at in done {
                step_ms.push(ms(at, prev));
                prev = at;
            }
        }
    }
    if config.serial {
        e2e_ms = latencies_ms;
    }
    let total_steps = (runs.len() * config.steps) as f64;
    let persistence = persistence(&store)
        .await
        .unwrap_or_else(|_| "unknown".to_owned());
    Ok(BenchReport {
        workflows_per_s: runs.len() as f64 / elapsed.as_secs_f64(),
        steps_per_s: total_steps / elapsed.as_secs_f64(),
        p50_ms: percentile(&mut e2e_ms, 0.50),
        p90_ms: percentile(&mut e2e_ms, 0.90),
        p99_ms: percentile(&mut e2e_ms, 0.99),
        max_ms: percentile(&mut e2e_ms, 1.0),
        step_p50_ms: percentile(&mut step_ms, 0.50),
        underway_p50_ms: percentile(&mut underway_ms, 0.50),
        underway_p99_ms: percentile(&mut underway_ms, 0.99),
        round_trips_per_step: worker_rt as f64 / total_steps,
        client_round_trips_per_workflow: client_rt as f64 / runs.len() as f64,
        redis_commands_per_step: redis.commands as f64 / total_steps,
        redis_cpu_us_per_step: redis.cpu_s * 1e6 / total_steps,
        redis_bytes_in_per_step: redis.bytes_in as f64 / total_steps,
        redis_bytes_out_per_step: redis.bytes_out as f64 / total_steps,
        redis_reads_per_step: redis.reads as f64 / total_steps,
        redis_writes_per_step: redis.writes as f64 / total_steps,
        process_cpu_us_per_step: process_cpu.map(|s| s * 1e6 / total_steps),
        redis_command_costs: redis.costs(total_steps),
        target_rate: config.rate,
        workflows: runs.len(),
        steps: config.steps,
        concurrency: config.concurrency,
        mode: if config.rate.is_some() {
            "open loop"
        } else if config.serial {
            "serial"
        } else {
            "burst"
        },
        elapsed_s: elapsed.as_secs_f64(),
        redis_persistence: persistence,
    })
}

fn ms(a: Timestamp, b: Timestamp) -> f64 {
    a.since(b).as_secs_f64() * 1000.0
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Starts `rate` workflows per second for `duration`, each at its own due time (an open loop:
/// a slow engine does not slow the arrivals), and returns them once all are created. Each run's
/// latency is measured from its own creation, so a late start is not hidden.
async fn open_loop(
    store: &Store,
    rate: f64,
    duration: Duration,
    new_run: &(impl Fn() -> NewRun + Sync),
) -> Result<Vec<RunId>, Error> {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let created: Vec<store::Result<RunId>> = futures::stream::iter(0..total)
        .map(|i| async move {
            tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
            store.create_run(new_run()).await
        })
        .buffer_unordered(4096)
        .collect()
        .await;
    Ok(created.into_iter().collect::<store::Result<_>>()?)
}

/// This process's CPU time so far, user + system, in seconds (Linux: `/proc/self/stat`, in the
/// kernel's clock ticks of 1/100 s).
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces) come the fields from the
    // third on: utime and stime are the 14th and 15th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Redis's own counters: commands, CPU and network bytes, from `INFO`.
#[derive(Debug, Clone, Default)]
struct RedisCounters {
    commands: u64,
    cpu_s: f64,
    bytes_in: u64,
    bytes_out: u64,
    reads: u64,
    writes: u64,
    /// Per command: (calls, µs).
    per_command: std::collections::BTreeMap<String, (u64, u64)>,
}

impl RedisCounters {
    /// Summed over the server, or every master of a cluster.
    async fn read(store: &Store) -> Result<Self, Error> {
        let mut total = Self::default();
        for node in store.db().masters().await? {
            let info: String = store.db().query_on(&node, &redis::cmd("INFO")).await?;
            let stats: String = store
                .db()
                .query_on(&node, redis::cmd("INFO").arg("commandstats"))
                .await?;
            let one = Self::parse(&info, &stats);
            total.commands += one.commands;
            total.cpu_s += one.cpu_s;
            total.bytes_in += one.bytes_in;
            total.bytes_out += one.bytes_out;
            total.reads += one.reads;
            total.writes += one.writes;
            for (name, (calls, us)) in one.per_command {
                let e = total.per_command.entry(name).or_default();
                e.0 += calls;
                e.1 += us;
            }
        }
        Ok(total)
    }

    fn parse(info: &str, commandstats: &str) -> Self {
        let field = |name: &str| -> f64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Self {
            commands: field("total_commands_processed") as u64,
            cpu_s: field("used_cpu_user") + field("used_cpu_sys"),
            bytes_in: field("total_net_input_bytes") as u64,
            bytes_out: field("total_net_output_bytes") as u64,
            reads: field("total_reads_processed") as u64,
            writes: field("total_writes_processed") as u64,
            per_command: commandstats
                .lines()
                .filter_map(|l| {
                    // cmdstat_hset:calls=12,usec=34,usec_per_call=2.83,…
                    let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                    let mut calls = None;
                    let mut usec = None;
                    for kv in rest.split(',') {
                        match kv.split_once('=') {
                            Some(("calls", v)) => calls = v.parse().ok(),
                            Some(("usec", v)) => usec = v.parse().ok(),
                            _ => {}
                        }
                    }
                    Some((name.to_owned(), (calls?, usec?)))
                })
                .collect(),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            commands: self.commands.saturating_sub(before.commands),
            cpu_s: (self.cpu_s - before.cpu_s).max(0.0),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            reads: self.reads.saturating_sub(before.reads),
            writes: self.writes.saturating_sub(before.writes),
            per_command: self
                .per_command
                .iter()
                .map(|(name, (calls, us))| {
                    let (c0, u0) = before.per_command.get(name).copied().unwrap_or_default();
                    (
                        name.clone(),
                        (calls.saturating_sub(c0), us.saturating_sub(u0)),
                    )
                })
                .filter(|(_, (calls, _))| *calls > 0)
                .collect(),
        }
    }

    /// The commands' costs per step, costliest first.
    fn costs(&self, steps: f64) -> Vec<CommandCost> {
        let mut v: Vec<CommandCost> = self
            .per_command
            .iter()
            .map(|(name, (calls, us))| CommandCost {
                command: name.clone(),
                calls_per_step: *calls as f64 / steps,
                us_per_step: *us as f64 / steps,
            })
            .collect();
        v.sort_by(|a, b| b.us_per_step.total_cmp(&a.us_per_step));
        v
    }
}

/// The server's persistence (a cluster's first master's).
async fn persistence(store: &Store) -> Result<String, Error> {
    let node = store
        .db()
        .masters()
        .await?
        .into_iter()
        .next()
        .unwrap_or(crate::db::Node::Any);
    let aof: Vec<String> = store
        .db()
        .query_on(&node, redis::cmd("CONFIG").arg("GET").arg("appendonly"))
        .await?;
    let fsync: Vec<String> = store
        .db()
        .query_on(&node, redis::cmd("CONFIG").arg("GET").arg("appendfsync"))
        .await?;
    Ok(format!(
        "appendonly {} appendfsync {}",
        aof.get(1).map_or("?", String::as_str),
        fsync.get(1).map_or("?", String::as_str)
    ))
}

/// Waits for runs to end, reading the shards' ended-runs streams from where they were when it
/// was created.
#[derive(Debug)]
pub struct Waiter {
    cursor: Vec<String>,
    ended: HashSet<RunId>,
    /// One server: a blocking read over every shard's stream. A cluster refuses a read over
    /// several slots, so there the streams are read without blocking (one pipeline, split per
    /// slot) every few milliseconds.
    conn: Option<crate::db::Blocking>,
}

impl Waiter {
    /// Starts from the current end of every ended-runs stream.
    pub async fn new(store: &Store) -> Result<Self, Error> {
        let conn = if store.db().is_cluster() {
            None
        } else {
            Some(store.db().blocking(Duration::from_secs(1), None).await?)
        };
        Ok(Self {
            cursor: store.ended_cursor().await?,
            ended: HashSet::new(),
            conn,
        })
    }

    /// Waits until every run in `runs` has ended, or `timeout` passes.
    pub async fn wait_all(
        &mut self,
        store: &Store,
        runs: &HashSet<RunId>,
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let keys = store.keys();
        let streams: Vec<String> = keys.all_shards().map(|s| keys.ended(s)).collect();
        while !runs.iter().all(|r| self.ended.contains(r)) {
            if Instant::now() > deadline {
                let left = runs.iter().filter(|r| !self.ended.contains(r)).count();
                return Err(Error::Stuck(format!(
                    "{left} runs had not ended after {timeout:?}"
                )));
            }
            let replies: Vec<redis::streams::StreamKey> = match &mut self.conn {
                Some(conn) => {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT")
                        .arg(10_000)
                        .arg("BLOCK")
                        .arg(1000)
                        .arg("STREAMS")
                        .arg(&streams)
                        .arg(&self.cursor);
                    let reply: Option<redis::streams::StreamReadReply> = conn.query(&cmd).await?;
                    reply.map(|r| r.keys).unwrap_or_default()
                }
                None => {
                    let mut pipe = redis::pipe();
                    for (stream, cursor) in streams.iter().zip(&self.cursor) {
                        pipe.cmd("XREAD")
                            .arg("COUNT")
                            .arg(10_000)
                            .arg("STREAMS")
                            .arg(stream)
                            .arg(cursor);
                    }
                    let replies: Vec<Option<redis::streams::StreamReadReply>> =
                        store.db().pipe(&pipe).await?;
                    let keys: Vec<_> = replies.into_iter().flatten().flat_map(|r| r.keys).collect();
                    if keys.iter().all(|k| k.ids.is_empty()) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    keys
                }
            };
            for stream in replies {
                let Some(i) = streams.iter().position(|s| s == &stream.key) else {
                    continue;
                };
                for entry in stream.ids {
                    if let Some(Ok(run)) = entry.get::<String>("r").map(|r| r.parse::<RunId>()) {
                        self.ended.insert(run);
                    }
                    self.cursor[i] = entry.id;
                }
            }
        }
        Ok(())
    }
}

/// What the gate benchmarks measured.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// Gates decided.
    pub gates: usize,
    /// Decision through the HTTP API (auth, load, commit) → the next step in the queue: p50, ms.
    pub api_p50_ms: f64,
    /// The same, p99, ms.
    pub api_p99_ms: f64,
    /// Decision applied in-process (load + one commit script) → the next step in the queue, p50, ms.
    pub engine_p50_ms: f64,
    /// The same, p99, ms.
    pub engine_p99_ms: f64,
    /// Redis's persistence setting.
    pub redis_persistence: String,
}

/// What the parked-runs benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedReport {
    /// Runs parked at an approval gate.
    pub runs: usize,
    /// Redis `used_memory` growth per parked run, bytes.
    pub bytes_per_run: f64,
    /// Redis `used_memory` growth in all, MiB.
    pub total_mib: f64,
    /// Commands Redis ran per second while nothing happened (parked runs cost no polling).
    pub idle_commands_per_s: f64,
}

fn gate_workflow() -> Plan {
    let yaml = "name: bench_gate\nsteps:\n  - id: approval\n    gate: {approvers: [approver@bench.example], quorum: 1, expires_in: 30d}\n  - {id: after, op: noop, needs: [approval]}\n";
    Plan::load("bench_gate", yaml, Some(&Registry::builtin()))
        .expect("the gate benchmark workflow is valid")
}

/// Memory the server (every master of a cluster) uses.
async fn used_memory(store: &Store) -> Result<u64, Error> {
    let mut total = 0;
    for node in store.db().masters().await? {
        let info: String = store
            .db()
            .query_on(&node, redis::cmd("INFO").arg("memory"))
            .await?;
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

async fn open_gates(store: &Store) -> Result<u64, Error> {
    let keys = store.keys();
    let mut pipe = redis::pipe();
    for shard in keys.all_shards() {
        pipe.cmd("ZCARD")
            .arg(keys.inbox(shard, "approver@bench.example"));
    }
    let counts: Vec<u64> = store.db().pipe(&pipe).await?;
    Ok(counts.iter().sum())
}

/// Starts an in-process worker on its own connection (`worker_db`), for the company `bench`
/// (created with `approvers` if missing); stops when the sender is used or dropped.
async fn start_worker(
    store: &Store,
    worker_db: &Db,
    approvers: &[&str],
    concurrency: usize,
) -> Result<(oneshot::Sender<()>, tokio::task::JoinHandle<()>), Error> {
    let companies = Companies::new(
        worker_db.clone(),
        store.keys().namespace(),
        store.clock().clone(),
    );
    crate::companies::ensure(&companies, crate::companies::sample("bench", approvers)).await?;
    // A gate opens only for approvers who are enabled technicians.
    let auth = crate::auth::Auth::for_store(store);
    for approver in approvers {
        let known = auth
            .technician_by_email(approver)
            .await
            .map_err(|e| Error::Stuck(format!("cannot read the technicians: {e}")))?;
        if known.is_none() {
            auth.add_technician(
                approver,
                "Bench approver",
                steward_schemas::Role::Technician,
                steward_schemas::CompanyScope::ALL,
            )
            .await
            .map_err(|e| Error::Stuck(format!("cannot add the bench's approver: {e}")))?;
        }
    }
    let runtime = Arc::new(Runtime {
        store: Store::new(
            worker_db.clone(),
            store.keys().clone(),
            store.clock().clone(),
        ),
        companies,
        registry: Registry::builtin(),
        services: Services::default(),
    });
    let queue = QueueConfig {
        consumer: worker::consumer_name(),
        concurrency,
        block: Duration::from_secs(2),
        claim_idle: Duration::from_secs(30),
        max_deliveries: 5,
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        if let Err(e) = worker::run(runtime, queue, async move {
            let _ = stop_rx.await;
        })
        .await
        {
            tracing::error!(error = %e, "bench: the worker stopped with an error");
        }
    });
    Ok((stop_tx, handle))
}

/// Starts `n` runs that park at a gate, with a worker opening the gates; returns when all are open.
async fn park(
    store: &Store,
    worker_db: &Db,
    n: usize,
) -> Result<(Vec<RunId>, oneshot::Sender<()>, tokio::task::JoinHandle<()>), Error> {
    store.prepare().await?;
    let (stop_tx, handle) = start_worker(store, worker_db, &["approver@bench.example"], 64).await?;
    let plan = Arc::new(gate_workflow());
    let before = open_gates(store).await?;
    let mut runs = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let created: Vec<store::Result<RunId>> = futures::stream::iter(chunk.iter())
            .map(|_| {
                store.create_run(NewRun {
                    plan: plan.clone(),
                    company: "bench".parse().expect("a valid company id"),
                    company_settings: Map::new(),
                    inputs: Map::new(),
                    requested_by: "requester@bench.example".to_owned(),
                    start_at: None,
                    ticket: None,
                })
            })
            .buffer_unordered(256)
            .collect()
            .await;
        runs.extend(created.into_iter().collect::<store::Result<Vec<_>>>()?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while open_gates(store).await? < before + n as u64 {
        if Instant::now() > deadline {
            return Err(Error::Stuck(
                "the gates did not all open within 10 minutes".to_owned(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((runs, stop_tx, handle))
}

/// Decides `n` gates one after another and measures decision → next step enqueued, in-process and
/// through the HTTP API (`api`: base URL and an approver's token).
pub async fn gates(
    store: Store,
    worker_db: Db,
    n: usize,
    api: impl AsyncFn(RunId) -> Result<(), String>,
) -> Result<GateReport, Error> {
    let (runs, stop, worker) = park(&store, &worker_db, n * 2).await?;
    let step: steward_schemas::StepId = "approval".parse().expect("a valid step id");
    let mut engine_ms = Vec::with_capacity(n);
    for run in &runs[..n] {
        let t0 = Instant::now();
        let event = steward_schemas::Event::ApprovalDecided {
            step: step.clone(),
            by: "approver@bench.example".to_owned(),
            approve: true,
            comment: None,
            via: "bench".to_owned(),
        };
        match store.apply(*run, &event, None, None, None).await? {
            store::Outcome::Applied { state, .. }
                if matches!(
                    state.steps["after"].state,
                    StepState::Queued { .. } | StepState::Succeeded { .. }
                ) => {}
            other => {
                return Err(Error::Stuck(format!(
                    "the decision did not dispatch the next step: {other:?}"
                )));
            }
        }
        engine_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let mut api_ms = Vec::with_capacity(n);
    for run in &runs[n..] {
        let t0 = Instant::now();
        api(*run).await.map_err(Error::Stuck)?;
        api_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = stop.send(());
    let _ = worker.await;
    Ok(GateReport {
        gates: n,
        api_p50_ms: percentile(&mut api_ms, 0.50),
        api_p99_ms: percentile(&mut api_ms, 0.99),
        engine_p50_ms: percentile(&mut engine_ms, 0.50),
        engine_p99_ms: percentile(&mut engine_ms, 0.99),
        redis_persistence: persistence(&store)
            .await
            .unwrap_or_else(|_| "unknown".to_owned()),
    })
}

/// Parks `n` runs at a gate and measures Redis's memory per parked run, then how busy Redis is
/// while they wait (a scheduler running: its per-tick read is all that happens).
pub async fn parked(store: Store, worker_db: Db, n: usize) -> Result<ParkedReport, Error> {
    store.prepare().await?;
    let before = used_memory(&store).await?;
    let (_runs, stop, worker) = park(&store, &worker_db, n).await?;
    let _ = stop.send(());
    let _ = worker.await;
    let after = used_memory(&store).await?;
    let sched_store = Store::new(
        worker_db.clone(),
        store.keys().clone(),
        store.clock().clone(),
    );
    let (tx, rx) = oneshot::channel::<()>();
    let config = crate::scheduler::SchedulerConfig {
        tick: Duration::from_millis(100),
        batch: 500,
        concurrency: 16,
    };
    let sched = tokio::spawn(crate::scheduler::run(sched_store, config, async move {
        let _ = rx.await;
    }));
    let c0 = RedisCounters::read(&store).await?.commands;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c1 = RedisCounters::read(&store).await?.commands;
    let idle = (c1 - c0).saturating_sub(2) as f64 / t0.elapsed().as_secs_f64();
    let _ = tx.send(());
    let _ = sched.await;
    let grown = after.saturating_sub(before) as f64;
    Ok(ParkedReport {
        runs: n,
        bytes_per_run: grown / n as f64,
        total_mib: grown / (1024.0 * 1024.0),
        idle_commands_per_s: idle,
    })
}
