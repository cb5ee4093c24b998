//! Microsoft 365 tenant connections: stored sealed, connected through Microsoft's consent flow,
//! kept alive by the scheduled refresh, and handed to the connectors through the workers'
//! seams.
//!
//! **Store.** One hash per company (`<ns>:{tn}:c:<company>`) holds the tenant, the app's client
//! id, the app's client secret and the delegated refresh token — both sealed with the secrets
//! keyring for the tenant (`tenant-credential` + tenant + kind), so a copy moved to another
//! tenant does not open — and the tenant's status: `healthy`, `refresh_failing` (last error,
//! next try), `reconsent_needed` (a terminal AADSTS code), the last successful refresh and the
//! day Microsoft's 90-day inactivity window would close. `by-tenant` maps tenants to companies,
//! `due` orders tenants by their next scheduled refresh. Every key is in the `{tn}` slot.
//!
//! **Seams.** [`Tenants`] implements the connectors' [`TenantCredentials`]: a rotated refresh
//! token is stored with a compare-and-set script (`lua/tenant_rotate.lua`) *before* the access
//! token that came with it is used; each refresh's outcome updates the status. [`LinkSink`]
//! implements [`SecretSink`]: a password an op makes is kept sealed under its run and step (so a
//! retry uses the same one) and delivered only through a one-time secret link
//! (`GET /s/{token}`). [`KeyringSeal`] seals the shared token cache.
//!
//! **Consent** (authorization code with PKCE S256): [`Connector::start`] makes the state (256
//! random bits; Redis keeps its hash, bound to the company, the technician, the tenant and the
//! redirect URI, single-use, expiring) and the verifier (sealed in that record), and answers the
//! authorize URL; [`Connector::finish`] takes the record once (`GETDEL`), redeems the code with
//! the verifier and stores the connection. Refusals and errors come back as Microsoft sent them
//! (AADSTS code and summary), never with the code, the verifier or a token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::{Rng as _, RngCore as _};
use redis::Script;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_schemas::{CompanyId, Timestamp};
use steward_workers::m365::credentials::{self as creds, RefreshReport};
use steward_workers::m365::secret_out::{Kept, SinkError};
use steward_workers::m365::token::{self, Resource, TokenClient, TokenError};
use steward_workers::m365::{Connection, SecretSink, TenantCredentials};
use steward_workers::op::BoxFuture;

use crate::clock::Clock;
use crate::db::Db;
use crate::secrets::links::Issuer;
use crate::secrets::{Context, Keyring, LinkIssuer as _, Secret};

/// The rotation script.
const ROTATE: &str = include_str!("../lua/tenant_rotate.lua");
/// The claim script of the scheduled refresh.
const CLAIM: &str = include_str!("../lua/tenant_claim.lua");

/// Microsoft's inactivity window of a refresh token.
pub const INACTIVITY_WINDOW: Duration = Duration::from_secs(90 * 86_400);

/// How often every tenant is refreshed at least.
pub const REFRESH_EVERY: Duration = Duration::from_secs(7 * 86_400);

/// The refresh's jitter: a tenant is due between `REFRESH_EVERY - JITTER` and `REFRESH_EVERY`
/// after its last refresh, so tenants connected together do not all come due in one second.
pub const JITTER: Duration = Duration::from_secs(86_400);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why a tenant operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored credential does not open.
    #[error(transparent)]
    Open(#[from] steward_secrets::Error),
    /// The company has no tenant connection.
    #[error(
        "company `{0}` has no Microsoft 365 tenant connection; connect it: steward tenants connect {0}"
    )]
    NotConnected(String),
    /// A request the caller can fix.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
    /// The consent callback cannot be used (unknown, used or expired state), or Microsoft
    /// refused the consent.
    #[error("{0}")]
    Consent(String),
    /// The token endpoint refused or failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A record in Redis is damaged.
    #[error("the tenant connection of `{0}` is damaged: {1}")]
    Corrupt(String, String),
    /// The stored certificate credential cannot be used (expired, or its key does not open).
    #[error("the certificate of company `{0}`'s tenant connection cannot be used: {1}")]
    Certificate(String, String),
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A tenant's delegated access, as the refreshes have found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// The last refresh worked.
    Healthy,
    /// The last refresh failed in a way another try may fix; it is tried again (`next_try`).
    RefreshFailing,
    /// Microsoft refused for good (consent withdrawn, token expired or revoked): an
    /// administrator of the tenant must consent again (`steward tenants connect`).
    ReconsentNeeded,
}

impl TenantStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::RefreshFailing => "refresh_failing",
            Self::ReconsentNeeded => "reconsent_needed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "healthy" => Self::Healthy,
            "refresh_failing" => Self::RefreshFailing,
            "reconsent_needed" => Self::ReconsentNeeded,
            _ => return None,
        })
    }
}

/// The last error of a tenant's refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastError {
    /// The AADSTS code (`AADSTS700082`) or what failed.
    pub code: String,
    /// What happened, for technicians (never a secret).
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// A tenant connection as technicians see it: never a secret.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TenantView {
    /// The company.
    pub company: CompanyId,
    /// The tenant id (or the verified domain it was connected by).
    pub tenant: String,
    /// The client id of the app the connection uses.
    pub client_id: String,
    /// The tenant's status.
    pub status: TenantStatus,
    /// The status in a sentence.
    pub status_text: String,
    /// The last refresh error, while the status is not `healthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// When a failing refresh is tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_try: Option<Timestamp>,
    /// When the scheduled refresh is next due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<Timestamp>,
    /// The last successful refresh (or the consent).
    pub last_refresh: Option<Timestamp>,
    /// When Microsoft's 90-day inactivity window closes if nothing refreshes the token.
    pub window_closes: Option<Timestamp>,
    /// When the tenant was connected.
    pub connected_at: Timestamp,
    /// The technician who connected it.
    pub connected_by: String,
    /// The tenant's administrator who consented, as Microsoft named them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consented_by: Option<String>,
    /// The certificate credential app-only calls sign their client assertions with, when one
    /// is set (else the client secret is used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
}

