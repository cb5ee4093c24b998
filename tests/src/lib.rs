//! The test harness: a private Redis per test, unique namespaces, in-process and out-of-process
//! workers, and waiting on conditions with deadlines (never sleeping for a fixed time).

pub mod api;
pub mod cluster;
pub mod procs;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_engine::clock::Clock;
use steward_engine::companies::{Companies, sample};
use steward_engine::config::SecretsConfig;
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::queue::QueueConfig;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::store::{NewRun, Outcome, Store};
use steward_engine::worker::{self, Runtime};
use steward_engine::{Db, Keys, SystemClock};
use steward_schemas::{CompanyScope, Event, Role, RunId, RunState, RunStatus};
use steward_workers::testing::ledger_keys;
use steward_workers::{Registry, Services};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Waits until `check` returns `Some`, polling every few milliseconds, or fails after `timeout`
/// with `what` in the message.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The private Redis a test runs against: one server, or a cluster.
#[derive(Debug)]
pub enum Redis {
    /// One server.
    Single(RedisServer),
    /// A cluster of masters.
    Cluster(cluster::RedisCluster),
}

impl Redis {
    /// The URL Steward connects with.
    pub fn url(&self) -> String {
        match self {
            Self::Single(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }

    /// Shuts the server down cleanly (a cluster: kills every node).
    pub fn shutdown(&mut self) {
        match self {
            Self::Single(s) => s.shutdown(),
            Self::Cluster(c) => c.kill_all(),
        }
    }

    /// Starts the server again on the same port and directory (one server only).
    pub fn restart(&mut self) -> Result<()> {
        match self {
            Self::Single(s) => Ok(s.restart()?),
            Self::Cluster(_) => bail!("restarting a test cluster is not supported"),
        }
    }

    /// The cluster, if this is one.
    pub fn cluster(&self) -> Option<&cluster::RedisCluster> {
        match self {
            Self::Single(_) => None,
            Self::Cluster(c) => Some(c),
        }
    }
}

/// A private Redis and a store on a fresh namespace.
pub struct Env {
    /// The server (or cluster).
    pub redis: Redis,
    /// The namespace.
    pub namespace: String,
    /// The shard count.
    pub shards: u16,
    /// A store for the test's own use.
    pub store: Store,
    /// The secrets key of this test (`keys/t1.key`) and a config file naming it
    /// (`steward.toml`), which [`Env::cli_args`] passes to `steward` processes.
    pub secrets_dir: tempfile::TempDir,
    /// The clock of every store made here (the system clock unless the test gave another).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("url", &self.redis.url())
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Sends the engine's logs to the test output when `STEWARD_TEST_LOG` is set (e.g. `debug`).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("STEWARD_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl Env {
    /// A private Redis with `persistence`, and a fresh namespace over 4 shards.
    pub async fn start(persistence: Persistence) -> Result<Self> {
        Self::start_with_clock(persistence, Arc::new(SystemClock)).await
    }

    /// [`Env::start`] with every store (the test's, the workers', an API's made from
    /// [`Env::store`]) reading `clock`.
    pub async fn start_with_clock(persistence: Persistence, clock: Arc<dyn Clock>) -> Result<Self> {
        init_logs();
        Self::on(Redis::Single(RedisServer::start(persistence)?), 4, clock).await
    }

    /// A private cluster of three masters, and a fresh namespace over `shards` shards.
    pub async fn start_cluster(shards: u16) -> Result<Self> {
        init_logs();
        let cluster = cluster::RedisCluster::start(3).await?;
        Self::on(Redis::Cluster(cluster), shards, Arc::new(SystemClock)).await
    }

    async fn on(redis: Redis, shards: u16, clock: Arc<dyn Clock>) -> Result<Self> {
        let namespace = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
        let secrets_dir = secrets_dir()?;
        let store = store_for(
            &redis.url(),
            &namespace,
            shards,
            secrets_dir.path(),
            clock.clone(),
        )
        .await?;
        store.prepare().await?;
        let companies = Companies::for_store(&store);
        steward_engine::companies::ensure(
            &companies,
            sample("contoso", &["alice@msp.example", "bob@msp.example"]),
        )
        .await?;
        Ok(Self {
            redis,
            namespace,
            shards,
            store,
            secrets_dir,
            clock,
        })
    }

    /// The companies of this namespace (the test's connection).
    pub fn companies(&self) -> Companies {
        Companies::for_store(&self.store)
    }

    /// Another store (its own connection) on the same namespace.
    pub async fn store(&self) -> Result<Store> {
        store_for(
            &self.redis.url(),
            &self.namespace,
            self.shards,
            self.secrets_dir.path(),
            self.clock.clone(),
        )
        .await
    }

    /// The config file `steward` processes of this test read (it names the secrets key).
    pub fn config_file(&self) -> PathBuf {
        self.secrets_dir.path().join("steward.toml")
    }

    /// Starts an in-process worker (and, with `scheduler`, a scheduler).
    pub async fn worker(&self, opts: WorkerOpts) -> Result<InProcess> {
        let store = self.store().await?;
        let runtime = Arc::new(Runtime {
            store: store.clone(),
            companies: self.companies(),
            registry: opts.registry.clone().unwrap_or_else(Registry::builtin),
            services: Services {
                redis: Some(store.db().manager()),
                namespace: self.namespace.clone(),
            },
        });
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let queue = QueueConfig {
            consumer: opts.consumer.unwrap_or_else(worker::consumer_name),
            concurrency: opts.concurrency,
            block: Duration::from_millis(500),
            claim_idle: opts.claim_idle,
            max_deliveries: opts.max_deliveries,
        };
        let mut tasks: Vec<JoinHandle<()>> = vec![tokio::spawn({
            let rx = rx.clone();
            async move {
                // A worker that cannot start (or stops on an error) would otherwise only show as
                // runs that never end: say why in the test's output.
                if let Err(e) = worker::run(runtime, queue, until(rx)).await {
                    eprintln!("the in-process worker stopped on an error: {e}");
                }
            }
        })];
        if opts.scheduler {
            let config = SchedulerConfig {
                tick: Duration::from_millis(20),
                batch: 200,
                concurrency: 16,
            };
            tasks.push(tokio::spawn(scheduler::run(store, config, until(rx))));
        }
        Ok(InProcess { stop, tasks })
    }

    /// Makes the sample company's approvers (alice and bob @msp.example) enabled technicians,
    /// so its gates open for them.
    pub async fn add_approvers(&self) -> Result<()> {
        let auth = steward_engine::auth::Auth::for_store(&self.store);
        for who in ["alice", "bob"] {
            auth.add_technician(
                &format!("{who}@msp.example"),
                who,
                Role::Technician,
                CompanyScope::ALL,
            )
            .await?;
        }
        Ok(())
    }

    /// Adds the technicians `people` (name, role, companies; `<name>@msp.example`) and a token for
    /// each; the tokens by name.
    pub async fn add_technicians(
        &self,
        people: Vec<(&'static str, Role, CompanyScope)>,
    ) -> Result<HashMap<&'static str, String>> {
        let auth = steward_engine::auth::Auth::for_store(&self.store);
        let mut tokens = HashMap::new();
        for (name, role, scope) in people {
            let t = auth
                .add_technician(&format!("{name}@msp.example"), name, role, scope)
                .await?;
            let (_, token) = auth.create_token(t.id, "test").await?;
            tokens.insert(name, token);
        }
        Ok(tokens)
    }

    /// Creates a run of `plan`.
    pub async fn start_run(&self, plan: &Arc<Plan>, inputs: Value) -> Result<RunId> {
        Ok(self
            .store
            .create_run(NewRun {
                plan: plan.clone(),
                company: "contoso".parse()?,
                company_settings: Map::new(),
                inputs: inputs.as_object().cloned().unwrap_or_default(),
                requested_by: "test".to_owned(),
                start_at: None,
                ticket: None,
            })
            .await?)
    }

    /// Takes up to `count` new entries of `stream` as `consumer` of the workers' group, as a
    /// worker's read would (a job run by hand, or held by a consumer that then dies).
    pub async fn read_as(
        &self,
        consumer: &str,
        stream: &str,
        count: usize,
    ) -> Result<Vec<redis::streams::StreamId>> {
        let reply: Option<redis::streams::StreamReadReply> = self
            .store
            .db()
            .query(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(steward_engine::keys::GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">"),
            )
            .await?;
        Ok(reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect())
    }

    /// Waits until the run has ended; returns its final status.
    pub async fn wait_end(&self, run: RunId, timeout: Duration) -> Result<RunStatus> {
        let store = &self.store;
        wait_for(&format!("run {run} to end"), timeout, || async move {
            let snap = store.load(run).await?.context("no such run")?;
            Ok(snap
                .doc
                .state
                .status
                .is_terminal()
                .then_some(snap.doc.state.status))
        })
        .await
    }

    /// Approves `run`'s gate `step` as `by` (through the API's event), and fails unless it was
    /// applied.
    pub async fn approve(&self, run: RunId, step: &str, by: &str) -> Result<RunState> {
        self.apply_ok(
            run,
            &Event::ApprovalDecided {
                step: step.parse()?,
                by: by.to_owned(),
                approve: true,
                comment: None,
                via: "api".to_owned(),
            },
        )
        .await
    }

    /// Applies a technician's `event` to `run` and fails, naming the outcome, unless it was
    /// applied; returns the run's new state.
    pub async fn apply_ok(&self, run: RunId, event: &Event) -> Result<RunState> {
        let outcome = self.store.apply(run, event, None, None, None).await?;
        match outcome {
            Outcome::Applied { state, .. } => Ok(state),
            other => bail!("{} on {run} was not applied: {other:?}", event.name()),
        }
    }

    /// How many entries the stream `key` holds.
    pub async fn stream_len(&self, key: &str) -> Result<u64> {
        Ok(self.store.db().query(redis::cmd("XLEN").arg(key)).await?)
    }

    /// How many entries the step streams of `run`'s shard hold, both lanes (jobs not yet
    /// acknowledged or revoked).
    pub async fn steps_len(&self, run: RunId) -> Result<u64> {
        let keys = self.store.keys();
        let shard = keys.shard_of(run);
        Ok(self.stream_len(&keys.steps(shard)).await?
            + self.stream_len(&keys.new_steps(shard)).await?)
    }

    /// The ledger's lists: executions, applications, undos; and its state size.
    pub async fn ledger(&self) -> Result<Ledger> {
        let [exec, state, applied, undone] = ledger_keys(&self.namespace);
        let db = self.store.db();
        Ok(Ledger {
            executions: db
                .query(redis::cmd("LRANGE").arg(&exec).arg(0).arg(-1))
                .await?,
            applied: db
                .query(redis::cmd("LRANGE").arg(&applied).arg(0).arg(-1))
                .await?,
            undone: db
                .query(redis::cmd("LRANGE").arg(&undone).arg(0).arg(-1))
                .await?,
            in_place: db.query(redis::cmd("HLEN").arg(&state)).await?,
        })
    }

    /// Arguments that point a `steward` process at this Redis and namespace.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--redis".to_owned(),
            self.redis.url(),
            "--namespace".to_owned(),
            self.namespace.clone(),
            "--shards".to_owned(),
            self.shards.to_string(),
            "--config".to_owned(),
            self.config_file().display().to_string(),
        ]
    }

