//! The `steward` command: CLI wiring only.

mod client;
mod demo;
mod print;
mod secrets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_engine::bench::{self, BenchConfig, Waiter};
use steward_engine::companies::Companies;
use steward_engine::config::{Config, redacted_url};
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::planner::{Planner, StartRun, Workflows};
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
    about = "Durable onboarding and offboarding workflows for MSPs",
    after_help = "Environment: STEWARD_TOKEN (the API token: never a flag, which would show in `ps` and shell history), STEWARD_API_URL, STEWARD_CONFIG, STEWARD_LOG, and STEWARD_<SECTION>__<KEY> for any config key (e.g. STEWARD_REDIS__URL)."
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
    /// Serve the HTTP API and run the scheduler (durable timers).
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
    /// Write the JSON Schemas generated from the Rust types into DIR (default schemas/json), and the
    /// OpenAPI document beside it (schemas/openapi.json).
    Schema {
        /// Where to write them.
        #[arg(long, default_value = "schemas/json")]
        dir: PathBuf,
    },
    /// Measure workflows/s and latency through the real queue, store and worker. On a private
    /// Redis unless `--redis` names one (STEWARD_REDIS__URL and the config file are not used);
    /// on a named Redis its keys are removed at the end unless `--namespace` is given.
    Bench(BenchArgs),
    /// Show what Steward does, on a private Redis: runs sample workflows and prints them.
    Demo,
    /// List runs (through the API).
    Runs {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(flatten)]
        args: client::RunsArgs,
    },
    /// The gates waiting for your decision (through the API).
    Approvals {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Approve a gate: RUN/STEP (through the API).
    Approve {
        /// The gate, `run_…/step`.
        gate: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Reject a gate: the run ends and what it did before the gate is undone (through the API).
    Reject {
        /// The gate, `run_…/step`.
        gate: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Companies (through the API).
    Companies {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: client::CompaniesCmd,
    },
    /// Technicians and tokens. Without a token these act on Redis directly (on the server): that
    /// is how the first admin and their token are made.
    Technicians {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: TechniciansCmd,
    },
    /// Secrets at rest (server-side): what is sealed under which key, and key rotation.
    Secrets {
        #[command(subcommand)]
        cmd: secrets::SecretsCmd,
    },
    /// Serve the sandbox: a simulated MSP world (Graph, token endpoint, Exchange Online admin API,
    /// Datto RMM, Autotask) with fault injection and an effect ledger. See sandbox/README.md.
    Sandbox(SandboxArgs),
}

#[derive(Subcommand, Debug)]
enum TechniciansCmd {
    /// List technicians.
    List,
    /// Add a technician.
    Add {
        /// Their email.
        #[arg(long)]
        email: String,
        /// Their name.
        #[arg(long)]
        name: String,
        /// Make them an admin.
        #[arg(long)]
        admin: bool,
        /// `all`, or company ids separated by commas.
        #[arg(long, default_value = "all")]
        companies: String,
        /// Also make a token for them, named this (printed once).
        #[arg(long)]
        token_name: Option<String>,
    },
    /// Make a token for a technician (printed once).
    Token {
        /// Their email.
        #[arg(long)]
        email: String,
        /// What the token is for.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// Revoke a token.
    Revoke {
        /// The token's id (`tok_…`).
        id: steward_schemas::TokenId,
    },
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
    /// Where Autotask ticket webhooks are sent. The key that signs them (X-Hook-Signature) is
    /// read from STEWARD_SANDBOX_WEBHOOK_SECRET (never a flag: flags show in `ps` and shell
    /// history).
    #[arg(long)]
    webhook_url: Option<String>,
}

/// The environment variable the sandbox's webhook signing key is read from.
const WEBHOOK_SECRET_VAR: &str = "STEWARD_SANDBOX_WEBHOOK_SECRET";

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
    /// Where the HTTP API listens (http.listen).
    #[arg(long)]
    listen: Option<String>,
    /// The folder of workflow files the API offers (http.workflows).
    #[arg(long)]
    workflows: Option<String>,
    /// How long the scheduler waits between looks for due timers when none were due, e.g.
    /// `100ms` (scheduler.tick).
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
    /// Who asks for the run (default: `cli:$USER`, as other commands record).
    #[arg(long)]
    requested_by: Option<String>,
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
    /// Instead: decide this many approval gates one after another and report decision → next
    /// step dispatched (in-process and through the HTTP API).
    #[arg(long, conflicts_with_all = ["serial", "parked"])]
    gates: Option<usize>,
    /// Instead: park this many runs at an approval gate and report Redis memory per parked run.
    #[arg(long, conflicts_with = "serial")]
    parked: Option<usize>,
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
    let filter = match cli.global.log.as_deref() {
        None => tracing_subscriber::EnvFilter::new(default_log),
        Some(text) => match tracing_subscriber::EnvFilter::builder().parse(text) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!(
                    "error: --log (or STEWARD_LOG) `{text}`: {e}; write a level or directives, e.g. `info` or `warn,steward_engine=debug`"
                );
                return ExitCode::FAILURE;
            }
        },
    };
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
        .with_context(|| {
            format!(
                "cannot connect to Redis at {}",
                redacted_url(&config.redis.url)
            )
        })?;
    let ring = steward_engine::secrets::keyring(&config.secrets, &db, &keys).await?;
    let store = Store::new(db, keys, Arc::new(SystemClock)).with_secrets(ring);
    store.prepare().await?;
    Ok(store)
}

