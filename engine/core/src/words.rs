//! Words, not Rust: every run status, reason, step state, undo state and history event as a
//! sentence a technician reads (`rolled back: rejected by lead@msp.example at gate `approval` —
//! "wrong department"`).
//!
//! One renderer, so the API (the `text` fields of its run views), the CLI and a dashboard say
//! the same thing. Every match is exhaustive: a new status, reason or event does not compile
//! until it has its words. Nothing here prints a `Debug` form.

use steward_schemas::{
    AdminFallback, CompState, Decision, Event, FailureKind, HistoryEntry, JobRef, PauseReason,
    Phase, RollbackCause, RunAction, RunStatus, SkipReason, StepFailure, StepId, StepState,
    TimerKey, TimerKind, Timestamp, UnavailableApprover,
};

/// A time as a technician reads it: `2026-11-03 14:05:09 UTC` (whole seconds).
pub fn time(t: Timestamp) -> String {
    let text = t.to_string();
    match (text.get(..10), text.get(11..19)) {
        (Some(date), Some(clock)) => format!("{date} {clock} UTC"),
        _ => text,
    }
}

/// Text from a person (a comment, a reason), quoted on one line.
pub fn quoted(text: &str) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("\u{201c}{one_line}\u{201d}")
}

/// ` — “why”` when there is a why.
fn because(why: Option<&str>) -> String {
    match why.map(str::trim).filter(|w| !w.is_empty()) {
        Some(w) => format!(" \u{2014} {}", quoted(w)),
        None => String::new(),
    }
}

