//! CLI commands that go through the HTTP API (`--api`; the token only from STEWARD_TOKEN).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// The environment variable the API token is read from. There is no flag: a flag's value shows
/// in `ps` and in shell history.
pub(crate) const TOKEN_VAR: &str = "STEWARD_TOKEN";

/// How long one API request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and how to print. The token is read from STEWARD_TOKEN only.
#[derive(Args, Debug, Clone)]
pub(crate) struct ApiArgs {
    /// The API's URL. The API token is read from STEWARD_TOKEN (never a flag: flags show in `ps`
    /// and shell history).
    #[arg(
        long,
        global = true,
        env = "STEWARD_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) api: String,
    /// Print JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The API token from STEWARD_TOKEN, if set and not empty.
pub(crate) fn token() -> Option<String> {
    std::env::var(TOKEN_VAR)
        .ok()
        .filter(|t| !t.trim().is_empty())
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

impl Client {
    pub(crate) fn new(args: &ApiArgs) -> Result<Self> {
        let token = token().ok_or_else(|| {
            anyhow!(
                "no API token: set {TOKEN_VAR} (an admin makes tokens: steward technicians token)"
            )
        })?;
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .context("cannot build the HTTP client")?,
            base: args.api.trim_end_matches('/').to_owned(),
            token,
            json: args.json,
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let req = req
            .bearer_auth(&self.token)
            .build()
            .with_context(|| format!("cannot make a request to the API at {}", self.base))?;
        let what = format!("{} {}", req.method(), req.url());
        let res = self
            .http
            .execute(req)
            .await
            .with_context(|| format!("{what}: cannot reach the API at {}", self.base))?;
        let status = res.status();
        let text = if status == reqwest::StatusCode::NO_CONTENT {
            String::new()
        } else {
            res.text()
                .await
                .with_context(|| format!("{what}: {status}, and the body could not be read"))?
        };
        let body: Option<Value> = if text.is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_str(&text).ok()
        };
        if status.is_success() {
            return body.ok_or_else(|| {
                anyhow!(
                    "{what}: {status}, but the answer is not JSON: {}",
                    excerpt(&text)
                )
            });
        }
        let Some(body) = body.filter(|b| b["error"].is_object()) else {
            bail!("{what}: {status}: {}", excerpt(&text));
        };
        let e = &body["error"];
        let mut msg = format!(
            "{what}: {} ({}): {}",
            status.as_u16(),
            e["code"].as_str().unwrap_or("error"),
            e["message"].as_str().unwrap_or("(no message)")
        );
        if let Some(f) = e["field"].as_str() {
            msg.push_str(&format!("\n  field: {f}"));
        }
        if let Some(f) = e["fix"].as_str() {
            msg.push_str(&format!("\n  fix: {f}"));
        }
        if let Some(details) = e["details"].as_array() {
            for d in details.iter().take(50) {
                msg.push_str(&format!("\n  - {d}"));
            }
        }
        bail!(msg)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    pub(crate) async fn post_csv(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "text/csv")
                .body(body),
        )
        .await
    }

