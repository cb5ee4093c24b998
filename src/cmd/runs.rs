//! Runs: `run`, `status`, `runs`, and a technician's controls (`cancel`, `pause`, `resume`,
//! `retry-step`, `skip-step`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_engine::bench::Waiter;
use steward_engine::companies::Companies;
use steward_engine::config::Config;
use steward_engine::planner::{Planner, StartRun};
use steward_engine::store::Outcome;
use steward_schemas::{Event, InputType, RunId, Timestamp};
use steward_workers::Registry;

use super::connect;
use super::validate::load_plan;
use crate::client::{self, ApiArgs, Client, urlencode};
use crate::print;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
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

pub(crate) fn who() -> String {
    std::env::var("USER")
        .map(|u| format!("cli:{u}"))
        .unwrap_or_else(|_| "cli".to_owned())
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

pub(crate) async fn run(config: &Config, args: RunArgs) -> Result<ExitCode> {
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
        companies: Companies::for_store(&store),
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

pub(crate) async fn status(config: &Config, run: RunId, json: bool) -> Result<ExitCode> {
    let store = connect(config).await?;
    print::run(&store, run, json).await?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn command_event(config: &Config, run: RunId, event: Event) -> Result<ExitCode> {
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

/// `steward runs`.
#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    /// Only this company's runs.
    #[arg(long)]
    company: Option<String>,
    /// Only runs in this status.
    #[arg(long)]
    status: Option<String>,
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only runs created at or after this time (RFC 3339, e.g. `2026-11-01T00:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Continue a listing from where the last page ended.
    #[arg(long)]
    cursor: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub(crate) async fn list(api: &ApiArgs, args: RunsArgs) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let mut q = vec![format!("limit={}", args.limit)];
    for (k, v) in [
        ("company", &args.company),
        ("status", &args.status),
        ("workflow", &args.workflow),
        ("since", &args.since),
        ("until", &args.until),
        ("cursor", &args.cursor),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    let page = c.get(&format!("/v1/runs?{}", q.join("&"))).await?;
    c.print(&page, |p| {
        for r in p["runs"].as_array().into_iter().flatten() {
            println!(
                "{}  {:<16} {:<14} {:<16} {}  by {}",
                client::s(&r["run"]),
                client::s(&r["status"]),
                client::s(&r["company"]),
                client::s(&r["workflow"]),
                client::s(&r["created_at"]),
                client::s(&r["requested_by"])
            );
        }
        if let Some(next) = p["next_cursor"].as_str() {
            println!("(more: --cursor {next})");
        }
    });
    Ok(ExitCode::SUCCESS)
}
