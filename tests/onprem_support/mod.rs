//! A world for on-prem tests: a private Redis, the sandbox (its Datto RMM and simulated agent),
//! Steward's API in-process (the runner protocol's two calls), and a worker whose registry has
//! the on-prem executor connected to the sandbox's Datto. [`World::start_psa`] adds the PSA
//! side: the API offers a folder of workflows, the sandbox's Autotask sends its signed ticket
//! webhooks to the API's `/v1/hooks/autotask`, Steward's ticket notes (with their signed approval
//! links) are written back to the sandbox's tickets, and an admin token drives the API.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value, json};
use steward_engine::embedded::Persistence;
use steward_engine::planner::Workflows;
use steward_engine::store::NewRun;
use steward_sandbox::{Options, RunningSandbox, Sandbox};
use steward_schemas::{Company, RunId, RunStatus};
use steward_tests::{Env, InProcess, OffsetClock, WorkerOpts, wait_for};
use steward_workers::Registry;
use steward_workers::m365::MemorySink;
use steward_workers::onprem::{self, OnPrem};
use steward_workers::rmm::Rmm;
use steward_workers::rmm::datto::{self, Datto};

/// How long a run may take here.
pub const T: Duration = Duration::from_secs(60);

fn futures_lite_history(w: &World, run: RunId) -> String {
    let store = w.env.store.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()
            .and_then(|rt| rt.block_on(store.history(run)).ok())
            .map(|h| serde_json::to_string(&h).unwrap_or_default())
            .unwrap_or_default()
    })
    .join()
    .unwrap_or_default()
}

/// The key the sandbox's Autotask signs its webhooks with, and Steward's account `at` checks.
pub const HOOK_SECRET: &str = "at-lifecycle-hook-secret-5521";
/// The sandbox's Autotask API credentials (`sandbox/fixtures/msp.yaml`).
pub const AUTOTASK_USER: &str = "steward-api@examplemsp.com";
pub const AUTOTASK_SECRET: &str = "sandbox-autotask-secret";
pub const AUTOTASK_CODE: &str = "SANDBOXINTEGRATIONCODE";

/// The PSA side of a [`World::start_psa`] world.
pub struct PsaSide {
    /// An admin's API token (`admin@msp.example`).
    pub token: String,
    notes: tokio::task::JoinHandle<()>,
}

/// Everything an on-prem test talks to.
pub struct World {
    pub env: Env,
    pub sb: RunningSandbox,
    pub base: String,
    pub datto: Arc<Datto>,
    pub sink: MemorySink,
    pub worker: Option<InProcess>,
    /// Steward's clock: the system clock, caught up with the sandbox's (which tests move on
    /// through the waits they skip) whenever [`World::ticket`] raises a ticket.
    pub clock: Arc<OffsetClock>,
    pub psa: Option<PsaSide>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(p) = &self.psa {
            p.notes.abort();
        }
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// A Steward company for the sandbox's fabrikam or northwind.
pub fn company(id: &str, v: Value) -> Company {
    let mut base = json!({
        "id": id, "name": id,
        "approvers": ["alice@msp.example", "bob@msp.example"],
        "permissions": {"profile": "full_automation"},
    });
    for (k, x) in v.as_object().cloned().unwrap_or_default() {
        base[k] = x;
    }
    serde_json::from_value(base).expect("a well-formed company")
}

impl World {
    /// Starts it, with `companies` in Steward and the sandbox's fixture `fixture` (default msp).
    pub async fn start(companies: Vec<Company>, poll: Duration) -> Result<Self> {
        Self::start_with(companies, poll, Options::default()).await
    }

    /// [`World::start`] with the sandbox started with `options` (another fixture).
    pub async fn start_with(
        companies: Vec<Company>,
        poll: Duration,
        options: Options,
    ) -> Result<Self> {
        Self::start_inner(companies, poll, options, None).await
    }

    /// [`World::start_with`] with the PSA side: the API offers the workflows of the folder
    /// `workflows`; the sandbox's Autotask sends its signed webhooks to the API (account `at`,
    /// key [`HOOK_SECRET`]), which has the Autotask account with its API access for the notes;
    /// the notes writer runs. The companies link themselves to the PSA (`psa:`); the test sets
    /// the rules.
    pub async fn start_psa(
        companies: Vec<Company>,
        poll: Duration,
        options: Options,
        workflows: &Path,
    ) -> Result<Self> {
        let w = Self::start_inner(companies, poll, options, Some(workflows)).await?;
        let (s, b) = w
            .api(
                "PUT",
                "/v1/psa/accounts/at",
                Some(json!({
                    "provider": "autotask",
                    "webhook_secret": HOOK_SECRET,
                    "api_url": format!("{}/autotask/atservicesrest/v1.0", w.sb.base_url),
                    "api_username": AUTOTASK_USER,
                    "api_secret": AUTOTASK_SECRET,
                    "api_integration_code": AUTOTASK_CODE,
                })),
            )
            .await?;
        anyhow::ensure!(s == 200, "the PSA account: {s} {b}");
        Ok(w)
    }

