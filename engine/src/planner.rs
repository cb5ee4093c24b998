//! Starting runs: a workflow, for a company, under that company's permission policy; and the
//! workflows a server offers, read from a folder of YAML files and read again when they change.
//!
//! This is the one way runs start from the API and the CLI: the company must exist; its policy
//! refuses the workflow (naming each refused step, op, group and company) or inserts the approval
//! gate its approval rules call for; the company's settings are pinned into the run.
//!
//! # Workflow files
//!
//! [`Library`] holds the workflows a server offers. A file that does not validate is reported
//! (in the log, and through `GET /v1/workflows/files` with every problem's line, field and fix)
//! and skipped: the server keeps serving the others. [`Library::watch`] reads the folder again
//! when a file's modification time or size changes (checked every [`WATCH_EVERY`]) and on
//! `SIGHUP`; a file whose text has not changed is not compiled again. A run pins the definition
//! it started with by content hash (the store keeps every definition by its hash), so a new
//! version is used by new runs only: runs in flight finish on the version they started on. A
//! file that was good and turns bad keeps its last good version on offer (its status says so)
//! until it is fixed or removed, so that a half-saved edit does not take a workflow away.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use steward_core::company::{GateProblem, gate_problems};
use steward_core::policy::{PolicyRefusal, apply_policy};
use steward_core::{Plan, ValidationError};
use steward_schemas::{CompanyId, RunId, TicketRef, Timestamp};
use steward_workers::Registry;

use crate::companies::{self, Companies};
use crate::store::{self, NewRun, Store};

/// How often [`Library::watch`] looks for changed workflow files.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Whether a workflow file is on offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// It validates and its workflow is offered.
    Ok,
    /// It does not validate (see `problems`); skipped, or its last good version still offered
    /// (see `serving`).
    Invalid,
}

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FileProblem {
    /// The line, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The step it is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The field, e.g. `with.times`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// A workflow file as the server last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FileStatus {
    /// The file.
    pub file: String,
    /// Whether it is on offer.
    pub status: FileState,
    /// The workflow's name, when the file got that far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The content hash of the version on offer from this file (new runs pin it), if any: the
    /// file's own, or for an invalid file its last good version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// The version on offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Every problem, for an invalid file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<FileProblem>,
    /// When the file was last read.
    pub checked_at: Timestamp,
}

/// What was read from one file.
#[derive(Debug, Clone)]
struct Entry {
    /// The SHA-256 of its text.
    text_hash: [u8; 32],
    /// The compiled plan, or why there is none.
    result: Result<Arc<Plan>, ValidationError>,
    /// Its last good plan, while it does not validate.
    last_good: Option<Arc<Plan>>,
    checked_at: Timestamp,
}

/// The workflows a server offers, by name, and the state of every file they came from: one
/// immutable snapshot ([`Library`] swaps in a new one when files change).
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    by_name: BTreeMap<String, Arc<Plan>>,
    files: Vec<FileStatus>,
    entries: BTreeMap<PathBuf, Entry>,
}

impl Workflows {
    /// Reads every `*.yaml` and `*.yml` in `dir`, checked against the catalog. A file that does
    /// not validate is skipped and reported in [`Workflows::files`] (and in the log); only a
    /// folder that cannot be read is an error.
    pub fn load_dir(dir: &Path, registry: &Registry) -> Result<Self, ValidationError> {
        Self::read(dir, registry, None)
    }

