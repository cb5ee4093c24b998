//! Steward's sandbox: a simulated MSP world that speaks the real wire formats.
//!
//! One listener serves every simulated service under its own prefix, which Steward's connectors
//! take as their base URL: `/graph` (Microsoft Graph v1.0), `/login` (Microsoft identity platform
//! token endpoint), `/outlook` (Exchange Online admin API), `/datto` (Datto RMM API v2),
//! `/autotask` (Autotask REST) and `/admin` (the sandbox's own controls: reset, clock, faults,
//! ledger, snapshots, tickets, devices, jobs). See the crate README for every route.
//!
//! The world lives in memory behind one mutex held only for short, non-async sections; time comes
//! from [`clock::Clock`], which the admin API moves, so time-dependent behaviour is tested by
//! moving the clock, never by sleeping.

// Handlers return `Result<_, Response>` so that each service answers in its own envelope; boxing
// every early-return response would only add noise.
#![allow(clippy::result_large_err)]
// Nested `if`s keep each check of a multi-step validation on its own line.
#![allow(clippy::collapsible_if, clippy::collapsible_match)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};

mod admin;
mod assertion;
mod autotask;
mod clock;
pub mod connectwise;
mod datto;
mod exchange;
mod faults;
mod fixture;
mod graph;
pub mod halo;
mod http;
mod identity;
mod ids;
mod ledger;
mod onprem;
mod runner;
mod secret;
mod tls;
mod world;

pub use graph::permissions::{
    Requirement as GraphRequirement, STEWARD_APPLICATION as GRAPH_APPLICATION_PERMISSIONS,
    STEWARD_DELEGATED as GRAPH_DELEGATED_PERMISSIONS, requirement_for_path as graph_requirement,
};
pub use tls::{Tls, TlsError};

/// How to build a sandbox.
#[derive(Clone)]
pub struct Options {
    /// YAML fixture to load; `None` loads the built-in `fixtures/msp.yaml`.
    pub fixture: Option<PathBuf>,
    /// Seeds object ids and fault injection, so two runs with the same seed behave the same.
    pub seed: u64,
    /// Where Autotask ticket webhooks are delivered (none are sent when unset).
    pub webhook_url: Option<String>,
    /// The webhook's secret key, used for `X-Hook-Signature`.
    pub webhook_secret: Option<String>,
    /// Where clients reach the sandbox (`https://sandbox.example.com`, maybe behind a proxy):
    /// the origin of every absolute URL it writes (`@odata.nextLink`, `@odata.context`, the
    /// OpenID endpoints). Unset: the request's `Forwarded`/`X-Forwarded-*` headers, else its
    /// `Host` and the listener's scheme.
    pub public_url: Option<String>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("fixture", &self.fixture)
            .field("seed", &self.seed)
            .field("webhook_url", &self.webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| secret::REDACTED),
            )
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            fixture: None,
            seed: 1,
            webhook_url: None,
            webhook_secret: None,
            public_url: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Fixture(#[from] fixture::Error),
    #[error("webhook_url and webhook_secret must be given together")]
    WebhookConfig,
    #[error("invalid webhook_url {url}: {reason}")]
    WebhookUrl { url: String, reason: String },
    #[error(
        "invalid public_url {url}: {reason}; fix: give the http(s) URL clients use to reach the sandbox, such as https://sandbox.example.com"
    )]
    PublicUrl { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind 127.0.0.1:0: {0}")]
    Bind(#[source] std::io::Error),
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("cannot build HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A simulated MSP world. Cheap to clone: clones share the same world.
#[derive(Debug, Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

pub(crate) struct WebhookTarget {
    pub(crate) url: String,
    pub(crate) secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &secret::REDACTED)
            .finish()
    }
}

/// What every handler and background task shares. `Debug` leaves out the fixture and the state,
/// which hold credentials.
pub(crate) struct Shared {
    pub(crate) seed: u64,
    pub(crate) fixture: fixture::Fixture,
    pub(crate) clock: clock::Clock,
    state: Mutex<State>,
    pub(crate) http: reqwest::Client,
    pub(crate) webhook: Option<WebhookTarget>,
    /// `Options::public_url` without its trailing slash.
    pub(crate) public_url: Option<String>,
    /// Set once the sandbox serves TLS: the scheme of URLs it writes when no header says.
    pub(crate) https: AtomicBool,
    /// Wakes the simulated Datto agent (new job, release, device online, reset).
    pub(crate) jobs_changed: tokio::sync::Notify,
    /// Wakes the webhook sender.
    pub(crate) webhooks_changed: tokio::sync::Notify,
    workers_started: AtomicBool,
    pub(crate) closed: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("seed", &self.seed)
            .field("companies", &self.fixture.companies.len())
            .field("clock_offset_seconds", &self.clock.offset_seconds())
            .field("webhook", &self.webhook)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Everything `POST /admin/reset` puts back.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) world: world::World,
    pub(crate) ledger: ledger::Ledger,
    pub(crate) faults: faults::Faults,
    pub(crate) tokens: identity::TokenStore,
    pub(crate) datto: datto::Session,
    pub(crate) autotask: autotask::Outbox,
    pub(crate) connectwise: connectwise::Cw,
    pub(crate) halo: halo::Halo,
    pub(crate) jobs_held: bool,
    /// Bumped by every reset so background work started before it can tell it is stale.
    pub(crate) epoch: u64,
}

