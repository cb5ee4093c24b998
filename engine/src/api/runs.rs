//! Runs: start, list, read, and a technician's controls.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_core::Plan;
use steward_core::expr::Scope;
use steward_core::machine::RunScope;
use steward_core::words;
use steward_schemas::{
    CompanyId, Event, HistoryEntry, RunAction, RunDoc, RunId, RunStatus, StepId, TicketRef,
    Timestamp,
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
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
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
    /// The status in a sentence (`rolled back: rejected by lead@msp.example at gate
    /// `approval` — “wrong department”`).
    pub status_text: String,
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
        let mut status_detail = doc.state.status.clone();
        steward_core::history::redact_status(&mut status_detail);
        Self {
            run: doc.ctx.run_id,
            workflow: doc.ctx.workflow.name.clone(),
            workflow_version: doc.ctx.workflow.version,
            company: doc.ctx.company.clone(),
            status: doc.state.status.name().to_owned(),
            status_text: words::status(&status_detail),
            status_detail,
            requested_by: doc.ctx.requested_by.clone(),
            ticket: doc.ctx.ticket.clone(),
            created_at: doc.ctx.created_at,
            updated_at: doc.state.updated_at,
        }
    }
}

/// A run in full: the document (secrets hidden), the plan, each step's state and the history,
/// in words too, and what a technician can do now.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct RunView {
    /// The run in a line (its `status_text` with the cancel reason, when it was cancelled).
    pub summary: RunSummary,
    /// The document's version.
    pub version: u64,
    /// The run's document.
    pub run: RunDoc,
    /// The steps in dependency order.
    pub plan: Vec<PlanStepView>,
    /// Each step's state, in plan order.
    pub steps: Vec<StepView>,
    /// Every committed transition, oldest first.
    pub history: Vec<HistoryView>,
    /// What a technician can do now: only requests the run's state machine would accept (an
    /// ended run has none).
    pub actions: Vec<ActionView>,
    /// Why the run cannot be shown or changed in full, and what to do (its workflow definition
    /// is missing from Redis); absent when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Where one step of a run is.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct StepView {
    /// The step.
    pub step: StepId,
    /// Its op (`gate` for approval gates).
    pub op: String,
    /// Its state's name (`queued`, `failed`, …).
    pub state: String,
    /// Its state in a sentence.
    pub text: String,
    /// Its undo's state's name, once the run rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    /// Its undo's state in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo_text: Option<String>,
}

/// One entry of a run's history, with a sentence.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct HistoryView {
    /// The entry.
    #[serde(flatten)]
    pub entry: HistoryEntry,
    /// What happened, in a sentence.
    pub text: String,
}

/// A request a technician can make now: the run's state machine accepts it (and refuses what
/// is not listed), so a CLI or dashboard offers only these fixes.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ActionView {
    /// The request.
    #[serde(flatten)]
    pub action: RunAction,
    /// What it does, in a sentence.
    pub text: String,
}

impl RunView {
    /// The view of a run: its snapshot, its plan and its history, as of `now`.
    pub fn of(snap: &RunSnapshot, plan: &Plan, history: Vec<HistoryEntry>, now: Timestamp) -> Self {
        let doc = &snap.doc;
        // Everything shown is read from the redacted document: no text carries a secret.
        let shown = redacted(doc, plan);
        let mut summary = RunSummary::of(doc);
        summary.status_text = words::run_status(&shown.state.status, &history);
        let steps = plan
            .steps()
            .iter()
            .filter_map(|s| {
                let rec = shown.state.steps.get(&s.id)?;
                Some(StepView {
                    step: s.id.clone(),
                    op: s.op.clone(),
                    state: rec.state.name().to_owned(),
                    text: words::step_state(&rec.state),
                    undo: rec.undo.as_ref().map(|u| u.name().to_owned()),
                    undo_text: rec.undo.as_ref().map(words::undo_state),
                })
            })
            .collect();
        Self {
            summary,
            version: snap.version,
            run: shown,
            plan: plan_view(
                plan,
                Some(&RunScope {
                    ctx: &doc.ctx,
                    state: &doc.state,
                }),
            ),
            steps,
            actions: steward_core::actions(plan, &doc.ctx, &doc.state, now)
                .into_iter()
                .map(|action| ActionView {
                    text: words::action(&action),
                    action,
                })
                .collect(),
            history: history
                .into_iter()
                .map(|entry| HistoryView {
                    text: words::entry(&entry),
                    entry,
                })
                .collect(),
            problem: None,
        }
    }

