//! Shared types of Steward.
//!
//! Everything that crosses a process or storage boundary lives here: typed ids, time values,
//! workflow definitions (the YAML format), run documents and state, events, effects and jobs.
//! The JSON Schemas in `schemas/json/` are generated from these types.
#![warn(missing_docs)]

pub mod effect;
pub mod event;
pub mod id;
pub mod op;
pub mod run;
pub mod time;
pub mod workflow;

pub use effect::{Effect, Job, JobRef, Phase, TimerKey, TimerKind};
pub use event::{Event, FailureKind, StepFailure};
pub use id::{Attempt, CompanyId, RunId, StepId};
pub use op::{OpAccess, OpField, OpSpec, Reversibility};
pub use run::{
    CompState, Dispatch, HistoryEntry, PauseReason, Rollback, RollbackCause, RunContext, RunDoc,
    RunState, RunStatus, SkipReason, StepRecord, StepState, WorkflowRef,
};
pub use time::{Dur, Timestamp};
pub use workflow::{
    Backoff, InputDef, InputType, OnFailure, RetrySpec, StepDef, StepDefaults, WorkflowDef,
};