    /// [`Env::cli_args`] with a config file of their own, `dir/steward.toml`: this test's (the
    /// secrets key) followed by `extra` (TOML).
    pub fn cli_args_with_config(&self, dir: &Path, extra: &str) -> Result<Vec<String>> {
        let config = dir.join("steward.toml");
        std::fs::write(
            &config,
            format!("{}\n{extra}", std::fs::read_to_string(self.config_file())?),
        )?;
        let mut args = self.cli_args();
        let at = args
            .iter()
            .position(|a| a == "--config")
            .context("--config")?
            + 1;
        args[at] = config.display().to_string();
        Ok(args)
    }
}

/// The test ledger's contents.
#[derive(Debug)]
pub struct Ledger {
    /// One entry per execution: `run/step/attempt/seq`.
    pub executions: Vec<String>,
    /// One entry per effective change: `run/step`.
    pub applied: Vec<String>,
    /// One entry per effective undo.
    pub undone: Vec<String>,
    /// Changes in place now.
    pub in_place: usize,
}

async fn store_for(
    url: &str,
    namespace: &str,
    shards: u16,
    secrets: &Path,
    clock: Arc<dyn Clock>,
) -> Result<Store> {
    let db = Db::connect(url, Duration::from_secs(5)).await?;
    let keys = Keys::new(namespace, shards)?;
    let ring = steward_engine::secrets::keyring(&secrets_config(secrets), &db, &keys).await?;
    Ok(Store::new(db, keys, clock).with_secrets(ring))
}