    /// Reads the folder again, reusing what `previous` compiled from files whose text is the
    /// same.
    fn read(
        dir: &Path,
        registry: &Registry,
        previous: Option<&Self>,
    ) -> Result<Self, ValidationError> {
        let paths = yaml_files(dir).map_err(|e| dir_error(dir, &e))?;
        let now = Timestamp::from_datetime(chrono::Utc::now());
        let mut entries = BTreeMap::new();
        for path in paths {
            let name = path.display().to_string();
            let old = previous.and_then(|p| p.entries.get(&path));
            let entry = match std::fs::read(&path) {
                Err(e) => Entry {
                    text_hash: [0; 32],
                    result: Err(file_error(&name, &e)),
                    last_good: old.and_then(Entry::good),
                    checked_at: now,
                },
                Ok(bytes) => {
                    let text_hash: [u8; 32] = Sha256::digest(&bytes).into();
                    match old {
                        Some(old) if old.text_hash == text_hash => old.clone(),
                        _ => {
                            let result = match String::from_utf8(bytes) {
                                Ok(text) => Plan::load(&name, &text, Some(registry)).map(Arc::new),
                                Err(_) => Err(not_text(&name)),
                            };
                            match &result {
                                Ok(plan) => tracing::info!(
                                    file = %name,
                                    workflow = %plan.def().name,
                                    version = plan.def().version,
                                    hash = %plan.hash(),
                                    "workflow loaded"
                                ),
                                Err(e) => tracing::warn!(
                                    file = %name,
                                    "workflow file skipped: it does not validate\n{e}"
                                ),
                            }
                            Entry {
                                text_hash,
                                result,
                                last_good: old.and_then(Entry::good),
                                checked_at: now,
                            }
                        }
                    }
                }
            };
            entries.insert(path, entry);
        }
        Ok(Self::assemble(entries))
    }

    /// Offers each file's workflow (or last good version), refusing a second file with a name
    /// another file already offers.
    fn assemble(mut entries: BTreeMap<PathBuf, Entry>) -> Self {
        let mut by_name: BTreeMap<String, Arc<Plan>> = BTreeMap::new();
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut files = Vec::with_capacity(entries.len());
        for (path, entry) in &mut entries {
            let file = path.display().to_string();
            let offered = match &entry.result {
                Ok(plan) => Some(plan.clone()),
                Err(_) => entry.last_good.clone(),
            };
            let mut problems: Vec<FileProblem> = match &entry.result {
                Ok(_) => Vec::new(),
                Err(e) => e
                    .problems
                    .iter()
                    .map(|p| FileProblem {
                        line: p.line,
                        step: p.step.clone(),
                        field: p.field.clone(),
                        message: p.message.clone(),
                        fix: p.fix.clone(),
                    })
                    .collect(),
            };
            let mut serving = None;
            if let Some(plan) = &offered {
                let name = plan.def().name.clone();
                if let Some(first) = owner.get(&name) {
                    problems.push(FileProblem {
                        line: None,
                        step: None,
                        field: "name".to_owned(),
                        message: format!("workflow `{name}` is already defined in {first}"),
                        fix: "give each workflow file its own name".to_owned(),
                    });
                    tracing::warn!(file = %file, first = %first, workflow = %name, "workflow file skipped: its name is taken");
                } else {
                    owner.insert(name.clone(), file.clone());
                    serving = Some(plan.clone());
                    by_name.insert(name, plan.clone());
                }
            }
            files.push(FileStatus {
                file,
                status: if problems.is_empty() {
                    FileState::Ok
                } else {
                    FileState::Invalid
                },
                workflow: offered.as_ref().map(|p| p.def().name.clone()),
                serving: serving.as_ref().map(|p| p.hash().to_owned()),
                version: serving.as_ref().map(|p| p.def().version),
                problems,
                checked_at: entry.checked_at,
            });
        }
        Self {
            by_name,
            files,
            entries,
        }
    }

    /// The workflow called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.by_name.get(name)
    }

    /// Every workflow on offer.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.by_name.values()
    }

    /// Every file read, good or not, in path order.
    pub fn files(&self) -> &[FileStatus] {
        &self.files
    }
}

impl Entry {
    /// The plan this entry offers: its own, or its last good one.
    fn good(&self) -> Option<Arc<Plan>> {
        match &self.result {
            Ok(plan) => Some(plan.clone()),
            Err(_) => self.last_good.clone(),
        }
    }
}

/// The workflows a server offers, swapped for a new snapshot when the files change. Cheap to
/// clone; every clone sees the same snapshot.
#[derive(Debug, Clone)]
pub struct Library {
    dir: Option<PathBuf>,
    registry: Arc<Registry>,
    current: Arc<RwLock<Arc<Workflows>>>,
}

impl From<Workflows> for Library {
    /// A fixed set of workflows (no folder to watch).
    fn from(w: Workflows) -> Self {
        Self {
            dir: None,
            registry: Arc::new(Registry::builtin()),
            current: Arc::new(RwLock::new(Arc::new(w))),
        }
    }
}