/// A tenant connection's certificate credential (its public facts; the key is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CertificateView {
    /// The certificate's SHA-1 thumbprint (hex), as the Azure portal shows it.
    pub thumbprint: String,
    /// `RS256` or `PS256`.
    pub algorithm: String,
    /// When the certificate expires.
    pub not_after: Timestamp,
}

/// The hash fields of a certificate credential.
const CERT_FIELDS: [&str; 5] = [
    "cert_pem",
    "cert_key",
    "cert_alg",
    "cert_thumbprint",
    "cert_not_after",
];

/// Tenant connections on Redis. Cheap to clone.
#[derive(Clone)]
pub struct Tenants {
    db: Db,
    ns: String,
    ring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    rotate: Arc<Script>,
    claim: Arc<Script>,
    inbox: Option<crate::inbox::Inbox>,
}

impl fmt::Debug for Tenants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenants")
            .field("namespace", &self.ns)
            .finish_non_exhaustive()
    }
}

fn ms(t: Timestamp) -> String {
    t.as_millis().to_string()
}

impl Tenants {
    /// Tenant connections in namespace `ns`, sealed with `ring`.
    pub fn new(db: Db, ns: &str, ring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        Self {
            db,
            ns: ns.to_owned(),
            ring,
            clock,
            rotate: Arc::new(Script::new(ROTATE)),
            claim: Arc::new(Script::new(CLAIM)),
            inbox: None,
        }
    }

    /// Beside `store`'s runs, with its keyring; `None` without one.
    pub fn for_store(store: &crate::store::Store) -> Option<Self> {
        let t = Self::new(
            store.db().clone(),
            store.keys().namespace(),
            store.secrets_arc()?,
            store.clock().clone(),
        );
        Some(t.with_inbox(crate::inbox::Inbox::for_store(store)))
    }

    /// Posts an item to the admins' inbox when a tenant needs consent again.
    pub fn with_inbox(mut self, inbox: crate::inbox::Inbox) -> Self {
        self.inbox = Some(inbox);
        self
    }

    fn conn_key(&self, company: &str) -> String {
        format!("{}:{{tn}}:c:{company}", self.ns)
    }

    fn by_tenant_key(&self) -> String {
        format!("{}:{{tn}}:by-tenant", self.ns)
    }

    /// The due index of the scheduled refresh.
    fn due_key(&self) -> String {
        format!("{}:{{tn}}:due", self.ns)
    }

    fn consent_key(&self, state_hash: &str) -> String {
        format!("{}:{{tn}}:consent:{state_hash}", self.ns)
    }

    fn cx(tenant: &str, kind: &str) -> Context {
        Context::tenant_credential(&tenant.to_ascii_lowercase(), kind)
    }

