//! Runs: the stored document of one execution, its state, and its history entries.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, StepFailure, UnavailableApprover};
use crate::id::{Attempt, CompanyId, RunId, StepId};
use crate::time::Timestamp;

/// The stored document of a run: what it was started with (immutable) and where it is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunDoc {
    /// Schema version of this document.
    pub v: u32,
    /// What the run was started with.
    pub ctx: RunContext,
    /// Where the run is now.
    pub state: RunState,
}

impl RunDoc {
    /// The current document schema version.
    pub const VERSION: u32 = 1;
}

/// What a run was started with. Never changes after the run is created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunContext {
    /// The run's id.
    pub run_id: RunId,
    /// The workflow definition, pinned by content hash.
    pub workflow: WorkflowRef,
    /// The company the run acts on.
    pub company: CompanyId,
    /// The company's settings as they were when the run started (`${{ company.… }}`).
    #[serde(default)]
    pub company_settings: Map<String, Value>,
    /// The run's inputs, defaults applied.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Who or what started the run (a technician, a ticket, a schedule).
    pub requested_by: String,
    /// The PSA ticket the run works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
    /// When the run was created.
    pub created_at: Timestamp,
}

/// A PSA ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TicketRef {
    /// The PSA (`autotask`, `connectwise`, `halopsa`).
    pub psa: String,
    /// The ticket's id or number.
    pub id: String,
    /// Its title.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// A link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A workflow definition pinned by content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowRef {
    /// The workflow's name.
    pub name: String,
    /// Its declared version.
    pub version: u32,
    /// The SHA-256 of its canonical JSON form, hex.
    pub hash: String,
}

/// Where a run is: its status and every step's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunState {
    /// The run's status.
    pub status: RunStatus,
    /// Every step of the plan, by id.
    pub steps: BTreeMap<StepId, StepRecord>,
    /// When the state last changed.
    pub updated_at: Timestamp,
}

/// A run's status. Terminal statuses (`completed`, `cancelled`, `rolled_back`,
/// `rollback_failed`) absorb every later report; the one request an ended run takes is a
/// technician's fix of a `rollback_failed` run (retry a failed undo, or mark it resolved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RunStatus {
    /// Created, not yet started.
    Created,
    /// Waiting for its scheduled start.
    Scheduled {
        /// When it starts.
        start_at: Timestamp,
    },
    /// Dispatching and running steps.
    Running,
    /// Dispatching nothing new until resumed; attempts already running finish.
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Cancelled; waiting for attempts that were already running to report.
    Cancelling {
        /// Who cancelled.
        by: String,
        /// Whether the run's changes are undone once they have.
        rollback: bool,
    },
    /// Undoing the run's changes, newest first.
    RollingBack {
        /// Why.
        cause: RollbackCause,
    },
    /// Every step succeeded, was skipped, or failed with `on_failure: continue`.
    Completed {
        /// When.
        at: Timestamp,
        /// Steps that failed with `on_failure: continue`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed: Vec<StepId>,
    },
    /// Cancelled without undoing anything.
    Cancelled {
        /// When.
        at: Timestamp,
        /// Who cancelled.
        by: String,
    },
    /// Every change was undone, except those listed as irreversible.
    RolledBack {
        /// When.
        at: Timestamp,
        /// Why the run was rolled back.
        cause: RollbackCause,
        /// Steps whose changes cannot be undone.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        irreversible: Vec<StepId>,
        /// Steps whose undo failed and a technician finished by hand (marked resolved).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resolved: Vec<StepId>,
    },
    /// Some changes could not be undone; a technician must finish the job.
    RollbackFailed {
        /// When.
        at: Timestamp,
        /// Why the run was rolled back.
        cause: RollbackCause,
        /// Steps whose undo failed.
        failed: Vec<StepId>,
        /// Steps whose undo did not run because an undo they must follow failed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<StepId>,
        /// Steps whose changes cannot be undone.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        irreversible: Vec<StepId>,
        /// Steps whose undo failed and a technician finished by hand (marked resolved).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        resolved: Vec<StepId>,
    },
}