impl Library {
    /// Reads the folder `dir`; an error only when the folder cannot be read.
    pub fn open(dir: &Path, registry: Arc<Registry>) -> Result<Self, ValidationError> {
        let first = Workflows::load_dir(dir, &registry)?;
        Ok(Self {
            dir: Some(dir.to_owned()),
            registry,
            current: Arc::new(RwLock::new(Arc::new(first))),
        })
    }

    /// The workflows on offer now.
    pub fn current(&self) -> Arc<Workflows> {
        self.current
            .read()
            .expect("the workflows lock is never poisoned")
            .clone()
    }

    /// Reads the folder again now (files whose text is unchanged are not compiled again). A
    /// folder that cannot be read leaves the workflows as they were, and is logged.
    pub fn reload(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let previous = self.current();
        match Workflows::read(dir, &self.registry, Some(&previous)) {
            Ok(next) => {
                *self
                    .current
                    .write()
                    .expect("the workflows lock is never poisoned") = Arc::new(next);
            }
            Err(e) => tracing::warn!("workflows not reloaded, the old ones stay on offer: {e}"),
        }
    }

    /// Reloads when a file in the folder changes (looked for every [`WATCH_EVERY`]) and on
    /// `SIGHUP`, until `shutdown` completes.
    pub async fn watch(self, shutdown: impl Future<Output = ()>) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "cannot listen for SIGHUP ({e}); workflow files are still read again when they change"
                );
                None
            }
        };
        let mut seen = fingerprint(&dir);
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = hup => {
                    tracing::info!("SIGHUP: reading the workflow files again");
                    seen = fingerprint(&dir);
                    let this = self.clone();
                    let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                }
                _ = tick.tick() => {
                    let now = fingerprint(&dir);
                    if now != seen {
                        seen = now;
                        let this = self.clone();
                        let _ = tokio::task::spawn_blocking(move || this.reload()).await;
                    }
                }
            }
        }
    }
}

/// Each workflow file's path, modification time and size: what changes when a file is saved.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

/// The `*.yaml` and `*.yml` files directly in `dir`, sorted.
fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_yaml(p) && p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

fn is_yaml(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

fn dir_error(dir: &Path, e: &std::io::Error) -> ValidationError {
    ValidationError {
        file: dir.display().to_string(),
        problems: vec![steward_core::Problem {
            step: None,
            index: None,
            field: "(directory)".to_owned(),
            message: format!("cannot read the workflows directory: {e}"),
            fix: "point --workflows (http.workflows) at the folder of workflow files".to_owned(),
            line: None,
        }],
    }
}

fn file_error(name: &str, e: &std::io::Error) -> ValidationError {
    ValidationError {
        file: name.to_owned(),
        problems: vec![steward_core::Problem {
            step: None,
            index: None,
            field: "(file)".to_owned(),
            message: format!("cannot read: {e}"),
            fix: "check the file's permissions".to_owned(),
            line: None,
        }],
    }
}

fn not_text(name: &str) -> ValidationError {
    ValidationError {
        file: name.to_owned(),
        problems: vec![steward_core::Problem {
            step: None,
            index: None,
            field: "(file)".to_owned(),
            message: "the file is not UTF-8 text".to_owned(),
            fix: "save it as UTF-8".to_owned(),
            line: None,
        }],
    }
}

/// One file checked by [`validate_paths`].
#[derive(Debug)]
pub struct Checked {
    /// The file.
    pub file: PathBuf,
    /// Its plan, or every problem in it.
    pub result: Result<Plan, ValidationError>,
}

/// Checks workflow files for `steward validate`: each path is a file, or a folder whose
/// `*.yaml` and `*.yml` files (in its subfolders too) are checked, in path order.
pub fn validate_paths(paths: &[PathBuf], registry: &Registry) -> Vec<Checked> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_dir(p, &mut files);
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|file| {
            let name = file.display().to_string();
            let result = match std::fs::read(&file) {
                Err(e) => Err(file_error(&name, &e)),
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(text) => Plan::load(&name, &text, Some(registry)),
                    Err(_) => Err(not_text(&name)),
                },
            };
            Checked { file, result }
        })
        .collect()
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        out.push(dir.to_owned());
        return;
    };
    let mut entries: Vec<PathBuf> = read.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_dir(&p, out);
        } else if is_yaml(&p) {
            out.push(p);
        }
    }
}

