//! The run state machine: `(state, event, now, plan) -> (next state, effects)`.
//!
//! Pure: no clock, no randomness, no I/O. The runtime persists the next state and the effects in
//! one atomic script, then carries the effects out. The whole transition table is the `match` in
//! [`transition`]; every (status, event) pair is listed.
//!
//! Fences: every job and timer carries the step's dispatch sequence number (`seq`). An outcome or
//! timer whose `seq` is not the step's current one, or that finds the step in another state, is
//! stale: the transition ignores it and nothing changes.
//!
//! Ended runs absorb every later report and refuse requests, with one exception: a run that
//! ended `rollback_failed` takes a technician's fix of a failed undo (retry it, or mark it done
//! by hand). It then rolls back again, through the same fenced undo jobs, and ends once more.
//!
//! What a technician can do in a state is [`actions`]: it asks the same checks the transitions
//! apply, so a CLI or dashboard offers only fixes that the machine will accept.

use serde_json::{Map, Value};
use steward_schemas::{
    AdminFallback, Attempt, CompState, Decision, Dispatch, Effect, Event, FailureKind, Job, JobRef,
    OnExpiry, OnFailure, PauseReason, Phase, Rollback, RollbackCause, RunAction, RunContext,
    RunState, RunStatus, SkipReason, StepFailure, StepId, StepRecord, StepState, TimerKey,
    TimerKind, Timestamp, UnavailableApprover,
};

use crate::expr::{Path, Root, RunField, Scope, walk};
use crate::plan::Plan;
use crate::retry::jitter_sample;
use crate::text::{normalize_email, normalize_emails};

/// How long a gate waits for a decision when nothing else says: an escalated gate whose workflow
/// sets neither expiry, and the gate a company's policy inserts.
pub const DEFAULT_GATE_EXPIRY: steward_schemas::Dur = steward_schemas::Dur::secs(72 * 3600);

/// Whether `by` may decide gate `step`, whose approvers are now `approvers` (normalised, as an
/// open gate holds them), in a run `requested_by` asked for. `Ok` holds `by` normalised; `Err`
/// says why not, in words for the technician. The machine applies the same check to every
/// decision; callers use it to refuse early with the same words.
pub fn may_decide(
    step: &str,
    approvers: &[String],
    requested_by: &str,
    by: &str,
) -> Result<String, String> {
    let by = normalize_email(by);
    if !approvers.contains(&by) {
        return Err(format!(
            "{by} is not an approver of gate `{step}` (its approvers: {})",
            approvers.join(", ")
        ));
    }
    if by == normalize_email(requested_by) {
        return Err(format!(
            "{by} asked for this run and cannot approve it; another approver must decide"
        ));
    }
    Ok(by)
}

/// How many of `approvers` (normalised) may decide a gate of a run `requester` asked for: the
/// requester never approves their own run.
fn eligible_count(approvers: &[String], requester: &str) -> usize {
    approvers.iter().filter(|a| a.as_str() != requester).count()
}

/// The longest `Retry-After` a service may impose on a step.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(86_400);

/// What the machine gets besides the state and the event.
#[derive(Debug, Clone, Copy)]
pub struct Cx {
    /// The time of the transition.
    pub now: Timestamp,
}

/// The result of applying an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The new state (equal to the old one when the event was ignored).
    pub next: RunState,
    /// What the runtime must do.
    pub effects: Vec<Effect>,
    /// Why the event changed nothing (a stale or duplicate delivery, a late event).
    pub ignored: Option<String>,
}

/// An event that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The event cannot happen in this status (a bug in whoever sent it).
    #[error("`{event}` cannot happen to a run that is {status}")]
    Invalid {
        /// The run's status.
        status: &'static str,
        /// The event.
        event: &'static str,
    },
    /// A technician's request that does not apply now; the reason says what would.
    #[error("{reason}")]
    Rejected {
        /// Why, and what to do instead.
        reason: String,
    },
    /// The event names a step the run does not have.
    #[error("the run has no step `{step}`")]
    UnknownStep {
        /// The name given.
        step: String,
    },
    /// The stored state does not fit the run's plan.
    #[error("the run's state does not match its plan: {detail}")]
    Inconsistent {
        /// What does not fit.
        detail: String,
    },
}

/// The state of a new run: `created`, every step pending.
pub fn initial_state(plan: &Plan, now: Timestamp) -> RunState {
    RunState {
        status: RunStatus::Created,
        steps: plan
            .steps()
            .iter()
            .map(|s| (s.id.clone(), StepRecord::pending()))
            .collect(),
        updated_at: now,
    }
}