    /// Stores (or replaces) a company's connection, healthy, due for refresh within a week.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_connection(
        &self,
        company: &CompanyId,
        tenant: &str,
        client_id: &str,
        client_secret: &Secret,
        refresh_token: &Secret,
        connected_by: &str,
        consented_by: Option<&str>,
    ) -> Result<()> {
        let tenant = tenant.to_ascii_lowercase();
        let now = self.clock.now();
        let key = self.conn_key(company.as_str());
        let previous: Option<String> = self
            .db
            .query(redis::cmd("HGET").arg(&key).arg("tenant"))
            .await?;
        // A certificate credential outlives a re-consent of the same app in the same tenant.
        let mut kept_cert: Vec<(&str, String)> = Vec::new();
        if previous.as_deref() == Some(tenant.as_str()) {
            let mut q = redis::cmd("HMGET");
            q.arg(&key).arg("client_id").arg(&CERT_FIELDS[..]);
            let vals: Vec<Option<String>> = self.db.query(&q).await?;
            if vals.first().cloned().flatten().as_deref() == Some(client_id)
                && vals[1..].iter().all(Option::is_some)
            {
                kept_cert = CERT_FIELDS
                    .iter()
                    .zip(vals[1..].iter().flatten())
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(prev) = previous.filter(|p| *p != tenant) {
            pipe.hdel(self.by_tenant_key(), prev).ignore();
        }
        pipe.del(&key).ignore().hset_multiple(
            &key,
            &[
                ("company", company.as_str().to_owned()),
                ("tenant", tenant.clone()),
                ("client_id", client_id.to_owned()),
                (
                    "client_secret",
                    self.ring
                        .seal(client_secret, &Self::cx(&tenant, "client_secret")),
                ),
                (
                    "refresh",
                    self.ring
                        .seal(refresh_token, &Self::cx(&tenant, "refresh_token")),
                ),
                ("status", TenantStatus::Healthy.as_str().to_owned()),
                ("last_refresh", ms(now)),
                ("connected_at", ms(now)),
                ("connected_by", connected_by.to_owned()),
                ("consented_by", consented_by.unwrap_or_default().to_owned()),
            ],
        );
        if !kept_cert.is_empty() {
            pipe.ignore().hset_multiple(&key, &kept_cert);
        }
        pipe.ignore()
            .hset(self.by_tenant_key(), &tenant, company.as_str())
            .ignore()
            .zadd(self.due_key(), company.as_str(), next_due(now).as_millis())
            .ignore();
        self.db.pipe::<()>(&pipe).await?;
        if let Some(inbox) = &self.inbox {
            inbox
                .dismiss(&format!("reconsent_needed:{company}"))
                .await?;
        }
        Ok(())
    }

    /// Sets (or replaces) the certificate credential of a company's connection: app-only
    /// token requests then send a client assertion signed with it instead of the secret. The
    /// private key is sealed for the tenant like the client secret.
    pub async fn set_certificate(
        &self,
        company: &CompanyId,
        cert: &steward_workers::m365::assertion::ClientCertificate,
    ) -> Result<TenantView> {
        let key = self.conn_key(company.as_str());
        let tenant: Option<String> = self
            .db
            .query(redis::cmd("HGET").arg(&key).arg("tenant"))
            .await?;
        let Some(tenant) = tenant else {
            return Err(Error::NotConnected(company.to_string()));
        };
        let sealed = self.ring.seal(
            &Secret::from(cert.private_key.expose().to_owned()),
            &Self::cx(&tenant, "certificate_key"),
        );
        let fields = [
            ("cert_pem", cert.certificate_pem.clone()),
            ("cert_key", sealed),
            ("cert_alg", cert.algorithm.as_str().to_owned()),
            ("cert_thumbprint", cert.thumbprint_sha1_hex.clone()),
            ("cert_not_after", (cert.not_after * 1000).to_string()),
        ];
        let _: () = self
            .db
            .query(redis::cmd("HSET").arg(&key).arg(&fields[..]))
            .await?;
        self.view(company)
            .await?
            .ok_or_else(|| Error::NotConnected(company.to_string()))
    }

    /// Removes the certificate credential (back to the client secret); whether there was one.
    pub async fn remove_certificate(&self, company: &CompanyId) -> Result<bool> {
        let removed: i64 = self
            .db
            .query(
                redis::cmd("HDEL")
                    .arg(self.conn_key(company.as_str()))
                    .arg(&CERT_FIELDS[..]),
            )
            .await?;
        Ok(removed > 0)
    }

    /// Removes a company's connection; whether there was one.
    pub async fn disconnect(&self, company: &CompanyId) -> Result<bool> {
        let key = self.conn_key(company.as_str());
        let tenant: Option<String> = self
            .db
            .query(redis::cmd("HGET").arg(&key).arg("tenant"))
            .await?;
        let Some(tenant) = tenant else {
            return Ok(false);
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .ignore()
            .hdel(self.by_tenant_key(), tenant)
            .ignore()
            .zrem(self.due_key(), company.as_str())
            .ignore();
        self.db.pipe::<()>(&pipe).await?;
        Ok(true)
    }

    async fn record(&self, company: &str) -> Result<Option<HashMap<String, String>>> {
        let rec: HashMap<String, String> = self
            .db
            .query(redis::cmd("HGETALL").arg(self.conn_key(company)))
            .await?;
        Ok((!rec.is_empty()).then_some(rec))
    }

    /// A company's connection as technicians see it.
    pub async fn view(&self, company: &CompanyId) -> Result<Option<TenantView>> {
        let Some(rec) = self.record(company.as_str()).await? else {
            return Ok(None);
        };
        let due: Option<f64> = self
            .db
            .query(
                redis::cmd("ZSCORE")
                    .arg(self.due_key())
                    .arg(company.as_str()),
            )
            .await?;
        Ok(Some(view_of(company, &rec, due)?))
    }

    /// Every connection, by company.
    pub async fn list(&self) -> Result<Vec<TenantView>> {
        let map: HashMap<String, String> = self
            .db
            .query(redis::cmd("HGETALL").arg(self.by_tenant_key()))
            .await?;
        let mut companies: Vec<String> = map.into_values().collect();
        companies.sort();
        let mut out = Vec::with_capacity(companies.len());
        for chunk in companies.chunks(500) {
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.hgetall(self.conn_key(c));
            }
            let recs: Vec<HashMap<String, String>> = self.db.pipe(&pipe).await?;
            let dues: Vec<Option<f64>> = self
                .db
                .query(redis::cmd("ZMSCORE").arg(self.due_key()).arg(chunk))
                .await?;
            for ((c, rec), due) in chunk.iter().zip(recs).zip(dues) {
                if rec.is_empty() {
                    continue;
                }
                let Ok(id) = c.parse::<CompanyId>() else {
                    continue;
                };
                out.push(view_of(&id, &rec, due)?);
            }
        }
        Ok(out)
    }

    /// The company of a tenant.
    async fn company_of(&self, tenant: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query(
                redis::cmd("HGET")
                    .arg(self.by_tenant_key())
                    .arg(tenant.to_ascii_lowercase()),
            )
            .await?)
    }

    async fn open_connection(&self, company: &str) -> Result<Option<Connection>> {
        let (tenant, client_id, secret): (Option<String>, Option<String>, Option<String>) = self
            .db
            .query(
                redis::cmd("HMGET")
                    .arg(self.conn_key(company))
                    .arg("tenant")
                    .arg("client_id")
                    .arg("client_secret"),
            )
            .await?;
        let (Some(tenant), Some(client_id), Some(secret)) = (tenant, client_id, secret) else {
            return Ok(None);
        };
        let opened = self
            .ring
            .open(&secret, &Self::cx(&tenant, "client_secret"))?;
        let (pem, key, alg): (Option<String>, Option<String>, Option<String>) = self
            .db
            .query(
                redis::cmd("HMGET")
                    .arg(self.conn_key(company))
                    .arg("cert_pem")
                    .arg("cert_key")
                    .arg("cert_alg"),
            )
            .await?;
        let certificate = match (pem, key) {
            (Some(pem), Some(key)) => {
                let key = self
                    .ring
                    .open(&key, &Self::cx(&tenant, "certificate_key"))?;
                let algorithm = alg
                    .as_deref()
                    .and_then(steward_workers::m365::assertion::Algorithm::parse)
                    .unwrap_or_default();
                Some(
                    steward_workers::m365::assertion::ClientCertificate::from_pem(
                        &pem,
                        steward_workers::m365::Secret::new(key.expose()),
                        algorithm,
                        None,
                    )
                    .map_err(|e| Error::Certificate(company.to_owned(), e.to_string()))?,
                )
            }
            _ => None,
        };
        Ok(Some(Connection {
            tenant,
            client_id,
            client_secret: steward_workers::m365::Secret::new(opened.expose()),
            certificate,
        }))
    }

    /// Marks the status after a refresh (the token client reports every delegated refresh).
    async fn on_report(&self, tenant: &str, report: RefreshReport) -> Result<()> {
        let Some(company) = self.company_of(tenant).await? else {
            return Ok(());
        };
        let key = self.conn_key(&company);
        let now = self.clock.now();
        let mut pipe = redis::pipe();
        pipe.atomic();
        match &report {
            RefreshReport::Refreshed => {
                pipe.hset_multiple(
                    &key,
                    &[
                        ("status", TenantStatus::Healthy.as_str().to_owned()),
                        ("last_refresh", ms(now)),
                        ("failures", "0".to_owned()),
                    ],
                )
                .ignore()
                .hdel(&key, &["error_code", "error", "error_at", "next_try"])
                .ignore()
                .zadd(self.due_key(), &company, next_due(now).as_millis())
                .ignore();
            }
            RefreshReport::Failing { code, message } => {
                let failures: Option<String> = self
                    .db
                    .query(redis::cmd("HGET").arg(&key).arg("failures"))
                    .await?;
                let failures = failures.and_then(|s| s.parse::<u32>().ok());
                let failures = failures.unwrap_or(0) + 1;
                let next = now.plus(backoff(failures));
                pipe.hset_multiple(
                    &key,
                    &[
                        ("status", TenantStatus::RefreshFailing.as_str().to_owned()),
                        ("error_code", code.clone()),
                        ("error", message.clone()),
                        ("error_at", ms(now)),
                        ("failures", failures.to_string()),
                        ("next_try", ms(next)),
                    ],
                )
                .ignore()
                .zadd(self.due_key(), &company, next.as_millis())
                .ignore();
            }
            RefreshReport::ReconsentNeeded { code, message } => {
                pipe.hset_multiple(
                    &key,
                    &[
                        ("status", TenantStatus::ReconsentNeeded.as_str().to_owned()),
                        ("error_code", code.clone()),
                        ("error", message.clone()),
                        ("error_at", ms(now)),
                    ],
                )
                .ignore()
                .hdel(&key, "next_try")
                .ignore()
                .zrem(self.due_key(), &company)
                .ignore();
            }
        }
        // Only an existing connection is updated (a report racing a disconnect writes nothing).
        let exists: bool = self.db.query(redis::cmd("EXISTS").arg(&key)).await?;
        if !exists {
            return Ok(());
        }
        self.db.pipe::<()>(&pipe).await?;
        if let (RefreshReport::ReconsentNeeded { code, message }, Some(inbox)) =
            (&report, &self.inbox)
        {
            inbox
                .post_reconsent(&company, tenant, code, message)
                .await?;
        }
        Ok(())
    }

    /// Claims up to `limit` tenants whose scheduled refresh is due, each for `lease`.
    pub async fn claim_due(&self, limit: usize, lease: Duration) -> Result<Vec<String>> {
        let now = self.clock.now();
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.due_key())
            .arg(now.as_millis())
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX))
            .arg(limit);
        Ok(self.db.script(&inv).await?)
    }

    /// Makes every connected tenant due now (`steward tenants refresh --all`, the bench).
    pub async fn make_all_due(&self) -> Result<usize> {
        let members: Vec<String> = self
            .db
            .query(redis::cmd("ZRANGE").arg(self.due_key()).arg(0).arg(-1))
            .await?;
        let now = self.clock.now().as_millis();
        for chunk in members.chunks(1000) {
            let mut pipe = redis::pipe();
            for m in chunk {
                pipe.zadd(self.due_key(), m, now).ignore();
            }
            self.db.pipe::<()>(&pipe).await?;
        }
        Ok(members.len())
    }

    /// How many tenants are due now.
    pub async fn due_count(&self) -> Result<u64> {
        Ok(self
            .db
            .query(
                redis::cmd("ZCOUNT")
                    .arg(self.due_key())
                    .arg("-inf")
                    .arg(self.clock.now().as_millis()),
            )
            .await?)
    }

    /// Refreshes one company's delegated token now, whatever is cached; the status follows.
    pub async fn refresh(&self, tokens: &TokenClient, company: &CompanyId) -> Result<TenantView> {
        let conn = self
            .open_connection(company.as_str())
            .await?
            .ok_or_else(|| Error::NotConnected(company.to_string()))?;
        // The outcome is recorded by the report the token client sends; the error is the
        // status's last error, so it is not returned here.
        let _ = tokens.refresh_delegated(&conn, Resource::Graph).await;
        self.view(company)
            .await?
            .ok_or_else(|| Error::NotConnected(company.to_string()))
    }

    /// One round of the scheduled refresh: claims up to `limit` due tenants and refreshes them,
    /// `concurrency` at a time. Returns how many were refreshed and how many failed.
    pub async fn refresh_round(
        &self,
        tokens: &TokenClient,
        limit: usize,
        concurrency: usize,
    ) -> Result<(usize, usize)> {
        use futures::StreamExt as _;
        let due = self.claim_due(limit, Duration::from_secs(300)).await?;
        if due.is_empty() {
            return Ok((0, 0));
        }
        let results: Vec<bool> = futures::stream::iter(due)
            .map(|company| async move {
                match self.open_connection(&company).await {
                    Ok(Some(conn)) => tokens
                        .refresh_delegated(&conn, Resource::Graph)
                        .await
                        .is_ok(),
                    Ok(None) => {
                        // Disconnected meanwhile: nothing to refresh.
                        let _: Result<(), _> = self
                            .db
                            .query(redis::cmd("ZREM").arg(self.due_key()).arg(&company))
                            .await;
                        false
                    }
                    Err(e) => {
                        tracing::warn!(company, error = %e, "cannot read a tenant connection to refresh it");
                        false
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let ok = results.iter().filter(|r| **r).count();
        Ok((ok, results.len() - ok))
    }
}

/// When a tenant refreshed at `now` is next due: within [`REFRESH_EVERY`], jittered.
fn next_due(now: Timestamp) -> Timestamp {
    let jitter = rand::rng().random_range(0..JITTER.as_millis() as u64);
    now.plus(REFRESH_EVERY - Duration::from_millis(jitter))
}

/// The wait before the `failures`-th retry of a failing refresh: 1 min doubling to 6 h.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(60).saturating_mul(1 << failures.min(10).saturating_sub(1));
    base.min(Duration::from_secs(6 * 3600))
}

fn view_of(
    company: &CompanyId,
    rec: &HashMap<String, String>,
    due: Option<f64>,
) -> Result<TenantView> {
    let get = |k: &str| rec.get(k).filter(|v| !v.is_empty()).cloned();
    let time = |k: &str| {
        rec.get(k)
            .and_then(|v| v.parse::<i64>().ok())
            .map(Timestamp::from_millis)
    };
    let status = get("status")
        .and_then(|s| TenantStatus::parse(&s))
        .ok_or_else(|| Error::Corrupt(company.to_string(), "no status".to_owned()))?;
    let last_refresh = time("last_refresh");
    let window_closes = last_refresh.map(|t| t.plus(INACTIVITY_WINDOW));
    let last_error = match (get("error_code"), get("error"), time("error_at")) {
        (Some(code), Some(message), Some(at)) if status != TenantStatus::Healthy => {
            Some(LastError { code, message, at })
        }
        _ => None,
    };
    let next_try = time("next_try").filter(|_| status == TenantStatus::RefreshFailing);
    let next_refresh = due
        .map(|d| Timestamp::from_millis(d as i64))
        .filter(|_| status != TenantStatus::ReconsentNeeded);
    let tenant = get("tenant").unwrap_or_default();
    let status_text = match status {
        TenantStatus::Healthy => format!(
            "healthy: delegated access works; Microsoft's inactivity window closes {}",
            window_closes.map_or_else(|| "(unknown)".to_owned(), |t| t.to_string())
        ),
        TenantStatus::RefreshFailing => format!(
            "refresh failing ({}): tried again at {}",
            last_error.as_ref().map_or("?", |e| e.code.as_str()),
            next_try.map_or_else(|| "(unknown)".to_owned(), |t| t.to_string())
        ),
        TenantStatus::ReconsentNeeded => format!(
            "reconsent needed ({}): an administrator of tenant {tenant} must consent again: steward tenants connect {company}",
            last_error.as_ref().map_or("?", |e| e.code.as_str()),
        ),
    };
    Ok(TenantView {
        company: company.clone(),
        tenant,
        client_id: get("client_id").unwrap_or_default(),
        status,
        status_text,
        last_error,
        next_try,
        next_refresh,
        last_refresh,
        window_closes,
        connected_at: time("connected_at").unwrap_or_default(),
        connected_by: get("connected_by").unwrap_or_default(),
        consented_by: get("consented_by"),
        certificate: match (
            get("cert_thumbprint"),
            get("cert_alg"),
            time("cert_not_after"),
        ) {
            (Some(thumbprint), Some(algorithm), Some(not_after)) => Some(CertificateView {
                thumbprint,
                algorithm,
                not_after,
            }),
            _ => None,
        },
    })
}

fn unavailable(e: &Error) -> creds::Error {
    match e {
        Error::Certificate(..) => creds::Error::Unusable {
            tenant: String::new(),
            reason: format!(
                "{e}; fix: set a current certificate (steward tenants certificate COMPANY --cert FILE --key FILE) or remove it to use the client secret"
            ),
        },
        Error::Open(o) => creds::Error::Unusable {
            tenant: String::new(),
            reason: o.to_string(),
        },
        other => creds::Error::Unavailable(other.to_string()),
    }
}

impl TenantCredentials for Tenants {
    fn connection<'a>(
        &'a self,
        company: &'a CompanyId,
    ) -> BoxFuture<'a, Result<Option<Connection>, creds::Error>> {
        Box::pin(async move {
            self.open_connection(company.as_str())
                .await
                .map_err(|e| unavailable(&e))
        })
    }

    fn refresh_token<'a>(
        &'a self,
        tenant: &'a str,
    ) -> BoxFuture<'a, Result<Option<steward_workers::m365::Secret>, creds::Error>> {
        Box::pin(async move {
            let run = async {
                let Some(company) = self.company_of(tenant).await? else {
                    return Ok(None);
                };
                let sealed: Option<String> = self
                    .db
                    .query(
                        redis::cmd("HGET")
                            .arg(self.conn_key(&company))
                            .arg("refresh"),
                    )
                    .await?;
                let Some(sealed) = sealed else {
                    return Ok(None);
                };
                let opened = self
                    .ring
                    .open(&sealed, &Self::cx(tenant, "refresh_token"))?;
                Ok::<_, Error>(Some(steward_workers::m365::Secret::new(opened.expose())))
            };
            run.await.map_err(|e| unavailable(&e))
        })
    }

    fn rotate_refresh_token<'a>(
        &'a self,
        tenant: &'a str,
        old: &'a steward_workers::m365::Secret,
        new: &'a steward_workers::m365::Secret,
    ) -> BoxFuture<'a, Result<bool, creds::Error>> {
        Box::pin(async move {
            let run = async {
                let Some(company) = self.company_of(tenant).await? else {
                    return Ok(false);
                };
                let key = self.conn_key(&company);
                let sealed: Option<String> = self
                    .db
                    .query(redis::cmd("HGET").arg(&key).arg("refresh"))
                    .await?;
                let Some(sealed) = sealed else {
                    return Ok(false);
                };
                let cx = Self::cx(tenant, "refresh_token");
                let current = self.ring.open(&sealed, &cx)?;
                if current.expose() != old.expose() {
                    return Ok(false);
                }
                let fresh = self.ring.seal(&Secret::from(new.expose()), &cx);
                let mut inv = self.rotate.prepare_invoke();
                inv.key(&key).arg(&sealed).arg(fresh);
                let done: i64 = self.db.script(&inv).await?;
                Ok::<_, Error>(done == 1)
            };
            run.await.map_err(|e| unavailable(&e))
        })
    }

    fn report<'a>(&'a self, tenant: &'a str, report: RefreshReport) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.on_report(tenant, report).await {
                tracing::warn!(tenant, error = %e, "cannot record a tenant's refresh outcome");
            }
        })
    }
}

