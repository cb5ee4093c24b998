//! How the CLI prints runs, ops and benchmark figures.

use anyhow::{Result, anyhow};
use serde_json::json;
use steward_core::Plan;
use steward_engine::bench::BenchReport;
use steward_engine::store::{RunSnapshot, Store};
use steward_schemas::{CompState, HistoryEntry, RunId, RunStatus, StepState};
use steward_workers::Registry;

/// A spec field (group, access, approval rule) as its JSON name, e.g. `passwords_security`.
fn label(v: impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
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

/// Loads a run, its history and its workflow, and prints them (as JSON with `json`); the
/// snapshot it printed.
pub(crate) async fn run(store: &Store, run: RunId, json: bool) -> Result<RunSnapshot> {
    let snap = store
        .load(run)
        .await?
        .ok_or_else(|| anyhow!("no run `{run}` in namespace `{}`", store.keys().namespace()))?;
    let history = store.history(run).await?;
    let plan = store.plan(&snap.doc.ctx.workflow.hash).await?;
    // Secret inputs and secret-looking values are hidden before anything is printed.
    let mut shown = snap.clone();
    steward_core::history::redact_doc(&mut shown.doc, plan.def());
    if json {
        status_json(&shown, &history)?;
    } else {
        status(&shown, &history, &plan);
    }
    Ok(snap)
}

fn status_json(snap: &RunSnapshot, history: &[HistoryEntry]) -> Result<()> {
    let out = json!({ "version": snap.version, "run": snap.doc, "history": history });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn status(snap: &RunSnapshot, history: &[HistoryEntry], plan: &Plan) {
    let ctx = &snap.doc.ctx;
    let state = &snap.doc.state;
    println!(
        "run {}  {} v{} ({})  company {}",
        ctx.run_id,
        ctx.workflow.name,
        ctx.workflow.version,
        &ctx.workflow.hash[..12.min(ctx.workflow.hash.len())],
        ctx.company
    );
    println!("status:  {}", describe_status(&state.status));
    println!(
        "started: {} by {}   updated: {}",
        ctx.created_at, ctx.requested_by, state.updated_at
    );
    if !ctx.inputs.is_empty() {
        println!("inputs:  {}", serde_json::Value::Object(ctx.inputs.clone()));
    }
    println!("steps:");
    for step in plan.steps() {
        let Some(rec) = state.steps.get(&step.id) else {
            continue;
        };
        let detail = match &rec.state {
            StepState::Pending => "waiting for its needs".to_owned(),
            StepState::Ready { next } => format!("ready (attempt {})", next.attempt),
            StepState::AwaitingApproval {
                approvers,
                quorum,
                approvals,
                expires_at,
                stage,
                ..
            } => format!(
                "{} of {quorum} approvals from {}{}{}",
                approvals.len(),
                approvers.join(", "),
                if *stage > 0 { " (escalated)" } else { "" },
                expires_at
                    .map(|e| format!("; expires {e}"))
                    .unwrap_or_default()
            ),
            StepState::Queued { job, at } => {
                if job.polls > 0 {
                    format!(
                        "attempt {}, check {} since {at}",
                        job.attempt,
                        job.polls + 1
                    )
                } else {
                    format!("attempt {} since {at}", job.attempt)
                }
            }
            StepState::Polling {
                job,
                next_check,
                note,
            } => format!(
                "attempt {}, {} checks so far, next at {next_check}{}",
                job.attempt,
                job.polls,
                note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
            ),
            StepState::Retrying {
                next,
                not_before,
                error,
            } => {
                format!(
                    "attempt {next} at {not_before}; last error: {}",
                    error.message
                )
            }
            StepState::Succeeded { attempt, at, .. } => format!("attempt {attempt} at {at}"),
            StepState::Failed { attempt, error, .. } => {
                format!("attempt {attempt}: {}", error.message)
            }
            StepState::Skipped { reason, .. } => format!("{reason:?}"),
            StepState::Cancelled { at } => format!("at {at}"),
        };
        let undo = rec.undo.as_ref().map(|u| match u {
            CompState::Failed { error, .. } => format!("  [undo failed: {}]", error.message),
            CompState::Irreversible { reason } => format!("  [irreversible: {reason}]"),
            CompState::Blocked { by } => format!("  [undo blocked by {by}]"),
            other => format!("  [undo {}]", other.name()),
        });
        println!(
            "  {:<20} {:<10} {:<24} {detail}{}",
            step.id.as_str(),
            rec.state.name(),
            step.op,
            undo.unwrap_or_default()
        );
    }
    println!("timeline:");
    for entry in history {
        let time = entry.at.to_string();
        let clock = time.get(11..26).unwrap_or(&time);
        let who = match &entry.event {
            steward_schemas::Event::ApprovalDecided {
                by, approve, via, ..
            } => format!(
                "{} by {by} (via {via}): ",
                if *approve { "approved" } else { "rejected" }
            ),
            _ => String::new(),
        };
        println!(
            "  {clock}  {:<22} {who}{}",
            entry.event.name(),
            entry.changes.join("; ")
        );
    }
}

fn describe_status(status: &RunStatus) -> String {
    match status {
        RunStatus::Scheduled { start_at } => format!("scheduled for {start_at}"),
        RunStatus::Paused { reason } => format!("paused ({reason:?})"),
        RunStatus::Cancelling { by, rollback } => {
            format!(
                "cancelling (by {by}{}; waiting for running steps)",
                if *rollback { ", with rollback" } else { "" }
            )
        }
        RunStatus::RollingBack { cause } => format!("rolling back ({cause:?})"),
        RunStatus::Completed { failed, .. } if !failed.is_empty() => format!(
            "completed, with failed steps that were allowed to fail: {}",
            failed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RunStatus::Cancelled { by, .. } => format!("cancelled by {by}"),
        RunStatus::RolledBack {
            cause,
            irreversible,
            ..
        } => {
            let mut s = format!("rolled back ({cause:?})");
            if !irreversible.is_empty() {
                s.push_str(&format!(
                    "; NOT undone (irreversible): {}",
                    irreversible
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            s
        }
        RunStatus::RollbackFailed {
            cause,
            failed,
            left,
            irreversible,
            ..
        } => format!(
            "ROLLBACK FAILED ({cause:?}); undo failed: [{}]; left undone: [{}]; irreversible: [{}] — a technician must finish",
            failed
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            left.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            irreversible
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.name().to_owned(),
    }
}

pub(crate) fn bench(r: &BenchReport) {
    println!(
        "{} workflows × {} steps, {} mode, worker concurrency {} (redis: {})",
        r.workflows, r.steps, r.mode, r.concurrency, r.redis_persistence
    );
    println!("  workflows/s          {:>10.1}", r.workflows_per_s);
    println!("  steps/s              {:>10.1}", r.steps_per_s);
    println!("  workflow p50         {:>10.3} ms", r.p50_ms);
    println!("  workflow p99         {:>10.3} ms", r.p99_ms);
    println!("  step p50             {:>10.3} ms", r.step_p50_ms);
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
    println!("  elapsed              {:>10.3} s", r.elapsed_s);
}
