//! A world for on-prem tests: a private Redis, the sandbox (its Datto RMM and simulated agent),
//! Steward's API in-process (the runner protocol's two calls), and a worker whose registry has
//! the on-prem executor connected to the sandbox's Datto.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Map, Value, json};
use steward_engine::embedded::Persistence;
use steward_engine::planner::Workflows;
use steward_engine::store::NewRun;
use steward_sandbox::{Options, RunningSandbox, Sandbox};
use steward_schemas::{Company, RunId, RunStatus};
use steward_tests::{Env, InProcess, WorkerOpts};
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

/// Everything an on-prem test talks to.
pub struct World {
    pub env: Env,
    pub sb: RunningSandbox,
    pub base: String,
    pub datto: Arc<Datto>,
    pub sink: MemorySink,
    pub worker: Option<InProcess>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.server.abort();
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
        let env = Env::start(Persistence::None).await?;
        let sb = Sandbox::spawn(options).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let state = steward_engine::api::state(
            env.store().await?,
            Arc::new(Registry::builtin()),
            Workflows::default(),
            None,
            base.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
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
        for c in companies {
            steward_engine::companies::ensure(&env.companies(), c)
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
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
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
        let registry = Registry::connected(None, Some(self.onprem(poll)));
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
        let r = steward_tests::wait_for("the gate to open", T, || async move {
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
