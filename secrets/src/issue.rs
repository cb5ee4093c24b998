//! The seam through which an op hands a secret to a person: a one-time link.

use std::future::Future;
use std::pin::Pin;

use crate::Secret;

/// A one-time link just issued.
#[derive(Debug)]
pub struct IssuedLink {
    /// The link (a capability: it is a secret until it is used).
    pub url: Secret,
    /// When it burns unread (Unix milliseconds).
    pub expires_at_ms: i64,
}

/// Issues one-time secret links (the engine's `secrets::links::SecretLinks` behind its public
/// URL). An op that makes a secret a person needs — a new user's initial password — stores it
/// through this and reports only the link; the value never enters the run.
pub trait LinkIssuer: Send + Sync + std::fmt::Debug {
    /// Stores `value` behind a new link described by `label` (what it is, never the secret).
    /// The error is a message for the step's failure.
    fn issue<'a>(
        &'a self,
        value: &'a Secret,
        label: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<IssuedLink, String>> + Send + 'a>>;
}
