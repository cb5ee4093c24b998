//! The seam through which an op hands over a secret it made (a new user's initial password, a
//! reset password) without putting it in its output, the run's history, a log or an error.
//!
//! The op asks [`SecretSink::keep`] to keep a freshly generated candidate under a key unique to
//! the run and step. The first candidate kept under a key wins: a later attempt of the same step
//! gets the *same* secret back, so a retry after a lost answer (the user was created, the answer
//! never came) never sets a different password than the one delivered. The op then uses the
//! secret and returns only the reference (`delivery: {kind, id}`), which the run may show.
//!
//! The `secrets` module implements this with encryption at rest and a one-time link
//! (`GET /s/{token}`: shown once, burnt at first read or expiry); [`MemorySink`] keeps secrets
//! in memory for tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::m365::credentials::Secret;
use crate::op::BoxFuture;

/// A secret kept for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The secret to use: the candidate, or the one kept earlier under the same key.
    pub secret: Secret,
    /// A reference to it that may be shown and stored (never the secret).
    pub reference: String,
}

/// Why a secret could not be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the secret store is unavailable: {0}")]
pub struct SinkError(pub String);

/// Keeps secrets for one-time delivery.
pub trait SecretSink: Send + Sync + fmt::Debug + 'static {
    /// Keeps `candidate` under `key` unless a secret is kept there already; returns the kept one.
    /// `label` says what it is, for the person who will receive it ("initial password of
    /// jane@contoso.com").
    fn keep<'a>(
        &'a self,
        key: &'a str,
        label: &'a str,
        candidate: Secret,
    ) -> BoxFuture<'a, Result<Kept, SinkError>>;
}

/// Secrets kept in memory (tests).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<HashMap<String, Stored>>>,
}

/// Label, secret, reference.
type Stored = (String, Secret, String);

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The secret kept under `key`, with its label (what a one-time link would show).
    pub fn read(&self, key: &str) -> Option<(String, Secret)> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).map(|(label, s, _)| (label.clone(), s.clone()))
    }

    /// The keys secrets are kept under.
    pub fn keys(&self) -> Vec<String> {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        m.keys().cloned().collect()
    }

    /// How many secrets are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SecretSink for MemorySink {
    fn keep<'a>(
        &'a self,
        key: &'a str,
        label: &'a str,
        candidate: Secret,
    ) -> BoxFuture<'a, Result<Kept, SinkError>> {
        let kept = {
            let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.len() + 1;
            let (_, secret, reference) = m
                .entry(key.to_owned())
                .or_insert_with(|| (label.to_owned(), candidate, format!("secret-{n}")));
            Kept {
                secret: secret.clone(),
                reference: reference.clone(),
            }
        };
        Box::pin(async move { Ok(kept) })
    }
}
