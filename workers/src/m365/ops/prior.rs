//! The state a step saw before its first change, kept across its attempts.
//!
//! An op checks before it acts, so a retried attempt does not change things twice. But a retry
//! after a lost answer (the change was applied, the connection dropped) sees the *changed*
//! state; judged alone, it would think the change was there before and record nothing to undo.
//! So the first attempt records what it saw, before it acts, under the run and step
//! (`SET NX`: the first observation wins), and every later attempt reads that record to decide
//! the rollback. Records live 40 days (longer than any run waits), in Redis when the worker has
//! it, else in this process's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::m365::error::Error;
use crate::m365::token::SharedCache;

const TTL_SECONDS: u64 = 40 * 24 * 3600;

/// Where prior states are kept.
#[derive(Debug, Clone)]
pub struct PriorStore {
    shared: Option<SharedCache>,
    local: Arc<Mutex<HashMap<String, Value>>>,
}

impl PriorStore {
    /// Kept in Redis with `shared`, else in memory.
    pub fn new(shared: Option<SharedCache>) -> Self {
        Self {
            shared,
            local: Arc::default(),
        }
    }

    /// What is recorded under `key`, if anything.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, Error> {
        match &self.shared {
            None => Ok(self
                .local
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned()),
            Some(shared) => {
                let k = format!("{}:m365:prior:{key}", shared.namespace);
                let mut conn = shared.redis.clone();
                let stored: Option<String> = redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| Error::Redis(e.to_string()))?;
                Ok(stored.and_then(|s| serde_json::from_str(&s).ok()))
            }
        }
    }

    /// Records `observed` under `key` unless something is recorded there already; returns what
    /// is recorded (the first observation).
    pub async fn first(&self, key: &str, observed: Value) -> Result<Value, Error> {
        match &self.shared {
            None => {
                let mut m = self.local.lock().unwrap_or_else(|e| e.into_inner());
                Ok(m.entry(key.to_owned()).or_insert(observed).clone())
            }
            Some(shared) => {
                let k = format!("{}:m365:prior:{key}", shared.namespace);
                let mut conn = shared.redis.clone();
                let (_, stored): (Option<String>, Option<String>) = redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&k)
                    .arg(observed.to_string())
                    .arg("NX")
                    .arg("EX")
                    .arg(TTL_SECONDS)
                    .cmd("GET")
                    .arg(&k)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| Error::Redis(e.to_string()))?;
                Ok(stored
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(observed))
            }
        }
    }
}
