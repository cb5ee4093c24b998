//! The run state machine, driven by scenarios and by random event sequences.

use proptest::prelude::*;
use serde_json::{Value, json};
use steward_core::{Cx, Plan, Transition, TransitionError, actions, initial_state, transition};
use steward_schemas::{
    AdminFallback, CompState, Dur, Effect, Event, FailureKind, Job, JobRef, Phase, Rollback,
    RunAction, RunContext, RunId, RunState, RunStatus, SkipReason, StepFailure, StepId, StepState,
    TimerKey, TimerKind, Timestamp, Unavailability, UnavailableApprover, WorkflowRef,
};

const T0: i64 = 1_790_000_000_000_000;

struct Env {
    plan: Plan,
    ctx: RunContext,
    state: RunState,
    now: Timestamp,
    /// Every effect emitted so far, in order.
    log: Vec<Effect>,
    /// Timers armed and not yet fired or cancelled.
    timers: Vec<(TimerKey, Timestamp)>,
}

impl Env {
    fn new(yaml: &str) -> Self {
        Self::with_inputs(yaml, json!({}))
    }

    fn with_inputs(yaml: &str, inputs: Value) -> Self {
        let plan = Plan::load("test.yaml", yaml, None).unwrap_or_else(|e| panic!("{e}"));
        let ctx = RunContext {
            run_id: RunId::from_ulid(ulid::Ulid::from_parts(1, 7)),
            workflow: WorkflowRef {
                name: plan.def().name.clone(),
                version: 1,
                hash: plan.hash().to_owned(),
            },
            company: "contoso".parse().unwrap(),
            company_settings: json!({"defaults": {"usage_location": "GB"}})
                .as_object()
                .unwrap()
                .clone(),
            inputs: inputs.as_object().unwrap().clone(),
            requested_by: "tech@msp".into(),
            ticket: None,
            created_at: Timestamp::from_micros(T0),
        };
        let now = Timestamp::from_micros(T0);
        let state = initial_state(&plan, now);
        Self {
            plan,
            ctx,
            state,
            now,
            log: Vec::new(),
            timers: Vec::new(),
        }
    }

    fn try_apply(&mut self, event: Event) -> Result<Transition, TransitionError> {
        let t = transition(
            &self.plan,
            &self.ctx,
            &self.state,
            &event,
            &Cx { now: self.now },
        )?;
        self.state = t.next.clone();
        for e in &t.effects {
            match e {
                Effect::ScheduleTimer { key, at } => self.timers.push((key.clone(), *at)),
                Effect::CancelTimer { key } => self.timers.retain(|(k, _)| k != key),
                _ => {}
            }
        }
        self.log.extend(t.effects.iter().cloned());
        Ok(t)
    }

    fn apply(&mut self, event: Event) -> Transition {
        self.try_apply(event).unwrap_or_else(|e| panic!("{e}"))
    }

    fn start(&mut self) -> Transition {
        self.apply(Event::RunCreated { start_at: None })
    }

    fn advance(&mut self, d: std::time::Duration) {
        self.now = self.now.plus(d);
    }

    /// Fires every due timer.
    fn fire_due(&mut self) {
        let due: Vec<TimerKey> = self
            .timers
            .iter()
            .filter(|(_, at)| *at <= self.now)
            .map(|(k, _)| k.clone())
            .collect();
        self.timers.retain(|(_, at)| *at > self.now);
        for key in due {
            self.apply(Event::TimerFired { timer: key });
        }
    }

    fn step(&self, id: &str) -> &StepState {
        &self.state.steps[id].state
    }

    fn undo(&self, id: &str) -> Option<&CompState> {
        self.state.steps[id].undo.as_ref()
    }

    fn seq(&self, id: &str) -> u32 {
        self.state.steps[id].seq
    }

