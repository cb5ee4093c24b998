//! The pure core of Steward's engine: workflow validation and planning, the run state machine,
//! retry policy. No I/O, no clock, no randomness: the runtime (`steward-engine`) supplies time and
//! carries out effects. A CI step checks that this crate's dependency tree has no tokio, redis,
//! reqwest, axum or apalis.
#![warn(missing_docs)]

pub mod company;
pub mod expr;
pub mod history;
pub mod import;
pub mod inputs;
pub mod machine;
pub mod plan;
pub mod policy;
pub mod retry;
pub mod routing;
pub mod text;
pub mod words;
pub mod yaml;

pub use machine::{
    Cx, Transition, TransitionError, actions, initial_state, may_decide, transition,
};
pub use plan::{Catalog, Plan, PlanStep, Problem, ValidationError};
pub use retry::RetryPolicy;
