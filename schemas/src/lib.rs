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

/// The JSON Schemas generated from these types, as (file name, pretty JSON) pairs; checked in
/// under `schemas/json/` and compared with a fresh generation by a test.
pub fn json_schemas() -> Vec<(&'static str, String)> {
    let pretty = |schema: schemars::Schema| {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&schema).expect("a schema serialises")
        )
    };
    vec![
        (
            "workflow.schema.json",
            pretty(schemars::schema_for!(WorkflowDef)),
        ),
        ("run.schema.json", pretty(schemars::schema_for!(RunDoc))),
        ("event.schema.json", pretty(schemars::schema_for!(Event))),
        (
            "history-entry.schema.json",
            pretty(schemars::schema_for!(HistoryEntry)),
        ),
    ]
}
pub use workflow::{
    Backoff, InputDef, InputType, OnFailure, RetrySpec, StepDef, StepDefaults, WorkflowDef,
};
