//! Microsoft 365: the identity platform's tokens, Microsoft Graph, Exchange Online, and the cloud
//! ops built on them.
//!
//! - [`token`]: app-only and delegated access tokens, cached until five minutes before they
//!   expire, fetched once per tenant however many steps and workers want one (Redis single
//!   flight), the rotated refresh token stored before it is used, AADSTS errors classified.
//! - [`graph`] and [`exo`]: the two clients, sharing one request loop ([`transport`]) with
//!   per-tenant gates ([`throttle`]), `Retry-After`, and errors classified by status and code
//!   ([`error`]), carrying the run, step and attempt in `client-request-id` ([`call`]).
//! - [`credentials`]: the seam to the encrypted credential store; [`secret_out`]: the seam
//!   through which ops hand over passwords they generate.
//! - [`ops`]: the ops, registered under the catalog's names.
//!
//! Base URLs come from [`Config`], so the same code talks to Microsoft or to the sandbox.

pub mod assertion;
pub mod call;
pub mod credentials;
pub mod error;
pub mod exo;
pub mod graph;
pub mod ops;
pub mod permissions;
pub mod secret_out;
pub mod throttle;
pub mod token;
mod transport;

use std::sync::Arc;
use std::time::Duration;

pub use call::{Call, Correlation};
pub use credentials::{Connection, MemoryCredentials, Secret, TenantCredentials};
pub use error::Error;
pub use exo::{CmdletAnswer, ExoClient};
pub use graph::{BatchAnswer, BatchRequest, GraphClient};
pub use secret_out::{MemorySink, SecretSink};
pub use token::{Grant, Resource, SharedCache, TokenClient};

/// Where Microsoft is, and how patient to be with it.
#[derive(Debug, Clone)]
pub struct Config {
    /// The identity platform: `https://login.microsoftonline.com`.
    pub login_base: url::Url,
    /// Graph v1.0: `https://graph.microsoft.com/v1.0`.
    pub graph_base: url::Url,
    /// Exchange Online: `https://outlook.office365.com`.
    pub outlook_base: url::Url,
    /// How long one request may take.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Tries per request inside one attempt (throttling, fresh token, reads).
    pub max_tries: u32,
    /// Per-tenant fairness.
    pub throttle: throttle::Config,
}

/// A base URL that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{value}` is not a valid {what} URL: {reason}; fix: give an absolute http(s) URL")]
pub struct ConfigError {
    /// Which setting.
    pub what: &'static str,
    /// The value.
    pub value: String,
    /// Why.
    pub reason: String,
}

fn parse_url(what: &'static str, value: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(value).map_err(|e| ConfigError {
        what,
        value: value.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConfigError {
            what,
            value: value.to_owned(),
            reason: "it must be an http or https URL".to_owned(),
        });
    }
    Ok(url)
}

impl Config {
    /// Microsoft's public cloud.
    pub fn microsoft() -> Self {
        Self::with_bases(
            "https://login.microsoftonline.com",
            "https://graph.microsoft.com/v1.0",
            "https://outlook.office365.com",
        )
        .expect("Microsoft's URLs parse")
    }

    /// The sandbox at `base` (`http://127.0.0.1:PORT`): its `/login`, `/graph/v1.0` and
    /// `/outlook` prefixes.
    pub fn sandbox(base: &str) -> Result<Self, ConfigError> {
        let base = base.trim_end_matches('/');
        Self::with_bases(
            &format!("{base}/login"),
            &format!("{base}/graph/v1.0"),
            &format!("{base}/outlook"),
        )
    }

    /// Explicit base URLs, default timeouts.
    pub fn with_bases(login: &str, graph: &str, outlook: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            login_base: parse_url("login", login)?,
            graph_base: parse_url("graph", graph)?,
            outlook_base: parse_url("outlook", outlook)?,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_tries: 4,
            throttle: throttle::Config::default(),
        })
    }
}

/// Everything the cloud ops share. Cheap to clone.
#[derive(Clone)]
pub struct M365 {
    /// Tokens.
    pub tokens: TokenClient,
    /// Graph.
    pub graph: GraphClient,
    /// Exchange Online.
    pub exo: ExoClient,
    /// The per-tenant gates.
    pub throttle: Arc<throttle::Throttle>,
    /// Where ops hand over the passwords they make.
    pub secrets: Arc<dyn SecretSink>,
    /// Where ops keep the state they saw before their first change (see [`ops::prior`]).
    pub prior: ops::prior::PriorStore,
}

impl std::fmt::Debug for M365 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M365")
            .field("tokens", &self.tokens)
            .field("graph", &self.graph.base().as_str())
            .finish_non_exhaustive()
    }
}

/// The HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the Microsoft 365 HTTP client: {0}")]
pub struct BuildError(#[source] reqwest::Error);

impl M365 {
    /// Builds the clients. With `shared`, tokens are single-flight across processes and the ops'
    /// prior state survives a worker's death; without it, both hold within this process only.
    pub fn new(
        config: Config,
        credentials: Arc<dyn TenantCredentials>,
        secrets: Arc<dyn SecretSink>,
        shared: Option<SharedCache>,
        seal: Arc<dyn token::Seal>,
    ) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(64)
            .user_agent(concat!("Steward/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError)?;
        let tokens = TokenClient::new(
            token::Config::new(config.login_base.clone()),
            http.clone(),
            credentials,
            shared.clone(),
            seal,
        );
        let throttle = Arc::new(throttle::Throttle::new(config.throttle));
        let transport = transport::Transport {
            http,
            tokens: tokens.clone(),
            throttle: throttle.clone(),
            max_tries: config.max_tries.max(1),
        };
        Ok(Self {
            graph: GraphClient::new(config.graph_base.clone(), transport.clone()),
            exo: ExoClient::new(config.outlook_base, transport),
            tokens,
            throttle,
            secrets,
            prior: ops::prior::PriorStore::new(shared),
        })
    }

    /// The call context of an op's job: its company's tenant connection and its correlation.
    pub async fn call_for(&self, cx: &crate::op::OpContext) -> Result<Call, Error> {
        let conn = self
            .tokens
            .credentials()
            .connection(&cx.company)
            .await?
            .ok_or_else(|| Error::NotConnected {
                company: cx.company.to_string(),
            })?;
        Ok(Call::for_op(conn, cx))
    }
}
