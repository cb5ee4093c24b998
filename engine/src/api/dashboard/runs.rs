//! The runs list, a run's page (graph, why it waits, actions, steps, rollback records,
//! timeline), the run actions, and their live streams. Every read and every action is the
//! `/v1` handler's.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use steward_core::words;
use steward_schemas::{RunAction, RunStatus, StepState, Timestamp};

use super::html::{E, class_token, e, json_block, q, seg};
use super::{PageError, Posted, Viewer, layout, see_other, time};
use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath, ApiQuery};
use crate::api::runs::{
    self as api_runs, CancelBody, ListRuns, ReasonBody, ResolveUndoBody, RunSummary, RunView,
};

/// How often a live region is rendered again to see whether it changed.
const LIVE_EVERY: Duration = Duration::from_millis(700);

/// The runs list's filters, as the form sends them (blank means no filter).
#[derive(Debug, Default, Clone, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    company: String,
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    person: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

fn blank(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// A `datetime-local` value (`2026-12-06T09:30`, read as UTC) or an RFC 3339 time.
fn parse_time(field: &str, text: &str) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = blank(text) else {
        return Ok(None);
    };
    let full = match text.len() {
        16 => format!("{text}:00Z"),
        19 => format!("{text}Z"),
        _ => text.to_owned(),
    };
    full.parse().map(Some).map_err(|_| {
        ApiError::invalid(
            field,
            format!("`{text}` is not a date and time"),
            "pick one, e.g. 2026-12-06T09:30 (UTC)",
        )
    })
}

impl Filters {
    fn query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("company", &self.company),
            ("workflow", &self.workflow),
            ("status", &self.status),
            ("person", &self.person),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = blank(v) {
                parts.push(format!("{k}={}", q(v)));
            }
        }
        parts.join("&")
    }

    /// The API's filters (the person is matched here: the API has no such filter).
    fn api(&self) -> Result<ListRuns, ApiError> {
        Ok(ListRuns {
            company: blank(&self.company)
                .map(|c| {
                    c.parse().map_err(|e| {
                        ApiError::invalid("company", format!("{e}"), "pick a company from the list")
                    })
                })
                .transpose()?,
            workflow: blank(&self.workflow).map(str::to_owned),
            status: blank(&self.status).map(str::to_owned),
            since: parse_time("since", &self.since)?,
            until: parse_time("until", &self.until)?,
            limit: Some(if blank(&self.person).is_some() {
                500
            } else {
                100
            }),
            cursor: None,
        })
    }
}

/// The newest runs matching the filters, as the API lists them for the viewer, and whether
/// there are older ones.
async fn matching(
    state: &ApiState,
    viewer: &Viewer,
    f: &Filters,
) -> Result<(Vec<RunSummary>, bool), ApiError> {
    let page = api_runs::list(
        State(state.clone()),
        viewer.caller.clone(),
        ApiQuery(f.api()?),
    )
    .await?
    .0;
    let person = blank(&f.person).map(str::to_lowercase);
    let more = page.next_cursor.is_some();
    Ok((
        page.runs
            .into_iter()
            .filter(|r| {
                person
                    .as_ref()
                    .is_none_or(|p| r.requested_by.to_lowercase().contains(p))
            })
            .collect(),
        more,
    ))
}

/// A run's status as a badge: its name in words, coloured.
pub(super) fn badge(status: &str) -> String {
    format!(
        "<span class=\"badge s-{}\">{}</span>",
        class_token(status),
        E(&status.replace('_', " "))
    )
}