impl RunStatus {
    /// The status name (`running`, `rolled_back`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Scheduled { .. } => "scheduled",
            Self::Running => "running",
            Self::Paused { .. } => "paused",
            Self::Cancelling { .. } => "cancelling",
            Self::RollingBack { .. } => "rolling_back",
            Self::Completed { .. } => "completed",
            Self::Cancelled { .. } => "cancelled",
            Self::RolledBack { .. } => "rolled_back",
            Self::RollbackFailed { .. } => "rollback_failed",
        }
    }

    /// Whether the run has ended.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. }
                | Self::Cancelled { .. }
                | Self::RolledBack { .. }
                | Self::RollbackFailed { .. }
        )
    }
}

/// Why a run is paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PauseReason {
    /// A technician paused it.
    Operator {
        /// Who.
        by: String,
        /// Why, in their words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// A step with `on_failure: pause` failed.
    StepFailed {
        /// The step.
        step: StepId,
    },
    /// The company's policy no longer allows a step that was about to run.
    PolicyBlocked {
        /// The step.
        step: StepId,
        /// What the policy says.
        reason: String,
    },
}

/// Why a run is being rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollbackCause {
    /// A step with `on_failure: rollback` failed.
    StepFailed {
        /// The step.
        step: StepId,
        /// Its error message.
        message: String,
    },
    /// A technician cancelled the run with rollback.
    Cancelled {
        /// Who.
        by: String,
    },
    /// An approval gate was rejected, or expired without a decision.
    Rejected {
        /// The gate.
        step: StepId,
        /// Who rejected it (`expiry` when nobody decided in time).
        by: String,
        /// Their comment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepRecord {
    /// The sequence number of the last job dispatched for this step (0: none yet). Every
    /// dispatch (first attempt, retry, poll, undo) gets the next number; an outcome counts only
    /// if it carries the current one, so a stale or duplicate delivery changes nothing.
    pub seq: u32,
    /// Where the step is.
    #[serde(flatten)]
    pub state: StepState,
    /// Where its undo is, once the run is rolling back and the step changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<CompState>,
}

impl StepRecord {
    /// A step that has not started.
    pub fn pending() -> Self {
        Self {
            seq: 0,
            state: StepState::Pending,
            undo: None,
        }
    }
}

/// Which attempt a dispatch is, and how long the op has been answering "not yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Dispatch {
    /// The attempt (retries count, polls do not).
    pub attempt: Attempt,
    /// How many times this attempt has answered "not yet".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub polls: u32,
    /// When it first answered "not yet".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<Timestamp>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Dispatch {
    /// The first attempt.
    pub fn first() -> Self {
        Self {
            attempt: Attempt::FIRST,
            polls: 0,
            waiting_since: None,
        }
    }

    /// A fresh dispatch of attempt `attempt`.
    pub fn attempt(attempt: Attempt) -> Self {
        Self {
            attempt,
            polls: 0,
            waiting_since: None,
        }
    }
}

