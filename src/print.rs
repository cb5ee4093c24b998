//! How the CLI prints runs, ops and benchmark figures.

use anyhow::Result;
use serde_json::Value;
use steward_core::words;
use steward_engine::api::runs::{ActionView, RunView};
use steward_engine::bench::BenchReport;
use steward_schemas::{RunAction, RunId};
use steward_workers::Registry;

/// A spec field (group, access, approval rule) as its JSON name, e.g. `passwords_security`.
fn label(v: impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Every op a workflow can use: its permission group, whether it reads or writes, and when it
/// needs approval (`policy`: as the company's policy says; `always`; `blocked`: never allowed).
pub(crate) fn ops(registry: &Registry, json: bool) {
    let specs: Vec<_> = registry
        .specs()
        .into_iter()
        .filter(|s| !s.internal)
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&specs).unwrap_or_default()
        );
        return;
    }
    let name_w = specs.iter().map(|s| s.name.len()).max().unwrap_or(0).max(2);
    let group_w = specs
        .iter()
        .map(|s| label(s.group).len())
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<name_w$}  {:<group_w$}  {:<6} {:<8} WHAT",
        "OP", "GROUP", "ACCESS", "APPROVAL"
    );
    for spec in specs {
        println!(
            "{:<name_w$}  {:<group_w$}  {:<6} {:<8} {}",
            spec.name,
            label(spec.group),
            label(spec.access),
            label(spec.approval),
            spec.summary
        );
        for input in spec.inputs {
            let req = if input.required {
                "required"
            } else {
                "optional"
            };
            let secret = if input.secret { ", secret" } else { "" };
            println!(
                "    {:<24} {req:<9} {}{secret}: {}",
                input.name, input.kind, input.description
            );
        }
    }
}

/// Prints a run as `steward status` shows it (as JSON with `json`): its status, each step's
/// state and undo, its timeline, and what a technician can do now, all in words.
pub(crate) fn run(view: &RunView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let ctx = &view.run.ctx;
    println!(
        "run {}  {} v{} ({})  company {}",
        ctx.run_id,
        ctx.workflow.name,
        ctx.workflow.version,
        &ctx.workflow.hash[..12.min(ctx.workflow.hash.len())],
        ctx.company
    );
    println!("status:  {}", view.summary.status_text);
    println!(
        "started: {} by {}   updated: {}",
        words::time(ctx.created_at),
        ctx.requested_by,
        words::time(view.run.state.updated_at)
    );
    if let Some(t) = &ctx.ticket {
        println!("ticket:  {} {} {}", t.psa, t.id, t.title);
    }
    if !ctx.inputs.is_empty() {
        let inputs: Vec<String> = ctx
            .inputs
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        println!("inputs:  {}", inputs.join(", "));
    }
    println!("steps:");
    let id_w = view
        .steps
        .iter()
        .map(|s| s.step.as_str().len())
        .max()
        .unwrap_or(0)
        .max(4);
    let op_w = view.steps.iter().map(|s| s.op.len()).max().unwrap_or(0);
    for step in &view.steps {
        println!(
            "  {:<id_w$}  {:<17}  {:<op_w$}  {}",
            step.step.as_str(),
            step.state.replace('_', " "),
            step.op,
            step.text
        );
        if let Some(undo) = &step.undo_text {
            println!("  {:<id_w$}  {:<17}  {:<op_w$}  {undo}", "", "", "");
        }
    }
    println!("timeline:");
    for h in &view.history {
        let time = h.entry.at.to_string();
        let clock = time.get(11..23).unwrap_or(&time);
        let changes: Vec<&str> = h
            .entry
            .changes
            .iter()
            .map(String::as_str)
            .filter(|c| !c.starts_with("run: "))
            .collect();
        if changes.is_empty() {
            println!("  {clock}  {}", h.text);
        } else {
            println!("  {clock}  {}  ({})", h.text, changes.join("; "));
        }
    }
    if !view.actions.is_empty() {
        println!("what you can do now:");
        let run = ctx.run_id;
        let lines: Vec<(String, &str)> = view
            .actions
            .iter()
            .map(|a| (command(run, a), a.text.as_str()))
            .collect();
        let w = lines.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
        for (cmd, text) in lines {
            println!("  {cmd:<w$}  {text}");
        }
    }
    Ok(())
}