    /// The job last enqueued for `id`.
    fn job(&self, id: &str) -> Job {
        self.log
            .iter()
            .rev()
            .find_map(|e| match e {
                Effect::EnqueueStep { job } if job.step.as_str() == id => Some(job.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no job for {id}"))
    }

    fn enqueued(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|e| match e {
                Effect::EnqueueStep { job } => Some(format!("{}:{}", job.phase.name(), job.step)),
                _ => None,
            })
            .collect()
    }

    fn succeed(&mut self, id: &str) -> Transition {
        self.succeed_with(id, json!({}), Rollback::Nothing)
    }

    fn succeed_with(&mut self, id: &str, output: Value, rollback: Rollback) -> Transition {
        let seq = self.seq(id);
        self.apply(Event::StepSucceeded {
            step: sid(id),
            seq,
            output,
            rollback,
        })
    }

    fn fail(&mut self, id: &str, error: StepFailure) -> Transition {
        let seq = self.seq(id);
        self.apply(Event::StepFailed {
            step: sid(id),
            seq,
            error,
        })
    }

    fn status(&self) -> &'static str {
        self.state.status.name()
    }
}

fn sid(s: &str) -> StepId {
    StepId::parse(s).unwrap()
}

fn inverse(tag: &str) -> Rollback {
    Rollback::Inverse {
        op: "undo".into(),
        input: json!({"tag": tag}),
        prior: json!(null),
    }
}

const CHAIN: &str = r#"
name: chain
inputs: {upn: {type: string}}
defaults: {on_failure: rollback, retry: {attempts: 3, initial: 1s, max_delay: 10s, jitter: 0}}
steps:
  - id: a
    op: create
    with: {upn: "${{ inputs.upn }}", loc: "${{ company.defaults.usage_location }}"}
  - id: b
    op: license
    needs: [a]
    with: {user: "${{ steps.a.output.id }}", label: "user ${{ steps.a.output.id }} of ${{ run.company }}"}
  - id: c
    op: mailbox
    needs: [b]
"#;

#[test]
fn a_chain_runs_in_order_and_binds_outputs() {
    let mut env = Env::with_inputs(CHAIN, json!({"upn": "jane@contoso.com"}));
    env.start();
    assert_eq!(env.status(), "running");
    assert_eq!(env.enqueued(), ["run:a"]);
    assert_eq!(
        env.job("a").input,
        json!({"upn": "jane@contoso.com", "loc": "GB"})
    );
    assert_eq!(env.job("a").seq, 1);
    env.advance(Dur::millis(5).get());
    env.succeed_with("a", json!({"id": "u-1"}), inverse("a"));
    assert_eq!(env.enqueued(), ["run:a", "run:b"]);
    assert_eq!(
        env.job("b").input,
        json!({"user": "u-1", "label": "user u-1 of contoso"})
    );
    env.succeed("b");
    let t = env.succeed("c");
    assert_eq!(env.status(), "completed");
    assert!(t.effects.contains(&Effect::RunEnded {
        status: "completed".into()
    }));
    assert!(
        matches!(env.step("a"), StepState::Succeeded { output, .. } if output == &json!({"id": "u-1"}))
    );
}

#[test]
fn fan_out_and_join_wait_for_every_branch() {
    let mut env = Env::new(
        "name: d\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n  - {id: c, op: x, needs: [a]}\n  - {id: d, op: x, needs: [b, c]}\n",
    );
    env.start();
    env.succeed("a");
    assert_eq!(env.enqueued(), ["run:a", "run:b", "run:c"]);
    env.succeed("c");
    assert_eq!(env.enqueued().len(), 3, "d must wait for b");
    env.succeed("b");
    assert_eq!(env.enqueued().last().unwrap(), "run:d");
    env.succeed("d");
    assert_eq!(env.status(), "completed");
}

#[test]
fn retryable_failures_back_off_then_fail_for_good() {
    let mut env = Env::with_inputs(CHAIN, json!({"upn": "x"}));
    env.start();
    env.fail("a", StepFailure::retryable("503"));
    let StepState::Retrying {
        next, not_before, ..
    } = env.step("a").clone()
    else {
        panic!("{:?}", env.step("a"))
    };
    assert_eq!(next.get(), 2);
    assert_eq!(not_before.since(env.now), std::time::Duration::from_secs(1));
    env.fire_due();
    assert_eq!(env.enqueued(), ["run:a"], "not due yet");
    env.advance(std::time::Duration::from_secs(1));
    env.fire_due();
    assert_eq!(env.job("a").attempt.get(), 2);
    assert_eq!(env.job("a").seq, 2);
    // Throttling: Retry-After beats the policy's 2 s.
    let mut throttled = StepFailure::retryable("429");
    throttled.retry_after = Some(Dur::secs(30));
    env.fail("a", throttled);
    let StepState::Retrying { not_before, .. } = env.step("a").clone() else {
        panic!()
    };
    assert_eq!(
        not_before.since(env.now),
        std::time::Duration::from_secs(30)
    );
    env.advance(std::time::Duration::from_secs(30));
    env.fire_due();
    assert_eq!(env.job("a").attempt.get(), 3);
    env.fail("a", StepFailure::retryable("503 again"));
    assert!(matches!(env.step("a"), StepState::Failed { attempt, .. } if attempt.get() == 3));
    assert_eq!(
        env.status(),
        "rolled_back",
        "nothing succeeded, so nothing to undo"
    );
}

#[test]
fn terminal_errors_are_not_retried() {
    let mut env = Env::with_inputs(CHAIN, json!({"upn": "x"}));
    env.start();
    env.fail("a", StepFailure::terminal("400 bad request"));
    assert!(matches!(env.step("a"), StepState::Failed { .. }));
    assert!(
        matches!(&env.state.status, RunStatus::RolledBack { cause, .. } if format!("{cause:?}").contains("400 bad request"))
    );
}

#[test]
fn rollback_undoes_in_reverse_order_and_lists_irreversible_steps() {
    let mut env = Env::new(
        r#"
name: r
defaults: {on_failure: rollback, retry: {attempts: 2, initial: 1s, jitter: 0}}
steps:
  - {id: a, op: x}
  - {id: b, op: x, needs: [a]}
  - {id: c, op: x, needs: [a]}
  - {id: d, op: x, needs: [b]}
  - {id: e, op: x, needs: [c, d]}
"#,
    );
    env.start();
    env.succeed_with("a", json!({}), inverse("a"));
    env.succeed_with(
        "b",
        json!({}),
        Rollback::Irreversible {
            reason: "password reset".into(),
            prior: json!(null),
        },
    );
    env.succeed_with("d", json!({}), inverse("d"));
    // c is still queued when e's branch... c fails for good: rollback starts.
    env.fail("c", StepFailure::terminal("boom"));
    assert_eq!(env.status(), "rolling_back");
    assert!(matches!(env.step("e"), StepState::Cancelled { .. }));
    // d undoes first (a depends on nothing undone before it), b is irreversible and listed.
    let undo_jobs: Vec<String> = env
        .enqueued()
        .into_iter()
        .filter(|j| j.starts_with("undo"))
        .collect();
    assert_eq!(undo_jobs, ["undo:d"]);
    assert!(matches!(
        env.undo("b"),
        Some(CompState::Irreversible { .. })
    ));
    assert!(matches!(env.undo("a"), Some(CompState::Waiting)));
    let seq = env.seq("d");
    env.apply(Event::UndoSucceeded {
        step: sid("d"),
        seq,
    });
    assert_eq!(env.enqueued().last().unwrap(), "undo:a");
    assert_eq!(env.job("a").input, json!({"tag": "a"}));
    let seq = env.seq("a");
    let t = env.apply(Event::UndoSucceeded {
        step: sid("a"),
        seq,
    });
    assert!(t.effects.contains(&Effect::RunEnded {
        status: "rolled_back".into()
    }));
    let RunStatus::RolledBack { irreversible, .. } = &env.state.status else {
        panic!("{:?}", env.state.status)
    };
    assert_eq!(irreversible, &[sid("b")]);
}

#[test]
fn a_failed_undo_leaves_its_ancestors_for_a_technician() {
    let mut env = Env::new(
        "name: r\ndefaults: {on_failure: rollback, retry: {attempts: 2, initial: 1s, jitter: 0}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n  - {id: c, op: x, needs: [b]}\n",
    );
    env.start();
    env.succeed_with("a", json!({}), inverse("a"));
    env.succeed_with("b", json!({}), inverse("b"));
    env.fail("c", StepFailure::terminal("nope"));
    let seq = env.seq("b");
    env.apply(Event::UndoFailed {
        step: sid("b"),
        seq,
        error: StepFailure::retryable("timeout"),
    });
    assert!(matches!(env.undo("b"), Some(CompState::Retrying { .. })));
    env.advance(std::time::Duration::from_secs(1));
    env.fire_due();
    assert_eq!(env.job("b").attempt.get(), 2);
    let seq = env.seq("b");
    env.apply(Event::UndoFailed {
        step: sid("b"),
        seq,
        error: StepFailure::retryable("timeout"),
    });
    let RunStatus::RollbackFailed { failed, left, .. } = &env.state.status else {
        panic!("{:?}", env.state.status)
    };
    assert_eq!(failed, &[sid("b")]);
    assert_eq!(left, &[sid("a")]);
    assert!(matches!(env.undo("a"), Some(CompState::Blocked { by }) if by.as_str() == "b"));
}

/// A chain a → b → c whose c fails: a and b are undone, newest first.
const UNDO_CHAIN: &str = "name: r\ndefaults: {on_failure: rollback, retry: {attempts: 2, initial: 1s, jitter: 0}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n  - {id: c, op: x, needs: [b]}\n";

/// [`UNDO_CHAIN`] ended `rollback_failed`: b's undo failed for good, so a's never ran.
fn rollback_failed_chain() -> Env {
    let mut env = Env::new(UNDO_CHAIN);
    env.start();
    env.succeed_with("a", json!({}), inverse("a"));
    env.succeed_with("b", json!({}), inverse("b"));
    env.fail("c", StepFailure::terminal("nope"));
    undo_fails(
        &mut env,
        "b",
        StepFailure::terminal("the mailbox is on hold"),
    );
    assert_eq!(env.status(), "rollback_failed");
    env
}

fn undo_fails(env: &mut Env, id: &str, error: StepFailure) -> Transition {
    let seq = env.seq(id);
    env.apply(Event::UndoFailed {
        step: sid(id),
        seq,
        error,
    })
}

fn undo_succeeds(env: &mut Env, id: &str) -> Transition {
    let seq = env.seq(id);
    env.apply(Event::UndoSucceeded { step: sid(id), seq })
}

fn retry_undo(id: &str) -> Event {
    Event::RetryUndoRequested {
        step: sid(id),
        by: "tech@msp".into(),
    }
}

fn resolve_undo(id: &str, comment: &str) -> Event {
    Event::UndoResolved {
        step: sid(id),
        by: "tech@msp".into(),
        comment: comment.into(),
        via: "api".into(),
    }
}

fn refusal(env: &mut Env, event: Event) -> String {
    let before = env.state.clone();
    let err = env.try_apply(event).unwrap_err();
    assert!(matches!(err, TransitionError::Rejected { .. }), "{err:?}");
    assert_eq!(env.state, before, "a refused request changes nothing");
    err.to_string()
}

#[test]
fn a_failed_undo_can_be_retried_after_the_rollback_failed() {
    let mut env = rollback_failed_chain();
    // What a technician is offered: b's undo, retried or resolved; nothing else.
    assert_eq!(
        actions(&env.plan, &env.ctx, &env.state, env.now),
        [
            RunAction::RetryUndo { step: sid("b") },
            RunAction::ResolveUndo { step: sid("b") },
        ]
    );
    // An ended run is not told to retry a step; it is told what is left.
    let why = refusal(
        &mut env,
        Event::RetryStepRequested {
            step: sid("c"),
            by: "t".into(),
        },
    );
    assert!(
        why.contains("retry-undo") && why.contains("resolve-undo"),
        "{why}"
    );
    let why = refusal(&mut env, retry_undo("a"));
    assert!(
        why.contains("waits for the undo of `b`, which failed"),
        "{why}"
    );
    let why = refusal(&mut env, retry_undo("c"));
    assert!(why.contains("has no undo"), "{why}");

    let old_seq = env.seq("b");
    let t = env.apply(retry_undo("b"));
    assert_eq!(env.status(), "rolling_back", "the run rolls back again");
    let job = env.job("b");
    assert_eq!(
        (job.phase, job.attempt.get(), job.seq),
        (Phase::Undo, 1, old_seq + 1),
        "a fenced undo job with a fresh attempt budget"
    );
    assert!(matches!(env.undo("a"), Some(CompState::Waiting)));
    assert!(
        !t.effects
            .iter()
            .any(|e| matches!(e, Effect::RunEnded { .. }))
    );
    assert!(actions(&env.plan, &env.ctx, &env.state, env.now).is_empty());
    // The report of the old undo job is stale.
    let t = env.apply(Event::UndoFailed {
        step: sid("b"),
        seq: old_seq,
        error: StepFailure::terminal("late"),
    });
    assert!(t.ignored.is_some(), "{t:?}");

    undo_succeeds(&mut env, "b");
    assert_eq!(
        env.enqueued().last().unwrap(),
        "undo:a",
        "a's undo follows b's"
    );
    let t = undo_succeeds(&mut env, "a");
    let RunStatus::RolledBack {
        resolved,
        irreversible,
        ..
    } = &env.state.status
    else {
        panic!("{:?}", env.state.status)
    };
    assert!(resolved.is_empty() && irreversible.is_empty());
    assert_eq!(
        t.effects
            .iter()
            .filter(|e| matches!(e, Effect::RunEnded { status } if status == "rolled_back"))
            .count(),
        1
    );
    assert_absorbs_late_events(&mut env);
    let why = refusal(&mut env, retry_undo("b"));
    assert!(why.contains("nothing is left to undo"), "{why}");
}

#[test]
fn a_failed_undo_resolved_by_hand_lets_the_undos_behind_it_run() {
    let mut env = rollback_failed_chain();
    let why = refusal(&mut env, resolve_undo("b", "  "));
    assert!(why.contains("a comment is required"), "{why}");
    let why = refusal(&mut env, resolve_undo("a", "done"));
    assert!(why.contains("retry or resolve `b` first"), "{why}");

    env.advance(std::time::Duration::from_secs(60));
    env.apply(resolve_undo(
        "b",
        " released the hold and removed the licence by hand ",
    ));
    assert_eq!(
        env.undo("b"),
        Some(&CompState::Resolved {
            by: "tech@msp".into(),
            at: env.now,
            comment: "released the hold and removed the licence by hand".into(),
            via: "api".into(),
        })
    );
    assert_eq!(env.status(), "rolling_back");
    assert_eq!(env.enqueued().last().unwrap(), "undo:a");
    let why = refusal(&mut env, resolve_undo("b", "again"));
    assert!(
        why.contains("already marked done by hand by tech@msp"),
        "{why}"
    );
    undo_succeeds(&mut env, "a");
    let RunStatus::RolledBack { resolved, .. } = &env.state.status else {
        panic!("{:?}", env.state.status)
    };
    assert_eq!(resolved, &[sid("b")]);
}

#[test]
fn a_run_stays_rollback_failed_while_other_undos_are_unresolved() {
    let yaml = "name: two\ndefaults: {on_failure: rollback, retry: {attempts: 1}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x}\n  - {id: c, op: x, needs: [a, b]}\n";
    let mut env = Env::new(yaml);
    env.start();
    env.succeed_with("a", json!({}), inverse("a"));
    env.succeed_with("b", json!({}), inverse("b"));
    env.fail("c", StepFailure::terminal("no"));
    undo_fails(&mut env, "a", StepFailure::terminal("locked"));
    undo_fails(&mut env, "b", StepFailure::terminal("locked"));
    assert_eq!(env.status(), "rollback_failed");

    let t = env.apply(resolve_undo("a", "unlocked and removed by hand"));
    let RunStatus::RollbackFailed {
        failed, resolved, ..
    } = &env.state.status
    else {
        panic!("{:?}", env.state.status)
    };
    assert_eq!(
        (failed.as_slice(), resolved.as_slice()),
        (&[sid("b")][..], &[sid("a")][..])
    );
    assert!(
        t.effects
            .iter()
            .all(|e| matches!(e, Effect::RunEnded { .. })),
        "nothing to run: {:?}",
        t.effects
    );
    assert_eq!(
        actions(&env.plan, &env.ctx, &env.state, env.now),
        [
            RunAction::RetryUndo { step: sid("b") },
            RunAction::ResolveUndo { step: sid("b") },
        ]
    );
    env.apply(retry_undo("b"));
    undo_succeeds(&mut env, "b");
    let RunStatus::RolledBack { resolved, .. } = &env.state.status else {
        panic!("{:?}", env.state.status)
    };
    assert_eq!(resolved, &[sid("a")]);
}

#[test]
fn an_undo_waiting_to_retry_runs_now_when_asked_and_undos_are_for_rollbacks_only() {
    let mut env = Env::new(UNDO_CHAIN);
    env.start();
    // Nothing has been undone yet: the undo requests are refused.
    let why = refusal(&mut env, retry_undo("a"));
    assert!(
        why.contains("nothing of this run has been undone (it is running)"),
        "{why}"
    );
    env.succeed_with("a", json!({}), inverse("a"));
    env.succeed_with("b", json!({}), inverse("b"));
    env.fail("c", StepFailure::terminal("nope"));
    undo_fails(&mut env, "b", StepFailure::retryable("throttled"));
    let seq = env.seq("b");
    assert!(matches!(env.undo("b"), Some(CompState::Retrying { .. })));
    let why = refusal(&mut env, resolve_undo("b", "done"));
    assert!(why.contains("retry it now (retry-undo)"), "{why}");
    assert_eq!(
        actions(&env.plan, &env.ctx, &env.state, env.now),
        [RunAction::RetryUndo { step: sid("b") }]
    );
    let t = env.apply(retry_undo("b"));
    assert!(t.effects.contains(&Effect::CancelTimer {
        key: TimerKey::step(TimerKind::UndoRetry, sid("b"), seq)
    }));
    assert_eq!(
        env.job("b").attempt.get(),
        2,
        "the attempt that was waiting, now"
    );
    assert!(env.timers.is_empty());
    undo_succeeds(&mut env, "b");
    undo_succeeds(&mut env, "a");
    assert_eq!(env.status(), "rolled_back");
}

#[test]
fn actions_offer_what_each_state_accepts() {
    let yaml = "name: f\ndefaults: {on_failure: pause, retry: {attempts: 2, initial: 1s}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n";
    let mut env = Env::new(yaml);
    let offered = |env: &Env| actions(&env.plan, &env.ctx, &env.state, env.now);
    assert!(
        offered(&env).is_empty(),
        "a run being created takes nothing"
    );
    env.start();
    assert_eq!(
        offered(&env),
        [
            RunAction::Cancel,
            RunAction::CancelWithRollback,
            RunAction::Pause,
            RunAction::SkipStep { step: sid("b") },
        ]
    );
    env.fail("a", StepFailure::retryable("busy"));
    assert!(offered(&env).contains(&RunAction::RetryStep { step: sid("a") }));
    env.advance(std::time::Duration::from_secs(5));
    env.fire_due();
    env.fail("a", StepFailure::retryable("busy"));
    assert_eq!(env.status(), "paused");
    let now = offered(&env);
    assert!(
        !now.contains(&RunAction::Resume),
        "a run paused by a failure resumes by retrying or skipping it: {now:?}"
    );
    assert!(now.contains(&RunAction::RetryStep { step: sid("a") }));
    env.apply(Event::SkipStepRequested {
        step: sid("a"),
        by: "t".into(),
        reason: None,
    });
    env.succeed("b");
    assert_eq!(env.status(), "completed");
    assert!(offered(&env).is_empty(), "an ended run is offered nothing");
}

#[test]
fn pause_revokes_queued_jobs_and_resume_dispatches_them_again() {
    let mut env = Env::new(
        "name: p\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x}\n  - {id: c, op: x, needs: [a, b]}\n",
    );
    env.start();
    let t = env.apply(Event::PauseRequested {
        by: "tech".into(),
        reason: None,
    });
    let Some(Effect::RevokeJobs { jobs }) = t.effects.first() else {
        panic!("{:?}", t.effects)
    };
    assert_eq!(jobs.len(), 2);
    // a was already running on a worker; b was taken back before delivery.
    env.apply(Event::JobsRevoked {
        jobs: vec![JobRef {
            step: sid("b"),
            seq: 1,
            phase: Phase::Run,
        }],
    });
    assert!(matches!(env.step("b"), StepState::Ready { .. }));
    env.succeed("a");
    assert!(matches!(env.step("c"), StepState::Pending));
    assert_eq!(env.enqueued(), ["run:a", "run:b"]);
    let err = env
        .try_apply(Event::PauseRequested {
            by: "tech".into(),
            reason: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("already paused"), "{err}");
    env.apply(Event::ResumeRequested { by: "tech".into() });
    assert_eq!(env.enqueued(), ["run:a", "run:b", "run:b"]);
    assert_eq!(env.job("b").seq, 2, "a re-dispatch gets a new fence");
    // The revoked job's old sequence number no longer counts.
    let t = env.apply(Event::StepSucceeded {
        step: sid("b"),
        seq: 1,
        output: json!({}),
        rollback: Rollback::Nothing,
    });
    assert!(t.ignored.is_some());
    env.succeed("b");
    env.succeed("c");
    assert_eq!(env.status(), "completed");
}

#[test]
fn cancel_waits_for_running_attempts_and_keeps_their_records() {
    let mut env = Env::new("name: c\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n");
    env.start();
    env.apply(Event::CancelRequested {
        by: "tech".into(),
        rollback: false,
        reason: None,
    });
    assert_eq!(env.status(), "cancelling");
    assert!(matches!(env.step("b"), StepState::Cancelled { .. }));
    env.succeed_with("a", json!({"id": 1}), inverse("a"));
    assert_eq!(env.status(), "cancelled");
    assert!(
        matches!(env.step("a"), StepState::Succeeded { .. }),
        "the late result is kept"
    );
    assert_eq!(env.enqueued(), ["run:a"], "nothing new is dispatched");
    let err = env
        .try_apply(Event::ResumeRequested { by: "t".into() })
        .unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
}

#[test]
fn cancel_with_rollback_undoes_what_was_done() {
    let mut env = Env::new(
        "name: c\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n  - {id: c, op: x, needs: [b]}\n",
    );
    env.start();
    env.succeed_with("a", json!({}), inverse("a"));
    env.apply(Event::CancelRequested {
        by: "tech".into(),
        rollback: true,
        reason: None,
    });
    env.apply(Event::JobsRevoked {
        jobs: vec![JobRef {
            step: sid("b"),
            seq: 1,
            phase: Phase::Run,
        }],
    });
    assert_eq!(env.status(), "rolling_back");
    assert_eq!(env.enqueued().last().unwrap(), "undo:a");
    let seq = env.seq("a");
    env.apply(Event::UndoSucceeded {
        step: sid("a"),
        seq,
    });
    assert!(
        matches!(&env.state.status, RunStatus::RolledBack { cause, .. } if format!("{cause:?}").contains("tech"))
    );
}

#[test]
fn pause_on_failure_then_retry_or_skip() {
    let yaml = "name: f\ndefaults: {on_failure: pause, retry: {attempts: 1}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n";
    let mut env = Env::new(yaml);
    env.start();
    env.fail("a", StepFailure::terminal("no seats"));
    assert!(matches!(&env.state.status, RunStatus::Paused { .. }));
    let err = env
        .try_apply(Event::ResumeRequested { by: "t".into() })
        .unwrap_err();
    assert!(
        err.to_string().contains("step `a` failed (no seats)"),
        "{err}"
    );
    env.apply(Event::RetryStepRequested {
        step: sid("a"),
        by: "t".into(),
    });
    assert_eq!(env.status(), "running");
    assert_eq!(
        env.job("a").attempt.get(),
        1,
        "a technician's retry gets a fresh budget"
    );
    assert_eq!(env.job("a").seq, 2);
    env.fail("a", StepFailure::terminal("still no seats"));
    env.apply(Event::SkipStepRequested {
        step: sid("a"),
        by: "t".into(),
        reason: Some("licensed by hand".into()),
    });
    assert!(matches!(
        env.step("a"),
        StepState::Skipped {
            reason: SkipReason::Operator { .. },
            ..
        }
    ));
    assert_eq!(
        env.enqueued().last().unwrap(),
        "run:b",
        "a skipped need lets b run"
    );
    env.succeed("b");
    assert_eq!(env.status(), "completed");
}

#[test]
fn retry_step_on_a_waiting_step_skips_the_wait_without_a_fresh_budget() {
    let mut env = Env::new(
        "name: w\ndefaults: {retry: {attempts: 3, initial: 1m, jitter: 0}, max_wait: 1h}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x}\n",
    );
    env.start();
    // A retrying step runs its next attempt now.
    env.fail("a", StepFailure::retryable("flaky"));
    let t = env.apply(Event::RetryStepRequested {
        step: sid("a"),
        by: "t".into(),
    });
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::CancelTimer { key } if key.kind == TimerKind::Retry)),
        "{:?}",
        t.effects
    );
    assert_eq!(
        env.job("a").attempt.get(),
        2,
        "the next attempt, not a fresh budget"
    );
    // A polling step is checked again now, by the same attempt, its max_wait clock running on.
    let seq = env.seq("b");
    env.apply(Event::StepPending {
        step: sid("b"),
        seq,
        check_after: Dur::secs(600),
        note: None,
    });
    env.advance(std::time::Duration::from_secs(60));
    env.apply(Event::RetryStepRequested {
        step: sid("b"),
        by: "t".into(),
    });
    let job = env.job("b");
    assert_eq!((job.attempt.get(), job.polls), (1, 1));
    let StepState::Queued { job, .. } = env.step("b") else {
        panic!("{:?}", env.step("b"))
    };
    assert_eq!(job.waiting_since, Some(Timestamp::from_micros(T0)));
}

