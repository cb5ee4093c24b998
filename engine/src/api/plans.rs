//! What a workflow would do for a company, before it runs: the routed plan (`steward plan`) and the
//! exact PowerShell a script action would send (`steward script`).
//!
//! Both read the company's saved settings and the server's workflows and change nothing. They
//! answer under the same authorization as starting a run: only someone who may act on the
//! company sees its hosts and values, and secrets are never shown (a secret input reads
//! `[secret]` in a plan and `[redacted]` inside a script's payload).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_core::routing;
use steward_schemas::{Company, CompanyId};

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, Caller};

/// A workflow to route for a company.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// The workflow's name (see `GET /v1/workflows`).
    #[schemars(length(min = 1, max = 64))]
    pub workflow: String,
    /// The company.
    pub company: CompanyId,
    /// The workflow's inputs, as for starting a run.
    #[serde(default)]
    pub inputs: Map<String, Value>,
}

/// One concrete action of a routed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoutedAction {
    /// The concrete action (`graph.create_user`, `ad.new_user`, …).
    pub action: String,
    /// `graph`, `exchange_online`, `rmm` or `steward`.
    pub system: String,
    /// For the RMM: the machine the script acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// For the RMM: `direct`, or `from runner R by PowerShell remoting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// When it applies (decided when the step runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Arguments routing adds.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub args: Map<String, Value>,
    /// Why it runs there.
    pub why: String,
}

impl From<routing::ActionView> for RoutedAction {
    fn from(a: routing::ActionView) -> Self {
        Self {
            action: a.action,
            system: a.system,
            host: a.host,
            via: a.via,
            when: a.when,
            args: a.args,
            why: a.why,
        }
    }
}

/// Routed actions in a sentence: `ad.new_user on FAB-RUNNER01 (direct), then graph.assign_license
/// (graph)`; `nothing` when there are none.
pub fn route_sentence(actions: &[routing::ActionView]) -> String {
    if actions.is_empty() {
        return "nothing".to_owned();
    }
    actions
        .iter()
        .map(|a| {
            let when = a
                .when
                .as_ref()
                .map_or_else(String::new, |w| format!(" if {w}"));
            match (&a.host, &a.via) {
                (Some(host), Some(via)) => format!("{} on {host} ({via}){when}", a.action),
                (Some(host), None) => format!("{} on {host}{when}", a.action),
                _ => format!("{} ({}){when}", a.action, a.system),
            }
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// One step of a routed plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoutedStep {
    /// The step's id.
    pub step: String,
    /// Its abstract op.
    pub op: String,
    /// What it does.
    pub summary: String,
    /// Its `when:` condition, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// The steps it waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Where it runs, in order.
    pub actions: Vec<RoutedAction>,
    /// Something people should know about the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it cannot be routed for this company (a run would fail at this step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its parameters, secrets hidden; values not known before the run are shown as written.
    pub params: Value,
}

impl From<routing::StepView> for RoutedStep {
    fn from(s: routing::StepView) -> Self {
        Self {
            step: s.step,
            op: s.op,
            summary: s.summary,
            when: s.when,
            needs: s.needs,
            actions: s.actions.into_iter().map(Into::into).collect(),
            note: s.note,
            problem: s.problem,
            params: s.params,
        }
    }
}

/// A workflow routed for one company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoutedPlanView {
    /// The workflow's name.
    pub workflow: String,
    /// Its version.
    pub version: u32,
    /// The company's id.
    pub company: String,
    /// The company's name.
    pub company_name: String,
    /// Its identity provider.
    pub identity_provider: String,
    /// Its mailbox provider.
    pub mailbox_provider: String,
    /// Whether every step could be routed.
    pub routable: bool,
    /// The inputs a run would have (the workflow's and the company's defaults applied), secret
    /// inputs shown as `[secret]`.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// The steps in dependency order.
    pub steps: Vec<RoutedStep>,
}

impl From<routing::RoutedPlan> for RoutedPlanView {
    fn from(p: routing::RoutedPlan) -> Self {
        Self {
            routable: p.is_routable(),
            workflow: p.workflow,
            version: p.version,
            company: p.company,
            company_name: p.company_name,
            identity_provider: p.identity_provider.to_owned(),
            mailbox_provider: p.mailbox_provider.to_owned(),
            inputs: p.inputs,
            steps: p.steps.into_iter().map(Into::into).collect(),
        }
    }
}

/// The company's saved settings, if the caller may act on it.
async fn company(state: &ApiState, caller: &Caller, id: &CompanyId) -> ApiResult<Company> {
    caller.require_company(id)?;
    Ok(state
        .companies
        .get(id)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                "company",
                format!("no company `{id}`"),
                "add it first (`steward companies add` or `POST /v1/companies`)",
            )
        })?
        .company)
}