/// A run to start.
#[derive(Debug, Clone)]
pub struct StartRun {
    /// The workflow.
    pub plan: Arc<Plan>,
    /// The company.
    pub company: CompanyId,
    /// The inputs.
    pub inputs: Map<String, Value>,
    /// Who asks (a technician's email, or the trigger).
    pub requested_by: String,
    /// The ticket it works on.
    pub ticket: Option<TicketRef>,
    /// A scheduled start.
    pub start_at: Option<Timestamp>,
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such company.
    #[error("no company `{0}`; add it first (steward companies add, or the API)")]
    NoSuchCompany(CompanyId),
    /// The company's policy refuses the workflow.
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
    /// The workflow with the policy's gate does not compile (a bug).
    #[error("the planned workflow is invalid: {0}")]
    Plan(String),
    /// The store refused the run (its inputs are wrong: `store::Error::Inputs`) or failed.
    #[error(transparent)]
    Store(store::Error),
    /// The company store failed.
    #[error(transparent)]
    Companies(#[from] companies::Error),
    /// A gate of the run would have nobody able to decide it.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Approvers(Vec<GateProblem>),
    /// The technicians could not be read (to check the gates' approvers).
    #[error(transparent)]
    Auth(#[from] crate::auth::Error),
    /// Steps of the workflow need what the company's identity × mailbox combination cannot
    /// give (`steward_core::routing::Error::Combination`): refused before anything changes.
    #[error("{}", .0.iter().map(|(step, e)| format!("step `{step}`: {e}")).collect::<Vec<_>>().join("; "))]
    Combination(Vec<(String, steward_core::routing::Error)>),
}

/// Plans and starts runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Planner {
    /// The run store.
    pub store: Store,
    /// The companies.
    pub companies: Companies,
    /// The op catalog.
    pub registry: Arc<Registry>,
}

impl Planner {
    /// Starts a run.
    pub async fn start(&self, req: StartRun) -> Result<RunId, Error> {
        let record = self
            .companies
            .get(&req.company)
            .await?
            .ok_or_else(|| Error::NoSuchCompany(req.company.clone()))?;
        let effective = apply_policy(req.plan.def(), &record.company, self.registry.as_ref())?;
        // Protected accounts and the blast-radius brake (`psa::guard`), for every run.
        crate::psa::guard::Guard::for_store(&self.store)
            .check(&effective, &req.company, &req.inputs)
            .await
            .map_err(|e| match e {
                crate::psa::guard::GuardError::Refused(r) => Error::Policy(r),
                crate::psa::guard::GuardError::Redis(e) => Error::Store(store::Error::Redis(e)),
            })?;
        // A provider combination that cannot carry a step out is refused now: such a run
        // would wait at that step for something that never happens.
        let refused = steward_core::routing::combination_refusals(
            &req.plan,
            &record.company,
            &req.inputs,
            self.registry.as_ref(),
        );
        if !refused.is_empty() {
            return Err(Error::Combination(refused));
        }
        // A gate nobody could decide is refused now rather than found out when it opens.
        let directory = crate::auth::Auth::for_store(&self.store)
            .directory()
            .await?;
        let problems = gate_problems(&effective, &record.company, &directory, &req.requested_by);
        if !problems.is_empty() {
            return Err(Error::Approvers(problems));
        }
        let plan = if &effective == req.plan.def() {
            req.plan.clone()
        } else {
            Arc::new(
                Plan::compile(effective, Some(self.registry.as_ref()))
                    .map_err(|p| Error::Plan(format!("{p:?}")))?,
            )
        };
        let settings = match serde_json::to_value(&record.company) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        self.store
            .create_run(NewRun {
                plan,
                company: req.company,
                company_settings: settings,
                inputs: req.inputs,
                requested_by: req.requested_by,
                start_at: req.start_at,
                ticket: req.ticket,
            })
            .await
            .map_err(Error::Store)
    }
}