/// The live part of the list: the table, or the API's refusal.
async fn list_fragment(state: &ApiState, viewer: &Viewer, f: &Filters) -> String {
    let (runs, more) = match matching(state, viewer, f).await {
        Ok(r) => r,
        Err(err) => return error_note(&err),
    };
    if runs.is_empty() {
        return "<p class=\"empty\">No runs match.</p>".to_owned();
    }
    let mut h = String::from(
        "<div class=\"scroll\"><table class=\"runs\"><caption class=\"sr-only\">Runs, newest first</caption><thead><tr>\
         <th scope=\"col\">Run</th><th scope=\"col\">Status</th><th scope=\"col\">Workflow</th><th scope=\"col\">Company</th>\
         <th scope=\"col\">Requested by</th><th scope=\"col\">Ticket</th><th scope=\"col\">Created</th></tr></thead><tbody>",
    );
    for r in &runs {
        let _ = write!(
            h,
            "<tr data-run=\"{id}\" data-status=\"{st}\"><td><a href=\"/runs/{id}\">{id}</a></td><td>{badge}<span class=\"sub\">{text}</span></td>\
             <td>{wf} v{v}</td><td>{co}</td><td>{by}</td><td>{ticket}</td><td>{at}</td></tr>",
            id = e(&r.run),
            st = E(&r.status),
            badge = badge(&r.status),
            text = E(&r.status_text),
            wf = E(&r.workflow),
            v = r.workflow_version,
            co = e(&r.company),
            by = E(&r.requested_by),
            ticket = r.ticket.as_ref().map_or(String::new(), |t| format!(
                "{} #{}: {}",
                E(&t.psa),
                E(&t.id),
                E(&t.title)
            )),
            at = time(r.created_at),
        );
    }
    h.push_str("</tbody></table></div>");
    if more {
        h.push_str("<p class=\"hint\">These are the newest matching runs; narrow the filters (the time ones) to see older ones.</p>");
    }
    h
}

/// An API refusal shown inside a page.
pub(super) fn error_note(err: &ApiError) -> String {
    let d = err.detail();
    let mut h = format!(
        "<div class=\"error\" role=\"alert\" data-code=\"{}\"><p>{}</p>",
        E(d.code),
        E(&d.message)
    );
    if let Some(f) = &d.field {
        let _ = write!(h, "<p>Field: <code>{}</code></p>", E(f));
    }
    if let Some(f) = &d.fix {
        let _ = write!(h, "<p>To fix: {}</p>", E(f));
    }
    h.push_str("</div>");
    h
}

fn select(id: &str, label: &str, current: &str, options: &[(String, String)]) -> String {
    let mut h = format!(
        "<div class=\"field\"><label for=\"f-{id}\">{label}</label><select id=\"f-{id}\" name=\"{id}\"><option value=\"\">any</option>"
    );
    for (value, text) in options {
        let _ = write!(
            h,
            "<option value=\"{}\"{}>{}</option>",
            E(value),
            if value == current { " selected" } else { "" },
            E(text)
        );
    }
    h.push_str("</select></div>");
    h
}

/// `/`: the runs the viewer may see, filtered, live.
pub(super) async fn list_page(
    State(state): State<ApiState>,
    viewer: Viewer,
    f: Result<ApiQuery<Filters>, ApiError>,
) -> Response {
    let f = match f {
        Ok(q) => q.0,
        Err(err) => return PageError(err).into_response(),
    };
    let companies: Vec<(String, String)> =
        match crate::api::companies::list(State(state.clone()), viewer.caller.clone()).await {
            Ok(list) => list
                .0
                .into_iter()
                .map(|c| (c.company.id.to_string(), c.company.name))
                .collect(),
            Err(err) => return PageError(err).into_response(),
        };
    let workflows: Vec<(String, String)> = state
        .workflows
        .current()
        .all()
        .map(|p| (p.def().name.clone(), p.def().name.clone()))
        .collect();
    let statuses: Vec<(String, String)> = api_runs::STATUSES
        .iter()
        .map(|s| ((*s).to_owned(), s.replace('_', " ")))
        .collect();
    let mut h = String::from(
        "<h1>Runs</h1><form method=\"get\" action=\"/\" class=\"filters\" aria-label=\"Filter the runs\">",
    );
    h.push_str(&select("company", "Company", &f.company, &companies));
    h.push_str(&select("workflow", "Workflow", &f.workflow, &workflows));
    h.push_str(&select("status", "Status", &f.status, &statuses));
    let _ = write!(
        h,
        "<div class=\"field\"><label for=\"f-person\">Requested by</label><input id=\"f-person\" name=\"person\" type=\"search\" value=\"{}\" placeholder=\"email\"></div>\
         <div class=\"field\"><label for=\"f-since\">Created from (UTC)</label><input id=\"f-since\" name=\"since\" type=\"datetime-local\" value=\"{}\"></div>\
         <div class=\"field\"><label for=\"f-until\">Created before (UTC)</label><input id=\"f-until\" name=\"until\" type=\"datetime-local\" value=\"{}\"></div>\
         <div class=\"field buttons\"><button type=\"submit\">Filter</button> <a href=\"/\">Clear</a></div></form>",
        E(&f.person),
        E(&f.since),
        E(&f.until)
    );
    let query = f.query();
    let _ = write!(
        h,
        "<div id=\"live\" data-live=\"/live/runs{}{}\" aria-live=\"polite\">{}</div>",
        if query.is_empty() { "" } else { "?" },
        E(&query),
        list_fragment(&state, &viewer, &f).await
    );
    Html(layout("Runs — Steward", Some(&viewer), "runs", &h)).into_response()
}

