//! The runner side of on-prem steps: the runner jobs of this store's namespace, and waking the
//! step a runner's result belongs to.
//!
//! A step that sent a quick job waits *pending*, with a poll timer in its shard's timer index.
//! When the runner posts its result, [`wake`] fires that timer now, through the same fenced
//! transition the scheduler uses (`timer_fired`, disarming the timer in the same script): the
//! step's next check is queued at once, and a timer that already fired (the scheduler was
//! quicker, or the step moved on) is simply stale. Nothing else changes: the step reads the
//! result when it runs.

use steward_schemas::{Event, RunId, StepId, StepState, TimerKey, TimerKind};
use steward_workers::rmm::jobs::{Binding, Jobs};
use tracing::debug;

use crate::store::{self, Outcome, Store};

/// The runner jobs kept under `store`'s namespace.
pub fn jobs(store: &Store) -> Jobs {
    Jobs::new(store.db().manager(), store.keys().namespace())
}

/// What [`wake`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The step's check was queued now.
    Queued,
    /// The step was not waiting (it already checked, moved on, or the run ended).
    NotWaiting,
}

/// Wakes the step `binding` names, if it is waiting for a check.
pub async fn wake(store: &Store, binding: &Binding) -> store::Result<Woken> {
    let (Ok(run), Ok(step)) = (binding.run.parse::<RunId>(), StepId::parse(&binding.step)) else {
        return Ok(Woken::NotWaiting);
    };
    let Some(snap) = store.load(run).await? else {
        return Ok(Woken::NotWaiting);
    };
    let Some(rec) = snap.doc.state.steps.get(&step) else {
        return Ok(Woken::NotWaiting);
    };
    if !matches!(rec.state, StepState::Polling { .. }) || binding.phase != "run" {
        return Ok(Woken::NotWaiting);
    }
    let timer = TimerKey::step(TimerKind::Poll, step, rec.seq);
    let key = timer.to_string();
    let event = Event::TimerFired { timer };
    match store
        .apply(run, &event, Some(snap), None, Some(&key))
        .await?
    {
        Outcome::Applied { .. } => {
            debug!(run.id = %run, timer = %key, "runner result woke the step");
            Ok(Woken::Queued)
        }
        Outcome::Ignored { .. } | Outcome::Refused(_) => Ok(Woken::NotWaiting),
    }
}
