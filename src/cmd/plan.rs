//! What a workflow would do, without doing it, through the HTTP API as the technician whose token
//! is in STEWARD_TOKEN: `plan` (the routed plan: each step's actions, where they run and with what)
//! and `script` (the exact PowerShell an on-premises action would send). Secrets are never shown.

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use serde_json::{Map, Value, json};
use steward_engine::api::plans::{RoutedPlanView, ScriptView};
use steward_schemas::CompanyId;

use crate::client::{ApiArgs, Client};

/// `steward plan`'s arguments.
#[derive(Args, Debug)]
pub(crate) struct PlanArgs {
    /// The workflow: its name on the server (`onboarding`), or a workflow file, whose `name:` is
    /// used. The server's copy of that workflow is the one planned.
    workflow: String,
    /// The company to plan it for.
    #[arg(long)]
    company: String,
    /// An input, `name=value` (repeatable). Non-text inputs take JSON (`shared=true`).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `steward script`'s arguments.
#[derive(Args, Debug)]
pub(crate) struct ScriptArgs {
    /// The on-premises action (`ad.new_user`, `exchange_server.enable_remote_mailbox`, …; the
    /// actions `steward plan` lists under system `rmm`).
    action: String,
    /// The company, whose settings decide the machine and whether a runner reaches it.
    #[arg(long)]
    company: String,
    /// An input, `name=value` (repeatable). Lists and numbers take JSON (`groups=["Sales"]`).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    inputs: Vec<String>,
    #[command(flatten)]
    api: ApiArgs,
}

fn company(arg: &str) -> Result<CompanyId> {
    arg.parse().map_err(|e| anyhow!("--company: {e}"))
}

/// Prints the routed plan of a workflow for a company.
pub(crate) async fn plan(args: PlanArgs) -> Result<ExitCode> {
    let company = company(&args.company)?;
    let c = Client::new(&args.api)?;
    let flow = super::runs::workflow(&c, &args.workflow).await?;
    let inputs = super::runs::parse_inputs(&flow, &args.inputs)?;
    let answer = c
        .post(
            "/v1/plans",
            json!({"workflow": flow.name, "company": company, "inputs": inputs}),
        )
        .await?;
    let view: RoutedPlanView =
        serde_json::from_value(answer.clone()).context("the API's answer is not a plan")?;
    c.print(&answer, |_| print_plan(&view));
    Ok(if view.routable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::ERROR)
    })
}