/// A stream that sends `first` at once, then `render()` whenever it changes, until the session
/// ends.
pub(super) fn live<F, Fut>(
    state: ApiState,
    headers: axum::http::HeaderMap,
    first: String,
    render: F,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>>
where
    F: Fn(ApiState, Viewer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let render = std::sync::Arc::new(render);
    // The first event is the region as of the stream's start, sent at once: the page may have
    // been rendered before a change the stream would otherwise take as its starting point.
    let start = (None::<String>, false, Some(first));
    let stream = futures::stream::unfold(start, move |(last, ended, first)| {
        let (state, headers, render) = (state.clone(), headers.clone(), render.clone());
        async move {
            if ended {
                return None;
            }
            if let Some(first) = first {
                return Some((
                    Ok(SseEvent::default().event("update").data(first.clone())),
                    (Some(first), false, None),
                ));
            }
            loop {
                tokio::time::sleep(LIVE_EVERY).await;
                // The session is checked on every round: one that ended stops the stream.
                let Ok(viewer) = super::viewer(&state, &headers).await else {
                    return Some((
                        Ok(SseEvent::default().event("ended").data("signed out")),
                        (None, true, None),
                    ));
                };
                let now = render(state.clone(), viewer).await;
                if last.as_deref() != Some(now.as_str()) {
                    return Some((
                        Ok(SseEvent::default().event("update").data(now.clone())),
                        (Some(now), false, None),
                    ));
                }
            }
        }
    });
    // A comment every 5 s: a closed page is noticed (the write fails) within that, so its
    // stream stops rendering.
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(5)))
}

/// The list's live stream.
pub(super) async fn live_list(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    viewer: Viewer,
    f: Result<ApiQuery<Filters>, ApiError>,
) -> Response {
    let f = match f {
        Ok(q) => q.0,
        Err(err) => return PageError(err).into_response(),
    };
    let first = list_fragment(&state, &viewer, &f).await;
    live(state, headers, first, move |state, viewer| {
        let f = f.clone();
        async move { list_fragment(&state, &viewer, &f).await }
    })
    .into_response()
}

// ---- a run ----