    async fn start_inner(
        companies: Vec<Company>,
        poll: Duration,
        mut options: Options,
        workflows: Option<&Path>,
    ) -> Result<Self> {
        let clock = Arc::new(OffsetClock::default());
        let env = Env::start_with_clock(Persistence::None, clock.clone()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        if workflows.is_some() {
            options.webhook_url = Some(format!("{base}/v1/hooks/autotask?account=at"));
            options.webhook_secret = Some(HOOK_SECRET.to_owned());
        }
        let sb = Sandbox::spawn(options).await?;
        let registry = Arc::new(Registry::builtin());
        let flows = match workflows {
            Some(dir) => Workflows::load_dir(dir, &registry).map_err(|e| anyhow::anyhow!("{e}"))?,
            None => Workflows::default(),
        };
        let state =
            steward_engine::api::state(env.store().await?, registry, flows, None, base.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        let notes = workflows.map(|_| {
            tokio::spawn(steward_engine::psa::notes::serve(
                &state,
                std::future::pending(),
            ))
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, steward_engine::api::app(state)).await;
        });
        let auth = steward_engine::auth::Auth::for_store(&env.store);
        for (email, key) in [("alice@msp.example", "alice"), ("bob@msp.example", "bob")] {
            auth.add_technician(
                email,
                key,
                steward_schemas::Role::Technician,
                steward_schemas::CompanyScope::ALL,
            )
            .await?;
        }
        let psa = match notes {
            Some(notes) => {
                let admin = auth
                    .add_technician(
                        "admin@msp.example",
                        "admin",
                        steward_schemas::Role::Admin,
                        steward_schemas::CompanyScope::ALL,
                    )
                    .await?;
                let (_, token) = auth.create_token(admin.id, "test").await?;
                Some(PsaSide { token, notes })
            }
            None => None,
        };
        // The companies as given: one the harness made already (its sample contoso) is replaced.
        let registered = env.companies();
        for c in companies {
            match registered.create(c.clone()).await {
                Ok(_) => {}
                Err(steward_engine::companies::Error::Exists(_)) => {
                    registered
                        .update(c, None)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                Err(e) => anyhow::bail!("{e:?}"),
            }
        }
        let config = datto::Config::new(
            &format!("{}/datto", sb.base_url),
            steward_engine::runner::SANDBOX_DATTO_KEY,
            steward_engine::runner::SANDBOX_DATTO_SECRET,
            "?",
        )?;
        let mut client = Datto::new(
            config,
            Some(datto::Shared {
                redis: env.store.db().manager(),
                namespace: env.namespace.clone(),
            }),
        )?;
        let uid = client
            .find_component(steward_engine::runner::RUNNER_COMPONENT)
            .await?;
        client.set_component(uid);
        let datto = Arc::new(client);
        let sink = MemorySink::new();
        let mut w = Self {
            env,
            sb,
            base,
            datto,
            sink,
            worker: None,
            clock,
            psa,
            server,
        };
        w.start_worker(poll).await?;
        Ok(w)
    }

    /// The on-prem executor of this world.
    pub fn onprem(&self, poll: Duration) -> OnPrem {
        let mut oc = onprem::Config::new(&self.base);
        oc.poll = poll;
        oc.undo_wait = Duration::from_secs(30);
        OnPrem::new(
            self.datto.clone() as Arc<dyn Rmm>,
            self.env.store.db().manager(),
            &self.env.namespace,
            oc,
        )
        .with_secrets(Arc::new(self.sink.clone()))
    }

    /// (Re)starts the in-process worker and scheduler with `registry`.
    pub async fn start_worker_with(&mut self, registry: Registry) -> Result<()> {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
        self.worker = Some(
            self.env
                .worker(WorkerOpts {
                    registry: Some(registry),
                    ..WorkerOpts::default()
                })
                .await?,
        );
        Ok(())
    }

    /// (Re)starts the in-process worker and scheduler.
    pub async fn start_worker(&mut self, poll: Duration) -> Result<()> {
        let registry = Registry::connected(None, Some(self.onprem(poll)));
        self.start_worker_with(registry).await
    }

    /// Starts a run of `yaml` for `company`.
    pub async fn run(&self, yaml: &str, company: &str, inputs: Value) -> Result<RunId> {
        let plan = Arc::new(steward_core::Plan::load(
            "test.yaml",
            yaml,
            Some(&Registry::builtin()),
        )?);
        Ok(self
            .env
            .store
            .create_run(NewRun {
                plan,
                company: company.parse()?,
                company_settings: Map::new(),
                inputs: inputs.as_object().cloned().unwrap_or_default(),
                requested_by: "test".to_owned(),
                start_at: None,
                ticket: None,
            })
            .await?)
    }

    /// Waits for the run's gate `approval` to open and approves it as alice.
    pub async fn approve(&self, run: RunId) -> Result<()> {
        let store = &self.env.store;
        let r = wait_for("the gate to open", T, || async move {
            let snap = store.load(run).await?.context("run")?;
            Ok(matches!(
                snap.doc.state.steps.get("approval").map(|s| &s.state),
                Some(steward_schemas::StepState::AwaitingApproval { .. })
            )
            .then_some(()))
        })
        .await
        .with_context(|| format!("history: {}", futures_lite_history(self, run)));
        if r.is_err() {
            let jobs = self.admin("GET", "/jobs", None).await?;
            let all = jobs["jobs"].as_array().cloned().unwrap_or_default();
            for j in &all[all.len().saturating_sub(4)..] {
                eprintln!("job {} {}: {}", j["uid"], j["name"], j["run"]["stdout"]);
            }
        }
        r?;
        self.env
            .apply_ok(
                run,
                &steward_schemas::Event::ApprovalDecided {
                    step: "approval".parse()?,
                    by: "alice@msp.example".to_owned(),
                    approve: true,
                    comment: None,
                    via: "api".to_owned(),
                },
            )
            .await?;
        Ok(())
    }

    /// Waits for the run to end.
    pub async fn end(&self, run: RunId) -> Result<RunStatus> {
        match self.env.wait_end(run, T).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let state = self.env.store.load(run).await?.map(|s| s.doc.state);
                let jobs = self.admin("GET", "/jobs", None).await.unwrap_or_default();
                bail!(
                    "{e}\nstate: {}\nhistory: {}\nsandbox jobs: {jobs:#}",
                    serde_json::to_string_pretty(&state)?,
                    self.history(run).await?
                )
            }
        }
    }