#[test]
fn continue_on_failure_skips_dependents_only() {
    let mut env = Env::new(
        "name: f\ndefaults: {on_failure: continue, retry: {attempts: 1}}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n  - {id: c, op: x, needs: [b]}\n  - {id: d, op: x}\n",
    );
    env.start();
    env.fail("a", StepFailure::terminal("x"));
    assert!(
        matches!(env.step("b"), StepState::Skipped { reason: SkipReason::NeedNotMet { step }, .. } if step.as_str() == "a")
    );
    assert!(
        matches!(env.step("c"), StepState::Skipped { reason: SkipReason::NeedNotMet { step }, .. } if step.as_str() == "b")
    );
    env.succeed("d");
    let RunStatus::Completed { failed, .. } = &env.state.status else {
        panic!()
    };
    assert_eq!(failed, &[sid("a")]);
    let err = env
        .try_apply(Event::RetryStepRequested {
            step: sid("a"),
            by: "t".into(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("already ended"), "{err}");
}

#[test]
fn conditions_skip_steps_and_skipped_needs_do_not_block() {
    let mut env = Env::with_inputs(
        "name: w\ninputs: {shared: {type: boolean}}\nsteps:\n  - {id: a, op: x, when: inputs.shared}\n  - {id: b, op: x, needs: [a], when: '!inputs.shared'}\n  - {id: c, op: x, needs: [a, b]}\n",
        json!({"shared": false}),
    );
    env.start();
    assert!(matches!(
        env.step("a"),
        StepState::Skipped {
            reason: SkipReason::Condition,
            ..
        }
    ));
    assert_eq!(env.enqueued(), ["run:b"]);
    env.succeed("b");
    env.succeed("c");
    assert_eq!(env.status(), "completed");
}

#[test]
fn polling_waits_through_timers_and_gives_up_after_max_wait() {
    let mut env =
        Env::new("name: w\nsteps:\n  - {id: a, op: x, max_wait: 10m, on_failure: pause}\n");
    env.start();
    for n in 1..=3u32 {
        let seq = env.seq("a");
        env.apply(Event::StepPending {
            step: sid("a"),
            seq,
            check_after: Dur::secs(120),
            note: Some("sync".into()),
        });
        assert!(matches!(env.step("a"), StepState::Polling { job, .. } if job.polls == n));
        env.advance(std::time::Duration::from_secs(120));
        env.fire_due();
        assert_eq!(env.job("a").polls, n);
        assert_eq!(env.job("a").attempt.get(), 1, "polls are not attempts");
    }
    env.advance(std::time::Duration::from_secs(300));
    let seq = env.seq("a");
    env.apply(Event::StepPending {
        step: sid("a"),
        seq,
        check_after: Dur::secs(120),
        note: Some("sync".into()),
    });
    let StepState::Failed { error, .. } = env.step("a") else {
        panic!("{:?}", env.step("a"))
    };
    assert_eq!(error.kind, FailureKind::GaveUpWaiting);
    assert!(error.message.contains("10m"), "{}", error.message);
}

#[test]
fn stale_and_duplicate_reports_change_nothing() {
    let mut env = Env::with_inputs(CHAIN, json!({"upn": "x"}));
    env.start();
    env.succeed("a");
    let before = env.state.clone();
    let effects = env.log.len();
    for event in [
        Event::StepSucceeded {
            step: sid("a"),
            seq: 1,
            output: json!({"dup": true}),
            rollback: Rollback::Nothing,
        },
        Event::StepFailed {
            step: sid("b"),
            seq: 7,
            error: StepFailure::terminal("old"),
        },
        Event::StepPending {
            step: sid("c"),
            seq: 0,
            check_after: Dur::secs(1),
            note: None,
        },
        Event::TimerFired {
            timer: TimerKey::step(TimerKind::Retry, sid("b"), 1),
        },
        Event::UndoSucceeded {
            step: sid("a"),
            seq: 1,
        },
    ] {
        let t = env.apply(event);
        assert!(t.ignored.is_some(), "{t:?}");
        assert!(t.effects.is_empty());
    }
    assert_eq!(env.state, before);
    assert_eq!(env.log.len(), effects);
    let err = env
        .try_apply(Event::RunCreated { start_at: None })
        .unwrap_err();
    assert!(matches!(err, TransitionError::Invalid { .. }));
    let err = env
        .try_apply(Event::RetryStepRequested {
            step: sid("zz"),
            by: "t".into(),
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "the run has no step `zz`");
}

#[test]
fn scheduled_runs_start_when_their_timer_fires() {
    let mut env = Env::new("name: s\nsteps:\n  - {id: a, op: x}\n");
    let at = env.now.plus(std::time::Duration::from_secs(3600));
    env.apply(Event::RunCreated { start_at: Some(at) });
    assert_eq!(env.status(), "scheduled");
    assert!(env.enqueued().is_empty());
    env.advance(std::time::Duration::from_secs(3600));
    env.fire_due();
    assert_eq!(env.enqueued(), ["run:a"]);
}

// ---- approval gates ----------------------------------------------------------------------------

const GATED: &str = r#"
name: gated
defaults: {on_failure: rollback, retry: {attempts: 2, initial: 1s, jitter: 0}}
steps:
  - {id: prep, op: x}
  - id: approval
    needs: [prep]
    gate: {approvers: company, quorum: 2, expires_in: 1h, on_expiry: escalate, escalate_to: [lead@msp.example], escalate_expires_in: 30m}
  - {id: delete_user, op: x, needs: [approval]}
"#;

fn open_gate(env: &mut Env, approvers: &[&str], escalation: &[&str]) -> Transition {
    let seq = env.seq("approval");
    env.apply(Event::GateOpened {
        step: sid("approval"),
        seq,
        approvers: approvers.iter().map(|s| (*s).to_owned()).collect(),
        escalation: escalation.iter().map(|s| (*s).to_owned()).collect(),
        unavailable: Vec::new(),
        admins: Vec::new(),
    })
}

fn decide(env: &mut Env, by: &str, approve: bool) -> Result<Transition, TransitionError> {
    env.try_apply(Event::ApprovalDecided {
        step: sid("approval"),
        by: by.into(),
        approve,
        comment: None,
        via: "api".into(),
    })
}

#[test]
fn a_gate_waits_for_a_quorum_of_other_approvers() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed_with("prep", json!({}), inverse("prep"));
    assert_eq!(env.job("approval").op, "gate");
    assert_eq!(env.job("approval").input["quorum"], 2);
    let t = open_gate(
        &mut env,
        &["Alice@MSP", "bob@msp", "tech@msp", "alice@msp"],
        &["lead@msp"],
    );
    assert!(t.effects.iter().any(|e| matches!(e, Effect::IndexGate { approvers, .. } if approvers == &["alice@msp", "bob@msp", "tech@msp"])));
    assert!(
        env.timers
            .iter()
            .any(|(k, _)| k.kind == TimerKind::GateExpiry)
    );
    let StepState::AwaitingApproval { quorum, stage, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!((*quorum, *stage), (2, 0));

    let err = decide(&mut env, "tech@msp", true).unwrap_err();
    assert!(
        err.to_string()
            .contains("asked for this run and cannot approve it"),
        "{err}"
    );
    let err = decide(&mut env, "mallory@evil", true).unwrap_err();
    assert!(err.to_string().contains("not an approver"), "{err}");
    decide(&mut env, "alice@msp", true).unwrap();
    assert!(
        decide(&mut env, "ALICE@msp", true)
            .unwrap()
            .ignored
            .is_some(),
        "a repeated approval changes nothing"
    );
    assert_eq!(
        env.enqueued(),
        ["run:prep", "run:approval"],
        "one approval is not a quorum"
    );
    let t = decide(&mut env, "bob@msp", true).unwrap();
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::UnindexGate { .. }))
    );
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::CancelTimer { key } if key.kind == TimerKind::GateExpiry))
    );
    assert_eq!(env.enqueued().last().unwrap(), "run:delete_user");
    let StepState::Succeeded { output, .. } = env.step("approval") else {
        panic!()
    };
    assert_eq!(output["approved_by"], json!(["alice@msp", "bob@msp"]));
    let err = env
        .try_apply(Event::SkipStepRequested {
            step: sid("approval"),
            by: "t".into(),
            reason: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("not skipped"), "{err}");
}

