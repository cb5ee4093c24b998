//! The on-prem ops: Active Directory, Entra Connect and Exchange Server changes, carried out by
//! the PowerShell templates ([`crate::powershell`]) through the company's RMM ([`crate::rmm`]).
//!
//! Every template is an op under its own name (`ad.new_user`, `adsync.start_delta`,
//! `exchange_server.enable_remote_mailbox`, …). Routing places it on the company's machine
//! (directly on the target, or on a runner that reaches it with `Invoke-Command`), and the
//! executor:
//! 1. prepares the script (fixed text, every value in the one base64 payload);
//! 2. creates a runner job holding that script, and sends a quick job to the device that
//!    carries only the job's id, its one-time token and Steward's URL;
//! 3. answers *pending*: no worker waits. The runner's callback wakes the step at once; each
//!    check also asks the RMM for the job's status, so a callback that never comes (the runner
//!    cannot reach Steward) still ends the wait, from the job's stdout;
//! 4. reads the script's one `STEWARD-RESULT` line: changed or unchanged (with the prior state
//!    and the inverse that restores it), or failed — then [`crate::diagnosis`] says whether to
//!    try again later (a sync cycle already running, the device offline) or to pause the run
//!    for a technician (the Kerberos double hop, WinRM off, the AD module missing).
//!
//! The templates check before they act, so a repeat (a redelivered job, a second run with the
//! same inputs) reports *unchanged* and changes nothing. Per attempt, the job sent is recorded
//! before the quick job goes out; a worker that dies in between makes the next delivery send
//! the job again, which is harmless for the same reason.

pub mod routed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use steward_core::routing::{Target, Via};
use steward_schemas::{
    ApprovalRule, Company, FieldType, OpAccess, OpField, OpSpec, PermissionGroup, Phase,
    Reversibility, Rollback, System,
};

use crate::diagnosis::{self, Disposition, Evidence};
use crate::op::{BoxFuture, Op, OpContext, OpError, OpOutcome};
use crate::powershell::{self, Inverse, Outcome, Prepared, Template, Undo};
use crate::registry::Registry;
use crate::rmm::jobs::{Binding, Jobs};
use crate::rmm::{self, Deployment, Device, JobRef, Rmm, Variables};

/// The quick job's variables (the runner component's inputs).
pub const VAR_URL: &str = "steward_url";
/// The runner job's id.
pub const VAR_JOB_ID: &str = "steward_job_id";
/// The runner job's one-time token.
pub const VAR_JOB_TOKEN: &str = "steward_job_token";

/// How the on-prem executor runs.
#[derive(Clone)]
pub struct Config {
    /// The URL the runner reaches Steward at (`https://steward.msp.example`).
    pub steward_url: String,
    /// How often a waiting step asks the RMM for its job's status when no callback came.
    pub poll: Duration,
    /// How long a runner job's token is valid (Datto may hold a quick job for a while).
    pub token_ttl: Duration,
    /// How long an undo waits in place for its script (an undo cannot wait durably yet).
    pub undo_wait: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("steward_url", &self.steward_url)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for a Steward reachable at `steward_url`.
    pub fn new(steward_url: &str) -> Self {
        Self {
            steward_url: steward_url.trim_end_matches('/').to_owned(),
            poll: Duration::from_secs(30),
            token_ttl: Duration::from_secs(24 * 3600),
            undo_wait: Duration::from_secs(120),
        }
    }
}

/// The RMM, the runner jobs and the settings: what every on-prem op shares. Cheap to clone.
#[derive(Clone)]
pub struct OnPrem {
    /// The RMM.
    pub rmm: Arc<dyn Rmm>,
    /// The runner jobs.
    pub jobs: Jobs,
    /// Settings.
    pub config: Config,
    /// Where generated passwords are handed over (one-time links), when the worker has one.
    pub secrets: Option<Arc<dyn crate::m365::SecretSink>>,
    redis: crate::RedisConn,
    namespace: String,
}