/// Why a step that is not moving waits, in words; `None` for a step that is moving or done.
fn why_waiting(
    view: &RunView,
    i: usize,
    me: &str,
    store_keys: &crate::keys::Keys,
) -> Option<String> {
    let plan = &view.plan[i];
    let rec = view.run.state.steps.get(&plan.step)?;
    let paused = match &view.run.state.status {
        RunStatus::Paused { .. } => Some(view.summary.status_text.clone()),
        _ => None,
    };
    let mut h = String::new();
    match &rec.state {
        StepState::Pending => {
            let waiting: Vec<String> = plan
                .needs
                .iter()
                .filter(|n| {
                    view.run
                        .state
                        .steps
                        .get(*n)
                        .is_some_and(|r| !r.state.is_settled())
                })
                .map(|n| format!("<code>{}</code>", E(n.as_str())))
                .collect();
            if waiting.is_empty() {
                return None;
            }
            let _ = write!(h, "waits for {} to finish", waiting.join(", "));
        }
        StepState::Ready { .. } => {
            let _ = write!(
                h,
                "ready; it is dispatched when the run runs again{}",
                paused
                    .as_ref()
                    .map_or(String::new(), |p| format!(" ({})", E(p)))
            );
        }
        StepState::AwaitingApproval {
            approvers,
            quorum,
            approvals,
            expires_at,
            escalation,
            ..
        } => {
            let left = quorum.saturating_sub(approvals.len() as u32);
            let _ = write!(
                h,
                "gate: waits for {left} more approval{} from {}",
                if left == 1 { "" } else { "s" },
                E(&approvers.join(", "))
            );
            if !approvals.is_empty() {
                let yes: Vec<String> = approvals.iter().map(|d| d.by.clone()).collect();
                let _ = write!(h, " (approved so far by {})", E(&yes.join(", ")));
            }
            if let Some(t) = expires_at {
                let _ = write!(
                    h,
                    "; it {} at {}",
                    if escalation.is_empty() {
                        "expires".to_owned()
                    } else {
                        format!("escalates to {}", E(&escalation.join(", ")))
                    },
                    time(*t)
                );
            }
            if approvers.iter().any(|a| a == me) {
                h.push_str(" — <a href=\"/approvals\">decide it in your inbox</a>");
            }
        }
        StepState::Queued { job, at } => {
            let _ = write!(
                h,
                "attempt {} is in the step queue <code>{}</code> (a run's first steps: <code>{}</code>) since {}; a worker takes it next",
                job.attempt,
                E(&store_keys.steps(store_keys.shard_of(view.summary.run))),
                E(&store_keys.new_steps(store_keys.shard_of(view.summary.run))),
                time(*at)
            );
        }
        StepState::Polling {
            next_check, note, ..
        } => {
            let _ = write!(
                h,
                "the op answered “not yet”; it is asked again at {}",
                time(*next_check)
            );
            if let Some(n) = note {
                let _ = write!(h, " (waiting for: {})", E(n));
            }
        }
        StepState::Retrying {
            next,
            not_before,
            error,
        } => {
            let _ = write!(
                h,
                "attempt {next} starts at {} (timer); the last attempt failed: {}",
                time(*not_before),
                E(&words::failure(error))
            );
            h.push_str(&consent_hint(error));
        }
        StepState::Failed { error, .. } => {
            let _ = write!(
                h,
                "failed for good: {}. It stays until someone retries or skips it (see the actions)",
                E(&words::failure(error))
            );
            h.push_str(&consent_hint(error));
        }
        StepState::Succeeded { .. } | StepState::Skipped { .. } | StepState::Cancelled { .. } => {
            return None;
        }
    }
    Some(h)
}

/// A hint when a failure says the tenant's consent is missing or expired.
fn consent_hint(error: &steward_schemas::StepFailure) -> String {
    let text = format!(
        "{} {}",
        error.message.to_lowercase(),
        error.code.as_deref().unwrap_or("").to_lowercase()
    );
    if text.contains("consent") || text.contains("invalid_grant") || text.contains("aadsts700082") {
        " — the tenant needs its admin to consent again: see the company's tenant connection under <a href=\"/companies\">Companies</a>".to_owned()
    } else {
        String::new()
    }
}

