//! PSA triggers: ticket webhooks from Autotask, ConnectWise PSA and HaloPSA start workflows.
//!
//! A delivery is, in order: authenticated as its PSA defines it ([`verify`]), refused (401) and
//! logged without its body when it is not; deduplicated (`SET NX` on the body's digest, kept a
//! week); read into a [`event::TicketEvent`]; mapped to a company (by the company's
//! `psa: {provider, company_id}`) and a workflow (the first matching [`rules::Rule`]); its inputs
//! read from the ticket ([`parse`]). Anything that does not map is recorded in a bounded list of
//! ignored events and answered 202. A ticket whose required inputs are missing or ambiguous
//! waits as an intake in `needs_input`, with a note on the ticket asking for exactly what is
//! missing, until the ticket is updated (its next webhook) or a technician supplies them. One
//! ticket starts at most one run; one (company, person) has at most one lifecycle run.
//!
//! Ticket notes ([`notes`]) are an outbox in Redis, written by a background task with retries,
//! so a PSA that is down delays notes and never the run.

pub mod accounts;
pub mod event;
pub mod guard;
pub mod notes;
pub mod parse;
pub mod rules;
pub mod verify;

use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use steward_schemas::company::PsaProvider;
use steward_schemas::{CompanyId, Event, RunId, TicketRef, Timestamp};

use crate::companies::Companies;
use crate::planner::{self, Library, Planner, StartRun};
use crate::store::Store;
use accounts::Stored;
use event::{Action, TicketEvent, TicketFields};
use rules::{Lifecycle, Rule};

/// How long a delivery's digest is remembered (redeliveries within it are duplicates).
pub const DEDUP_SECONDS: u64 = 7 * 86_400;

/// How many ignored events are kept.
pub const IGNORED_KEPT: isize = 200;

/// Every PSA key, from the namespace.
#[derive(Debug, Clone)]
pub struct PsaKeys {
    ns: String,
}

impl PsaKeys {
    /// Keys under the store's namespace.
    pub fn of(store: &Store) -> Self {
        Self {
            ns: store.keys().namespace().to_owned(),
        }
    }
    /// The accounts hash (id → sealed JSON).
    pub fn accounts(&self) -> String {
        format!("{}:psa:accounts", self.ns)
    }
    /// The rules (a JSON list).
    pub fn rules(&self) -> String {
        format!("{}:psa:rules", self.ns)
    }
    /// A delivery's digest.
    pub fn delivery(&self, digest: &str) -> String {
        format!("{}:psa:delivery:{digest}", self.ns)
    }
    /// The ignored events (newest first).
    pub fn ignored(&self) -> String {
        format!("{}:psa:ignored", self.ns)
    }
    /// An intake record.
    pub fn intake(&self, id: &str) -> String {
        format!("{}:psa:intake:{id}", self.ns)
    }
    /// Every intake by last change (ms).
    pub fn intakes(&self) -> String {
        format!("{}:psa:intakes", self.ns)
    }
    /// A short lock while one delivery of a ticket is handled.
    pub fn lock(&self, id: &str) -> String {
        format!("{}:psa:lock:{id}", self.ns)
    }
    /// The lifecycle run of a (company, person).
    pub fn person(&self, company: &CompanyId, person: &str) -> String {
        format!("{}:psa:person:{company}:{person}", self.ns)
    }
    /// Notes: the records (id → JSON).
    pub fn notes(&self) -> String {
        format!("{}:psa:notes", self.ns)
    }
    /// Notes due, by due time (ms).
    pub fn notes_due(&self) -> String {
        format!("{}:psa:notes:due", self.ns)
    }
    /// Intakes waiting for a run to end.
    pub fn waiting(&self, run: RunId) -> String {
        format!("{}:psa:waiting:{run}", self.ns)
    }
    /// Runs whose stages are written to tickets (run → last stage written).
    pub fn tracked(&self) -> String {
        format!("{}:psa:tracked", self.ns)
    }
}

/// A failure of the PSA machinery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The companies could not be read.
    #[error(transparent)]
    Companies(#[from] crate::companies::Error),
    /// No keyring: secrets cannot be sealed or opened.
    #[error("no secrets key is configured, so PSA secrets cannot be stored or read")]
    NoKeyring,
    /// A stored record does not parse (a bug or a hand edit).
    #[error("a stored PSA record is damaged: {0}")]
    Damaged(String),
}

