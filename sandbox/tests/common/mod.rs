//! Helpers shared by the sandbox's HTTP tests: a running sandbox, tokens, and a tiny "Steward"
//! that serves runner scripts and receives runner callbacks and Autotask webhooks.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use steward_sandbox::{Options, RunningSandbox, Sandbox};

pub const CLIENT_ID: &str = "5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6";
pub const CLIENT_SECRET: &str = "sandbox-client-secret-steward";
pub const PARTNER_RT: &str = "sandbox-refresh-token-partner-tech";
pub const CONTOSO_TENANT: &str = "8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b";
pub const FABRIKAM_TENANT: &str = "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f";
pub const NORTHWIND_TENANT: &str = "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908";
pub const RUNNER_COMPONENT: &str = "0f6e2a8b-7c3d-4e5f-8a9b-0c1d2e3f4a5b";
pub const FAB_RUNNER: &str = "9d8c7b6a-5e4f-4a3b-9c2d-1e0f9a8b7c6d";
pub const FAB_EXCH: &str = "3c4d5e6f-7081-4c9d-8e1f-2a3b4c5d6e7f";
pub const FAB_OFFLINE: &str = "4d5e6f70-8192-4dae-9f20-3b4c5d6e7f80";
pub const NW_RUNNER: &str = "6f708192-a3b4-4c5d-9e6f-708192a3b4c5";
pub const GRAPH: &str = "https://graph.microsoft.com/.default";
pub const OUTLOOK: &str = "https://outlook.office365.com/.default";

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

pub async fn sandbox() -> Result<RunningSandbox> {
    Ok(Sandbox::spawn(Options::default()).await?)
}

pub async fn sandbox_with(opts: Options) -> Result<RunningSandbox> {
    Ok(Sandbox::spawn(opts).await?)
}

/// The default fixture with `edit` applied to its text, written to a temp file. Fails when the
/// edit changed nothing (the text it looks for is gone), so a test can't silently run against
/// the unchanged fixture.
pub fn fixture_variant(edit: impl FnOnce(String) -> String) -> Result<tempfile::NamedTempFile> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/msp.yaml"))?;
    let edited = edit(text.clone());
    if edited == text {
        bail!(
            "fixture_variant: the edit changed nothing; fixtures/msp.yaml no longer has the text it replaces"
        );
    }
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut f, edited.as_bytes())?;
    Ok(f)
}

pub async fn token_request(
    sb: &RunningSandbox,
    tenant: &str,
    form: &[(&str, &str)],
) -> Result<(u16, Value)> {
    let r = client()
        .post(format!("{}/login/{tenant}/oauth2/v2.0/token", sb.base_url))
        .form(form)
        .send()
        .await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await?))
}