/// What an action will do, for its confirmation.
fn confirmation(view: &RunView, a: &RunAction) -> String {
    let run = view.summary.run;
    let changed: Vec<&str> = view
        .run
        .state
        .steps
        .iter()
        .filter(|(_, r)| matches!(r.state, StepState::Succeeded { .. }))
        .map(|(s, _)| s.as_str())
        .collect();
    match a {
        RunAction::CancelWithRollback => format!(
            "Cancel run {run} and undo what it changed ({})?",
            if changed.is_empty() {
                "no step has changed anything yet".to_owned()
            } else {
                format!("steps {}", changed.join(", "))
            }
        ),
        other => format!("{} ({run})?", capitalize(&words::action(other))),
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
}

/// The forms of the actions the run's state machine accepts now.
fn actions(view: &RunView, viewer: &Viewer) -> String {
    let run = view.summary.run;
    let mut h = String::new();
    for (n, a) in view.actions.iter().enumerate() {
        let act = &a.action;
        let confirm = confirmation(view, act);
        let (path, button, extra) = match act {
            RunAction::Cancel => (
                format!("/runs/{run}/cancel"),
                "Cancel run".to_owned(),
                text_input(n, "reason", "Reason (optional)", false),
            ),
            RunAction::CancelWithRollback => (
                format!("/runs/{run}/cancel"),
                "Cancel and roll back".to_owned(),
                format!(
                    "<input type=\"hidden\" name=\"rollback\" value=\"true\">{}",
                    text_input(n, "reason", "Reason (optional)", false)
                ),
            ),
            RunAction::Pause => (
                format!("/runs/{run}/pause"),
                "Pause".to_owned(),
                text_input(n, "reason", "Reason (optional)", false),
            ),
            RunAction::Resume => (
                format!("/runs/{run}/resume"),
                "Resume".to_owned(),
                String::new(),
            ),
            RunAction::RetryStep { step } => (
                format!("/runs/{run}/steps/{}/retry", seg(step.as_str())),
                format!("Retry {step}"),
                String::new(),
            ),
            RunAction::SkipStep { step } => (
                format!("/runs/{run}/steps/{}/skip", seg(step.as_str())),
                format!("Skip {step}"),
                text_input(n, "reason", "Reason (optional)", false),
            ),
            RunAction::RetryUndo { step } => (
                format!("/runs/{run}/steps/{}/retry-undo", seg(step.as_str())),
                format!("Retry the undo of {step}"),
                String::new(),
            ),
            RunAction::ResolveUndo { step } => (
                format!("/runs/{run}/steps/{}/resolve-undo", seg(step.as_str())),
                format!("Mark the undo of {step} done"),
                text_input(n, "comment", "What you did by hand", true),
            ),
            RunAction::Approve { step, by } | RunAction::Reject { step, by } => {
                if !by.iter().any(|b| b == viewer.email()) {
                    continue;
                }
                let approve = matches!(act, RunAction::Approve { .. });
                (
                    format!("/approvals/{run}/{}", seg(step.as_str())),
                    format!("{} {step}", if approve { "Approve" } else { "Reject" }),
                    format!(
                        "<input type=\"hidden\" name=\"decision\" value=\"{}\"><input type=\"hidden\" name=\"back\" value=\"run\">{}",
                        if approve { "approve" } else { "reject" },
                        text_input(n, "comment", "Comment (optional)", false)
                    ),
                )
            }
        };
        let _ = write!(
            h,
            "<form method=\"post\" action=\"{}\" class=\"action\" data-action=\"{}\" data-confirm=\"{}\">{}\
             <p class=\"what\">{}</p>{extra}<button type=\"submit\">{}</button></form>",
            E(&path),
            E(act.name()),
            E(&confirm),
            super::csrf_input(viewer),
            E(&capitalize(&a.text)),
            E(&button),
        );
    }
    if h.is_empty() {
        "<p>Nothing to do: the run takes no request now.</p>".to_owned()
    } else {
        h
    }
}

fn text_input(n: usize, name: &str, label: &str, required: bool) -> String {
    format!(
        "<label for=\"a{n}-{name}\">{label}</label><input id=\"a{n}-{name}\" name=\"{name}\" type=\"text\" maxlength=\"2000\"{}>",
        if required { " required" } else { "" }
    )
}

/// A step's attempt number, where its state says.
fn attempt_of(s: &StepState) -> Option<String> {
    match s {
        StepState::Queued { job, .. } | StepState::Polling { job, .. } => {
            Some(job.attempt.to_string())
        }
        StepState::Retrying { next, .. } => Some(format!("{next} (next)")),
        StepState::Succeeded { attempt, .. }
        | StepState::Failed { attempt, .. }
        | StepState::AwaitingApproval { attempt, .. } => Some(attempt.to_string()),
        _ => None,
    }
}

/// The live part of a run's page.
pub(super) fn run_fragment(view: &RunView, viewer: &Viewer, keys: &crate::keys::Keys) -> String {
    let s = &view.summary;
    let mut h = String::new();
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-status\"><h2 id=\"h-status\">Status</h2>\
         <p class=\"status\" data-status=\"{st}\">{badge} {text}</p><dl class=\"facts\">\
         <dt>Workflow</dt><dd>{wf} v{v}</dd><dt>Company</dt><dd><a href=\"/companies/{co}\">{co}</a></dd>\
         <dt>Requested by</dt><dd>{by}</dd><dt>Created</dt><dd>{created}</dd><dt>Last change</dt><dd>{updated}</dd>",
        st = E(&s.status),
        badge = badge(&s.status),
        text = E(&s.status_text),
        wf = E(&s.workflow),
        v = s.workflow_version,
        co = e(&s.company),
        by = E(&s.requested_by),
        created = time(s.created_at),
        updated = time(s.updated_at),
    );
    if let Some(t) = &s.ticket {
        let _ = write!(
            h,
            "<dt>Ticket</dt><dd>{} #{}: {}</dd>",
            E(&t.psa),
            E(&t.id),
            E(&t.title)
        );
    }
    h.push_str("</dl>");
    // The inputs, as the API shows them (secret ones hidden).
    if !view.run.ctx.inputs.is_empty() {
        h.push_str("<h3>Inputs</h3><dl class=\"facts inputs\">");
        for (k, v) in &view.run.ctx.inputs {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = write!(
                h,
                "<dt>{}</dt><dd data-input=\"{}\">{}</dd>",
                E(k),
                E(k),
                E(&text)
            );
        }
        h.push_str("</dl>");
    }
    h.push_str("</section>");
    if let Some(p) = &view.problem {
        let _ = write!(h, "<p class=\"error\" role=\"alert\">{}</p>", E(p));
    }
    let waits: Vec<String> = (0..view.plan.len())
        .filter_map(|i| {
            why_waiting(view, i, viewer.email(), keys).map(|w| {
                format!(
                    "<li data-step=\"{}\"><strong><code>{}</code></strong>: {w}</li>",
                    E(view.plan[i].step.as_str()),
                    E(view.plan[i].step.as_str())
                )
            })
        })
        .collect();
    if !waits.is_empty() {
        let _ = write!(
            h,
            "<section aria-labelledby=\"h-why\"><h2 id=\"h-why\">Why is this waiting</h2><ul class=\"why\">{}</ul></section>",
            waits.join("")
        );
    }
    // The graph.
    let index: std::collections::HashMap<&str, usize> = view
        .plan
        .iter()
        .enumerate()
        .map(|(i, p)| (p.step.as_str(), i))
        .collect();
    let nodes: Vec<super::graph::Node> = view
        .plan
        .iter()
        .map(|p| {
            let rec = view.run.state.steps.get(&p.step);
            super::graph::Node {
                id: p.step.to_string(),
                needs: p
                    .needs
                    .iter()
                    .filter_map(|n| index.get(n.as_str()).copied())
                    .collect(),
                state: rec.map_or("pending", |r| r.state.name()).to_owned(),
                undo: rec.and_then(|r| r.undo.as_ref().map(|u| u.name().to_owned())),
            }
        })
        .collect();
    if !nodes.is_empty() {
        let _ = write!(
            h,
            "<section aria-labelledby=\"h-graph\"><h2 id=\"h-graph\">Step graph</h2><div class=\"scroll graph-box\">{}</div></section>",
            super::graph::svg(&nodes, &format!("Steps of run {}", s.run))
        );
    }
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-actions\"><h2 id=\"h-actions\">Actions</h2><div class=\"actions\">{}</div></section>",
        actions(view, viewer)
    );
    // The steps, each with its attempts, errors and undo in its own part of the history.
    h.push_str("<section aria-labelledby=\"h-steps\"><h2 id=\"h-steps\">Steps</h2><div class=\"scroll\"><table class=\"steps\"><thead><tr>\
        <th scope=\"col\">Step</th><th scope=\"col\">Does</th><th scope=\"col\">State</th><th scope=\"col\">Attempt</th><th scope=\"col\">Undo</th><th scope=\"col\">Its history</th></tr></thead><tbody>");
    for p in &view.plan {
        let Some(sv) = view.steps.iter().find(|s| s.step == p.step) else {
            continue;
        };
        let rec = view.run.state.steps.get(&p.step);
        let id = p.step.as_str();
        let own: Vec<String> = view
            .history
            .iter()
            .filter(|e| {
                e.entry.changes.iter().any(|c| {
                    c.strip_prefix(id)
                        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(' '))
                })
            })
            .map(|e| format!("<li>{} — {}</li>", time(e.entry.at), E(&e.text)))
            .collect();
        let _ = write!(
            h,
            "<tr id=\"step-{anchor}\" data-step=\"{id}\" data-state=\"{st}\"><th scope=\"row\"><code>{id}</code><span class=\"sub\">{op}</span></th>\
             <td>{desc}</td><td>{badge}<span class=\"sub\">{text}</span></td><td>{attempt}</td><td>{undo}</td><td>{own}</td></tr>",
            anchor = class_token(id),
            id = E(id),
            st = E(&sv.state),
            op = E(&p.op),
            desc = E(&p.description),
            badge = badge(&sv.state),
            text = E(&sv.text),
            attempt = E(&rec.and_then(|r| attempt_of(&r.state)).unwrap_or_default()),
            undo = E(sv.undo_text.as_deref().unwrap_or("")),
            own = if own.is_empty() {
                String::new()
            } else {
                format!(
                    "<details><summary>{} event{}</summary><ol class=\"step-history\">{}</ol></details>",
                    own.len(),
                    if own.len() == 1 { "" } else { "s" },
                    own.join("")
                )
            },
        );
    }
    h.push_str("</tbody></table></div></section>");
    // Rollback records.
    let records: Vec<String> = view
        .run
        .state
        .steps
        .iter()
        .filter_map(|(id, r)| match &r.state {
            StepState::Succeeded { rollback, .. } => Some(format!(
                "<li><code>{}</code>{}</li>",
                E(id.as_str()),
                json_block(&serde_json::to_value(rollback).unwrap_or_default())
            )),
            _ => None,
        })
        .collect();
    if !records.is_empty() {
        let _ = write!(
            h,
            "<section aria-labelledby=\"h-rollback\"><h2 id=\"h-rollback\">Rollback records</h2><p class=\"hint\">What each step changed and how it is undone.</p><ul class=\"records\">{}</ul></section>",
            records.join("")
        );
    }
    // The timeline.
    h.push_str("<section aria-labelledby=\"h-timeline\"><h2 id=\"h-timeline\">Timeline</h2><ol class=\"timeline\">");
    for entry in &view.history {
        let _ = write!(h, "<li>{} — {}</li>", time(entry.entry.at), E(&entry.text));
    }
    h.push_str("</ol></section>");
    h
}