/// Where an intake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntakeStatus {
    /// Waiting for inputs the ticket did not settle (see `missing`).
    NeedsInput,
    /// Its run started (see `run`).
    Started,
    /// Joined the run already in flight for the same person.
    Joined,
    /// Refused at start (see `problem`); a ticket update or a technician can try again.
    Refused,
    /// An offboarding waiting for the same person's onboarding (see `after`) to finish rolling
    /// back; it starts when that run ends.
    WaitingForRollback,
}

/// One ticket's way to a run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Intake {
    /// `<provider>:<account>:<ticket>`.
    pub id: String,
    /// Which PSA.
    pub provider: PsaProvider,
    /// The PSA account.
    pub account: String,
    /// The ticket's id.
    pub ticket_id: String,
    /// The company.
    pub company: CompanyId,
    /// The workflow.
    pub workflow: String,
    /// The rule's lifecycle kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// Where it is.
    pub status: IntakeStatus,
    /// The inputs read or supplied so far.
    pub inputs: Map<String, Value>,
    /// Supplied by technicians (win over the ticket).
    #[serde(default)]
    pub supplied: Map<String, Value>,
    /// What is still needed.
    #[serde(default)]
    pub missing: Vec<parse::Missing>,
    /// The ticket as last seen.
    pub ticket: TicketFields,
    /// The run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// Why the start was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The run it waits for (`waiting_for_rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<RunId>,
    /// When it was last changed.
    pub updated_at: Timestamp,
}

/// An event recorded and not acted on.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Ignored {
    /// When.
    pub at: Timestamp,
    /// Which PSA.
    pub provider: PsaProvider,
    /// The account.
    pub account: String,
    /// The ticket, when the payload was readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
    /// The PSA company id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_id: Option<String>,
    /// Why it was ignored.
    pub reason: String,
}

/// What a delivery did.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    /// `started`, `joined`, `needs_input`, `waiting_for_rollback`, `already_started`,
    /// `duplicate`, `ignored`, `refused`.
    pub outcome: String,
    /// The intake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intake: Option<String>,
    /// The run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// In a sentence.
    pub text: String,
}

/// Why a delivery was refused before anything was recorded.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Not authentic, or stale: 401.
    #[error("refused: {0}")]
    Refused(#[from] verify::Refusal),
    /// No account to check it against: 401 (named in the log only).
    #[error("no PSA account `{0}` for this provider")]
    NoAccount(String),
    /// Steward failed: 503, so the PSA retries.
    #[error(transparent)]
    Internal(#[from] Error),
}

/// The PSA trigger service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Psa {
    /// Runs.
    pub store: Store,
    /// Companies.
    pub companies: Companies,
    /// Starts runs.
    pub planner: Planner,
    /// Workflows.
    pub workflows: Library,
    /// Keys.
    pub keys: PsaKeys,
}

/// The HTTP client for PSA calls (signing keys, notes).
pub fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(15))
            .build()
            .expect("a default reqwest client builds")
    })
}

fn digest(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

fn provider_name(p: PsaProvider) -> &'static str {
    match p {
        PsaProvider::Autotask => "autotask",
        PsaProvider::Connectwise => "connectwise",
        PsaProvider::Halopsa => "halopsa",
    }
}

impl Psa {
    /// The service over a store.
    pub fn new(store: Store, planner: Planner, workflows: Library) -> Self {
        Self {
            companies: Companies::for_store(&store),
            keys: PsaKeys::of(&store),
            store,
            planner,
            workflows,
        }
    }

    fn ring(&self) -> Result<&steward_secrets::Keyring, Error> {
        self.store.secrets().ok_or(Error::NoKeyring)
    }

    /// Every account.
    pub async fn accounts(&self) -> Result<Vec<Stored>, Error> {
        let all: Vec<(String, String)> = self
            .store
            .db()
            .query(redis::cmd("HGETALL").arg(self.keys.accounts()))
            .await?;
        all.into_iter()
            .map(|(_, v)| serde_json::from_str(&v).map_err(|e| Error::Damaged(e.to_string())))
            .collect()
    }

