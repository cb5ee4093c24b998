//! Events: facts that move a run. Each is applied by one atomic transition.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::effect::{JobRef, TimerKey};
use crate::id::StepId;
use crate::run::Rollback;
use crate::time::{Dur, Timestamp};

/// A fact that moves a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The run was created; it starts now, or at `start_at`.
    RunCreated {
        /// A scheduled start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_at: Option<Timestamp>,
    },
    /// A step's op succeeded.
    StepSucceeded {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// What the op returned.
        #[serde(default)]
        output: Value,
        /// How to undo it.
        rollback: Rollback,
    },
    /// A step's op answered "not yet": ask again after `check_after`.
    StepPending {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// When to ask again.
        check_after: Dur,
        /// What it is waiting for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A step's op failed.
    StepFailed {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// Why.
        error: StepFailure,
    },
    /// A step's undo succeeded.
    UndoSucceeded {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
    },
    /// A step's undo failed.
    UndoFailed {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// Why.
        error: StepFailure,
    },
    /// A gate's approvers were resolved: it opens, with the approvers and escalation targets
    /// who can decide. The machine drops the ones listed `unavailable`; if too few are left to
    /// reach the quorum, the gate goes to `admins` instead (never to nobody).
    GateOpened {
        /// The gate.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// Who the gate names to decide (emails), as resolved when it opened.
        approvers: Vec<String>,
        /// Who it names to decide after escalation.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escalation: Vec<String>,
        /// Named approvers and escalation targets who cannot decide: not a technician, or
        /// disabled (looked up when the gate opened).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unavailable: Vec<UnavailableApprover>,
        /// The enabled admins when the gate opened: who decides when nobody named can.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        admins: Vec<String>,
    },
    /// An approver decided a gate.
    ApprovalDecided {
        /// The gate.
        step: StepId,
        /// Who (email).
        by: String,
        /// Yes or no.
        approve: bool,
        /// Their comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// How it came (`api`, `link`, `cli`).
        via: String,
    },
    /// The company's policy refused a step when it was about to run.
    StepBlocked {
        /// The step.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// What the policy says.
        reason: String,
    },
    /// A durable timer fired.
    TimerFired {
        /// Which.
        timer: TimerKey,
    },
    /// Jobs were taken out of the step queue before any worker received them.
    JobsRevoked {
        /// Which.
        jobs: Vec<JobRef>,
    },
    /// A technician cancelled the run.
    CancelRequested {
        /// Who.
        by: String,
        /// Whether to undo what the run changed.
        rollback: bool,
        /// Why, in their words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A technician paused the run.
    PauseRequested {
        /// Who.
        by: String,
        /// Why, in their words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A technician resumed the run.
    ResumeRequested {
        /// Who.
        by: String,
    },
    /// A technician asked for a step to be tried again now: a failed step (`on_failure: pause`)
    /// starts over with a fresh attempt budget; a retrying step runs its next attempt without
    /// waiting for the backoff; a polling step is checked again without waiting (its attempt,
    /// and its `max_wait` clock, carry on).
    RetryStepRequested {
        /// The step.
        step: StepId,
        /// Who.
        by: String,
    },
    /// A technician asked for a step's failed undo to be tried again (its attempts start over),
    /// or for an undo waiting to retry to run now. A run that ended `rollback_failed` rolls back
    /// again and ends once more when its undos have settled.
    RetryUndoRequested {
        /// The step whose undo to retry.
        step: StepId,
        /// Who.
        by: String,
    },
    /// A technician declared a step's failed undo done by hand. The undos that waited for it
    /// go ahead; the run ends `rolled_back` once nothing is left failed.
    UndoResolved {
        /// The step.
        step: StepId,
        /// Who.
        by: String,
        /// What they did, in their words (required).
        comment: String,
        /// How it came (`api`, `cli`).
        via: String,
    },
    /// A technician asked for a step to be skipped.
    SkipStepRequested {
        /// The step.
        step: StepId,
        /// Who.
        by: String,
        /// Why, in their words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl Event {
    /// The event's name (`step_succeeded`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::RunCreated { .. } => "run_created",
            Self::StepSucceeded { .. } => "step_succeeded",
            Self::StepPending { .. } => "step_pending",
            Self::StepFailed { .. } => "step_failed",
            Self::UndoSucceeded { .. } => "undo_succeeded",
            Self::UndoFailed { .. } => "undo_failed",
            Self::GateOpened { .. } => "gate_opened",
            Self::ApprovalDecided { .. } => "approval_decided",
            Self::StepBlocked { .. } => "step_blocked",
            Self::TimerFired { .. } => "timer_fired",
            Self::JobsRevoked { .. } => "jobs_revoked",
            Self::CancelRequested { .. } => "cancel_requested",
            Self::PauseRequested { .. } => "pause_requested",
            Self::ResumeRequested { .. } => "resume_requested",
            Self::RetryStepRequested { .. } => "retry_step_requested",
            Self::SkipStepRequested { .. } => "skip_step_requested",
            Self::RetryUndoRequested { .. } => "retry_undo_requested",
            Self::UndoResolved { .. } => "undo_resolved",
        }
    }
}

/// A named approver who cannot decide a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UnavailableApprover {
    /// Their email, as the gate or the company names them.
    pub email: String,
    /// Why they cannot decide.
    pub reason: Unavailability,
}

/// Why a named approver cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unavailability {
    /// No technician has this email.
    NotATechnician,
    /// Their technician is disabled.
    Disabled,
}

impl Unavailability {
    /// In words: `is not a technician`, `is disabled`.
    pub fn words(self) -> &'static str {
        match self {
            Self::NotATechnician => "is not a technician",
            Self::Disabled => "is disabled",
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// What went wrong, for a technician.
    pub message: String,
    /// A stable code from the service, e.g. `Request_ResourceNotFound`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How long the service asked us to wait before trying again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Dur>,
}

impl StepFailure {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    /// A failure that retrying will not fix.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Terminal,
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, FailureKind::Retryable | FailureKind::Timeout)
    }
}

/// The kind of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Another attempt may succeed (a timeout, a 5xx, throttling).
    Retryable,
    /// Another attempt will not succeed (bad input, not allowed).
    Terminal,
    /// The attempt ran longer than the step's timeout.
    Timeout,
    /// The job was delivered too many times without an outcome (its worker keeps dying).
    Poison,
    /// The op kept answering "not yet" for longer than the step's `max_wait`.
    GaveUpWaiting,
    /// An approval gate was rejected or expired.
    Rejected,
}
