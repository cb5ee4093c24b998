//! The approvals inbox: each open gate the viewer may decide, with the exact plan it unlocks,
//! the company's instructions and the ticket; decided from the page through the `/v1` handler.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};

use super::html::{E, e, json_block, seg};
use super::runs::{error_note, live};
use super::{PageError, Posted, Viewer, csrf_input, layout, see_other, time};
use crate::api::ApiState;
use crate::api::approvals::{self as api_approvals, DecisionBody, DecisionKind, GateView};
use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, ApiPath};

fn gate_card(g: &GateView, viewer: &Viewer, n: usize) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<article class=\"card gate\" data-run=\"{run}\" data-gate=\"{gate}\" aria-labelledby=\"g{n}\">\
         <h2 id=\"g{n}\"><code>{wf}</code> for {co}: gate <code>{gate}</code></h2>\
         <p><a href=\"/runs/{run}\">Run {run}</a> · requested by {by} · {have} of {quorum} approvals · approvers {approvers}",
        run = e(&g.run),
        gate = E(g.gate.as_str()),
        wf = E(&g.workflow),
        co = E(&g.company_name),
        by = E(&g.requested_by),
        have = g.approvals.len(),
        quorum = g.quorum,
        approvers = E(&g.approvers.join(", ")),
    );
    if let Some(t) = g.expires_at {
        let _ = write!(h, " · expires {}", time(t));
    }
    h.push_str("</p>");
    if !g.message.is_empty() {
        let _ = write!(h, "<p class=\"message\">{}</p>", E(&g.message));
    }
    if let Some(t) = &g.ticket {
        let _ = write!(
            h,
            "<p>Ticket {} #{}: {}</p>",
            E(&t.psa),
            E(&t.id),
            E(&t.title)
        );
    }
    if !g.custom_instructions.is_empty() {
        let _ = write!(
            h,
            "<h3>Company instructions</h3><p class=\"instructions\">{}</p>",
            E(&g.custom_instructions)
        );
    }
    h.push_str("<h3>What it unlocks</h3><div class=\"scroll\"><table class=\"unlocks\"><thead><tr><th scope=\"col\">Step</th><th scope=\"col\">Does</th><th scope=\"col\">System</th><th scope=\"col\">Host</th><th scope=\"col\">Values</th></tr></thead><tbody>");
    for u in &g.unlocks {
        let _ = write!(
            h,
            "<tr><th scope=\"row\"><code>{}</code><span class=\"sub\">{}</span></th><td>{}{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            E(u.step.as_str()),
            E(&u.op),
            E(&u.summary),
            u.note.as_ref().map_or(String::new(), |n| format!(
                "<span class=\"sub\">{}</span>",
                E(n)
            )),
            u.problem.as_ref().map_or(String::new(), |p| format!(
                "<span class=\"sub error\">{}</span>",
                E(p)
            )),
            E(&u.system),
            E(&u.host),
            json_block(&u.params)
        );
    }
    h.push_str("</tbody></table></div>");
    let what = format!(
        "gate {} of run {} ({} for {})",
        g.gate, g.run, g.workflow, g.company_name
    );
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/approvals/{run}/{gate}\" class=\"decide\">{csrf}\
         <label for=\"c{n}\">Comment (optional)</label><textarea id=\"c{n}\" name=\"comment\" maxlength=\"2000\" rows=\"2\"></textarea>\
         <div class=\"buttons\"><button type=\"submit\" name=\"decision\" value=\"approve\" data-confirm=\"{approve}\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"danger\" data-confirm=\"{reject}\">Reject</button></div></form></article>",
        run = e(&g.run),
        gate = E(&seg(g.gate.as_str())),
        csrf = csrf_input(viewer),
        approve = E(&format!(
            "Approve {what}? This unlocks {} step(s): {}.",
            g.unlocks.len(),
            g.unlocks
                .iter()
                .map(|u| u.summary.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )),
        reject = E(&format!(
            "Reject {what}? The run ends and what it did before the gate is undone."
        )),
    );
    h
}

async fn inbox_fragment(state: &ApiState, viewer: &Viewer) -> String {
    match api_approvals::inbox(State(state.clone()), viewer.caller.clone()).await {
        Ok(inbox) if inbox.0.approvals.is_empty() => {
            "<p class=\"empty\">Nothing waits for your decision.</p>".to_owned()
        }
        Ok(inbox) => inbox
            .0
            .approvals
            .iter()
            .enumerate()
            .map(|(n, g)| gate_card(g, viewer, n))
            .collect(),
        Err(err) => error_note(&err),
    }
}

/// `/approvals`.
pub(super) async fn inbox_page(State(state): State<ApiState>, viewer: Viewer) -> Response {
    let body = format!(
        "<h1>Approvals</h1><p class=\"hint\">Gates waiting for your decision, oldest first.</p><div id=\"live\" data-live=\"/live/approvals\" aria-live=\"polite\">{}</div>",
        inbox_fragment(&state, &viewer).await
    );
    Html(layout(
        "Approvals — Steward",
        Some(&viewer),
        "approvals",
        &body,
    ))
    .into_response()
}

/// The inbox's live stream.
pub(super) async fn live_inbox(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    viewer: Viewer,
) -> Response {
    let first = inbox_fragment(&state, &viewer).await;
    live(state, headers, first, |state, viewer| async move {
        inbox_fragment(&state, &viewer).await
    })
    .into_response()
}

/// Records a decision through `POST /v1/approvals/{run}/{step}`'s handler.
pub(super) async fn decide(
    State(state): State<ApiState>,
    path: Result<ApiPath<api_approvals::GatePath>, ApiError>,
    posted: Posted,
) -> Response {
    let path = match path {
        Ok(p) => p,
        Err(err) => return PageError(err).into_response(),
    };
    let decision = match posted.field("decision").as_deref() {
        Some("approve") => DecisionKind::Approve,
        Some("reject") => DecisionKind::Reject,
        _ => {
            return PageError(ApiError::invalid(
                "decision",
                "missing or not `approve` or `reject`",
                "press Approve or Reject",
            ))
            .into_response();
        }
    };
    let back_to_run = posted.field("back").as_deref() == Some("run");
    let body = DecisionBody {
        decision,
        comment: posted.field("comment"),
    };
    match api_approvals::decide(State(state), posted.viewer.caller, path, ApiJson(body)).await {
        Ok(r) if back_to_run => see_other(&format!("/runs/{}", r.0.run.run)),
        Ok(_) => see_other("/approvals"),
        Err(err) => PageError(err).into_response(),
    }
}