/// Applies `event` to `state`.
pub fn transition(
    plan: &Plan,
    ctx: &RunContext,
    state: &RunState,
    event: &Event,
    cx: &Cx,
) -> Result<Transition, TransitionError> {
    if state.steps.len() != plan.steps().len()
        || plan
            .steps()
            .iter()
            .any(|s| !state.steps.contains_key(&s.id))
    {
        return Err(TransitionError::Inconsistent {
            detail: format!(
                "the plan has steps [{}], the state [{}]",
                plan.steps()
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                state
                    .steps
                    .keys()
                    .map(StepId::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let mut m = Machine {
        plan,
        ctx,
        st: state.clone(),
        effects: Vec::new(),
        now: cx.now,
        ignored: None,
    };
    use RunStatus as S;
    let invalid = || TransitionError::Invalid {
        status: state.status.name(),
        event: event.name(),
    };
    match (&state.status, event) {
        // A run is created once.
        (S::Created, Event::RunCreated { start_at }) => m.on_run_created(*start_at),
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. }
            | S::Completed { .. }
            | S::Cancelled { .. }
            | S::RolledBack { .. }
            | S::RollbackFailed { .. },
            Event::RunCreated { .. },
        ) => return Err(invalid()),

        // Nothing can reach a run before it is created.
        (
            S::Created,
            Event::StepSucceeded { .. }
            | Event::StepPending { .. }
            | Event::StepFailed { .. }
            | Event::UndoSucceeded { .. }
            | Event::UndoFailed { .. }
            | Event::TimerFired { .. }
            | Event::JobsRevoked { .. }
            | Event::GateOpened { .. }
            | Event::StepBlocked { .. }
            | Event::ApprovalDecided { .. }
            | Event::CancelRequested { .. }
            | Event::PauseRequested { .. }
            | Event::ResumeRequested { .. }
            | Event::RetryStepRequested { .. }
            | Event::SkipStepRequested { .. }
            | Event::RetryUndoRequested { .. }
            | Event::UndoResolved { .. },
        ) => return Err(invalid()),

        // An ended run absorbs late reports; requests get a reason.
        (
            S::Completed { .. }
            | S::Cancelled { .. }
            | S::RolledBack { .. }
            | S::RollbackFailed { .. },
            Event::StepSucceeded { .. }
            | Event::StepPending { .. }
            | Event::StepFailed { .. }
            | Event::UndoSucceeded { .. }
            | Event::UndoFailed { .. }
            | Event::TimerFired { .. }
            | Event::JobsRevoked { .. }
            | Event::GateOpened { .. }
            | Event::StepBlocked { .. },
        ) => m.ignore(format!("the run has ended ({})", state.status.name())),
        (
            S::Completed { .. }
            | S::Cancelled { .. }
            | S::RolledBack { .. }
            | S::RollbackFailed { .. },
            Event::CancelRequested { .. }
            | Event::PauseRequested { .. }
            | Event::ResumeRequested { .. }
            | Event::RetryStepRequested { .. }
            | Event::SkipStepRequested { .. }
            | Event::ApprovalDecided { .. },
        ) => return Err(ended(&state.status)),
        (
            S::Completed { .. } | S::Cancelled { .. } | S::RolledBack { .. },
            Event::RetryUndoRequested { .. } | Event::UndoResolved { .. },
        ) => return Err(ended(&state.status)),

        // Reports from workers and timers. Fences inside ignore stale ones.
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::StepSucceeded {
                step,
                seq,
                output,
                rollback,
            },
        ) => m.on_step_succeeded(step, *seq, output, rollback)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::StepPending {
                step,
                seq,
                check_after,
                note,
            },
        ) => m.on_step_pending(step, *seq, check_after.get(), note.as_deref())?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::StepFailed { step, seq, error },
        ) => m.on_step_failed(step, *seq, error)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::UndoSucceeded { step, seq },
        ) => m.on_undo_succeeded(step, *seq)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::UndoFailed { step, seq, error },
        ) => m.on_undo_failed(step, *seq, error)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::TimerFired { timer },
        ) => m.on_timer_fired(timer)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::JobsRevoked { jobs },
        ) => m.on_jobs_revoked(jobs)?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::GateOpened {
                step,
                seq,
                approvers,
                escalation,
                unavailable,
                admins,
            },
        ) => m.on_gate_opened(
            step,
            *seq,
            GateNames {
                approvers,
                escalation,
                unavailable,
                admins,
            },
        )?,
        (
            S::Scheduled { .. }
            | S::Running
            | S::Paused { .. }
            | S::Cancelling { .. }
            | S::RollingBack { .. },
            Event::StepBlocked { step, seq, reason },
        ) => m.on_step_blocked(step, *seq, reason)?,
        (
            S::Running | S::Paused { .. },
            Event::ApprovalDecided {
                step,
                by,
                approve,
                comment,
                via,
            },
        ) => m.on_approval(step, by, *approve, comment.as_deref(), via)?,
        (
            S::Scheduled { .. } | S::Cancelling { .. } | S::RollingBack { .. },
            Event::ApprovalDecided { .. },
        ) => {
            return Err(rejected(&format!(
                "the run is {}; its gates take no more decisions",
                state.status.name()
            )));
        }

        // Technicians' requests.
        (S::Scheduled { .. }, Event::CancelRequested { by, .. }) => {
            m.effects.push(Effect::CancelTimer {
                key: TimerKey::start(),
            });
            m.finish(S::Cancelled {
                at: cx.now,
                by: by.clone(),
            });
        }
        (S::Running | S::Paused { .. }, Event::CancelRequested { by, rollback, .. }) => {
            m.st.status = S::Cancelling {
                by: by.clone(),
                rollback: *rollback,
            };
            m.cancel_outstanding();
            m.settle();
        }
        (
            S::Cancelling {
                by,
                rollback: false,
            },
            Event::CancelRequested { rollback: true, .. },
        ) => {
            m.st.status = S::Cancelling {
                by: by.clone(),
                rollback: true,
            };
            m.settle();
        }
        (S::Cancelling { .. }, Event::CancelRequested { .. }) => {
            return Err(rejected("the run is already being cancelled"));
        }
        (S::RollingBack { .. }, Event::CancelRequested { .. }) => {
            return Err(rejected("the run is already rolling back"));
        }

        (S::Running, Event::PauseRequested { by, reason }) => {
            m.st.status = S::Paused {
                reason: PauseReason::Operator {
                    by: by.clone(),
                    note: reason.clone(),
                },
            };
            m.revoke_queued();
        }
        (S::Scheduled { .. }, Event::PauseRequested { .. }) => {
            return Err(rejected(
                "the run has not started yet; cancel it if it should not run",
            ));
        }
        (S::Paused { .. }, Event::PauseRequested { .. }) => {
            return Err(rejected("the run is already paused"));
        }
        (S::Cancelling { .. } | S::RollingBack { .. }, Event::PauseRequested { .. }) => {
            return Err(rejected(&format!(
                "the run is {}; it cannot be paused",
                state.status.name()
            )));
        }

        (S::Paused { .. }, Event::ResumeRequested { .. }) => m.on_resume()?,
        (
            S::Scheduled { .. } | S::Running | S::Cancelling { .. } | S::RollingBack { .. },
            Event::ResumeRequested { .. },
        ) => {
            return Err(rejected(&format!(
                "the run is not paused (it is {})",
                state.status.name()
            )));
        }

        (S::Running | S::Paused { .. }, Event::RetryStepRequested { step, .. }) => {
            m.on_retry_step(step)?
        }
        (S::Running | S::Paused { .. }, Event::SkipStepRequested { step, by, reason }) => {
            m.on_skip_step(step, by, reason.as_deref())?;
        }
        (
            S::Scheduled { .. } | S::Cancelling { .. } | S::RollingBack { .. },
            Event::RetryStepRequested { .. } | Event::SkipStepRequested { .. },
        ) => {
            return Err(rejected(&format!(
                "steps can be retried or skipped only while the run is running or paused (it is {})",
                state.status.name()
            )));
        }

        // A technician's fixes of undos that failed, while the run rolls back or after its
        // rollback failed.
        (
            S::RollingBack { .. } | S::RollbackFailed { .. },
            Event::RetryUndoRequested { step, .. },
        ) => {
            m.on_retry_undo(step)?;
        }
        (
            S::RollingBack { .. } | S::RollbackFailed { .. },
            Event::UndoResolved {
                step,
                by,
                comment,
                via,
            },
        ) => m.on_undo_resolved(step, by, comment, via)?,
        (
            S::Scheduled { .. } | S::Running | S::Paused { .. } | S::Cancelling { .. },
            Event::RetryUndoRequested { .. } | Event::UndoResolved { .. },
        ) => {
            return Err(rejected(&format!(
                "only an undo that failed can be retried or resolved, and nothing of this run has been undone (it is {})",
                state.status.name()
            )));
        }
    }
    if m.ignored.is_none() {
        m.st.updated_at = cx.now;
    }
    Ok(Transition {
        next: m.st,
        effects: m.effects,
        ignored: m.ignored,
    })
}

fn rejected(reason: &str) -> TransitionError {
    TransitionError::Rejected {
        reason: reason.to_owned(),
    }
}

/// The refusal of a request to an ended run, saying what can still be done.
fn ended(status: &RunStatus) -> TransitionError {
    let name = status.name();
    rejected(&match status {
        RunStatus::RollbackFailed { .. } => format!(
            "the run has already ended ({name}); what is left: retry a failed undo (retry-undo), or mark it done by hand (resolve-undo)"
        ),
        RunStatus::RolledBack { .. } => {
            format!("the run has already ended ({name}); nothing is left to undo")
        }
        RunStatus::Created
        | RunStatus::Scheduled { .. }
        | RunStatus::Running
        | RunStatus::Paused { .. }
        | RunStatus::Cancelling { .. }
        | RunStatus::RollingBack { .. }
        | RunStatus::Completed { .. }
        | RunStatus::Cancelled { .. } => format!("the run has already ended ({name})"),
    })
}

fn reject_with(reason: String) -> TransitionError {
    TransitionError::Rejected { reason }
}