/// Seals the shared token cache with the keyring.
#[derive(Debug, Clone)]
pub struct KeyringSeal(pub Arc<Keyring>);

impl token::Seal for KeyringSeal {
    fn seal(&self, context: &str, plain: &str) -> Result<String, String> {
        Ok(self
            .0
            .seal_str(plain, &Context::new("token-cache", &[context])))
    }

    fn open(&self, context: &str, sealed: &str) -> Result<String, String> {
        self.0
            .open(sealed, &Context::new("token-cache", &[context]))
            .map(|s| s.expose().to_owned())
            .map_err(|e| e.to_string())
    }
}

/// Keeps the secrets ops make (initial and reset passwords) sealed under their run and step,
/// and delivers each through a one-time secret link: the op's output carries the link, never
/// the value.
#[derive(Debug, Clone)]
pub struct LinkSink {
    db: Db,
    ns: String,
    ring: Arc<Keyring>,
    issuer: Issuer,
    ttl: Duration,
}

#[derive(Serialize, Deserialize)]
struct KeptRecord {
    /// The secret, sealed for the key.
    s: String,
    /// The link, sealed for the key.
    u: String,
}

impl LinkSink {
    /// A sink issuing links through `issuer`, which work for `ttl`.
    pub fn new(db: Db, ns: &str, ring: Arc<Keyring>, issuer: Issuer, ttl: Duration) -> Self {
        Self {
            db,
            ns: ns.to_owned(),
            ring,
            issuer,
            ttl,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:m365:kept:{{{key}}}", self.ns)
    }

    fn open(&self, key: &str, raw: &str) -> Result<Kept, SinkError> {
        let rec: KeptRecord = serde_json::from_str(raw)
            .map_err(|_| SinkError("a kept secret is damaged".to_owned()))?;
        let cx = Context::new("kept-secret", &[key]);
        let s = self
            .ring
            .open(&rec.s, &cx)
            .map_err(|e| SinkError(e.to_string()))?;
        let u = self
            .ring
            .open(&rec.u, &cx)
            .map_err(|e| SinkError(e.to_string()))?;
        Ok(Kept {
            secret: steward_workers::m365::Secret::new(s.expose()),
            reference: u.expose().to_owned(),
        })
    }

    async fn keep_inner(
        &self,
        key: &str,
        label: &str,
        candidate: steward_workers::m365::Secret,
    ) -> Result<Kept, SinkError> {
        let redis_key = self.key(key);
        let err = |e: redis::RedisError| SinkError(format!("redis: {}", e.category()));
        let existing: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(&redis_key))
            .await
            .map_err(err)?;
        if let Some(raw) = existing {
            return self.open(key, &raw);
        }
        let value = Secret::from(candidate.expose());
        let link = self.issuer.issue(&value, label).await.map_err(SinkError)?;
        let cx = Context::new("kept-secret", &[key]);
        let rec = KeptRecord {
            s: self.ring.seal(&value, &cx),
            u: self.ring.seal(&link.url, &cx),
        };
        let text = serde_json::to_string(&rec).map_err(|e| SinkError(e.to_string()))?;
        let set: Option<String> = self
            .db
            .query(
                redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(text)
                    .arg("NX")
                    .arg("PX")
                    .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)),
            )
            .await
            .map_err(err)?;
        if set.is_some() {
            return Ok(Kept {
                secret: candidate,
                reference: link.url.expose().to_owned(),
            });
        }
        // Another attempt of the same step kept one first: use that one (the link made here
        // burns itself unread).
        let raw: Option<String> = self
            .db
            .query(redis::cmd("GET").arg(&redis_key))
            .await
            .map_err(err)?;
        self.open(
            key,
            &raw.ok_or_else(|| SinkError("a kept secret vanished".to_owned()))?,
        )
    }
}

