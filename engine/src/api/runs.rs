//! Runs: start, list, read, and a technician's controls.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_core::history::redact;
use steward_schemas::{
    CompanyId, Event, HistoryEntry, RunDoc, RunId, RunStatus, StepId, TicketRef, Timestamp,
};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use super::{ApiState, Created};
use crate::planner::{self, StartRun};
use crate::store::{Outcome, RunSnapshot};

/// A run to start.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRunRequest {
    /// The workflow's name (see `GET /v1/workflows`).
    #[schemars(length(min = 1, max = 64))]
    pub workflow: String,
    /// The company.
    pub company: CompanyId,
    /// The workflow's inputs.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// The PSA ticket it works on.
    #[serde(default)]
    pub ticket: Option<TicketRef>,
    /// Start later.
    #[serde(default)]
    pub start_at: Option<Timestamp>,
}

/// A run, in a line.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunSummary {
    /// The run.
    pub run: RunId,
    /// The workflow's name.
    pub workflow: String,
    /// Its version.
    pub workflow_version: u32,
    /// The company.
    pub company: CompanyId,
    /// The status's name.
    pub status: String,
    /// The status, in full.
    pub status_detail: RunStatus,
    /// Who asked for it.
    pub requested_by: String,
    /// The ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl RunSummary {
    pub(crate) fn of(doc: &RunDoc) -> Self {
        Self {
            run: doc.ctx.run_id,
            workflow: doc.ctx.workflow.name.clone(),
            workflow_version: doc.ctx.workflow.version,
            company: doc.ctx.company.clone(),
            status: doc.state.status.name().to_owned(),
            status_detail: doc.state.status.clone(),
            requested_by: doc.ctx.requested_by.clone(),
            ticket: doc.ctx.ticket.clone(),
            created_at: doc.ctx.created_at,
            updated_at: doc.state.updated_at,
        }
    }
}

/// A run in full: the document (secrets hidden), the plan, and the history.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunView {
    /// The run in a line.
    pub summary: RunSummary,
    /// The document's version.
    pub version: u64,
    /// The run's document.
    pub run: RunDoc,
    /// The steps in dependency order.
    pub plan: Vec<PlanStepView>,
    /// Every committed transition, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// One step of a run's plan.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PlanStepView {
    /// The step.
    pub step: StepId,
    /// Its op (`gate` for approval gates).
    pub op: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The steps it needs.
    pub needs: Vec<StepId>,
}

pub(crate) fn plan_view(plan: &Plan) -> Vec<PlanStepView> {
    plan.steps()
        .iter()
        .map(|s| PlanStepView {
            step: s.id.clone(),
            op: s.op.clone(),
            description: s.description.clone(),
            needs: s.needs.iter().map(|&n| plan.step(n).id.clone()).collect(),
        })
        .collect()
}

/// Hides secret inputs and secret-looking values before a document leaves the server.
pub(crate) fn redacted(doc: &RunDoc, plan: &Plan) -> RunDoc {
    let mut doc = doc.clone();
    for (name, decl) in &plan.def().inputs {
        if decl.secret && doc.ctx.inputs.contains_key(name) {
            doc.ctx
                .inputs
                .insert(name.clone(), Value::String("[secret]".to_owned()));
        }
    }
    let mut inputs = Value::Object(std::mem::take(&mut doc.ctx.inputs));
    redact(&mut inputs);
    if let Value::Object(m) = inputs {
        doc.ctx.inputs = m;
    }
    for rec in doc.state.steps.values_mut() {
        if let steward_schemas::StepState::Succeeded { output, .. } = &mut rec.state {
            redact(output);
        }
    }
    doc
}