/// `steward run … --dry-run`: the routed plan (`POST /v1/plans`: nothing is created or changed),
/// printed as what would change in each system, with the values a run would use.
pub(crate) async fn dry_run(
    c: &Client,
    workflow: &str,
    company: &CompanyId,
    inputs: Map<String, Value>,
) -> Result<ExitCode> {
    let answer = c
        .post(
            "/v1/plans",
            json!({"workflow": workflow, "company": company, "inputs": inputs}),
        )
        .await?;
    let view: RoutedPlanView =
        serde_json::from_value(answer.clone()).context("the API's answer is not a plan")?;
    c.print(&answer, |_| print_dry_run(&view));
    Ok(if view.routable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::ERROR)
    })
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_dry_run(p: &RoutedPlanView) {
    println!(
        "Dry run of {} v{} for {} ({}): identity {}, mailbox {}. Nothing was changed.",
        p.workflow, p.version, p.company_name, p.company, p.identity_provider, p.mailbox_provider
    );
    if !p.inputs.is_empty() {
        let inputs: Vec<String> = p
            .inputs
            .iter()
            .map(|(k, v)| format!("{k}={}", shown(v)))
            .collect();
        println!("inputs: {}", inputs.join(", "));
    }
    // What would change, by system (and host): each action with the step and its values.
    let mut by_system: Vec<(String, Vec<String>)> = Vec::new();
    let mut approvals = Vec::new();
    let mut skipped = Vec::new();
    let mut problems = Vec::new();
    for s in &p.steps {
        if let Some(problem) = &s.problem {
            problems.push(format!("{} ({}): {problem}", s.step, s.op));
            continue;
        }
        if s.op == "gate" {
            approvals.push(format!("{}: {}", s.step, s.summary));
            continue;
        }
        if s.actions.is_empty() {
            skipped.push(format!(
                "{} ({}){}",
                s.step,
                s.op,
                s.note
                    .as_deref()
                    .map_or_else(String::new, |n| format!(": {n}"))
            ));
            continue;
        }
        let params = match &s.params {
            Value::Object(m) if !m.is_empty() => format!(
                " with {}",
                m.iter()
                    .map(|(k, v)| format!("{k}={}", shown(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        };
        for a in &s.actions {
            let place = match (&a.host, &a.via) {
                (Some(host), Some(via)) => format!("{} on {host} ({via})", a.system),
                (Some(host), None) => format!("{} on {host}", a.system),
                _ => a.system.clone(),
            };
            let when = a
                .when
                .as_ref()
                .map_or_else(String::new, |w| format!(" (if {w})"));
            let line = format!("{}: {}{params}{when}", s.step, a.action);
            match by_system.iter_mut().find(|(p, _)| *p == place) {
                Some((_, lines)) => lines.push(line),
                None => by_system.push((place, vec![line])),
            }
        }
    }
    if !approvals.is_empty() {
        println!("\nwaits for approval:");
        for a in &approvals {
            println!("  {a}");
        }
    }
    for (system, lines) in &by_system {
        println!("\n{system}:");
        for l in lines {
            println!("  {l}");
        }
    }
    if !skipped.is_empty() {
        println!("\nnot run for these inputs and this company:");
        for s in &skipped {
            println!("  {s}");
        }
    }
    if !problems.is_empty() {
        println!("\ncannot run for this company (a run would fail here):");
        for s in &problems {
            println!("  {s}");
        }
    }
}

fn print_plan(p: &RoutedPlanView) {
    println!(
        "{} v{} for {} ({}): identity {}, mailbox {}",
        p.workflow, p.version, p.company_name, p.company, p.identity_provider, p.mailbox_provider
    );
    for (n, s) in p.steps.iter().enumerate() {
        println!();
        let summary = if s.summary.is_empty() {
            String::new()
        } else {
            format!(": {}", s.summary)
        };
        println!("{}. {} ({}){summary}", n + 1, s.step, s.op);
        if !s.needs.is_empty() {
            println!("   after {}", s.needs.join(", "));
        }
        if let Some(when) = &s.when {
            println!("   only when {when}");
        }
        for a in &s.actions {
            let place = match (&a.host, &a.via) {
                (Some(host), Some(via)) => format!("{} on {host}, {via}", a.system),
                (Some(host), None) => format!("{} on {host}", a.system),
                _ => a.system.clone(),
            };
            let when = a
                .when
                .as_ref()
                .map_or_else(String::new, |w| format!(" (if {w})"));
            println!("   → {} via {place}{when}", a.action);
            if !a.why.is_empty() {
                println!("     {}", a.why);
            }
        }
        if let Some(note) = &s.note {
            println!("   note: {note}");
        }
        if let Some(problem) = &s.problem {
            println!("   cannot run for this company: {problem}");
        }
        if let Value::Object(params) = &s.params
            && !params.is_empty()
        {
            let shown: Vec<String> = params
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            println!("   with {}", shown.join(", "));
        }
    }
    if !p.routable {
        println!();
        println!(
            "Some steps cannot run for this company: fix its settings (`steward companies show {}`) or the workflow.",
            p.company
        );
    }
}

/// Parses `--input name=value` pairs: JSON where it parses as a list, object, number or boolean,
/// text otherwise.
fn script_inputs(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (name, raw) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--input `{pair}`: write NAME=VALUE, e.g. --input sam=jdoe"))?;
        let value = match serde_json::from_str::<Value>(raw) {
            Ok(v @ (Value::Array(_) | Value::Object(_) | Value::Number(_) | Value::Bool(_))) => v,
            _ => Value::String(raw.to_owned()),
        };
        out.insert(name.to_owned(), value);
    }
    Ok(out)
}

/// Prints the exact script an on-premises action would send for a company.
pub(crate) async fn script(args: ScriptArgs) -> Result<ExitCode> {
    let company = company(&args.company)?;
    let c = Client::new(&args.api)?;
    let inputs = script_inputs(&args.inputs)?;
    let answer = c
        .post(
            "/v1/scripts",
            json!({"action": args.action, "company": company, "inputs": inputs}),
        )
        .await?;
    let view: ScriptView =
        serde_json::from_value(answer.clone()).context("the API's answer is not a script")?;
    c.print(&answer, |_| {
        eprintln!(
            "# {} on {}, {} (template {}; secret inputs read [redacted])",
            view.action, view.host, view.via, view.template
        );
        print!("{}", view.text);
        if !view.text.ends_with('\n') {
            println!();
        }
    });
    Ok(ExitCode::SUCCESS)
}
