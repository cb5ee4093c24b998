//! Effects: what a transition asks the runtime to do, and the jobs workers receive.
//!
//! The pure state machine only returns effects; the runtime commits them in the same atomic
//! script as the new state, so a crash leaves either the old state without its effects or the new
//! state with all of them.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::id::{Attempt, StepId};
use crate::time::{Dur, Timestamp};

/// Something the runtime must do as part of a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Put a job in the step queue.
    EnqueueStep {
        /// The job.
        job: Job,
    },
    /// Arm a durable timer.
    ScheduleTimer {
        /// Which timer.
        key: TimerKey,
        /// When it fires.
        at: Timestamp,
    },
    /// Disarm a durable timer (if it has not fired).
    CancelTimer {
        /// Which timer.
        key: TimerKey,
    },
    /// Take jobs out of the step queue if no worker has received them yet; the runtime reports
    /// the ones it took out with a `jobs_revoked` event.
    RevokeJobs {
        /// Which jobs.
        jobs: Vec<JobRef>,
    },
    /// List an open gate in its approvers' inboxes.
    IndexGate {
        /// The gate.
        step: StepId,
        /// Its approvers.
        approvers: Vec<String>,
        /// When it opened.
        since: Timestamp,
    },
    /// Take a gate out of its approvers' inboxes.
    UnindexGate {
        /// The gate.
        step: StepId,
        /// Its approvers.
        approvers: Vec<String>,
    },
    /// The run ended; tell whoever waits for it.
    RunEnded {
        /// The final status's name.
        status: String,
    },
}

/// Whether a job runs a step's op or undoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Run the step's op.
    Run,
    /// Run the inverse recorded by the step's rollback record.
    Undo,
}

impl Phase {
    /// The phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Undo => "undo",
        }
    }
}

/// A job: one dispatch of one step of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// The step.
    pub step: StepId,
    /// The dispatch's sequence number (the fence).
    pub seq: u32,
    /// Run or undo.
    pub phase: Phase,
    /// The op to run.
    pub op: String,
    /// The attempt.
    pub attempt: Attempt,
    /// How many times this attempt has answered "not yet" so far.
    #[serde(default)]
    pub polls: u32,
    /// The op's input, bound.
    pub input: Value,
    /// How long the attempt may run.
    pub timeout: Dur,
}

/// A job's identity within its run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct JobRef {
    /// The step.
    pub step: StepId,
    /// The dispatch's sequence number.
    pub seq: u32,
    /// Run or undo.
    pub phase: Phase,
}

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The run's scheduled start.
    Start,
    /// The next attempt of a step after a retryable failure.
    Retry,
    /// Asking a waiting op again.
    Poll,
    /// The next attempt of a step's undo.
    UndoRetry,
    /// A gate's expiry.
    GateExpiry,
}

impl TimerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Retry => "retry",
            Self::Poll => "poll",
            Self::UndoRetry => "undo_retry",
            Self::GateExpiry => "gate_expiry",
        }
    }
}

/// A durable timer's identity within its run. Its text form (`retry:create_user:3`) is the
/// member of the timer index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct TimerKey {
    /// What it is for.
    pub kind: TimerKind,
    /// The step, for step timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The step's sequence number when the timer was armed (a fence like a job's).
    #[serde(default)]
    pub seq: u32,
}

impl TimerKey {
    /// The run's start timer.
    pub fn start() -> Self {
        Self {
            kind: TimerKind::Start,
            step: None,
            seq: 0,
        }
    }

    /// A step timer.
    pub fn step(kind: TimerKind, step: StepId, seq: u32) -> Self {
        Self {
            kind,
            step: Some(step),
            seq,
        }
    }
}

impl fmt::Display for TimerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.step {
            Some(step) => write!(f, "{}:{}:{}", self.kind.name(), step, self.seq),
            None => write!(f, "{}::{}", self.kind.name(), self.seq),
        }
    }
}

/// A timer key that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a timer key")]
pub struct TimerKeyError(String);

impl FromStr for TimerKey {
    type Err = TimerKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TimerKeyError(s.chars().take(80).collect());
        let mut parts = s.splitn(3, ':');
        let (Some(kind), Some(step), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err());
        };
        let kind = match kind {
            "start" => TimerKind::Start,
            "retry" => TimerKind::Retry,
            "poll" => TimerKind::Poll,
            "undo_retry" => TimerKind::UndoRetry,
            "gate_expiry" => TimerKind::GateExpiry,
            _ => return Err(err()),
        };
        let step = if step.is_empty() {
            None
        } else {
            Some(StepId::parse(step).map_err(|_| err())?)
        };
        let seq = seq.parse().map_err(|_| err())?;
        Ok(Self { kind, step, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_keys_round_trip_through_text() {
        let keys = [
            TimerKey::start(),
            TimerKey::step(TimerKind::Retry, StepId::parse("create_user").unwrap(), 3),
            TimerKey::step(TimerKind::UndoRetry, StepId::parse("a").unwrap(), 12),
        ];
        for key in keys {
            let text = key.to_string();
            assert_eq!(text.parse::<TimerKey>().unwrap(), key, "{text}");
        }
        assert!("retry:Bad:1".parse::<TimerKey>().is_err());
        assert!("later:a:1".parse::<TimerKey>().is_err());
        assert!("retry:a".parse::<TimerKey>().is_err());
    }
}