impl SecretSink for LinkSink {
    fn keep<'a>(
        &'a self,
        key: &'a str,
        label: &'a str,
        candidate: steward_workers::m365::Secret,
    ) -> BoxFuture<'a, Result<Kept, SinkError>> {
        Box::pin(self.keep_inner(key, label, candidate))
    }
}

/// What the consent flow needs besides the store: the token client, Steward's app, the
/// callback URL.
#[derive(Clone)]
pub struct Connector {
    /// The connections.
    pub tenants: Tenants,
    /// The token client (the same one the connectors use).
    pub tokens: TokenClient,
    /// Steward's app: client id and secret, when configured.
    pub app: Option<(String, Secret)>,
    /// The callback URL Microsoft redirects to.
    pub redirect_uri: String,
    /// How long a consent URL works.
    pub consent_ttl: Duration,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("redirect_uri", &self.redirect_uri)
            .field("app", &self.app.as_ref().map(|(id, _)| id))
            .finish_non_exhaustive()
    }
}

/// A consent URL just made.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ConsentStart {
    /// The company.
    pub company: CompanyId,
    /// The tenant consent is asked in.
    pub tenant: String,
    /// Open this as an administrator of the tenant, and consent.
    pub consent_url: String,
    /// Until when the URL works (once).
    pub expires_at: Timestamp,
}