/// What a technician can do to a run now, run-wide actions first, then each step's in plan
/// order. Every action listed is accepted by [`transition`] in this state (a repeated approval
/// aside: the approver is left out of `approve`, and the machine would ignore it), and every one
/// left out is refused: both ask the same checks. `now` matters for a gate past its expiry, which
/// takes no more decisions.
pub fn actions(plan: &Plan, ctx: &RunContext, state: &RunState, now: Timestamp) -> Vec<RunAction> {
    let mut out = Vec::new();
    let consistent = state.steps.len() == plan.steps().len()
        && plan.steps().iter().all(|s| state.steps.contains_key(&s.id));
    if !consistent {
        // The machine refuses every event to a state that does not fit its plan.
        return out;
    }
    use RunStatus as S;
    // Which step requests the status takes: forward ones (retry, skip, decide), undo ones.
    let (forward, undo) = match &state.status {
        S::Created => (false, false),
        S::Scheduled { .. } => {
            out.extend([RunAction::Cancel, RunAction::CancelWithRollback]);
            (false, false)
        }
        S::Running => {
            out.extend([
                RunAction::Cancel,
                RunAction::CancelWithRollback,
                RunAction::Pause,
            ]);
            (true, false)
        }
        S::Paused { .. } => {
            out.extend([RunAction::Cancel, RunAction::CancelWithRollback]);
            if blocking_failure(plan, state).is_none() {
                out.push(RunAction::Resume);
            }
            (true, false)
        }
        S::Cancelling {
            rollback: false, ..
        } => {
            out.push(RunAction::CancelWithRollback);
            (false, false)
        }
        S::Cancelling { rollback: true, .. } => (false, false),
        S::RollingBack { .. } | S::RollbackFailed { .. } => (false, true),
        S::Completed { .. } | S::Cancelled { .. } | S::RolledBack { .. } => (false, false),
    };
    for (i, s) in plan.steps().iter().enumerate() {
        let rec = &state.steps[&s.id];
        let step = || s.id.clone();
        if forward {
            if retry_step_check(plan, rec, i).is_ok() {
                out.push(RunAction::RetryStep { step: step() });
            }
            if skip_step_check(plan, rec, i).is_ok() {
                out.push(RunAction::SkipStep { step: step() });
            }
            if let StepState::AwaitingApproval { approvers, .. } = &rec.state {
                let mut approve = Vec::new();
                let mut reject = Vec::new();
                for a in approvers {
                    if let Ok((_, approved)) = decision_check(ctx, rec, &s.id, a, now) {
                        if !approved {
                            approve.push(a.clone());
                        }
                        reject.push(a.clone());
                    }
                }
                if !approve.is_empty() {
                    out.push(RunAction::Approve {
                        step: step(),
                        by: approve,
                    });
                }
                if !reject.is_empty() {
                    out.push(RunAction::Reject {
                        step: step(),
                        by: reject,
                    });
                }
            }
        }
        if undo {
            if retry_undo_check(plan, rec, i).is_ok() {
                out.push(RunAction::RetryUndo { step: step() });
            }
            if resolve_undo_check(plan, rec, i).is_ok() {
                out.push(RunAction::ResolveUndo { step: step() });
            }
        }
    }
    out
}

/// The first step whose failure holds the run (`on_failure: pause`).
fn blocking_failure(plan: &Plan, state: &RunState) -> Option<usize> {
    plan.steps().iter().position(|s| {
        s.on_failure == OnFailure::Pause
            && matches!(
                state.steps.get(&s.id).map(|r| &r.state),
                Some(StepState::Failed { .. })
            )
    })
}

/// How a step that is retried starts again.
enum RetryFrom {
    /// It failed (`on_failure: pause`): a fresh attempt budget.
    Failed,
    /// It waits to retry: this attempt, now.
    Retrying(Attempt),
    /// It waits to be asked again: now.
    Polling(Dispatch),
}

/// Whether step `i` (its record `rec`) can be retried while the run is running or paused: how,
/// or why not.
fn retry_step_check(plan: &Plan, rec: &StepRecord, i: usize) -> Result<RetryFrom, String> {
    let def = plan.step(i);
    let step = &def.id;
    match &rec.state {
        StepState::Failed { .. } if def.on_failure == OnFailure::Pause => Ok(RetryFrom::Failed),
        StepState::Failed { .. } => Err(format!(
            "step `{step}` failed with on_failure: {} and the run went on without it; start a new run instead",
            def.on_failure.name()
        )),
        StepState::Retrying { next, .. } => Ok(RetryFrom::Retrying(*next)),
        StepState::Polling { job, .. } => Ok(RetryFrom::Polling(*job)),
        StepState::Queued { .. } => Err(format!("step `{step}` is running now")),
        StepState::Pending
        | StepState::Ready { .. }
        | StepState::AwaitingApproval { .. }
        | StepState::Succeeded { .. }
        | StepState::Skipped { .. }
        | StepState::Cancelled { .. } => Err(format!(
            "only a failed, retrying or polling step can be retried; `{step}` is {}",
            rec.state.name()
        )),
    }
}

/// Whether step `i` can be skipped while the run is running or paused: the timer to disarm, or
/// why not.
fn skip_step_check(plan: &Plan, rec: &StepRecord, i: usize) -> Result<Option<TimerKind>, String> {
    let def = plan.step(i);
    let step = &def.id;
    if def.gate.is_some() {
        return Err(format!(
            "step `{step}` is an approval gate; gates are decided (approve or reject), not skipped"
        ));
    }
    match &rec.state {
        StepState::Pending | StepState::Ready { .. } => Ok(None),
        StepState::Failed { .. } if def.on_failure == OnFailure::Pause => Ok(None),
        StepState::Retrying { .. } => Ok(Some(TimerKind::Retry)),
        StepState::Polling { .. } => Ok(Some(TimerKind::Poll)),
        StepState::Queued { .. } => Err(format!(
            "step `{step}` is running now; wait for it, or cancel the run"
        )),
        StepState::Failed { .. }
        | StepState::AwaitingApproval { .. }
        | StepState::Succeeded { .. }
        | StepState::Skipped { .. }
        | StepState::Cancelled { .. } => Err(format!(
            "step `{step}` is {} and cannot be skipped",
            rec.state.name()
        )),
    }
}

/// How a step's undo that is retried starts again.
enum UndoRetryFrom {
    /// It failed for good: a fresh attempt budget.
    Failed,
    /// It waits to retry: this attempt, now.
    Retrying(Attempt),
}

/// Whether step `i`'s undo can be retried while the run rolls back or after its rollback
/// failed: how, or why not.
fn retry_undo_check(plan: &Plan, rec: &StepRecord, i: usize) -> Result<UndoRetryFrom, String> {
    match &rec.undo {
        Some(CompState::Failed { .. }) => Ok(UndoRetryFrom::Failed),
        Some(CompState::Retrying { next, .. }) => Ok(UndoRetryFrom::Retrying(*next)),
        other => Err(no_undo_fix(plan, rec, i, other, "retried")),
    }
}

/// Whether step `i`'s undo can be marked done by hand, or why not.
fn resolve_undo_check(plan: &Plan, rec: &StepRecord, i: usize) -> Result<(), String> {
    let step = &plan.step(i).id;
    match &rec.undo {
        Some(CompState::Failed { .. }) => Ok(()),
        Some(CompState::Retrying { not_before, .. }) => Err(format!(
            "the undo of `{step}` failed and is tried again at {not_before}; retry it now (retry-undo), or mark it resolved once it has failed for good"
        )),
        other => Err(no_undo_fix(plan, rec, i, other, "resolved")),
    }
}

/// Why step `i`'s undo, in state `undo`, cannot be retried or resolved (`what`).
fn no_undo_fix(
    plan: &Plan,
    rec: &StepRecord,
    i: usize,
    undo: &Option<CompState>,
    what: &str,
) -> String {
    let step = &plan.step(i).id;
    match undo {
        None => match &rec.state {
            StepState::Succeeded {
                rollback: Rollback::Inverse { .. },
                ..
            } => format!("the undo of `{step}` has not started, so it cannot be {what}"),
            other => format!(
                "step `{step}` is {} and changed nothing, so it has no undo to be {what}",
                other.name()
            ),
        },
        Some(CompState::Waiting) => format!(
            "the undo of `{step}` has not started (it waits for the undos of the steps that need `{step}`), so it cannot be {what}"
        ),
        Some(CompState::Queued { .. }) => format!("the undo of `{step}` is running now"),
        Some(CompState::Retrying { .. }) => {
            format!("the undo of `{step}` waits to be tried again")
        }
        Some(CompState::Failed { .. }) => format!("the undo of `{step}` failed"),
        Some(CompState::Done { .. }) => format!("`{step}` is already undone"),
        Some(CompState::Resolved { by, .. }) => {
            format!("the undo of `{step}` was already marked done by hand by {by}")
        }
        Some(CompState::Irreversible { reason }) => format!(
            "`{step}` cannot be undone ({reason}); it has no undo to be {what}: put it right by hand"
        ),
        Some(CompState::Blocked { by }) => format!(
            "the undo of `{step}` has not run: it waits for the undo of `{by}`, which failed; retry or resolve `{by}` first, and `{step}`'s undo follows"
        ),
    }
}

