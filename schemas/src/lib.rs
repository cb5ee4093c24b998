//! Shared types of Steward.
//!
//! Everything that crosses a process or storage boundary lives here: typed ids, time values,
//! workflow definitions (the YAML format), run documents and state, events, effects and jobs.
//! The JSON Schemas in `schemas/json/` are generated from these types.
#![warn(missing_docs)]

pub mod auth;
pub mod company;
pub mod effect;
pub mod event;
pub mod id;
pub mod op;
pub mod policy;
pub mod run;
pub mod time;
pub mod workflow;

pub use auth::{CompanyScope, Role, Technician, TokenInfo};
pub use company::{Company, CompanyDefaults, IdentityProvider, MailboxProvider, PsaLink, RmmLink};
pub use effect::{Effect, Job, JobRef, Phase, TimerKey, TimerKind};
pub use event::{Event, FailureKind, StepFailure, Unavailability, UnavailableApprover};
pub use id::{Attempt, CompanyId, RunId, StepId, TechnicianId, TokenId};
pub use op::{ApprovalRule, FieldType, OpAccess, OpField, OpSpec, Reversibility, System};
pub use policy::{GroupSetting, Level, PermissionGroup, Permissions, Profile};
pub use run::{
    AdminFallback, CompState, Decision, Dispatch, HistoryEntry, PauseReason, Rollback,
    RollbackCause, RunAction, RunContext, RunDoc, RunState, RunStatus, SkipReason, StepRecord,
    StepState, TicketRef, WorkflowRef,
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
        (
            "company.schema.json",
            pretty(schemars::schema_for!(Company)),
        ),
        ("event.schema.json", pretty(schemars::schema_for!(Event))),
        (
            "history-entry.schema.json",
            pretty(schemars::schema_for!(HistoryEntry)),
        ),
    ]
}
pub use workflow::{
    ApproverSource, Approvers, Backoff, GateSpec, InputDef, InputType, OnExpiry, OnFailure,
    RetrySpec, StepDef, StepDefaults, WorkflowDef,
};
