//! `steward demo`: the real thing in one process. A private Redis, the sandbox (Microsoft 365,
//! Active Directory and Exchange through a Datto agent, Autotask) and Steward (API, scheduler,
//! worker, ticket notes). The sandbox's companies are registered and their tenants connected
//! through the API as a technician would (`steward sandbox seed`); new-starter tickets created in
//! the sandbox's Autotask reach Steward as signed webhooks and start the onboardings; one company's
//! policy wants an approver's yes, given through the signed link in its ticket note; then a leaver
//! ticket offboards one of the new starters. Prints each run's timeline and, from the sandbox's
//! ledger, what changed in each directory, mailbox and ticket (`--json`: one object).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use steward_engine::api::runs::RunView;
use steward_engine::companies::Companies;
use steward_engine::config::Config;
use steward_engine::embedded::{Persistence, RedisServer};
use steward_engine::planner::Library;
use steward_engine::queue::QueueConfig;
use steward_engine::scheduler::{self, SchedulerConfig};
use steward_engine::store::Store;
use steward_engine::worker::{self, Runtime};
use steward_schemas::{CompanyScope, Role, RunId, RunStatus, StepState};
use steward_workers::rmm::jobs::Binding;
use steward_workers::{Registry, Services};
use tokio::sync::watch;

use super::sandbox::{AUTOTASK_ACCOUNT, Lifecycles};
use crate::client::{ApiArgs, Client};

/// The demo's workflows, embedded so `steward demo` works from any directory.
const WORKFLOWS: &[(&str, &str)] = &[
    (
        "onboarding.yaml",
        include_str!("../../workflows/onboarding.yaml"),
    ),
    (
        "offboarding.yaml",
        include_str!("../../workflows/offboarding.yaml"),
    ),
];
const MSP_WORLD: &str = include_str!("../../sandbox/fixtures/msp.yaml");
const DEMO_COMPANY: &str = include_str!("../../sandbox/fixtures/demo-company.yaml.part");
const ONBOARDING: &str = "onboarding";
const OFFBOARDING: &str = "offboarding";
const APPROVER: &str = "lead@msp.example";
/// Who gets the leaver's mailbox (an existing user of the leaver's company in the sandbox).
const LEAVER_MANAGER: &str = "megan.bowen@contoso.com";
/// The sandbox's registration of Steward's app (sandbox credentials, meaningless elsewhere).
const SANDBOX_APP_ID: &str = "5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6";
const SANDBOX_APP_SECRET: &str = "sandbox-client-secret-steward";
/// The whole demo's budget.
const BUDGET: Duration = Duration::from_secs(50);

/// One new starter: the company, what its systems are, the ticket's text.
struct Starter {
    company: &'static str,
    kind: &'static str,
    name: &'static str,
    email: &'static str,
}

const STARTERS: &[Starter] = &[
    Starter {
        company: "contoso",
        kind: "cloud only (Entra ID, Exchange Online)",
        name: "Jane Doe",
        email: "jane.doe@contoso.com",
    },
    Starter {
        company: "fabrikam",
        kind: "hybrid (AD + Entra Connect + Exchange hybrid)",
        name: "Grace Hopper",
        email: "grace.hopper@fabrikam.com",
    },
    Starter {
        company: "northwind",
        kind: "on-premises (AD + Exchange Server through the RMM)",
        name: "Alan Turing",
        email: "alan.turing@northwindtraders.com",
    },
    Starter {
        company: "adatum",
        kind: "hybrid without sync (AD and Entra ID side by side)",
        name: "Ada Lovelace",
        email: "ada.lovelace@adatum.com",
    },
];

/// The on-premises company (its Exchange server reached from the runner by remoting).
const ON_PREM: &str = "northwind";

/// The company whose onboarding is approved through the signed link in its ticket's note (the
/// others are approved in the approver's inbox, through the API).
const GATED: &str = "northwind";