fn companies_for(store: &Store) -> Companies {
    Companies::for_store(store)
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

/// Approval links start with `http.public-url`, or else with the listen address: refuses a
/// listen address on every interface (0.0.0.0, ::) without a public URL, which would make links
/// that lead nowhere.
fn check_public_url(config: &Config) -> Result<()> {
    if config.http.public_url.is_none()
        && let Ok(addr) = config.http.listen.parse::<std::net::SocketAddr>()
        && addr.ip().is_unspecified()
    {
        bail!(
            "http.public-url is not set and the API listens on {addr} (every interface), so approval links would start with http://{addr}; set http.public-url to the URL technicians reach the API at (STEWARD_HTTP__PUBLIC_URL=https://steward.msp.example, or public-url under [http] in the config file)"
        );
    }
    Ok(())
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
    let Cli { global, command } = cli;
    // Commands that use Redis load the config; the others do not need one.
    let config = || load_config(&global);
    match command {
        Command::Validate { files } => validate(&files),
        Command::Ops { json } => {
            print::ops(&Registry::builtin(), json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { dir } => schema(&dir),
        Command::Demo => demo::run().await,
        Command::Runs { api, args } => client::runs(&api, args).await,
        Command::Approvals { api } => client::approvals(&api).await,
        Command::Approve { gate, comment, api } => client::decide(&api, &gate, true, comment).await,
        Command::Reject { gate, comment, api } => client::decide(&api, &gate, false, comment).await,
        Command::Companies { api, cmd } => client::companies(&api, cmd).await,
        Command::Technicians { api, cmd } => {
            if client::token().is_some() {
                technicians_api(&api, cmd).await
            } else {
                technicians_local(&config()?, api.json, cmd).await
            }
        }
        Command::Sandbox(args) => sandbox(args).await,
        Command::Secrets { cmd } => secrets::run(&config()?, cmd).await,
        Command::Bench(args) => bench_cmd(&global, args).await,
        Command::Worker(args) => worker_cmd(config()?, args).await,
        Command::Serve(args) => serve_cmd(config()?, args).await,
        Command::Run(args) => run_cmd(&config()?, args).await,
        Command::Status { run, json } => {
            let store = connect(&config()?).await?;
            print::run(&store, run, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel {
            run,
            rollback,
            reason,
        } => {
            let event = Event::CancelRequested {
                by: who(),
                rollback,
                reason,
            };
            command_event(&config()?, run, event).await
        }
        Command::Pause { run, reason } => {
            let event = Event::PauseRequested { by: who(), reason };
            command_event(&config()?, run, event).await
        }
        Command::Resume { run } => {
            let event = Event::ResumeRequested { by: who() };
            command_event(&config()?, run, event).await
        }
        Command::RetryStep { run, step } => {
            let event = Event::RetryStepRequested { step, by: who() };
            command_event(&config()?, run, event).await
        }
        Command::SkipStep { run, step, reason } => {
            let event = Event::SkipStepRequested {
                step,
                by: who(),
                reason,
            };
            command_event(&config()?, run, event).await
        }
    }
}

fn schema(dir: &Path) -> Result<ExitCode> {
    for (name, text) in steward_schemas::json_schemas() {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let openapi = dir.parent().unwrap_or(dir).join("openapi.json");
    std::fs::write(&openapi, steward_engine::api::openapi_json())
        .with_context(|| format!("cannot write {}", openapi.display()))?;
    println!("wrote {}", openapi.display());
    Ok(ExitCode::SUCCESS)
}

async fn sandbox(args: SandboxArgs) -> Result<ExitCode> {
    let sandbox = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        fixture: args.fixture,
        seed: args.seed,
        webhook_url: args.webhook_url,
        webhook_secret: std::env::var(WEBHOOK_SECRET_VAR)
            .ok()
            .filter(|s| !s.is_empty()),
    })?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("sandbox listening on http://{addr} (/graph /login /outlook /datto /autotask /admin)");
    sandbox.serve(listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn worker_cmd(mut config: Config, args: WorkerArgs) -> Result<ExitCode> {
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
    steward_engine::secrets::require(&config.secrets, "worker")?;
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

async fn serve_cmd(mut config: Config, args: ServeArgs) -> Result<ExitCode> {
    if let Some(t) = args.tick {
        config.scheduler.tick = t;
    }
    if let Some(l) = args.listen {
        config.http.listen = l;
    }
    if let Some(w) = args.workflows {
        config.http.workflows = w;
    }
    config.validate()?;
    check_public_url(&config)?;
    steward_engine::secrets::require(&config.secrets, "serve")?;
    let store = connect(&config).await?;
    let registry = Arc::new(Registry::builtin());
    let workflows = Workflows::load_dir(Path::new(&config.http.workflows), &registry)?;
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .http
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let state = steward_engine::api::state(
        store.clone(),
        registry,
        workflows,
        config.http.link_key.as_ref().map(|k| k.0.as_str()),
        public_url,
    )
    .await
    .map_err(|e| anyhow!(e))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let sched = tokio::spawn(scheduler::run(
        store,
        scheduler_config(&config),
        stopped(stop_rx.clone()),
    ));
    tracing::info!(%addr, "API and scheduler starting");
    println!("steward serve: API on http://{addr}, scheduler running");
    let app = steward_engine::api::app(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        })
        .await?;
    let _ = sched.await;
    Ok(ExitCode::SUCCESS)
}

fn scope(companies: &str) -> Result<steward_schemas::CompanyScope> {
    if companies.trim() == "all" {
        return Ok(steward_schemas::CompanyScope::ALL);
    }
    let ids = companies
        .split(',')
        .map(|c| c.trim().parse().map_err(|e| anyhow!("--companies: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(steward_schemas::CompanyScope::Only(ids))
}

/// Prints `v` as JSON, or else runs `human`.
fn output(json: bool, v: &Value, human: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        human();
    }
    Ok(())
}

/// One technician, one line.
fn technician_line(t: &Value) {
    println!(
        "{}  {:<30} {:<10} {}{}",
        t["id"].as_str().unwrap_or(""),
        t["email"].as_str().unwrap_or(""),
        t["role"].as_str().unwrap_or(""),
        t["companies"],
        if t["disabled"].as_bool() == Some(true) {
            "  (disabled)"
        } else {
            ""
        }
    );
}

/// A new token (`{"info": …, "token": …}`), shown once.
fn token_lines(t: &Value, whose: &str) {
    println!(
        "token {}{whose} (shown once, keep it safe):\n{}",
        t["info"]["id"].as_str().unwrap_or(""),
        t["token"].as_str().unwrap_or("")
    );
}

/// Technicians on Redis directly: for the server, and for the first admin. With `json`, prints
/// what the API would answer.
async fn technicians_local(config: &Config, json: bool, cmd: TechniciansCmd) -> Result<ExitCode> {
    let store = connect(config).await?;
    let auth = steward_engine::auth::Auth::for_store(&store);
    match cmd {
        TechniciansCmd::List => {
            let list = serde_json::to_value(auth.technicians().await?)?;
            output(json, &list, || {
                list.as_array()
                    .into_iter()
                    .flatten()
                    .for_each(technician_line);
            })?;
        }
        TechniciansCmd::Add {
            email,
            name,
            admin,
            companies,
            token_name,
        } => {
            let role = if admin {
                steward_schemas::Role::Admin
            } else {
                steward_schemas::Role::Technician
            };
            let tech = auth
                .add_technician(&email, &name, role, scope(&companies)?)
                .await?;
            let token = match token_name {
                Some(n) => {
                    let (info, token) = auth.create_token(tech.id, &n).await?;
                    serde_json::json!({"info": info, "token": token})
                }
                None => Value::Null,
            };
            let v = serde_json::json!({"technician": tech, "token": token});
            output(json, &v, || {
                println!(
                    "added {} ({}, {})",
                    tech.email,
                    tech.id,
                    if admin { "admin" } else { "technician" }
                );
                if !token.is_null() {
                    token_lines(&token, "");
                }
            })?;
        }
        TechniciansCmd::Token { email, name } => {
            let tech = auth
                .technician_by_email(&email)
                .await?
                .ok_or_else(|| anyhow!("no technician with email `{email}`"))?;
            let (info, token) = auth.create_token(tech.id, &name).await?;
            let v = serde_json::json!({"info": info, "token": token});
            output(json, &v, || {
                token_lines(&v, &format!(" for {}", tech.email))
            })?;
        }
        TechniciansCmd::Revoke { id } => {
            let info = auth.revoke_token(id).await?;
            let v = serde_json::json!({"revoked": info.id});
            output(json, &v, || println!("revoked {}", info.id))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Technicians through the API.
async fn technicians_api(api: &client::ApiArgs, cmd: TechniciansCmd) -> Result<ExitCode> {
    let c = client::Client::new(api)?;
    let add_token = async |id: &str, name: &str| -> Result<Value> {
        c.post(
            &format!("/v1/technicians/{}/tokens", client::urlencode(id)),
            serde_json::json!({ "name": name }),
        )
        .await
    };
    match cmd {
        TechniciansCmd::List => {
            let list = c.get("/v1/technicians").await?;
            c.print(&list, |l| {
                l.as_array().into_iter().flatten().for_each(technician_line);
            });
        }
        TechniciansCmd::Add {
            email,
            name,
            admin,
            companies,
            token_name,
        } => {
            let body = serde_json::json!({"email": email, "name": name, "role": if admin { "admin" } else { "technician" }, "companies": scope(&companies)?});
            let tech = c.post("/v1/technicians", body).await?;
            let token = match token_name {
                Some(n) => add_token(tech["id"].as_str().unwrap_or(""), &n).await?,
                None => Value::Null,
            };
            let v = serde_json::json!({"technician": tech, "token": token});
            c.print(&v, |v| {
                println!(
                    "added {} ({}, {})",
                    v["technician"]["email"].as_str().unwrap_or(""),
                    v["technician"]["id"].as_str().unwrap_or(""),
                    v["technician"]["role"].as_str().unwrap_or("")
                );
                if !v["token"].is_null() {
                    token_lines(&v["token"], "");
                }
            });
        }
        TechniciansCmd::Token { email, name } => {
            let list = c.get("/v1/technicians").await?;
            let id = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["email"].as_str() == Some(email.trim().to_lowercase().as_str()))
                .and_then(|t| t["id"].as_str().map(str::to_owned))
                .ok_or_else(|| anyhow!("no technician with email `{email}`"))?;
            let t = add_token(&id, &name).await?;
            c.print(&t, |t| token_lines(t, &format!(" for {}", email.trim())));
        }
        TechniciansCmd::Revoke { id } => {
            c.delete(&format!("/v1/tokens/{id}")).await?;
            c.print(&serde_json::json!({ "revoked": id }), |_| {
                println!("revoked {id}");
            });
        }
    }
    Ok(ExitCode::SUCCESS)
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
            requested_by: args.requested_by.unwrap_or_else(who),
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
        let snap = print::run(&store, run, args.json).await?;
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

/// The API served in-process for the gate benchmark, and the approver it is called as.
struct BenchApi {
    base: String,
    token: String,
    token_id: steward_schemas::TokenId,
    auth: steward_engine::auth::Auth,
    approver: steward_schemas::Technician,
    server: tokio::task::JoinHandle<()>,
}

impl BenchApi {
    const APPROVER: &str = "approver@bench.example";

    /// Serves the API on a free local port, with a token for a bench approver (who may act on
    /// every company of the bench namespace).
    async fn start(store: &Store) -> Result<Self> {
        let auth = steward_engine::auth::Auth::for_store(store);
        let mut approver = match auth.technician_by_email(Self::APPROVER).await? {
            Some(t) => t,
            None => {
                auth.add_technician(
                    Self::APPROVER,
                    "bench approver",
                    steward_schemas::Role::Technician,
                    steward_schemas::CompanyScope::ALL,
                )
                .await?
            }
        };
        if approver.disabled {
            // Disabled by the end of an earlier run in this namespace.
            approver.disabled = false;
            auth.save_technician(&approver).await?;
        }
        let (info, token) = auth.create_token(approver.id, "bench").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = steward_engine::api::state(
            store.clone(),
            Arc::new(Registry::builtin()),
            Workflows::default(),
            None,
            base.clone(),
        )
        .await
        .map_err(|e| anyhow!(e))?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, steward_engine::api::app(state)).await;
        });
        Ok(Self {
            base,
            token,
            token_id: info.id,
            auth,
            approver,
            server,
        })
    }

    /// Stops serving, revokes the bench token and disables the bench approver (the auth store
    /// cannot delete a technician), so nothing usable is left behind.
    async fn finish(mut self) -> Result<()> {
        self.server.abort();
        self.auth.revoke_token(self.token_id).await?;
        self.approver.disabled = true;
        self.auth.save_technician(&self.approver).await?;
        Ok(())
    }
}

/// Deletes every key of namespace `ns` (SCAN MATCH `ns:*`, UNLINK in batches); how many.
async fn delete_namespace(db: &Db, ns: &str) -> Result<u64> {
    let pattern = format!("{ns}:*");
    let mut cursor = 0_u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = db
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        if !keys.is_empty() {
            removed += db.query::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

async fn bench_cmd(global: &Global, args: BenchArgs) -> Result<ExitCode> {
    // Only an explicit --redis points the benchmark at an existing server (never the
    // STEWARD_REDIS__URL of an installation); otherwise it measures on a private Redis with AOF
    // (appendfsync everysec), as deployed.
    let private = match global.redis {
        Some(_) => None,
        None => Some(RedisServer::start(Persistence::AofEverySec)?),
    };
    let mut config = load_config(global)?;
    if let Some(server) = &private {
        config.redis.url = server.url();
    }
    // A namespace of its own unless one is named, so it can be removed afterwards.
    let own_namespace = global.namespace.is_none();
    if own_namespace {
        config.redis.namespace = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    }
    let store = connect(&config).await?;
    let result = bench_in(&config, store.clone(), &args).await;
    if private.is_none() {
        let ns = &config.redis.namespace;
        let at = redacted_url(&config.redis.url);
        if own_namespace {
            let removed = delete_namespace(store.db(), ns)
                .await
                .with_context(|| format!("cannot remove the bench namespace `{ns}` from {at}"))?;
            eprintln!("bench: removed the {removed} keys of namespace `{ns}` from {at}");
        } else {
            eprintln!(
                "bench: its runs are left in namespace `{ns}` at {at}; the bench approver there is disabled and its token revoked"
            );
        }
    }
    result
}

async fn bench_in(config: &Config, store: Store, args: &BenchArgs) -> Result<ExitCode> {
    let worker_db = Db::connect(&config.redis.url, config.redis.response_timeout.get()).await?;
    if let Some(n) = args.parked {
        let report = bench::parked(store, worker_db, n).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{} runs parked at an approval gate", report.runs);
            println!(
                "  redis memory per parked run {:>10.0} bytes ({:.1} MiB in all)",
                report.bytes_per_run, report.total_mib
            );
            println!(
                "  redis commands/s while they wait {:>6.1} (a scheduler ticking; nothing polls per run)",
                report.idle_commands_per_s
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(n) = args.gates {
        let api = BenchApi::start(&store).await?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let decide = async |run: RunId| -> std::result::Result<(), String> {
            let res = http
                .post(format!("{}/v1/approvals/{run}/approval", api.base))
                .bearer_auth(&api.token)
                .json(&serde_json::json!({"decision": "approve"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    res.status(),
                    res.text().await.unwrap_or_default()
                ))
            }
        };
        let report = bench::gates(store, worker_db, n, decide).await;
        api.finish().await?;
        let report = report?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} approval gates decided one after another (redis: {})",
                report.gates, report.redis_persistence
            );
            println!(
                "  decision → next step queued, HTTP API   p50 {:>7.3} ms   p99 {:>7.3} ms",
                report.api_p50_ms, report.api_p99_ms
            );
            println!(
                "  decision → next step queued, in-process p50 {:>7.3} ms   p99 {:>7.3} ms",
                report.engine_p50_ms, report.engine_p99_ms
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
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