pub async fn app_token(sb: &RunningSandbox, tenant: &str, scope: &str) -> Result<String> {
    let (status, body) = token_request(
        sb,
        tenant,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", scope),
        ],
    )
    .await?;
    if status != 200 {
        bail!("token request failed: {status} {body}");
    }
    Ok(body["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned())
}

pub struct Graph {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Graph {
    pub async fn new(sb: &RunningSandbox, tenant: &str) -> Result<Self> {
        Ok(Self {
            base: format!("{}/graph/v1.0", sb.base_url),
            token: app_token(sb, tenant, GRAPH).await?,
            http: client(),
        })
    }

    /// Graph with the partner technician's delegated token (the fixture's refresh token).
    pub async fn delegated(sb: &RunningSandbox, tenant: &str) -> Result<Self> {
        let (status, body) = token_request(
            sb,
            tenant,
            &[
                ("grant_type", "refresh_token"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("refresh_token", PARTNER_RT),
                ("scope", GRAPH),
            ],
        )
        .await?;
        if status != 200 {
            bail!("token request failed: {status} {body}");
        }
        Ok(Self {
            base: format!("{}/graph/v1.0", sb.base_url),
            token: body["access_token"]
                .as_str()
                .context("access_token")?
                .to_owned(),
            http: client(),
        })
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        self.call_with(method, path, body, None).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        correlation: Option<&str>,
    ) -> Result<(u16, Value)> {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self
            .http
            .request(method.parse()?, url)
            .bearer_auth(&self.token);
        if let Some(c) = correlation {
            req = req.header("X-Steward-Correlation", c);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
        };
        Ok((status, v))
    }
}

pub async fn admin(
    sb: &RunningSandbox,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let mut req = client().request(method.parse()?, format!("{}/admin{path}", sb.base_url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        },
    ))
}

pub async fn advance(sb: &RunningSandbox, seconds: i64) -> Result<()> {
    let (s, b) = admin(
        sb,
        "POST",
        "/clock/advance",
        Some(json!({"seconds": seconds})),
    )
    .await?;
    if s != 200 {
        bail!("advance failed: {s} {b}");
    }
    Ok(())
}

/// Every ledger entry; fails unless `/admin/ledger` answers 200 with an `entries` array.
pub async fn ledger(sb: &RunningSandbox) -> Result<Vec<Value>> {
    let (s, b) = admin(sb, "GET", "/ledger", None).await?;
    if s != 200 {
        bail!("GET /admin/ledger answered {s}: {b}");
    }
    b["entries"]
        .as_array()
        .cloned()
        .with_context(|| format!("GET /admin/ledger has no entries array: {b}"))
}

/// Adds fault rules (one rule or `{"rules": [...]}`); fails unless the sandbox answers 201.
pub async fn add_faults(sb: &RunningSandbox, rules: Value) -> Result<Vec<String>> {
    let (s, b) = admin(sb, "POST", "/faults", Some(rules.clone())).await?;
    if s != 201 {
        bail!("POST /admin/faults {rules} answered {s}: {b}");
    }
    b["ids"]
        .as_array()
        .context("POST /admin/faults: no ids")?
        .iter()
        .map(|i| {
            i.as_str()
                .map(str::to_owned)
                .context("a fault id is not a string")
        })
        .collect()
}

/// Exchange Online's InvokeCommand for one tenant, with an app token for it.
pub struct Exo {
    pub url: String,
    pub token: String,
    /// Sent as `X-Steward-Correlation` with every cmdlet when set.
    pub correlation: Option<String>,
}

impl Exo {
    pub async fn new(sb: &RunningSandbox, tenant: &str) -> Result<Self> {
        Ok(Self {
            url: format!(
                "{}/outlook/adminapi/beta/{tenant}/InvokeCommand",
                sb.base_url
            ),
            token: app_token(sb, tenant, OUTLOOK).await?,
            correlation: None,
        })
    }

    /// The same client, sending `correlation` (`run/step/attempt`) with every cmdlet.
    pub fn correlated(self, correlation: &str) -> Self {
        Self {
            correlation: Some(correlation.to_owned()),
            ..self
        }
    }

    /// Runs `cmdlet` with `params`; returns the status and the JSON body.
    pub async fn run(&self, cmdlet: &str, params: Value) -> Result<(u16, Value)> {
        let mut req = client()
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({"CmdletInput": {"CmdletName": cmdlet, "Parameters": params}}));
        if let Some(c) = &self.correlation {
            req = req.header("X-Steward-Correlation", c);
        }
        let r = req.send().await?;
        let s = r.status().as_u16();
        let text = r.text().await?;
        let v = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        Ok((s, v))
    }
}

/// Polls `check` until it returns `Some`, failing after `deadline`. Used only for work the
/// sandbox does on its own task (the agent, webhook delivery); each check is a real request.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out waiting for {what}");
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Base64 payload script in Steward's format.
pub fn script(op: &str, payload: &Value) -> String {
    format!(
        "# steward-op: {op}\n#Requires -Version 5.1\n$ErrorActionPreference = 'Stop'\n$StewardPayload = '{}'\n$p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json\n",
        base64::engine::general_purpose::STANDARD.encode(payload.to_string())
    )
}

/// A stand-in for Steward's HTTP side: serves `/scripts/{id}`, records `/callbacks/{id}` and
/// `/webhooks/autotask`, and reports each arrival on a channel.
#[derive(Clone, Default)]
pub struct Host {
    pub scripts: Arc<Mutex<Vec<(String, String)>>>,
    pub received: Arc<Mutex<Vec<Received>>>,
    notify: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub signature: Option<String>,
    pub body: Bytes,
}

pub struct RunningHost {
    pub host: Host,
    pub base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub const JOB_TOKEN: &str = "job-token-7f3a";

impl Host {
    pub async fn start() -> Result<RunningHost> {
        let host = Host::default();
        let app = Router::new()
            .route("/scripts/{id}", get(serve_script))
            .route("/callbacks/{id}", post(receive))
            .route("/webhooks/autotask", post(receive))
            .with_state(host.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(RunningHost {
            host,
            base: format!("http://{addr}"),
            _stop: tx,
        })
    }

    pub fn put_script(&self, id: &str, text: String) {
        self.scripts.lock().unwrap().push((id.to_owned(), text));
    }

    /// Waits until something arrived at `path`, up to `deadline`.
    pub async fn wait(&self, path: &str, deadline: Duration) -> Result<Received> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.notify.notified();
            if let Some(r) = self
                .received
                .lock()
                .unwrap()
                .iter()
                .find(|r| r.path == path)
                .cloned()
            {
                return Ok(r);
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                bail!("nothing arrived at {path}");
            }
        }
    }

    /// Waits until `n` requests arrived at `path`; returns them all.
    pub async fn wait_count(
        &self,
        path: &str,
        n: usize,
        deadline: Duration,
    ) -> Result<Vec<Received>> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.notify.notified();
            let all = self.all(path);
            if all.len() >= n {
                return Ok(all);
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                bail!("only {} of {n} requests arrived at {path}", all.len());
            }
        }
    }

    pub fn all(&self, path: &str) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