/// What a consent asks for, kept (sealed where secret) under the hash of its state.
#[derive(Serialize, Deserialize)]
struct Pending {
    company: String,
    technician: String,
    tenant: String,
    client_id: String,
    /// The client secret, sealed (for the state).
    secret: String,
    /// The PKCE verifier, sealed (for the state).
    verifier: String,
    redirect_uri: String,
}

fn random_b64(bytes: usize) -> Secret {
    let mut raw = zeroize::Zeroizing::new(vec![0u8; bytes]);
    rand::rng().fill_bytes(&mut raw);
    Secret::new(B64.encode(&raw[..]))
}

fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Connector {
    /// Starts a consent: the authorize URL for `tenant`, bound to `company` and `technician`.
    /// `app` overrides Steward's configured app (a company with its own app registration).
    pub async fn start(
        &self,
        company: &CompanyId,
        technician: &str,
        tenant: &str,
        app: Option<(String, Secret)>,
    ) -> Result<ConsentStart> {
        let tenant = tenant.trim();
        if tenant.is_empty()
            || tenant.len() > 253
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            return Err(Error::Invalid {
                field: "tenant",
                message: format!("`{tenant}` is not a tenant id or domain"),
                fix: "give the tenant's id (a GUID) or a verified domain (contoso.onmicrosoft.com)"
                    .to_owned(),
            });
        }
        let Some((client_id, client_secret)) = app.or_else(|| self.app.clone()) else {
            return Err(Error::Invalid {
                field: "client_id",
                message: "no app registration is configured and the request names none".to_owned(),
                fix: "set m365.client-id and STEWARD_M365__CLIENT_SECRET on the server (Steward's multi-tenant app), or send client_id and client_secret".to_owned(),
            });
        };
        let state = random_b64(32);
        let verifier = random_b64(32);
        let challenge = B64.encode(Sha256::digest(verifier.expose().as_bytes()));
        let state_hash = hash(state.expose());
        let cx = Context::new("tenant-consent", &[&state_hash]);
        let pending = Pending {
            company: company.as_str().to_owned(),
            technician: technician.to_owned(),
            tenant: tenant.to_ascii_lowercase(),
            client_id: client_id.clone(),
            secret: self.tenants.ring.seal(&client_secret, &cx),
            verifier: self.tenants.ring.seal(&verifier, &cx),
            redirect_uri: self.redirect_uri.clone(),
        };
        let text = serde_json::to_string(&pending)
            .map_err(|e| Error::Corrupt(company.to_string(), e.to_string()))?;
        let now = self.tenants.clock.now();
        let expires_at = now.plus(self.consent_ttl);
        self.tenants
            .db
            .query::<()>(
                redis::cmd("SET")
                    .arg(self.tenants.consent_key(&state_hash))
                    .arg(text)
                    .arg("PXAT")
                    .arg(expires_at.as_millis()),
            )
            .await?;
        let mut url = self.tokens.authorize_url(tenant)?;
        url.query_pairs_mut()
            .append_pair("client_id", &client_id)
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("response_mode", "query")
            .append_pair("scope", token::CONSENT_SCOPE)
            .append_pair("state", state.expose())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("prompt", "consent");
        Ok(ConsentStart {
            company: company.clone(),
            tenant: tenant.to_owned(),
            consent_url: url.to_string(),
            expires_at,
        })
    }

    /// Finishes a consent from Microsoft's redirect: the state is used up whatever happens;
    /// a code is redeemed and the connection stored.
    pub async fn finish(
        &self,
        state: &str,
        code: Option<&str>,
        error: Option<&str>,
        error_description: Option<&str>,
    ) -> Result<TenantView> {
        let state_hash = hash(state);
        let raw: Option<String> = self
            .tenants
            .db
            .query(redis::cmd("GETDEL").arg(self.tenants.consent_key(&state_hash)))
            .await?;
        let Some(raw) = raw else {
            return Err(Error::Consent(
                "this consent link is unknown, was already used, or expired; start again: steward tenants connect COMPANY".to_owned(),
            ));
        };
        let pending: Pending = serde_json::from_str(&raw)
            .map_err(|e| Error::Corrupt("(consent)".to_owned(), e.to_string()))?;
        if let Some(error) = error {
            // Microsoft's description starts `AADSTSnnnn: <sentence>. Trace ID: …`.
            let summary = error_description
                .unwrap_or_default()
                .split(" Trace ID:")
                .next()
                .unwrap_or_default()
                .trim();
            return Err(Error::Consent(format!(
                "Microsoft did not grant consent for company `{}` ({error}): {summary}; an administrator of tenant {} must accept the consent: steward tenants connect {}",
                pending.company, pending.tenant, pending.company
            )));
        }
        let Some(code) = code.filter(|c| !c.is_empty()) else {
            return Err(Error::Consent(
                "Microsoft's answer holds neither a code nor an error".to_owned(),
            ));
        };
        let cx = Context::new("tenant-consent", &[&state_hash]);
        let secret = self.tenants.ring.open(&pending.secret, &cx)?;
        let verifier = self.tenants.ring.open(&pending.verifier, &cx)?;
        let conn = Connection {
            tenant: pending.tenant.clone(),
            client_id: pending.client_id.clone(),
            client_secret: steward_workers::m365::Secret::new(secret.expose()),
            certificate: None,
        };
        let redeemed = self
            .tokens
            .redeem_code(
                &conn,
                &steward_workers::m365::Secret::new(code),
                &pending.redirect_uri,
                &steward_workers::m365::Secret::new(verifier.expose()),
            )
            .await?;
        let company: CompanyId = pending
            .company
            .parse()
            .map_err(|_| Error::Corrupt(pending.company.clone(), "company id".to_owned()))?;
        let tenant = redeemed.tenant_id.clone().unwrap_or(pending.tenant);
        self.tenants
            .store_connection(
                &company,
                &tenant,
                &pending.client_id,
                &secret,
                &Secret::from(redeemed.refresh_token.expose()),
                &pending.technician,
                redeemed.user.as_deref(),
            )
            .await?;
        self.tenants
            .view(&company)
            .await?
            .ok_or_else(|| Error::NotConnected(company.to_string()))
    }
}