impl std::fmt::Debug for OnPrem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnPrem")
            .field("rmm", &self.rmm.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a step sent, per attempt (and action, for routed steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sent {
    job: String,
    #[serde(default)]
    rmm_job: Option<String>,
    device_uid: String,
    device_host: String,
    sent_ms: u64,
}

/// How one template run ended, or that it has not.
#[derive(Debug, Clone)]
pub enum Progress {
    /// The script ran and reported.
    Done {
        /// Its report.
        outcome: Outcome,
        /// What it ran.
        prepared: Box<Prepared>,
    },
    /// Not yet: ask again after `check_after`.
    Waiting {
        /// When to ask again.
        check_after: Duration,
        /// What it waits for.
        note: String,
    },
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn redis_err(e: impl std::fmt::Display) -> OpError {
    OpError::retryable(format!("cannot reach Redis: {e}"))
}

/// An RMM error as the step's outcome: throttling and the block are waits, the rest failures.
fn rmm_error(e: rmm::Error) -> Result<Progress, OpError> {
    match &e {
        rmm::Error::Throttled { retry_after } | rmm::Error::Blocked { retry_after } => {
            Ok(Progress::Waiting {
                check_after: (*retry_after).clamp(Duration::from_secs(1), Duration::from_secs(600)),
                note: e.to_string(),
            })
        }
        _ if e.is_retryable() => Err(OpError::Retryable {
            message: e.to_string(),
            code: Some("rmm".to_owned()),
            retry_after: None,
        }),
        _ => Err(OpError::Terminal {
            message: e.to_string(),
            code: Some("rmm".to_owned()),
        }),
    }
}

/// A diagnosed (or not) failure as an op error.
pub fn diagnosed(evidence: &Evidence<'_>, fallback: &str, code: &str) -> OpError {
    match diagnosis::diagnose(evidence) {
        Some(d) => match d.disposition {
            Disposition::Retry { after } => OpError::Retryable {
                message: format!("{fallback}. {d}"),
                code: Some(d.code.to_owned()),
                retry_after: Some(after),
            },
            Disposition::Pause => OpError::NeedsTechnician {
                message: format!("{fallback}. {d}"),
                code: Some(d.code.to_owned()),
            },
        },
        None => OpError::Terminal {
            message: fallback.to_owned(),
            code: Some(code.to_owned()),
        },
    }
}

impl OnPrem {
    /// The executor, with Redis for its per-step records and the runner jobs.
    pub fn new(
        rmm: Arc<dyn Rmm>,
        redis: crate::RedisConn,
        namespace: &str,
        config: Config,
    ) -> Self {
        Self {
            jobs: Jobs::new(redis.clone(), namespace),
            rmm,
            config,
            secrets: None,
            redis,
            namespace: namespace.to_owned(),
        }
    }

    /// Hands generated passwords to `sink`.
    pub fn with_secrets(mut self, sink: Arc<dyn crate::m365::SecretSink>) -> Self {
        self.secrets = Some(sink);
        self
    }

    fn sent_key(&self, cx: &OpContext, slot: &str) -> String {
        format!(
            "{}:onprem:sent:{}:{}:{slot}",
            self.namespace,
            cx.idempotency_key(),
            cx.attempt.get()
        )
    }

    async fn load_sent(&self, key: &str) -> Result<Option<Sent>, OpError> {
        let mut conn = self.redis.clone();
        let s: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(s.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn save_sent(&self, key: &str, sent: &Sent) -> Result<(), OpError> {
        let mut conn = self.redis.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(serde_json::to_string(sent).unwrap_or_default())
            .arg("EX")
            .arg(40 * 24 * 3600)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)
    }

    /// Runs template `op` with `inputs` for the company of `cx`, as far as it goes now.
    /// `slot` tells apart several scripts of one step (a routed step's actions).
    pub async fn step(
        &self,
        cx: &OpContext,
        company: &Company,
        op: &str,
        inputs: &Map<String, Value>,
        slot: &str,
    ) -> Result<Progress, OpError> {
        let prepared = powershell::prepare(op, company, inputs).map_err(|e| OpError::Terminal {
            message: e.to_string(),
            code: Some("invalid_input".to_owned()),
        })?;
        let key = self.sent_key(cx, slot);
        let (sent, fresh) = match self.load_sent(&key).await? {
            Some(s) if s.rmm_job.is_some() => (s, false),
            _ => match self.send(cx, &prepared, &key).await? {
                Ok(s) => (s, true),
                Err(p) => return Ok(p),
            },
        };
        let checked = self.check(&prepared, &sent, fresh).await;
        if checked.is_err() {
            // A failed job is not read again: the next delivery of this attempt (a resumed run
            // after a technician's fix) sends a fresh job.
            let mut conn = self.redis.clone();
            let _: Result<(), _> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
        }
        checked
    }

    /// Creates the runner job and sends the quick job; `Err(progress)` when the RMM asks to wait.
    async fn send(
        &self,
        cx: &OpContext,
        prepared: &Prepared,
        key: &str,
    ) -> Result<Result<Sent, Progress>, OpError> {
        let Some(host) = prepared.target.rmm_device() else {
            return Err(OpError::terminal(format!(
                "`{}` does not run through the RMM (a bug in routing)",
                prepared.template.op
            )));
        };
        let device = match self.rmm.device(host).await {
            Ok(d) => d,
            Err(e) => return rmm_error(e).map(Err),
        };
        let (runner, target) = match &prepared.target {
            Target::Rmm {
                host,
                via: Via::Runner { runner },
            } => (Some(runner.as_str()), Some(host.as_str())),
            Target::Rmm { host, .. } => (None, Some(host.as_str())),
            _ => (None, None),
        };
        if !device.online {
            return Err(diagnosed(
                &Evidence {
                    text: "",
                    device_online: Some(false),
                    system: Some("rmm"),
                    runner,
                    target,
                    ..Evidence::default()
                },
                &format!("the RMM agent on {} is offline", device.hostname),
                "device_offline",
            ));
        }
        // A job created earlier whose quick job may not have gone out is replaced by a fresh
        // one (its token cannot be read back); the template makes the repeat harmless.
        let (job, token) = self
            .jobs
            .create(
                &Binding {
                    run: cx.run_id.to_string(),
                    step: cx.step.to_string(),
                    seq: cx.seq,
                    phase: cx.phase.name().to_owned(),
                },
                &prepared.text(),
                self.config.token_ttl,
            )
            .await
            .map_err(|e| OpError::retryable(e.to_string()))?;
        let mut sent = Sent {
            job: job.clone(),
            rmm_job: None,
            device_uid: device.uid.clone(),
            device_host: device.hostname.clone(),
            sent_ms: now_ms(),
        };
        self.save_sent(key, &sent).await?;
        let vars = Variables(vec![
            (VAR_URL.to_owned(), self.config.steward_url.clone()),
            (VAR_JOB_ID.to_owned(), job),
            (VAR_JOB_TOKEN.to_owned(), token),
        ]);
        let name = format!(
            "Steward {} ({} {})",
            prepared.template.id(),
            cx.run_id,
            cx.step
        );
        let correlation = crate::m365::call::Correlation::of(cx).header();
        match self
            .rmm
            .quick_job_for(&device, &name, &vars, &correlation)
            .await
        {
            Ok(r) => {
                sent.rmm_job = Some(r.uid);
                self.save_sent(key, &sent).await?;
                Ok(Ok(sent))
            }
            Err(e) => rmm_error(e).map(Err),
        }
    }

    /// Reads the job's result: the runner's callback, else the RMM's status and stdout.
    async fn check(
        &self,
        prepared: &Prepared,
        sent: &Sent,
        fresh: bool,
    ) -> Result<Progress, OpError> {
        let (runner, target) = match &prepared.target {
            Target::Rmm {
                host,
                via: Via::Runner { runner },
            } => (Some(runner.clone()), Some(host.clone())),
            Target::Rmm { host, .. } => (None, Some(host.clone())),
            _ => (None, None),
        };
        let posted = self
            .jobs
            .result(&sent.job)
            .await
            .map_err(|e| OpError::retryable(e.to_string()))?;
        let (stdout, stderr, status) = match posted {
            Some(r) => (r.stdout, r.stderr, None),
            // Just sent: the RMM has nothing to say yet; the callback (or the poll) comes next.
            None if fresh => {
                return Ok(Progress::Waiting {
                    check_after: self.config.poll,
                    note: format!(
                        "waiting for {} on {} (RMM job {})",
                        prepared.template.op,
                        sent.device_host,
                        sent.rmm_job.as_deref().unwrap_or("?")
                    ),
                });
            }
            None => {
                let job = JobRef {
                    uid: sent.rmm_job.clone().unwrap_or_default(),
                };
                let device = Device {
                    uid: sent.device_uid.clone(),
                    hostname: sent.device_host.clone(),
                    online: true,
                };
                let status = match self.rmm.job_status(&job, &device).await {
                    Ok(s) => s,
                    Err(e) => return rmm_error(e),
                };
                if !status.deployment.is_final() {
                    let fetched = self.jobs.fetched(&sent.job).await.unwrap_or(false);
                    return Ok(Progress::Waiting {
                        check_after: self.config.poll,
                        note: format!(
                            "waiting for {} on {} (RMM job {}, {}{})",
                            prepared.template.op,
                            sent.device_host,
                            job.uid,
                            status.deployment.name(),
                            if fetched { ", script fetched" } else { "" }
                        ),
                    });
                }
                if !status.deployment.ran() {
                    return Err(diagnosed(
                        &Evidence {
                            text: "",
                            rmm_status: Some(status.deployment.name()),
                            device_online: Some(false),
                            system: Some("rmm"),
                            runner: runner.as_deref(),
                            target: target.as_deref(),
                            ..Evidence::default()
                        },
                        &format!(
                            "the RMM job on {} ended {} without running",
                            sent.device_host,
                            status.deployment.name()
                        ),
                        "job_not_run",
                    ));
                }
                let out = match self.rmm.job_stdout(&job, &device).await {
                    Ok(s) => s,
                    Err(e) => return rmm_error(e),
                };
                (out, String::new(), Some(status.deployment))
            }
        };
        match powershell::parse_result(prepared.template, &stdout, &prepared.payload) {
            // What a failed script had already done (`prior`) is not undone yet: the templates
            // clean up after themselves (New-ADUser's half-created account), except
            // `ad.copy_groups`, whose partial additions stay (see the report).
            Ok(Outcome::Failed {
                reason, category, ..
            }) => Err(diagnosed(
                &Evidence {
                    text: &reason,
                    category: Some(&category),
                    rmm_status: status.map(Deployment::name),
                    system: Some("rmm"),
                    runner: runner.as_deref(),
                    target: target.as_deref(),
                    ..Evidence::default()
                },
                &format!("{} on {}: {reason}", prepared.template.op, sent.device_host),
                &category,
            )),
            Ok(outcome) => Ok(Progress::Done {
                outcome,
                prepared: Box::new(prepared.clone()),
            }),
            Err(e) => {
                let text = format!("{stderr}\n{stdout}");
                Err(diagnosed(
                    &Evidence {
                        text: &text,
                        rmm_status: status.map(Deployment::name),
                        system: Some("rmm"),
                        runner: runner.as_deref(),
                        target: target.as_deref(),
                        ..Evidence::default()
                    },
                    &format!(
                        "{} on {}: {e}; stderr: {}",
                        prepared.template.op,
                        sent.device_host,
                        stderr.lines().next().unwrap_or("(empty)")
                    ),
                    "no_result",
                ))
            }
        }
    }

    /// [`OnPrem::step`] for an undo: waits in place (up to [`Config::undo_wait`]) since an undo
    /// cannot wait durably yet.
    pub async fn step_inline(
        &self,
        cx: &OpContext,
        company: &Company,
        op: &str,
        inputs: &Map<String, Value>,
        slot: &str,
    ) -> Result<Progress, OpError> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        loop {
            match self.step(cx, company, op, inputs, slot).await? {
                Progress::Waiting { check_after, note } => {
                    if start.elapsed() + wait > self.config.undo_wait {
                        return Ok(Progress::Waiting { check_after, note });
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                done @ Progress::Done { .. } => return Ok(done),
            }
        }
    }
}

/// How a finished template run is undone, as a rollback record.
pub fn rollback_of(t: &Template, prepared: &Prepared, outcome: &Outcome) -> Rollback {
    let prior = match outcome {
        Outcome::Changed { prior, .. }
        | Outcome::Unchanged { prior, .. }
        | Outcome::Failed { prior, .. } => prior.clone(),
    };
    match powershell::inverse(t, &prepared.payload, outcome) {
        Inverse::Nothing => Rollback::Nothing,
        Inverse::Run { op, mut inputs } => {
            // Routing decides `server` again when the undo runs.
            inputs.remove("server");
            Rollback::Inverse {
                op: op.to_owned(),
                input: Value::Object(inputs),
                prior,
            }
        }
        Inverse::Irreversible(reason) => Rollback::Irreversible { reason, prior },
    }
}

/// What the op returns: the script's result, and whether it changed anything.
pub fn output_of(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Changed { result, .. } => json!({"changed": true, "result": result}),
        Outcome::Unchanged { result, .. } => json!({"changed": false, "result": result}),
        Outcome::Failed { .. } => Value::Null,
    }
}

fn group_of(t: &Template) -> PermissionGroup {
    match t.role {
        steward_core::routing::OnPrem::ActiveDirectory => PermissionGroup::OnPremAd,
        steward_core::routing::OnPrem::EntraConnect => PermissionGroup::DirectorySync,
        steward_core::routing::OnPrem::ExchangeServer => PermissionGroup::OnPremExchange,
    }
}

fn system_of(t: &Template) -> System {
    match t.role {
        steward_core::routing::OnPrem::ActiveDirectory => System::ActiveDirectory,
        steward_core::routing::OnPrem::EntraConnect => System::EntraConnect,
        steward_core::routing::OnPrem::ExchangeServer => System::ExchangeServer,
    }
}

/// The op specs of the templates (built once: specs are `'static`).
fn specs() -> &'static [OpSpec] {
    static SPECS: std::sync::OnceLock<Vec<OpSpec>> = std::sync::OnceLock::new();
    SPECS.get_or_init(|| {
        powershell::TEMPLATES
            .iter()
            .map(|t| {
                let inputs: Vec<OpField> = t
                    .fields
                    .iter()
                    .map(|f| OpField {
                        name: f.name,
                        required: f.required,
                        description: "a template payload field",
                        kind: match f.kind {
                            powershell::Kind::Bool => FieldType::Boolean,
                            powershell::Kind::List => FieldType::List,
                            powershell::Kind::Map => FieldType::Map,
                            _ => FieldType::Text,
                        },
                        secret: f.kind == powershell::Kind::Secret,
                    })
                    .collect();
                OpSpec {
                    name: t.op,
                    summary: t.summary,
                    access: if t.undo == Undo::NotNeeded && t.op.contains("get")
                        || t.op.ends_with("list_groups")
                        || t.op.ends_with("status")
                    {
                        OpAccess::Read
                    } else {
                        OpAccess::Write
                    },
                    group: group_of(t),
                    approval: ApprovalRule::Policy,
                    system: system_of(t),
                    reversibility: match t.undo {
                        Undo::By(_) => Reversibility::Reversible,
                        Undo::Irreversible(_) => Reversibility::Irreversible,
                        Undo::NotNeeded | Undo::Internal => Reversibility::NotNeeded,
                    },
                    inputs: Vec::leak(inputs),
                    outputs: None,
                    // Concrete actions: workflows name the abstract ops, routing picks these.
                    internal: true,
                }
            })
            .collect()
    })
}

/// One template as an op.
struct TemplateOp {
    spec: &'static OpSpec,
    template: &'static Template,
    onprem: Option<OnPrem>,
}

impl std::fmt::Debug for TemplateOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateOp")
            .field("op", &self.template.op)
            .finish()
    }
}

/// The error for a worker without RMM settings.
pub(crate) fn not_configured() -> OpError {
    OpError::terminal(
        "this worker has no RMM settings (start it with --sandbox URL, or set [rmm.datto] api_url, api_key, api_secret and component_uid); then retry the step",
    )
}

/// The error for a job without the company's settings.
pub(crate) fn no_settings(cx: &OpContext) -> OpError {
    OpError::terminal(format!(
        "company `{}`'s settings are not available to this op; retry the step",
        cx.company
    ))
}

impl Op for TemplateOp {
    fn spec(&self) -> &OpSpec {
        self.spec
    }

    fn run<'a>(
        &'a self,
        cx: &'a OpContext,
        input: Value,
    ) -> BoxFuture<'a, Result<OpOutcome, OpError>> {
        Box::pin(async move {
            let Some(onprem) = &self.onprem else {
                return Err(not_configured());
            };
            let Some(company) = cx.settings.as_deref() else {
                return Err(no_settings(cx));
            };
            let Value::Object(inputs) = input else {
                return Err(OpError::bad_input(
                    "with",
                    "must be a map of the template's inputs",
                ));
            };
            let progress = match cx.phase {
                Phase::Run => {
                    onprem
                        .step(cx, company, self.template.op, &inputs, "0")
                        .await?
                }
                Phase::Undo => {
                    onprem
                        .step_inline(cx, company, self.template.op, &inputs, "0")
                        .await?
                }
            };
            match progress {
                Progress::Waiting { check_after, note } => Ok(OpOutcome::Pending {
                    check_after,
                    note: Some(note),
                }),
                Progress::Done { outcome, prepared } => Ok(OpOutcome::Succeeded {
                    output: output_of(&outcome),
                    rollback: rollback_of(self.template, &prepared, &outcome),
                }),
            }
        })
    }
}

/// Registers every template as an op. Without `onprem`, they are listed but fail with a clear
/// message when run.
pub fn register(r: &mut Registry, onprem: Option<OnPrem>) {
    for (t, spec) in powershell::TEMPLATES.iter().zip(specs()) {
        if r.get(t.op).is_some() {
            continue;
        }
        r.register(TemplateOp {
            spec,
            template: t,
            onprem: onprem.clone(),
        });
    }
}