async fn serve_script(
    State(host): State<Host>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {JOB_TOKEN}") {
        return (StatusCode::UNAUTHORIZED, "bad job token".to_owned());
    }
    match host.scripts.lock().unwrap().iter().find(|(i, _)| *i == id) {
        Some((_, s)) => (StatusCode::OK, s.clone()),
        None => (StatusCode::NOT_FOUND, "no such script".to_owned()),
    }
}

async fn receive(
    State(host): State<Host>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    host.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        authorization: h("authorization"),
        signature: h("x-hook-signature"),
        body,
    });
    host.notify.notify_waiters();
    StatusCode::OK
}

pub struct Datto {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Datto {
    pub async fn new(sb: &RunningSandbox) -> Result<Self> {
        let http = client();
        let r = http
            .post(format!("{}/datto/auth/oauth/token", sb.base_url))
            .basic_auth("public-client", Some("public"))
            .form(&[
                ("grant_type", "password"),
                ("username", "SANDBOXDATTOKEY"),
                ("password", "sandbox-datto-secret"),
            ])
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            bail!("datto token failed: {status} {body}");
        }
        Ok(Self {
            base: format!("{}/datto/api/v2", sb.base_url),
            token: body["access_token"].as_str().context("token")?.to_owned(),
            http,
        })
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        self.call_with(method, path, body, None).await
    }

    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        correlation: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.parse()?, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(c) = correlation {
            req = req.header("X-Steward-Correlation", c);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?
            },
        ))
    }

    /// Creates a Steward runner quick job whose script is `script_id` on `host`.
    pub async fn runner_job(
        &self,
        device: &str,
        host: &RunningHost,
        script_id: &str,
        correlation: Option<&str>,
    ) -> Result<String> {
        let (s, b) = self
            .call_with(
                "PUT",
                &format!("/device/{device}/quickjob"),
                Some(json!({
                    "jobName": format!("steward {script_id}"),
                    "jobComponent": {
                        "componentUid": RUNNER_COMPONENT,
                        "variables": [
                            {"name": "steward_script_url", "value": format!("{}/scripts/{script_id}", host.base)},
                            {"name": "steward_callback_url", "value": format!("{}/callbacks/{script_id}", host.base)},
                            {"name": "steward_job_token", "value": JOB_TOKEN},
                        ]
                    }
                })),
                correlation,
            )
            .await?;
        if s != 200 {
            bail!("quickjob failed: {s} {b}");
        }
        Ok(b["job"]["uid"].as_str().context("job uid")?.to_owned())
    }

    /// Waits for a job to complete and returns its results document.
    pub async fn wait_job(&self, job: &str) -> Result<Value> {
        wait_for("job completion", Duration::from_secs(10), || async {
            let (_, b) = self.call("GET", &format!("/job/{job}"), None).await?;
            Ok((b["status"] == "completed").then_some(b))
        })
        .await
    }

    /// Runs `op` with `payload` on `device` and returns the runner's callback body.
    pub async fn run_op(
        &self,
        device: &str,
        host: &RunningHost,
        id: &str,
        op: &str,
        payload: Value,
    ) -> Result<Value> {
        host.host.put_script(id, script(op, &payload));
        let job = self.runner_job(device, host, id, None).await?;
        self.wait_job(&job).await?;
        let r = host
            .host
            .wait(&format!("/callbacks/{id}"), Duration::from_secs(10))
            .await?;
        Ok(serde_json::from_slice(&r.body)?)
    }
}
