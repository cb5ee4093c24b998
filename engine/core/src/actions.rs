//! What a technician can do to a run now, so the hints printed to them are only ones that can
//! be carried out in the run's state (an ended run is never told to retry a step).
//!
//! Nothing here decides by itself: each candidate request is tried against the state machine
//! ([`crate::transition`]) and offered only when the machine would apply it. The candidates are
//! the run-level requests, and for each step that holds the run up (failed, retrying, polling,
//! refused by the policy, or a gate waiting for its approvers) the requests about that step.

use steward_schemas::{Event, PauseReason, RunContext, RunState, RunStatus, StepId, StepState};

use crate::machine::{Cx, may_decide, transition};
use crate::plan::Plan;
use crate::text::normalize_email;

/// A request a technician can make now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Cancel the run, leaving what it changed.
    Cancel,
    /// Cancel the run and undo what it changed.
    CancelAndRollBack,
    /// Pause the run.
    Pause,
    /// Resume the paused run.
    Resume,
    /// Try a step again now.
    RetryStep(StepId),
    /// Skip a step.
    SkipStep(StepId),
    /// Approve or reject a gate (by one of its approvers).
    Decide {
        /// The gate.
        step: StepId,
        /// Who may decide it (the run's requester excluded).
        approvers: Vec<String>,
    },
}

impl Action {
    /// The action's name (`cancel`, `retry_step`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::CancelAndRollBack => "cancel_and_roll_back",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::RetryStep(_) => "retry_step",
            Self::SkipStep(_) => "skip_step",
            Self::Decide { .. } => "decide",
        }
    }

    /// The step it is about, if any.
    pub fn step(&self) -> Option<&StepId> {
        match self {
            Self::Cancel | Self::CancelAndRollBack | Self::Pause | Self::Resume => None,
            Self::RetryStep(s) | Self::SkipStep(s) | Self::Decide { step: s, .. } => Some(s),
        }
    }

    /// What it does, in a sentence.
    pub fn text(&self) -> String {
        match self {
            Self::Cancel => "cancel the run; what it changed stays as it is".to_owned(),
            Self::CancelAndRollBack => "cancel the run and undo what it changed".to_owned(),
            Self::Pause => "pause the run: nothing new starts until it is resumed".to_owned(),
            Self::Resume => "resume the run".to_owned(),
            Self::RetryStep(s) => format!("try step `{s}` again now"),
            Self::SkipStep(s) => format!("skip step `{s}` and go on without it"),
            Self::Decide { step, approvers } => format!(
                "approve or reject gate `{step}` (it is up to {})",
                approvers.join(", ")
            ),
        }
    }

    /// The request the machine is asked about.
    fn event(&self, by: &str) -> Event {
        let by = by.to_owned();
        match self {
            Self::Cancel => Event::CancelRequested {
                by,
                rollback: false,
                reason: None,
            },
            Self::CancelAndRollBack => Event::CancelRequested {
                by,
                rollback: true,
                reason: None,
            },
            Self::Pause => Event::PauseRequested { by, reason: None },
            Self::Resume => Event::ResumeRequested { by },
            Self::RetryStep(step) => Event::RetryStepRequested {
                step: step.clone(),
                by,
            },
            Self::SkipStep(step) => Event::SkipStepRequested {
                step: step.clone(),
                by,
                reason: None,
            },
            Self::Decide { step, .. } => Event::ApprovalDecided {
                step: step.clone(),
                by,
                approve: true,
                comment: None,
                via: "api".to_owned(),
            },
        }
    }
}

/// Whether the machine would apply `action` (requested by `by`) to the run now: accepted and
/// not ignored.
fn accepted(plan: &Plan, ctx: &RunContext, state: &RunState, action: &Action, by: &str) -> bool {
    let cx = Cx {
        now: state.updated_at,
    };
    transition(plan, ctx, state, &action.event(by), &cx).is_ok_and(|t| t.ignored.is_none())
}