/// The command that carries out an action the API offers.
fn command(run: RunId, a: &ActionView) -> String {
    match &a.action {
        RunAction::Resume => format!("steward resume {run}"),
        RunAction::Pause => format!("steward pause {run}"),
        RunAction::Cancel => format!("steward cancel {run}"),
        RunAction::CancelWithRollback => format!("steward cancel {run} --rollback"),
        RunAction::RetryStep { step } => format!("steward retry-step {run} {step}"),
        RunAction::SkipStep { step } => format!("steward skip-step {run} {step}"),
        RunAction::RetryUndo { step } => format!("steward retry-undo {run} {step}"),
        RunAction::ResolveUndo { step } => {
            format!("steward resolve-undo {run} {step} --comment \"what you did\"")
        }
        RunAction::Approve { step, .. } => format!("steward approve {run}/{step}"),
        RunAction::Reject { step, .. } => format!("steward reject {run}/{step}"),
    }
}

pub(crate) fn bench(r: &BenchReport) {
    match r.target_rate {
        Some(rate) => println!(
            "{} workflows × {} steps, {} at {rate} workflows/s, worker concurrency {} (redis: {})",
            r.workflows, r.steps, r.mode, r.concurrency, r.redis_persistence
        ),
        None => println!(
            "{} workflows × {} steps, {} mode, worker concurrency {} (redis: {})",
            r.workflows, r.steps, r.mode, r.concurrency, r.redis_persistence
        ),
    }
    println!("  workflows/s          {:>10.1}", r.workflows_per_s);
    println!("  steps/s              {:>10.1}", r.steps_per_s);
    println!("  workflow p50         {:>10.3} ms", r.p50_ms);
    println!("  workflow p90         {:>10.3} ms", r.p90_ms);
    println!("  workflow p99         {:>10.3} ms", r.p99_ms);
    println!("  workflow max         {:>10.3} ms", r.max_ms);
    println!("  step p50             {:>10.3} ms", r.step_p50_ms);
    println!(
        "  under way p50/p99    {:>10.3} / {:.3} ms  (first step's end → workflow's end)",
        r.underway_p50_ms, r.underway_p99_ms
    );
    println!(
        "  round trips / step   {:>10.2}  (worker)",
        r.round_trips_per_step
    );
    println!(
        "  round trips / run    {:>10.2}  (client: create + wait)",
        r.client_round_trips_per_workflow
    );
    println!(
        "  redis commands / step{:>10.2}  (incl. inside scripts)",
        r.redis_commands_per_step
    );
    println!(
        "  redis CPU / step     {:>10.1} µs  (server, user + system)",
        r.redis_cpu_us_per_step
    );
    println!(
        "  redis bytes / step   {:>10.0} in  {:>6.0} out  (every client)",
        r.redis_bytes_in_per_step, r.redis_bytes_out_per_step
    );
    println!(
        "  redis socket I/O     {:>10.2} reads {:>6.2} writes / step  (every client)",
        r.redis_reads_per_step, r.redis_writes_per_step
    );
    if let Some(us) = r.process_cpu_us_per_step {
        println!(
            "  steward CPU / step   {us:>10.1} µs  (this process: worker and client, user + system)"
        );
    }
    if !r.redis_command_costs.is_empty() {
        println!("  redis time by command (INFO commandstats; a script's includes its calls):");
        for c in r.redis_command_costs.iter().take(12) {
            println!(
                "    {:<18} {:>7.2} calls/step {:>8.2} µs/step",
                c.command, c.calls_per_step, c.us_per_step
            );
        }
    }
    println!("  elapsed              {:>10.3} s", r.elapsed_s);
}