/// The system clock moved ahead by an offset the test sets: Steward's clock following the
/// sandbox's (whose admin API moves its time on), as both would follow the one time in the world.
#[derive(Debug, Default)]
pub struct OffsetClock {
    offset_seconds: std::sync::atomic::AtomicI64,
}

impl OffsetClock {
    /// Sets how far ahead of the system clock it is.
    pub fn set_offset(&self, seconds: i64) {
        self.offset_seconds
            .store(seconds, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> steward_schemas::Timestamp {
        let offset = self
            .offset_seconds
            .load(std::sync::atomic::Ordering::SeqCst);
        steward_schemas::Timestamp::from_micros(SystemClock.now().as_micros() + offset * 1_000_000)
    }
}

/// The secrets settings of a test: key `t1` in `<dir>/keys`.
pub fn secrets_config(dir: &Path) -> SecretsConfig {
    SecretsConfig {
        active_key: Some("t1".to_owned()),
        key_dir: Some(dir.join("keys").display().to_string()),
        ..SecretsConfig::default()
    }
}

/// A fresh secrets key in a new folder, and a config file that names it.
fn secrets_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("steward-keys-").tempdir()?;
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys)?;
    std::fs::write(
        keys.join("t1.key"),
        steward_engine::secrets::generate_key().as_str(),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(keys.join("t1.key"), std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(
        dir.path().join("steward.toml"),
        format!(
            "[secrets]\nactive-key = \"t1\"\nkey-dir = \"{}\"\n",
            keys.display()
        ),
    )?;
    Ok(dir)
}

/// How an in-process worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOpts {
    /// Steps at once.
    pub concurrency: usize,
    /// Takeover time.
    pub claim_idle: Duration,
    /// Poison threshold.
    pub max_deliveries: u64,
    /// Also run a scheduler.
    pub scheduler: bool,
    /// A fixed consumer name.
    pub consumer: Option<String>,
    /// The ops (default: the built-in ones, without connectors).
    pub registry: Option<Registry>,
}

impl Default for WorkerOpts {
    fn default() -> Self {
        Self {
            concurrency: 16,
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            scheduler: true,
            consumer: None,
            registry: None,
        }
    }
}

/// An in-process worker (and scheduler); stopped when dropped.
#[derive(Debug)]
pub struct InProcess {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl InProcess {
    /// Stops it and waits.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The companies of a technician of `company` only.
pub fn only(company: &str) -> Result<CompanyScope> {
    Ok(CompanyScope::Only(vec![company.parse()?]))
}

/// Compiles a workflow given as YAML text, with the built-in ops.
pub fn plan(yaml: &str) -> Arc<Plan> {
    Arc::new(
        Plan::load("test.yaml", yaml, Some(&Registry::builtin())).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// A `steward` child process whose output goes to a log file; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Spawns `binary` with `args`, logging to `dir/<name>.log`.
    pub fn spawn(binary: &Path, dir: &Path, name: &str, args: &[String]) -> Result<Self> {
        Self::spawn_env(binary, dir, name, args, &[])
    }

    /// [`Proc::spawn`] with environment variables.
    pub fn spawn_env(
        binary: &Path,
        dir: &Path,
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .env("STEWARD_LOG", "info,steward_engine=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self {
            child,
            log,
            name: name.to_owned(),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`).
    pub fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{sig} {} failed", self.child.id());
        }
        Ok(())
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log, for failure messages.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        format!(
            "--- {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
