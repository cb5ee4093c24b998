//! `steward bench`: workflows/s and latency through the real queue, store and worker; decision
//! latency through the API; Redis memory per parked run.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use steward_engine::Db;
use steward_engine::bench::{self, BenchConfig};
use steward_engine::config::{Config, redacted_url};
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::planner::Workflows;
use steward_engine::store::Store;
use steward_schemas::RunId;
use steward_workers::Registry;

use super::{connect, load_config};
use crate::{Global, print};

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Workflows to run.
    #[arg(long, default_value_t = 2000)]
    workflows: usize,
    /// Sequential no-op steps per workflow.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// One workflow at a time.
    #[arg(long)]
    serial: bool,
    /// Instead: decide this many approval gates one after another and report decision → next
    /// step dispatched (in-process and through the HTTP API).
    #[arg(long, conflicts_with_all = ["serial", "parked"])]
    gates: Option<usize>,
    /// Instead: park this many runs at an approval gate and report Redis memory per parked run.
    #[arg(long, conflicts_with = "serial")]
    parked: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The API served in-process for the gate benchmark, and the approver it is called as.
struct BenchApi {
    base: String,
    token: String,
    token_id: steward_schemas::TokenId,
    auth: steward_engine::auth::Auth,
    approver: steward_schemas::Technician,
    server: tokio::task::JoinHandle<()>,
}

impl BenchApi {
    const APPROVER: &str = "approver@bench.example";

    /// Serves the API on a free local port, with a token for a bench approver (who may act on
    /// every company of the bench namespace).
    async fn start(store: &Store) -> Result<Self> {
        let auth = steward_engine::auth::Auth::for_store(store);
        let mut approver = match auth.technician_by_email(Self::APPROVER).await? {
            Some(t) => t,
            None => {
                auth.add_technician(
                    Self::APPROVER,
                    "bench approver",
                    steward_schemas::Role::Technician,
                    steward_schemas::CompanyScope::ALL,
                )
                .await?
            }
        };
        if approver.disabled {
            // Disabled by the end of an earlier run in this namespace.
            approver.disabled = false;
            auth.save_technician(&approver).await?;
        }
        let (info, token) = auth.create_token(approver.id, "bench").await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = steward_engine::api::state(
            store.clone(),
            Arc::new(Registry::builtin()),
            Workflows::default(),
            None,
            base.clone(),
        )
        .await
        .map_err(|e| anyhow!(e))?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, steward_engine::api::app(state)).await;
        });
        Ok(Self {
            base,
            token,
            token_id: info.id,
            auth,
            approver,
            server,
        })
    }

    /// Stops serving, revokes the bench token and disables the bench approver (the auth store
    /// cannot delete a technician), so nothing usable is left behind.
    async fn finish(mut self) -> Result<()> {
        self.server.abort();
        self.auth.revoke_token(self.token_id).await?;
        self.approver.disabled = true;
        self.auth.save_technician(&self.approver).await?;
        Ok(())
    }
}

/// Deletes every key of namespace `ns` (SCAN MATCH `ns:*`, UNLINK in batches); how many.
async fn delete_namespace(db: &Db, ns: &str) -> Result<u64> {
    let pattern = format!("{ns}:*");
    let mut cursor = 0_u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = db
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        if !keys.is_empty() {
            removed += db.query::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

pub(crate) async fn run(global: &Global, args: BenchArgs) -> Result<ExitCode> {
    // Only an explicit --redis points the benchmark at an existing server (never the
    // STEWARD_REDIS__URL of an installation); otherwise it measures on a private Redis with AOF
    // (appendfsync everysec), as deployed.
    let private = match global.redis {
        Some(_) => None,
        None => Some(RedisServer::start(Persistence::AofEverySec)?),
    };
    let mut config = load_config(global)?;
    if let Some(server) = &private {
        config.redis.url = server.url();
    }
    // A namespace of its own unless one is named, so it can be removed afterwards.
    let own_namespace = global.namespace.is_none();
    if own_namespace {
        config.redis.namespace = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    }
    let store = connect(&config).await?;
    let result = bench_in(&config, store.clone(), &args).await;
    if private.is_none() {
        let ns = &config.redis.namespace;
        let at = redacted_url(&config.redis.url);
        if own_namespace {
            let removed = delete_namespace(store.db(), ns)
                .await
                .with_context(|| format!("cannot remove the bench namespace `{ns}` from {at}"))?;
            eprintln!("bench: removed the {removed} keys of namespace `{ns}` from {at}");
        } else {
            eprintln!(
                "bench: its runs are left in namespace `{ns}` at {at}; the bench approver there is disabled and its token revoked"
            );
        }
    }
    result
}

async fn bench_in(config: &Config, store: Store, args: &BenchArgs) -> Result<ExitCode> {
    let worker_db = Db::connect(&config.redis.url, config.redis.response_timeout.get()).await?;
    if let Some(n) = args.parked {
        let report = bench::parked(store, worker_db, n).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{} runs parked at an approval gate", report.runs);
            println!(
                "  redis memory per parked run {:>10.0} bytes ({:.1} MiB in all)",
                report.bytes_per_run, report.total_mib
            );
            println!(
                "  redis commands/s while they wait {:>6.1} (a scheduler ticking; nothing polls per run)",
                report.idle_commands_per_s
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(n) = args.gates {
        let api = BenchApi::start(&store).await?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let decide = async |run: RunId| -> std::result::Result<(), String> {
            let res = http
                .post(format!("{}/v1/approvals/{run}/approval", api.base))
                .bearer_auth(&api.token)
                .json(&serde_json::json!({"decision": "approve"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(format!(
                    "{}: {}",
                    res.status(),
                    res.text().await.unwrap_or_default()
                ))
            }
        };
        let report = bench::gates(store, worker_db, n, decide).await;
        api.finish().await?;
        let report = report?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} approval gates decided one after another (redis: {})",
                report.gates, report.redis_persistence
            );
            println!(
                "  decision → next step queued, HTTP API   p50 {:>7.3} ms   p99 {:>7.3} ms",
                report.api_p50_ms, report.api_p99_ms
            );
            println!(
                "  decision → next step queued, in-process p50 {:>7.3} ms   p99 {:>7.3} ms",
                report.engine_p50_ms, report.engine_p99_ms
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = bench::run(
        store,
        worker_db,
        BenchConfig {
            workflows: args.workflows,
            steps: args.steps,
            concurrency: args.concurrency,
            serial: args.serial,
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print::bench(&report);
    }
    Ok(ExitCode::SUCCESS)
}
