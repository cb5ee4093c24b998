//! Runs, through the HTTP API as the technician whose token is in STEWARD_TOKEN: `run`,
//! `status`, `runs`, and the controls `cancel`, `pause`, `resume`, `retry-step`, `skip-step`.
//! Who asks is always the token's technician; the API checks they may act on the run's company.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use steward_core::Plan;
use steward_engine::api::runs::{RunSummary, RunView, WorkflowInfo};
use steward_schemas::{CompState, CompanyId, InputType, RunId, StepId, StepState, Timestamp};
use steward_workers::Registry;

use super::exit;
use crate::client::{self, ApiArgs, Client, urlencode};
use crate::print;

/// `run --help`'s list of exit codes.
pub(crate) const EXIT_CODES: &str = "Exit codes with --wait: 0 completed; 3 waiting at an approval gate; 4 paused (waiting for a technician); 5 rolled back; 6 rollback failed (a technician must finish); 7 cancelled; 1 the command failed (2 for a usage error). Without --wait: 0 once the run is started.";

#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct RunArgs {
    /// The workflow: its name on the server (`demo`), or a workflow file, whose `name:` is
    /// used. The server's copy of that workflow is the one that runs.
    workflow: String,
    /// The company to act on.
    #[arg(long)]
    company: String,
    /// An input, `name=value` (repeatable). Non-text inputs take JSON (`shared=true`).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    /// Start at this time (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<Timestamp>,
    /// Wait until the run ends or needs someone (a gate's approvers, a technician), saying
    /// what it waits for meanwhile; then print it and exit with a code that says how it stands.
    #[arg(long)]
    wait: bool,
    /// Change nothing: show exactly what the run would change, system by system (the routed
    /// plan for the company, with the values it would use and secrets hidden), and exit.
    #[arg(long, conflicts_with_all = ["at", "wait"])]
    dry_run: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Parses `--input name=value` pairs, typed by the workflow's declarations.