impl State {
    fn new(shared_seed: u64, fx: &fixture::Fixture, now: DateTime<Utc>, epoch: u64) -> Self {
        let world = world::World::from_fixture(fx, shared_seed, now);
        let tokens = identity::TokenStore::from_fixture(fx, now);
        let mut autotask = autotask::Outbox::default();
        if let Some(at) = &world.autotask {
            for t in at.tickets.iter().filter(|t| t.emit_on_start) {
                autotask.pending.push(autotask::Pending {
                    action: "Create",
                    ticket: t.clone(),
                    changed: vec![],
                });
            }
        }
        Self {
            world,
            ledger: ledger::Ledger::default(),
            faults: faults::Faults::default(),
            tokens,
            datto: datto::Session::default(),
            autotask,
            connectwise: connectwise::Cw::default(),
            halo: halo::Halo::default(),
            jobs_held: false,
            epoch,
        }
    }
}

impl Shared {
    /// Locks the state after applying whatever the clock has made due. Never hold the guard
    /// across an `.await`.
    pub(crate) fn lock(&self) -> (MutexGuard<'_, State>, DateTime<Utc>) {
        let now = self.clock.now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        guard.world.settle(now);
        (guard, now)
    }

    pub(crate) fn reset(&self) {
        self.clock.reset();
        let now = self.clock.now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = guard.epoch + 1;
        *guard = State::new(self.seed, &self.fixture, now, epoch);
        drop(guard);
        self.jobs_changed.notify_waiters();
        self.webhooks_changed.notify_waiters();
    }

    /// Starts the simulated Datto agent and the webhook sender once, on the runtime that first
    /// needs them (so `router()` works inside someone else's server too).
    pub(crate) fn ensure_workers(self: &Arc<Self>) {
        if self.workers_started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(datto::agent_loop(Arc::downgrade(self)));
        tokio::spawn(autotask::webhook_loop(Arc::downgrade(self)));
    }
}

