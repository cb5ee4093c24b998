//! Built-in ops for testing the engine itself: `noop`, `sleep`, `fail`, `flaky`, `poll`, and the
//! `ledger` op whose "system" is a Redis hash, so tests can count every execution and every
//! effective application.

use std::time::Duration;

use serde_json::{Value, json};
use steward_schemas::{
    ApprovalRule, OpAccess, OpField, OpSpec, PermissionGroup, Reversibility, Rollback, System,
};

use crate::op::{BoxFuture, Op, OpContext, OpError, OpOutcome, opt_bool, opt_u64, required};
use crate::registry::Registry;

/// Registers the test ops.
pub fn register(r: &mut Registry) {
    r.register(Noop);
    r.register(Sleep);
    r.register(Fail);
    r.register(Flaky);
    r.register(Poll);
    r.register(Ledger);
    r.register(LedgerUndo);
}

/// Test ops act on nothing outside Steward; for policy they count as the `users` group.
const fn spec(
    name: &'static str,
    summary: &'static str,
    access: OpAccess,
    reversibility: Reversibility,
    inputs: &'static [OpField],
    outputs: Option<&'static [OpField]>,
) -> OpSpec {
    OpSpec {
        name,
        summary,
        access,
        group: PermissionGroup::Users,
        approval: ApprovalRule::Policy,
        system: System::Steward,
        reversibility,
        inputs,
        outputs,
        internal: false,
    }
}

/// Does nothing; returns `output` if given.
#[derive(Debug)]
pub struct Noop;

static NOOP: OpSpec = spec(
    "noop",
    "does nothing (returns `output` when given)",
    OpAccess::Read,
    Reversibility::NotNeeded,
    &[OpField::optional("output", "a value to return as the step's output").any()],
    None,
);

impl Op for Noop {
    fn spec(&self) -> &OpSpec {
        &NOOP
    }

    fn run<'a>(
        &'a self,
        _cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            Ok(OpOutcome::done(
                input.get("output").cloned().unwrap_or_else(|| json!({})),
            ))
        })
    }
}

/// Sleeps, then succeeds.
#[derive(Debug)]
pub struct Sleep;

static SLEEP: OpSpec = spec(
    "sleep",
    "waits `ms` milliseconds, then succeeds",
    OpAccess::Read,
    Reversibility::NotNeeded,
    &[OpField::required("ms", "how long to sleep, in milliseconds").integer(0, 3_600_000)],
    Some(&[OpField::required("slept_ms", "how long it slept").integer(0, 3_600_000)]),
);

impl Op for Sleep {
    fn spec(&self) -> &OpSpec {
        &SLEEP
    }

    fn run<'a>(
        &'a self,
        _cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let ms =
                opt_u64(&input, "ms")?.ok_or_else(|| OpError::bad_input("ms", "is missing"))?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(OpOutcome::done(json!({ "slept_ms": ms })))
        })
    }
}

/// Always fails.
#[derive(Debug)]
pub struct Fail;

static FAIL: OpSpec = spec(
    "fail",
    "always fails with `message` (retryable when `retryable` is true)",
    OpAccess::Read,
    Reversibility::NotNeeded,
    &[
        OpField::optional("message", "the error message"),
        OpField::optional(
            "retryable",
            "whether the failure is retryable (default false)",
        )
        .boolean(),
    ],
    Some(&[]),
);

impl Op for Fail {
    fn spec(&self) -> &OpSpec {
        &FAIL
    }

    fn run<'a>(
        &'a self,
        _cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let message = input
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("failed as asked")
                .to_owned();
            if opt_bool(&input, "retryable")?.unwrap_or(false) {
                Err(OpError::retryable(message))
            } else {
                Err(OpError::terminal(message))
            }
        })
    }
}

/// Fails the first `times` attempts, then succeeds.
#[derive(Debug)]
pub struct Flaky;

static FLAKY: OpSpec = spec(
    "flaky",
    "fails (retryably) while the attempt number is at most `times`, then succeeds",
    OpAccess::Read,
    Reversibility::NotNeeded,
    &[OpField::required("times", "how many attempts fail").integer(0, 100)],
    Some(&[OpField::required("attempt", "the attempt that succeeded").integer(1, 101)]),
);

impl Op for Flaky {
    fn spec(&self) -> &OpSpec {
        &FLAKY
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let times = opt_u64(&input, "times")?
                .ok_or_else(|| OpError::bad_input("times", "is missing"))?;
            if u64::from(cx.attempt.get()) <= times {
                return Err(OpError::retryable(format!(
                    "flaky: attempt {} of {times} failing",
                    cx.attempt
                )));
            }
            Ok(OpOutcome::done(json!({ "attempt": cx.attempt.get() })))
        })
    }
}

/// Answers "not yet" `times` times, then succeeds.
#[derive(Debug)]
pub struct Poll;

