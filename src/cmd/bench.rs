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
    #[arg(long, default_value_t = 2000, value_parser = parse_count)]
    workflows: usize,
    /// Sequential no-op steps per workflow.
    #[arg(long, default_value_t = 5, value_parser = parse_count)]
    steps: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64, value_parser = parse_count)]
    concurrency: usize,
    /// One workflow at a time.
    #[arg(long)]
    serial: bool,
    /// Open loop instead: start this many workflows per second, at their own times whatever
    /// the engine's pace, for `--duration`; prints p50/p90/p99/max end to end.
    #[arg(long, conflicts_with = "serial", value_parser = parse_rate)]
    rate: Option<f64>,
    /// How long the open loop (`--rate`) runs, e.g. `10s`, `1m`.
    #[arg(long, default_value = "10s", requires = "rate", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Instead: decide this many approval gates one after another and report decision → next
    /// step dispatched (in-process and through the HTTP API).
    #[arg(long, conflicts_with_all = ["serial", "parked"], value_parser = parse_count)]
    gates: Option<usize>,
    /// Instead: park this many runs at an approval gate and report Redis memory per parked run.
    #[arg(long, conflicts_with = "serial", value_parser = parse_count)]
    parked: Option<usize>,
    /// Instead: connect this many tenants of the sandbox (each through the consent flow), make
    /// every one due, and time the scheduled refresh of all of them (one token request each).
    #[arg(long, requires = "sandbox", conflicts_with_all = ["serial", "parked", "gates"], value_parser = parse_count)]
    tenants: Option<usize>,
    /// The sandbox (`steward sandbox`) whose tenants `--tenants` connects; it gets that many
    /// companies added (`POST /admin/tenants`).
    #[arg(long)]
    sandbox: Option<String>,
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

/// Deletes every key of namespace `ns` (SCAN MATCH `ns:*` on every master, UNLINK in
/// batches); how many.
async fn delete_namespace(db: &Db, ns: &str) -> Result<u64> {
    let pattern = format!("{ns}:*");
    let mut removed = 0;
    for node in db.masters().await? {
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = db
                .query_on(
                    &node,
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            if !keys.is_empty() {
                // On a cluster the connection splits a multi-key UNLINK by slot.
                removed += db.query::<u64>(redis::cmd("UNLINK").arg(&keys)).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(removed)
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
        // The private server has AOF `everysec` only: the configured mode is measured against
        // the server --redis names.
        config.redis.durability = steward_engine::store::Durability::Everysec;
    }
    // A namespace of its own unless one is named, so it can be removed afterwards: as short as
    // an installation's (`steward`, `acme-prod`), since every key a transition names carries it
    // (40 random bits: no two benches on one server meet).
    let own_namespace = global.namespace.is_none();
    if own_namespace {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        config.redis.namespace = format!("bench-{}", &id[id.len() - 8..]);
    }
    if args.tenants.is_some() {
        config.sandbox.url.clone_from(&args.sandbox);
        // The tenants' credentials are sealed: a development key in the bench's own namespace
        // unless a key is configured.
        if !config.secrets.is_configured() {
            config.secrets.dev_key = true;
        }
    }
    // Measured in the configured durability mode (`waitaof` costs run creation).
    let store = connect(&config)
        .await?
        .with_durability(config.redis.durability);
    store.check_durability().await?;
    let result = match args.tenants {
        Some(n) => tenants_bench(&config, &store, n, args.json).await,
        None => bench_in(&config, store.clone(), &args).await,
    };
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
            rate: args.rate,
            duration: args.duration,
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

/// A count of workflows, steps, places, gates, runs or tenants: nothing is measured over none.
fn parse_count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{text}` is not a count: give a whole number of at least 1"
        )),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (0.1..=100_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{text}` is not a rate: give workflows per second, from 0.1 to 100000 (e.g. --rate 200)"
        )),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(
        t.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(t.len()),
    );
    let secs = match (num.parse::<f64>(), unit) {
        (Ok(n), "s" | "") => n,
        (Ok(n), "m") => n * 60.0,
        (Ok(n), "ms") => n / 1000.0,
        _ => -1.0,
    };
    if secs > 0.0 && secs <= 3600.0 {
        Ok(std::time::Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "`{text}` is not a duration: write it like 10s, 500ms or 2m (at most an hour)"
        ))
    }
}

/// The sandbox's well-known app (sandbox/fixtures/msp.yaml), used when m365.client-id is not set.
const SANDBOX_APP: (&str, &str) = (
    "5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6",
    "sandbox-client-secret-steward",
);