    /// The view of a run whose workflow definition is missing: its status and history, no plan,
    /// no actions, its inputs and step records hidden (without the definition nothing says which
    /// of them are secret), and `problem` saying what happened and the fix.
    pub fn without_definition(snap: &RunSnapshot, history: Vec<HistoryEntry>, hash: &str) -> Self {
        let mut shown = snap.doc.clone();
        for v in shown.ctx.inputs.values_mut() {
            *v = Value::String("(hidden: the workflow definition is missing)".to_owned());
        }
        shown.ctx.company_settings.clear();
        shown.state.steps.clear();
        steward_core::history::redact_status(&mut shown.state.status);
        let mut summary = RunSummary::of(&snap.doc);
        summary.status_text = words::run_status(&shown.state.status, &history);
        Self {
            summary,
            version: snap.version,
            run: shown,
            plan: Vec::new(),
            steps: Vec::new(),
            history: history
                .into_iter()
                .map(|entry| HistoryView {
                    text: words::entry(&entry),
                    entry,
                })
                .collect(),
            actions: Vec::new(),
            problem: Some(format!(
                "{}; to fix: {}",
                super::error::missing_definition(hash),
                super::error::MISSING_DEFINITION_FIX
            )),
        }
    }

    /// Loads a run's view from the store (for in-process callers: the demo); `None` if there is
    /// no such run. Callers of the API get it through `GET /v1/runs/{run}`, which checks the
    /// caller's companies first.
    pub async fn load(
        store: &crate::store::Store,
        run: RunId,
    ) -> crate::store::Result<Option<Self>> {
        let Some(snap) = store.load(run).await? else {
            return Ok(None);
        };
        let plan = store.plan(&snap.doc.ctx.workflow.hash).await?;
        let history = store.history(run).await?;
        Ok(Some(Self::of(&snap, &plan, history, store.clock().now())))
    }
}

/// One step of a run's plan.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
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

/// The plan's steps; descriptions filled in from `scope` (a run's), or as written without one.
pub(crate) fn plan_view(plan: &Plan, scope: Option<&dyn Scope>) -> Vec<PlanStepView> {
    plan.steps()
        .iter()
        .enumerate()
        .map(|(i, s)| PlanStepView {
            step: s.id.clone(),
            op: s.op.clone(),
            description: plan.step_description(i, scope),
            needs: s.needs.iter().map(|&n| plan.step(n).id.clone()).collect(),
        })
        .collect()
}

/// Hides secret inputs and secret-looking values before a document leaves the server.
pub(crate) fn redacted(doc: &RunDoc, plan: &Plan) -> RunDoc {
    let mut doc = doc.clone();
    steward_core::history::redact_doc(&mut doc, plan.def());
    doc
}

/// The workflow the server offers under `name`; 422 naming those it offers otherwise.
pub(super) fn offered(state: &ApiState, name: &str) -> ApiResult<std::sync::Arc<Plan>> {
    let workflows = state.workflows.current();
    workflows.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = workflows.all().map(|p| p.def().name.as_str()).collect();
        ApiError::invalid(
            "workflow",
            format!("no workflow `{name}`"),
            format!(
                "use one of: {}",
                if known.is_empty() {
                    "(none loaded)".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        )
    })
}