/// Whether `by` may decide gate `step` (its record `rec`) at `now`: `by` normalised and whether
/// they have already approved it, or why not.
fn decision_check(
    ctx: &RunContext,
    rec: &StepRecord,
    step: &StepId,
    by: &str,
    now: Timestamp,
) -> Result<(String, bool), String> {
    let StepState::AwaitingApproval {
        approvers,
        expires_at,
        approvals,
        ..
    } = &rec.state
    else {
        return Err(format!(
            "step `{step}` is not waiting for approval (it is {})",
            rec.state.name()
        ));
    };
    if let Some(at) = expires_at
        && *at <= now
    {
        return Err(format!(
            "gate `{step}` expired at {at} and takes no more decisions; its expiry is being applied (it escalates or rejects the gate)"
        ));
    }
    let by = may_decide(step.as_str(), approvers, &ctx.requested_by, by)?;
    let approved = approvals.iter().any(|d| d.by == by);
    Ok((by, approved))
}

/// Who a gate that opens names, and who of them cannot decide (from [`Event::GateOpened`]).
struct GateNames<'e> {
    approvers: &'e [String],
    escalation: &'e [String],
    unavailable: &'e [UnavailableApprover],
    admins: &'e [String],
}

struct Machine<'a> {
    plan: &'a Plan,
    ctx: &'a RunContext,
    st: RunState,
    effects: Vec<Effect>,
    now: Timestamp,
    ignored: Option<String>,
}