#[test]
fn may_decide_is_the_check_the_machine_applies() {
    let approvers = ["alice@msp".to_owned(), "tech@msp".to_owned()];
    assert_eq!(
        steward_core::may_decide("approval", &approvers, "Tech@MSP", " ALICE@msp "),
        Ok("alice@msp".to_owned())
    );
    let err =
        steward_core::may_decide("approval", &approvers, " tech@msp", "TECH@msp").unwrap_err();
    assert_eq!(
        err,
        "tech@msp asked for this run and cannot approve it; another approver must decide"
    );
    let err = steward_core::may_decide("approval", &approvers, "tech@msp", "eve@x").unwrap_err();
    assert_eq!(
        err,
        "eve@x is not an approver of gate `approval` (its approvers: alice@msp, tech@msp)"
    );
    // The machine refuses with the same words.
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    open_gate(&mut env, &["alice@msp", "bob@msp", "tech@msp"], &[]);
    let err = decide(&mut env, "eve@x", true).unwrap_err();
    assert_eq!(
        err.to_string(),
        "eve@x is not an approver of gate `approval` (its approvers: alice@msp, bob@msp, tech@msp)"
    );
}

#[test]
fn a_rejection_ends_the_run_and_undoes_what_came_before() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed_with("prep", json!({}), inverse("prep"));
    open_gate(&mut env, &["alice@msp", "bob@msp"], &[]);
    let err = env
        .try_apply(Event::SkipStepRequested {
            step: sid("approval"),
            by: "t".into(),
            reason: None,
        })
        .unwrap_err();
    assert!(err.to_string().contains("not skipped"), "{err}");
    decide(&mut env, "alice@msp", true).unwrap();
    let t = env.apply(Event::ApprovalDecided {
        step: sid("approval"),
        by: "bob@msp".into(),
        approve: false,
        comment: Some("not yet".into()),
        via: "link".into(),
    });
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::UnindexGate { .. }))
    );
    assert_eq!(env.enqueued().last().unwrap(), "undo:prep");
    let RunStatus::RollingBack { cause } = &env.state.status else {
        panic!()
    };
    assert!(
        matches!(cause, steward_schemas::RollbackCause::Rejected { by, comment: Some(c), .. } if by == "bob@msp" && c == "not yet")
    );
    let seq = env.seq("prep");
    env.apply(Event::UndoSucceeded {
        step: sid("prep"),
        seq,
    });
    assert_eq!(env.status(), "rolled_back");
    assert!(
        decide(&mut env, "alice@msp", true).is_err(),
        "an ended run takes no decisions"
    );
}

#[test]
fn an_expired_gate_escalates_once_then_is_rejected() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    open_gate(
        &mut env,
        &["alice@msp", "bob@msp"],
        &["lead@msp", "boss@msp"],
    );
    env.advance(std::time::Duration::from_secs(3600));
    env.fire_due();
    let StepState::AwaitingApproval {
        stage, approvers, ..
    } = env.step("approval").clone()
    else {
        panic!()
    };
    assert_eq!(stage, 1);
    assert_eq!(approvers, ["lead@msp", "boss@msp"]);
    assert!(
        decide(&mut env, "alice@msp", true).is_err(),
        "the first approvers no longer decide"
    );
    decide(&mut env, "lead@msp", true).unwrap();
    env.advance(std::time::Duration::from_secs(1800));
    env.fire_due();
    let StepState::Failed { error, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(error.kind, FailureKind::Rejected);
    assert_eq!(error.message, "expired: no decision within 30m");
    assert!(
        matches!(&env.state.status, RunStatus::RolledBack { cause: steward_schemas::RollbackCause::Rejected { by, comment: Some(c), .. }, .. } if by == "expiry" && c == "no decision within 30m")
    );
    assert!(
        !env.log
            .iter()
            .any(|e| matches!(e, Effect::CancelTimer { key } if key.kind == TimerKind::GateExpiry)),
        "an expiry timer that fired is not cancelled: {:?}",
        env.log
    );
    assert_eq!(
        env.log
            .iter()
            .filter(|e| matches!(e, Effect::UnindexGate { .. }))
            .count(),
        2,
        "unindexed when escalated and when expired"
    );
}

