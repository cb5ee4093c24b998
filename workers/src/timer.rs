//! `timer.wait`: a durable wait of whole days inside a run (e.g. "delete the account 30 days
//! after the offboarding"). The step parks as a polling step on the engine's timer index (no
//! worker holds it, nothing polls in between) and is checked again when the time comes; cancelling
//! the run ends the wait and what follows it never runs. The deadline is counted from the run's
//! creation (its id's time), so every check of every attempt agrees on it.

use std::time::Duration;

use serde_json::{Value, json};
use steward_schemas::{
    ApprovalRule, OpAccess, OpField, OpSpec, PermissionGroup, Reversibility, System, Timestamp,
};

use crate::op::{BoxFuture, Op, OpContext, OpError, OpOutcome, opt_u64};

/// The most days a run may wait: a step's `max_wait` is at most 30 days, and must cover it.
pub const MAX_DAYS: u64 = 30;

static WAIT: OpSpec = OpSpec {
    name: "timer.wait",
    summary: "wait until `days` days after the run started (durable; cancelling the run ends it)",
    access: OpAccess::Read,
    group: PermissionGroup::Users,
    approval: ApprovalRule::Policy,
    system: System::Steward,
    reversibility: Reversibility::NotNeeded,
    inputs: &[
        OpField::required("days", "how many days after the run started")
            .integer(0, MAX_DAYS as i64),
    ],
    outputs: Some(&[OpField::required("until", "when the wait ended (RFC 3339)")]),
    internal: false,
};

/// The `timer.wait` op.
#[derive(Debug)]
pub struct Wait;

/// When a run's wait of `days` ends, and how long is left at `now_ms` (None: it has ended).
pub fn deadline(run_started_ms: u64, days: u64, now_ms: u64) -> (Timestamp, Option<Duration>) {
    let until_ms = run_started_ms.saturating_add(days.saturating_mul(86_400_000));
    let until = Timestamp::from_micros(i64::try_from(until_ms).unwrap_or(i64::MAX / 1000) * 1000);
    let left = until_ms.checked_sub(now_ms).filter(|l| *l > 0);
    (until, left.map(Duration::from_millis))
}

impl Op for Wait {
    fn spec(&self) -> &OpSpec {
        &WAIT
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let days =
                opt_u64(&input, "days")?.ok_or_else(|| OpError::bad_input("days", "is missing"))?;
            if days > MAX_DAYS {
                return Err(OpError::bad_input(
                    "days",
                    "is more than 30 (a step waits at most 30 days)",
                ));
            }
            let started = cx.run_id.as_ulid().timestamp_ms();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let (until, left) = deadline(started, days, now);
            match left {
                Some(left) => Ok(OpOutcome::Pending {
                    check_after: left,
                    note: Some(format!(
                        "waiting until {until} ({days} days after the run started); cancel the run to stop what follows"
                    )),
                }),
                None => Ok(OpOutcome::done(json!({ "until": until.to_string() }))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_from_the_run_start() {
        let day = 86_400_000;
        let (until, left) = deadline(1_000, 30, 1_000 + day);
        assert_eq!(until.as_millis(), 1_000 + 30 * day as i64);
        assert_eq!(left, Some(Duration::from_millis(29 * day)));
        assert_eq!(deadline(1_000, 30, 1_000 + 30 * day).1, None);
        assert_eq!(deadline(1_000, 0, 1_000).1, None);
    }
}