/// A run's view as the API answers the viewer.
async fn run_view(
    state: &ApiState,
    viewer: &Viewer,
    path: ApiPath<api_runs::RunPath>,
) -> Result<RunView, ApiError> {
    Ok(
        api_runs::get(State(state.clone()), viewer.caller.clone(), path)
            .await?
            .0,
    )
}

/// `/runs/{run}`.
pub(super) async fn run_page(
    State(state): State<ApiState>,
    viewer: Viewer,
    path: Result<ApiPath<api_runs::RunPath>, ApiError>,
) -> Response {
    let path = match path {
        Ok(p) => p,
        Err(err) => return PageError(err).into_response(),
    };
    let view = match run_view(&state, &viewer, path).await {
        Ok(v) => v,
        Err(err) => return PageError(err).into_response(),
    };
    let run = view.summary.run;
    let body = format!(
        "<h1>Run <code>{run}</code></h1><div id=\"live\" data-live=\"/live/runs/{run}\" aria-live=\"polite\">{}</div>",
        run_fragment(&view, &viewer, state.store.keys())
    );
    Html(layout(
        &format!(
            "{} for {} — Steward",
            view.summary.workflow, view.summary.company
        ),
        Some(&viewer),
        "runs",
        &body,
    ))
    .into_response()
}