pub(crate) async fn run(json_out: bool, stay: bool) -> Result<ExitCode> {
    let started = tokio::time::Instant::now();
    let deadline = started + BUDGET;
    let say = |line: String| {
        if !json_out {
            println!("{line}");
        }
    };
    say("Starting a private Redis, the sandbox and Steward (API, scheduler, worker) in this process…".to_owned());
    let redis = RedisServer::start(Persistence::AofEverySec)?;
    // The embedded workflows, written where the API's workflow library reads them.
    let root = std::env::temp_dir().join(format!("steward-demo-{}", std::process::id()));
    let flows_dir = root.join("workflows");
    std::fs::create_dir_all(&flows_dir)?;
    for (file, text) in WORKFLOWS {
        std::fs::write(flows_dir.join(file), text)?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // The sandbox signs its Autotask webhooks with this key; the seed gives Steward the same.
    let webhook_secret = steward_engine::links::LinkSigner::generate_key();
    let webhook_secret: String = webhook_secret.chars().take(40).collect();
    // The sandbox's built-in world and a fourth company, hybrid without sync.
    let fixture = root.join("world.yaml");
    std::fs::write(&fixture, format!("{MSP_WORLD}\n{DEMO_COMPANY}"))?;
    let sb = steward_sandbox::Sandbox::spawn(steward_sandbox::Options {
        fixture: Some(fixture),
        webhook_url: Some(format!(
            "{base}/v1/hooks/autotask?account={AUTOTASK_ACCOUNT}"
        )),
        webhook_secret: Some(webhook_secret.clone()),
        ..steward_sandbox::Options::default()
    })
    .await?;

    let mut config = Config::default();
    config.redis.url = redis.url();
    config.redis.namespace = "demo".to_owned();
    config.sandbox.url = Some(sb.base_url.clone());
    config.http.public_url = Some(base.clone());
    config.secrets.dev_key = true;
    // Steward's multi-tenant app as the sandbox's partner knows it (sandbox/fixtures/msp.yaml).
    config.m365.client_id = Some(SANDBOX_APP_ID.to_owned());
    config.m365.client_secret = Some(steward_engine::config::Secret(
        SANDBOX_APP_SECRET.to_owned(),
    ));
    // Steward's clock follows the sandbox's: when the demo moves the sandbox's time on (through
    // an Entra Connect sync cycle, Exchange Online's provisioning delay), Steward's moves with it,
    // as both would in the world; so timers fall due, and the PSA's event times stay fresh.
    let clock = Arc::new(SandboxTime::default());
    let store = super::connect_with_clock(&config, clock.clone()).await?;
    store.prepare().await?;
    let connectors =
        steward_engine::tenants::build(&store, &config, &base).map_err(|e| anyhow!(e))?;
    let api_registry = Arc::new(Registry::with_m365(connectors.m365.clone()));
    let workflows = Library::open(&flows_dir, api_registry.clone())?;
    let mut state =
        steward_engine::api::state(store.clone(), api_registry, workflows, None, base.clone())
            .await
            .map_err(|e| anyhow!(e))?;
    state.tenants = Some(connectors.connector.clone());

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let notes = tokio::spawn(steward_engine::psa::notes::serve(
        &state,
        stopped(stop_rx.clone()),
    ));
    let api = tokio::spawn(async move {
        let _ = axum::serve(listener, steward_engine::api::app(state)).await;
    });
    let onprem = steward_engine::runner::onprem_from_config(&config, &store).await?;
    let runtime = Arc::new(Runtime {
        store: store.clone(),
        companies: Companies::for_store(&store),
        registry: Registry::connected(Some(connectors.m365), onprem),
        services: Services {
            redis: Some(store.db().manager()),
            namespace: "demo".to_owned(),
        },
    });
    let queue = QueueConfig {
        consumer: worker::consumer_name(),
        concurrency: 16,
        block: Duration::from_millis(500),
        claim_idle: Duration::from_secs(10),
        max_deliveries: 5,
    };
    let worker = tokio::spawn(worker::run(runtime, queue, stopped(stop_rx.clone())));
    let sched = tokio::spawn(scheduler::run(
        store.clone(),
        SchedulerConfig {
            tick: Duration::from_millis(50),
            batch: 100,
            concurrency: 16,
        },
        stopped(stop_rx),
    ));
    say(format!(
        "Steward's API is at {base} (dashboard: {base}/); the sandbox at {}.",
        sb.base_url
    ));

    let result = demo(
        &clock,
        &store,
        &base,
        &sb.base_url,
        &webhook_secret,
        deadline,
        json_out,
    )
    .await;
    if stay && result.is_ok() {
        // A fresh link: the first one may have been used already.
        let link = login_link(&store, &base).await?;
        say(format!(
            "\nStill running (Ctrl-C to stop). The dashboard: {base}/ — sign in as {APPROVER} with this one-time link (15 minutes):\n  {link}"
        ));
        tokio::signal::ctrl_c().await?;
    }

    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = sched.await;
    let _ = notes.await;
    api.abort();
    drop(sb);
    drop(redis);
    let _ = std::fs::remove_dir_all(&root);
    let mut report = result?;
    report["elapsed_ms"] = json!(started.elapsed().as_millis() as u64);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("\nDone in {:.1} s.", started.elapsed().as_secs_f64());
    }
    Ok(ExitCode::SUCCESS)
}

