//! The HTTP API client the technicians' commands go through (`--api`; the token only from
//! STEWARD_TOKEN).

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde_json::Value;

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
        Self::with_token(args, token)
    }

    /// A client with a token from elsewhere (`steward demo` makes its own technician).
    pub(crate) fn with_token(args: &ApiArgs, token: String) -> Result<Self> {
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

    /// The API's URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let req = req
            .bearer_auth(&self.token)
            .build()
            .with_context(|| format!("cannot make a request to the API at {}", self.base))?;
        let what = format!("{} {}", req.method(), req.url());
        let res = self.http.execute(req).await.map_err(|e| {
            anyhow!(
                "cannot reach the API at {} ({what}): {}; is `steward serve` running there? (the URL is STEWARD_API_URL or --api)",
                self.base,
                cause(&e)
            )
        })?;
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
        if status == reqwest::StatusCode::UNAUTHORIZED {
            // The API's fix speaks of headers; here the token comes from the environment.
            msg.push_str(&format!(
                "\n  fix: set {TOKEN_VAR} to a token of yours that works; an admin makes one (steward technicians token --email YOU)"
            ));
        } else if let Some(f) = e["fix"].as_str() {
            msg.push_str(&format!("\n  fix: {f}"));
        }
        if let Some(details) = e["details"].as_array() {
            for d in details.iter().take(50) {
                msg.push_str(&format!("\n  - {}", detail(d)));
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

/// A JSON string, or `""`.
pub(crate) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// One detail of an API error in words: `row 2, column tenant_id: … (fix: …)`,
/// `inputs.user: is required (fix: …)`.
fn detail(d: &Value) -> String {
    let Some(map) = d.as_object() else {
        return d.as_str().map_or_else(|| d.to_string(), str::to_owned);
    };
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let place: Vec<String> = map
        .iter()
        .filter(|(k, v)| !matches!(k.as_str(), "message" | "reason" | "fix") && !v.is_null())
        .map(|(k, v)| match k.as_str() {
            "field" => text(v),
            other => format!("{} {}", other.replace('_', " "), text(v)),
        })
        .filter(|p| !p.trim().is_empty())
        .collect();
    let what = map
        .get("message")
        .or_else(|| map.get("reason"))
        .map(text)
        .unwrap_or_default();
    let mut out = match (place.is_empty(), what.is_empty()) {
        (true, _) => what,
        (false, true) => place.join(", "),
        (false, false) => format!("{}: {what}", place.join(", ")),
    };
    if let Some(fix) = map
        .get("fix")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
    {
        out.push_str(&format!(" (fix: {fix})"));
    }
    out
}

/// Why a request failed, said once: the innermost cause (`Connection refused (os error 111)`),
/// not every layer's wrapping of it.
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
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

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