/// Starts a run of a workflow for a company, under the company's permission policy (which may
/// refuse it, or add an approval gate).
pub(super) async fn start(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiJson(req): ApiJson<StartRunRequest>,
) -> ApiResult<Created<RunSummary>> {
    caller.require_company(&req.company)?;
    let plan = offered(&state, &req.workflow)?;
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
            planner::Error::Store(e) => e.into(),
            planner::Error::Companies(e) => e.into(),
            planner::Error::Plan(m) => ApiError::internal(m),
            planner::Error::Approvers(problems) => ApiError::invalid_many(
                match problems.as_slice() {
                    [one] => one.message.clone(),
                    many => format!("{} gates of this run would have nobody able to decide them; nothing was started", many.len()),
                },
                serde_json::to_value(&problems).unwrap_or_default(),
            )
            .with_fix(
                problems
                    .iter()
                    .map(|p| p.fix.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            planner::Error::Auth(e) => e.into(),
            planner::Error::Combination(refused) => {
                let fix = match refused.first() {
                    Some((_, steward_core::routing::Error::Combination { fix, .. })) => fix.clone(),
                    _ => String::new(),
                };
                let details = refused
                    .iter()
                    .map(|(step, e)| serde_json::json!({"field": "company", "step": step, "message": e.to_string()}))
                    .collect::<Vec<_>>();
                ApiError::invalid_many(
                    format!("nothing was started: {}", planner::Error::Combination(refused)),
                    details.into(),
                )
                .with_fix(fix)
            }
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
    /// Pass as `cursor` for the next page. A page may hold fewer than `limit` runs (when few
    /// match the filters) and still have one: follow it until there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Every status a run is listed under (`RunStatus::name`, but `created`).
pub const STATUSES: &[&str] = &[
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

/// How many rounds of index reads one page may take before it answers with what it found.
const MAX_ROUNDS: usize = 20;

/// A place in the listing's order, newest first: a run's creation time (µs, its score in the
/// indexes), then its id for runs created in the same microsecond (as Redis orders equal scores).
type Position = (i64, String);

/// Where a page starts: runs strictly below `(score, id)`, or below `score` when there is no id.
#[derive(Debug, Clone, PartialEq)]
struct Bound {
    score: i64,
    id: Option<String>,
}

impl Bound {
    fn admits(&self, (score, id): &Position) -> bool {
        match &self.id {
            None => *score < self.score,
            Some(bound) => (*score, id) < (self.score, bound),
        }
    }

    fn cursor(&self) -> String {
        match &self.id {
            None => self.score.to_string(),
            Some(id) => format!("{}.{id}", self.score),
        }
    }

    fn parse_cursor(cursor: &str) -> Option<Self> {
        let (score, id) = match cursor.split_once('.') {
            Some((score, id)) => (score, Some(id.parse::<RunId>().ok()?.to_string())),
            None => (cursor, None),
        };
        let score = score.parse::<i64>().ok().filter(|s| *s > 0)?;
        Some(Self { score, id })
    }
}

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
    let limit = limit as usize;
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
    let mut bound = match &q.cursor {
        Some(cursor) => Bound::parse_cursor(cursor).ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "not a cursor from this API",
                "pass `next_cursor` from the previous page",
            )
        })?,
        None => Bound {
            score: q.until.map_or(i64::MAX, |t| t.as_micros()),
            id: None,
        },
    };
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
    let fetch = (limit * 2).max(50);
    let mut found: Vec<(Position, RunDoc)> = Vec::new();
    let mut exhausted = false;
    // Read the indexes a page at a time, downwards from `bound`, until enough runs pass the
    // filters (or the indexes run out).
    for _ in 0..MAX_ROUNDS {
        let mut pipe = redis::pipe();
        for k in &index_keys {
            if bound.id.is_some() {
                // The runs created in the bound's own microsecond (all of them: a handful at most).
                pipe.cmd("ZREVRANGEBYSCORE")
                    .arg(k)
                    .arg(bound.score)
                    .arg(bound.score)
                    .arg("WITHSCORES");
            }
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(k)
                .arg(format!("({}", bound.score))
                .arg(since)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(fetch);
        }
        let replies: Vec<Vec<(String, i64)>> = state.store.db().pipe(&pipe).await?;
        let mut ties: Vec<(String, i64)> = Vec::new();
        let mut pages: Vec<Vec<(String, i64)>> = Vec::new();
        let mut replies = replies.into_iter();
        for _ in &index_keys {
            if bound.id.is_some() {
                ties.extend(replies.next().unwrap_or_default());
            }
            pages.push(replies.next().unwrap_or_default());
        }
        // An index whose page came back full has more runs below the page's last one, unread.
        // So the batch holds every run only down to the highest of those last runs (the floor);
        // runs below it wait for the next round, which starts there.
        let floor: Option<Position> = pages
            .iter()
            .filter(|p| p.len() == fetch)
            .filter_map(|p| p.last())
            .map(|(id, score)| (*score, id.clone()))
            .max();
        let mut batch: Vec<Position> = ties
            .into_iter()
            .chain(pages.into_iter().flatten())
            .map(|(id, score)| (score, id))
            .filter(|pos| {
                pos.0 >= since && bound.admits(pos) && floor.as_ref().is_none_or(|f| pos >= f)
            })
            .collect();
        batch.sort_by(|a, b| b.cmp(a));
        batch.dedup();
        let batch: Vec<(Position, RunId)> = batch
            .into_iter()
            .filter_map(|pos| pos.1.parse().ok().map(|run| (pos, run)))
            .collect();
        let docs = load_many(&state, batch.iter().map(|(_, run)| *run)).await?;
        for ((pos, _), doc) in batch.into_iter().zip(docs) {
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
                found.push((pos, doc));
            }
        }
        let Some((score, id)) = floor else {
            exhausted = true;
            break;
        };
        bound = Bound {
            score,
            id: Some(id),
        };
        if found.len() > limit {
            break;
        }
    }
    let next_cursor = if found.len() > limit {
        let (score, id) = found[limit - 1].0.clone();
        Some(
            Bound {
                score,
                id: Some(id),
            }
            .cursor(),
        )
    } else {
        // Out of rounds with the indexes not read to the end: the next page goes on from here.
        (!exhausted).then(|| bound.cursor())
    };
    found.truncate(limit);
    Ok(axum::Json(RunPage {
        runs: found.iter().map(|(_, doc)| RunSummary::of(doc)).collect(),
        next_cursor,
    }))
}