    pub(crate) fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The start of a response body, for an error message: at most 200 characters, on one line.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// `steward runs`.
#[derive(Args, Debug)]
pub(crate) struct RunsArgs {
    /// Only this company's runs.
    #[arg(long)]
    company: Option<String>,
    /// Only runs in this status.
    #[arg(long)]
    status: Option<String>,
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only runs created at or after this time (RFC 3339, e.g. `2026-11-01T00:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// Only runs created before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Continue a listing from where the last page ended.
    #[arg(long)]
    cursor: Option<String>,
    /// How many.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

pub(crate) async fn runs(api: &ApiArgs, args: RunsArgs) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let mut q = vec![format!("limit={}", args.limit)];
    for (k, v) in [
        ("company", &args.company),
        ("status", &args.status),
        ("workflow", &args.workflow),
        ("since", &args.since),
        ("until", &args.until),
        ("cursor", &args.cursor),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", urlencode(v)));
        }
    }
    let page = c.get(&format!("/v1/runs?{}", q.join("&"))).await?;
    c.print(&page, |p| {
        for r in p["runs"].as_array().into_iter().flatten() {
            println!(
                "{}  {:<16} {:<14} {:<16} {}  by {}",
                s(&r["run"]),
                s(&r["status"]),
                s(&r["company"]),
                s(&r["workflow"]),
                s(&r["created_at"]),
                s(&r["requested_by"])
            );
        }
        if let Some(next) = p["next_cursor"].as_str() {
            println!("(more: --cursor {next})");
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn approvals(api: &ApiArgs) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let inbox = c.get("/v1/approvals").await?;
    c.print(&inbox, |i| {
        let list = i["approvals"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("nothing waits for your decision");
        }
        for g in list {
            println!(
                "{}  {} for {} (asked by {})",
                s(&g["reference"]),
                s(&g["workflow"]),
                s(&g["company_name"]),
                s(&g["requested_by"])
            );
            if !s(&g["message"]).is_empty() {
                println!("    {}", s(&g["message"]));
            }
            println!(
                "    {} of {} approvals{}",
                g["approvals"].as_array().map_or(0, Vec::len),
                g["quorum"],
                g["expires_at"]
                    .as_str()
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default()
            );
            if !s(&g["custom_instructions"]).is_empty() {
                println!("    company instructions: {}", s(&g["custom_instructions"]));
            }
            for u in g["unlocks"].as_array().into_iter().flatten() {
                println!(
                    "    unlocks {:<20} {:<34} {} · {}  {}",
                    s(&u["step"]),
                    s(&u["op"]),
                    s(&u["system"]),
                    s(&u["host"]),
                    u["params"]
                );
            }
        }
    });
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn decide(
    api: &ApiArgs,
    gate: &str,
    approve: bool,
    comment: Option<String>,
) -> Result<ExitCode> {
    let (run, step) = gate
        .split_once('/')
        .filter(|(r, s)| r.starts_with("run_") && !s.is_empty())
        .ok_or_else(|| anyhow!("`{gate}`: name the gate as RUN/STEP, e.g. run_01JD…/manager_approval (see steward approvals)"))?;
    let c = Client::new(api)?;
    let body = json!({"decision": if approve { "approve" } else { "reject" }, "comment": comment});
    let res = c.post(&format!("/v1/approvals/{run}/{step}"), body).await?;
    c.print(&res, |r| {
        println!(
            "{}: gate {} is {}; the run is {}",
            gate,
            s(&r["gate"]["gate"]),
            s(&r["gate"]["state"]),
            s(&r["run"]["status"])
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `steward companies …`.
#[derive(Subcommand, Debug)]
pub(crate) enum CompaniesCmd {
    /// List the companies you may act on.
    List,
    /// Show a company.
    Show {
        /// Its id.
        id: String,
    },
    /// Add a company from a JSON file (see schemas/json/company.schema.json).
    Add {
        /// The file.
        file: std::path::PathBuf,
    },
    /// Replace a company's settings from a JSON file.
    Update {
        /// The file.
        file: std::path::PathBuf,
        /// Only if it is still at this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Delete a company.
    Delete {
        /// Its id.
        id: String,
    },
    /// Import companies from a CSV file: all rows are checked first; nothing is written unless
    /// every row is valid. Columns: id, name, tenant_id, identity_provider, mailbox_provider,
    /// ad_runner, entra_connect_server, exchange_server, exchange_runner, rmm_provider, rmm_site,
    /// psa_provider, psa_company_id, upn_domain, usage_location, ou, username_format,
    /// approvers (separated by ;), permission_profile, custom_instructions.
    Import {
        /// The file.
        file: std::path::PathBuf,
    },
}

pub(crate) async fn companies(api: &ApiArgs, cmd: CompaniesCmd) -> Result<ExitCode> {
    let c = Client::new(api)?;
    let read_json = |file: &std::path::Path| -> Result<Value> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))
    };
    let show = |v: &Value| {
        let co = &v["company"];
        println!(
            "{:<20} v{:<3} {:<30} {} / {}  approvers: {}",
            s(&co["id"]),
            v["version"],
            s(&co["name"]),
            s(&co["identity_provider"]),
            s(&co["mailbox_provider"]),
            co["approvers"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    };
    match cmd {
        CompaniesCmd::List => {
            let list = c.get("/v1/companies").await?;
            c.print(&list, |l| l.as_array().into_iter().flatten().for_each(show));
        }
        CompaniesCmd::Show { id } => {
            let v = c.get(&format!("/v1/companies/{}", urlencode(&id))).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        CompaniesCmd::Add { file } => {
            let v = c.post("/v1/companies", read_json(&file)?).await?;
            c.print(&v, show);
        }
        CompaniesCmd::Update { file, if_version } => {
            let body = read_json(&file)?;
            let id = body["id"]
                .as_str()
                .ok_or_else(|| anyhow!("{}: the company has no `id`", file.display()))?
                .to_owned();
            let q = if_version
                .map(|v| format!("?if_version={v}"))
                .unwrap_or_default();
            let v = c
                .put(&format!("/v1/companies/{}{q}", urlencode(&id)), body)
                .await?;
            c.print(&v, show);
        }
        CompaniesCmd::Delete { id } => {
            c.delete(&format!("/v1/companies/{}", urlencode(&id)))
                .await?;
            c.print(&json!({ "deleted": id }), |_| println!("deleted {id}"));
        }
        CompaniesCmd::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("{}: cannot read", file.display()))?;
            let report = c.post_csv("/v1/companies/import", bytes).await?;
            c.print(&report, |r| {
                let n = |k: &str| r[k].as_array().map_or(0, Vec::len);
                println!(
                    "{} created, {} updated, {} unchanged",
                    n("created"),
                    n("updated"),
                    n("unchanged")
                );
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