/// A one-time dashboard login link for the demo's team lead.
async fn login_link(store: &Store, base: &str) -> Result<String> {
    let auth = steward_engine::auth::Auth::for_store(store);
    let lead = auth
        .technician_by_email(APPROVER)
        .await?
        .context("the demo's team lead")?;
    let (code, _) = steward_engine::api::dashboard::Sessions::for_store(store)
        .login_code(lead.id)
        .await?;
    Ok(format!("{}/login/{code}", base.trim_end_matches('/')))
}

/// Everything after start-up; returns the `--json` object.
async fn demo(
    clock: &SandboxTime,
    store: &Store,
    base: &str,
    sandbox: &str,
    webhook_secret: &str,
    deadline: tokio::time::Instant,
    quiet: bool,
) -> Result<Value> {
    let say = |line: String| {
        if !quiet {
            println!("{line}");
        }
    };
    let auth = steward_engine::auth::Auth::for_store(store);
    let lead = auth
        .add_technician(APPROVER, "Team lead", Role::Admin, CompanyScope::ALL)
        .await?;
    let (_, token) = auth.create_token(lead.id, "demo").await?;
    say(format!(
        "The dashboard: {base}/ — sign in as {APPROVER} with this one-time link (15 minutes; `--stay` keeps the demo up to follow its runs there):\n  {}",
        login_link(store, base).await?
    ));
    let api_token = token.clone();
    let c = Client::with_token(
        &ApiArgs {
            api: base.to_owned(),
            json: false,
        },
        token,
    )?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;

    say("\n== Seeding, as `steward sandbox seed` does (companies, tenants by consent, PSA accounts, rules)".to_owned());
    let mut seeded = Vec::new();
    let flows = Lifecycles {
        onboarding: ONBOARDING,
        offboarding: OFFBOARDING,
    };
    let failed =
        super::sandbox::seed(&c, sandbox, Some(webhook_secret), &flows, &mut seeded).await?;
    for line in &seeded {
        say(format!("  {line}"));
    }
    if failed > 0 {
        bail!("seeding failed ({failed} problems, said above)");
    }

    // Northwind's Exchange server has no RMM agent: the runner reaches it by PowerShell
    // remoting, which needs its double hop configured (the sandbox starts it misconfigured).
    http.post(format!("{sandbox}/admin/companies/{ON_PREM}/faults"))
        .json(&json!({"double_hop_misconfigured": false}))
        .send()
        .await?
        .error_for_status()?;
    say(format!(
        "  {ON_PREM}: the runner's PowerShell remoting to its Exchange server is configured (double hop)"
    ));

    say(
        "\n== New-starter tickets in the sandbox's Autotask; its webhooks start the runs"
            .to_owned(),
    );
    let mut tickets: Vec<(i64, &Starter)> = Vec::new();
    // When each ticket was created (real time), for the figures.
    let mut created: std::collections::HashMap<i64, std::time::Instant> = Default::default();
    for s in STARTERS {
        let (first, last) = s.name.split_once(' ').unwrap_or((s.name, ""));
        let description = format!(
            "Please set up a new starter.\nName: {}\nFirst name: {first}\nLast name: {last}\nEmail: {}\nDepartment: Sales\nJob title: Account manager\nLicence: SPB\nStart date: 2027-03-01\n",
            s.name, s.email
        );
        let id = ticket(
            &http,
            sandbox,
            s.company,
            &format!("New starter: {}", s.name),
            &description,
        )
        .await?;
        say(format!(
            "  ticket {id} at {} ({}): New starter: {}",
            s.company, s.kind, s.name
        ));
        tickets.push((id, s));
        created.insert(id, std::time::Instant::now());
    }
    let mut runs: Vec<(String, i64, RunId)> = Vec::new();
    for (id, s) in &tickets {
        let run = intake_run(&c, *id, deadline).await?;
        say(format!(
            "  ticket {id} → run {run} ({ONBOARDING} at {})",
            s.company
        ));
        runs.push((s.company.to_owned(), *id, run));
    }

    // Drive the runs to their ends: the gated company's approval through its ticket's link, the
    // others in the approver's inbox; the sandbox's clock runs through Entra Connect's sync cycle
    // for the hybrid one.
    let mut approval = Value::Null;
    let mut decided = Vec::new();
    let driver = Drive {
        store,
        c: &c,
        http: &http,
        sandbox,
        deadline,
        clock,
        woken: Default::default(),
        finished: Default::default(),
    };
    drive(&driver, &runs, &mut approval, &mut decided, &say).await?;

    for (company, _, run) in &runs {
        let view = RunView::load(store, *run)
            .await?
            .context("a run vanished")?;
        if !matches!(view.run.state.status, RunStatus::Completed { ref failed, .. } if failed.is_empty())
        {
            eprintln!("\n{company}: did not complete:");
            crate::print::run(&view, false)?;
            bail!("{company}'s onboarding {run} did not complete (see above)");
        }
    }

    say("\n== A leaver ticket: one of the new starters is offboarded".to_owned());
    let leaver = &STARTERS[0];
    let id = ticket(
        &http,
        sandbox,
        leaver.company,
        &format!("Leaver: {}", leaver.name),
        &format!(
            "{} is leaving us.\nName: {}\nEmail: {}\nManager: {}\nLicence: SPB\nLast day: 2027-06-30\n",
            leaver.name, leaver.name, leaver.email, LEAVER_MANAGER
        ),
    )
    .await?;
    created.insert(id, std::time::Instant::now());
    let run = intake_run(&c, id, deadline).await?;
    say(format!(
        "  ticket {id} at {} → run {run} ({OFFBOARDING})",
        leaver.company
    ));
    runs.push((leaver.company.to_owned(), id, run));
    drive(
        &driver,
        &runs[runs.len() - 1..],
        &mut approval,
        &mut decided,
        &say,
    )
    .await?;
    // The notes outbox writes "done" on each ticket; give it a moment within the budget.
    let want: Vec<i64> = runs.iter().map(|(_, t, _)| *t).collect();
    let notes_deadline = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
    let mut notes;
    loop {
        notes = all_notes(&http, sandbox).await?;
        let done = want.iter().all(|t| {
            notes.iter().any(|n| {
                n["ticket_id"] == *t
                    && n["title"].as_str().is_some_and(|s| {
                        s.to_lowercase().contains("done") || s.to_lowercase().contains("complete")
                    })
            })
        });
        if done || tokio::time::Instant::now() > notes_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut out_runs = Vec::new();
    let mut all_completed = true;
    for (i, (company, ticket_id, run)) in runs.iter().enumerate() {
        let workflow = if i < STARTERS.len() {
            ONBOARDING
        } else {
            OFFBOARDING
        };
        let view = RunView::load(store, *run)
            .await?
            .context("a run vanished")?;
        let completed = matches!(view.run.state.status, RunStatus::Completed { ref failed, .. } if failed.is_empty());
        all_completed &= completed;
        say(format!("\n== {company}, ticket {ticket_id}"));
        if !quiet {
            crate::print::run(&view, false)?;
        }
        // How long it took: in the world's time (Steward's clock follows the sandbox's, so the
        // sync cycles and provisioning delays the demo moved through are in it), and in real time
        // from its ticket's creation.
        let world_s = (view.summary.updated_at.as_millis() - view.summary.created_at.as_millis())
            as f64
            / 1000.0;
        let real_s = match (
            created.get(ticket_id),
            driver
                .finished
                .lock()
                .ok()
                .and_then(|f| f.get(run).copied()),
        ) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a).as_secs_f64(),
            _ => f64::NAN,
        };
        say(format!(
            "took {world_s:.0} s in the world's time (the one clock moves 150 s at a time through every run's waits: sync cycles, provisioning), {real_s:.2} s of real time from its ticket"
        ));
        out_runs.push(
            json!({"company": company, "ticket": ticket_id, "workflow": workflow, "completed": completed, "world_seconds": world_s, "real_seconds": real_s, "run": view}),
        );
    }

    // No secret anywhere it must not be: the new starters' initial passwords (revealed through
    // their one-time links, as each new starter would) and the tokens and secrets in play,
    // looked for in every Redis key and value, every ticket note, and this report.
    let mut report_runs = serde_json::to_string(&out_runs)?;
    report_runs.push_str(&serde_json::to_string(&seeded)?);
    let secrets_check = secrets_check(
        store,
        &http,
        &api_token,
        webhook_secret,
        &runs,
        &notes,
        &report_runs,
    )
    .await?;
    say(format!(
        "\n== Secrets check: {} initial passwords (each revealed once through its one-time link, as its new starter would) and {} tokens and secrets looked for in {} Redis keys, {} ticket notes and this report: {}",
        secrets_check["passwords"],
        secrets_check["tokens"],
        secrets_check["redis_keys"],
        secrets_check["notes"],
        if secrets_check["found"].as_array().is_some_and(Vec::is_empty) {
            "none found".to_owned()
        } else {
            format!("FOUND {}", secrets_check["found"])
        }
    ));
    if !secrets_check["found"].as_array().is_some_and(Vec::is_empty) {
        bail!(
            "a secret was found where it must not be: {}",
            secrets_check["found"]
        );
    }

    let ledger: Value = http
        .get(format!("{sandbox}/admin/ledger"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let by_ticket: BTreeMap<i64, String> = runs.iter().map(|(c, t, _)| (*t, c.clone())).collect();
    let changes = changes_by_company(&ledger, &notes, &by_ticket);
    say(
        "\n== What changed, from the sandbox's ledger (each directory, mailbox and ticket)"
            .to_owned(),
    );
    for (company, systems) in &changes {
        say(format!("{company}:"));
        for (system, lines) in systems {
            say(format!("  {system}:"));
            for l in lines {
                say(format!("    {l}"));
            }
        }
    }
    if !all_completed {
        bail!("not every run completed (see above)");
    }
    Ok(json!({
        "api": base,
        "dashboard": format!("{base}/"),
        "sandbox": sandbox,
        "seed": seeded,
        "runs": out_runs,
        "approval": approval,
        "approved_in_inbox": decided,
        "secrets_check": secrets_check,
        "changes": changes,
    }))
}

/// The sandbox's time: the system clock plus how far the demo has moved the sandbox's clock on.
#[derive(Debug, Default)]
struct SandboxTime {
    offset_seconds: std::sync::atomic::AtomicI64,
}

impl SandboxTime {
    fn set_offset(&self, seconds: i64) {
        self.offset_seconds
            .store(seconds, std::sync::atomic::Ordering::SeqCst);
    }
}

impl steward_engine::clock::Clock for SandboxTime {
    fn now(&self) -> steward_schemas::Timestamp {
        let offset = self
            .offset_seconds
            .load(std::sync::atomic::Ordering::SeqCst);
        let now = steward_engine::clock::SystemClock.now();
        steward_schemas::Timestamp::from_micros(now.as_micros() + offset * 1_000_000)
    }
}

/// Every `delivery.reference` (a one-time secret link) in `v`.
fn deliveries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("delivery")
                .and_then(|d| d["reference"].as_str())
                .filter(|r| r.starts_with("http"))
            {
                out.push(r.to_owned());
            }
            m.values().for_each(|x| deliveries(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| deliveries(x, out)),
        _ => {}
    }
}

