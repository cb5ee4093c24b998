//! Per-tenant fairness: a concurrency limit per (service, tenant), and a backoff gate that a
//! 429 or 503 closes for that tenant alone.
//!
//! Microsoft throttles per tenant (and per app per tenant), so one tenant's throttling says
//! nothing about the others: its gate closes for the `Retry-After` it was given, the others'
//! stay open. While a gate is closed, a new request for that tenant waits only if the gate opens
//! very soon (within `entry_wait`); otherwise it is not sent at all: the caller gets
//! [`Error::Throttled`] with the time left, and the step goes back to the engine's durable
//! timer, which frees the worker's place for other tenants' steps instead of holding it asleep.
//! Only the request that was itself answered 429 waits (once, up to `max_inline_wait`) before
//! trying again. Likewise a request that cannot get one of its tenant's places within
//! `queue_wait` gives up retryably. So a throttled or very busy tenant slows itself, not the
//! fleet (`tests/m365_clients.rs` measures it).
//!
//! The gates live in this process; every worker learns a tenant's throttling from its own first
//! 429.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::m365::error::{Error, Service};

/// Settings of the per-tenant gates.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Requests in flight at once per (service, tenant).
    pub per_tenant: usize,
    /// A new request finding its tenant's gate closed waits this long at most; longer closures
    /// are the engine's to wait out.
    pub entry_wait: Duration,
    /// A request answered 429 or 503 waits its `Retry-After` and tries once more if the wait is
    /// at most this; a longer wait is the engine's.
    pub max_inline_wait: Duration,
    /// How long a request waits for one of its tenant's places.
    pub queue_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            per_tenant: 4,
            entry_wait: Duration::from_millis(250),
            max_inline_wait: Duration::from_secs(5),
            queue_wait: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct Gate {
    places: Arc<Semaphore>,
    open_at: Mutex<Option<Instant>>,
}

/// The gates of every tenant this process has talked to.
#[derive(Debug)]
pub struct Throttle {
    config: Config,
    gates: Mutex<HashMap<(Service, String), Arc<Gate>>>,
}

/// One of a tenant's places, held while its request is in flight.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
}

impl Throttle {
    /// Gates with `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            gates: Mutex::new(HashMap::new()),
        }
    }

    /// The settings.
    pub fn config(&self) -> Config {
        self.config
    }

    fn gate(&self, service: Service, tenant: &str) -> Arc<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry((service, tenant.to_ascii_lowercase()))
            .or_insert_with(|| {
                Arc::new(Gate {
                    places: Arc::new(Semaphore::new(self.config.per_tenant.max(1))),
                    open_at: Mutex::new(None),
                })
            })
            .clone()
    }

    /// How long until the tenant's gate opens (zero when open).
    pub fn closed_for(&self, service: Service, tenant: &str) -> Duration {
        let gate = self.gate(service, tenant);
        let open_at = *gate.open_at.lock().unwrap_or_else(|e| e.into_inner());
        open_at.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        })
    }

    async fn wait_open(&self, gate: &Gate, service: Service, tenant: &str) -> Result<(), Error> {
        loop {
            let open_at = *gate.open_at.lock().unwrap_or_else(|e| e.into_inner());
            let left = open_at.map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Ok(());
            }
            if left > self.config.entry_wait {
                return Err(Error::Throttled {
                    service,
                    tenant: tenant.to_owned(),
                    retry_after: left,
                });
            }
            tokio::time::sleep(left).await;
        }
    }

    /// Waits for the tenant's gate and one of its places.
    pub async fn enter(&self, service: Service, tenant: &str) -> Result<Place, Error> {
        let gate = self.gate(service, tenant);
        self.wait_open(&gate, service, tenant).await?;
        let permit =
            tokio::time::timeout(self.config.queue_wait, gate.places.clone().acquire_owned())
                .await
                .map_err(|_| Error::Throttled {
                    service,
                    tenant: tenant.to_owned(),
                    retry_after: Duration::from_secs(1),
                })?
                .expect("the semaphore is never closed");
        // The gate may have closed while this request queued.
        self.wait_open(&gate, service, tenant).await?;
        Ok(Place { _permit: permit })
    }

    /// Closes the tenant's gate for `wait` (never shortens a longer closure).
    pub fn close(&self, service: Service, tenant: &str, wait: Duration) {
        let gate = self.gate(service, tenant);
        let until = Instant::now() + wait;
        let mut open_at = gate.open_at.lock().unwrap_or_else(|e| e.into_inner());
        if open_at.is_none_or(|t| t < until) {
            *open_at = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_closed_gate_holds_its_tenant_only() {
        let t = Throttle::new(Config {
            per_tenant: 2,
            entry_wait: Duration::from_secs(5),
            max_inline_wait: Duration::from_secs(5),
            queue_wait: Duration::from_secs(1),
        });
        t.close(Service::Graph, "a", Duration::from_secs(60));
        match t.enter(Service::Graph, "A").await {
            Err(Error::Throttled { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(59), "{retry_after:?}");
            }
            other => panic!("expected Throttled, got {other:?}"),
        }
        // Other tenants, and the same tenant on another service, are not held.
        let _b = t.enter(Service::Graph, "b").await.unwrap();
        let _a = t.enter(Service::Exchange, "a").await.unwrap();
        // A short closure is waited out.
        t.close(Service::Graph, "c", Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        let _c = t.enter(Service::Graph, "c").await.unwrap();
        assert!(start.elapsed() >= Duration::from_secs(2));
        // A closure never shrinks.
        t.close(Service::Graph, "a", Duration::from_secs(1));
        assert!(t.closed_for(Service::Graph, "a") > Duration::from_secs(50));
        // The per-tenant limit: the third request waits, then gives up retryably.
        let _d1 = t.enter(Service::Graph, "d").await.unwrap();
        let _d2 = t.enter(Service::Graph, "d").await.unwrap();
        assert!(matches!(
            t.enter(Service::Graph, "d").await,
            Err(Error::Throttled { .. })
        ));
        drop(_d1);
        assert!(t.enter(Service::Graph, "d").await.is_ok());
    }
}
