//! The op trait and what an op gets and gives.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::Value;
use steward_schemas::{
    Attempt, CompanyId, Dur, FailureKind, OpSpec, Phase, Rollback, RunId, StepFailure, StepId,
};

/// A boxed, sendable future (ops are called through `dyn Op`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One operation on one system, registered by name.
pub trait Op: Send + Sync + 'static {
    /// The registry entry: inputs, outputs, how it is undone.
    fn spec(&self) -> &OpSpec;

    /// Runs the op. `input` is the step's `with:` map, bound.
    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>>;
}

/// What a finished op reports.
#[derive(Debug, Clone, PartialEq)]
pub enum OpOutcome {
    /// Done: what it returns, and how to undo what it changed.
    Succeeded {
        /// The output (`${{ steps.ID.output.… }}`). Never put secrets here.
        output: Value,
        /// How to undo it.
        rollback: Rollback,
    },
    /// Not done yet (e.g. the user has not synced to Entra yet): ask again after `check_after`.
    Pending {
        /// When to ask again.
        check_after: Duration,
        /// What it is waiting for, for technicians.
        note: Option<String>,
    },
}

impl OpOutcome {
    /// Succeeded with nothing to undo.
    pub fn done(output: Value) -> Self {
        Self::Succeeded {
            output,
            rollback: Rollback::Nothing,
        }
    }
}

/// Why an op failed, classified where it happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    /// Another attempt may succeed (a timeout, a 5xx, throttling).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// The service's error code.
        code: Option<String>,
        /// How long the service asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Another attempt will not succeed (bad input, not allowed, not found).
    #[error("{message}")]
    Terminal {
        /// What went wrong.
        message: String,
        /// The service's error code.
        code: Option<String>,
    },
    /// No attempt will succeed until a technician fixes something outside Steward (a runner
    /// without Kerberos delegation, WinRM off): the run pauses with the fix, rather than
    /// burning retries. When the technician resumes, the step runs again.
    #[error("{message}")]
    NeedsTechnician {
        /// The cause and the fix.
        message: String,
        /// The diagnosis's code (`double_hop`).
        code: Option<String>,
    },
}

impl OpError {
    /// A retryable failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            code: None,
            retry_after: None,
        }
    }

    /// A terminal failure.
    pub fn terminal(message: impl Into<String>) -> Self {
        Self::Terminal {
            message: message.into(),
            code: None,
        }
    }

    /// A terminal failure caused by bad input: names the field and the fix.
    pub fn bad_input(field: &str, problem: &str) -> Self {
        Self::terminal(format!("input `{field}`: {problem}"))
    }

    /// As recorded in a run.
    pub fn into_failure(self) -> StepFailure {
        match self {
            Self::Retryable {
                message,
                code,
                retry_after,
            } => StepFailure {
                kind: FailureKind::Retryable,
                message,
                code,
                retry_after: retry_after.map(Dur::new),
            },
            Self::Terminal { message, code } | Self::NeedsTechnician { message, code } => {
                StepFailure {
                    kind: FailureKind::Terminal,
                    message,
                    code,
                    retry_after: None,
                }
            }
        }
    }
}

/// Shared clients ops use. Cheap to clone.
#[derive(Clone, Default)]
pub struct Services {
    /// Redis, for ops whose "system" lives there (the test ledger).
    pub redis: Option<crate::RedisConn>,
    /// The key namespace.
    pub namespace: String,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("redis", &self.redis.is_some())
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// What an op knows about the job it runs.
#[derive(Debug, Clone)]
pub struct OpContext {
    /// The run.
    pub run_id: RunId,
    /// The company it acts on.
    pub company: CompanyId,
    /// The step.
    pub step: StepId,
    /// Run or undo.
    pub phase: Phase,
    /// The attempt (retries count, polls do not).
    pub attempt: Attempt,
    /// How many times this attempt answered "not yet" before.
    pub polls: u32,
    /// The job's sequence number.
    pub seq: u32,
    /// Shared clients.
    pub services: Services,
    /// The company's settings as they are now (where its users and mailboxes live, its
    /// hostnames): routed and on-prem ops need them. `None` where the caller has none: the
    /// abstract op then runs its cloud implementation unrouted.
    pub settings: Option<std::sync::Arc<steward_schemas::Company>>,
}

impl OpContext {
    /// The key an op makes itself idempotent with: the same for every delivery and attempt of
    /// this step of this run, different for its undo.
    pub fn idempotency_key(&self) -> String {
        match self.phase {
            Phase::Run => format!("{}/{}", self.run_id, self.step),
            Phase::Undo => format!("{}/{}/undo", self.run_id, self.step),
        }
    }
}

/// Reads an input field, naming it in the error when it is missing or mistyped.
pub fn required<'a>(input: &'a Value, field: &str) -> Result<&'a Value, OpError> {
    match input.get(field) {
        Some(Value::Null) | None => Err(OpError::bad_input(
            field,
            "is missing; set it under `with:`",
        )),
        Some(v) => Ok(v),
    }
}

/// Reads an optional whole number.
pub fn opt_u64(input: &Value, field: &str) -> Result<Option<u64>, OpError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| OpError::bad_input(field, &format!("expected a whole number, got {v}"))),
    }
}

/// Reads an optional boolean.
pub fn opt_bool(input: &Value, field: &str) -> Result<Option<bool>, OpError> {
    match input.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(OpError::bad_input(
            field,
            &format!("expected true or false, got {v}"),
        )),
    }
}