impl Sandbox {
    /// Loads and validates the fixture and builds the world.
    pub fn new(opts: Options) -> Result<Self> {
        let fixture = fixture::Fixture::load(opts.fixture.as_deref())?;
        let webhook = match (opts.webhook_url, opts.webhook_secret) {
            (Some(url), Some(secret)) => {
                let parsed = url::Url::parse(&url).map_err(|e| Error::WebhookUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(Error::WebhookUrl {
                        url,
                        reason: "scheme must be http or https".to_owned(),
                    });
                }
                Some(WebhookTarget { url, secret })
            }
            (None, None) => None,
            _ => return Err(Error::WebhookConfig),
        };
        let public_url = opts.public_url.map(|u| check_public_url(&u)).transpose()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(Error::Client)?;
        let clock = clock::Clock::default();
        let state = State::new(opts.seed, &fixture, clock.now(), 0);
        tracing::info!(
            companies = fixture.companies.len(),
            seed = opts.seed,
            webhook = webhook.as_ref().map(|w| w.url.as_str()),
            "sandbox world loaded"
        );
        Ok(Self {
            shared: Arc::new(Shared {
                seed: opts.seed,
                fixture,
                clock,
                state: Mutex::new(state),
                http,
                webhook,
                public_url,
                https: AtomicBool::new(false),
                jobs_changed: tokio::sync::Notify::new(),
                webhooks_changed: tokio::sync::Notify::new(),
                workers_started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Every simulated service under its prefix, plus `/admin`.
    pub fn router(&self) -> axum::Router {
        http::router(self.shared.clone())
    }

    /// Serves plain HTTP until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        self.serve_on(listener, shutdown).await
    }

    /// Serves HTTPS with `tls` until `shutdown` resolves. URLs the sandbox writes say `https`
    /// unless `public_url` or a forwarding header says otherwise.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: &Tls,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        self.shared.https.store(true, Ordering::SeqCst);
        let listener = tls::TlsListener::new(listener, tls).map_err(Error::Bind)?;
        self.serve_on(listener, shutdown).await
    }

    async fn serve_on<L>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        self.shared.ensure_workers();
        let app = self.router();
        let shared = self.shared.clone();
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve);
        shared.closed.store(true, Ordering::SeqCst);
        shared.jobs_changed.notify_waiters();
        shared.webhooks_changed.notify_waiters();
        result
    }

    /// Binds 127.0.0.1:0 and serves plain HTTP in a background task.
    pub async fn spawn(opts: Options) -> Result<RunningSandbox> {
        Self::spawn_with(opts, None).await
    }

    /// Binds 127.0.0.1:0 and serves HTTPS in a background task, with `tls` or, when `None`, a
    /// certificate made for the occasion; [`RunningSandbox::trust_pem`] is what clients trust.
    pub async fn spawn_tls(opts: Options, tls: Option<Tls>) -> Result<RunningSandbox> {
        let tls = match tls {
            Some(t) => t,
            None => Tls::self_signed(&[])?,
        };
        Self::spawn_with(opts, Some(tls)).await
    }

    async fn spawn_with(opts: Options, tls: Option<Tls>) -> Result<RunningSandbox> {
        let sandbox = Self::new(opts)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::Bind)?;
        let addr = listener.local_addr().map_err(Error::Bind)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop = async {
            let _ = rx.await;
        };
        let (scheme, trust_pem, task) = match tls {
            Some(tls) => {
                let pem = tls.trust_pem().to_owned();
                let task =
                    tokio::spawn(async move { sandbox.serve_tls(listener, &tls, stop).await });
                ("https", Some(pem), task)
            }
            None => ("http", None, tokio::spawn(sandbox.serve(listener, stop))),
        };
        Ok(RunningSandbox {
            addr,
            base_url: format!("{scheme}://{addr}"),
            trust_pem,
            stop: Some(tx),
            task: Some(task),
        })
    }
}

/// Checks a public URL and drops its trailing slash.
fn check_public_url(url: &str) -> Result<String> {
    let bad = |reason: &str| Error::PublicUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("it may not have a query or a fragment"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A sandbox serving on a loopback port; stops on drop or [`RunningSandbox::shutdown`].
#[derive(Debug)]
pub struct RunningSandbox {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>` (`https://` from [`Sandbox::spawn_tls`]); append a prefix such
    /// as `/graph` for a connector's base URL.
    pub base_url: String,
    /// For HTTPS, the PEM certificate a client must trust to reach it.
    pub trust_pem: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl RunningSandbox {
    /// Stops serving and waits for the server task to finish.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}