/// Runs' documents by id (absent ones are `None`), in one round trip.
pub(super) async fn load_many(
    state: &ApiState,
    runs: impl Iterator<Item = RunId>,
) -> ApiResult<Vec<Option<RunDoc>>> {
    let runs: Vec<RunId> = runs.collect();
    Ok(state
        .store
        .load_many(&runs)
        .await?
        .into_iter()
        .map(|s| s.map(|s| s.doc))
        .collect())
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
    let snap = state
        .store
        .load(p.run)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{}`", p.run)))?;
    caller.require_company(&snap.doc.ctx.company)?;
    let history = state.store.history(p.run).await?;
    match state.store.plan(&snap.doc.ctx.workflow.hash).await {
        Ok(plan) => Ok(axum::Json(RunView::of(
            &snap,
            &plan,
            history,
            state.store.clock().now(),
        ))),
        Err(crate::store::Error::NoSuchDefinition(hash)) => Ok(axum::Json(
            RunView::without_definition(&snap, history, &hash),
        )),
        Err(e) => Err(e.into()),
    }
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

/// Applies `event` to the run in `snap`; the run's document after it (a refused event is a 409).
pub(super) async fn apply_event(
    state: &ApiState,
    snap: RunSnapshot,
    event: &Event,
) -> ApiResult<RunDoc> {
    let run = snap.doc.ctx.run_id;
    let ctx = snap.doc.ctx.clone();
    match state
        .store
        .apply(run, event, Some(snap), None, None)
        .await?
    {
        // The context never changes; the outcome carries the new state.
        Outcome::Applied { state: next, .. } => Ok(RunDoc {
            v: RunDoc::VERSION,
            ctx,
            state: next,
        }),
        // Nothing changed, though the run may have moved on since the snapshot.
        Outcome::Ignored { .. } => Ok(state
            .store
            .load(run)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no run `{run}`")))?
            .doc),
        Outcome::Refused(e) => Err(ApiError::conflict(e.to_string())),
    }
}

pub(super) async fn apply_command(
    state: &ApiState,
    caller: &Caller,
    run: RunId,
    event: Event,
) -> ApiResult<axum::Json<RunSummary>> {
    let snap = state
        .store
        .load(run)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{run}`")))?;
    caller.require_company(&snap.doc.ctx.company)?;
    let doc = apply_event(state, snap, &event).await?;
    Ok(axum::Json(RunSummary::of(&doc)))
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

/// Tries a step's undo again: one that failed (its attempts start over; a run that ended
/// `rollback_failed` rolls back again), or one waiting to retry (now).
pub(super) async fn retry_undo(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<StepPath>,
) -> ApiResult<axum::Json<RunSummary>> {
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::RetryUndoRequested { step: p.step, by },
    )
    .await
}