pub(crate) async fn load(
    state: &ApiState,
    run: RunId,
    caller: &Caller,
) -> ApiResult<(RunSnapshot, std::sync::Arc<Plan>)> {
    let snap = state
        .store
        .load(run)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{run}`")))?;
    caller.require_company(&snap.doc.ctx.company)?;
    let plan = state.store.plan(&snap.doc.ctx.workflow.hash).await?;
    Ok((snap, plan))
}

/// Starts a run of a workflow for a company, under the company's permission policy (which may
/// refuse it, or add an approval gate).
pub(super) async fn start(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<StartRunRequest>,
) -> ApiResult<Created<RunSummary>> {
    caller.require_company(&req.company)?;
    let plan = state.workflows.get(&req.workflow).cloned().ok_or_else(|| {
        let known: Vec<&str> = state
            .workflows
            .all()
            .map(|p| p.def().name.as_str())
            .collect();
        ApiError::invalid(
            "workflow",
            format!("no workflow `{}`", req.workflow),
            format!(
                "use one of: {}",
                if known.is_empty() {
                    "(none loaded)".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        )
    })?;
    let run = state
        .planner
        .start(StartRun {
            plan,
            company: req.company,
            inputs: req.inputs,
            requested_by: caller.tech.email.clone(),
            ticket: req.ticket,
            start_at: req.start_at,
        })
        .await
        .map_err(|e| match e {
            planner::Error::NoSuchCompany(c) => ApiError::invalid("company", format!("no company `{c}`"), "add the company first (POST /v1/companies)"),
            planner::Error::Policy(refusal) => ApiError::policy(
                refusal.to_string(),
                serde_json::to_value(
                    refusal
                        .steps
                        .iter()
                        .map(|s| serde_json::json!({"step": s.step, "op": s.op, "group": s.group, "company": refusal.company, "reason": s.reason}))
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
            ),
            planner::Error::Inputs(p) => crate::store::Error::Inputs(p).into(),
            planner::Error::Store(e) => e.into(),
            planner::Error::Companies(e) => e.into(),
            planner::Error::Plan(m) => ApiError::internal(m),
        })?;
    state.metrics.count("steward_runs_started_total", &[]);
    let snap = state
        .store
        .load(run)
        .await?
        .ok_or_else(|| ApiError::internal("the new run vanished"))?;
    Ok(Created(RunSummary::of(&snap.doc)))
}

/// Filters for listing runs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListRuns {
    /// Only this company's runs.
    pub company: Option<CompanyId>,
    /// Only runs of this workflow.
    pub workflow: Option<String>,
    /// Only runs in this status (`running`, `paused`, `completed`, …).
    pub status: Option<String>,
    /// Only runs created at or after this time.
    pub since: Option<Timestamp>,
    /// Only runs created before this time.
    pub until: Option<Timestamp>,
    /// How many (1 to 500, default 50).
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<u32>,
    /// Where the previous page ended (`next_cursor`).
    pub cursor: Option<String>,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<RunSummary>,
    /// Pass as `cursor` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

const STATUSES: &[&str] = &[
    "scheduled",
    "running",
    "paused",
    "cancelling",
    "rolling_back",
    "completed",
    "cancelled",
    "rolled_back",
    "rollback_failed",
];

/// Lists runs, newest first, with filters; a technician sees only their companies' runs.
pub(super) async fn list(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListRuns>,
) -> ApiResult<axum::Json<RunPage>> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("{limit}"),
            "ask for 1 to 500 runs",
        ));
    }
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::invalid(
            "status",
            format!("`{s}` is not a run status"),
            format!("use one of: {}", STATUSES.join(", ")),
        ));
    }
    if let Some(c) = &q.company {
        caller.require_company(c)?;
    }
    let mut until = q.until.map_or(i64::MAX, |t| t.as_micros());
    if let Some(cursor) = &q.cursor {
        until = cursor
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "not a cursor from this API",
                    "pass `next_cursor` from the previous page",
                )
            })?;
    }
    let since = q.since.map_or(i64::MIN, |t| t.as_micros());
    let keys = state.store.keys();
    // Which index to read: the company's, the status's, or all runs; the rest is filtered.
    let scope: Option<Vec<CompanyId>> = match (&q.company, caller.tech.role, &caller.tech.companies)
    {
        (Some(c), _, _) => Some(vec![c.clone()]),
        (None, steward_schemas::Role::Admin, _)
        | (None, _, steward_schemas::CompanyScope::All(_)) => None,
        (None, _, steward_schemas::CompanyScope::Only(list)) => Some(list.clone()),
    };
    let index_keys: Vec<String> = keys
        .all_shards()
        .flat_map(|shard| match (&scope, &q.status) {
            (Some(companies), _) => companies
                .iter()
                .map(|c| keys.runs_of_company(shard, c))
                .collect::<Vec<_>>(),
            (None, Some(status)) => vec![keys.runs_in_status(shard, status)],
            (None, None) => vec![keys.runs(shard)],
        })
        .collect();
    let mut found: Vec<(i64, RunId)> = Vec::new();
    let mut max_score = until;
    // Read pages of the indexes until enough runs pass the filters (or the indexes run out).
    for _ in 0..20 {
        let mut pipe = redis::pipe();
        let fetch = (limit as usize * 2).max(50);
        for k in &index_keys {
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(k)
                .arg(format!("({max_score}"))
                .arg(since)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(fetch);
        }
        let pages: Vec<Vec<(String, i64)>> = state.store.db().pipe(&pipe).await?;
        let mut batch: Vec<(i64, RunId)> = pages
            .into_iter()
            .flatten()
            .filter_map(|(id, score)| id.parse().ok().map(|r| (score, r)))
            .collect();
        let exhausted = batch.is_empty();
        batch.sort_by(|a, b| b.cmp(a));
        batch.dedup();
        let Some(&(lowest, _)) = batch.last() else {
            break;
        };
        let docs = load_many(&state, batch.iter().map(|(_, r)| *r)).await?;
        for ((score, run), doc) in batch.into_iter().zip(docs) {
            let Some(doc) = doc else { continue };
            let ok = q
                .workflow
                .as_ref()
                .is_none_or(|w| &doc.ctx.workflow.name == w)
                && q.status
                    .as_ref()
                    .is_none_or(|s| doc.state.status.name() == s)
                && caller.may_access(&doc.ctx.company);
            if ok {
                found.push((score, run));
            }
        }
        max_score = lowest;
        if found.len() > limit as usize || exhausted {
            break;
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    found.dedup();
    let next_cursor =
        (found.len() > limit as usize).then(|| found[limit as usize - 1].0.to_string());
    found.truncate(limit as usize);
    let docs = load_many(&state, found.iter().map(|(_, r)| *r)).await?;
    Ok(axum::Json(RunPage {
        runs: docs.iter().flatten().map(RunSummary::of).collect(),
        next_cursor,
    }))
}

async fn load_many(
    state: &ApiState,
    runs: impl Iterator<Item = RunId>,
) -> ApiResult<Vec<Option<RunDoc>>> {
    let runs: Vec<RunId> = runs.collect();
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for r in &runs {
        pipe.cmd("HGET").arg(state.store.keys().run(*r)).arg("d");
    }
    let docs: Vec<Option<String>> = state.store.db().pipe(&pipe).await?;
    Ok(docs
        .into_iter()
        .map(|d| d.and_then(|d| crate::store::parse_doc(&d).ok()))
        .collect())
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct RunPath {
    /// The run.
    run: RunId,
}

/// A run: its document (secrets hidden), its plan and its history.
pub(super) async fn get(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<axum::Json<RunView>> {
    let (snap, plan) = load(&state, p.run, &caller).await?;
    let history = state.store.history(p.run).await?;
    Ok(axum::Json(RunView {
        summary: RunSummary::of(&snap.doc),
        version: snap.version,
        run: redacted(&snap.doc, &plan),
        plan: plan_view(&plan),
        history,
    }))
}

/// A technician's reason, optional.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What cancelling does.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Undo what the run changed.
    #[serde(default)]
    pub rollback: bool,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

pub(super) async fn apply_command(
    state: &ApiState,
    caller: &Caller,
    run: RunId,
    event: Event,
) -> ApiResult<axum::Json<RunSummary>> {
    let (snap, _) = load(state, run, caller).await?;
    match state
        .store
        .apply(run, &event, Some(snap), None, None)
        .await?
    {
        Outcome::Applied { .. } | Outcome::Ignored { .. } => {}
        Outcome::Refused(e) => return Err(ApiError::conflict(e.to_string())),
    }
    let snap = state
        .store
        .load(run)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{run}`")))?;
    Ok(axum::Json(RunSummary::of(&snap.doc)))
}