    /// Stores an account (sealing its secrets).
    pub async fn put_account(
        &self,
        id: &str,
        input: accounts::AccountInput,
    ) -> Result<Result<Stored, accounts::Invalid>, Error> {
        let stored = match Stored::seal(id, input, self.ring()?) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e)),
        };
        let json = serde_json::to_string(&stored).expect("an account serialises");
        let _: () = self
            .store
            .db()
            .query(
                redis::cmd("HSET")
                    .arg(self.keys.accounts())
                    .arg(id)
                    .arg(json),
            )
            .await?;
        Ok(Ok(stored))
    }

    /// Removes an account; whether it existed.
    pub async fn delete_account(&self, id: &str) -> Result<bool, Error> {
        let n: i64 = self
            .store
            .db()
            .query(redis::cmd("HDEL").arg(self.keys.accounts()).arg(id))
            .await?;
        Ok(n > 0)
    }

    /// The account that should have sent a delivery.
    async fn account_for(
        &self,
        provider: PsaProvider,
        id: Option<&str>,
    ) -> Result<Stored, HookError> {
        let all = self.accounts().await?;
        let mut of: Vec<Stored> = all.into_iter().filter(|a| a.provider == provider).collect();
        match id {
            Some(id) => of
                .into_iter()
                .find(|a| a.id == id)
                .ok_or_else(|| HookError::NoAccount(id.to_owned())),
            None if of.len() == 1 => Ok(of.remove(0)),
            None => Err(HookError::NoAccount(
                "(none named, and not exactly one configured)".to_owned(),
            )),
        }
    }

    /// The rules.
    pub async fn rules(&self) -> Result<Vec<Rule>, Error> {
        let text: Option<String> = self
            .store
            .db()
            .query(redis::cmd("GET").arg(self.keys.rules()))
            .await?;
        match text {
            None => Ok(Vec::new()),
            Some(t) => serde_json::from_str(&t).map_err(|e| Error::Damaged(e.to_string())),
        }
    }

    /// Replaces the rules.
    pub async fn put_rules(&self, rules: &[Rule]) -> Result<(), Error> {
        let json = serde_json::to_string(rules).expect("rules serialise");
        let _: () = self
            .store
            .db()
            .query(redis::cmd("SET").arg(self.keys.rules()).arg(json))
            .await?;
        Ok(())
    }

    /// The ignored events, newest first.
    pub async fn ignored(&self) -> Result<Vec<Ignored>, Error> {
        let list: Vec<String> = self
            .store
            .db()
            .query(
                redis::cmd("LRANGE")
                    .arg(self.keys.ignored())
                    .arg(0)
                    .arg(IGNORED_KEPT - 1),
            )
            .await?;
        Ok(list
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }

    async fn ignore(&self, item: Ignored) -> Result<Receipt, Error> {
        tracing::info!(
            psa = provider_name(item.provider),
            account = %item.account,
            ticket = item.ticket_id.as_deref().unwrap_or("-"),
            reason = %item.reason,
            "PSA event ignored"
        );
        let json = serde_json::to_string(&item).expect("serialises");
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH")
            .arg(self.keys.ignored())
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(self.keys.ignored())
            .arg(0)
            .arg(IGNORED_KEPT - 1)
            .ignore();
        let () = self.store.db().pipe(&pipe).await?;
        Ok(Receipt {
            outcome: "ignored".to_owned(),
            intake: None,
            run: None,
            text: format!("recorded and ignored: {}", item.reason),
        })
    }

    /// An intake.
    pub async fn intake(&self, id: &str) -> Result<Option<Intake>, Error> {
        let text: Option<String> = self
            .store
            .db()
            .query(redis::cmd("GET").arg(self.keys.intake(id)))
            .await?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| Error::Damaged(e.to_string())))
            .transpose()
    }

    /// Intakes, most recently changed first (at most `limit`).
    pub async fn intakes(&self, limit: usize) -> Result<Vec<Intake>, Error> {
        let ids: Vec<String> = self
            .store
            .db()
            .query(
                redis::cmd("ZREVRANGE")
                    .arg(self.keys.intakes())
                    .arg(0)
                    .arg(limit.saturating_sub(1)),
            )
            .await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = self.intake(&id).await? {
                out.push(i);
            }
        }
        Ok(out)
    }

    async fn save(&self, intake: &mut Intake) -> Result<(), Error> {
        intake.updated_at = self.store.clock().now();
        let json = serde_json::to_string(&intake).expect("serialises");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.intake(&intake.id))
            .arg(json)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.intakes())
            .arg(intake.updated_at.as_micros() / 1000)
            .arg(&intake.id)
            .ignore();
        let () = self.store.db().pipe(&pipe).await?;
        Ok(())
    }

    /// Handles one delivery. `account` is the `?account=` of the hook URL.
    #[tracing::instrument(skip_all, fields(psa = provider_name(provider)))]
    pub async fn receive(
        &self,
        provider: PsaProvider,
        account: Option<&str>,
        headers: &axum::http::HeaderMap,
        body: &[u8],
    ) -> Result<Receipt, HookError> {
        let acct = self.account_for(provider, account).await?;
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
        let now = self.store.clock().now().to_datetime();
        // 1. Authenticity.
        match provider {
            PsaProvider::Autotask => {
                let secret = acct
                    .open("webhook_secret", self.ring()?)
                    .ok_or(Error::NoKeyring)?;
                verify::autotask(secret.expose().as_bytes(), body, header("x-hook-signature"))?;
            }
            PsaProvider::Halopsa => {
                let secret = acct
                    .open("webhook_secret", self.ring()?)
                    .ok_or(Error::NoKeyring)?;
                let cred = match &acct.webhook_username {
                    Some(u) => verify::HaloCredential::Basic {
                        username: u,
                        password: secret.expose(),
                    },
                    None => verify::HaloCredential::Bearer(secret.expose()),
                };
                verify::halo(cred, header("authorization"))?;
            }
            PsaProvider::Connectwise => {
                let site = acct.api_url.clone().unwrap_or_default();
                let key_url = event::connectwise(body)
                    .ok()
                    .and_then(|(_, k)| k)
                    .ok_or(verify::Refusal::Missing("Metadata.key_url"))?;
                if !verify::key_url_trusted(&site, &key_url) {
                    return Err(verify::Refusal::UntrustedKeyUrl.into());
                }
                let key = self.connectwise_key(&acct, &key_url).await?;
                verify::connectwise(&key, body, header("x-content-signature"))?;
            }
        }
        // 2. Read it (a readable, authentic delivery that is not a ticket event is recorded).
        let ev = match event::read(provider, body) {
            Ok(e) => e,
            Err(e) => {
                return Ok(self
                    .ignore(Ignored {
                        at: self.store.clock().now(),
                        provider,
                        account: acct.id.clone(),
                        ticket_id: None,
                        company_id: None,
                        reason: e.0,
                    })
                    .await?);
            }
        };
        // 3. Freshness.
        verify::fresh(ev.event_time, now, i64::from(acct.max_event_age_seconds))?;
        // 4. Deduplication.
        let fresh: Option<String> = self
            .store
            .db()
            .query(
                redis::cmd("SET")
                    .arg(self.keys.delivery(&digest(body)))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(DEDUP_SECONDS),
            )
            .await
            .map_err(Error::from)?;
        if fresh.is_none() {
            return Ok(Receipt {
                outcome: "duplicate".to_owned(),
                intake: None,
                run: None,
                text: "this delivery was received before; nothing was done again".to_owned(),
            });
        }
        let result = self.handle(provider, &acct, ev).await;
        if result.is_err() {
            // Let the PSA's retry be handled afresh.
            let _: Result<(), _> = self
                .store
                .db()
                .query(redis::cmd("DEL").arg(self.keys.delivery(&digest(body))))
                .await;
        }
        Ok(result?)
    }

    async fn connectwise_key(
        &self,
        acct: &Stored,
        key_url: &str,
    ) -> Result<String, verify::Refusal> {
        let mut req = http().get(key_url);
        if let (Some(user), Some(secret)) = (
            &acct.api_username,
            self.ring().ok().and_then(|r| acct.open("api_secret", r)),
        ) {
            req = req.basic_auth(user, Some(secret.expose()));
        }
        if let Some(code) = self
            .ring()
            .ok()
            .and_then(|r| acct.open("api_integration_code", r))
        {
            req = req.header("clientId", code.expose());
        }
        let res = req
            .send()
            .await
            .map_err(|e| verify::Refusal::KeyUnavailable(e.without_url().to_string()))?;
        if !res.status().is_success() {
            return Err(verify::Refusal::KeyUnavailable(format!(
                "the site answered {}",
                res.status()
            )));
        }
        let v: Value = res
            .json()
            .await
            .map_err(|_| verify::Refusal::KeyUnavailable("not JSON".to_owned()))?;
        v.get("signing_key")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                verify::Refusal::KeyUnavailable("no signing_key in the answer".to_owned())
            })
    }

    async fn handle(
        &self,
        provider: PsaProvider,
        acct: &Stored,
        ev: TicketEvent,
    ) -> Result<Receipt, Error> {
        let id = format!("{}:{}:{}", provider_name(provider), acct.id, ev.ticket_id);
        let _lock = self.lock(&id).await?;
        let existing = self.intake(&id).await?;
        let ignored = |reason: String| Ignored {
            at: self.store.clock().now(),
            provider,
            account: acct.id.clone(),
            ticket_id: Some(ev.ticket_id.clone()),
            company_id: ev.company_id.clone(),
            reason,
        };
        if ev.action == Action::Deleted {
            return self
                .ignore(ignored("the ticket was deleted".to_owned()))
                .await;
        }
        if let Some(i) = &existing
            && i.status == IntakeStatus::WaitingForRollback
        {
            return Ok(Receipt {
                outcome: "waiting_for_rollback".to_owned(),
                intake: Some(id),
                run: None,
                text: "this ticket starts when the same person's onboarding has been rolled back"
                    .to_owned(),
            });
        }
        if let Some(i) = &existing
            && matches!(i.status, IntakeStatus::Started | IntakeStatus::Joined)
        {
            return Ok(Receipt {
                outcome: "already_started".to_owned(),
                intake: Some(id),
                run: i.run,
                text: "this ticket's run has already started; it is the same run".to_owned(),
            });
        }
        let fields = match &existing {
            Some(i) => i.ticket.clone().merged(&ev.fields),
            // An Autotask update carries only what changed: read a ticket first seen this way.
            None if provider == PsaProvider::Autotask && ev.action == Action::Updated => self
                .autotask_ticket(acct, &ev.ticket_id)
                .await
                .merged(&ev.fields),
            None => ev.fields.clone(),
        };
        // The company.
        let company = match &existing {
            Some(i) => Some(i.company.clone()),
            None => match &ev.company_id {
                None => None,
                Some(cid) => self
                    .companies
                    .list()
                    .await?
                    .into_iter()
                    .find(|r| {
                        r.company.psa.as_ref().is_some_and(|p| {
                            p.provider == provider && p.company_id.trim() == cid.trim()
                        })
                    })
                    .map(|r| r.company.id),
            },
        };
        let Some(company) = company else {
            return self
                .ignore(ignored(format!(
                    "no company has psa {{provider: {}, company_id: {}}}",
                    provider_name(provider),
                    ev.company_id.as_deref().unwrap_or("(none in the event)")
                )))
                .await;
        };
        // The workflow.
        let rules = self.rules().await?;
        let (workflow, lifecycle) = match &existing {
            Some(i) => (i.workflow.clone(), i.lifecycle),
            None => match rules::first_match(&rules, provider, &fields) {
                Some(r) => (r.workflow.clone(), r.lifecycle),
                None => {
                    return self
                        .ignore(ignored(format!(
                            "no rule matches this ticket (title `{}`); add one with PUT /v1/psa/rules",
                            fields.title.as_deref().unwrap_or("")
                        )))
                        .await;
                }
            },
        };
        let mut intake = existing.unwrap_or_else(|| Intake {
            id: id.clone(),
            provider,
            account: acct.id.clone(),
            ticket_id: ev.ticket_id.clone(),
            company,
            workflow,
            lifecycle,
            status: IntakeStatus::NeedsInput,
            inputs: Map::new(),
            supplied: Map::new(),
            missing: Vec::new(),
            ticket: TicketFields::default(),
            run: None,
            problem: None,
            after: None,
            updated_at: self.store.clock().now(),
        });
        intake.ticket = fields;
        self.advance(&mut intake, acct).await
    }

    /// An Autotask ticket's fields read through its REST API (empty when the account has no API
    /// access or the read fails: the event's own fields are used then).
    async fn autotask_ticket(&self, acct: &Stored, id: &str) -> TicketFields {
        let Some(api) = self.ring().ok().and_then(|r| notes::api_of(acct, r)) else {
            return TicketFields::default();
        };
        match steward_workers::psa::autotask_ticket(http(), &api, id).await {
            Ok(Some(item)) => event::autotask_fields(&item),
            Ok(None) => TicketFields::default(),
            Err(e) => {
                tracing::warn!(ticket = id, error = %e, "cannot read the Autotask ticket; using the webhook's fields");
                TicketFields::default()
            }
        }
    }

    /// Holds a short per-ticket lock (two deliveries of one ticket are handled one at a time).
    async fn lock(&self, id: &str) -> Result<Unlock, Error> {
        let key = self.keys.lock(id);
        for _ in 0..500 {
            let got: Option<String> = self
                .store
                .db()
                .query(
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(1)
                        .arg("NX")
                        .arg("PX")
                        .arg(10_000),
                )
                .await?;
            if got.is_some() {
                return Ok(Unlock {
                    store: self.store.clone(),
                    key,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Err(Error::Damaged(format!(
            "the lock on {id} is held for too long"
        )))
    }

    /// Reads the inputs again and starts the run if nothing is missing.
    async fn advance(&self, intake: &mut Intake, acct: &Stored) -> Result<Receipt, Error> {
        let Some(plan) = self.workflows.current().get(&intake.workflow).cloned() else {
            intake.status = IntakeStatus::Refused;
            intake.problem = Some(format!("no workflow `{}` is loaded", intake.workflow));
            self.save(intake).await?;
            return Ok(Receipt {
                outcome: "refused".to_owned(),
                intake: Some(intake.id.clone()),
                run: None,
                text: intake.problem.clone().unwrap_or_default(),
            });
        };
        let record = self.companies.get(&intake.company).await?;
        let order = record
            .as_ref()
            .map(|r| parse::DateOrder::for_country(r.company.defaults.usage_location.as_deref()));
        let text = format!(
            "{}\n{}",
            intake.ticket.title.as_deref().unwrap_or(""),
            intake.ticket.description.as_deref().unwrap_or("")
        );
        let got = parse::extract(
            plan.def(),
            &text,
            &intake.ticket.udfs,
            &intake.supplied,
            order,
        );
        intake.inputs = got.inputs;
        let before = intake.missing.clone();
        intake.missing = got.missing;
        if !intake.missing.is_empty() {
            intake.status = IntakeStatus::NeedsInput;
            self.save(intake).await?;
            if intake.missing != before {
                notes::queue(
                    self,
                    acct,
                    &intake.ticket_id,
                    &notes::asking(intake),
                    &format!("{}:ask:{}", intake.id, notes::fingerprint(&intake.missing)),
                )
                .await?;
            }
            return Ok(Receipt {
                outcome: "needs_input".to_owned(),
                intake: Some(intake.id.clone()),
                run: None,
                text: format!(
                    "waiting for: {}",
                    intake
                        .missing
                        .iter()
                        .map(|m| m.label.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        // One lifecycle run per (company, person).
        let person = person_key(&intake.inputs);
        // Two tickets for one person are decided one at a time (the ticket lock is per ticket).
        let _person_lock = match (&intake.lifecycle, &person) {
            (Some(_), Some(p)) => Some(self.lock(&format!("person:{}:{p}", intake.company)).await?),
            _ => None,
        };
        if let (Some(kind), Some(person)) = (intake.lifecycle, &person) {
            let key = self.keys.person(&intake.company, person);
            let held: Option<String> = self.store.db().query(redis::cmd("GET").arg(&key)).await?;
            if let Some(held) = held.and_then(|h| serde_json::from_str::<PersonRun>(&h).ok())
                && let Some(snap) = self.store.load(held.run).await?
                && !snap.doc.state.status.is_terminal()
            {
                match (held.kind, kind) {
                    (Lifecycle::Onboarding, Lifecycle::Onboarding)
                    | (Lifecycle::Offboarding, Lifecycle::Offboarding) => {
                        intake.status = IntakeStatus::Joined;
                        intake.run = Some(held.run);
                        self.save(intake).await?;
                        notes::queue(
                            self,
                            acct,
                            &intake.ticket_id,
                            &notes::joined(held.run),
                            &format!("{}:joined", intake.id),
                        )
                        .await?;
                        return Ok(Receipt {
                            outcome: "joined".to_owned(),
                            intake: Some(intake.id.clone()),
                            run: Some(held.run),
                            text: format!(
                                "this person's {} run is already in flight; it is the same run",
                                kind_name(kind)
                            ),
                        });
                    }
                    (Lifecycle::Onboarding, Lifecycle::Offboarding) => {
                        let outcome = self
                            .store
                            .apply(
                                held.run,
                                &Event::CancelRequested {
                                    by: format!("psa:{}", provider_name(intake.provider)),
                                    rollback: true,
                                    reason: Some(format!(
                                        "an offboarding for the same person arrived (ticket {})",
                                        intake.ticket_id
                                    )),
                                },
                                Some(snap),
                                None,
                                None,
                            )
                            .await?;
                        tracing::info!(run = %held.run, ?outcome, "pending onboarding cancelled for an offboarding");
                        // The offboarding starts once the onboarding's rollback has ended (the
                        // run observer resumes it), so the two never work on the person at once.
                        intake.status = IntakeStatus::WaitingForRollback;
                        intake.after = Some(held.run);
                        self.save(intake).await?;
                        let _: () = self
                            .store
                            .db()
                            .query(
                                redis::cmd("SADD")
                                    .arg(self.keys.waiting(held.run))
                                    .arg(&intake.id),
                            )
                            .await?;
                        return Ok(Receipt {
                            outcome: "waiting_for_rollback".to_owned(),
                            intake: Some(intake.id.clone()),
                            run: None,
                            text: format!(
                                "the same person's onboarding ({}) is being cancelled and rolled back; the offboarding starts when it has",
                                held.run
                            ),
                        });
                    }
                    (Lifecycle::Offboarding, Lifecycle::Onboarding) => {
                        intake.status = IntakeStatus::Refused;
                        intake.problem = Some(format!(
                            "an offboarding of this person is in flight (run {}); onboard them again after it ends",
                            held.run
                        ));
                        self.save(intake).await?;
                        return Ok(Receipt {
                            outcome: "refused".to_owned(),
                            intake: Some(intake.id.clone()),
                            run: None,
                            text: intake.problem.clone().unwrap_or_default(),
                        });
                    }
                }
            }
        }
        let started = self
            .planner
            .start(StartRun {
                plan,
                company: intake.company.clone(),
                inputs: intake.inputs.clone(),
                requested_by: format!("psa:{}", provider_name(intake.provider)),
                ticket: Some(TicketRef {
                    psa: provider_name(intake.provider).to_owned(),
                    id: intake.ticket_id.clone(),
                    title: intake.ticket.title.clone().unwrap_or_default(),
                    url: None,
                }),
                start_at: None,
            })
            .await;
        let run = match started {
            Ok(run) => run,
            Err(e) => {
                let problem = match &e {
                    planner::Error::Store(crate::store::Error::Redis(_))
                    | planner::Error::Companies(_)
                    | planner::Error::Auth(_) => {
                        return Err(Error::Damaged(e.to_string()));
                    }
                    other => other.to_string(),
                };
                intake.status = IntakeStatus::Refused;
                intake.problem = Some(problem.clone());
                self.save(intake).await?;
                notes::queue(
                    self,
                    acct,
                    &intake.ticket_id,
                    &notes::refused(&problem),
                    &format!("{}:refused:{}", intake.id, notes::short_hash(&problem)),
                )
                .await?;
                return Ok(Receipt {
                    outcome: "refused".to_owned(),
                    intake: Some(intake.id.clone()),
                    run: None,
                    text: problem,
                });
            }
        };
        intake.status = IntakeStatus::Started;
        intake.run = Some(run);
        intake.problem = None;
        self.save(intake).await?;
        if let (Some(kind), Some(person)) = (intake.lifecycle, person) {
            let json = serde_json::to_string(&PersonRun { run, kind }).expect("serialises");
            let _: () = self
                .store
                .db()
                .query(
                    redis::cmd("SET")
                        .arg(self.keys.person(&intake.company, &person))
                        .arg(json),
                )
                .await?;
        }
        // The first note is queued here: a quick run may end before the observer looks.
        notes::queue(
            self,
            acct,
            &intake.ticket_id,
            &notes::started(run, &intake.workflow),
            &format!("{run}:started"),
        )
        .await?;
        notes::track(self, run, &intake.id).await?;
        Ok(Receipt {
            outcome: "started".to_owned(),
            intake: Some(intake.id.clone()),
            run: Some(run),
            text: format!("run {run} started ({})", intake.workflow),
        })
    }

    /// Resumes the intakes that waited for `run` to end.
    pub async fn resume_after(&self, run: RunId) -> Result<(), Error> {
        let ids: Vec<String> = self
            .store
            .db()
            .query(redis::cmd("SMEMBERS").arg(self.keys.waiting(run)))
            .await?;
        for id in ids {
            let lock = self.lock(&id).await?;
            if let Some(mut intake) = self.intake(&id).await?
                && intake.status == IntakeStatus::WaitingForRollback
                && intake.after == Some(run)
                && let Some(acct) = self
                    .accounts()
                    .await?
                    .into_iter()
                    .find(|a| a.id == intake.account)
            {
                intake.after = None;
                let r = self.advance(&mut intake, &acct).await?;
                tracing::info!(intake = %id, outcome = %r.outcome, "intake resumed after the run it waited for ended");
            }
            drop(lock);
            let _: () = self
                .store
                .db()
                .query(redis::cmd("SREM").arg(self.keys.waiting(run)).arg(&id))
                .await?;
        }
        Ok(())
    }

    /// A technician supplies inputs for an intake waiting on them; starts its run when nothing
    /// is missing any more.
    pub async fn supply(
        &self,
        id: &str,
        inputs: Map<String, Value>,
    ) -> Result<Option<Receipt>, Error> {
        let _lock = self.lock(id).await?;
        let Some(mut intake) = self.intake(id).await? else {
            return Ok(None);
        };
        if intake.status == IntakeStatus::WaitingForRollback {
            return Ok(Some(Receipt {
                outcome: "waiting_for_rollback".to_owned(),
                intake: Some(intake.id.clone()),
                run: None,
                text: format!(
                    "this intake starts when run {} has ended",
                    intake.after.map(|r| r.to_string()).unwrap_or_default()
                ),
            }));
        }
        if matches!(intake.status, IntakeStatus::Started | IntakeStatus::Joined) {
            return Ok(Some(Receipt {
                outcome: "already_started".to_owned(),
                intake: Some(intake.id.clone()),
                run: intake.run,
                text: "this intake's run has already started".to_owned(),
            }));
        }
        let acct = self
            .accounts()
            .await?
            .into_iter()
            .find(|a| a.id == intake.account)
            .ok_or_else(|| {
                Error::Damaged(format!(
                    "the intake's account `{}` was removed",
                    intake.account
                ))
            })?;
        for (k, v) in inputs {
            intake.supplied.insert(k, v);
        }
        self.advance(&mut intake, &acct).await.map(Some)
    }
}

/// Releases a ticket's lock when dropped.
struct Unlock {
    store: Store,
    key: String,
}

impl Drop for Unlock {
    fn drop(&mut self) {
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        tokio::spawn(async move {
            let _: Result<(), _> = store.db().query(redis::cmd("DEL").arg(key)).await;
        });
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PersonRun {
    run: RunId,
    kind: Lifecycle,
}

fn kind_name(k: Lifecycle) -> &'static str {
    match k {
        Lifecycle::Onboarding => "onboarding",
        Lifecycle::Offboarding => "offboarding",
    }
}

/// Who a run is about, for one-lifecycle-run-per-person: the email or UPN, else the name,
/// lowercased with spaces folded.
pub fn person_key(inputs: &Map<String, Value>) -> Option<String> {
    let pick = |k: &str| {
        inputs
            .get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let raw = pick("email")
        .or_else(|| pick("upn"))
        .or_else(|| pick("user_principal_name"))
        .or_else(|| pick("user"))
        .map(str::to_owned)
        .or_else(|| {
            pick("name")
                .or_else(|| pick("display_name"))
                .map(str::to_owned)
        })
        .or_else(|| match (pick("first_name"), pick("last_name")) {
            (Some(f), Some(l)) => Some(format!("{f} {l}")),
            _ => None,
        })?;
    Some(
        raw.to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-")
            .replace([':', '{', '}'], "_"),
    )
}

/// Shares one [`Psa`] between API handlers.
pub type Shared = Arc<Psa>;