    /// A sandbox admin call.
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let mut req = http().request(method.parse()?, format!("{}/admin{path}", self.sb.base_url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        if !(200..300).contains(&status) {
            bail!("{method} /admin{path} answered {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// A call to Steward's API as the admin of a [`World::start_psa`] world: (status, body).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let token = &self.psa.as_ref().context("not a PSA world")?.token;
        let mut req = http()
            .request(method.parse()?, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Creates a ticket in the sandbox's Autotask for `company` (queue 8, issue type 10), as a
    /// customer's email to the helpdesk would; its webhook goes to Steward. Its id.
    ///
    /// Steward's clock first catches up with the sandbox's: the time the test skipped through
    /// (sync cycles, provisioning delays) has passed for Steward too by the time the next request
    /// arrives, so the webhook's event time is fresh. (Only here, between runs: moved while a run
    /// waits on a runner's job, it would count each skip against the step's `max_wait`.)
    pub async fn ticket(&self, company: &str, title: &str, description: &str) -> Result<i64> {
        let clock = self.admin("GET", "/clock", None).await?;
        self.clock.set_offset(
            clock["offset_seconds"]
                .as_i64()
                .with_context(|| format!("no offset in {clock}"))?,
        );
        let v = self
            .admin(
                "POST",
                "/tickets",
                Some(json!({"company": company, "title": title, "description": description, "queue_id": 8, "issue_type": 10})),
            )
            .await?;
        v["id"]
            .as_i64()
            .with_context(|| format!("no ticket id in {v}"))
    }

    /// Waits for ticket `ticket`'s intake (account `at`) to reach `status`; returns it.
    pub async fn intake(&self, ticket: i64, status: &str) -> Result<Value> {
        let path = format!("/v1/psa/intakes/autotask:at:{ticket}");
        let found = wait_for(
            &format!("ticket {ticket}'s intake to be {status}"),
            T,
            || async {
                let (s, v) = self.api("GET", &path, None).await?;
                Ok((s == 200 && v["status"] == status).then_some(v))
            },
        )
        .await;
        match found {
            Ok(v) => Ok(v),
            Err(e) => {
                let (_, last) = self.api("GET", &path, None).await?;
                let (_, ignored) = self.api("GET", "/v1/psa/ignored", None).await?;
                let sent = self.admin("GET", "/webhooks", None).await?;
                Err(e.context(format!(
                    "its intake: {last}\nignored: {ignored}\nthe sandbox's webhooks: {sent}"
                )))
            }
        }
    }

    /// Every note on `ticket` in the sandbox's Autotask.
    pub async fn notes(&self, ticket: i64) -> Result<Vec<Value>> {
        let v = self.admin("GET", "/tickets", None).await?;
        Ok(v["notes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["ticket_id"] == ticket)
            .cloned()
            .collect())
    }

    /// Waits for a note titled `title` on `ticket`.
    pub async fn note(&self, ticket: i64, title: &str) -> Result<Value> {
        wait_for(
            &format!("a `{title}` note on ticket {ticket}"),
            T,
            || async {
                Ok(self
                    .notes(ticket)
                    .await?
                    .into_iter()
                    .find(|n| n["title"] == title))
            },
        )
        .await
    }

    /// Approves the gate `step` of `run` through the signed link in the "waiting for approval"
    /// note Steward wrote for it on `ticket`, and checks that the link works once only. `false`
    /// while that note has not been written yet.
    pub async fn approve_from_note(&self, ticket: i64, run: RunId, step: &str) -> Result<bool> {
        let waiting = format!("Waiting for approval at `{step}` (run {run})");
        let notes = self.notes(ticket).await?;
        let Some(text) = notes
            .iter()
            .filter(|n| n["title"] == "Steward: waiting for approval")
            .filter_map(|n| n["description"].as_str())
            .find(|d| d.starts_with(&waiting))
        else {
            return Ok(false);
        };
        let link = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("Approve (as ")
                    .and_then(|rest| rest.split_once("): "))
                    .map(|(_, url)| url.trim().to_owned())
            })
            .with_context(|| format!("no approve link in {text}"))?;
        anyhow::ensure!(link.starts_with(&self.base), "{link}");
        let first = http().post(&link).send().await?;
        let status = first.status();
        anyhow::ensure!(
            status.is_success(),
            "the approve link answered {status}: {}",
            first.text().await?
        );
        let again = http().post(&link).send().await?.status();
        anyhow::ensure!(again == 410, "a used link answered {again}");
        Ok(true)
    }

    /// The sandbox's AD user `sam` of `company` (deleted ones too), if any.
    pub async fn ad_user(&self, company: &str, sam: &str) -> Result<Option<Value>> {
        let w = self
            .admin("GET", &format!("/world/{company}"), None)
            .await?;
        let all: Vec<&Value> = w["ad"]["users"]
            .as_array()
            .context("ad users")?
            .iter()
            .filter(|u| u["sam_account_name"].as_str() == Some(sam))
            .collect();
        // The live account if there is one, else the last deleted one.
        Ok(all
            .iter()
            .find(|u| u["deleted"] != true)
            .or(all.last())
            .map(|u| (*u).clone()))
    }

    /// The sandbox's group `name` of `company`.
    pub async fn ad_group(&self, company: &str, name: &str) -> Result<Value> {
        let w = self
            .admin("GET", &format!("/world/{company}"), None)
            .await?;
        w["ad"]["groups"]
            .as_array()
            .context("ad groups")?
            .iter()
            .find(|g| g["name"].as_str() == Some(name))
            .cloned()
            .context("no such group")
    }

    /// The runner changes recorded for `company`, as `action target` lines.
    pub async fn changes(&self, company: &str) -> Result<Vec<String>> {
        let l = self
            .admin("GET", &format!("/ledger?company={company}"), None)
            .await?;
        Ok(l["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .filter(|e| e["service"] == "runner")
            .map(|e| {
                format!(
                    "{} {}",
                    e["action"].as_str().unwrap_or_default(),
                    e["target"].as_str().unwrap_or_default()
                )
            })
            .collect())
    }

    /// The run's history events, as JSON text.
    pub async fn history(&self, run: RunId) -> Result<String> {
        let h = self.env.store.history(run).await?;
        Ok(serde_json::to_string(&h)?)
    }
}
