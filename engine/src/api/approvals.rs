//! Approval gates: the inbox, what an approver sees, decisions, and signed one-time links.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use steward_core::Plan;
use steward_core::machine::RunScope;
use steward_schemas::{
    AdminFallback, Company, Decision, Event, RunDoc, RunId, StepId, StepState, TicketRef,
    Timestamp, UnavailableApprover,
};
use tracing::warn;

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::extract::{ApiJson, ApiPath, Caller};
use super::runs::RunSummary;
use crate::links::{LinkClaim, LinkError};
use crate::store::RunSnapshot;

/// A gate as its approvers see it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GateView {
    /// The run.
    pub run: RunId,
    /// The gate (a step of the run).
    pub gate: StepId,
    /// `run_…/step`: what `steward approve` takes.
    pub reference: String,
    /// The workflow's name.
    pub workflow: String,
    /// The company's id.
    pub company: String,
    /// The company's name.
    pub company_name: String,
    /// The company's custom instructions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub custom_instructions: String,
    /// The ticket the run works on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
    /// Who asked for the run (they cannot approve it).
    pub requested_by: String,
    /// What the approvers are asked.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The gate's state: `awaiting_approval`, `succeeded` (approved), `failed` (rejected or
    /// expired), …
    pub state: String,
    /// Who may decide now.
    pub approvers: Vec<String>,
    /// How many yes votes it needs.
    pub quorum: u32,
    /// The yes votes so far.
    pub approvals: Vec<Decision>,
    /// 0: first approvers; 1: escalated.
    pub stage: u8,
    /// Whether the gate went to the MSP's admins because nobody it named could decide (its
    /// `approvers`, or its escalation targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_admins: Option<AdminFallback>,
    /// The people it named who could not decide when it opened (not technicians, or disabled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<UnavailableApprover>,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    /// Everything the gate unlocks.
    pub unlocks: Vec<UnlockedStep>,
}

/// A step a gate unlocks, as an approver sees it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UnlockedStep {
    /// The step.
    pub step: StepId,
    /// Its op.
    pub op: String,
    /// What the op does.
    pub summary: String,
    /// What it acts on (`graph`, `exchange_online`, `rmm`, `steward`; several joined by `, `).
    pub system: String,
    /// For the RMM, the machines it acts on (`-` when none).
    pub host: String,
    /// Its routed actions in a sentence (`ad.new_user on FAB-RUNNER01 (direct), then …`).
    pub route: String,
    /// Its routed actions, in order: the same plan `steward plan` shows.
    pub actions: Vec<super::plans::RoutedAction>,
    /// Something the approver should know about the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it cannot be routed for this company (the run will fail at this step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Its key parameters (secrets hidden; references not yet known shown as written).
    pub params: Value,
}

fn company_of(doc: &RunDoc) -> Option<Company> {
    serde_json::from_value(Value::Object(doc.ctx.company_settings.clone())).ok()
}

/// The distinct values of `items` joined by `, `, or `none`.
fn dedup_join(items: &[&str], none: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for i in items {
        if !seen.contains(i) {
            seen.push(i);
        }
    }
    if seen.is_empty() {
        none.to_owned()
    } else {
        seen.join(", ")
    }
}