static POLL: OpSpec = spec(
    "poll",
    "answers \"not yet\" `times` times (checking again after `check_after_ms`), then succeeds",
    OpAccess::Read,
    Reversibility::NotNeeded,
    &[
        OpField::required("times", "how many checks answer \"not yet\"").integer(0, 10_000),
        OpField::optional(
            "check_after_ms",
            "when to check again, in milliseconds (default 1000)",
        )
        .integer(1, 86_400_000),
    ],
    Some(&[OpField::required("polls", "how many checks answered \"not yet\"").integer(0, 10_000)]),
);

impl Op for Poll {
    fn spec(&self) -> &OpSpec {
        &POLL
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let times = opt_u64(&input, "times")?
                .ok_or_else(|| OpError::bad_input("times", "is missing"))?;
            let after = opt_u64(&input, "check_after_ms")?.unwrap_or(1000);
            if u64::from(cx.polls) < times {
                return Ok(OpOutcome::Pending {
                    check_after: Duration::from_millis(after),
                    note: Some(format!("check {} of {}", cx.polls + 1, times + 1)),
                });
            }
            Ok(OpOutcome::done(json!({ "polls": cx.polls })))
        })
    }
}

/// Records a change in a Redis "system", once per (run, step), however often it runs.
///
/// Keys (in the `{ledger}` slot of the namespace): `exec` (a list: one entry per execution),
/// `applied` (a list: one entry per effective change), `state` (a hash: the system's state,
/// `run/step → value`), `undone` (a list: one entry per effective undo).
#[derive(Debug)]
pub struct Ledger;

static LEDGER: OpSpec = spec(
    "ledger",
    "records `value` under `key` in the test ledger, once per run and step",
    OpAccess::Write,
    Reversibility::Reversible,
    &[
        OpField::required("key", "what to record it under"),
        OpField::optional("value", "what to record (default true)").any(),
        OpField::optional(
            "sleep_ms",
            "wait this long before applying (to crash before the change)",
        )
        .integer(0, 3_600_000),
        OpField::optional(
            "hold_ms",
            "wait this long after applying, before reporting (to crash between the change and its report)",
        )
        .integer(0, 3_600_000),
        OpField::optional("irreversible", "record the change as irreversible").boolean(),
        OpField::optional("undo_fails", "make the undo fail").boolean(),
        OpField::optional(
            "undo_blocked_by",
            "make the undo fail while this flag is in the ledger's blocks set (a cause a technician can fix)",
        ),
    ],
    Some(&[
        OpField::required("key", "the key"),
        OpField::required(
            "applied",
            "whether this execution made the change (false: already made)",
        )
        .boolean(),
    ]),
);

/// Applies the change once: HSETNX the state, and log the execution and the application.
const LEDGER_APPLY: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[3])
local fresh = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
if fresh == 1 then redis.call('RPUSH', KEYS[3], ARGV[1]) end
return fresh
";

/// Undoes the change once.
const LEDGER_UNDO: &str = r"
local gone = redis.call('HDEL', KEYS[1], ARGV[1])
if gone == 1 then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return gone
";

/// The ledger's Redis keys under `namespace`.
pub fn ledger_keys(namespace: &str) -> [String; 4] {
    ["exec", "state", "applied", "undone"].map(|k| format!("{namespace}:{{ledger}}:{k}"))
}

/// The ledger's set of flags that make undos with `undo_blocked_by` fail while present.
pub fn ledger_blocks_key(namespace: &str) -> String {
    format!("{namespace}:{{ledger}}:blocks")
}

fn ledger_conn(cx: &OpContext) -> Result<crate::RedisConn, OpError> {
    cx.services
        .redis
        .clone()
        .ok_or_else(|| OpError::terminal("the ledger op needs Redis, and this worker has none"))
}

impl Op for Ledger {
    fn spec(&self) -> &OpSpec {
        &LEDGER
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let key = required(&input, "key")?
                .as_str()
                .ok_or_else(|| OpError::bad_input("key", "must be text"))?
                .to_owned();
            let value = input.get("value").cloned().unwrap_or(Value::Bool(true));
            if let Some(ms) = opt_u64(&input, "sleep_ms")? {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut conn = ledger_conn(cx)?;
            let [exec, state, applied, _] = ledger_keys(&cx.services.namespace);
            let field = cx.idempotency_key();
            let execution = format!("{field}/{}/{}", cx.attempt, cx.seq);
            let fresh: i64 = redis::Script::new(LEDGER_APPLY)
                .key(&exec)
                .key(&state)
                .key(&applied)
                .arg(&field)
                .arg(value.to_string())
                .arg(&execution)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| OpError::retryable(format!("ledger unavailable: {e}")))?;
            if let Some(ms) = opt_u64(&input, "hold_ms")? {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let prior = json!({ "present": fresh == 0 });
            let rollback = if opt_bool(&input, "irreversible")?.unwrap_or(false) {
                Rollback::Irreversible {
                    reason: format!("ledger entry `{key}` is marked irreversible"),
                    prior,
                }
            } else {
                Rollback::Inverse {
                    op: "ledger.undo".to_owned(),
                    input: json!({
                        "field": field,
                        "fail": opt_bool(&input, "undo_fails")?.unwrap_or(false),
                        "blocked_by": input.get("undo_blocked_by").cloned().unwrap_or(Value::Null),
                    }),
                    prior,
                }
            };
            Ok(OpOutcome::Succeeded {
                output: json!({ "key": key, "applied": fresh == 1 }),
                rollback,
            })
        })
    }
}