fn check_reason(reason: &Option<String>) -> ApiResult<()> {
    if reason.as_ref().is_some_and(|r| r.chars().count() > 2000) {
        return Err(ApiError::invalid(
            "reason",
            "longer than 2000 characters",
            "shorten it",
        ));
    }
    Ok(())
}

/// Cancels a run (with `rollback`, undoes what it changed).
pub(super) async fn cancel(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<RunPath>,
    ApiJson(b): ApiJson<CancelBody>,
) -> ApiResult<axum::Json<RunSummary>> {
    check_reason(&b.reason)?;
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::CancelRequested {
            by,
            rollback: b.rollback,
            reason: b.reason,
        },
    )
    .await
}

/// Pauses a run: nothing new is dispatched until it is resumed.
pub(super) async fn pause(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<RunPath>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> ApiResult<axum::Json<RunSummary>> {
    check_reason(&b.reason)?;
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::PauseRequested {
            by,
            reason: b.reason,
        },
    )
    .await
}

/// Resumes a paused run.
pub(super) async fn resume(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<RunPath>,
) -> ApiResult<axum::Json<RunSummary>> {
    let by = caller.tech.email.clone();
    apply_command(&state, &caller, p.run, Event::ResumeRequested { by }).await
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct StepPath {
    /// The run.
    run: RunId,
    /// The step.
    step: StepId,
}

/// Tries a failed, retrying or polling step again now.
pub(super) async fn retry_step(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<StepPath>,
) -> ApiResult<axum::Json<RunSummary>> {
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::RetryStepRequested { step: p.step, by },
    )
    .await
}

/// Skips a step that has not run, waits, or failed (gates cannot be skipped).
pub(super) async fn skip_step(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<StepPath>,
    ApiJson(b): ApiJson<ReasonBody>,
) -> ApiResult<axum::Json<RunSummary>> {
    check_reason(&b.reason)?;
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::SkipStepRequested {
            step: p.step,
            by,
            reason: b.reason,
        },
    )
    .await
}

/// Which workflows a server offers.
#[derive(Debug, Serialize, JsonSchema)]
pub struct WorkflowInfo {
    /// The name to start it by.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// What it does.
    pub description: String,
    /// Its inputs.
    pub inputs: std::collections::BTreeMap<String, steward_schemas::InputDef>,
    /// Its steps.
    pub steps: Vec<PlanStepView>,
}

/// The workflows this server offers.
pub(super) async fn workflows(
    state: axum::extract::State<ApiState>,
    _caller: Caller,
) -> axum::Json<Vec<WorkflowInfo>> {
    axum::Json(
        state
            .workflows
            .all()
            .map(|p| WorkflowInfo {
                name: p.def().name.clone(),
                version: p.def().version,
                description: p.def().description.clone(),
                inputs: p.def().inputs.clone(),
                steps: plan_view(p),
            })
            .collect(),
    )
}
