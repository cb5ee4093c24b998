//! The `steward` command: CLI wiring only.

mod demo;
mod print;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_engine::bench::{self, BenchConfig, Waiter};
use steward_engine::companies::Companies;
use steward_engine::config::Config;
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::planner::{Planner, StartRun};
use steward_engine::queue::QueueConfig;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::store::{Outcome, Store};
use steward_engine::worker::{self, Runtime};
use steward_engine::{Db, Keys, SystemClock};
use steward_schemas::{Event, InputType, RunId, StepId, Timestamp};
use steward_workers::{Registry, Services};

#[derive(Parser, Debug)]
#[command(
    name = "steward",
    version,
    about = "Durable onboarding and offboarding workflows for MSPs"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct Global {
    /// A TOML config file (also STEWARD_CONFIG).
    #[arg(long, global = true, env = "STEWARD_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL (overrides redis.url).
    #[arg(long, global = true)]
    redis: Option<String>,
    /// Key namespace (overrides redis.namespace).
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// Shard count (overrides redis.shards).
    #[arg(long, global = true)]
    shards: Option<u16>,
    /// Log filter, e.g. `info` or `steward_engine=debug` (also STEWARD_LOG).
    #[arg(long, global = true, env = "STEWARD_LOG")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run steps: a queue worker.
    Worker(WorkerArgs),
    /// Run the scheduler (durable timers); the HTTP API joins it later.
    Serve(ServeArgs),
    /// Start a run of a workflow.
    Run(RunArgs),
    /// Show a run: its status, each step's state and attempts, and its timeline.
    Status {
        /// The run's id.
        run: RunId,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check workflow files; exits non-zero and lists every problem if any is bad.
    Validate {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Cancel a run (with --rollback, undo what it changed).
    Cancel {
        /// The run's id.
        run: RunId,
        /// Undo what the run changed.
        #[arg(long)]
        rollback: bool,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause a run: nothing new is dispatched until it is resumed.
    Pause {
        /// The run's id.
        run: RunId,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused run.
    Resume {
        /// The run's id.
        run: RunId,
    },
    /// Try a failed, retrying or polling step again now.
    RetryStep {
        /// The run's id.
        run: RunId,
        /// The step's id.
        step: StepId,
    },
    /// Skip a step that has not run, is waiting, or failed.
    SkipStep {
        /// The run's id.
        run: RunId,
        /// The step's id.
        step: StepId,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the ops workflows can use.
    Ops {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the JSON Schemas generated from the Rust types into DIR (default schemas/json).
    Schema {
        /// Where to write them.
        #[arg(long, default_value = "schemas/json")]
        dir: PathBuf,
    },
    /// Measure workflows/s and latency through the real queue, store and worker.
    Bench(BenchArgs),
    /// Show what Steward does, on a private Redis: runs sample workflows and prints them.
    Demo,
    /// Serve the sandbox: a simulated MSP world (Graph, token endpoint, Exchange Online admin API,
    /// Datto RMM, Autotask) with fault injection and an effect ledger. See sandbox/README.md.
    Sandbox(SandboxArgs),
}

#[derive(Args, Debug)]
struct SandboxArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// A YAML fixture of companies (default: the built-in sandbox/fixtures/msp.yaml).
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Seeds object ids and fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where Autotask ticket webhooks are sent.
    #[arg(long)]
    webhook_url: Option<String>,
    /// The webhook secret key (signs X-Hook-Signature); also STEWARD_SANDBOX_WEBHOOK_SECRET.
    #[arg(long, env = "STEWARD_SANDBOX_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// Steps run at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Take over a dead worker's job after this long, e.g. `30s`.
    #[arg(long)]
    claim_idle: Option<steward_schemas::Dur>,
    /// Deliveries without an outcome after which a job is parked.
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// Also run the scheduler in this process.
    #[arg(long)]
    with_scheduler: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Where the HTTP API will listen (unused until the API exists).
    #[arg(long)]
    listen: Option<String>,
    /// Seconds between looks for due timers when none were due, e.g. `100ms`.
    #[arg(long)]
    tick: Option<steward_schemas::Dur>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The workflow file.
    workflow: PathBuf,
    /// The company to act on.
    #[arg(long)]
    company: String,
    /// An input, `name=value` (repeatable). Non-text inputs take JSON (`shared=true`).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    /// Who asks for the run.
    #[arg(long, default_value = "cli")]
    requested_by: String,
    /// Start at this time (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<Timestamp>,
    /// Wait for the run to end and print it; exit 1 unless it completed.
    #[arg(long)]
    wait: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Workflows to run.
    #[arg(long, default_value_t = 2000)]
    workflows: usize,
    /// Sequential no-op steps per workflow.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// One workflow at a time.
    #[arg(long)]
    serial: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Worker(_) | Command::Serve(_) => "info",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(cli.global.log.as_deref().unwrap_or(default_log))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(global: &Global) -> Result<Config> {
    let mut config = Config::load(global.config.as_deref(), std::env::vars())?;
    if let Some(url) = &global.redis {
        config.redis.url.clone_from(url);
    }
    if let Some(ns) = &global.namespace {
        config.redis.namespace.clone_from(ns);
    }
    if let Some(shards) = global.shards {
        config.redis.shards = shards;
    }
    config.validate()?;
    Ok(config)
}

async fn connect(config: &Config) -> Result<Store> {
    let keys = Keys::new(&config.redis.namespace, config.redis.shards)?;
    let db = Db::connect(&config.redis.url, config.redis.response_timeout.get())
        .await
        .with_context(|| format!("cannot connect to Redis at {}", config.redis.url))?;
    let store = Store::new(db, keys, Arc::new(SystemClock));
    store.prepare().await?;
    Ok(store)
}

fn companies_for(store: &Store) -> Companies {
    Companies::new(
        store.db().clone(),
        store.keys().namespace(),
        store.clock().clone(),
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn scheduler_config(config: &Config) -> SchedulerConfig {
    SchedulerConfig {
        tick: config.scheduler.tick.get(),
        batch: config.scheduler.batch,
        concurrency: 64,
    }
}

fn queue_config(config: &Config) -> QueueConfig {
    QueueConfig {
        consumer: worker::consumer_name(),
        concurrency: config.worker.concurrency,
        block: config.worker.block.get(),
        claim_idle: config.worker.claim_idle.get(),
        max_deliveries: u64::from(config.worker.max_deliveries),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => validate(&files),
        Command::Ops { json } => {
            print::ops(&Registry::builtin(), json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { dir } => {
            for (name, text) in steward_schemas::json_schemas() {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => demo::run().await,
        Command::Sandbox(args) => {
            let sandbox = steward_sandbox::Sandbox::new(steward_sandbox::Options {
                fixture: args.fixture,
                seed: args.seed,
                webhook_url: args.webhook_url,
                webhook_secret: args.webhook_secret,
            })?;
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let addr = listener.local_addr()?;
            println!(
                "sandbox listening on http://{addr} (/graph /login /outlook /datto /autotask /admin)"
            );
            sandbox.serve(listener, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench_cmd(&cli.global, args).await,
        command => {
            let mut config = load_config(&cli.global)?;
            match command {
                Command::Worker(args) => {
                    if let Some(c) = args.concurrency {
                        config.worker.concurrency = c;
                    }
                    if let Some(d) = args.claim_idle {
                        config.worker.claim_idle = d;
                    }
                    if let Some(m) = args.max_deliveries {
                        config.worker.max_deliveries = m;
                    }
                    config.validate()?;
                    let store = connect(&config).await?;
                    let services = Services {
                        redis: Some(store.db().manager()),
                        namespace: config.redis.namespace.clone(),
                    };
                    let runtime = Arc::new(Runtime {
                        store: store.clone(),
                        companies: companies_for(&store),
                        registry: Registry::builtin(),
                        services,
                    });
                    let queue = queue_config(&config);
                    tracing::info!(consumer = %queue.consumer, "worker starting");
                    let sched = args.with_scheduler.then(|| {
                        tokio::spawn(scheduler::run(
                            store.clone(),
                            scheduler_config(&config),
                            shutdown_signal(),
                        ))
                    });
                    worker::run(runtime, queue, shutdown_signal())
                        .await
                        .map_err(|e| anyhow!("worker stopped: {e}"))?;
                    if let Some(s) = sched {
                        let _ = s.await;
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Command::Serve(args) => {
                    if let Some(t) = args.tick {
                        config.scheduler.tick = t;
                    }
                    if let Some(l) = args.listen {
                        config.http.listen = l;
                    }
                    let store = connect(&config).await?;
                    tracing::info!("scheduler starting");
                    scheduler::run(store, scheduler_config(&config), shutdown_signal()).await;
                    Ok(ExitCode::SUCCESS)
                }
                Command::Run(args) => run_cmd(&config, args).await,
                Command::Status { run, json } => {
                    let store = connect(&config).await?;
                    let snap = store.load(run).await?.ok_or_else(|| {
                        anyhow!("no run `{run}` in namespace `{}`", config.redis.namespace)
                    })?;
                    let history = store.history(run).await?;
                    let plan = store.plan(&snap.doc.ctx.workflow.hash).await?;
                    if json {
                        print::status_json(&snap, &history, &plan)?;
                    } else {
                        print::status(&snap, &history, &plan);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Command::Cancel {
                    run,
                    rollback,
                    reason,
                } => {
                    command_event(
                        &config,
                        run,
                        Event::CancelRequested {
                            by: who(),
                            rollback,
                            reason,
                        },
                    )
                    .await
                }
                Command::Pause { run, reason } => {
                    command_event(&config, run, Event::PauseRequested { by: who(), reason }).await
                }
                Command::Resume { run } => {
                    command_event(&config, run, Event::ResumeRequested { by: who() }).await
                }
                Command::RetryStep { run, step } => {
                    command_event(&config, run, Event::RetryStepRequested { step, by: who() }).await
                }
                Command::SkipStep { run, step, reason } => {
                    command_event(
                        &config,
                        run,
                        Event::SkipStepRequested {
                            step,
                            by: who(),
                            reason,
                        },
                    )
                    .await
                }
                Command::Validate { .. }
                | Command::Ops { .. }
                | Command::Schema { .. }
                | Command::Demo
                | Command::Bench(_)
                | Command::Sandbox(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn who() -> String {
    std::env::var("USER")
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|_| "cli".to_owned())
}

fn validate(files: &[PathBuf]) -> Result<ExitCode> {
    let registry = Registry::builtin();
    let mut bad = 0;
    for file in files {
        match load_plan(file, &registry) {
            Ok(plan) => println!("{}: ok ({} steps)", file.display(), plan.steps().len()),
            Err(e) => {
                bad += 1;
                eprintln!("{e:#}");
            }
        }
    }
    if bad > 0 {
        eprintln!("{bad} of {} files have problems", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn load_plan(file: &Path, registry: &Registry) -> Result<Plan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(Plan::load(
        &file.display().to_string(),
        &text,
        Some(registry),
    )?)
}

/// Parses `--input name=value` pairs, typed by the workflow's declarations.
fn parse_inputs(plan: &Plan, pairs: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (name, raw) = pair.split_once('=').ok_or_else(|| {
            anyhow!("--input `{pair}`: write NAME=VALUE, e.g. --input upn=jane@contoso.com")
        })?;
        let kind = plan
            .def()
            .inputs
            .get(name)
            .map_or(InputType::String, |d| d.kind);
        let value = match kind {
            InputType::String => Value::String(raw.to_owned()),
            _ => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())),
        };
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

async fn run_cmd(config: &Config, args: RunArgs) -> Result<ExitCode> {
    let registry = Registry::builtin();
    let plan = Arc::new(load_plan(&args.workflow, &registry)?);
    let inputs = parse_inputs(&plan, &args.inputs)?;
    let company = args
        .company
        .parse()
        .map_err(|e| anyhow!("--company: {e}"))?;
    let store = connect(config).await?;
    let mut waiter = if args.wait {
        Some(Waiter::new(&store).await?)
    } else {
        None
    };
    let planner = Planner {
        store: store.clone(),
        companies: companies_for(&store),
        registry: Arc::new(registry),
    };
    let run = planner
        .start(StartRun {
            plan,
            company,
            inputs,
            requested_by: args.requested_by,
            ticket: None,
            start_at: args.at,
        })
        .await?;
    if let Some(waiter) = waiter.as_mut() {
        eprintln!("started {run}; waiting for it to end");
        waiter
            .wait_all(
                &store,
                &[run].into(),
                std::time::Duration::from_secs(86_400),
            )
            .await?;
        let snap = store
            .load(run)
            .await?
            .ok_or_else(|| anyhow!("run {run} vanished"))?;
        let history = store.history(run).await?;
        let plan = store.plan(&snap.doc.ctx.workflow.hash).await?;
        if args.json {
            print::status_json(&snap, &history, &plan)?;
        } else {
            print::status(&snap, &history, &plan);
        }
        return Ok(if snap.doc.state.status.name() == "completed" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if args.json {
        println!("{}", serde_json::json!({ "run": run }));
    } else {
        println!("{run}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn command_event(config: &Config, run: RunId, event: Event) -> Result<ExitCode> {
    let store = connect(config).await?;
    match store.apply(run, &event, None, None, None).await? {
        Outcome::Applied { state, .. } => {
            println!("{run}: {}", state.status.name());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Ignored { reason } => {
            println!("{run}: nothing to do ({reason})");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Refused(e) => bail!("{run}: {e}"),
    }
}

async fn bench_cmd(global: &Global, args: BenchArgs) -> Result<ExitCode> {
    // Without --redis, measure on a private Redis with AOF (appendfsync everysec), as deployed.
    let private = if global.redis.is_none() && std::env::var_os("STEWARD_REDIS__URL").is_none() {
        Some(RedisServer::start(Persistence::AofEverySec)?)
    } else {
        None
    };
    let mut config = load_config(global)?;
    if let Some(server) = &private {
        config.redis.url = server.url();
    }
    if global.namespace.is_none() {
        config.redis.namespace = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    }
    let store = connect(&config).await?;
    let worker_db = Db::connect(&config.redis.url, config.redis.response_timeout.get()).await?;
    let report = bench::run(
        store,
        worker_db,
        BenchConfig {
            workflows: args.workflows,
            steps: args.steps,
            concurrency: args.concurrency,
            serial: args.serial,
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print::bench(&report);
    }
    Ok(ExitCode::SUCCESS)
}
