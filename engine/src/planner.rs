//! Starting runs: a workflow, for a company, under that company's permission policy.
//!
//! This is the one way runs start from the API and the CLI: the company must exist; its policy
//! refuses the workflow (naming each refused step, op, group and company) or inserts the approval
//! gate its approval rules call for; the company's settings are pinned into the run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};
use steward_core::company::{GateProblem, gate_problems};
use steward_core::policy::{PolicyRefusal, apply_policy};
use steward_core::{Plan, ValidationError};
use steward_schemas::{CompanyId, RunId, TicketRef, Timestamp};
use steward_workers::Registry;

use crate::companies::{self, Companies};
use crate::store::{self, NewRun, Store};

/// The workflows a server offers, by name (loaded from `workflows/*.yaml`).
#[derive(Debug, Clone, Default)]
pub struct Workflows {
    by_name: BTreeMap<String, Arc<Plan>>,
}

impl Workflows {
    /// Loads every `*.yaml` in `dir`, checked against the catalog; a bad file is an error that
    /// names it.
    pub fn load_dir(dir: &Path, registry: &Registry) -> Result<Self, ValidationError> {
        let mut by_name = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| ValidationError {
                file: dir.display().to_string(),
                problems: vec![steward_core::Problem {
                    step: None,
                    field: "(directory)".to_owned(),
                    message: format!("cannot read the workflows directory: {e}"),
                    fix: "point --workflows (http.workflows) at the folder of workflow files"
                        .to_owned(),
                    line: None,
                }],
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        entries.sort();
        for path in entries {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|e| ValidationError {
                file: name.clone(),
                problems: vec![steward_core::Problem {
                    step: None,
                    field: "(file)".to_owned(),
                    message: format!("cannot read: {e}"),
                    fix: "check the file's permissions".to_owned(),
                    line: None,
                }],
            })?;
            let plan = Plan::load(&name, &text, Some(registry))?;
            by_name.insert(plan.def().name.clone(), Arc::new(plan));
        }
        Ok(Self { by_name })
    }

    /// The workflow called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Plan>> {
        self.by_name.get(name)
    }

    /// Every workflow.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Plan>> {
        self.by_name.values()
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