/// Where a step is in the forward direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for the steps it needs.
    Pending,
    /// Its needs are met; it is dispatched once the run is running again.
    Ready {
        /// What will be dispatched.
        next: Dispatch,
    },
    /// An approval gate, open: waiting for its approvers.
    AwaitingApproval {
        /// The attempt that opened it.
        #[serde(default = "first_attempt", skip_serializing_if = "is_first_attempt")]
        attempt: Attempt,
        /// When it opened (or was escalated).
        since: Timestamp,
        /// 0: the first approvers; 1: after escalation.
        stage: u8,
        /// Who may decide now (emails).
        approvers: Vec<String>,
        /// Who decides after escalation.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escalation: Vec<String>,
        /// How many different approvers must say yes.
        quorum: u32,
        /// When it expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<Timestamp>,
        /// The yes votes so far.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<Decision>,
        /// Named approvers and escalation targets who could not decide when it opened (not a
        /// technician, or disabled); they were left out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unavailable: Vec<UnavailableApprover>,
        /// Which of its lists went to the MSP's admins because nobody named could decide.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_admins: Option<AdminFallback>,
    },
    /// A job for it is in the step queue or running on a worker.
    Queued {
        /// What was dispatched.
        job: Dispatch,
        /// When.
        at: Timestamp,
    },
    /// The op answered "not yet"; it is asked again when the timer fires.
    Polling {
        /// The attempt that is waiting.
        job: Dispatch,
        /// When it is asked again.
        next_check: Timestamp,
        /// What the op said it is waiting for.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// An attempt failed and another follows when the timer fires.
    Retrying {
        /// The attempt that follows.
        next: Attempt,
        /// When.
        not_before: Timestamp,
        /// Why the last attempt failed.
        error: StepFailure,
    },
    /// Done.
    Succeeded {
        /// The attempt that succeeded.
        attempt: Attempt,
        /// When.
        at: Timestamp,
        /// What the op returned (`${{ steps.ID.output.… }}`).
        #[serde(default)]
        output: Value,
        /// How to undo what it changed.
        rollback: Rollback,
    },
    /// Failed for good.
    Failed {
        /// The last attempt.
        attempt: Attempt,
        /// When.
        at: Timestamp,
        /// Why.
        error: StepFailure,
    },
    /// Not run.
    Skipped {
        /// When.
        at: Timestamp,
        /// Why.
        reason: SkipReason,
    },
    /// Not run, or stopped, because the run was cancelled or rolled back.
    Cancelled {
        /// When.
        at: Timestamp,
    },
}

fn first_attempt() -> Attempt {
    Attempt::FIRST
}

fn is_first_attempt(a: &Attempt) -> bool {
    *a == Attempt::FIRST
}

impl StepState {
    /// The state's name (`queued`, `succeeded`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready { .. } => "ready",
            Self::AwaitingApproval { .. } => "awaiting_approval",
            Self::Queued { .. } => "queued",
            Self::Polling { .. } => "polling",
            Self::Retrying { .. } => "retrying",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Skipped { .. } => "skipped",
            Self::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether the step will not run again by itself.
    pub fn is_settled(&self) -> bool {
        matches!(
            self,
            Self::Succeeded { .. }
                | Self::Failed { .. }
                | Self::Skipped { .. }
                | Self::Cancelled { .. }
        )
    }
}

/// Which list of a gate went to the admins because nobody it named could decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminFallback {
    /// The approvers: the admins decide from the start.
    Approvers,
    /// The escalation targets: the gate escalates to the admins.
    Escalation,
}

/// An approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// Who (email).
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// Their comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// How it came (`api`, `link`, `cli`).
    pub via: String,
}

/// Why a step was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// Its `when` condition was false.
    Condition,
    /// A step it needs failed (with `on_failure: continue`) or could not run.
    NeedNotMet {
        /// That step.
        step: StepId,
    },
    /// A technician skipped it.
    Operator {
        /// Who.
        by: String,
        /// Why, in their words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// What a succeeded step changed and how to undo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rollback {
    /// Nothing to undo (a read, or the target was already as wanted).
    Nothing,
    /// Undo by running `op` with `input`.
    Inverse {
        /// The inverse op.
        op: String,
        /// Its input.
        input: Value,
        /// The state the step saw before it changed anything.
        #[serde(default)]
        prior: Value,
    },
    /// The change cannot be undone; rollback lists it for a technician.
    Irreversible {
        /// Why, in a technician's words.
        reason: String,
        /// The state the step saw before it changed anything.
        #[serde(default)]
        prior: Value,
    },
}

/// Where a step's undo is while the run rolls back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CompState {
    /// Waiting for the undo of the steps that depend on this one.
    Waiting,
    /// An undo job is queued or running.
    Queued {
        /// Which attempt.
        attempt: Attempt,
        /// When it was dispatched.
        at: Timestamp,
    },
    /// An undo attempt failed; another follows when the timer fires.
    Retrying {
        /// The attempt that follows.
        next: Attempt,
        /// When.
        not_before: Timestamp,
        /// Why the last one failed.
        error: StepFailure,
    },
    /// Undone.
    Done {
        /// When.
        at: Timestamp,
    },
    /// The undo failed for good.
    Failed {
        /// The last attempt.
        attempt: Attempt,
        /// When.
        at: Timestamp,
        /// Why.
        error: StepFailure,
    },
    /// The undo failed, and a technician finished it by hand.
    Resolved {
        /// Who.
        by: String,
        /// When.
        at: Timestamp,
        /// What they did, in their words.
        comment: String,
        /// How it came (`api`, `cli`).
        via: String,
    },
    /// Cannot be undone; listed for a technician.
    Irreversible {
        /// Why.
        reason: String,
    },
    /// Not undone because the undo of a step that depends on it failed.
    Blocked {
        /// That step.
        by: StepId,
    },
}

