//! `steward serve`: the HTTP API and the scheduler (durable timers).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use steward_engine::config::Config;
use steward_engine::planner::Library;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::store::DefinitionSource;
use steward_engine::watchdog::{self, WatchdogConfig};
use steward_workers::Registry;

use super::{connect, shutdown_signal};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// Point every Microsoft 365 connector at this sandbox (`steward sandbox`) instead of
    /// Microsoft (sandbox.url, STEWARD_SANDBOX__URL).
    #[arg(long)]
    sandbox: Option<String>,
    /// Where the HTTP API listens (http.listen).
    #[arg(long)]
    listen: Option<String>,
    /// The folder of workflow files the API offers (http.workflows).
    #[arg(long)]
    workflows: Option<String>,
    /// How long the scheduler waits between looks for due timers when none were due, e.g.
    /// `100ms` (scheduler.tick).
    #[arg(long)]
    tick: Option<steward_schemas::Dur>,
}

/// Approval links start with `http.public-url`, or else with the listen address: refuses a
/// listen address on every interface (0.0.0.0, ::) without a public URL, which would make links
/// that lead nowhere.
fn check_public_url(config: &Config) -> Result<()> {
    if config.http.public_url.is_none()
        && let Ok(addr) = config.http.listen.parse::<std::net::SocketAddr>()
        && addr.ip().is_unspecified()
    {
        bail!(
            "http.public-url is not set and the API listens on {addr} (every interface), so approval links would start with http://{addr}; set http.public-url to the URL technicians reach the API at (STEWARD_HTTP__PUBLIC_URL=https://steward.msp.example, or public-url under [http] in the config file)"
        );
    }
    Ok(())
}

pub(crate) fn scheduler_config(config: &Config) -> SchedulerConfig {
    SchedulerConfig {
        tick: config.scheduler.tick.get(),
        batch: config.scheduler.batch,
        concurrency: 64,
    }
}

/// The watchdog that runs beside every scheduler.
pub(crate) fn watchdog_config(config: &Config) -> WatchdogConfig {
    WatchdogConfig {
        every: config.scheduler.watchdog_every.get(),
        stuck_after: config.scheduler.stuck_after.get(),
        batch: 200,
    }
}

pub(crate) async fn run(mut config: Config, args: ServeArgs) -> Result<ExitCode> {
    if let Some(t) = args.tick {
        config.scheduler.tick = t;
    }
    if let Some(l) = args.listen {
        config.http.listen = l;
    }
    if let Some(w) = args.workflows {
        config.http.workflows = w;
    }
    if let Some(url) = args.sandbox {
        config.sandbox.url = Some(url);
    }
    config.validate()?;
    check_public_url(&config)?;
    steward_engine::secrets::require(&config.secrets, "serve")?;
    let store = connect(&config)
        .await?
        .with_limits(config.limits.store_limits())
        .with_durability(config.redis.durability);
    store.check_durability().await?;
    let listener = tokio::net::TcpListener::bind(&config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .http
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let connectors =
        steward_engine::tenants::build(&store, &config, &public_url).map_err(|e| anyhow!(e))?;
    let registry = Arc::new(Registry::with_m365(connectors.m365.clone()));
    // Bad files are skipped and reported (log, GET /v1/workflows/files); only an unreadable
    // folder stops serve.
    let workflows = Library::open(Path::new(&config.http.workflows), registry.clone())?;
    // A definition Redis lost is written back from the workflow files as soon as a run needs it.
    let store = store.with_definitions(DefinitionSource::new({
        let workflows = workflows.clone();
        move |hash| {
            workflows
                .current()
                .all()
                .find(|p| p.hash() == hash)
                .cloned()
        }
    }));
    let mut state = steward_engine::api::state(
        store.clone(),
        registry,
        workflows.clone(),
        config.http.link_key.as_ref().map(|k| k.0.as_str()),
        public_url,
    )
    .await
    .map_err(|e| anyhow!(e))?
    .with_metrics_token(config.metrics.token.as_ref().map(|t| t.0.clone()));
    state.tenants = Some(connectors.connector.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Schedules (the built-in token refresh among them) fire through the scheduler's timer
    // index; their firings run here.
    let schedules = steward_engine::schedules::Schedules::new(store.clone());
    schedules.ensure_token_refresh().await?;
    let runner = steward_engine::schedules::ServeRunner {
        schedules: schedules.clone(),
        tenants: Some((connectors.tenants.clone(), connectors.m365.tokens.clone())),
        planner: state.planner.clone(),
        workflows: workflows.clone(),
    };
    let firings = tokio::spawn(steward_engine::schedules::run_firings(
        schedules,
        Arc::new(runner),
        steward_engine::worker::consumer_name(),
        stopped(stop_rx.clone()),
    ));
    let sched = tokio::spawn(scheduler::run(
        store.clone(),
        scheduler_config(&config),
        stopped(stop_rx.clone()),
    ));
    let dog = tokio::spawn(watchdog::run(
        store.clone(),
        watchdog_config(&config),
        stopped(stop_rx.clone()),
    ));
    let sweep = tokio::spawn(steward_engine::housekeeping::run(
        store,
        config.housekeeping.settings(),
        stopped(stop_rx.clone()),
    ));
    let watcher = tokio::spawn(workflows.watch(stopped(stop_rx.clone())));
    let notes = tokio::spawn(steward_engine::psa::notes::serve(
        &state,
        stopped(stop_rx.clone()),
    ));
    tracing::info!(%addr, "API and scheduler starting");
    println!("steward serve: API on http://{addr}, scheduler running");
    let app = steward_engine::api::app(state);
    steward_engine::api::server::serve(listener, app, config.http.limits(), async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    })
    .await;
    let _ = sched.await;
    let _ = dog.await;
    let _ = sweep.await;
    let _ = watcher.await;
    let _ = firings.await;
    let _ = notes.await;
    Ok(ExitCode::SUCCESS)
}