/// Routes a workflow for a company without running it: every step's concrete actions, where each
/// runs (system, host, and how the RMM reaches it), and its parameters with secrets hidden.
pub(super) async fn plan(
    axum::extract::State(state): axum::extract::State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<PlanRequest>,
) -> ApiResult<axum::Json<RoutedPlanView>> {
    let company = company(&state, &caller, &req.company).await?;
    let plan = super::runs::offered(&state, &req.workflow)?;
    // The plan a run would have: with the gate the company's policy adds where it asks for
    // approval (a policy that refuses the workflow is found when a run starts).
    let plan =
        match steward_core::policy::apply_policy(plan.def(), &company, state.registry.as_ref()) {
            Ok(effective) if &effective != plan.def() => {
                steward_core::Plan::compile(effective, Some(state.registry.as_ref()))
                    .map(std::sync::Arc::new)
                    .unwrap_or(plan)
            }
            _ => plan,
        };
    let routed = routing::render_plan(&plan, &company, &req.inputs, state.registry.as_ref())
        .map_err(|problems| ApiError::from(crate::store::Error::Inputs(problems)))?;
    Ok(axum::Json(routed.into()))
}

/// A script action to show.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptRequest {
    /// The script action (`ad.new_user`, `exchange_server.enable_remote_mailbox`, …): see
    /// `steward ops` and the actions of `steward plan`.
    #[schemars(length(min = 1, max = 128))]
    pub action: String,
    /// The company, whose settings decide the machine and whether a runner reaches it.
    pub company: CompanyId,
    /// The action's inputs.
    #[serde(default)]
    pub inputs: Map<String, Value>,
}

/// The script the RMM would be given.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ScriptView {
    /// The action.
    pub action: String,
    /// The machine the script acts on.
    pub host: String,
    /// `direct`, or `from runner R by PowerShell remoting`.
    pub via: String,
    /// The template's name and version, as its header says.
    pub template: String,
    /// The script text, byte for byte what is sent, except that secret inputs inside the encoded
    /// payload read `[redacted]`.
    pub text: String,
}

/// The exact PowerShell a script action would send for a company, its values carried in the one
/// encoded payload (never in the script's text). Secret inputs are redacted.
pub(super) async fn script(
    axum::extract::State(state): axum::extract::State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<ScriptRequest>,
) -> ApiResult<axum::Json<ScriptView>> {
    use steward_workers::powershell;
    let company = company(&state, &caller, &req.company).await?;
    let bad = |e: powershell::Error| {
        let field = match &e {
            powershell::Error::UnknownTemplate { .. } | powershell::Error::AbstractOp { .. } => {
                "action".to_owned()
            }
            powershell::Error::Route(_) => "company".to_owned(),
            powershell::Error::UnknownField { field, .. }
            | powershell::Error::BadField { field, .. } => format!("inputs.{field}"),
            powershell::Error::MissingField { field, .. } => format!("inputs.{field}"),
            powershell::Error::ServerConflict { .. } => "inputs.server".to_owned(),
            _ => "inputs".to_owned(),
        };
        let text = e.to_string();
        match text.split_once("; fix: ") {
            Some((message, fix)) => ApiError::invalid(field, message, fix),
            None => ApiError::invalid(field, text, "see `steward ops` for the action's inputs"),
        }
    };
    let prepared = powershell::prepare(&req.action, &company, &req.inputs).map_err(bad)?;
    let (host, via) = match &prepared.target {
        routing::Target::Rmm { host, via } => (host.clone(), via.to_string()),
        other => (String::new(), other.system().to_owned()),
    };
    Ok(axum::Json(ScriptView {
        action: req.action,
        host,
        via,
        template: prepared.template.id(),
        text: prepared.redacted_text(),
    }))
}