/// A run's live stream.
pub(super) async fn live_run(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    viewer: Viewer,
    path: Result<ApiPath<api_runs::RunPath>, ApiError>,
) -> Response {
    let path = match path {
        Ok(p) => p,
        Err(err) => return PageError(err).into_response(),
    };
    let first = match run_view(&state, &viewer, path.clone()).await {
        Ok(v) => run_fragment(&v, &viewer, state.store.keys()),
        Err(err) => return PageError(err).into_response(),
    };
    live(state, headers, first, move |state, viewer| {
        let path = path.clone();
        async move {
            match run_view(&state, &viewer, path).await {
                Ok(v) => run_fragment(&v, &viewer, state.store.keys()),
                Err(err) => error_note(&err),
            }
        }
    })
    .into_response()
}

// ---- actions: each calls the /v1 handler and comes back to the run ----

fn done(result: Result<axum::Json<RunSummary>, ApiError>) -> Response {
    match result {
        Ok(s) => see_other(&format!("/runs/{}", s.0.run)),
        Err(err) => PageError(err).into_response(),
    }
}

macro_rules! path_or_page {
    ($p:expr) => {
        match $p {
            Ok(p) => p,
            Err(err) => return PageError(err).into_response(),
        }
    };
}

pub(super) async fn cancel(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::RunPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    let body = CancelBody {
        rollback: posted.field("rollback").as_deref() == Some("true"),
        reason: posted.field("reason"),
    };
    done(api_runs::cancel(State(state), posted.viewer.caller, path, ApiJson(body)).await)
}