impl CompState {
    /// The state's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued { .. } => "queued",
            Self::Retrying { .. } => "retrying",
            Self::Done { .. } => "done",
            Self::Failed { .. } => "failed",
            Self::Resolved { .. } => "resolved",
            Self::Irreversible { .. } => "irreversible",
            Self::Blocked { .. } => "blocked",
        }
    }

    /// Whether the undo is over, one way or another.
    pub fn is_settled(&self) -> bool {
        !matches!(
            self,
            Self::Waiting | Self::Queued { .. } | Self::Retrying { .. }
        )
    }
}

/// Something a technician can do to a run now: the machine accepts it in the run's current state.
/// Listed in the run's view so a CLI or dashboard offers only fixes that can be carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RunAction {
    /// Cancel the run, leaving what it changed (`POST /v1/runs/{run}/cancel`).
    Cancel,
    /// Cancel the run and undo what it changed (`cancel` with `rollback: true`).
    CancelWithRollback,
    /// Pause the run (`POST /v1/runs/{run}/pause`).
    Pause,
    /// Resume the paused run (`POST /v1/runs/{run}/resume`).
    Resume,
    /// Try a step again now (`POST /v1/runs/{run}/steps/{step}/retry`).
    RetryStep {
        /// The step.
        step: StepId,
    },
    /// Skip a step (`POST /v1/runs/{run}/steps/{step}/skip`).
    SkipStep {
        /// The step.
        step: StepId,
    },
    /// Try a step's undo again (`POST /v1/runs/{run}/steps/{step}/retry-undo`).
    RetryUndo {
        /// The step.
        step: StepId,
    },
    /// Mark a step's failed undo as done by hand, with a comment
    /// (`POST /v1/runs/{run}/steps/{step}/resolve-undo`).
    ResolveUndo {
        /// The step.
        step: StepId,
    },
    /// Approve an open gate (`POST /v1/approvals/{run}/{step}`), as one of `by`.
    Approve {
        /// The gate.
        step: StepId,
        /// Who may approve it now, and whose yes would count.
        by: Vec<String>,
    },
    /// Reject an open gate, as one of `by`.
    Reject {
        /// The gate.
        step: StepId,
        /// Who may reject it now.
        by: Vec<String>,
    },
}

impl RunAction {
    /// The action's name (`retry_undo`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::CancelWithRollback => "cancel_with_rollback",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::RetryStep { .. } => "retry_step",
            Self::SkipStep { .. } => "skip_step",
            Self::RetryUndo { .. } => "retry_undo",
            Self::ResolveUndo { .. } => "resolve_undo",
            Self::Approve { .. } => "approve",
            Self::Reject { .. } => "reject",
        }
    }

    /// The step it acts on, if any.
    pub fn step(&self) -> Option<&StepId> {
        match self {
            Self::Cancel | Self::CancelWithRollback | Self::Pause | Self::Resume => None,
            Self::RetryStep { step }
            | Self::SkipStep { step }
            | Self::RetryUndo { step }
            | Self::ResolveUndo { step }
            | Self::Approve { step, .. }
            | Self::Reject { step, .. } => Some(step),
        }
    }
}

/// One entry of a run's history: an event that changed the run, and what it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HistoryEntry {
    /// When the event was applied.
    pub at: Timestamp,
    /// The event (secret-looking values redacted).
    pub event: Event,
    /// The run's status after it.
    pub status: String,
    /// Steps whose state changed, as `step: from -> to`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}