/// What a technician did by hand instead of a failed undo.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveUndoBody {
    /// What was done by hand, in a sentence (required; recorded in the run's history with who
    /// and when).
    #[schemars(length(min = 1, max = 2000))]
    pub comment: String,
}

/// Marks a step's failed undo as done by hand. The undos that waited for it run; the run ends
/// `rolled_back` once no undo is left failed.
pub(super) async fn resolve_undo(
    state: axum::extract::State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<StepPath>,
    ApiJson(b): ApiJson<ResolveUndoBody>,
) -> ApiResult<axum::Json<RunSummary>> {
    let comment = b.comment.trim().to_owned();
    if comment.is_empty() {
        return Err(ApiError::invalid(
            "comment",
            "empty",
            "say what was done by hand to undo the step, e.g. \"removed the licence in the admin center\"",
        ));
    }
    if comment.chars().count() > 2000 {
        return Err(ApiError::invalid(
            "comment",
            "longer than 2000 characters",
            "shorten it",
        ));
    }
    let by = caller.tech.email.clone();
    apply_command(
        &state,
        &caller,
        p.run,
        Event::UndoResolved {
            step: p.step,
            by,
            comment,
            via: "api".to_owned(),
        },
    )
    .await
}

/// Which workflows a server offers.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowInfo {
    /// The name to start it by.
    pub name: String,
    /// Its version.
    pub version: u32,
    /// The SHA-256 of its definition (as runs pin it): a client can tell whether its copy of
    /// the file is the one the server runs.
    pub hash: String,
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
            .current()
            .all()
            .map(|p| WorkflowInfo {
                name: p.def().name.clone(),
                version: p.def().version,
                hash: p.hash().to_owned(),
                description: p.def().description.clone(),
                inputs: p.def().inputs.clone(),
                steps: plan_view(p, None),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `STATUSES` copies `RunStatus::name`; the type's schema names every status.
    #[test]
    fn the_status_filter_knows_every_status_a_run_is_listed_in() {
        let schema = serde_json::to_value(schemars::schema_for!(RunStatus)).unwrap();
        let names: Vec<&str> = schema["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["properties"]["status"]["const"].as_str())
            // Only while a run is being created: never listed.
            .filter(|s| *s != "created")
            .collect();
        assert_eq!(names, STATUSES);
    }

    #[test]
    fn cursors_read_back_as_written() {
        let run: RunId = "run_01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
        let at = Bound {
            score: 1_700_000_000_000_000,
            id: Some(run.to_string()),
        };
        assert_eq!(Bound::parse_cursor(&at.cursor()), Some(at.clone()));
        let legacy = Bound::parse_cursor("1700000000000000").unwrap();
        assert_eq!(legacy.id, None);
        for bad in ["", "0", "-5", "12.nope", "x.run_01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
            assert_eq!(Bound::parse_cursor(bad), None, "{bad}");
        }
        // Below `at`: older runs, and runs of the same microsecond with a smaller id.
        assert!(at.admits(&(at.score - 1, "run_ZZ".into())));
        assert!(at.admits(&(at.score, "run_00".into())));
        assert!(!at.admits(&(at.score, run.to_string())));
        assert!(!at.admits(&(at.score + 1, "run_00".into())));
    }
}