/// Builds what approvers see of gate `step` of a run.
pub(crate) fn gate_view(
    state: &ApiState,
    doc: &RunDoc,
    plan: &Plan,
    step: &StepId,
) -> ApiResult<GateView> {
    let i = plan.index_of(step.as_str()).ok_or_else(|| {
        ApiError::not_found(format!("run `{}` has no step `{step}`", doc.ctx.run_id))
    })?;
    let gate = plan
        .step(i)
        .gate
        .clone()
        .ok_or_else(|| ApiError::not_found(format!("step `{step}` is not an approval gate")))?;
    let rec = &doc.state.steps[step];
    let (mut to_admins, mut unavailable) = (None, Vec::new());
    let (approvers, quorum, approvals, stage, expires_at) = match &rec.state {
        StepState::AwaitingApproval {
            approvers,
            quorum,
            approvals,
            stage,
            expires_at,
            to_admins: fallback,
            unavailable: missing,
            ..
        } => {
            (to_admins, unavailable) = (*fallback, missing.clone());
            (
                approvers.clone(),
                *quorum,
                approvals.clone(),
                *stage,
                *expires_at,
            )
        }
        StepState::Succeeded { output, .. } => (
            Vec::new(),
            gate.quorum,
            serde_json::from_value(output["approvals"].clone()).unwrap_or_default(),
            0,
            None,
        ),
        _ => (Vec::new(), gate.quorum, Vec::new(), 0, None),
    };
    let company = company_of(doc);
    let scope = RunScope {
        ctx: &doc.ctx,
        state: &doc.state,
    };
    let catalog: &dyn steward_core::plan::Catalog = state.registry.as_ref();
    let unlocks = plan
        .descendants(i)
        .map(|d| {
            let s = plan.step(d);
            let Some(company) = company.as_ref() else {
                return UnlockedStep {
                    step: s.id.clone(),
                    op: s.op.clone(),
                    summary: plan.step_description(d, Some(&scope)),
                    system: "unknown".to_owned(),
                    host: "(company settings unavailable)".to_owned(),
                    route: String::new(),
                    actions: Vec::new(),
                    note: None,
                    problem: Some("the run's company settings cannot be read".to_owned()),
                    params: Value::Null,
                };
            };
            let view = steward_core::routing::describe_step(plan, d, company, &scope, catalog);
            let systems: Vec<&str> = view.actions.iter().map(|a| a.system.as_str()).collect();
            let hosts: Vec<&str> = view
                .actions
                .iter()
                .filter_map(|a| a.host.as_deref())
                .collect();
            UnlockedStep {
                step: s.id.clone(),
                op: view.op.clone(),
                summary: if view.summary.is_empty() {
                    plan.step_description(d, Some(&scope))
                } else {
                    view.summary.clone()
                },
                system: dedup_join(&systems, "steward"),
                host: dedup_join(&hosts, "-"),
                route: super::plans::route_sentence(&view.actions),
                actions: view.actions.into_iter().map(Into::into).collect(),
                note: view.note,
                problem: view.problem,
                params: view.params,
            }
        })
        .collect();
    Ok(GateView {
        run: doc.ctx.run_id,
        gate: step.clone(),
        reference: format!("{}/{step}", doc.ctx.run_id),
        workflow: doc.ctx.workflow.name.clone(),
        company: doc.ctx.company.to_string(),
        company_name: company
            .as_ref()
            .map_or_else(|| doc.ctx.company.to_string(), |c| c.name.clone()),
        custom_instructions: company.map(|c| c.custom_instructions).unwrap_or_default(),
        ticket: doc.ctx.ticket.clone(),
        requested_by: doc.ctx.requested_by.clone(),
        message: plan.gate_message(i, Some(&scope)),
        state: rec.state.name().to_owned(),
        approvers,
        quorum,
        approvals,
        stage,
        to_admins,
        unavailable,
        expires_at,
        unlocks,
    })
}

/// The caller's inbox.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Inbox {
    /// Open gates the caller may decide, oldest first.
    pub approvals: Vec<GateView>,
}