/// The secret on a revealed secret link's page (the text of its `<pre>`).
fn revealed(html: &str) -> Option<String> {
    let start = html.find("<pre")?;
    let after = start + html[start..].find('>')? + 1;
    let end = after + html[after..].find("</pre>")?;
    Some(
        html[after..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&amp;", "&"),
    )
}

/// Looks for the initial passwords and the secrets in play in every Redis key and value, every
/// ticket note and `report`. Returns counts, what was found where (by label, never the value),
/// and each secret's length and SHA-256, so a caller holding the process's logs can look for
/// them there too without being told them.
async fn secrets_check(
    store: &Store,
    http: &reqwest::Client,
    api_token: &str,
    webhook_secret: &str,
    runs: &[(String, i64, RunId)],
    notes: &[Value],
    report: &str,
) -> Result<Value> {
    use sha2::Digest as _;
    let mut secrets: Vec<(String, String)> = Vec::new();
    let mut passwords = 0;
    for (company, _, run) in runs {
        let view = RunView::load(store, *run)
            .await?
            .context("a run vanished")?;
        let mut links = Vec::new();
        deliveries(&serde_json::to_value(&view)?, &mut links);
        // The run shows a link more than once (the step's output, its history).
        links.sort();
        links.dedup();
        for link in links {
            let page = http.post(&link).send().await?;
            let status = page.status();
            let html = page.text().await?;
            let password = revealed(&html)
                .filter(|_| status.is_success())
                .ok_or_else(|| {
                    anyhow!(
                        "{company}: the one-time link of run {run} revealed nothing (HTTP {status})"
                    )
                })?;
            secrets.push((
                format!("{company}'s new starter's initial password"),
                password,
            ));
            passwords += 1;
        }
    }
    let fixed = [
        ("the technician's API token", api_token),
        ("the Autotask webhook secret", webhook_secret),
        ("Steward's Microsoft 365 app secret", SANDBOX_APP_SECRET),
        (
            "the Autotask API secret",
            super::sandbox::SANDBOX_AUTOTASK_SECRET,
        ),
        (
            "the ConnectWise private key",
            steward_sandbox::connectwise::PRIVATE_KEY,
        ),
        (
            "the HaloPSA API secret",
            steward_sandbox::halo::CLIENT_SECRET,
        ),
    ];
    let tokens = fixed.len();
    secrets.extend(
        fixed
            .iter()
            .map(|(l, v)| ((*l).to_owned(), (*v).to_owned())),
    );

    // Every key and value in Redis, as bytes.
    let db = store.db();
    let mut haystack: Vec<u8> = Vec::new();
    let mut keys = 0usize;
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = db
            .query(redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000))
            .await?;
        for key in batch {
            keys += 1;
            haystack.extend_from_slice(&key);
            haystack.push(b'\n');
            let kind: String = db.query(redis::cmd("TYPE").arg(&key)).await?;
            let parts: Vec<Vec<u8>> = match kind.as_str() {
                "string" => vec![db.query(redis::cmd("GET").arg(&key)).await?],
                "hash" => db.query(redis::cmd("HGETALL").arg(&key)).await?,
                "list" => {
                    db.query(redis::cmd("LRANGE").arg(&key).arg(0).arg(-1))
                        .await?
                }
                "set" => db.query(redis::cmd("SMEMBERS").arg(&key)).await?,
                "zset" => {
                    db.query(redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1))
                        .await?
                }
                "stream" => {
                    let v: redis::Value = db
                        .query(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
                        .await?;
                    vec![format!("{v:?}").into_bytes()]
                }
                _ => Vec::new(),
            };
            for p in parts {
                haystack.extend_from_slice(&p);
                haystack.push(b'\n');
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let notes_text = serde_json::to_string(notes)?;
    let contains = |hay: &[u8], needle: &str| {
        !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    };
    let mut found = Vec::new();
    for (label, value) in &secrets {
        for (place, hay) in [
            ("Redis", haystack.as_slice()),
            ("a ticket note", notes_text.as_bytes()),
            ("the report", report.as_bytes()),
        ] {
            if contains(hay, value) {
                found.push(json!({"secret": label, "in": place}));
            }
        }
    }
    let digests: Vec<Value> = secrets
        .iter()
        .map(|(label, value)| {
            let digest = sha2::Sha256::digest(value.as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            json!({"secret": label, "len": value.len(), "sha256": hex})
        })
        .collect();
    Ok(json!({
        "passwords": passwords,
        "tokens": tokens,
        "redis_keys": keys,
        "notes": notes.len(),
        "found": found,
        "digests": digests,
    }))
}

/// What [`drive`] works with.
struct Drive<'a> {
    store: &'a Store,
    c: &'a Client,
    http: &'a reqwest::Client,
    sandbox: &'a str,
    deadline: tokio::time::Instant,
    clock: &'a SandboxTime,
    /// When each run was first seen ended (real time).
    finished: std::sync::Mutex<std::collections::HashMap<RunId, std::time::Instant>>,
    /// The waits already fast-forwarded: (run, step, its next check).
    woken:
        tokio::sync::Mutex<std::collections::HashSet<(RunId, String, steward_schemas::Timestamp)>>,
}

/// Drives `runs` to their ends: each gate is approved, the [`GATED`] company's through the signed
/// link in its ticket's note (recorded in `approval`), the others by the approver through the API
/// as from their inbox (listed in `decided`); a step waiting on the runner or on Entra Connect's
/// sync is woken to look again, with the sandbox's clock moved through a sync cycle.
async fn drive(
    d: &Drive<'_>,
    runs: &[(String, i64, RunId)],
    approval: &mut Value,
    decided: &mut Vec<Value>,
    say: &impl Fn(String),
) -> Result<()> {
    let ids: Vec<RunId> = runs.iter().map(|(_, _, r)| *r).collect();
    loop {
        let mut open = 0;
        for (company, ticket_id, run) in runs {
            let snap = d.store.load(*run).await?.context("a run vanished")?;
            if snap.doc.state.status.is_terminal() {
                if let Ok(mut f) = d.finished.lock() {
                    f.entry(*run).or_insert_with(std::time::Instant::now);
                }
                continue;
            }
            if matches!(snap.doc.state.status, RunStatus::Paused { .. }) {
                // A paused run waits for a technician: the demo has failed; say why.
                if let Some(view) = RunView::load(d.store, *run).await? {
                    eprintln!("\n{company}: paused:");
                    crate::print::run(&view, false)?;
                }
                bail!("{company}'s run {run} paused (see above)");
            }
            open += 1;
            for (step, st) in &snap.doc.state.steps {
                match &st.state {
                    StepState::AwaitingApproval { .. } if company == GATED => {
                        if !approval.is_null() {
                            continue;
                        }
                        if let Some(a) =
                            approve_from_note(d.http, d.sandbox, *ticket_id, say).await?
                        {
                            say(format!(
                                "  {company}: approved through the link in ticket {ticket_id}'s note"
                            ));
                            *approval = a;
                        }
                    }
                    StepState::AwaitingApproval { .. } => {
                        d.c.post(
                            &format!("/v1/approvals/{run}/{step}"),
                            json!({"decision": "approve", "comment": "approved in the inbox (steward demo)"}),
                        )
                        .await?;
                        say(format!(
                            "  {company}: {APPROVER} approved run {run} (step `{step}`) in the inbox"
                        ));
                        decided.push(
                            json!({"company": company, "run": run, "step": step.to_string()}),
                        );
                    }
                    StepState::Polling { next_check, .. } => {
                        // A step waiting on the world (Entra Connect's sync cycle, Exchange
                        // Online provisioning a mailbox, a runner's job): the sandbox's time moves
                        // on past the wait, rather than the demo's, and the step is woken to look
                        // again now, as the runner's callback would. Once per wait.
                        if !d
                            .woken
                            .lock()
                            .await
                            .insert((*run, step.to_string(), *next_check))
                        {
                            continue;
                        }
                        let moved: Value = d
                            .http
                            .post(format!("{}/admin/clock/advance", d.sandbox))
                            .json(&json!({"seconds": 150}))
                            .send()
                            .await?
                            .error_for_status()?
                            .json()
                            .await?;
                        d.clock
                            .set_offset(moved["offset_seconds"].as_i64().unwrap_or(0));
                        steward_engine::runner::wake(
                            d.store,
                            &Binding {
                                run: run.to_string(),
                                step: step.to_string(),
                                seq: st.seq,
                                phase: "run".to_owned(),
                            },
                        )
                        .await?;
                    }
                    _ => {}
                }
            }
        }
        if open == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > d.deadline {
            // Show where each unfinished run stands, so the failure says why.
            for (company, _, run) in runs {
                if let Some(view) = RunView::load(d.store, *run).await?
                    && !view.run.state.status.is_terminal()
                {
                    eprintln!("\n{company}: unfinished:");
                    crate::print::run(&view, false)?;
                }
            }
            bail!("the runs did not finish in time: {ids:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a ticket in the sandbox's Autotask (as the customer's email to the helpdesk would).
async fn ticket(
    http: &reqwest::Client,
    sandbox: &str,
    company: &str,
    title: &str,
    description: &str,
) -> Result<i64> {
    let v: Value = http
        .post(format!("{sandbox}/admin/tickets"))
        .json(&json!({"company": company, "title": title, "description": description, "queue_id": 8, "issue_type": 10}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    v["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no ticket id in {v}"))
}

/// Waits for the webhook of `ticket` to have started a run.
async fn intake_run(c: &Client, ticket: i64, deadline: tokio::time::Instant) -> Result<RunId> {
    let id = format!("autotask:{AUTOTASK_ACCOUNT}:{ticket}");
    let mut last = Value::Null;
    loop {
        if let Ok(v) = c.get(&format!("/v1/psa/intakes/{id}")).await {
            if v["status"] == "refused" {
                bail!("ticket {ticket}'s run was refused: {}", v["problem"]);
            }
            last = v.clone();
            if let Some(run) = v["run"].as_str() {
                return run
                    .parse()
                    .map_err(|e| anyhow!("intake {id}: run {run}: {e}"));
            }
            if !v["missing"].as_array().is_none_or(Vec::is_empty) {
                bail!("ticket {ticket} is missing inputs: {}", v["missing"]);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("ticket {ticket}'s webhook started no run in time (its intake: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_notes(http: &reqwest::Client, sandbox: &str) -> Result<Vec<Value>> {
    let v: Value = http
        .get(format!("{sandbox}/admin/tickets"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(v["notes"].as_array().cloned().unwrap_or_default())
}

/// Finds the approve link in the ticket's "waiting for approval" note and uses it (then tries it
/// again, which a one-time link refuses). `None` while the note has not been written yet.
async fn approve_from_note(
    http: &reqwest::Client,
    sandbox: &str,
    ticket: i64,
    say: &impl Fn(String),
) -> Result<Option<Value>> {
    let notes = all_notes(http, sandbox).await?;
    let Some(link) = notes
        .iter()
        .filter(|n| n["ticket_id"] == ticket)
        .filter_map(|n| n["description"].as_str())
        .flat_map(str::lines)
        .find_map(|l| {
            l.strip_prefix("Approve (as ")
                .and_then(|rest| rest.split_once("): "))
                .map(|(_, url)| url.trim().to_owned())
        })
    else {
        return Ok(None);
    };
    say(format!(
        "  ticket {ticket}'s note carries the approver's one-time link: {link}"
    ));
    let first = http.post(&link).send().await?.status();
    say(format!("  approving through the link: HTTP {first}"));
    let again = http.post(&link).send().await?.status();
    say(format!("  using it again: HTTP {again}"));
    if !first.is_success() {
        bail!("the approve link answered {first}");
    }
    Ok(Some(
        json!({"ticket": ticket, "first_use": first.as_u16(), "second_use": again.as_u16()}),
    ))
}

/// The ledger's changes (duplicates left out) and the ticket notes, by company and system.
fn changes_by_company(
    ledger: &Value,
    notes: &[Value],
    tickets: &BTreeMap<i64, String>,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for e in ledger["entries"].as_array().into_iter().flatten() {
        // Ticket notes are listed from the tickets themselves, below, with their titles.
        if e["duplicate"] == true || e["service"] == "autotask" {
            continue;
        }
        let company = e["company"].as_str().unwrap_or("(msp)").to_owned();
        let system = match e["service"].as_str().unwrap_or("?") {
            "graph" => "Entra ID (Microsoft Graph)",
            "exchange" | "exchange_online" | "outlook" => "Exchange Online",
            "runner" => "Active Directory / Exchange Server (through the runner)",
            "datto" => "RMM jobs (Datto)",
            other => other,
        }
        .to_owned();
        let mut line = e["action"].as_str().unwrap_or("?").to_owned();
        if let Some(t) = e["target"].as_str() {
            line.push(' ');
            line.push_str(t);
        }
        if let (Some(run), Some(step)) = (e["run"].as_str(), e["step"].as_str()) {
            line.push_str(&format!(" (run {run}, step {step})"));
        }
        out.entry(company)
            .or_default()
            .entry(system)
            .or_default()
            .push(line);
    }
    for n in notes {
        let Some(company) = n["ticket_id"].as_i64().and_then(|t| tickets.get(&t)) else {
            continue;
        };
        let line = format!(
            "note on ticket {}: {}",
            n["ticket_id"],
            n["title"].as_str().unwrap_or_default()
        );
        let company = company.clone();
        out.entry(company)
            .or_default()
            .entry("Autotask tickets".to_owned())
            .or_default()
            .push(line);
    }
    out
}
