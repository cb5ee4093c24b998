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
    /// A gate's approvers were resolved: it is open.
    GateOpened {
        /// The gate.
        step: StepId,
        /// The job's sequence number.
        seq: u32,
        /// Who may decide (emails).
        approvers: Vec<String>,
        /// Who decides after escalation.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escalation: Vec<String>,
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