/// The gates waiting for the caller's decision.
pub(super) async fn inbox(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<axum::Json<Inbox>> {
    let keys = state.store.keys();
    let mut pipe = redis::pipe();
    for shard in keys.all_shards() {
        pipe.cmd("ZRANGE")
            .arg(keys.inbox(shard, &caller.tech.email))
            .arg(0)
            .arg(499)
            .arg("WITHSCORES");
    }
    let pages: Vec<Vec<(String, i64)>> = state.store.db().pipe(&pipe).await?;
    let mut entries: Vec<(i64, RunId, StepId)> = pages
        .into_iter()
        .flatten()
        .filter_map(|(m, score)| {
            let (run, step) = m.split_once('|')?;
            Some((score, run.parse().ok()?, step.parse().ok()?))
        })
        .collect();
    entries.sort_by_key(|e| e.0);
    entries.truncate(500);
    let docs = super::runs::load_many(&state, entries.iter().map(|(_, run, _)| *run)).await?;
    let mut approvals = Vec::new();
    for ((_, _, step), doc) in entries.iter().zip(docs) {
        let Some(doc) = doc else {
            continue;
        };
        // A run whose definition Redis lost is left out of the inbox (its own page says why)
        // rather than failing everyone's inbox.
        let plan = match state.store.plan(&doc.ctx.workflow.hash).await {
            Ok(plan) => plan,
            Err(crate::store::Error::NoSuchDefinition(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(view) = gate_view(&state, &doc, &plan, step) else {
            continue;
        };
        if view.state == "awaiting_approval" && view.approvers.contains(&caller.tech.email) {
            approvals.push(view);
        }
    }
    Ok(axum::Json(Inbox { approvals }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct GatePath {
    /// The run.
    run: RunId,
    /// The gate.
    step: StepId,
}

/// May the caller see this gate: an approver of it, or someone with the company.
fn may_view(caller: &Caller, doc: &RunDoc, view: &GateView) -> ApiResult<()> {
    may_see(caller, doc, &view.approvers)
}

/// An approver of the gate, or someone who may act on the run's company; anyone else learns
/// nothing about the gate: not who its approvers are, nor the run's company (its id or name).
fn may_see(caller: &Caller, doc: &RunDoc, approvers: &[String]) -> ApiResult<()> {
    if approvers.contains(&caller.tech.email) || caller.may_access(&doc.ctx.company) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} may not see or decide this gate: they are not one of its approvers and may not act on the run's company",
            caller.tech.email
        )))
    }
}

/// Who may decide gate `step` now, from the run's state (nobody when it is not waiting).
fn current_approvers(doc: &RunDoc, step: &StepId) -> Vec<String> {
    match doc.state.steps.get(step).map(|r| &r.state) {
        Some(StepState::AwaitingApproval { approvers, .. }) => approvers.clone(),
        _ => Vec::new(),
    }
}

/// A run and its plan; 404 if there is no such run.
async fn load_run(state: &ApiState, run: RunId) -> ApiResult<(RunSnapshot, Arc<Plan>)> {
    let snap = state
        .store
        .load(run)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{run}`")))?;
    let plan = state.store.plan(&snap.doc.ctx.workflow.hash).await?;
    Ok((snap, plan))
}

/// A gate: everything it unlocks, the company's instructions, the ticket, the decisions so far.
pub(super) async fn get_gate(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<GatePath>,
) -> ApiResult<axum::Json<GateView>> {
    let (snap, plan) = load_run(&state, p.run).await?;
    // Access first: someone who may not see the gate learns nothing of the run's steps either.
    if !caller.may_access(&snap.doc.ctx.company) {
        may_see(&caller, &snap.doc, &current_approvers(&snap.doc, &p.step))?;
    }
    let view = gate_view(&state, &snap.doc, &plan, &p.step)?;
    may_view(&caller, &snap.doc, &view)?;
    Ok(axum::Json(view))
}

/// A decision.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// `approve` or `reject`.
    pub decision: DecisionKind,
    /// Why (shown in the run's history and to the requester).
    #[serde(default)]
    pub comment: Option<String>,
}

/// Approve or reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Yes.
    Approve,
    /// No: the run ends and what it did before the gate is undone.
    Reject,
}

impl DecisionKind {
    /// The decision an `approve` flag (of a link, of an event) stands for.
    pub fn of(approve: bool) -> Self {
        if approve { Self::Approve } else { Self::Reject }
    }

    /// Whether it approves.
    pub fn approves(self) -> bool {
        self == Self::Approve
    }

    fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// What a decision did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct DecisionResult {
    /// The gate now.
    pub gate: GateView,
    /// The run now.
    pub run: RunSummary,
}

/// Records a decision on gate `step` of the run in `snap`, once per approver, and runs the
/// transition that follows it (dispatching what the gate unlocks, or rolling the run back) in the
/// same atomic step; the run's document after it. `channel` (`api`, `link`) labels the metric;
/// `via` is recorded with the decision.
///
/// An error means nothing was recorded (unless Redis lost the reply of the write itself).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn decide_as(
    state: &ApiState,
    snap: RunSnapshot,
    plan: &Plan,
    step: &StepId,
    by: &str,
    decision: DecisionKind,
    comment: Option<String>,
    channel: &'static str,
    via: String,
) -> ApiResult<RunDoc> {
    if comment.as_ref().is_some_and(|c| c.chars().count() > 2000) {
        return Err(ApiError::invalid(
            "comment",
            "longer than 2000 characters",
            "shorten it",
        ));
    }
    let view = gate_view(state, &snap.doc, plan, step)?;
    if view.state != "awaiting_approval" {
        return Err(ApiError::conflict(format!(
            "gate `{step}` is not waiting for a decision (it is {})",
            view.state
        )));
    }
    let by = steward_core::machine::may_decide(
        step.as_str(),
        &view.approvers,
        &snap.doc.ctx.requested_by,
        by,
    )
    .map_err(ApiError::forbidden)?;
    let event = Event::ApprovalDecided {
        step: step.clone(),
        by,
        approve: decision.approves(),
        comment,
        via,
    };
    let doc = super::runs::apply_event(state, snap, &event).await?;
    state.metrics.count(
        "steward_decisions_total",
        &[("via", channel), ("decision", decision.name())],
    );
    Ok(doc)
}

fn decision_result(
    state: &ApiState,
    doc: &RunDoc,
    plan: &Plan,
    step: &StepId,
) -> ApiResult<DecisionResult> {
    Ok(DecisionResult {
        gate: gate_view(state, doc, plan, step)?,
        run: RunSummary::of(doc),
    })
}

/// Approves or rejects a gate as the caller.
pub(super) async fn decide(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<GatePath>,
    ApiJson(b): ApiJson<DecisionBody>,
) -> ApiResult<axum::Json<DecisionResult>> {
    let (snap, plan) = load_run(&state, p.run).await?;
    may_see(&caller, &snap.doc, &current_approvers(&snap.doc, &p.step))?;
    let doc = decide_as(
        &state,
        snap,
        &plan,
        &p.step,
        &caller.tech.email,
        b.decision,
        b.comment,
        "api",
        "api".to_owned(),
    )
    .await?;
    Ok(axum::Json(decision_result(&state, &doc, &plan, &p.step)?))
}

/// Which links to make.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    /// The approver they are for (default: the caller). Only admins make links for others.
    #[serde(default)]
    pub approver: Option<String>,
    /// How long they work (default: until the gate expires, at most 7 days; e.g. `24h`).
    #[serde(default)]
    pub expires_in: Option<steward_schemas::Dur>,
}

/// One-time links for an approver: one approves, one rejects.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Links {
    /// The approver.
    pub approver: String,
    /// Opens the plan; its button approves.
    pub approve_url: String,
    /// Opens the plan; its button rejects.
    pub reject_url: String,
    /// When they stop working.
    pub expires_at: Timestamp,
}

/// Makes signed one-time approve and reject links for an approver of a gate (to put in an email,
/// a Teams message or a ticket note).
pub(super) async fn make_links(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<GatePath>,
    ApiJson(b): ApiJson<LinkRequest>,
) -> ApiResult<axum::Json<Links>> {
    let approver = b
        .approver
        .as_deref()
        .map_or_else(|| caller.tech.email.clone(), |a| a.trim().to_lowercase());
    let for_someone_else = approver != caller.tech.email;
    if for_someone_else {
        caller.require_admin()?;
    }
    let (snap, plan) = load_run(&state, p.run).await?;
    if !caller.may_access(&snap.doc.ctx.company) {
        may_see(&caller, &snap.doc, &current_approvers(&snap.doc, &p.step))?;
    }
    let view = gate_view(&state, &snap.doc, &plan, &p.step)?;
    may_view(&caller, &snap.doc, &view)?;
    // Whoever asked for the run cannot approve it, nor hand someone else's vote to themself.
    if for_someone_else && caller.tech.email == snap.doc.ctx.requested_by.trim().to_lowercase() {
        return Err(ApiError::forbidden(format!(
            "{} asked for this run and cannot make links to decide it; another admin must",
            caller.tech.email
        )));
    }
    if view.state != "awaiting_approval" {
        return Err(ApiError::conflict(format!(
            "gate `{}` is not waiting for a decision (it is {})",
            p.step, view.state
        )));
    }
    if !view.approvers.contains(&approver) {
        return Err(ApiError::invalid(
            "approver",
            format!("{approver} is not an approver of this gate"),
            format!("use one of: {}", view.approvers.join(", ")),
        ));
    }
    let now = state.store.clock().now();
    let max = now.plus(Duration::from_secs(7 * 86_400));
    let mut expires_at = match b.expires_in {
        Some(d) if d.get().is_zero() => {
            return Err(ApiError::invalid(
                "expires_in",
                "zero",
                "give a positive duration such as `24h`",
            ));
        }
        Some(d) => now.plus(d.get()),
        None => view
            .expires_at
            .unwrap_or(now.plus(Duration::from_secs(86_400))),
    };
    if expires_at > max {
        expires_at = max;
    }
    let exp = expires_at.as_micros() / 1_000_000;
    let make = |approve: bool| {
        state.signer.sign(&LinkClaim {
            run: p.run,
            step: p.step.clone(),
            approver: approver.clone(),
            approve,
            exp,
            nonce: crate::links::LinkSigner::nonce(),
            issued_by: Some(caller.tech.email.clone()),
        })
    };
    let base = state.public_url.trim_end_matches('/');
    Ok(axum::Json(Links {
        approver: approver.clone(),
        approve_url: format!("{base}/v1/links/{}", make(true)),
        reject_url: format!("{base}/v1/links/{}", make(false)),
        expires_at: Timestamp::from_micros(exp * 1_000_000),
    }))
}

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct LinkPath {
    /// The link's token.
    token: String,
}

/// What a link shows or did.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LinkView {
    /// `approve` or `reject`: what the link records.
    pub decision: DecisionKind,
    /// Who it is for.
    pub approver: String,
    /// The gate.
    pub gate: GateView,
    /// Whether the decision has been recorded (after POST).
    pub recorded: bool,
}

/// A link's claim, its run and plan, and its gate; refused if the link is not genuine, has
/// expired, or its approver has been disabled since it was made.
async fn check_link(
    state: &ApiState,
    token: &str,
) -> ApiResult<(LinkClaim, RunSnapshot, Arc<Plan>, GateView)> {
    let claim = state
        .signer
        .verify(token, state.store.clock().now())
        .map_err(|e| match e {
            LinkError::Malformed => ApiError::bad_request(e.to_string()),
            LinkError::Forged => ApiError::forbidden(e.to_string()),
            LinkError::Expired => ApiError::gone(e.to_string()),
        })?;
    if let Some(tech) = state.auth.technician_by_email(&claim.approver).await?
        && tech.disabled
    {
        return Err(ApiError::forbidden(format!(
            "{} is disabled, and so are the approval links made for them",
            claim.approver
        )));
    }
    let snap = state
        .store
        .load(claim.run)
        .await?
        .ok_or_else(|| ApiError::gone("the link's run no longer exists"))?;
    let plan = state.store.plan(&snap.doc.ctx.workflow.hash).await?;
    let view = gate_view(state, &snap.doc, &plan, &claim.step)
        .map_err(|_| ApiError::forbidden("this link does not belong to a gate of that run"))?;
    Ok((claim, snap, plan, view))
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn link_response(headers: &HeaderMap, view: LinkView) -> Response {
    if wants_html(headers) {
        return Html(super::html::link_page(&view)).into_response();
    }
    axum::Json(view).into_response()
}

/// Shows what a link would record, without recording it (mail scanners open links). The page's
/// button records it.
pub(super) async fn open_link(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(p): ApiPath<LinkPath>,
) -> Result<Response, ApiError> {
    let (claim, _, _, gate) = check_link(&state, &p.token).await?;
    if state.auth.nonce_used(&claim.nonce).await? {
        return Err(ApiError::gone("this link has already been used"));
    }
    let view = LinkView {
        decision: DecisionKind::of(claim.approve),
        approver: claim.approver,
        gate,
        recorded: false,
    };
    Ok(link_response(&headers, view))
}

/// Records a link's decision, once.
pub(super) async fn use_link(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiPath(p): ApiPath<LinkPath>,
) -> Result<Response, ApiError> {
    let (claim, snap, plan, view) = check_link(&state, &p.token).await?;
    // A used link says so, whatever became of the gate since (consuming it below is what
    // makes its single use atomic).
    if state.auth.nonce_used(&claim.nonce).await? {
        return Err(ApiError::gone("this link has already been used"));
    }
    if view.state != "awaiting_approval" {
        return Err(ApiError::conflict(format!(
            "this gate is no longer waiting for a decision (it is {})",
            view.state
        )));
    }
    if !view.approvers.contains(&claim.approver) {
        return Err(ApiError::forbidden(format!(
            "{} is no longer an approver of this gate",
            claim.approver
        )));
    }
    let ttl = u64::try_from(claim.exp - state.store.clock().now().as_micros() / 1_000_000)
        .unwrap_or(1)
        + 60;
    if !state.auth.consume_nonce(&claim.nonce, ttl).await? {
        return Err(ApiError::gone("this link has already been used"));
    }
    let decided = decide_as(
        &state,
        snap,
        &plan,
        &claim.step,
        &claim.approver,
        DecisionKind::of(claim.approve),
        None,
        "link",
        claim.via(),
    )
    .await;
    let doc = match decided {
        Ok(doc) => doc,
        Err(e) => {
            // Nothing was recorded, so the link has not been used: it may be tried again.
            if let Err(release) = state.auth.release_nonce(&claim.nonce).await {
                warn!(error = %release, "an approval link whose decision was not recorded stays used");
            }
            return Err(e);
        }
    };
    let view = LinkView {
        decision: DecisionKind::of(claim.approve),
        approver: claim.approver,
        gate: gate_view(&state, &doc, &plan, &claim.step)?,
        recorded: true,
    };
    Ok(link_response(&headers, view))
}