/// The requests the machine would accept now, run-level ones first, then those about the
/// steps that hold the run up, in plan order.
pub fn available(plan: &Plan, ctx: &RunContext, state: &RunState) -> Vec<Action> {
    // Someone who is neither the requester nor an approver: run-level requests do not depend
    // on who asks.
    let technician = "technician@steward.invalid";
    let mut out: Vec<Action> = [
        Action::Resume,
        Action::Pause,
        Action::Cancel,
        Action::CancelAndRollBack,
    ]
    .into_iter()
    .filter(|a| accepted(plan, ctx, state, a, technician))
    .collect();
    let blocked = match &state.status {
        RunStatus::Paused {
            reason: PauseReason::PolicyBlocked { step, .. } | PauseReason::StepFailed { step },
        } => Some(step),
        RunStatus::Paused {
            reason: PauseReason::Operator { .. },
        }
        | RunStatus::Created
        | RunStatus::Scheduled { .. }
        | RunStatus::Running
        | RunStatus::Cancelling { .. }
        | RunStatus::RollingBack { .. }
        | RunStatus::Completed { .. }
        | RunStatus::Cancelled { .. }
        | RunStatus::RolledBack { .. }
        | RunStatus::RollbackFailed { .. } => None,
    };
    for step in plan.steps() {
        let Some(rec) = state.steps.get(&step.id) else {
            continue;
        };
        match &rec.state {
            StepState::AwaitingApproval { approvers, .. } => {
                let requester = normalize_email(&ctx.requested_by);
                let eligible: Vec<String> = approvers
                    .iter()
                    .filter(|a| {
                        may_decide(step.id.as_str(), approvers, &ctx.requested_by, a).is_ok()
                            && **a != requester
                    })
                    .cloned()
                    .collect();
                let decide = Action::Decide {
                    step: step.id.clone(),
                    approvers: eligible.clone(),
                };
                if let Some(first) = eligible.first()
                    && accepted(plan, ctx, state, &decide, first)
                {
                    out.push(decide);
                }
            }
            StepState::Failed { .. } | StepState::Retrying { .. } | StepState::Polling { .. } => {
                for a in [
                    Action::RetryStep(step.id.clone()),
                    Action::SkipStep(step.id.clone()),
                ] {
                    if accepted(plan, ctx, state, &a, technician) {
                        out.push(a);
                    }
                }
            }
            StepState::Ready { .. } if blocked == Some(&step.id) => {
                let skip = Action::SkipStep(step.id.clone());
                if accepted(plan, ctx, state, &skip, technician) {
                    out.push(skip);
                }
            }
            StepState::Pending
            | StepState::Ready { .. }
            | StepState::Queued { .. }
            | StepState::Succeeded { .. }
            | StepState::Skipped { .. }
            | StepState::Cancelled { .. } => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};
    use steward_schemas::{Event, Rollback, RunId, StepFailure, Timestamp, WorkflowRef};

    use super::*;
    use crate::initial_state;

    const FLOW: &str = "
name: t
steps:
  - {id: a, op: noop, on_failure: pause}
  - {id: b, op: noop, needs: [a], on_failure: rollback}
  - id: approval
    needs: [b]
    gate: {approvers: [alice@msp.example, tech@msp.example]}
  - {id: c, op: noop, needs: [approval]}
";

    struct Run {
        plan: Plan,
        ctx: RunContext,
        state: RunState,
    }

    impl Run {
        fn new() -> Self {
            let plan = Plan::load("t.yaml", FLOW, None).unwrap_or_else(|e| panic!("{e}"));
            let now = Timestamp::from_millis(1_790_000_000_000);
            let ctx = RunContext {
                run_id: RunId::from_ulid(ulid::Ulid::from_parts(1, 7)),
                workflow: WorkflowRef {
                    name: "t".to_owned(),
                    version: 1,
                    hash: plan.hash().to_owned(),
                },
                company: "contoso".parse().expect("an id"),
                company_settings: Map::new(),
                inputs: Map::new(),
                requested_by: "tech@msp.example".to_owned(),
                ticket: None,
                created_at: now,
            };
            let state = initial_state(&plan, now);
            let mut run = Self { plan, ctx, state };
            run.apply(Event::RunCreated { start_at: None });
            run
        }

        fn apply(&mut self, e: Event) {
            let cx = Cx {
                now: self.state.updated_at,
            };
            let t = transition(&self.plan, &self.ctx, &self.state, &e, &cx)
                .unwrap_or_else(|err| panic!("{}: {err}", e.name()));
            self.state = t.next;
        }

        fn seq(&self, step: &str) -> u32 {
            self.state.steps[step].seq
        }

        fn names(&self) -> Vec<String> {
            available(&self.plan, &self.ctx, &self.state)
                .iter()
                .map(|a| match a.step() {
                    Some(s) => format!("{} {s}", a.name()),
                    None => a.name().to_owned(),
                })
                .collect()
        }
    }

    fn id(s: &str) -> StepId {
        StepId::parse(s).expect("a step id")
    }

    #[test]
    fn hints_follow_what_the_machine_accepts() {
        let mut run = Run::new();
        assert_eq!(run.names(), ["pause", "cancel", "cancel_and_roll_back"]);

        // A failed step whose workflow pauses: resume is refused until it is retried or
        // skipped, so it is not offered.
        let seq = run.seq("a");
        run.apply(Event::StepFailed {
            step: id("a"),
            seq,
            error: StepFailure::terminal("no such user"),
        });
        assert_eq!(
            run.names(),
            [
                "cancel",
                "cancel_and_roll_back",
                "retry_step a",
                "skip_step a"
            ]
        );
        run.apply(Event::RetryStepRequested {
            step: id("a"),
            by: "x@msp.example".to_owned(),
        });
        let seq = run.seq("a");
        run.apply(Event::StepSucceeded {
            step: id("a"),
            seq,
            output: json!({}),
            rollback: Rollback::Nothing,
        });
        let seq = run.seq("b");
        run.apply(Event::StepSucceeded {
            step: id("b"),
            seq,
            output: json!({}),
            rollback: Rollback::Inverse {
                op: "noop".to_owned(),
                input: json!({}),
                prior: json!({}),
            },
        });
        let seq = run.seq("approval");
        run.apply(Event::GateOpened {
            step: id("approval"),
            seq,
            approvers: vec![
                "alice@msp.example".to_owned(),
                "tech@msp.example".to_owned(),
            ],
            escalation: vec![],
        });
        // The requester is not offered as an approver.
        let actions = available(&run.plan, &run.ctx, &run.state);
        assert_eq!(
            actions.last(),
            Some(&Action::Decide {
                step: id("approval"),
                approvers: vec!["alice@msp.example".to_owned()]
            })
        );
        run.apply(Event::PauseRequested {
            by: "x@msp.example".to_owned(),
            reason: None,
        });
        assert_eq!(
            run.names(),
            [
                "resume",
                "cancel",
                "cancel_and_roll_back",
                "decide approval"
            ]
        );

        // Rejected: the run rolls back, then ends. An ended run is offered nothing.
        run.apply(Event::ApprovalDecided {
            step: id("approval"),
            by: "alice@msp.example".to_owned(),
            approve: false,
            comment: None,
            via: "api".to_owned(),
        });
        assert!(!run.state.status.is_terminal());
        assert_eq!(run.names(), Vec::<String>::new());
        while !run.state.status.is_terminal() {
            let undo = run
                .state
                .steps
                .iter()
                .find(|(_, r)| matches!(r.undo, Some(steward_schemas::CompState::Queued { .. })))
                .map(|(s, r)| (s.clone(), r.seq))
                .expect("an undo is queued");
            run.apply(Event::UndoSucceeded {
                step: undo.0,
                seq: undo.1,
            });
        }
        assert_eq!(run.state.status.name(), "rolled_back");
        assert_eq!(run.names(), Vec::<String>::new());
        for a in [
            Action::Resume,
            Action::RetryStep(id("a")),
            Action::SkipStep(id("b")),
        ] {
            assert!(!accepted(
                &run.plan,
                &run.ctx,
                &run.state,
                &a,
                "x@msp.example"
            ));
        }
    }
}