#[test]
fn a_decision_after_the_gate_expired_is_refused() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    open_gate(
        &mut env,
        &["alice@msp", "bob@msp"],
        &["lead@msp", "boss@msp"],
    );
    decide(&mut env, "alice@msp", true).unwrap();
    // The expiry is due but its timer has not fired yet.
    env.advance(std::time::Duration::from_secs(3600));
    let before = env.state.clone();
    let err = decide(&mut env, "bob@msp", true).unwrap_err();
    assert!(
        err.to_string().contains("gate `approval` expired at")
            && err.to_string().contains("takes no more decisions"),
        "{err}"
    );
    let err = decide(&mut env, "bob@msp", false).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(env.state, before);
    // The timer then escalates the gate as usual.
    env.fire_due();
    let StepState::AwaitingApproval { stage, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(*stage, 1);
    // One microsecond before the expiry a decision still counts.
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    open_gate(&mut env, &["alice@msp", "bob@msp"], &[]);
    env.advance(std::time::Duration::from_secs(3600) - std::time::Duration::from_micros(1));
    decide(&mut env, "alice@msp", true).unwrap();
    decide(&mut env, "bob@msp", true).unwrap();
    assert!(matches!(env.step("approval"), StepState::Succeeded { .. }));
}

/// A GATED run whose gate job failed once and opened on its second attempt.
fn gate_opened_on_attempt_two() -> Env {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    env.fail("approval", StepFailure::retryable("redis hiccup"));
    env.advance(std::time::Duration::from_secs(1));
    env.fire_due();
    assert_eq!(env.job("approval").attempt.get(), 2);
    open_gate(
        &mut env,
        &["alice@msp", "bob@msp"],
        &["lead@msp", "boss@msp"],
    );
    let StepState::AwaitingApproval { attempt, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(attempt.get(), 2);
    env
}

#[test]
fn a_gate_records_the_attempt_that_opened_it() {
    let mut env = gate_opened_on_attempt_two();
    decide(&mut env, "alice@msp", true).unwrap();
    decide(&mut env, "bob@msp", true).unwrap();
    let StepState::Succeeded { attempt, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(attempt.get(), 2, "approved");

    let mut env = gate_opened_on_attempt_two();
    decide(&mut env, "alice@msp", false).unwrap();
    let StepState::Failed { attempt, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(attempt.get(), 2, "rejected");

    let mut env = gate_opened_on_attempt_two();
    env.advance(std::time::Duration::from_secs(3600));
    env.fire_due();
    let StepState::AwaitingApproval { attempt, stage, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!((attempt.get(), *stage), (2, 1), "escalated");
    env.advance(std::time::Duration::from_secs(1800));
    env.fire_due();
    let StepState::Failed { attempt, error, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert!(error.message.starts_with("expired"), "{}", error.message);
    assert_eq!(attempt.get(), 2, "expired");

    // A first attempt is not written out, so stored documents keep their shape.
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    open_gate(&mut env, &["alice@msp", "bob@msp"], &[]);
    let json = serde_json::to_value(env.step("approval")).unwrap();
    assert!(json.get("attempt").is_none(), "{json}");
    let back: StepState = serde_json::from_value(json).unwrap();
    assert_eq!(&back, env.step("approval"));
}

#[test]
fn a_gate_without_enough_approvers_fails_and_can_be_retried() {
    let mut env = Env::new(&GATED.replace("on_failure: rollback", "on_failure: pause"));
    env.start();
    env.succeed("prep");
    open_gate(&mut env, &["alice@msp"], &[]);
    let StepState::Failed { error, .. } = env.step("approval") else {
        panic!()
    };
    assert!(
        error.message.contains("needs 2 approvals but has only 1"),
        "{}",
        error.message
    );
    assert_eq!(env.status(), "paused");
    env.apply(Event::RetryStepRequested {
        step: sid("approval"),
        by: "t".into(),
    });
    assert_eq!(
        env.job("approval").seq,
        2,
        "the gate opens again and re-resolves its approvers"
    );
    open_gate(&mut env, &["alice@msp", "bob@msp"], &[]);
    env.apply(Event::CancelRequested {
        by: "t".into(),
        rollback: false,
        reason: None,
    });
    assert_eq!(env.status(), "cancelled");
    assert!(
        env.log
            .iter()
            .any(|e| matches!(e, Effect::UnindexGate { .. })),
        "cancelling closes the gate"
    );
}

#[test]
fn a_gate_only_the_requester_could_complete_fails_when_it_opens() {
    let mut env = Env::new(&GATED.replace("on_failure: rollback", "on_failure: pause"));
    env.ctx.requested_by = " Tech@MSP ".into();
    env.start();
    env.succeed("prep");
    // Two approvers for a quorum of two, but one of them asked for the run.
    let t = open_gate(&mut env, &["lead@msp", "TECH@msp"], &[]);
    assert!(
        !t.effects
            .iter()
            .any(|e| matches!(e, Effect::IndexGate { .. })),
        "an unsatisfiable gate is not put in anyone's inbox: {:?}",
        t.effects
    );
    let StepState::Failed { error, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert!(
        error
            .message
            .contains("needs 2 approvals but only 1 of its approvers")
            && error
                .message
                .contains("tech@msp asked for this run and cannot approve it")
            && error
                .message
                .contains("add approvers, then retry this step"),
        "{}",
        error.message
    );
    assert_eq!(env.status(), "paused");
}

#[test]
fn a_gate_does_not_escalate_to_a_list_only_the_requester_could_complete() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    // The escalation list has two people for a quorum of two, but one is the requester.
    open_gate(
        &mut env,
        &["alice@msp", "bob@msp"],
        &["lead@msp", "tech@msp"],
    );
    env.advance(std::time::Duration::from_secs(3600));
    env.fire_due();
    assert!(
        !env.log.iter().any(
            |e| matches!(e, Effect::IndexGate { approvers, .. } if approvers.contains(&"lead@msp".to_owned()))
        ),
        "no escalation to an unsatisfiable list"
    );
    let StepState::Failed { error, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(error.kind, FailureKind::Rejected);
    assert!(error.message.starts_with("expired"), "{}", error.message);
    assert!(
        matches!(&env.state.status, RunStatus::RolledBack { cause: steward_schemas::RollbackCause::Rejected { by, .. }, .. } if by == "expiry")
    );
}

fn open_gate_checked(
    env: &mut Env,
    approvers: &[&str],
    escalation: &[&str],
    unavailable: &[(&str, Unavailability)],
    admins: &[&str],
) -> Transition {
    let seq = env.seq("approval");
    let list = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    env.apply(Event::GateOpened {
        step: sid("approval"),
        seq,
        approvers: list(approvers),
        escalation: list(escalation),
        unavailable: unavailable
            .iter()
            .map(|(email, reason)| UnavailableApprover {
                email: (*email).to_owned(),
                reason: *reason,
            })
            .collect(),
        admins: list(admins),
    })
}

#[test]
fn a_gate_leaves_out_approvers_who_cannot_decide() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    // carol is disabled; the three others reach the quorum of two. The escalation target is
    // not a technician, so the gate would escalate to nobody: it escalates to the admins.
    let t = open_gate_checked(
        &mut env,
        &["alice@msp", "Carol@MSP", "bob@msp"],
        &["lead@msp.example"],
        &[
            ("carol@msp", Unavailability::Disabled),
            ("lead@msp.example", Unavailability::NotATechnician),
        ],
        &["root@msp", "ops@msp"],
    );
    let StepState::AwaitingApproval {
        approvers,
        escalation,
        unavailable,
        to_admins,
        ..
    } = env.step("approval")
    else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(approvers, &["alice@msp", "bob@msp"]);
    assert_eq!(escalation, &["root@msp", "ops@msp"]);
    assert_eq!(unavailable.len(), 2);
    assert_eq!(to_admins, &Some(AdminFallback::Escalation));
    assert!(t.effects.contains(&Effect::IndexGate {
        step: sid("approval"),
        approvers: vec!["alice@msp".into(), "bob@msp".into()],
        since: env.now,
    }));
    assert!(
        decide(&mut env, "carol@msp", true).is_err(),
        "a disabled approver cannot decide"
    );
    // Nobody decides in time: the gate escalates to the admins.
    env.advance(std::time::Duration::from_secs(3600));
    env.fire_due();
    let StepState::AwaitingApproval {
        approvers, stage, ..
    } = env.step("approval")
    else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(
        (approvers.as_slice(), *stage),
        (&["root@msp".to_owned(), "ops@msp".to_owned()][..], 1)
    );
    decide(&mut env, "root@msp", true).unwrap();
    decide(&mut env, "ops@msp", true).unwrap();
    assert!(matches!(env.step("approval"), StepState::Succeeded { .. }));
}

#[test]
fn a_gate_nobody_named_can_decide_goes_to_the_admins() {
    let mut env = Env::new(GATED);
    env.start();
    env.succeed("prep");
    // alice is disabled, bob is gone; tech asked for the run and is an admin too.
    open_gate_checked(
        &mut env,
        &["alice@msp", "bob@msp"],
        &[],
        &[
            ("alice@msp", Unavailability::Disabled),
            ("bob@msp", Unavailability::NotATechnician),
        ],
        &["root@msp", "tech@msp", "ops@msp"],
    );
    let StepState::AwaitingApproval {
        approvers,
        escalation,
        to_admins,
        ..
    } = env.step("approval")
    else {
        panic!("{:?}", env.step("approval"))
    };
    assert_eq!(approvers, &["root@msp", "tech@msp", "ops@msp"]);
    assert!(escalation.is_empty());
    assert_eq!(to_admins, &Some(AdminFallback::Approvers));
    let err = decide(&mut env, "tech@msp", true).unwrap_err();
    assert!(err.to_string().contains("asked for this run"), "{err}");
    let offered = actions(&env.plan, &env.ctx, &env.state, env.now);
    assert!(
        offered.contains(&RunAction::Approve {
            step: sid("approval"),
            by: vec!["root@msp".into(), "ops@msp".into()],
        }),
        "{offered:?}"
    );
}

#[test]
fn a_gate_nobody_can_decide_fails_and_says_who_is_missing() {
    let mut env = Env::new(&GATED.replace("on_failure: rollback", "on_failure: pause"));
    env.start();
    env.succeed("prep");
    // The only admin is the requester: nobody can take the gate over.
    open_gate_checked(
        &mut env,
        &["alice@msp", "bob@msp"],
        &[],
        &[("alice@msp", Unavailability::Disabled)],
        &["tech@msp"],
    );
    let StepState::Failed { error, .. } = env.step("approval") else {
        panic!("{:?}", env.step("approval"))
    };
    for part in [
        "needs 2 approvals but has only 1 approvers (bob@msp)",
        "left out: alice@msp is disabled",
        "nor can the admins (tech@msp) take it over",
        "enable them or name enabled technicians as approvers, then retry this step",
    ] {
        assert!(error.message.contains(part), "{part}: {}", error.message);
    }
    assert_eq!(env.status(), "paused");
    assert!(
        !env.log
            .iter()
            .any(|e| matches!(e, Effect::IndexGate { .. })),
        "never in nobody's inbox"
    );
}

#[test]
fn a_step_the_policy_now_refuses_pauses_the_run() {
    let mut env = Env::new("name: p\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x, needs: [a]}\n");
    env.start();
    let seq = env.seq("a");
    env.apply(Event::StepBlocked {
        step: sid("a"),
        seq,
        reason: "the users group is disabled for contoso".into(),
    });
    assert!(matches!(
        &env.state.status,
        RunStatus::Paused {
            reason: steward_schemas::PauseReason::PolicyBlocked { .. }
        }
    ));
    assert!(matches!(env.step("a"), StepState::Ready { .. }));
    env.apply(Event::ResumeRequested { by: "t".into() });
    assert_eq!(
        env.job("a").seq,
        2,
        "resuming dispatches it again (and the policy is checked again)"
    );
    env.succeed("a");
    env.succeed("b");
    assert_eq!(env.status(), "completed");
}

// ---- random event sequences ------------------------------------------------------------------

/// Workflows the property tests run: a diamond with mixed failure policies, a wide fan-out, and a
/// chain that polls.
const SHAPES: [&str; 4] = [
    r#"
name: diamond
defaults: {retry: {attempts: 3, initial: 1s, max_delay: 4s}}
steps:
  - {id: a, op: x, on_failure: rollback}
  - {id: b, op: x, needs: [a], on_failure: pause}
  - {id: c, op: x, needs: [a], on_failure: continue}
  - {id: d, op: x, needs: [b, c], on_failure: rollback, retry: {attempts: 1}}
"#,
    r#"
name: wide
defaults: {on_failure: pause, retry: {attempts: 2, initial: 1s}}
steps:
  - {id: a, op: x}
  - {id: b, op: x}
  - {id: c, op: x, needs: [a]}
  - {id: d, op: x, needs: [a, b], on_failure: rollback}
  - {id: e, op: x, needs: [c, d], on_failure: continue}
"#,
    r#"
name: chain
defaults: {on_failure: rollback, max_wait: 5m, retry: {attempts: 4, initial: 1s, max_delay: 8s}}
steps:
  - {id: a, op: x}
  - {id: b, op: x, needs: [a], on_failure: pause}
  - {id: c, op: x, needs: [b]}
"#,
    r#"
name: gated
defaults: {on_failure: rollback, retry: {attempts: 2, initial: 1s}}
steps:
  - {id: a, op: x}
  - id: g
    needs: [a]
    on_failure: pause
    gate: {quorum: 2, expires_in: 1h, on_expiry: escalate, escalate_to: company}
  - {id: b, op: x, needs: [g]}
  - {id: c, op: x, needs: [a], on_failure: continue}
"#,
];

/// One random move: `kind` picks what happens, `pick` which step, `arg` a detail.
#[derive(Debug, Clone, Copy)]
struct Move {
    kind: u8,
    pick: u8,
    arg: u8,
}

fn moves() -> impl Strategy<Value = Vec<Move>> {
    prop::collection::vec(
        (0u8..27, any::<u8>(), any::<u8>()).prop_map(|(kind, pick, arg)| Move { kind, pick, arg }),
        0..80,
    )
}

/// Moves that mostly succeed steps, cancel with rollback, fail undos and fix them: rollbacks
/// that fail, and technicians' fixes of them, while other undos run.
fn rollback_moves() -> impl Strategy<Value = Vec<Move>> {
    let kinds = vec![0u8, 1, 2, 3, 7, 8, 9, 12, 24, 24, 25, 25, 26, 26];
    prop::collection::vec(
        (prop::sample::select(kinds), any::<u8>(), any::<u8>())
            .prop_map(|(kind, pick, arg)| Move { kind, pick, arg }),
        0..60,
    )
}

/// Turns a move into an event that makes sense now (mostly) or a stale one (sometimes).
fn event_for(env: &mut Env, mv: Move) -> Option<Event> {
    let ids: Vec<StepId> = env.plan.steps().iter().map(|s| s.id.clone()).collect();
    let step = ids[mv.pick as usize % ids.len()].clone();
    let rec = env.state.steps[&step].clone();
    let rollback = match mv.arg % 3 {
        0 => Rollback::Nothing,
        1 => inverse(step.as_str()),
        _ => Rollback::Irreversible {
            reason: "r".into(),
            prior: json!(null),
        },
    };
    let queued = |env: &Env| -> Vec<StepId> {
        ids.iter()
            .filter(|id| matches!(env.state.steps[*id].state, StepState::Queued { .. }))
            .cloned()
            .collect()
    };
    let undo_queued: Vec<StepId> = ids
        .iter()
        .filter(|id| matches!(env.state.steps[*id].undo, Some(CompState::Queued { .. })))
        .cloned()
        .collect();
    Some(match mv.kind {
        0..=3 => {
            let q = queued(env);
            let s = q.get(mv.pick as usize % q.len().max(1))?.clone();
            let seq = env.state.steps[&s].seq;
            Event::StepSucceeded {
                step: s,
                seq,
                output: json!({"n": mv.arg}),
                rollback,
            }
        }
        4 | 5 => {
            let q = queued(env);
            let s = q.get(mv.pick as usize % q.len().max(1))?.clone();
            let seq = env.state.steps[&s].seq;
            let error = if mv.arg.is_multiple_of(2) {
                StepFailure::retryable("flaky")
            } else {
                StepFailure::terminal("bad")
            };
            Event::StepFailed {
                step: s,
                seq,
                error,
            }
        }
        6 => {
            let q = queued(env);
            let s = q.get(mv.pick as usize % q.len().max(1))?.clone();
            let seq = env.state.steps[&s].seq;
            Event::StepPending {
                step: s,
                seq,
                check_after: Dur::secs(u64::from(mv.arg % 90) + 1),
                note: None,
            }
        }
        7 | 8 => {
            let s = undo_queued
                .get(mv.pick as usize % undo_queued.len().max(1))?
                .clone();
            let seq = env.state.steps[&s].seq;
            if mv.kind == 7 || mv.arg.is_multiple_of(4) {
                Event::UndoSucceeded { step: s, seq }
            } else {
                Event::UndoFailed {
                    step: s,
                    seq,
                    error: StepFailure::retryable("undo flaky"),
                }
            }
        }
        9 | 10 => {
            // Time passes; the earliest timer fires.
            let (key, at) = env.timers.iter().min_by_key(|(_, at)| *at)?.clone();
            if at > env.now {
                env.now = at;
            }
            env.timers.retain(|(k, _)| k != &key);
            Event::TimerFired { timer: key }
        }
        11 => {
            // The runtime takes back some of the jobs it was asked to revoke.
            let q = queued(env);
            let jobs = q
                .iter()
                .filter(|s| (s.as_str().as_bytes()[0] ^ mv.arg).is_multiple_of(2))
                .map(|s| JobRef {
                    step: s.clone(),
                    seq: env.state.steps[s].seq,
                    phase: Phase::Run,
                })
                .collect::<Vec<_>>();
            if jobs.is_empty() {
                return None;
            }
            Event::JobsRevoked { jobs }
        }
        12 => Event::CancelRequested {
            by: "t".into(),
            rollback: mv.arg.is_multiple_of(2),
            reason: None,
        },
        13 => Event::PauseRequested {
            by: "t".into(),
            reason: None,
        },
        14 => Event::ResumeRequested { by: "t".into() },
        15 => Event::RetryStepRequested {
            step,
            by: "t".into(),
        },
        16 => Event::SkipStepRequested {
            step,
            by: "t".into(),
            reason: None,
        },
        17 => {
            // A stale or duplicate report with a random sequence number.
            let seq = rec.seq.saturating_sub(u32::from(mv.arg % 3));
            Event::StepSucceeded {
                step,
                seq,
                output: json!({}),
                rollback,
            }
        }
        18 => Event::StepFailed {
            step,
            seq: rec.seq.wrapping_add(u32::from(mv.arg % 2)),
            error: StepFailure::retryable("late"),
        },
        20 | 21 => {
            // A queued gate opens, with a random number of approvers.
            let gates: Vec<StepId> = ids
                .iter()
                .filter(|id| {
                    env.plan
                        .step(env.plan.index_of(id.as_str()).unwrap())
                        .gate
                        .is_some()
                })
                .filter(|id| matches!(env.state.steps[*id].state, StepState::Queued { .. }))
                .cloned()
                .collect();
            let g = gates.first()?.clone();
            let seq = env.state.steps[&g].seq;
            let pool = ["tech@msp", "alice@msp", "bob@msp", "carol@msp"];
            let approvers = pool
                .iter()
                .take(usize::from(mv.arg % 5))
                .map(|s| (*s).to_owned())
                .collect();
            let escalation = pool
                .iter()
                .rev()
                .take(usize::from(mv.pick % 3))
                .map(|s| (*s).to_owned())
                .collect();
            // Some of them cannot decide (not technicians, or disabled); some admins stand by.
            let unavailable = pool
                .iter()
                .enumerate()
                .filter(|(k, _)| (mv.arg >> (3 + k)) & 1 == 1)
                .map(|(k, s)| UnavailableApprover {
                    email: (*s).to_owned(),
                    reason: if k % 2 == 0 {
                        Unavailability::Disabled
                    } else {
                        Unavailability::NotATechnician
                    },
                })
                .collect();
            let admins = ["root@msp", "tech@msp", "ops@msp"]
                .iter()
                .take(usize::from(mv.pick >> 5))
                .map(|s| (*s).to_owned())
                .collect();
            Event::GateOpened {
                step: g,
                seq,
                approvers,
                escalation,
                unavailable,
                admins,
            }
        }
        22 => {
            let pool = [
                "tech@msp",
                "alice@msp",
                "bob@msp",
                "carol@msp",
                "eve@x",
                "root@msp",
            ];
            Event::ApprovalDecided {
                step,
                by: pool[usize::from(mv.pick) % pool.len()].to_owned(),
                approve: !mv.arg.is_multiple_of(4),
                comment: None,
                via: "api".into(),
            }
        }
        23 => {
            let q = queued(env);
            let s = q.get(mv.pick as usize % q.len().max(1))?.clone();
            let seq = env.state.steps[&s].seq;
            Event::StepBlocked {
                step: s,
                seq,
                reason: "policy".into(),
            }
        }
        24 => Event::RetryUndoRequested {
            step,
            by: "t".into(),
        },
        25 => Event::UndoResolved {
            step,
            by: "t".into(),
            comment: if mv.arg.is_multiple_of(5) {
                " ".into()
            } else {
                "done by hand".into()
            },
            via: "api".into(),
        },
        26 => {
            // An undo fails for good.
            let s = undo_queued
                .get(mv.pick as usize % undo_queued.len().max(1))?
                .clone();
            let seq = env.state.steps[&s].seq;
            Event::UndoFailed {
                step: s,
                seq,
                error: StepFailure::terminal("undo refused"),
            }
        }
        _ => {
            env.now = env
                .now
                .plus(std::time::Duration::from_secs(u64::from(mv.arg)));
            return None;
        }
    })
}

/// Applies `event` as a move, checking the invariants, and records it in `trace`.
fn apply_checked(env: &mut Env, trace: &mut Trace, event: Event) {
    let before = env.state.clone();
    let now = env.now;
    let result = env.try_apply(event.clone());
    check_invariants(env, &before, &event, &result);
    check_actions(env);
    trace.push((event, now, result));
}

/// What an action stands for: its name, its step, and who (for a gate decision).
type ActionKey = (&'static str, Option<StepId>, Option<String>);

/// Checks that `actions` lists exactly the requests the machine takes now: each candidate
/// request is applied to a copy of the state, and counts as accepted when it is neither refused
/// nor ignored.
fn check_actions(env: &Env) {
    let mut candidates: Vec<(ActionKey, Event)> = vec![
        (
            ("cancel", None, None),
            Event::CancelRequested {
                by: "t".into(),
                rollback: false,
                reason: None,
            },
        ),
        (
            ("cancel_with_rollback", None, None),
            Event::CancelRequested {
                by: "t".into(),
                rollback: true,
                reason: None,
            },
        ),
        (
            ("pause", None, None),
            Event::PauseRequested {
                by: "t".into(),
                reason: None,
            },
        ),
        (
            ("resume", None, None),
            Event::ResumeRequested { by: "t".into() },
        ),
    ];
    for s in env.plan.steps() {
        let step = s.id.clone();
        candidates.extend([
            (
                ("retry_step", Some(step.clone()), None),
                Event::RetryStepRequested {
                    step: step.clone(),
                    by: "t".into(),
                },
            ),
            (
                ("skip_step", Some(step.clone()), None),
                Event::SkipStepRequested {
                    step: step.clone(),
                    by: "t".into(),
                    reason: None,
                },
            ),
            (
                ("retry_undo", Some(step.clone()), None),
                Event::RetryUndoRequested {
                    step: step.clone(),
                    by: "t".into(),
                },
            ),
            (
                ("resolve_undo", Some(step.clone()), None),
                Event::UndoResolved {
                    step: step.clone(),
                    by: "t".into(),
                    comment: "fixed by hand".into(),
                    via: "api".into(),
                },
            ),
        ]);
        if s.gate.is_some() {
            for by in [
                "tech@msp",
                "alice@msp",
                "bob@msp",
                "carol@msp",
                "root@msp",
                "ops@msp",
            ] {
                for approve in [true, false] {
                    let name = if approve { "approve" } else { "reject" };
                    candidates.push((
                        (name, Some(step.clone()), Some(by.to_owned())),
                        Event::ApprovalDecided {
                            step: step.clone(),
                            by: by.to_owned(),
                            approve,
                            comment: None,
                            via: "api".into(),
                        },
                    ));
                }
            }
        }
    }
    let accepted: std::collections::BTreeSet<ActionKey> = candidates
        .into_iter()
        .filter(|(_, event)| {
            transition(&env.plan, &env.ctx, &env.state, event, &Cx { now: env.now })
                .is_ok_and(|t| t.ignored.is_none())
        })
        .map(|(key, _)| key)
        .collect();
    let mut offered = std::collections::BTreeSet::new();
    for a in actions(&env.plan, &env.ctx, &env.state, env.now) {
        let step = a.step().cloned();
        match &a {
            RunAction::Approve { by, .. } | RunAction::Reject { by, .. } => {
                for who in by {
                    offered.insert((a.name(), step.clone(), Some(who.clone())));
                }
            }
            _ => {
                offered.insert((a.name(), step, None));
            }
        }
    }
    assert_eq!(
        offered, accepted,
        "actions offered (left) differ from what the machine accepts (right) in {:?}",
        env.state
    );
}

/// Brings a run that ended `rollback_failed` to `rolled_back` the way a technician would:
/// retrying or resolving each failed undo, and letting the undos that follow succeed.
fn recover_run(env: &mut Env, trace: &mut Trace) {
    for n in 0..500 {
        let failed = env
            .state
            .steps
            .iter()
            .find(|(_, r)| matches!(r.undo, Some(CompState::Failed { .. })))
            .map(|(id, _)| id.clone());
        let queued = env
            .state
            .steps
            .iter()
            .find(|(_, r)| matches!(r.undo, Some(CompState::Queued { .. })))
            .map(|(id, r)| (id.clone(), r.seq));
        let event = match (&env.state.status, failed, queued) {
            (RunStatus::RolledBack { .. }, ..) => return,
            (_, _, Some((step, seq))) => Event::UndoSucceeded { step, seq },
            (_, Some(step), None) if n % 2 == 0 => Event::RetryUndoRequested {
                step,
                by: "t".into(),
            },
            (_, Some(step), None) => Event::UndoResolved {
                step,
                by: "t".into(),
                comment: "done by hand".into(),
                via: "cli".into(),
            },
            (_, None, None) => {
                let (key, at) = env
                    .timers
                    .iter()
                    .min_by_key(|(_, at)| *at)
                    .cloned()
                    .unwrap_or_else(|| panic!("a stuck rollback: {:?}", env.state));
                env.now = env.now.max(at);
                env.timers.retain(|(k, _)| k != &key);
                Event::TimerFired { timer: key }
            }
        };
        apply_checked(env, trace, event);
        let (event, _, result) = trace.last().unwrap();
        assert!(result.is_ok(), "{event:?} -> {result:?}");
    }
    panic!("the rollback was not recovered: {:?}", env.state);
}

/// Ends the run whatever state the random moves left it in: cancels it (with or without
/// rollback), then lets every outstanding job report success (but the first undo, with
/// `fail_an_undo`, which fails for good) and every timer fire.
fn finish_run(env: &mut Env, trace: &mut Trace, rollback: bool, mut fail_an_undo: bool) {
    for _ in 0..500 {
        let queued_run = env
            .state
            .steps
            .iter()
            .find(|(_, r)| matches!(r.state, StepState::Queued { .. }))
            .map(|(id, r)| (id.clone(), r.seq));
        let queued_undo = env
            .state
            .steps
            .iter()
            .find(|(_, r)| matches!(r.undo, Some(CompState::Queued { .. })))
            .map(|(id, r)| (id.clone(), r.seq));
        let event = match (&env.state.status, queued_run, queued_undo) {
            (status, ..) if status.is_terminal() => return,
            (RunStatus::Scheduled { .. } | RunStatus::Running | RunStatus::Paused { .. }, ..) => {
                Event::CancelRequested {
                    by: "t".into(),
                    rollback,
                    reason: None,
                }
            }
            (_, Some((step, seq)), _) => Event::StepSucceeded {
                rollback: inverse(step.as_str()),
                step,
                seq,
                output: json!({}),
            },
            (_, None, Some((step, seq))) if fail_an_undo => {
                fail_an_undo = false;
                Event::UndoFailed {
                    step,
                    seq,
                    error: StepFailure::terminal("the undo was refused"),
                }
            }
            (_, None, Some((step, seq))) => Event::UndoSucceeded { step, seq },
            (_, None, None) => {
                let (key, at) = env
                    .timers
                    .iter()
                    .min_by_key(|(_, at)| *at)
                    .cloned()
                    .unwrap_or_else(|| panic!("a stuck run: {:?}", env.state));
                env.now = env.now.max(at);
                env.timers.retain(|(k, _)| k != &key);
                Event::TimerFired { timer: key }
            }
        };
        apply_checked(env, trace, event);
        let (event, _, result) = trace.last().unwrap();
        assert!(result.is_ok(), "{event:?} -> {result:?}");
    }
    panic!("the run did not end: {:?}", env.state);
}

/// The events that can reach an ended run: late reports from every step (with its current
/// sequence number) and every kind of request.
fn late_events(env: &Env) -> Vec<Event> {
    let mut events = vec![Event::TimerFired {
        timer: TimerKey::start(),
    }];
    for (step, rec) in &env.state.steps {
        let (step, seq) = (step.clone(), rec.seq);
        events.extend([
            Event::StepSucceeded {
                step: step.clone(),
                seq,
                output: json!({}),
                rollback: Rollback::Nothing,
            },
            Event::StepPending {
                step: step.clone(),
                seq,
                check_after: Dur::secs(5),
                note: None,
            },
            Event::StepFailed {
                step: step.clone(),
                seq,
                error: StepFailure::retryable("late"),
            },
            Event::UndoSucceeded {
                step: step.clone(),
                seq,
            },
            Event::UndoFailed {
                step: step.clone(),
                seq,
                error: StepFailure::terminal("late"),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::Retry, step.clone(), seq),
            },
            Event::TimerFired {
                timer: TimerKey::step(TimerKind::GateExpiry, step.clone(), seq),
            },
            Event::JobsRevoked {
                jobs: vec![JobRef {
                    step: step.clone(),
                    seq,
                    phase: Phase::Run,
                }],
            },
            Event::GateOpened {
                step: step.clone(),
                seq,
                approvers: vec!["alice@msp".into(), "bob@msp".into()],
                escalation: Vec::new(),
                unavailable: Vec::new(),
                admins: vec!["root@msp".into()],
            },
            Event::StepBlocked {
                step: step.clone(),
                seq,
                reason: "late".into(),
            },
            Event::RetryStepRequested {
                step: step.clone(),
                by: "t".into(),
            },
            Event::SkipStepRequested {
                step: step.clone(),
                by: "t".into(),
                reason: None,
            },
            Event::ApprovalDecided {
                step,
                by: "alice@msp".into(),
                approve: true,
                comment: None,
                via: "api".into(),
            },
        ]);
    }
    events.extend([
        Event::CancelRequested {
            by: "t".into(),
            rollback: true,
            reason: None,
        },
        Event::PauseRequested {
            by: "t".into(),
            reason: None,
        },
        Event::ResumeRequested { by: "t".into() },
    ]);
    events
}

/// Checks that an ended run ignores every late report and refuses every request, unchanged.
fn assert_absorbs_late_events(env: &mut Env) {
    assert!(env.state.status.is_terminal(), "{:?}", env.state.status);
    check_actions(env);
    let ended = env.state.clone();
    for event in late_events(env) {
        match env.try_apply(event.clone()) {
            Ok(t) => {
                assert!(
                    t.ignored
                        .as_deref()
                        .is_some_and(|w| w.contains("has ended")),
                    "{event:?} -> {t:?}"
                );
                assert!(t.effects.is_empty(), "{event:?} -> {:?}", t.effects);
                assert_eq!(t.next, ended, "{event:?}");
            }
            Err(e) => assert!(e.to_string().contains("already ended"), "{event:?} -> {e}"),
        }
        assert_eq!(env.state, ended, "{event:?}");
    }
    let err = env
        .try_apply(Event::RunCreated { start_at: None })
        .unwrap_err();
    assert!(matches!(err, TransitionError::Invalid { .. }), "{err:?}");
}

#[test]
fn every_kind_of_ended_run_absorbs_late_events() {
    const FLOW: &str = r#"
name: ends
defaults: {on_failure: rollback, retry: {attempts: 1}}
steps:
  - {id: a, op: x}
  - {id: b, op: x, needs: [a]}
"#;
    // Completed.
    let mut env = Env::new(FLOW);
    env.start();
    env.succeed("a");
    env.succeed("b");
    assert_eq!(env.status(), "completed");
    assert_absorbs_late_events(&mut env);
    // Cancelled before it started.
    let mut env = Env::new(FLOW);
    env.apply(Event::RunCreated {
        start_at: Some(env.now.plus(std::time::Duration::from_secs(60))),
    });
    env.apply(Event::CancelRequested {
        by: "t".into(),
        rollback: false,
        reason: None,
    });
    assert_eq!(env.status(), "cancelled");
    assert_absorbs_late_events(&mut env);
    // Cancelled while a step ran.
    let mut env = Env::new(FLOW);
    env.start();
    env.apply(Event::CancelRequested {
        by: "t".into(),
        rollback: false,
        reason: None,
    });
    env.succeed("a");
    assert_eq!(env.status(), "cancelled");
    assert_absorbs_late_events(&mut env);
    // Rolled back, and a rollback that failed.
    for (undo_ok, status) in [(true, "rolled_back"), (false, "rollback_failed")] {
        let mut env = Env::new(FLOW);
        env.start();
        env.succeed_with("a", json!({}), inverse("a"));
        env.fail("b", StepFailure::terminal("no"));
        let seq = env.seq("a");
        env.apply(if undo_ok {
            Event::UndoSucceeded {
                step: sid("a"),
                seq,
            }
        } else {
            Event::UndoFailed {
                step: sid("a"),
                seq,
                error: StepFailure::terminal("no"),
            }
        });
        assert_eq!(env.status(), status);
        assert_absorbs_late_events(&mut env);
    }
}

/// Every (event, time, transition result) of a run, for replay.
type Trace = Vec<(Event, Timestamp, Result<Transition, TransitionError>)>;

/// Applies a move sequence, checking the invariants after every transition. Returns every
/// (event, time, transition result) for replay.
fn run_moves(shape: &str, moves: &[Move]) -> (Env, Trace) {
    let mut env = Env::new(shape);
    let mut trace = Vec::new();
    let first = Event::RunCreated { start_at: None };
    let r = env.try_apply(first.clone());
    trace.push((first, env.now, r));
    for &mv in moves {
        let Some(event) = event_for(&mut env, mv) else {
            continue;
        };
        apply_checked(&mut env, &mut trace, event);
    }
    (env, trace)
}

fn check_invariants(
    env: &Env,
    before: &RunState,
    event: &Event,
    result: &Result<Transition, TransitionError>,
) {
    let t = match result {
        Ok(t) => t,
        Err(e) => {
            // Only a technician's request is refused, and always with a reason; a report from a
            // worker or a timer is applied or ignored, never refused.
            let request = matches!(
                event,
                Event::CancelRequested { .. }
                    | Event::PauseRequested { .. }
                    | Event::ResumeRequested { .. }
                    | Event::RetryStepRequested { .. }
                    | Event::SkipStepRequested { .. }
                    | Event::ApprovalDecided { .. }
                    | Event::RetryUndoRequested { .. }
                    | Event::UndoResolved { .. }
            );
            assert!(request, "a report was refused: {event:?} -> {e}");
            assert!(
                matches!(e, TransitionError::Rejected { reason } if !reason.is_empty()),
                "{event:?} -> {e:?}"
            );
            return;
        }
    };
    // The one request an ended run takes: a fix of a failed undo, after its rollback failed.
    let reopened = matches!(before.status, RunStatus::RollbackFailed { .. })
        && matches!(
            event,
            Event::RetryUndoRequested { .. } | Event::UndoResolved { .. }
        );
    if (before.status.is_terminal() && !reopened) || t.ignored.is_some() {
        assert_eq!(
            &t.next, before,
            "an ended run or an ignored event must not change: {event:?}"
        );
        assert!(t.effects.is_empty(), "{event:?} -> {:?}", t.effects);
    }
    if reopened {
        let (
            RunStatus::RollbackFailed { cause, .. },
            RunStatus::RollingBack { cause: now }
            | RunStatus::RolledBack { cause: now, .. }
            | RunStatus::RollbackFailed { cause: now, .. },
        ) = (&before.status, &t.next.status)
        else {
            panic!(
                "{event:?} took a rollback_failed run to {:?}",
                t.next.status
            )
        };
        assert_eq!(cause, now, "the rollback keeps its cause");
    }
    for effect in &t.effects {
        if let Effect::EnqueueStep { job } = effect {
            let i = env.plan.index_of(job.step.as_str()).unwrap();
            let step = env.plan.step(i);
            assert!(
                job.attempt.get() <= step.retry.max_attempts(),
                "attempt {} > max for {}",
                job.attempt,
                job.step
            );
            if job.phase == Phase::Run {
                for &n in &step.needs {
                    let need = &env.plan.step(n).id;
                    assert!(
                        matches!(
                            t.next.steps[need].state,
                            StepState::Succeeded { .. }
                                | StepState::Skipped {
                                    reason: SkipReason::Condition | SkipReason::Operator { .. },
                                    ..
                                }
                        ),
                        "{} dispatched while its need {need} is {:?}",
                        job.step,
                        t.next.steps[need].state
                    );
                }
                assert!(
                    matches!(t.next.status, RunStatus::Running),
                    "dispatch while {}",
                    t.next.status.name()
                );
            } else {
                assert!(matches!(t.next.status, RunStatus::RollingBack { .. }));
            }
            assert_eq!(job.seq, t.next.steps[&job.step].seq);
        }
    }
    for (id, rec) in &t.next.steps {
        assert!(rec.seq >= before.steps[id].seq, "seq went back for {id}");
        if let StepState::Queued { job, .. }
        | StepState::Ready { next: job }
        | StepState::Polling { job, .. } = &rec.state
        {
            let max = env
                .plan
                .step(env.plan.index_of(id.as_str()).unwrap())
                .retry
                .max_attempts();
            assert!(job.attempt.get() <= max);
        }
    }
    // Ended runs have nothing in flight.
    if t.next.status.is_terminal() && (!before.status.is_terminal() || reopened) {
        for (id, rec) in &t.next.steps {
            assert!(
                rec.state.is_settled(),
                "{id} is {} in an ended run",
                rec.state.name()
            );
            assert!(
                rec.undo.as_ref().is_none_or(CompState::is_settled),
                "{id} undo in flight"
            );
        }
        assert_eq!(
            t.effects
                .iter()
                .filter(|e| matches!(e, Effect::RunEnded { .. }))
                .count(),
            1
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: Some(Box::new(prop::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        .. ProptestConfig::default()
    })]

    #[test]
    fn random_event_sequences_keep_the_invariants(shape in 0usize..SHAPES.len(), moves in moves(), rollback in any::<bool>(), fail_an_undo in any::<bool>()) {
        let (mut env, mut trace) = run_moves(SHAPES[shape], &moves);
        // Whatever the moves left, the run can be brought to an end (invariants checked on the
        // way), and then it absorbs every later event: every case reaches this check.
        finish_run(&mut env, &mut trace, rollback, fail_an_undo);
        prop_assert!(env.state.status.is_terminal());
        assert_absorbs_late_events(&mut env);
        // A rollback that failed can be finished by a technician.
        if matches!(env.state.status, RunStatus::RollbackFailed { .. }) {
            recover_run(&mut env, &mut trace);
            assert_absorbs_late_events(&mut env);
        }
        // Replay gives the same states and effects.
        let mut replay = Env::new(SHAPES[shape]);
        for (event, now, result) in &trace {
            replay.now = *now;
            let again = replay.try_apply(event.clone());
            prop_assert_eq!(&again, result);
        }
        // State and events survive serde.
        let json = serde_json::to_string(&env.state).unwrap();
        prop_assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), env.state.clone());
        for (event, _, _) in &trace {
            let json = serde_json::to_string(event).unwrap();
            prop_assert_eq!(&serde_json::from_str::<Event>(&json).unwrap(), event);
        }
    }

    #[test]
    fn failed_rollbacks_can_be_finished_by_a_technician(shape in 0usize..SHAPES.len(), moves in rollback_moves()) {
        let (mut env, mut trace) = run_moves(SHAPES[shape], &moves);
        finish_run(&mut env, &mut trace, true, true);
        if matches!(env.state.status, RunStatus::RollbackFailed { .. }) {
            recover_run(&mut env, &mut trace);
            prop_assert_eq!(env.status(), "rolled_back");
        }
        assert_absorbs_late_events(&mut env);
        let mut replay = Env::new(SHAPES[shape]);
        for (event, now, result) in &trace {
            replay.now = *now;
            let again = replay.try_apply(event.clone());
            prop_assert_eq!(&again, result);
        }
    }

    #[test]
    fn runs_that_are_only_fed_successes_complete(shape in 0usize..SHAPES.len(), picks in prop::collection::vec(any::<u8>(), 0..40)) {
        let mut env = Env::new(SHAPES[shape]);
        env.start();
        let mut picks = picks.into_iter();
        for _ in 0..100 {
            let queued: Vec<String> = env.state.steps.iter().filter(|(_, r)| matches!(r.state, StepState::Queued { .. })).map(|(k, _)| k.to_string()).collect();
            if queued.is_empty() { break; }
            let p = picks.next().unwrap_or(0) as usize % queued.len();
            env.succeed(&queued[p].clone());
        }
        prop_assert_eq!(env.status(), "completed");
    }
}