/// Step ids as `a, b, c`.
fn steps(list: &[StepId]) -> String {
    list.iter()
        .map(StepId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// People as `a, b or c` (any one of them).
fn anyone(people: &[String]) -> String {
    match people {
        [] => "nobody".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

fn unavailable_list(list: &[UnavailableApprover]) -> String {
    list.iter()
        .map(|u| format!("{} {}", u.email, u.reason.words()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Why an attempt failed: the service's message, its code, and what the kind of failure means.
pub fn failure(f: &StepFailure) -> String {
    let mut out = f.message.trim().to_owned();
    if out.is_empty() {
        out = "no message".to_owned();
    }
    if let Some(code) = f.code.as_deref().filter(|c| !c.is_empty()) {
        out.push_str(&format!(" (code {code})"));
    }
    let kind = match f.kind {
        FailureKind::Retryable | FailureKind::Terminal | FailureKind::Rejected => "",
        FailureKind::Timeout => " (the attempt ran past the step's timeout)",
        FailureKind::Poison => {
            " (delivered too many times without an outcome: its workers kept stopping)"
        }
        FailureKind::GaveUpWaiting => " (waited longer than the step's max_wait)",
    };
    out.push_str(kind);
    if let Some(wait) = f.retry_after {
        out.push_str(&format!("; the service asked to wait {wait}"));
    }
    out
}

/// Why a run is paused.
pub fn pause_reason(r: &PauseReason) -> String {
    match r {
        PauseReason::Operator { by, note } => format!("paused by {by}{}", because(note.as_deref())),
        PauseReason::StepFailed { step } => {
            format!("step `{step}` failed and its workflow says to pause (on_failure: pause)")
        }
        PauseReason::PolicyBlocked { step, reason } => {
            format!("the company's policy now refuses step `{step}`: {reason}")
        }
    }
}

/// Why a run is rolled back.
pub fn rollback_cause(c: &RollbackCause) -> String {
    match c {
        RollbackCause::StepFailed { step, message } => {
            format!("step `{step}` failed: {}", message.trim())
        }
        RollbackCause::Cancelled { by } => format!("cancelled by {by}"),
        RollbackCause::Rejected { step, by, comment } if by == "expiry" => format!(
            "gate `{step}` expired without a decision{}",
            comment
                .as_deref()
                .map(|c| format!(" ({})", c.trim()))
                .unwrap_or_default()
        ),
        RollbackCause::Rejected { step, by, comment } => format!(
            "rejected by {by} at gate `{step}`{}",
            because(comment.as_deref())
        ),
    }
}

/// Why a step was skipped.
pub fn skip_reason(r: &SkipReason) -> String {
    match r {
        SkipReason::Condition => "its `when:` condition was false".to_owned(),
        SkipReason::NeedNotMet { step } => {
            format!("step `{step}`, which it needs, did not succeed")
        }
        SkipReason::Operator { by, note } => {
            format!("skipped by {by}{}", because(note.as_deref()))
        }
    }
}

/// A run's status in a sentence.
pub fn status(s: &RunStatus) -> String {
    match s {
        RunStatus::Created => "being created".to_owned(),
        RunStatus::Scheduled { start_at } => format!("scheduled to start at {}", time(*start_at)),
        RunStatus::Running => "running".to_owned(),
        RunStatus::Paused { reason } => format!("paused: {}", pause_reason(reason)),
        RunStatus::Cancelling { by, rollback } => format!(
            "being cancelled by {by}{}; waiting for the steps that are running to report",
            if *rollback { ", then rolled back" } else { "" }
        ),
        RunStatus::RollingBack { cause } => format!("rolling back: {}", rollback_cause(cause)),
        RunStatus::Completed { at, failed } if failed.is_empty() => {
            format!("completed at {}", time(*at))
        }
        RunStatus::Completed { at, failed } => format!(
            "completed at {}, with steps that were allowed to fail failing: {}",
            time(*at),
            steps(failed)
        ),
        RunStatus::Cancelled { at, by } => format!("cancelled by {by} at {}", time(*at)),
        RunStatus::RolledBack {
            at: _,
            cause,
            irreversible,
            resolved,
        } => {
            let mut out = format!("rolled back: {}", rollback_cause(cause));
            if !resolved.is_empty() {
                out.push_str(&format!(
                    "; undone by hand by a technician: {}",
                    steps(resolved)
                ));
            }
            if !irreversible.is_empty() {
                out.push_str(&format!(
                    "; NOT undone (irreversible): {}",
                    steps(irreversible)
                ));
            }
            out
        }
        RunStatus::RollbackFailed {
            at: _,
            cause,
            failed,
            left,
            irreversible,
            resolved,
        } => {
            let mut out = format!(
                "ROLLBACK FAILED: {}; could not undo: {}",
                rollback_cause(cause),
                steps(failed)
            );
            if !resolved.is_empty() {
                out.push_str(&format!(
                    "; undone by hand by a technician: {}",
                    steps(resolved)
                ));
            }
            if !left.is_empty() {
                out.push_str(&format!(
                    "; not undone because an undo they must follow failed: {}",
                    steps(left)
                ));
            }
            if !irreversible.is_empty() {
                out.push_str(&format!("; irreversible: {}", steps(irreversible)));
            }
            out.push_str(
                " \u{2014} retry the failed undo once its cause is fixed, or undo it by hand and mark it resolved",
            );
            out
        }
    }
}

/// A run's status, with the technician's cancel reason when the run was cancelled (the reason
/// is recorded in the history's `cancel_requested` entry, not in the status).
pub fn run_status(s: &RunStatus, history: &[HistoryEntry]) -> String {
    let cancelled = matches!(
        s,
        RunStatus::Cancelling { .. }
            | RunStatus::Cancelled { .. }
            | RunStatus::RollingBack {
                cause: RollbackCause::Cancelled { .. }
            }
            | RunStatus::RolledBack {
                cause: RollbackCause::Cancelled { .. },
                ..
            }
            | RunStatus::RollbackFailed {
                cause: RollbackCause::Cancelled { .. },
                ..
            }
    );
    let reason = cancelled
        .then(|| {
            history.iter().rev().find_map(|h| match &h.event {
                Event::CancelRequested { reason, .. } => Some(reason.as_deref()),
                _ => None,
            })
        })
        .flatten()
        .flatten();
    format!("{}{}", status(s), because(reason))
}

fn decision(d: &Decision) -> String {
    format!("{} (via {}){}", d.by, d.via, because(d.comment.as_deref()))
}

/// Where a step is, in a sentence.
pub fn step_state(s: &StepState) -> String {
    match s {
        StepState::Pending => "waiting for the steps it needs".to_owned(),
        StepState::Ready { next } => {
            format!("ready to run attempt {} once the run goes on", next.attempt)
        }
        StepState::AwaitingApproval {
            attempt: _,
            since,
            stage,
            approvers,
            escalation,
            quorum,
            expires_at,
            approvals,
            unavailable,
            to_admins,
        } => {
            let mut out = format!(
                "waiting since {} for {} from {}",
                time(*since),
                plural(*quorum, "approval", "approvals"),
                anyone(approvers)
            );
            match to_admins {
                Some(AdminFallback::Approvers) => {
                    out.push_str(" (the MSP's admins: nobody named could decide)");
                }
                Some(AdminFallback::Escalation) => {
                    out.push_str(" (it escalates to the MSP's admins: nobody named could take it)");
                }
                None => {}
            }
            if !unavailable.is_empty() {
                out.push_str(&format!("; left out: {}", unavailable_list(unavailable)));
            }
            if *stage > 0 {
                out.push_str(" (escalated)");
            }
            if !approvals.is_empty() {
                out.push_str(&format!(
                    "; approved so far by {}",
                    approvals
                        .iter()
                        .map(decision)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if let Some(at) = expires_at {
                out.push_str(&format!("; expires at {}", time(*at)));
                if *stage == 0 && !escalation.is_empty() {
                    out.push_str(&format!(", then goes to {}", anyone(escalation)));
                }
            }
            out
        }
        StepState::Queued { job, at } if job.polls > 0 => format!(
            "being checked again since {} (attempt {}, check {})",
            time(*at),
            job.attempt,
            job.polls + 1
        ),
        StepState::Queued { job, at } => {
            format!("running attempt {} since {}", job.attempt, time(*at))
        }
        StepState::Polling {
            job,
            next_check,
            note,
        } => format!(
            "{}; checked again at {} (attempt {}, {} so far)",
            match note.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(n) => format!("waiting for {n}"),
                None => "not done yet".to_owned(),
            },
            time(*next_check),
            job.attempt,
            plural(job.polls, "check", "checks")
        ),
        StepState::Retrying {
            next,
            not_before,
            error,
        } => format!(
            "attempt {next} at {}; the last one failed: {}",
            time(*not_before),
            failure(error)
        ),
        StepState::Succeeded { attempt, at, .. } => {
            format!("succeeded at {} (attempt {attempt})", time(*at))
        }
        StepState::Failed { attempt, at, error } => format!(
            "failed at {} after {}: {}",
            time(*at),
            plural(attempt.get(), "attempt", "attempts"),
            failure(error)
        ),
        StepState::Skipped { at: _, reason } => format!("skipped: {}", skip_reason(reason)),
        StepState::Cancelled { at } => format!(
            "stopped at {}: the run was cancelled or rolled back",
            time(*at)
        ),
    }
}

/// Where a step's undo is, in a sentence.
pub fn undo_state(c: &CompState) -> String {
    match c {
        CompState::Waiting => {
            "undo waits for the steps that depend on it to be undone first".to_owned()
        }
        CompState::Queued { attempt, at } => {
            format!("being undone since {} (attempt {attempt})", time(*at))
        }
        CompState::Retrying {
            next,
            not_before,
            error,
        } => format!(
            "undo attempt {next} at {}; the last one failed: {}",
            time(*not_before),
            failure(error)
        ),
        CompState::Done { at } => format!("undone at {}", time(*at)),
        CompState::Failed { attempt, at, error } => format!(
            "undo failed at {} after {}: {}",
            time(*at),
            plural(attempt.get(), "attempt", "attempts"),
            failure(error)
        ),
        CompState::Resolved {
            by,
            at,
            comment,
            via,
        } => format!(
            "undone by hand: {by} marked it resolved at {} (via {via}){}",
            time(*at),
            because(Some(comment))
        ),
        CompState::Irreversible { reason } => format!("cannot be undone: {}", reason.trim()),
        CompState::Blocked { by } => {
            format!("not undone: the undo of `{by}`, which must come first, failed")
        }
    }
}

fn timer(t: &TimerKey) -> String {
    let step = t
        .step
        .as_ref()
        .map_or_else(|| "the run".to_owned(), |s| format!("step `{s}`"));
    match t.kind {
        TimerKind::Start => "the scheduled start time came".to_owned(),
        TimerKind::Retry => format!("the time for the next attempt of {step} came"),
        TimerKind::Poll => format!("the time to check {step} again came"),
        TimerKind::UndoRetry => format!("the time for the next undo attempt of {step} came"),
        TimerKind::GateExpiry => format!("the time to decide at {step} ran out"),
    }
}

fn job(j: &JobRef) -> String {
    match j.phase {
        Phase::Run => format!("`{}`", j.step),
        Phase::Undo => format!("the undo of `{}`", j.step),
    }
}

/// A history event, in a sentence.
pub fn event(e: &Event) -> String {
    match e {
        Event::RunCreated { start_at: None } => "run created".to_owned(),
        Event::RunCreated { start_at: Some(at) } => {
            format!("run created; it starts at {}", time(*at))
        }
        Event::StepSucceeded { step, .. } => format!("step `{step}` succeeded"),
        Event::StepPending {
            step,
            check_after,
            note,
            ..
        } => format!(
            "step `{step}` is not done yet{}; checking again in {check_after}",
            match note.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(n) => format!(" (waiting for {n})"),
                None => String::new(),
            }
        ),
        Event::StepFailed { step, error, .. } => {
            format!("step `{step}` failed: {}", failure(error))
        }
        Event::UndoSucceeded { step, .. } => format!("step `{step}` was undone"),
        Event::UndoFailed { step, error, .. } => {
            format!("undoing step `{step}` failed: {}", failure(error))
        }
        Event::GateOpened {
            step,
            approvers,
            escalation,
            unavailable,
            ..
        } => {
            let mut out = format!("gate `{step}` opened for {}", anyone(approvers));
            if !escalation.is_empty() {
                out.push_str(&format!("; it escalates to {}", anyone(escalation)));
            }
            if !unavailable.is_empty() {
                out.push_str(&format!(
                    "; left out (they cannot decide): {}",
                    unavailable_list(unavailable)
                ));
            }
            out
        }
        Event::ApprovalDecided {
            step,
            by,
            approve,
            comment,
            via,
        } => format!(
            "{} at gate `{step}` by {by} (via {via}){}",
            if *approve { "approved" } else { "rejected" },
            because(comment.as_deref())
        ),
        Event::StepBlocked { step, reason, .. } => {
            format!("the company's policy refused step `{step}`: {reason}")
        }
        Event::TimerFired { timer: t } => timer(t),
        Event::JobsRevoked { jobs } => format!(
            "taken back from the queue before a worker started them: {}",
            jobs.iter().map(job).collect::<Vec<_>>().join(", ")
        ),
        Event::CancelRequested {
            by,
            rollback,
            reason,
        } => format!(
            "cancelled by {by}{}{}",
            if *rollback { ", with rollback" } else { "" },
            because(reason.as_deref())
        ),
        Event::PauseRequested { by, reason } => {
            format!("paused by {by}{}", because(reason.as_deref()))
        }
        Event::ResumeRequested { by } => format!("resumed by {by}"),
        Event::RetryStepRequested { step, by } => {
            format!("{by} asked for step `{step}` to be tried again now")
        }
        Event::RetryUndoRequested { step, by } => {
            format!("{by} asked for the undo of step `{step}` to be tried again")
        }
        Event::UndoResolved {
            step,
            by,
            comment,
            via,
        } => format!(
            "{by} marked the undo of step `{step}` as done by hand (via {via}){}",
            because(Some(comment))
        ),
        Event::SkipStepRequested { step, by, reason } => {
            format!(
                "step `{step}` skipped by {by}{}",
                because(reason.as_deref())
            )
        }
    }
}

/// What a technician's request does, in a sentence (for the fixes offered with a run).
pub fn action(a: &RunAction) -> String {
    match a {
        RunAction::Cancel => "cancel the run; what it changed stays as it is".to_owned(),
        RunAction::CancelWithRollback => "cancel the run and undo what it changed".to_owned(),
        RunAction::Pause => "pause the run: nothing new starts until it is resumed".to_owned(),
        RunAction::Resume => "resume the run".to_owned(),
        RunAction::RetryStep { step } => format!("try step `{step}` again now"),
        RunAction::SkipStep { step } => format!("skip step `{step}` and go on without it"),
        RunAction::RetryUndo { step } => format!("try undoing step `{step}` again"),
        RunAction::ResolveUndo { step } => format!(
            "mark the undo of step `{step}` as done by hand (say what you did in a comment)"
        ),
        RunAction::Approve { step, by } => {
            format!("approve gate `{step}` (it is up to {})", anyone(by))
        }
        RunAction::Reject { step, by } => {
            format!("reject gate `{step}` (it is up to {})", anyone(by))
        }
    }
}

/// A history entry in a sentence: its event, and the run's status when the event changed it.
pub fn entry(h: &HistoryEntry) -> String {
    let run_changed = h.changes.iter().any(|c| c.starts_with("run: "));
    if run_changed {
        format!(
            "{}; the run is now {}",
            event(&h.event),
            h.status.replace('_', " ")
        )
    } else {
        event(&h.event)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;
    use steward_schemas::{Attempt, Dispatch, Dur, Rollback, Unavailability};

    use super::*;

    fn at() -> Timestamp {
        Timestamp::from_millis(1_793_000_000_000)
    }

    fn id(s: &str) -> StepId {
        StepId::parse(s).expect("a valid step id")
    }

    fn err(kind: FailureKind) -> StepFailure {
        StepFailure {
            kind,
            message: "Graph answered 404".to_owned(),
            code: Some("Request_ResourceNotFound".to_owned()),
            retry_after: Some(Dur::secs(30)),
        }
    }

    fn two() -> Attempt {
        Attempt::FIRST.next()
    }

    /// One of each event, with every optional part both absent and present.
    fn events() -> Vec<Event> {
        vec![
            Event::RunCreated { start_at: None },
            Event::RunCreated {
                start_at: Some(at()),
            },
            Event::StepSucceeded {
                step: id("create_user"),
                seq: 1,
                output: json!({"id": "u1"}),
                rollback: Rollback::Nothing,
            },
            Event::StepPending {
                step: id("sync"),
                seq: 2,
                check_after: Dur::secs(60),
                note: Some("Entra Connect to sync".to_owned()),
            },
            Event::StepPending {
                step: id("sync"),
                seq: 3,
                check_after: Dur::secs(60),
                note: None,
            },
            Event::StepFailed {
                step: id("create_user"),
                seq: 1,
                error: err(FailureKind::Terminal),
            },
            Event::UndoSucceeded {
                step: id("create_user"),
                seq: 4,
            },
            Event::UndoFailed {
                step: id("create_user"),
                seq: 5,
                error: StepFailure::retryable("timeout"),
            },
            Event::GateOpened {
                step: id("approval"),
                seq: 1,
                approvers: vec!["alice@msp.example".to_owned(), "bob@msp.example".to_owned()],
                escalation: vec!["lead@msp.example".to_owned()],
                unavailable: vec![UnavailableApprover {
                    email: "gone@msp.example".to_owned(),
                    reason: Unavailability::Disabled,
                }],
                admins: vec!["lead@msp.example".to_owned()],
            },
            Event::GateOpened {
                step: id("approval"),
                seq: 1,
                approvers: vec![],
                escalation: vec![],
                unavailable: vec![UnavailableApprover {
                    email: "who@msp.example".to_owned(),
                    reason: Unavailability::NotATechnician,
                }],
                admins: vec![],
            },
            Event::RetryUndoRequested {
                step: id("create_user"),
                by: "tech@msp.example".to_owned(),
            },
            Event::UndoResolved {
                step: id("create_user"),
                by: "tech@msp.example".to_owned(),
                comment: "deleted the account by hand".to_owned(),
                via: "api".to_owned(),
            },
            Event::ApprovalDecided {
                step: id("approval"),
                by: "alice@msp.example".to_owned(),
                approve: true,
                comment: Some("looks right".to_owned()),
                via: "api".to_owned(),
            },
            Event::ApprovalDecided {
                step: id("approval"),
                by: "lead@msp.example".to_owned(),
                approve: false,
                comment: None,
                via: "link".to_owned(),
            },
            Event::StepBlocked {
                step: id("create_user"),
                seq: 1,
                reason: "users is read only for contoso".to_owned(),
            },
            Event::TimerFired {
                timer: TimerKey::start(),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::Retry, id("a"), 1),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::Poll, id("a"), 1),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::UndoRetry, id("a"), 1),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::GateExpiry, id("a"), 1),
            },
            Event::JobsRevoked {
                jobs: vec![
                    JobRef {
                        step: id("a"),
                        seq: 1,
                        phase: Phase::Run,
                    },
                    JobRef {
                        step: id("b"),
                        seq: 2,
                        phase: Phase::Undo,
                    },
                ],
            },
            Event::CancelRequested {
                by: "tech@msp.example".to_owned(),
                rollback: true,
                reason: Some("duplicate ticket".to_owned()),
            },
            Event::CancelRequested {
                by: "tech@msp.example".to_owned(),
                rollback: false,
                reason: None,
            },
            Event::PauseRequested {
                by: "tech@msp.example".to_owned(),
                reason: Some("waiting for the manager".to_owned()),
            },
            Event::PauseRequested {
                by: "tech@msp.example".to_owned(),
                reason: None,
            },
            Event::ResumeRequested {
                by: "tech@msp.example".to_owned(),
            },
            Event::RetryStepRequested {
                step: id("a"),
                by: "tech@msp.example".to_owned(),
            },
            Event::SkipStepRequested {
                step: id("a"),
                by: "tech@msp.example".to_owned(),
                reason: Some("done by hand".to_owned()),
            },
            Event::SkipStepRequested {
                step: id("a"),
                by: "tech@msp.example".to_owned(),
                reason: None,
            },
        ]
    }

    fn causes() -> Vec<RollbackCause> {
        vec![
            RollbackCause::StepFailed {
                step: id("a"),
                message: "Graph answered 404".to_owned(),
            },
            RollbackCause::Cancelled {
                by: "tech@msp.example".to_owned(),
            },
            RollbackCause::Rejected {
                step: id("approval"),
                by: "lead@msp.example".to_owned(),
                comment: Some("wrong department".to_owned()),
            },
            RollbackCause::Rejected {
                step: id("approval"),
                by: "lead@msp.example".to_owned(),
                comment: None,
            },
            RollbackCause::Rejected {
                step: id("approval"),
                by: "expiry".to_owned(),
                comment: Some("no decision within 3d".to_owned()),
            },
        ]
    }

    fn statuses() -> Vec<RunStatus> {
        let mut out = vec![
            RunStatus::Created,
            RunStatus::Scheduled { start_at: at() },
            RunStatus::Running,
            RunStatus::Paused {
                reason: PauseReason::Operator {
                    by: "tech@msp.example".to_owned(),
                    note: Some("waiting for HR".to_owned()),
                },
            },
            RunStatus::Paused {
                reason: PauseReason::Operator {
                    by: "tech@msp.example".to_owned(),
                    note: None,
                },
            },
            RunStatus::Paused {
                reason: PauseReason::StepFailed { step: id("a") },
            },
            RunStatus::Paused {
                reason: PauseReason::PolicyBlocked {
                    step: id("a"),
                    reason: "users is read only".to_owned(),
                },
            },
            RunStatus::Cancelling {
                by: "tech@msp.example".to_owned(),
                rollback: true,
            },
            RunStatus::Cancelling {
                by: "tech@msp.example".to_owned(),
                rollback: false,
            },
            RunStatus::Completed {
                at: at(),
                failed: vec![],
            },
            RunStatus::Completed {
                at: at(),
                failed: vec![id("notify")],
            },
            RunStatus::Cancelled {
                at: at(),
                by: "tech@msp.example".to_owned(),
            },
        ];
        for cause in causes() {
            out.push(RunStatus::RollingBack {
                cause: cause.clone(),
            });
            out.push(RunStatus::RolledBack {
                at: at(),
                cause: cause.clone(),
                irreversible: vec![id("reset_password")],
                resolved: vec![id("create_user")],
            });
            out.push(RunStatus::RolledBack {
                at: at(),
                cause: cause.clone(),
                irreversible: vec![],
                resolved: vec![],
            });
            out.push(RunStatus::RollbackFailed {
                at: at(),
                cause: cause.clone(),
                failed: vec![id("create_user")],
                left: vec![id("add_group")],
                irreversible: vec![id("reset_password")],
                resolved: vec![id("mailbox")],
            });
            out.push(RunStatus::RollbackFailed {
                at: at(),
                cause,
                failed: vec![id("create_user")],
                left: vec![],
                irreversible: vec![],
                resolved: vec![],
            });
        }
        out
    }

    fn step_states() -> Vec<StepState> {
        let d = Dispatch::first();
        let polled = Dispatch {
            attempt: two(),
            polls: 3,
            waiting_since: Some(at()),
        };
        vec![
            StepState::Pending,
            StepState::Ready { next: d },
            StepState::AwaitingApproval {
                attempt: Attempt::FIRST,
                since: at(),
                stage: 0,
                approvers: vec!["alice@msp.example".to_owned(), "bob@msp.example".to_owned()],
                escalation: vec!["lead@msp.example".to_owned()],
                quorum: 2,
                expires_at: Some(at()),
                approvals: vec![Decision {
                    by: "alice@msp.example".to_owned(),
                    at: at(),
                    comment: Some("fine".to_owned()),
                    via: "api".to_owned(),
                }],
                unavailable: vec![UnavailableApprover {
                    email: "gone@msp.example".to_owned(),
                    reason: Unavailability::Disabled,
                }],
                to_admins: Some(AdminFallback::Escalation),
            },
            StepState::AwaitingApproval {
                attempt: two(),
                since: at(),
                stage: 1,
                approvers: vec!["lead@msp.example".to_owned()],
                escalation: vec![],
                quorum: 1,
                expires_at: None,
                approvals: vec![],
                unavailable: vec![],
                to_admins: Some(AdminFallback::Approvers),
            },
            StepState::AwaitingApproval {
                attempt: two(),
                since: at(),
                stage: 0,
                approvers: vec!["lead@msp.example".to_owned()],
                escalation: vec![],
                quorum: 1,
                expires_at: None,
                approvals: vec![],
                unavailable: vec![],
                to_admins: None,
            },
            StepState::Queued { job: d, at: at() },
            StepState::Queued {
                job: polled,
                at: at(),
            },
            StepState::Polling {
                job: polled,
                next_check: at(),
                note: Some("the mailbox to appear".to_owned()),
            },
            StepState::Polling {
                job: polled,
                next_check: at(),
                note: None,
            },
            StepState::Retrying {
                next: two(),
                not_before: at(),
                error: err(FailureKind::Retryable),
            },
            StepState::Succeeded {
                attempt: Attempt::FIRST,
                at: at(),
                output: json!({"a": {"b": null}}),
                rollback: Rollback::Nothing,
            },
            StepState::Failed {
                attempt: two(),
                at: at(),
                error: err(FailureKind::Timeout),
            },
            StepState::Skipped {
                at: at(),
                reason: SkipReason::Condition,
            },
            StepState::Skipped {
                at: at(),
                reason: SkipReason::NeedNotMet { step: id("a") },
            },
            StepState::Skipped {
                at: at(),
                reason: SkipReason::Operator {
                    by: "tech@msp.example".to_owned(),
                    note: None,
                },
            },
            StepState::Skipped {
                at: at(),
                reason: SkipReason::Operator {
                    by: "tech@msp.example".to_owned(),
                    note: Some("done by hand".to_owned()),
                },
            },
            StepState::Cancelled { at: at() },
        ]
    }

    fn undo_states() -> Vec<CompState> {
        vec![
            CompState::Waiting,
            CompState::Queued {
                attempt: Attempt::FIRST,
                at: at(),
            },
            CompState::Retrying {
                next: two(),
                not_before: at(),
                error: err(FailureKind::Poison),
            },
            CompState::Done { at: at() },
            CompState::Failed {
                attempt: two(),
                at: at(),
                error: err(FailureKind::GaveUpWaiting),
            },
            CompState::Resolved {
                by: "tech@msp.example".to_owned(),
                at: at(),
                comment: "removed the licence by hand".to_owned(),
                via: "api".to_owned(),
            },
            CompState::Irreversible {
                reason: "a reset password cannot be restored".to_owned(),
            },
            CompState::Blocked { by: id("b") },
        ]
    }

    /// The variants `T`'s JSON Schema lists: the `const` of each `oneOf` entry, or of its `tag`
    /// property for an internally tagged enum.
    fn variants<T: schemars::JsonSchema>(tag: &str) -> BTreeSet<String> {
        let v = serde_json::to_value(schemars::schema_for!(T)).expect("a schema is JSON");
        let list = v["oneOf"].as_array().cloned().unwrap_or_default();
        assert!(!list.is_empty(), "{v}");
        list.iter()
            .map(|entry| {
                entry["properties"][tag]["const"]
                    .as_str()
                    .or_else(|| entry["const"].as_str())
                    .unwrap_or_else(|| panic!("no `{tag}` in {entry}"))
                    .to_owned()
            })
            .collect()
    }

    fn names<T: serde::Serialize>(
        items: impl IntoIterator<Item = T>,
        tag: &str,
    ) -> BTreeSet<String> {
        items
            .into_iter()
            .map(|i| {
                let v = serde_json::to_value(i).expect("serialises");
                v.get(tag)
                    .unwrap_or(&v)
                    .as_str()
                    .expect("tagged")
                    .to_owned()
            })
            .collect()
    }

    fn check(what: &str, text: &str) {
        for bad in ["{", "}", "Some(", "None", "\"\"", "[]"] {
            assert!(!text.contains(bad), "{what}: `{text}` contains `{bad}`");
        }
        assert!(
            !text.trim().is_empty() && text == text.trim(),
            "{what}: `{text}`"
        );
    }

    /// Every event kind, run status, pause reason, rollback cause, skip reason, step state, undo
    /// state and failure kind is rendered (the samples must cover every variant the types' JSON
    /// Schemas list, so a new variant fails here until it has a sample), and none reads like Rust.
    #[test]
    fn every_status_state_and_event_reads_as_a_sentence() {
        let events = events();
        let statuses = statuses();
        let steps = step_states();
        let undos = undo_states();
        let kinds = [
            FailureKind::Retryable,
            FailureKind::Terminal,
            FailureKind::Timeout,
            FailureKind::Poison,
            FailureKind::GaveUpWaiting,
            FailureKind::Rejected,
        ];
        let pauses = statuses.iter().filter_map(|s| match s {
            RunStatus::Paused { reason } => Some(reason),
            _ => None,
        });
        let skips = steps.iter().filter_map(|s| match s {
            StepState::Skipped { reason, .. } => Some(reason),
            _ => None,
        });
        let timers = events.iter().filter_map(|e| match e {
            Event::TimerFired { timer } => Some(timer.kind),
            _ => None,
        });
        assert_eq!(names(&events, "type"), variants::<Event>("type"));
        assert_eq!(names(&statuses, "status"), variants::<RunStatus>("status"));
        assert_eq!(names(pauses, "kind"), variants::<PauseReason>("kind"));
        assert_eq!(names(causes(), "kind"), variants::<RollbackCause>("kind"));
        assert_eq!(names(skips, "kind"), variants::<SkipReason>("kind"));
        assert_eq!(names(&steps, "state"), variants::<StepState>("state"));
        assert_eq!(names(&undos, "state"), variants::<CompState>("state"));
        assert_eq!(names(kinds, "kind"), variants::<FailureKind>("kind"));
        assert_eq!(names(timers, "kind"), variants::<TimerKind>("kind"));
        // Every cause is rendered in each status that carries one.
        for cause in causes() {
            assert!(
                statuses.iter().any(
                    |s| matches!(s, RunStatus::RollbackFailed { cause: c, .. } if *c == cause)
                )
            );
        }

        for k in kinds {
            check("failure", &failure(&err(k)));
        }
        for e in &events {
            check(e.name(), &event(e));
            let h = HistoryEntry {
                at: at(),
                event: e.clone(),
                status: "rolled_back".to_owned(),
                changes: vec!["run: running -> rolled_back".to_owned()],
            };
            check(e.name(), &entry(&h));
        }
        for s in &statuses {
            check(s.name(), &status(s));
            check(s.name(), &run_status(s, &[]));
        }
        for s in &steps {
            check(s.name(), &step_state(s));
        }
        for u in &undos {
            check(u.name(), &undo_state(u));
        }
    }

    #[test]
    fn the_issue_s_examples() {
        let s = RunStatus::RolledBack {
            at: at(),
            cause: RollbackCause::Rejected {
                step: id("approval"),
                by: "lead@msp.example".to_owned(),
                comment: Some("wrong department".to_owned()),
            },
            irreversible: vec![],
            resolved: vec![],
        };
        assert_eq!(
            status(&s),
            "rolled back: rejected by lead@msp.example at gate `approval` \u{2014} \u{201c}wrong department\u{201d}"
        );
        // The cancel reason is in the history, and shows with the status.
        let cancel = Event::CancelRequested {
            by: "tech@msp.example".to_owned(),
            rollback: false,
            reason: Some("duplicate\nticket".to_owned()),
        };
        let history = [HistoryEntry {
            at: at(),
            event: cancel,
            status: "cancelled".to_owned(),
            changes: vec![],
        }];
        let cancelled = RunStatus::Cancelled {
            at: at(),
            by: "tech@msp.example".to_owned(),
        };
        assert_eq!(
            run_status(&cancelled, &history),
            format!(
                "cancelled by tech@msp.example at {} \u{2014} \u{201c}duplicate ticket\u{201d}",
                time(at())
            )
        );
        assert_eq!(run_status(&RunStatus::Running, &history), "running");
        assert_eq!(time(at()), "2026-10-26 07:33:20 UTC");
    }
}