pub(crate) fn parse_inputs(
    workflow: &WorkflowInfo,
    pairs: &[String],
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (name, raw) = pair.split_once('=').ok_or_else(|| {
            anyhow!("--input `{pair}`: write NAME=VALUE, e.g. --input upn=jane@contoso.com")
        })?;
        let kind = workflow
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

/// The server's workflow that `arg` names: a name, or a file whose `name:` is used (with a note
/// when the file differs from the server's copy).
pub(crate) async fn workflow(c: &Client, arg: &str) -> Result<WorkflowInfo> {
    let path = Path::new(arg);
    let local = if path.is_file() || arg.ends_with(".yaml") || arg.ends_with(".yml") {
        let text = std::fs::read_to_string(path).with_context(|| format!("{arg}: cannot read"))?;
        Some(Plan::load(arg, &text, Some(&Registry::builtin()))?)
    } else {
        None
    };
    let name = local.as_ref().map_or(arg, |p| p.def().name.as_str());
    let mut offered: Vec<WorkflowInfo> = serde_json::from_value(c.get("/v1/workflows").await?)
        .context("the API's list of workflows is not what this steward expects")?;
    let names: Vec<&str> = offered.iter().map(|w| w.name.as_str()).collect();
    let Some(found) = offered.iter().position(|w| w.name == name) else {
        bail!(
            "the server at {} offers no workflow `{name}`{}; it offers: {}. A workflow runs once its file is in the server's workflows folder (http.workflows, `steward serve --workflows DIR`)",
            c.base(),
            if local.is_some() {
                format!(" (the `name:` of {arg})")
            } else {
                String::new()
            },
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let found = offered.swap_remove(found);
    if let Some(plan) = &local
        && plan.hash() != found.hash
    {
        eprintln!(
            "note: {arg} differs from the server's workflow `{name}` (v{}); the server's copy is the one that runs",
            found.version
        );
    }
    Ok(found)
}

pub(crate) async fn run(args: RunArgs) -> Result<ExitCode> {
    let company: CompanyId = args
        .company
        .parse()
        .map_err(|e| anyhow!("--company: {e}"))?;
    let c = Client::new(&args.api)?;
    let flow = workflow(&c, &args.workflow).await?;
    let inputs = parse_inputs(&flow, &args.inputs)?;
    if args.dry_run {
        return super::plan::dry_run(&c, &flow.name, &company, inputs).await;
    }
    let started: RunSummary = serde_json::from_value(
        c.post(
            "/v1/runs",
            json!({"workflow": flow.name, "company": company, "inputs": inputs, "start_at": args.at}),
        )
        .await?,
    )
    .context("the API's answer is not a run")?;
    let run = started.run;
    if !args.wait {
        c.print(&serde_json::to_value(&started)?, |_| println!("{run}"));
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("started {run}; waiting for it");
    let (view, code) = wait(&c, run).await?;
    print::run(&view, args.api.json)?;
    Ok(ExitCode::from(code))
}

/// How a run stands for `--wait`: `None` while it moves by itself.
fn settled(view: &RunView) -> Option<u8> {
    use steward_schemas::RunStatus as S;
    match &view.run.state.status {
        S::Completed { .. } => Some(exit::COMPLETED),
        S::Cancelled { .. } => Some(exit::CANCELLED),
        S::RolledBack { .. } => Some(exit::ROLLED_BACK),
        S::RollbackFailed { .. } => Some(exit::ROLLBACK_FAILED),
        S::Paused { .. } => Some(exit::PAUSED),
        S::Running => {
            // Parked: a gate waits, and nothing else will move without someone.
            let mut gate = false;
            let mut moving = false;
            for rec in view.run.state.steps.values() {
                match rec.state {
                    StepState::AwaitingApproval { .. } => gate = true,
                    StepState::Ready { .. }
                    | StepState::Queued { .. }
                    | StepState::Retrying { .. }
                    | StepState::Polling { .. } => moving = true,
                    StepState::Pending
                    | StepState::Succeeded { .. }
                    | StepState::Failed { .. }
                    | StepState::Skipped { .. }
                    | StepState::Cancelled { .. } => {}
                }
            }
            (gate && !moving).then_some(exit::AT_GATE)
        }
        S::Created | S::Scheduled { .. } | S::Cancelling { .. } | S::RollingBack { .. } => None,
    }
}

/// What the run waits for now, a line each, in plan order: its scheduled start, gates and their
/// approvers, timers (retries of steps and of undos) and polls.
fn waiting_for(view: &RunView) -> Vec<String> {
    let mut out = Vec::new();
    if let steward_schemas::RunStatus::Scheduled { .. } = view.run.state.status {
        out.push(format!("the run: {}", view.summary.status_text));
    }
    for s in &view.steps {
        let Some(rec) = view.run.state.steps.get(&s.step) else {
            continue;
        };
        match rec.state {
            StepState::AwaitingApproval { .. } => {
                out.push(format!("gate `{}`: {}", s.step, s.text));
            }
            StepState::Retrying { .. } | StepState::Polling { .. } => {
                out.push(format!("step `{}`: {}", s.step, s.text));
            }
            StepState::Pending
            | StepState::Ready { .. }
            | StepState::Queued { .. }
            | StepState::Succeeded { .. }
            | StepState::Failed { .. }
            | StepState::Skipped { .. }
            | StepState::Cancelled { .. } => {}
        }
        if let (Some(CompState::Retrying { .. }), Some(text)) = (&rec.undo, &s.undo_text) {
            out.push(format!("the undo of `{}`: {text}", s.step));
        }
    }
    out
}

/// Follows the run until [`settled`]: prints each new thing it waits for (to stderr).
async fn wait(c: &Client, run: RunId) -> Result<(RunView, u8)> {
    let mut said: BTreeSet<String> = BTreeSet::new();
    let mut pause = Duration::from_millis(100);
    loop {
        let view: RunView = serde_json::from_value(c.get(&format!("/v1/runs/{run}")).await?)
            .context("the API's answer is not a run")?;
        if let Some(code) = settled(&view) {
            match code {
                exit::AT_GATE => {
                    for line in waiting_for(&view) {
                        if said.insert(line.clone()) {
                            eprintln!("waiting for {line}");
                        }
                    }
                    let gates = view.steps.iter().filter(|s| {
                        matches!(
                            view.run.state.steps.get(&s.step).map(|r| &r.state),
                            Some(StepState::AwaitingApproval { .. })
                        )
                    });
                    for s in gates {
                        eprintln!(
                            "{run} waits at approval gate `{}` (exit {code}); an approver decides with `steward approve {run}/{}` or `steward reject {run}/{}`",
                            s.step, s.step, s.step
                        );
                    }
                }
                exit::PAUSED => eprintln!(
                    "{run} is {} (exit {code}); see what you can do below",
                    view.summary.status_text
                ),
                _ => {}
            }
            return Ok((view, code));
        }
        for line in waiting_for(&view) {
            if said.insert(line.clone()) {
                eprintln!("waiting for {line}");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

pub(crate) async fn status(api: &ApiArgs, run: RunId) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let view: RunView = serde_json::from_value(c.get(&format!("/v1/runs/{run}")).await?)
        .context("the API's answer is not a run")?;
    print::run(&view, api.json)?;
    Ok(ExitCode::SUCCESS)
}

/// A technician's request about a run.
#[derive(Debug)]
pub(crate) enum Control {
    Cancel {
        rollback: bool,
        reason: Option<String>,
    },
    Pause {
        reason: Option<String>,
    },
    Resume,
    RetryStep {
        step: StepId,
    },
    SkipStep {
        step: StepId,
        reason: Option<String>,
    },
    RetryUndo {
        step: StepId,
    },
    ResolveUndo {
        step: StepId,
        comment: String,
    },
}

/// Sends a technician's request; prints the run's status after it.
pub(crate) async fn control(api: &ApiArgs, run: RunId, control: Control) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let (path, body) = match control {
        Control::Cancel { rollback, reason } => (
            format!("/v1/runs/{run}/cancel"),
            json!({"rollback": rollback, "reason": reason}),
        ),
        Control::Pause { reason } => (format!("/v1/runs/{run}/pause"), json!({"reason": reason})),
        Control::Resume => (format!("/v1/runs/{run}/resume"), json!({})),
        Control::RetryStep { step } => (format!("/v1/runs/{run}/steps/{step}/retry"), json!({})),
        Control::SkipStep { step, reason } => (
            format!("/v1/runs/{run}/steps/{step}/skip"),
            json!({"reason": reason}),
        ),
        Control::RetryUndo { step } => {
            (format!("/v1/runs/{run}/steps/{step}/retry-undo"), json!({}))
        }
        Control::ResolveUndo { step, comment } => (
            format!("/v1/runs/{run}/steps/{step}/resolve-undo"),
            json!({"comment": comment}),
        ),
    };
    let summary = c.post(&path, body).await?;
    c.print(&summary, |s| {
        println!("{run}: {}", client::s(&s["status_text"]));
    });
    Ok(ExitCode::SUCCESS)
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
            let text = client::s(&r["status_text"]);
            if text != client::s(&r["status"]).replace('_', " ") {
                println!("    {text}");
            }
        }
        if let Some(next) = p["next_cursor"].as_str() {
            println!("(more: --cursor {next})");
        }
    });
    Ok(ExitCode::SUCCESS)
}