impl Machine<'_> {
    fn ignore(&mut self, why: String) {
        self.ignored = Some(why);
    }

    fn n(&self) -> usize {
        self.plan.steps().len()
    }

    fn rec(&self, i: usize) -> &StepRecord {
        self.st
            .steps
            .get(&self.plan.step(i).id)
            .expect("every plan step has a record (checked on entry)")
    }

    fn rec_mut(&mut self, i: usize) -> &mut StepRecord {
        self.st
            .steps
            .get_mut(&self.plan.step(i).id)
            .expect("every plan step has a record (checked on entry)")
    }

    fn set(&mut self, i: usize, state: StepState) {
        self.rec_mut(i).state = state;
    }

    fn index(&self, step: &StepId) -> Result<usize, TransitionError> {
        self.plan
            .index_of(step.as_str())
            .ok_or_else(|| TransitionError::UnknownStep {
                step: step.to_string(),
            })
    }

    fn id(&self, i: usize) -> StepId {
        self.plan.step(i).id.clone()
    }

    fn finish(&mut self, status: RunStatus) {
        let name = status.name().to_owned();
        self.st.status = status;
        self.effects.push(Effect::RunEnded { status: name });
    }

    /// The queued run-phase job of step `i` if `seq` is current, else why the report is stale.
    fn fenced(&self, i: usize, seq: u32) -> Result<Dispatch, String> {
        let rec = self.rec(i);
        match &rec.state {
            StepState::Queued { job, .. } if rec.seq == seq => Ok(*job),
            state => Err(format!(
                "stale report for step `{}` (job {seq}; the step is {} at job {})",
                self.plan.step(i).id,
                state.name(),
                rec.seq
            )),
        }
    }

    fn fenced_undo(&self, i: usize, seq: u32) -> Result<Attempt, String> {
        let rec = self.rec(i);
        match &rec.undo {
            Some(CompState::Queued { attempt, .. }) if rec.seq == seq => Ok(*attempt),
            other => Err(format!(
                "stale undo report for step `{}` (job {seq}; the undo is {} at job {})",
                self.plan.step(i).id,
                other.as_ref().map_or("not started", CompState::name),
                rec.seq
            )),
        }
    }

    /// [`Self::fenced`], recording why a stale report is ignored.
    fn current(&mut self, i: usize, seq: u32) -> Option<Dispatch> {
        self.fenced(i, seq).map_err(|why| self.ignore(why)).ok()
    }

    /// [`Self::fenced_undo`], recording why a stale report is ignored.
    fn current_undo(&mut self, i: usize, seq: u32) -> Option<Attempt> {
        self.fenced_undo(i, seq)
            .map_err(|why| self.ignore(why))
            .ok()
    }

    /// Whether the run is stopping (cancelling or rolling back) rather than going forward
    /// (scheduled, running or paused): reports then record what happened and start nothing.
    /// Ended runs never reach the handlers that ask (the transition table absorbs them).
    fn winding_down(&self) -> bool {
        matches!(
            self.st.status,
            RunStatus::Cancelling { .. } | RunStatus::RollingBack { .. }
        )
    }

    // ---- events -------------------------------------------------------------------------

    fn on_run_created(&mut self, start_at: Option<Timestamp>) {
        match start_at {
            Some(at) if at > self.now => {
                self.st.status = RunStatus::Scheduled { start_at: at };
                self.effects.push(Effect::ScheduleTimer {
                    key: TimerKey::start(),
                    at,
                });
            }
            _ => {
                self.st.status = RunStatus::Running;
                self.settle();
            }
        }
    }

    fn on_step_succeeded(
        &mut self,
        step: &StepId,
        seq: u32,
        output: &Value,
        rollback: &Rollback,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(job) = self.current(i, seq) else {
            return Ok(());
        };
        self.set(
            i,
            StepState::Succeeded {
                attempt: job.attempt,
                at: self.now,
                output: output.clone(),
                rollback: rollback.clone(),
            },
        );
        self.settle();
        Ok(())
    }

    fn on_step_pending(
        &mut self,
        step: &StepId,
        seq: u32,
        check_after: std::time::Duration,
        note: Option<&str>,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(job) = self.current(i, seq) else {
            return Ok(());
        };
        if self.winding_down() {
            self.set(i, StepState::Cancelled { at: self.now });
        } else {
            let since = job.waiting_since.unwrap_or(self.now);
            let max_wait = self.plan.step(i).max_wait;
            if self.now.since(since) >= max_wait {
                let waited = steward_schemas::Dur::new(self.now.since(since));
                let what = note.map(|n| format!(" ({n})")).unwrap_or_default();
                let error = StepFailure {
                    kind: FailureKind::GaveUpWaiting,
                    message: format!(
                        "still not done after waiting {waited}{what}; max_wait is {}",
                        steward_schemas::Dur::new(max_wait)
                    ),
                    code: None,
                    retry_after: None,
                };
                self.fail_final(i, job.attempt, error);
            } else {
                let next_check = self.now.plus(check_after);
                let seq = self.rec(i).seq;
                self.set(
                    i,
                    StepState::Polling {
                        job: Dispatch {
                            attempt: job.attempt,
                            polls: job.polls.saturating_add(1),
                            waiting_since: Some(since),
                        },
                        next_check,
                        note: note.map(str::to_owned),
                    },
                );
                self.effects.push(Effect::ScheduleTimer {
                    key: TimerKey::step(TimerKind::Poll, self.id(i), seq),
                    at: next_check,
                });
            }
        }
        self.settle();
        Ok(())
    }

    fn on_step_failed(
        &mut self,
        step: &StepId,
        seq: u32,
        error: &StepFailure,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(job) = self.current(i, seq) else {
            return Ok(());
        };
        if self.winding_down() {
            self.set(
                i,
                StepState::Failed {
                    attempt: job.attempt,
                    at: self.now,
                    error: error.clone(),
                },
            );
        } else {
            match self.retry_delay(i, job.attempt, error) {
                Some(delay) => {
                    let not_before = self.now.plus(delay);
                    let seq = self.rec(i).seq;
                    self.set(
                        i,
                        StepState::Retrying {
                            next: job.attempt.next(),
                            not_before,
                            error: error.clone(),
                        },
                    );
                    self.effects.push(Effect::ScheduleTimer {
                        key: TimerKey::step(TimerKind::Retry, self.id(i), seq),
                        at: not_before,
                    });
                }
                None => self.fail_final(i, job.attempt, error.clone()),
            }
        }
        self.settle();
        Ok(())
    }

    /// The wait before the next attempt, or `None` when the failure is final.
    fn retry_delay(
        &self,
        i: usize,
        failed: Attempt,
        error: &StepFailure,
    ) -> Option<std::time::Duration> {
        if !error.is_retryable() {
            return None;
        }
        let sample = jitter_sample(&[
            &self.ctx.run_id.to_string(),
            self.plan.step(i).id.as_str(),
            &failed.get().to_string(),
        ]);
        let delay = self.plan.step(i).retry.next_delay(failed, sample)?;
        // An explicit request from the service wins over the policy.
        Some(match error.retry_after {
            Some(after) => after.get().min(MAX_RETRY_AFTER).max(delay),
            None => delay,
        })
    }

    fn on_undo_succeeded(&mut self, step: &StepId, seq: u32) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        if self.current_undo(i, seq).is_none() {
            return Ok(());
        }
        self.rec_mut(i).undo = Some(CompState::Done { at: self.now });
        self.settle();
        Ok(())
    }

    fn on_undo_failed(
        &mut self,
        step: &StepId,
        seq: u32,
        error: &StepFailure,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(attempt) = self.current_undo(i, seq) else {
            return Ok(());
        };
        match self.retry_delay(i, attempt, error) {
            Some(delay) => {
                let not_before = self.now.plus(delay);
                let seq = self.rec(i).seq;
                self.rec_mut(i).undo = Some(CompState::Retrying {
                    next: attempt.next(),
                    not_before,
                    error: error.clone(),
                });
                self.effects.push(Effect::ScheduleTimer {
                    key: TimerKey::step(TimerKind::UndoRetry, self.id(i), seq),
                    at: not_before,
                });
            }
            None => {
                self.rec_mut(i).undo = Some(CompState::Failed {
                    attempt,
                    at: self.now,
                    error: error.clone(),
                });
            }
        }
        self.settle();
        Ok(())
    }

    fn on_timer_fired(&mut self, key: &TimerKey) -> Result<(), TransitionError> {
        let stale = |m: &mut Self| m.ignore(format!("stale timer `{key}`"));
        if key.kind == TimerKind::Start {
            if matches!(self.st.status, RunStatus::Scheduled { .. }) {
                self.st.status = RunStatus::Running;
                self.settle();
            } else {
                stale(self);
            }
            return Ok(());
        }
        let Some(step) = &key.step else {
            stale(self);
            return Ok(());
        };
        let i = self.index(step)?;
        let rec = self.rec(i);
        if rec.seq != key.seq {
            stale(self);
            return Ok(());
        }
        let running = matches!(self.st.status, RunStatus::Running);
        let paused = matches!(self.st.status, RunStatus::Paused { .. });
        match (key.kind, &rec.state, &rec.undo) {
            (TimerKind::Retry, StepState::Retrying { next, .. }, _) if running || paused => {
                let d = Dispatch::attempt(*next);
                self.dispatch_or_ready(i, d);
            }
            (TimerKind::Poll, StepState::Polling { job, .. }, _) if running || paused => {
                let d = *job;
                self.dispatch_or_ready(i, d);
            }
            (TimerKind::GateExpiry, StepState::AwaitingApproval { .. }, _) if running || paused => {
                self.on_gate_expired(i);
            }
            (TimerKind::UndoRetry, _, Some(CompState::Retrying { next, .. }))
                if matches!(self.st.status, RunStatus::RollingBack { .. }) =>
            {
                let next = *next;
                self.dispatch_undo(i, next);
            }
            _ => {
                stale(self);
                return Ok(());
            }
        }
        self.settle();
        Ok(())
    }

    fn on_jobs_revoked(&mut self, jobs: &[JobRef]) -> Result<(), TransitionError> {
        let mut any = false;
        for job in jobs {
            let i = self.index(&job.step)?;
            if job.phase != Phase::Run {
                continue;
            }
            let Ok(d) = self.fenced(i, job.seq) else {
                continue;
            };
            any = true;
            if self.winding_down() {
                self.set(i, StepState::Cancelled { at: self.now });
            } else {
                self.dispatch_or_ready(i, d);
            }
        }
        if any {
            self.settle();
        } else {
            self.ignore("no revoked job is current".to_owned());
        }
        Ok(())
    }

    fn on_gate_opened(
        &mut self,
        step: &StepId,
        seq: u32,
        named: GateNames<'_>,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(job) = self.current(i, seq) else {
            return Ok(());
        };
        let Some(gate) = self.plan.step(i).gate.clone() else {
            self.ignore(format!("step `{step}` is not a gate"));
            return Ok(());
        };
        if self.winding_down() {
            self.set(i, StepState::Cancelled { at: self.now });
            self.settle();
            return Ok(());
        }
        let unavailable: Vec<UnavailableApprover> = named
            .unavailable
            .iter()
            .map(|u| UnavailableApprover {
                email: normalize_email(&u.email),
                reason: u.reason,
            })
            .collect();
        let usable = |list: &[String]| -> Vec<String> {
            normalize_emails(list)
                .into_iter()
                .filter(|a| !unavailable.iter().any(|u| &u.email == a))
                .collect()
        };
        let mut approvers = usable(named.approvers);
        let mut escalation = usable(named.escalation);
        let admins = normalize_emails(named.admins);
        let requester = normalize_email(&self.ctx.requested_by);
        let enough =
            |list: &[String]| eligible_count(list, &requester) as u64 >= u64::from(gate.quorum);
        let mut to_admins = None;
        if !enough(&approvers) && enough(&admins) {
            // Nobody named can decide: the admins do, rather than nobody.
            approvers = admins.clone();
            to_admins = Some(AdminFallback::Approvers);
            if !enough(&escalation) {
                escalation = Vec::new();
            }
        } else if enough(&approvers)
            && gate.on_expiry == OnExpiry::Escalate
            && !enough(&escalation)
            && enough(&admins)
        {
            // It would escalate to nobody: it escalates to the admins.
            escalation = admins.clone();
            to_admins = Some(AdminFallback::Escalation);
        }
        let eligible = eligible_count(&approvers, &requester);
        if !enough(&approvers) {
            let mut message = if approvers.is_empty() {
                "nobody can approve this gate: it resolved to no approvers".to_owned()
            } else if eligible < approvers.len() {
                format!(
                    "this gate needs {} approvals but only {eligible} of its approvers ({}) may decide: {requester} asked for this run and cannot approve it",
                    gate.quorum,
                    approvers.join(", ")
                )
            } else {
                format!(
                    "this gate needs {} approvals but has only {} approvers ({})",
                    gate.quorum,
                    approvers.len(),
                    approvers.join(", ")
                )
            };
            if !unavailable.is_empty() {
                message.push_str(&format!(
                    "; left out: {}",
                    unavailable
                        .iter()
                        .map(|u| format!("{} {}", u.email, u.reason.words()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if admins.is_empty() {
                    message.push_str("; and no enabled admin can take it over");
                }
            }
            if !admins.is_empty() {
                message.push_str(&format!(
                    "; nor can the admins ({}) take it over",
                    admins.join(", ")
                ));
            }
            message.push_str(match (unavailable.is_empty(), approvers.is_empty()) {
                (true, true) => {
                    "; add approvers to the company (or the gate), then retry this step"
                }
                (true, false) => "; add approvers, then retry this step",
                (false, _) => {
                    "; enable them or name enabled technicians as approvers, then retry this step"
                }
            });
            self.fail_final(i, job.attempt, StepFailure::terminal(message));
        } else {
            let expires_at = gate.expires_in.map(|d| self.now.plus(d.get()));
            let seq = self.rec(i).seq;
            self.effects.push(Effect::IndexGate {
                step: step.clone(),
                approvers: approvers.clone(),
                since: self.now,
            });
            if let Some(at) = expires_at {
                self.effects.push(Effect::ScheduleTimer {
                    key: TimerKey::step(TimerKind::GateExpiry, step.clone(), seq),
                    at,
                });
            }
            self.set(
                i,
                StepState::AwaitingApproval {
                    attempt: job.attempt,
                    since: self.now,
                    stage: 0,
                    approvers,
                    escalation,
                    quorum: gate.quorum,
                    expires_at,
                    approvals: Vec::new(),
                    unavailable,
                    to_admins,
                },
            );
        }
        self.settle();
        Ok(())
    }

    fn on_approval(
        &mut self,
        step: &StepId,
        by: &str,
        approve: bool,
        comment: Option<&str>,
        via: &str,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let (by, approved) =
            decision_check(self.ctx, self.rec(i), step, by, self.now).map_err(reject_with)?;
        if approve && approved {
            self.ignore(format!("{by} has already approved gate `{step}`"));
            return Ok(());
        }
        let StepState::AwaitingApproval {
            attempt,
            quorum,
            approvals,
            ..
        } = &self.rec(i).state
        else {
            unreachable!("decision_check accepts only an open gate");
        };
        let (attempt, quorum) = (*attempt, *quorum);
        let mut approvals = approvals.clone();
        if !approve {
            self.reject(i, &by, comment.map(str::to_owned));
            self.settle();
            return Ok(());
        }
        approvals.push(Decision {
            by,
            at: self.now,
            comment: comment.map(str::to_owned),
            via: via.to_owned(),
        });
        if approvals.len() as u64 >= u64::from(quorum) {
            self.close_gate_if_open(i);
            let output = serde_json::json!({
                "approved_by": approvals.iter().map(|d| d.by.clone()).collect::<Vec<_>>(),
                "approvals": approvals,
            });
            self.set(
                i,
                StepState::Succeeded {
                    attempt,
                    at: self.now,
                    output,
                    rollback: Rollback::Nothing,
                },
            );
        } else if let StepState::AwaitingApproval {
            approvals: held, ..
        } = &mut self.rec_mut(i).state
        {
            *held = approvals;
        }
        self.settle();
        Ok(())
    }

    /// If step `i` is an open gate: takes it out of the inboxes and disarms its expiry.
    fn close_gate_if_open(&mut self, i: usize) {
        let StepState::AwaitingApproval {
            approvers,
            expires_at,
            ..
        } = &self.rec(i).state
        else {
            return;
        };
        let (approvers, armed) = (approvers.clone(), expires_at.is_some());
        let step = self.id(i);
        let seq = self.rec(i).seq;
        self.effects.push(Effect::UnindexGate {
            step: step.clone(),
            approvers,
        });
        if armed {
            self.effects.push(Effect::CancelTimer {
                key: TimerKey::step(TimerKind::GateExpiry, step, seq),
            });
        }
    }

    /// An open gate was rejected (or expired): the run ends and what was done before it is
    /// undone.
    fn reject(&mut self, i: usize, by: &str, comment: Option<String>) {
        let attempt = match &self.rec(i).state {
            StepState::AwaitingApproval { attempt, .. } => *attempt,
            _ => Attempt::FIRST,
        };
        self.close_gate_if_open(i);
        let message = match (&comment, by) {
            (Some(c), "expiry") => format!("expired: {c}"),
            (None, "expiry") => "expired without a decision".to_owned(),
            (Some(c), _) => format!("rejected by {by}: {c}"),
            (None, _) => format!("rejected by {by}"),
        };
        self.set(
            i,
            StepState::Failed {
                attempt,
                at: self.now,
                error: StepFailure {
                    kind: FailureKind::Rejected,
                    message,
                    code: None,
                    retry_after: None,
                },
            },
        );
        self.st.status = RunStatus::RollingBack {
            cause: RollbackCause::Rejected {
                step: self.id(i),
                by: by.to_owned(),
                comment,
            },
        };
        self.cancel_outstanding();
    }

    fn on_gate_expired(&mut self, i: usize) {
        let Some(gate) = self.plan.step(i).gate.clone() else {
            return;
        };
        let StepState::AwaitingApproval {
            attempt,
            since,
            stage,
            approvers,
            escalation,
            quorum,
            unavailable,
            to_admins,
            ..
        } = &self.rec(i).state
        else {
            return;
        };
        let attempt = *attempt;
        let since = *since;
        let (unavailable, to_admins) = (unavailable.clone(), *to_admins);
        let requester = normalize_email(&self.ctx.requested_by);
        if *stage == 0
            && gate.on_expiry == OnExpiry::Escalate
            && eligible_count(escalation, &requester) as u64 >= u64::from(*quorum)
        {
            let (old, escalation, quorum) = (approvers.clone(), escalation.clone(), *quorum);
            let step = self.id(i);
            let seq = self.rec(i).seq;
            let wait = gate
                .escalate_expires_in
                .or(gate.expires_in)
                .unwrap_or(DEFAULT_GATE_EXPIRY)
                .get();
            let at = self.now.plus(wait);
            self.effects.push(Effect::UnindexGate {
                step: step.clone(),
                approvers: old,
            });
            self.effects.push(Effect::IndexGate {
                step: step.clone(),
                approvers: escalation.clone(),
                since: self.now,
            });
            self.effects.push(Effect::ScheduleTimer {
                key: TimerKey::step(TimerKind::GateExpiry, step, seq),
                at,
            });
            self.set(
                i,
                StepState::AwaitingApproval {
                    attempt,
                    since: self.now,
                    stage: 1,
                    approvers: escalation,
                    escalation: Vec::new(),
                    quorum,
                    expires_at: Some(at),
                    approvals: Vec::new(),
                    unavailable,
                    to_admins,
                },
            );
        } else {
            let waited = steward_schemas::Dur::new(self.now.since(since));
            // The timer that fired is gone: there is no expiry left to disarm.
            if let StepState::AwaitingApproval { expires_at, .. } = &mut self.rec_mut(i).state {
                *expires_at = None;
            }
            self.reject(i, "expiry", Some(format!("no decision within {waited}")));
        }
    }

    fn on_step_blocked(
        &mut self,
        step: &StepId,
        seq: u32,
        reason: &str,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let Some(job) = self.current(i, seq) else {
            return Ok(());
        };
        if self.winding_down() {
            self.set(i, StepState::Cancelled { at: self.now });
        } else {
            self.set(i, StepState::Ready { next: job });
            if matches!(self.st.status, RunStatus::Running) {
                self.st.status = RunStatus::Paused {
                    reason: PauseReason::PolicyBlocked {
                        step: step.clone(),
                        reason: reason.to_owned(),
                    },
                };
                self.revoke_queued();
            }
        }
        self.settle();
        Ok(())
    }

    fn on_resume(&mut self) -> Result<(), TransitionError> {
        if let Some(j) = self.blocking_failure() {
            let message = match &self.rec(j).state {
                StepState::Failed { error, .. } => error.message.clone(),
                _ => String::new(),
            };
            return Err(TransitionError::Rejected {
                reason: format!(
                    "step `{}` failed ({message}); retry it (retry-step) or skip it (skip-step) first",
                    self.plan.step(j).id
                ),
            });
        }
        self.st.status = RunStatus::Running;
        self.settle();
        Ok(())
    }

    fn on_retry_step(&mut self, step: &StepId) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let seq = self.rec(i).seq;
        let d = match retry_step_check(self.plan, self.rec(i), i).map_err(reject_with)? {
            RetryFrom::Failed => Dispatch::first(),
            RetryFrom::Retrying(next) => {
                self.effects.push(Effect::CancelTimer {
                    key: TimerKey::step(TimerKind::Retry, step.clone(), seq),
                });
                Dispatch::attempt(next)
            }
            RetryFrom::Polling(job) => {
                self.effects.push(Effect::CancelTimer {
                    key: TimerKey::step(TimerKind::Poll, step.clone(), seq),
                });
                job
            }
        };
        // Ready first, so the run can leave its failure pause before anything is dispatched.
        self.set(i, StepState::Ready { next: d });
        self.unpause_if_clear();
        self.settle();
        Ok(())
    }

    fn on_skip_step(
        &mut self,
        step: &StepId,
        by: &str,
        note: Option<&str>,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let seq = self.rec(i).seq;
        if let Some(kind) = skip_step_check(self.plan, self.rec(i), i).map_err(reject_with)? {
            self.effects.push(Effect::CancelTimer {
                key: TimerKey::step(kind, step.clone(), seq),
            });
        }
        self.set(
            i,
            StepState::Skipped {
                at: self.now,
                reason: SkipReason::Operator {
                    by: by.to_owned(),
                    note: note.map(str::to_owned),
                },
            },
        );
        self.unpause_if_clear();
        self.settle();
        Ok(())
    }

    fn on_retry_undo(&mut self, step: &StepId) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        let seq = self.rec(i).seq;
        let attempt = match retry_undo_check(self.plan, self.rec(i), i).map_err(reject_with)? {
            // A fresh budget: the technician fixed what made it fail.
            UndoRetryFrom::Failed => Attempt::FIRST,
            UndoRetryFrom::Retrying(next) => {
                self.effects.push(Effect::CancelTimer {
                    key: TimerKey::step(TimerKind::UndoRetry, step.clone(), seq),
                });
                next
            }
        };
        self.reopen_rollback();
        self.dispatch_undo(i, attempt);
        self.settle();
        Ok(())
    }

    fn on_undo_resolved(
        &mut self,
        step: &StepId,
        by: &str,
        comment: &str,
        via: &str,
    ) -> Result<(), TransitionError> {
        let i = self.index(step)?;
        resolve_undo_check(self.plan, self.rec(i), i).map_err(reject_with)?;
        let comment = comment.trim();
        if comment.is_empty() {
            return Err(rejected(&format!(
                "say what was done by hand to undo `{step}`: a comment is required"
            )));
        }
        self.rec_mut(i).undo = Some(CompState::Resolved {
            by: by.to_owned(),
            at: self.now,
            comment: comment.to_owned(),
            via: via.to_owned(),
        });
        self.reopen_rollback();
        self.settle();
        Ok(())
    }

    /// Goes back to rolling back (from `rollback_failed`), and lets the undos that waited for a
    /// failed one be reconsidered: [`Self::undo_progress`] blocks again those that still must.
    fn reopen_rollback(&mut self) {
        if let RunStatus::RollbackFailed { cause, .. } = &self.st.status {
            self.st.status = RunStatus::RollingBack {
                cause: cause.clone(),
            };
        }
        for i in 0..self.n() {
            if matches!(self.rec(i).undo, Some(CompState::Blocked { .. })) {
                self.rec_mut(i).undo = Some(CompState::Waiting);
            }
        }
    }

    // ---- progress -----------------------------------------------------------------------

    /// Moves the run as far as it can go without outside help.
    fn settle(&mut self) {
        match &self.st.status {
            RunStatus::Created | RunStatus::Scheduled { .. } => {}
            RunStatus::Running => {
                self.advance();
                if matches!(self.st.status, RunStatus::Running)
                    && (0..self.n()).all(|i| self.rec(i).state.is_settled())
                {
                    let failed = (0..self.n())
                        .filter(|&i| matches!(self.rec(i).state, StepState::Failed { .. }))
                        .map(|i| self.id(i))
                        .collect();
                    self.finish(RunStatus::Completed {
                        at: self.now,
                        failed,
                    });
                }
            }
            RunStatus::Paused { .. } => self.advance(),
            RunStatus::Cancelling { by, rollback } => {
                if !self.any_run_job_queued() {
                    let by = by.clone();
                    if *rollback {
                        self.st.status = RunStatus::RollingBack {
                            cause: RollbackCause::Cancelled { by },
                        };
                        self.undo_progress();
                    } else {
                        self.finish(RunStatus::Cancelled { at: self.now, by });
                    }
                }
            }
            RunStatus::RollingBack { .. } => {
                if !self.any_run_job_queued() {
                    self.undo_progress();
                }
            }
            RunStatus::Completed { .. }
            | RunStatus::Cancelled { .. }
            | RunStatus::RolledBack { .. }
            | RunStatus::RollbackFailed { .. } => {}
        }
    }

    /// Forward progress: skip or dispatch every step whose needs are settled.
    fn advance(&mut self) {
        for i in 0..self.n() {
            match &self.rec(i).state {
                StepState::Pending => {}
                StepState::Ready { next } => {
                    if matches!(self.st.status, RunStatus::Running) {
                        let d = *next;
                        self.dispatch_run(i, d);
                    }
                    continue;
                }
                _ => continue,
            }
            let mut waiting = false;
            let mut blocked_by = None;
            for &j in &self.plan.step(i).needs {
                match &self.rec(j).state {
                    StepState::Succeeded { .. }
                    | StepState::Skipped {
                        reason: SkipReason::Condition | SkipReason::Operator { .. },
                        ..
                    } => {}
                    StepState::Skipped {
                        reason: SkipReason::NeedNotMet { .. },
                        ..
                    }
                    | StepState::Cancelled { .. } => blocked_by = blocked_by.or(Some(j)),
                    StepState::Failed { .. }
                        if self.plan.step(j).on_failure == OnFailure::Continue =>
                    {
                        blocked_by = blocked_by.or(Some(j));
                    }
                    _ => waiting = true,
                }
            }
            if let Some(j) = blocked_by {
                let step = self.id(j);
                self.set(
                    i,
                    StepState::Skipped {
                        at: self.now,
                        reason: SkipReason::NeedNotMet { step },
                    },
                );
                continue;
            }
            if waiting {
                continue;
            }
            let run_it = self
                .plan
                .step(i)
                .when
                .as_ref()
                .is_none_or(|w| w.eval(&self.scope()));
            if !run_it {
                self.set(
                    i,
                    StepState::Skipped {
                        at: self.now,
                        reason: SkipReason::Condition,
                    },
                );
                continue;
            }
            self.dispatch_or_ready(i, Dispatch::first());
        }
    }

    fn dispatch_or_ready(&mut self, i: usize, d: Dispatch) {
        if matches!(self.st.status, RunStatus::Running) {
            self.dispatch_run(i, d);
        } else {
            self.set(i, StepState::Ready { next: d });
        }
    }

    fn dispatch_run(&mut self, i: usize, d: Dispatch) {
        let input = self.bind(i);
        let step = self.plan.step(i);
        let (id, op, timeout) = (step.id.clone(), step.op.clone(), step.timeout);
        let now = self.now;
        let rec = self.rec_mut(i);
        rec.seq += 1;
        let seq = rec.seq;
        rec.state = StepState::Queued { job: d, at: now };
        self.effects.push(Effect::EnqueueStep {
            job: Job {
                step: id,
                seq,
                phase: Phase::Run,
                op,
                attempt: d.attempt,
                polls: d.polls,
                input,
                timeout,
            },
        });
    }

    fn dispatch_undo(&mut self, i: usize, attempt: Attempt) {
        let (op, input) = match &self.rec(i).state {
            StepState::Succeeded {
                rollback: Rollback::Inverse { op, input, .. },
                ..
            } => (op.clone(), input.clone()),
            _ => unreachable!("only succeeded steps with an inverse get an undo"),
        };
        let timeout = self.plan.step(i).timeout;
        let id = self.id(i);
        let now = self.now;
        let rec = self.rec_mut(i);
        rec.seq += 1;
        let seq = rec.seq;
        rec.undo = Some(CompState::Queued { attempt, at: now });
        self.effects.push(Effect::EnqueueStep {
            job: Job {
                step: id,
                seq,
                phase: Phase::Undo,
                op,
                attempt,
                polls: 0,
                input,
                timeout,
            },
        });
    }

    /// A step failed for good: record it and apply its `on_failure`.
    fn fail_final(&mut self, i: usize, attempt: Attempt, error: StepFailure) {
        let message = error.message.clone();
        self.set(
            i,
            StepState::Failed {
                attempt,
                at: self.now,
                error,
            },
        );
        match (self.plan.step(i).on_failure, &self.st.status) {
            (OnFailure::Continue, _) => {}
            (OnFailure::Pause, RunStatus::Running) => {
                self.st.status = RunStatus::Paused {
                    reason: PauseReason::StepFailed { step: self.id(i) },
                };
                self.revoke_queued();
            }
            (OnFailure::Pause, _) => {}
            (
                OnFailure::Rollback,
                RunStatus::Running | RunStatus::Paused { .. } | RunStatus::Scheduled { .. },
            ) => {
                self.st.status = RunStatus::RollingBack {
                    cause: RollbackCause::StepFailed {
                        step: self.id(i),
                        message,
                    },
                };
                self.cancel_outstanding();
            }
            (OnFailure::Rollback, _) => {}
        }
    }

    /// Stops every forward step that has not finished: cancels what waits and revokes queued
    /// jobs (those a worker already holds report back and are recorded).
    fn cancel_outstanding(&mut self) {
        let mut revoke = Vec::new();
        for i in 0..self.n() {
            let seq = self.rec(i).seq;
            let timer = match &self.rec(i).state {
                StepState::Pending | StepState::Ready { .. } => None,
                StepState::AwaitingApproval { .. } => {
                    self.close_gate_if_open(i);
                    None
                }
                StepState::Retrying { .. } => Some(TimerKind::Retry),
                StepState::Polling { .. } => Some(TimerKind::Poll),
                StepState::Queued { .. } => {
                    revoke.push(JobRef {
                        step: self.id(i),
                        seq,
                        phase: Phase::Run,
                    });
                    continue;
                }
                StepState::Succeeded { .. }
                | StepState::Failed { .. }
                | StepState::Skipped { .. }
                | StepState::Cancelled { .. } => {
                    continue;
                }
            };
            if let Some(kind) = timer {
                self.effects.push(Effect::CancelTimer {
                    key: TimerKey::step(kind, self.id(i), seq),
                });
            }
            self.set(i, StepState::Cancelled { at: self.now });
        }
        if !revoke.is_empty() {
            self.effects.push(Effect::RevokeJobs { jobs: revoke });
        }
    }

    /// Asks the runtime to take back queued jobs no worker has received yet.
    fn revoke_queued(&mut self) {
        let jobs: Vec<JobRef> = (0..self.n())
            .filter(|&i| matches!(self.rec(i).state, StepState::Queued { .. }))
            .map(|i| JobRef {
                step: self.id(i),
                seq: self.rec(i).seq,
                phase: Phase::Run,
            })
            .collect();
        if !jobs.is_empty() {
            self.effects.push(Effect::RevokeJobs { jobs });
        }
    }

    fn any_run_job_queued(&self) -> bool {
        (0..self.n()).any(|i| matches!(self.rec(i).state, StepState::Queued { .. }))
    }

    /// The first step whose failure holds the run (`on_failure: pause`).
    fn blocking_failure(&self) -> Option<usize> {
        blocking_failure(self.plan, &self.st)
    }

    fn unpause_if_clear(&mut self) {
        if let RunStatus::Paused {
            reason: PauseReason::StepFailed { .. },
        } = &self.st.status
        {
            self.st.status = match self.blocking_failure() {
                Some(j) => RunStatus::Paused {
                    reason: PauseReason::StepFailed { step: self.id(j) },
                },
                None => RunStatus::Running,
            };
        }
    }

    /// Rollback progress: undo succeeded steps, a step only after every step that depends on it.
    fn undo_progress(&mut self) {
        for i in 0..self.n() {
            if self.rec(i).undo.is_some() {
                continue;
            }
            let undo = match &self.rec(i).state {
                StepState::Succeeded {
                    rollback: Rollback::Inverse { .. },
                    ..
                } => Some(CompState::Waiting),
                StepState::Succeeded {
                    rollback: Rollback::Irreversible { reason, .. },
                    ..
                } => Some(CompState::Irreversible {
                    reason: reason.clone(),
                }),
                _ => None,
            };
            self.rec_mut(i).undo = undo;
        }
        for i in (0..self.n()).rev() {
            if !matches!(self.rec(i).undo, Some(CompState::Waiting)) {
                continue;
            }
            let mut wait = false;
            let mut blocker = None;
            for d in self.plan.descendants(i) {
                match &self.rec(d).undo {
                    Some(
                        CompState::Waiting | CompState::Queued { .. } | CompState::Retrying { .. },
                    ) => wait = true,
                    Some(CompState::Failed { .. } | CompState::Blocked { .. }) => {
                        blocker = blocker.or(Some(d))
                    }
                    Some(
                        CompState::Done { .. }
                        | CompState::Resolved { .. }
                        | CompState::Irreversible { .. },
                    )
                    | None => {}
                }
            }
            if let Some(d) = blocker {
                let by = self.id(d);
                self.rec_mut(i).undo = Some(CompState::Blocked { by });
            } else if !wait {
                self.dispatch_undo(i, Attempt::FIRST);
            }
        }
        let busy =
            (0..self.n()).any(|i| self.rec(i).undo.as_ref().is_some_and(|u| !u.is_settled()));
        if busy {
            return;
        }
        let RunStatus::RollingBack { cause } = &self.st.status else {
            return;
        };
        let cause = cause.clone();
        let pick = |m: &Self, f: fn(&CompState) -> bool| -> Vec<StepId> {
            (0..m.n())
                .filter(|&i| m.rec(i).undo.as_ref().is_some_and(f))
                .map(|i| m.id(i))
                .collect()
        };
        let failed = pick(self, |u| matches!(u, CompState::Failed { .. }));
        let left = pick(self, |u| matches!(u, CompState::Blocked { .. }));
        let irreversible = pick(self, |u| matches!(u, CompState::Irreversible { .. }));
        let resolved = pick(self, |u| matches!(u, CompState::Resolved { .. }));
        let status = if failed.is_empty() && left.is_empty() {
            RunStatus::RolledBack {
                at: self.now,
                cause,
                irreversible,
                resolved,
            }
        } else {
            RunStatus::RollbackFailed {
                at: self.now,
                cause,
                failed,
                left,
                irreversible,
                resolved,
            }
        };
        self.finish(status);
    }

    // ---- bindings -----------------------------------------------------------------------

    fn scope(&self) -> RunScope<'_> {
        RunScope {
            ctx: self.ctx,
            state: &self.st,
        }
    }

    fn bind(&self, i: usize) -> Value {
        if let Some(gate) = &self.plan.step(i).gate {
            // The worker that opens the gate resolves its approvers from this.
            return serde_json::to_value(gate).unwrap_or(Value::Null);
        }
        let scope = self.scope();
        Value::Object(
            self.plan
                .step(i)
                .with
                .iter()
                .map(|(k, t)| (k.clone(), t.render(&scope)))
                .collect::<Map<_, _>>(),
        )
    }
}

/// Resolves references against a run.
#[derive(Debug)]
pub struct RunScope<'a> {
    /// What the run was started with.
    pub ctx: &'a RunContext,
    /// Where it is.
    pub state: &'a RunState,
}

impl Scope for RunScope<'_> {
    fn lookup(&self, path: &Path) -> Value {
        let base = match &path.root {
            Root::Input(name) => self.ctx.inputs.get(name).cloned().unwrap_or(Value::Null),
            Root::Company(field) if field == "id" => Value::String(self.ctx.company.to_string()),
            Root::Company(field) => self
                .ctx
                .company_settings
                .get(field)
                .cloned()
                .unwrap_or(Value::Null),
            Root::StepOutput(step) => match self.state.steps.get(step.as_str()).map(|r| &r.state) {
                Some(StepState::Succeeded { output, .. }) => output.clone(),
                _ => Value::Null,
            },
            Root::Run(RunField::Id) => Value::String(self.ctx.run_id.to_string()),
            Root::Run(RunField::RequestedBy) => Value::String(self.ctx.requested_by.clone()),
            Root::Run(RunField::Company) => Value::String(self.ctx.company.to_string()),
        };
        walk(&base, &path.segs)
    }
}