pub(super) async fn pause(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::RunPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    let body = ReasonBody {
        reason: posted.field("reason"),
    };
    done(api_runs::pause(State(state), posted.viewer.caller, path, ApiJson(body)).await)
}

pub(super) async fn resume(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::RunPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    done(api_runs::resume(State(state), posted.viewer.caller, path).await)
}

pub(super) async fn retry_step(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::StepPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    done(api_runs::retry_step(State(state), posted.viewer.caller, path).await)
}

pub(super) async fn skip_step(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::StepPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    let body = ReasonBody {
        reason: posted.field("reason"),
    };
    done(api_runs::skip_step(State(state), posted.viewer.caller, path, ApiJson(body)).await)
}

pub(super) async fn retry_undo(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::StepPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    done(api_runs::retry_undo(State(state), posted.viewer.caller, path).await)
}

pub(super) async fn resolve_undo(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_runs::StepPath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = path_or_page!(path);
    let body = ResolveUndoBody {
        comment: posted.field("comment").unwrap_or_default(),
    };
    done(api_runs::resolve_undo(State(state), posted.viewer.caller, path, ApiJson(body)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_filters_read_the_date_pickers_value_as_utc() {
        assert_eq!(
            parse_time("since", "2026-12-06T09:30")
                .ok()
                .flatten()
                .map(|t| t.to_string()),
            Some("2026-12-06T09:30:00.000000Z".to_owned())
        );
        assert_eq!(parse_time("since", "  ").ok(), Some(None));
        let err = parse_time("until", "yesterday").expect_err("refused");
        assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.detail().field.as_deref(), Some("until"));
        let f = Filters {
            company: "contoso".to_owned(),
            person: "a b&c".to_owned(),
            ..Filters::default()
        };
        assert_eq!(f.query(), "company=contoso&person=a%20b%26c");
        assert_eq!(f.api().ok().and_then(|q| q.limit), Some(500));
    }
}
