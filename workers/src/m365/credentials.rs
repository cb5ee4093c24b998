//! Where a tenant's credentials come from: the seam between the connectors and the store that
//! keeps them encrypted at rest.
//!
//! The connectors never hold credentials longer than a request: they ask [`TenantCredentials`]
//! for a company's [`Connection`] (tenant id and the app's client id and secret) and for the
//! tenant's delegated refresh token when a call needs a user's rights. When Microsoft rotates the
//! refresh token, the new one is handed back through [`TenantCredentials::rotate_refresh_token`]
//! *before* the access token that came with it is used, so a crash right after Microsoft's answer
//! loses nothing (the old token stays valid until its own 90 days are up).
//!
//! The encrypted store (the `secrets` module) implements this trait; [`MemoryCredentials`] is the
//! in-memory implementation for tests and for `steward sandbox` dry runs.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use steward_schemas::CompanyId;

use crate::op::BoxFuture;

/// A secret value (client secret, refresh or access token, password). Its `Debug` and `Display`
/// never show it; the only way to read it is [`Secret::expose`], at the point it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the request that needs it. Never log or store what this returns.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A company's Microsoft 365 tenant connection: what app-only calls need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The tenant id (a GUID) or a verified domain; it goes into the token endpoint's and the
    /// Exchange admin API's URLs.
    pub tenant: String,
    /// The app registration's client id (Steward's multi-tenant app, consented in the tenant).
    pub client_id: String,
    /// The app's client secret (unused, and may be empty, when `certificate` is set).
    pub client_secret: Secret,
    /// A certificate credential: when set, token requests carry a client assertion signed with
    /// it instead of the client secret.
    pub certificate: Option<crate::m365::assertion::ClientCertificate>,
}

/// Why credentials could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The store could not be reached; another attempt may work.
    #[error("the credential store is unavailable: {0}")]
    Unavailable(String),
    /// The stored credentials cannot be used (cannot be decrypted, malformed).
    #[error("the stored credentials of tenant {tenant} cannot be used: {reason}")]
    Unusable {
        /// The tenant.
        tenant: String,
        /// Why (never the secret itself).
        reason: String,
    },
}

/// What the token client reports about a tenant's delegated access, for the tenant's status
/// (`healthy`, `refresh_failing`, `reconsent_needed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshReport {
    /// A refresh succeeded.
    Refreshed,
    /// A refresh failed in a way another try may fix.
    Failing {
        /// The AADSTS code or HTTP status, e.g. `AADSTS50033`.
        code: String,
        /// What happened, for technicians.
        message: String,
    },
    /// A refresh failed for good: someone must consent again.
    ReconsentNeeded {
        /// The AADSTS code, e.g. `AADSTS700082`.
        code: String,
        /// What happened, for technicians.
        message: String,
    },
}

/// Tenant credentials, by company and by tenant.
pub trait TenantCredentials: Send + Sync + fmt::Debug + 'static {
    /// The company's tenant connection; `None` when the company has none.
    fn connection<'a>(
        &'a self,
        company: &'a CompanyId,
    ) -> BoxFuture<'a, Result<Option<Connection>, Error>>;

    /// The tenant's current delegated refresh token; `None` when delegated access was never
    /// granted.
    fn refresh_token<'a>(&'a self, tenant: &'a str)
    -> BoxFuture<'a, Result<Option<Secret>, Error>>;

    /// Replaces the tenant's refresh token `old` with `new` atomically (compare and set):
    /// `Ok(false)` when the stored token is no longer `old` (someone else rotated it), in which
    /// case nothing is written.
    fn rotate_refresh_token<'a>(
        &'a self,
        tenant: &'a str,
        old: &'a Secret,
        new: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>>;

    /// Told after each delegated refresh, so the tenant's status can follow. The default does
    /// nothing.
    fn report<'a>(&'a self, tenant: &'a str, report: RefreshReport) -> BoxFuture<'a, ()> {
        let _ = (tenant, report);
        Box::pin(async {})
    }
}

/// Credentials held in memory: for tests and sandbox dry runs.
#[derive(Debug, Clone, Default)]
pub struct MemoryCredentials {
    inner: Arc<Mutex<Memory>>,
}

#[derive(Debug, Default)]
struct Memory {
    connections: HashMap<String, Connection>,
    refresh: HashMap<String, Secret>,
    reports: Vec<(String, RefreshReport)>,
    rotations: u64,
    fail_rotation: bool,
}

impl MemoryCredentials {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects `company` to a tenant.
    pub fn connect(&self, company: &str, connection: Connection) {
        self.lock()
            .connections
            .insert(company.to_ascii_lowercase(), connection);
    }

    /// Sets a tenant's refresh token.
    pub fn set_refresh_token(&self, tenant: &str, token: Secret) {
        self.lock()
            .refresh
            .insert(tenant.to_ascii_lowercase(), token);
    }

    /// The tenant's refresh token as stored now.
    pub fn stored_refresh_token(&self, tenant: &str) -> Option<Secret> {
        self.lock()
            .refresh
            .get(&tenant.to_ascii_lowercase())
            .cloned()
    }

    /// How many rotations were stored.
    pub fn rotations(&self) -> u64 {
        self.lock().rotations
    }

    /// Every report received, oldest first.
    pub fn reports(&self) -> Vec<(String, RefreshReport)> {
        self.lock().reports.clone()
    }

    /// Makes every rotation fail as if the store were down (to test that a token whose
    /// rotation was not stored is not used).
    pub fn fail_rotations(&self, fail: bool) {
        self.lock().fail_rotation = fail;
    }
}

impl TenantCredentials for MemoryCredentials {
    fn connection<'a>(
        &'a self,
        company: &'a CompanyId,
    ) -> BoxFuture<'a, Result<Option<Connection>, Error>> {
        let found = self
            .lock()
            .connections
            .get(&company.as_str().to_ascii_lowercase())
            .cloned();
        Box::pin(async move { Ok(found) })
    }

    fn refresh_token<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>, Error>> {
        let found = self.stored_refresh_token(tenant);
        Box::pin(async move { Ok(found) })
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        tenant: &'a str,
        old: &'a Secret,
        new: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let result = {
            let mut m = self.lock();
            if m.fail_rotation {
                Err(Error::Unavailable(
                    "the test store refuses writes".to_owned(),
                ))
            } else {
                let key = tenant.to_ascii_lowercase();
                match m.refresh.get(&key) {
                    Some(current) if current == old => {
                        m.refresh.insert(key, new.clone());
                        m.rotations += 1;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
        };
        Box::pin(async move { result })
    }

    fn report<'a>(&'a self, tenant: &'a str, report: RefreshReport) -> BoxFuture<'a, ()> {
        self.lock().reports.push((tenant.to_owned(), report));
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn secrets_never_print_and_rotation_is_compare_and_set() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let conn = Connection {
            tenant: "t".into(),
            client_id: "c".into(),
            client_secret: s.clone(),
            certificate: None,
        };
        assert!(!format!("{conn:?}").contains("hunter2"));

        let m = MemoryCredentials::new();
        m.set_refresh_token("T", Secret::new("a"));
        let (a, b, c) = (Secret::new("a"), Secret::new("b"), Secret::new("c"));
        assert_eq!(m.rotate_refresh_token("t", &a, &b).await, Ok(true));
        assert_eq!(m.rotate_refresh_token("t", &a, &c).await, Ok(false));
        assert_eq!(m.stored_refresh_token("t"), Some(b));
        assert_eq!(m.rotations(), 1);
        m.fail_rotations(true);
        assert!(m.rotate_refresh_token("t", &c, &a).await.is_err());
    }
}