/// The ledger op's inverse.
#[derive(Debug)]
pub struct LedgerUndo;

static LEDGER_UNDO_SPEC: OpSpec = OpSpec {
    name: "ledger.undo",
    summary: "removes a ledger entry (the inverse of `ledger`)",
    access: OpAccess::Write,
    group: PermissionGroup::Users,
    approval: ApprovalRule::Policy,
    system: System::Steward,
    reversibility: Reversibility::NotNeeded,
    inputs: &[
        OpField::required("field", "the entry to remove"),
        OpField::optional("fail", "fail instead").boolean(),
        OpField::optional(
            "blocked_by",
            "fail while this flag is in the ledger's blocks set",
        ),
    ],
    outputs: Some(&[OpField::required("removed", "whether this execution removed it").boolean()]),
    internal: true,
};

impl Op for LedgerUndo {
    fn spec(&self) -> &OpSpec {
        &LEDGER_UNDO_SPEC
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            if opt_bool(&input, "fail")?.unwrap_or(false) {
                return Err(OpError::terminal(
                    "the ledger refused the undo (as the step asked)",
                ));
            }
            let field = required(&input, "field")?
                .as_str()
                .ok_or_else(|| OpError::bad_input("field", "must be text"))?
                .to_owned();
            let mut conn = ledger_conn(cx)?;
            if let Some(flag) = input.get("blocked_by").and_then(Value::as_str) {
                let blocked: bool = redis::cmd("SISMEMBER")
                    .arg(ledger_blocks_key(&cx.services.namespace))
                    .arg(flag)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| OpError::retryable(format!("ledger unavailable: {e}")))?;
                if blocked {
                    return Err(OpError::terminal(format!(
                        "the ledger refused the undo: `{flag}` blocks it"
                    )));
                }
            }
            let [_, state, _, undone] = ledger_keys(&cx.services.namespace);
            let gone: i64 = redis::Script::new(LEDGER_UNDO)
                .key(&state)
                .key(&undone)
                .arg(&field)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| OpError::retryable(format!("ledger unavailable: {e}")))?;
            Ok(OpOutcome::done(json!({ "removed": gone == 1 })))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_core::Catalog;
    use steward_schemas::{Attempt, Phase, RunId, StepId};

    fn cx(attempt: u32, polls: u32) -> OpContext {
        OpContext {
            run_id: RunId::from_ulid(Default::default()),
            company: "contoso".parse().unwrap(),
            step: StepId::parse("s").unwrap(),
            phase: Phase::Run,
            attempt: Attempt::new(attempt).unwrap(),
            polls,
            seq: 1,
            services: Default::default(),
            settings: None,
        }
    }

    #[tokio::test]
    async fn test_ops_behave_as_documented() {
        let reg = Registry::builtin();
        let run = |name: &str, cx: OpContext, input: Value| {
            let op = reg.get(name).unwrap().clone();
            async move { op.run(&cx, input).await }
        };
        assert_eq!(
            run("noop", cx(1, 0), json!({"output": {"a": 1}})).await,
            Ok(OpOutcome::done(json!({"a": 1})))
        );
        assert!(matches!(
            run("fail", cx(1, 0), json!({})).await,
            Err(OpError::Terminal { .. })
        ));
        assert!(matches!(
            run("fail", cx(1, 0), json!({"retryable": true})).await,
            Err(OpError::Retryable { .. })
        ));
        assert!(matches!(
            run("flaky", cx(2, 0), json!({"times": 2})).await,
            Err(OpError::Retryable { .. })
        ));
        assert_eq!(
            run("flaky", cx(3, 0), json!({"times": 2})).await,
            Ok(OpOutcome::done(json!({"attempt": 3})))
        );
        assert!(
            matches!(run("poll", cx(1, 1), json!({"times": 2, "check_after_ms": 5})).await,
            Ok(OpOutcome::Pending { check_after, .. }) if check_after == Duration::from_millis(5))
        );
        assert_eq!(
            run("poll", cx(1, 2), json!({"times": 2})).await,
            Ok(OpOutcome::done(json!({"polls": 2})))
        );
        let err = run("flaky", cx(1, 0), json!({"times": "x"}))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("input `times`: expected a whole number"),
            "{err}"
        );
        let err = run("ledger", cx(1, 0), json!({"key": "k"}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("needs Redis"), "{err}");
        assert!(reg.op_names().contains(&"ledger"));
        assert!(
            !reg.op_names().contains(&"ledger.undo"),
            "internal ops are not offered to workflows"
        );
    }
}
