//! A Steward API served in-process on a free port, over a private Redis, with technicians and
//! their tokens, and a worker and scheduler running the runs it starts.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::Value;
use steward_engine::embedded::Persistence;
use steward_engine::planner::Workflows;
use steward_schemas::{CompanyScope, Role};
use steward_workers::Registry;
use tokio::task::JoinHandle;

use crate::{Env, InProcess, WorkerOpts, only};

/// A running API with its world.
#[derive(Debug)]
pub struct ApiEnv {
    /// Redis, the namespace, the company `contoso` (approvers alice and bob).
    pub env: Env,
    /// `http://127.0.0.1:port`.
    pub base: String,
    /// Tokens by name: `admin` (all companies), `alice` and `bob` (contoso's approvers),
    /// `tech` (technician of contoso, `tech@msp.example`), `outsider` (technician of fabrikam only).
    pub tokens: std::collections::HashMap<&'static str, String>,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// The worker and scheduler.
    pub worker: InProcess,
    server: JoinHandle<()>,
}

impl Drop for ApiEnv {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ApiEnv {
    /// Starts everything, offering the workflows in `workflows` (a folder of YAML files).
    pub async fn start(workflows: &Path) -> Result<Self> {
        let env = Env::start(Persistence::None).await?;
        let worker = env.worker(WorkerOpts::default()).await?;
        let registry = Arc::new(Registry::builtin());
        let flows =
            Workflows::load_dir(workflows, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let base = format!("http://{addr}");
        let mut state =
            steward_engine::api::state(env.store().await?, registry, flows, None, base.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
        // Tenant connections as `steward serve` has them (no app configured: connecting asks
        // for one).
        let connectors = steward_engine::tenants::build(
            &state.store,
            &steward_engine::config::Config::default(),
            &base,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        state.tenants = Some(connectors.connector);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, steward_engine::api::app(state)).await {
                eprintln!("the test API server stopped: {e}");
            }
        });
        let tokens = env
            .add_technicians(vec![
                ("admin", Role::Admin, CompanyScope::ALL),
                ("alice", Role::Technician, only("contoso")?),
                ("bob", Role::Technician, only("contoso")?),
                ("tech", Role::Technician, only("contoso")?),
                ("outsider", Role::Technician, only("fabrikam")?),
            ])
            .await?;
        Ok(Self {
            env,
            base,
            tokens,
            http: reqwest::Client::new(),
            worker,
            server,
        })
    }

    /// A request as `who` (a key of [`ApiEnv::tokens`], or `""` for none).
    pub fn req(&self, who: &str, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match self.tokens.get(who) {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// GET as `who`: (status, body).
    pub async fn get(&self, who: &str, path: &str) -> Result<(u16, Value)> {
        send(self.req(who, reqwest::Method::GET, path)).await
    }

    /// POST JSON as `who`: (status, body).
    pub async fn post(&self, who: &str, path: &str, body: Value) -> Result<(u16, Value)> {
        send(self.req(who, reqwest::Method::POST, path).json(&body)).await
    }
}

/// Sends a request: (status, JSON body or null).
pub async fn send(req: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let res = req.send().await.context("request failed")?;
    let status = res.status().as_u16();
    let text = res.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}