/// The connectors of a `steward serve` or `steward worker`: the Microsoft 365 clients on the
/// encrypted tenant store, with passwords delivered by one-time links.
#[derive(Debug, Clone)]
pub struct Connectors {
    /// The clients the cloud ops use.
    pub m365: steward_workers::m365::M365,
    /// The tenant store.
    pub tenants: Tenants,
    /// The consent flow.
    pub connector: Connector,
}

/// Builds the connectors from the configuration. `public_url` is the API's (links and the
/// consent callback start with it).
pub fn build(
    store: &crate::store::Store,
    config: &crate::config::Config,
    public_url: &str,
) -> Result<Connectors, String> {
    let ring = store
        .secrets_arc()
        .ok_or("the Microsoft 365 connectors need a secrets key (secrets.key-dir)")?;
    let tenants = Tenants::for_store(store).ok_or("no secrets key")?;
    let (login, graph, outlook) = config.m365_bases();
    let m365_config = steward_workers::m365::Config::with_bases(&login, &graph, &outlook)
        .map_err(|e| e.to_string())?;
    let links = crate::secrets::links::SecretLinks::for_store(store).ok_or("no secrets key")?;
    let ttl = config.secrets.link_ttl.get();
    let sink = LinkSink::new(
        store.db().clone(),
        store.keys().namespace(),
        ring.clone(),
        links.issuer(public_url, ttl),
        ttl,
    );
    let shared = steward_workers::m365::SharedCache {
        redis: store.db().manager(),
        namespace: store.keys().namespace().to_owned(),
    };
    let m365 = steward_workers::m365::M365::new(
        m365_config,
        Arc::new(tenants.clone()),
        Arc::new(sink),
        Some(shared),
        Arc::new(KeyringSeal(ring)),
    )
    .map_err(|e| e.to_string())?;
    let app = match (&config.m365.client_id, &config.m365.client_secret) {
        (Some(id), Some(secret)) => Some((id.clone(), Secret::from(secret.0.as_str()))),
        _ => None,
    };
    let redirect_uri = config
        .m365
        .redirect_uri
        .clone()
        .unwrap_or_else(|| format!("{}/v1/tenants/callback", public_url.trim_end_matches('/')));
    let connector = Connector {
        tenants: tenants.clone(),
        tokens: m365.tokens.clone(),
        app,
        redirect_uri,
        consent_ttl: config.m365.consent_ttl.get(),
    };
    Ok(Connectors {
        m365,
        tenants,
        connector,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stops() {
        assert_eq!(backoff(1), Duration::from_secs(60));
        assert_eq!(backoff(2), Duration::from_secs(120));
        assert_eq!(backoff(30), Duration::from_secs(6 * 3600));
        let now = Timestamp::from_millis(0);
        for _ in 0..100 {
            let d = next_due(now).since(now);
            assert!(d <= REFRESH_EVERY && d > REFRESH_EVERY - JITTER, "{d:?}");
        }
    }
}
