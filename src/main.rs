//! The `steward` command: the clap tree below lists every command; each command group lives in
//! its own module under `cmd/`.

mod client;
mod cmd;
mod print;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use steward_schemas::{RunId, StepId};
use steward_workers::Registry;

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
    /// Shard count, 1 to 1000 (overrides redis.shards).
    #[arg(long, global = true, allow_hyphen_values = true, value_parser = parse_shards)]
    shards: Option<u16>,
    /// Log filter, e.g. `info` or `steward_engine=debug` (also STEWARD_LOG).
    #[arg(long, global = true, env = "STEWARD_LOG")]
    log: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run steps: a queue worker.
    Worker(cmd::worker::WorkerArgs),
    /// Serve the HTTP API and run the scheduler (durable timers).
    Serve(cmd::serve::ServeArgs),
    /// Start a run of a workflow (through the API).
    Run(cmd::runs::RunArgs),
    /// Show what a workflow would do for a company, without running it: each step's actions,
    /// the system and machine each runs on, and its parameters (secrets hidden).
    Plan(cmd::plan::PlanArgs),
    /// Print the exact PowerShell an on-premises action would send for a company (its values in
    /// one encoded payload; secret inputs redacted).
    Script(cmd::plan::ScriptArgs),
    /// Show a run: its status, each step's state, its timeline and what you can do now.
    Status {
        /// The run's id.
        run: RunId,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Check workflow files; exits non-zero and lists every problem if any is bad.
    Validate {
        /// The files, or folders of `*.yaml` files (subfolders included).
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
        /// Why (shown with the run's status and in its timeline).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Pause a run: nothing new is dispatched until it is resumed.
    Pause {
        /// The run's id.
        run: RunId,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Resume a paused run.
    Resume {
        /// The run's id.
        run: RunId,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Try a failed, retrying or polling step again now.
    RetryStep {
        /// The run's id.
        run: RunId,
        /// The step's id.
        step: StepId,
        #[command(flatten)]
        api: client::ApiArgs,
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
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Try the failed undo of a step again (a run that ended `rollback_failed`, or is rolling back).
    RetryUndo {
        /// The run's id.
        run: RunId,
        /// The step whose undo failed.
        step: StepId,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Mark the failed undo of a step as done by hand, saying what you did (recorded with your name).
    ResolveUndo {
        /// The run's id.
        run: RunId,
        /// The step whose undo failed.
        step: StepId,
        /// What you did by hand (required).
        #[arg(long)]
        comment: String,
        #[command(flatten)]
        api: client::ApiArgs,
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
    Bench(cmd::bench::BenchArgs),
    /// Show what Steward does, all in this process: a private Redis, the sandbox and Steward;
    /// PSA tickets start onboardings in a cloud-only, a hybrid and an on-premises company, one
    /// approved through its ticket's signed link, then an offboarding; prints each run and what
    /// changed in the sandbox.
    Demo {
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
        /// Keep everything running when the demo is done (until Ctrl-C), to follow and steer
        /// the runs in the dashboard with the login link it prints.
        #[arg(long)]
        stay: bool,
    },
    /// List runs (through the API).
    Runs {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(flatten)]
        args: cmd::runs::RunsArgs,
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
        cmd: cmd::companies::CompaniesCmd,
    },
    /// Technicians and tokens. Without a token these act on Redis directly (on the server): that
    /// is how the first admin and their token are made.
    Technicians {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: cmd::technicians::TechniciansCmd,
    },
    /// Microsoft 365 tenant connections: connect (consent), list, show, refresh, disconnect
    /// (through the API).
    Tenants {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: cmd::tenants::TenantsCmd,
    },
    /// Durable cron schedules: the token refresh, or workflows per company (admins, through the
    /// API).
    Schedules {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: cmd::schedules::SchedulesCmd,
    },
    /// The inbox: things to do that no run waits on, such as a tenant that needs consent again
    /// (through the API).
    Inbox {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: Option<cmd::inbox::InboxCmd>,
    },
    /// PSA triggers (through the API): accounts, ticket-to-workflow rules, ignored events,
    /// intakes waiting for inputs, ticket notes.
    Psa {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: cmd::psa::PsaCmd,
    },
    /// Safety rails (through the API): protected accounts and the blast-radius brake.
    Guard {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        cmd: cmd::psa::GuardCmd,
    },
    /// Secrets at rest (server-side): what is sealed under which key, and key rotation.
    Secrets {
        #[command(subcommand)]
        cmd: cmd::secrets::SecretsCmd,
    },
    /// Serve the sandbox: a simulated MSP world (Graph, token endpoint, Exchange Online admin API,
    /// Datto RMM, Autotask) with fault injection and an effect ledger. See sandbox/README.md.
    Sandbox(cmd::sandbox::SandboxArgs),
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
    // Colours only for a person at a terminal: a log file or a pipe gets plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            eprintln!("error: {}", cmd::said_once(&e));
            ExitCode::from(cmd::exit::ERROR)
        }
    }
}

/// `--shards`: the rule the config file uses, in its words.
fn parse_shards(text: &str) -> Result<u16, String> {
    steward_engine::keys::parse_shards(text).map_err(|e| e.to_string())
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let Cli { global, command } = cli;
    // Commands that use Redis load the config; the others do not need one.
    let config = || cmd::load_config(&global);
    let api_only = |name: &str| cmd::through_api(&global, name);
    use cmd::runs::Control;
    match command {
        Command::Validate { files } => cmd::validate::run(&files),
        Command::Ops { json } => {
            print::ops(&Registry::builtin(), json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { dir } => cmd::schema::run(&dir),
        Command::Demo { json, stay } => cmd::demo::run(json, stay).await,
        Command::Plan(args) => {
            api_only("plan")?;
            cmd::plan::plan(args).await
        }
        Command::Script(args) => {
            api_only("script")?;
            cmd::plan::script(args).await
        }
        Command::Runs { api, args } => {
            api_only("runs")?;
            cmd::runs::list(&api, args).await
        }
        Command::Approvals { api } => {
            api_only("approvals")?;
            cmd::approvals::inbox(&api).await
        }
        Command::Approve { gate, comment, api } => {
            api_only("approve")?;
            cmd::approvals::decide(&api, &gate, true, comment).await
        }
        Command::Reject { gate, comment, api } => {
            api_only("reject")?;
            cmd::approvals::decide(&api, &gate, false, comment).await
        }
        Command::Companies { api, cmd } => {
            api_only("companies")?;
            cmd::companies::run(&api, cmd).await
        }
        Command::Technicians { api, cmd } => {
            if client::token().is_some() {
                api_only("technicians (with STEWARD_TOKEN set)")?;
            }
            cmd::technicians::run(&api, config, cmd).await
        }
        Command::Tenants { api, cmd } => {
            api_only("tenants")?;
            cmd::tenants::run(&api, cmd).await
        }
        Command::Schedules { api, cmd } => {
            api_only("schedules")?;
            cmd::schedules::run(&api, cmd).await
        }
        Command::Inbox { api, cmd } => {
            api_only("inbox")?;
            cmd::inbox::run(&api, cmd).await
        }
        Command::Sandbox(args) => cmd::sandbox::run(args).await,
        Command::Psa { api, cmd } => {
            api_only("psa")?;
            cmd::psa::run(&api, cmd).await
        }
        Command::Guard { api, cmd } => {
            api_only("guard")?;
            cmd::psa::guard(&api, cmd).await
        }
        Command::Secrets { cmd } => cmd::secrets::run(&config()?, cmd).await,
        Command::Bench(args) => cmd::bench::run(&global, args).await,
        Command::Worker(args) => cmd::worker::run(config()?, args).await,
        Command::Serve(args) => cmd::serve::run(config()?, args).await,
        Command::Run(args) => {
            api_only("run")?;
            cmd::runs::run(args).await
        }
        Command::Status { run, api } => {
            api_only("status")?;
            cmd::runs::status(&api, run).await
        }
        Command::Cancel {
            run,
            rollback,
            reason,
            api,
        } => {
            api_only("cancel")?;
            cmd::runs::control(&api, run, Control::Cancel { rollback, reason }).await
        }
        Command::Pause { run, reason, api } => {
            api_only("pause")?;
            cmd::runs::control(&api, run, Control::Pause { reason }).await
        }
        Command::Resume { run, api } => {
            api_only("resume")?;
            cmd::runs::control(&api, run, Control::Resume).await
        }
        Command::RetryStep { run, step, api } => {
            api_only("retry-step")?;
            cmd::runs::control(&api, run, Control::RetryStep { step }).await
        }
        Command::SkipStep {
            run,
            step,
            reason,
            api,
        } => {
            api_only("skip-step")?;
            cmd::runs::control(&api, run, Control::SkipStep { step, reason }).await
        }
        Command::RetryUndo { run, step, api } => {
            api_only("retry-undo")?;
            cmd::runs::control(&api, run, Control::RetryUndo { step }).await
        }
        Command::ResolveUndo {
            run,
            step,
            comment,
            api,
        } => {
            api_only("resolve-undo")?;
            cmd::runs::control(&api, run, Control::ResolveUndo { step, comment }).await
        }
    }
}
