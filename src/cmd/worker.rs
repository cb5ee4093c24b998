//! `steward worker`: a queue worker running steps (and, with `--with-scheduler`, the timers).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use steward_engine::companies::Companies;
use steward_engine::config::Config;
use steward_engine::queue::QueueConfig;
use steward_engine::scheduler;
use steward_engine::worker::{self, Runtime};
use steward_workers::{Registry, Services};

use super::serve::{scheduler_config, watchdog_config};
use super::{connect, shutdown_signal};

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Point every connector (Microsoft 365 and Datto RMM) at this sandbox (`steward sandbox`)
    /// instead of the real services (sandbox.url, STEWARD_SANDBOX__URL).
    #[arg(long, value_name = "URL")]
    sandbox: Option<String>,
    /// Steps run at once.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Take over a dead worker's job after this long, e.g. `30s`.
    #[arg(long)]
    claim_idle: Option<steward_schemas::Dur>,
    /// Deliveries without an outcome after which a job is parked.
    #[arg(long)]
    max_deliveries: Option<u32>,
    /// Also run the scheduler in this process.
    #[arg(long)]
    with_scheduler: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. `127.0.0.1:9185` (metrics.listen;
    /// port 0 picks a free one, printed at start).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn queue_config(config: &Config) -> QueueConfig {
    QueueConfig {
        consumer: worker::consumer_name(),
        concurrency: config.worker.concurrency,
        block: config.worker.block.get(),
        claim_idle: config.worker.claim_idle.get(),
        max_deliveries: u64::from(config.worker.max_deliveries),
    }
}

pub(crate) async fn run(mut config: Config, args: WorkerArgs) -> Result<ExitCode> {
    if let Some(c) = args.concurrency {
        config.worker.concurrency = c;
    }
    if let Some(d) = args.claim_idle {
        config.worker.claim_idle = d;
    }
    if let Some(m) = args.max_deliveries {
        config.worker.max_deliveries = m;
    }
    if let Some(url) = args.sandbox {
        config.sandbox.url = Some(url);
    }
    if let Some(m) = args.metrics {
        config.metrics.listen = Some(m);
    }
    config.validate()?;
    steward_engine::secrets::require(&config.secrets, "worker")?;
    let store = connect(&config)
        .await?
        .with_limits(config.limits.store_limits());
    let onprem = steward_engine::runner::onprem_from_config(&config, &store).await?;
    let services = Services {
        redis: Some(store.db().manager()),
        namespace: config.redis.namespace.clone(),
    };
    // One-time links the ops issue start with the API's URL.
    let public_url = config
        .http
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.http.listen));
    let connectors =
        steward_engine::tenants::build(&store, &config, &public_url).map_err(|e| anyhow!(e))?;
    let runtime = Arc::new(Runtime {
        store: store.clone(),
        companies: Companies::for_store(&store),
        registry: Registry::connected(Some(connectors.m365), onprem),
        services,
    });
    let metrics = match &config.metrics.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
            let local = listener.local_addr()?;
            let app = steward_engine::metrics::router(
                store.clone(),
                config.metrics.token.as_ref().map(|t| t.0.clone()),
            );
            println!("steward worker: metrics on http://{local}/metrics");
            let limits = config.http.limits();
            Some(tokio::spawn(steward_engine::api::server::serve(
                listener,
                app,
                limits,
                std::future::pending(),
            )))
        }
        None => None,
    };
    let queue = queue_config(&config);
    tracing::info!(consumer = %queue.consumer, "worker starting");
    let sched = args.with_scheduler.then(|| {
        let (store, config) = (store.clone(), config.clone());
        tokio::spawn(async move {
            tokio::join!(
                scheduler::run(store.clone(), scheduler_config(&config), shutdown_signal()),
                steward_engine::watchdog::run(
                    store.clone(),
                    watchdog_config(&config),
                    shutdown_signal()
                ),
                steward_engine::housekeeping::run(
                    store,
                    config.housekeeping.settings(),
                    shutdown_signal()
                ),
            );
        })
    });
    worker::run(runtime, queue, shutdown_signal())
        .await
        .map_err(|e| anyhow!("worker stopped: {e}"))?;
    if let Some(s) = sched {
        let _ = s.await;
    }
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(ExitCode::SUCCESS)
}
