//! The runner side of on-prem steps: the runner jobs of this store's namespace, and waking the
//! step a runner's result belongs to.
//!
//! A step that sent a quick job waits *pending*, with a poll timer in its shard's timer index.
//! When the runner posts its result, [`wake`] fires that timer now, through the same fenced
//! transition the scheduler uses (`timer_fired`, disarming the timer in the same script): the
//! step's next check is queued at once, and a timer that already fired (the scheduler was
//! quicker, or the step moved on) is simply stale. Nothing else changes: the step reads the
//! result when it runs.

use std::sync::Arc;

use steward_schemas::{Event, RunId, StepId, StepState, TimerKey, TimerKind};
use steward_workers::onprem::{self, OnPrem};
use steward_workers::rmm::datto::{self, Datto};
use steward_workers::rmm::jobs::{Binding, Jobs};
use tracing::{debug, info};

use crate::config::Config;
use crate::store::{self, Outcome, Store};

/// The sandbox fixtures' Datto API key and secret (sandbox credentials only).
pub const SANDBOX_DATTO_KEY: &str = "SANDBOXDATTOKEY";
/// See [`SANDBOX_DATTO_KEY`].
pub const SANDBOX_DATTO_SECRET: &str = "sandbox-datto-secret";
/// The runner component's name in the sandbox and in `deploy/rmm`'s install steps.
pub const RUNNER_COMPONENT: &str = "Steward Runner";

/// Why the RMM settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(String);

/// The on-prem executor from `config`: Datto RMM from `rmm.datto-*`, or the sandbox's Datto
/// (`sandbox.url`) with the fixtures' credentials; `None` when neither is set (the worker then
/// has no on-prem ops, and they fail with the fix).
pub async fn onprem_from_config(
    config: &Config,
    store: &Store,
) -> Result<Option<OnPrem>, SetupError> {
    let r = &config.rmm;
    let sandbox = config
        .sandbox
        .url
        .as_deref()
        .map(|u| u.trim_end_matches('/'));
    let api_url = match (&r.datto_api_url, sandbox) {
        (Some(u), _) => u.clone(),
        (None, Some(sb)) => format!("{sb}/datto"),
        (None, None) => return Ok(None),
    };
    let key = r
        .datto_api_key
        .as_ref()
        .map(|s| s.0.clone())
        .or_else(|| sandbox.map(|_| SANDBOX_DATTO_KEY.to_owned()))
        .ok_or_else(|| SetupError("rmm.datto-api-key is not set; fix: set STEWARD_RMM__DATTO_API_KEY (Setup → Users → Generate API Keys in Datto RMM)".to_owned()))?;
    let secret = r
        .datto_api_secret
        .as_ref()
        .map(|s| s.0.clone())
        .or_else(|| sandbox.map(|_| SANDBOX_DATTO_SECRET.to_owned()))
        .ok_or_else(|| {
            SetupError(
                "rmm.datto-api-secret is not set; fix: set STEWARD_RMM__DATTO_API_SECRET"
                    .to_owned(),
            )
        })?;
    let component = r
        .datto_component_uid
        .clone()
        .unwrap_or_else(|| "?".to_owned());
    let mut dc = datto::Config::new(&api_url, &key, &secret, &component)
        .map_err(|e| SetupError(e.to_string()))?;
    dc.requests_per_minute = r.requests_per_minute;
    let shared = datto::Shared {
        redis: store.db().manager(),
        namespace: store.keys().namespace().to_owned(),
    };
    let mut client = Datto::new(dc, Some(shared)).map_err(|e| SetupError(e.to_string()))?;
    if r.datto_component_uid.is_none() {
        let uid = client.find_component(RUNNER_COMPONENT).await.map_err(|e| {
            SetupError(format!(
                "cannot find the `{RUNNER_COMPONENT}` component in Datto RMM ({e}); fix: import it (deploy/rmm/README.md) or set rmm.datto-component-uid"
            ))
        })?;
        client.set_component(uid);
    }
    let steward_url = r
        .steward_url
        .clone()
        .or_else(|| config.http.public_url.clone())
        .unwrap_or_else(|| format!("http://{}", config.http.listen));
    let mut oc = onprem::Config::new(&steward_url);
    oc.poll = r.poll.get();
    info!(rmm = "datto", api = %api_url, steward_url = %oc.steward_url, "on-prem ops through the RMM");
    Ok(Some(OnPrem::new(
        Arc::new(client),
        store.db().manager(),
        store.keys().namespace(),
        oc,
    )))
}

/// The runner jobs kept under `store`'s namespace.
pub fn jobs(store: &Store) -> Jobs {
    Jobs::new(store.db().manager(), store.keys().namespace())
}

/// What [`wake`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The step's check was queued now.
    Queued,
    /// The step is running right now (its job may be about to report *pending*): try again
    /// shortly.
    InFlight,
    /// The step was not waiting (it already checked, moved on, or the run ended).
    NotWaiting,
}

/// [`wake`], trying again while the step is still running (a result can arrive before the job
/// that sent the quick job has reported *pending*): at most `patience`.
pub async fn wake_soon(
    store: &Store,
    binding: &Binding,
    patience: std::time::Duration,
) -> store::Result<Woken> {
    let start = std::time::Instant::now();
    let mut wait = std::time::Duration::from_millis(5);
    loop {
        match wake(store, binding).await? {
            Woken::InFlight if start.elapsed() < patience => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(200));
            }
            other => return Ok(other),
        }
    }
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
    if binding.phase != "run" {
        return Ok(Woken::NotWaiting);
    }
    match rec.state {
        StepState::Polling { .. } => {}
        StepState::Queued { .. } => return Ok(Woken::InFlight),
        _ => return Ok(Woken::NotWaiting),
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