/// `steward bench --tenants N --sandbox URL`: N tenants connected through the consent flow,
/// then every one refreshed by the schedule's rounds; prints the refresh's duration and the
/// token requests it made.
async fn tenants_bench(config: &Config, store: &Store, n: usize, json: bool) -> Result<ExitCode> {
    use futures::StreamExt as _;
    let sandbox = config
        .sandbox
        .url
        .clone()
        .context("--tenants needs --sandbox URL")?;
    let sandbox = sandbox.trim_end_matches('/').to_owned();
    let mut config = config.clone();
    if config.m365.client_id.is_none() {
        config.m365.client_id = Some(SANDBOX_APP.0.to_owned());
        config.m365.client_secret = Some(steward_engine::config::Secret(SANDBOX_APP.1.to_owned()));
    }
    let callback = "http://127.0.0.1:8080";
    let c = steward_engine::tenants::build(store, &config, callback).map_err(|e| anyhow!(e))?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()?;
    let prefix = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase());
    let added: serde_json::Value = http
        .post(format!("{sandbox}/admin/tenants"))
        .json(&serde_json::json!({"count": n, "prefix": prefix}))
        .send()
        .await
        .with_context(|| format!("cannot reach the sandbox at {sandbox}"))?
        .error_for_status()?
        .json()
        .await?;
    let companies: Vec<(String, String)> = added["companies"]
        .as_array()
        .context("the sandbox added no companies")?
        .iter()
        .filter_map(|c| {
            Some((
                c["id"].as_str()?.to_owned(),
                c["tenant"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let started = std::time::Instant::now();
    let connector = &c.connector;
    let connected = futures::stream::iter(companies.iter())
        .map(|(company, tenant)| {
            let http = http.clone();
            async move {
                let start = connector
                    .start(&company.parse()?, "bench@steward", tenant, None)
                    .await?;
                let url = url::Url::parse(&start.consent_url)?;
                let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                form.push(("decision".to_owned(), "accept".to_owned()));
                let mut action = url.clone();
                action.set_query(None);
                let res = http.post(action).form(&form).send().await?;
                let back = res
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .context("the consent page did not redirect")?;
                let back = url::Url::parse(back)?;
                let get = |k: &str| {
                    back.query_pairs()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.into_owned())
                };
                connector
                    .finish(
                        &get("state").context("no state")?,
                        get("code").as_deref(),
                        get("error").as_deref(),
                        get("error_description").as_deref(),
                    )
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let failed_connects = connected.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = connected.iter().find(|r| r.is_err()) {
        eprintln!("bench: a consent failed: {e}");
    }
    let connect_s = started.elapsed().as_secs_f64();
    let tenants = &c.tenants;
    let due = tenants.make_all_due().await?;
    let before = c.m365.tokens.stats().requests;
    let started = std::time::Instant::now();
    let mut refreshed = 0;
    let mut failed = 0;
    loop {
        let (ok, bad) = tenants.refresh_round(&c.m365.tokens, 500, 64).await?;
        refreshed += ok;
        failed += bad;
        if ok + bad == 0 {
            break;
        }
    }
    let refresh_s = started.elapsed().as_secs_f64();
    let requests = c.m365.tokens.stats().requests - before;
    let healthy = tenants
        .list()
        .await?
        .iter()
        .filter(|t| t.company.as_str().starts_with(&prefix))
        .filter(|t| t.status == steward_engine::tenants::TenantStatus::Healthy)
        .count();
    let report = serde_json::json!({
        "tenants": n,
        "connected": n - failed_connects,
        "connect_seconds": connect_s,
        "due": due,
        "refreshed": refreshed,
        "failed": failed,
        "token_requests": requests,
        "refresh_seconds": refresh_s,
        "refreshes_per_second": refreshed as f64 / refresh_s.max(1e-9),
        "healthy": healthy,
    });
    if json {
        println!("{report}");
    } else {
        println!(
            "{n} tenants connected through the consent flow in {connect_s:.1} s ({failed_connects} failed)"
        );
        println!(
            "  scheduled refresh: {refreshed} refreshed, {failed} failed, {requests} token requests, in {refresh_s:.2} s ({:.0}/s); {healthy} healthy",
            refreshed as f64 / refresh_s.max(1e-9)
        );
    }
    if failed_connects > 0 || failed > 0 || requests != refreshed as u64 {
        return Ok(ExitCode::from(super::exit::ERROR));
    }
    Ok(ExitCode::SUCCESS)
}
