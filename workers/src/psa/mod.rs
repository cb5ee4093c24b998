//! Writing notes on PSA tickets: Autotask, ConnectWise PSA and HaloPSA, over their REST APIs.
//!
//! - Autotask: `POST {base}/Tickets/{id}/Notes` `{TicketID, Title, Description, NoteType, Publish}`
//!   with the `ApiIntegrationCode`, `UserName` and `Secret` headers. `Publish` 1 = all Autotask
//!   users, 2 = internal only; `NoteType` 1 (task detail) **[unverified: the picklist values are
//!   per-instance; these are the defaults documented for new instances]**.
//! - ConnectWise PSA: `POST {base}/service/tickets/{id}/notes` `{text, detailDescriptionFlag,
//!   internalAnalysisFlag, resolutionFlag}` with `Authorization: Basic base64(company+public:private)`
//!   and `clientId`.
//! - HaloPSA: a token from `POST {base}/auth/token` (client credentials, `scope=all`), then
//!   `POST {base}/api/Actions` `[{ticket_id, outcome_id, hiddenfromuser, note_html}]` (Halo refuses
//!   an action without an outcome; 7 is the built-in note outcome **[unverified per instance]**).
//!
//! Errors are classified: connect errors, timeouts, 429 and 5xx are retryable; other 4xx terminal.

use base64::Engine as _;
use serde_json::{Value, json};

/// A credential: shown as `[redacted]` in debug output.
#[derive(Clone)]
pub struct Credential(String);

impl Credential {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which PSA an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Autotask.
    Autotask,
    /// ConnectWise PSA.
    Connectwise,
    /// HaloPSA.
    Halo,
}

/// How to reach a PSA's REST API.
#[derive(Debug, Clone)]
pub struct Api {
    /// Which PSA.
    pub kind: Kind,
    /// The base URL (no trailing slash).
    pub base_url: String,
    /// Autotask UserName; ConnectWise `company+publicKey`; Halo client id.
    pub username: String,
    /// Autotask Secret; ConnectWise private key; Halo client secret.
    pub secret: Credential,
    /// Autotask ApiIntegrationCode; ConnectWise clientId; Halo tenant.
    pub code: Option<Credential>,
}

/// A note to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The ticket's id.
    pub ticket_id: String,
    /// A short title (Autotask requires one).
    pub title: String,
    /// The text.
    pub text: String,
    /// Technicians only.
    pub internal: bool,
}

/// A note that was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Try again later (the PSA is down, slow or rate-limiting).
    #[error("retryable: {0}")]
    Retryable(String),
    /// It will not work as it is (credentials, the ticket, the body).
    #[error("terminal: {0}")]
    Terminal(String),
}

fn classify(e: &reqwest::Error) -> Error {
    Error::Retryable(format!("the PSA could not be reached: {}", without_url(e)))
}

fn without_url(e: &reqwest::Error) -> String {
    // The URL may carry a tenant; the error text is enough.
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "(url)");
    }
    s
}

async fn answer(res: reqwest::Response) -> Result<Value, Error> {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    let snippet: String = text.chars().take(300).collect();
    if status.as_u16() == 429 || status.is_server_error() {
        Err(Error::Retryable(format!(
            "the PSA answered {status}: {snippet}"
        )))
    } else {
        Err(Error::Terminal(format!(
            "the PSA answered {status}: {snippet}"
        )))
    }
}

/// Writes a note on a ticket.
pub async fn post_note(http: &reqwest::Client, api: &Api, note: &Note) -> Result<(), Error> {
    let base = api.base_url.trim_end_matches('/');
    match api.kind {
        Kind::Autotask => {
            let ticket: i64 = note.ticket_id.parse().map_err(|_| {
                Error::Terminal(format!("ticket id `{}` is not a number", note.ticket_id))
            })?;
            let mut req = http
                .post(format!("{base}/Tickets/{ticket}/Notes"))
                .header("UserName", &api.username)
                .header("Secret", api.secret.expose())
                .json(&json!({
                    "TicketID": ticket,
                    "Title": note.title,
                    "Description": note.text,
                    "NoteType": 1,
                    "Publish": if note.internal { 2 } else { 1 },
                }));
            if let Some(code) = &api.code {
                req = req.header("ApiIntegrationCode", code.expose());
            }
            answer(req.send().await.map_err(|e| classify(&e))?).await?;
        }
        Kind::Connectwise => {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                api.username,
                api.secret.expose()
            ));
            let mut req = http
                .post(format!("{base}/service/tickets/{}/notes", note.ticket_id))
                .header("Authorization", format!("Basic {auth}"))
                .json(&json!({
                    "text": format!("{}\n\n{}", note.title, note.text),
                    "detailDescriptionFlag": !note.internal,
                    "internalAnalysisFlag": note.internal,
                    "resolutionFlag": false,
                }));
            if let Some(code) = &api.code {
                req = req.header("clientId", code.expose());
            }
            answer(req.send().await.map_err(|e| classify(&e))?).await?;
        }
        Kind::Halo => {
            let mut token_url = format!("{base}/auth/token");
            if let Some(tenant) = &api.code {
                token_url.push_str(&format!("?tenant={}", tenant.expose()));
            }
            let token = answer(
                http.post(token_url)
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("client_id", api.username.as_str()),
                        ("client_secret", api.secret.expose()),
                        ("scope", "all"),
                    ])
                    .send()
                    .await
                    .map_err(|e| classify(&e))?,
            )
            .await?;
            let Some(access) = token.get("access_token").and_then(Value::as_str) else {
                return Err(Error::Terminal(
                    "Halo's token answer has no access_token".to_owned(),
                ));
            };
            let ticket: i64 = note.ticket_id.parse().map_err(|_| {
                Error::Terminal(format!("ticket id `{}` is not a number", note.ticket_id))
            })?;
            answer(
                http.post(format!("{base}/api/Actions"))
                    .bearer_auth(access)
                    .json(&json!([{
                        "ticket_id": ticket,
                        "outcome_id": 7,
                        "hiddenfromuser": note.internal,
                        "note_html": format!("<p><b>{}</b></p><p>{}</p>", html(&note.title), html(&note.text).replace('\n', "<br>")),
                    }]))
                    .send()
                    .await
                    .map_err(|e| classify(&e))?,
            )
            .await?;
        }
    }
    Ok(())
}

/// Reads an Autotask ticket (`GET {base}/Tickets/{id}` → `{"item": …}`): an `Update` webhook
/// carries only the changed fields, so a ticket first seen through one is read in full.
pub async fn autotask_ticket(
    http: &reqwest::Client,
    api: &Api,
    id: &str,
) -> Result<Option<Value>, Error> {
    if api.kind != Kind::Autotask {
        return Err(Error::Terminal(
            "only Autotask tickets are read this way".to_owned(),
        ));
    }
    let id: i64 = id
        .parse()
        .map_err(|_| Error::Terminal(format!("ticket id `{id}` is not a number")))?;
    let mut req = http
        .get(format!(
            "{}/Tickets/{id}",
            api.base_url.trim_end_matches('/')
        ))
        .header("UserName", &api.username)
        .header("Secret", api.secret.expose());
    if let Some(code) = &api.code {
        req = req.header("ApiIntegrationCode", code.expose());
    }
    let v = answer(req.send().await.map_err(|e| classify(&e))?).await?;
    Ok(v.get("item").filter(|i| i.is_object()).cloned())
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
