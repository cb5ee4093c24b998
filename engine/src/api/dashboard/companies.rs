//! Companies: the list, and a company's settings, tenant connection (with Microsoft's 90-day
//! window), schedules and the admins' inbox notices; CSV import (admins) with its row and column
//! errors in a table. Every read is the `/v1` handler's.

use std::fmt::Write as _;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;

use super::html::{E, e, json_block};
use super::runs::error_note;
use super::{PageError, Posted, Viewer, csrf_input, layout, problems_table, time};
use crate::api::ApiState;
use crate::api::error::ApiError;
use crate::api::extract::{Admin, ApiPath};

/// A JSON object's fields as a definition list (nested values as JSON).
fn fields(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return json_block(v);
    };
    let mut h = String::from("<dl class=\"facts\">");
    for (k, v) in obj {
        let value = match v {
            Value::String(s) => E(s).to_string(),
            Value::Null => "—".to_owned(),
            Value::Bool(_) | Value::Number(_) => E(&v.to_string()).to_string(),
            other => json_block(other),
        };
        let _ = write!(h, "<dt>{}</dt><dd>{value}</dd>", E(&k.replace('_', " ")));
    }
    h.push_str("</dl>");
    h
}

/// `/companies`.
pub(super) async fn list_page(State(state): State<ApiState>, viewer: Viewer) -> Response {
    let list = match crate::api::companies::list(State(state.clone()), viewer.caller.clone()).await
    {
        Ok(l) => l.0,
        Err(err) => return PageError(err).into_response(),
    };
    let mut h = String::from("<h1>Companies</h1>");
    if list.is_empty() {
        h.push_str("<p class=\"empty\">No company you may act on.</p>");
    } else {
        h.push_str("<div class=\"scroll\"><table class=\"companies\"><thead><tr><th scope=\"col\">Company</th><th scope=\"col\">Name</th><th scope=\"col\">Identity</th><th scope=\"col\">Mailboxes</th><th scope=\"col\">Changed</th></tr></thead><tbody>");
        for c in &list {
            let v = serde_json::to_value(&c.company).unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td><a href=\"/companies/{id}\">{id}</a></td><td>{name}</td><td>{idp}</td><td>{mbx}</td><td>{at}</td></tr>",
                id = e(&c.company.id),
                name = E(&c.company.name),
                idp = E(v["identity_provider"].as_str().unwrap_or("")),
                mbx = E(v["mailbox_provider"].as_str().unwrap_or("")),
                at = time(c.updated_at),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    if viewer.caller.require_admin().is_ok() {
        let _ = write!(
            h,
            "<section aria-labelledby=\"h-import\"><h2 id=\"h-import\">Import from CSV</h2>\
             <form method=\"post\" action=\"/companies/import\" class=\"card\">{}\
             <label for=\"csv\">CSV (columns as in <code>steward companies import --help</code>); nothing is imported unless every row is valid</label>\
             <textarea id=\"csv\" name=\"csv\" rows=\"6\" required></textarea>\
             <button type=\"submit\">Import</button></form></section>",
            csrf_input(&viewer)
        );
    }
    Html(layout(
        "Companies — Steward",
        Some(&viewer),
        "companies",
        &h,
    ))
    .into_response()
}

/// `POST /companies/import`: the API's import; its errors by row and column in a table.
pub(super) async fn import(State(state): State<ApiState>, posted: Posted) -> Response {
    let viewer = posted.viewer.clone();
    let csv = posted.fields.get("csv").cloned().unwrap_or_default();
    let result = async {
        // The same check the `Admin` extractor makes.
        viewer.caller.require_admin()?;
        crate::api::companies::import(
            State(state.clone()),
            Admin(viewer.caller.clone()),
            crate::api::companies::CsvBody(axum::body::Bytes::from(csv.into_bytes())),
        )
        .await
    }
    .await;
    let mut h = String::from("<h1>Import from CSV</h1>");
    let status = match result {
        Ok(report) => {
            let v = serde_json::to_value(&report.0).unwrap_or_default();
            let _ = write!(
                h,
                "<p class=\"note\" role=\"status\">Imported: {} created, {} updated, {} unchanged.</p>{}",
                v["created"].as_array().map_or(0, Vec::len),
                v["updated"].as_array().map_or(0, Vec::len),
                v["unchanged"].as_array().map_or(0, Vec::len),
                fields(&v)
            );
            axum::http::StatusCode::OK
        }
        Err(err) => {
            h.push_str(&error_note(&err));
            if let Some(d) = &err.detail().details {
                h.push_str(&problems_table(d));
            }
            err.status()
        }
    };
    h.push_str("<p><a href=\"/companies\">Back to the companies</a></p>");
    (
        status,
        Html(layout("Import — Steward", Some(&viewer), "companies", &h)),
    )
        .into_response()
}

/// `/companies/{id}`.
pub(super) async fn company_page(
    State(state): State<ApiState>,
    viewer: Viewer,
    path: Result<ApiPath<crate::api::companies::CompanyPath>, ApiError>,
) -> Response {
    let path = match path {
        Ok(p) => p,
        Err(err) => return PageError(err).into_response(),
    };
    let record =
        match crate::api::companies::get(State(state.clone()), viewer.caller.clone(), path).await {
            Ok(r) => r.0,
            Err(err) => return PageError(err).into_response(),
        };
    let id = record.company.id.clone();
    let mut h = format!(
        "<h1>{} <code>{}</code></h1><p class=\"hint\">Version {} · changed {}</p>",
        E(&record.company.name),
        e(&id),
        record.version,
        time(record.updated_at)
    );
    // Tenant connection.
    h.push_str(
        "<section aria-labelledby=\"h-tenant\"><h2 id=\"h-tenant\">Microsoft 365 tenant</h2>",
    );
    match crate::api::tenants::list(State(state.clone()), viewer.caller.clone()).await {
        Ok(list) => match list.0.iter().find(|t| t.company == id) {
            Some(t) => {
                let _ = write!(
                    h,
                    "<p class=\"status\" data-status=\"{st}\"><span class=\"badge s-{st}\">{st}</span> {text}</p><dl class=\"facts\">\
                     <dt>Tenant</dt><dd>{tenant}</dd><dt>Last refresh</dt><dd>{last}</dd><dt>Next refresh</dt><dd>{next}</dd>\
                     <dt>90-day window closes</dt><dd>{window}</dd><dt>Connected</dt><dd>{at} by {by}</dd></dl>",
                    st = E(&serde_json::to_value(t.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()),
                    text = E(&t.status_text),
                    tenant = E(&t.tenant),
                    last = t.last_refresh.map_or("never".to_owned(), time),
                    next = t.next_refresh.map_or("—".to_owned(), time),
                    window = t.window_closes.map_or("—".to_owned(), time),
                    at = time(t.connected_at),
                    by = E(&t.connected_by),
                );
                if let Some(err) = &t.last_error {
                    let _ = write!(
                        h,
                        "<p class=\"error\">Last refresh error: {}</p>",
                        E(&serde_json::to_string(err).unwrap_or_default())
                    );
                }
            }
            None => h.push_str("<p>Not connected.</p>"),
        },
        Err(err) if err.status() == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            h.push_str("<p>Tenant connections are not set up on this server.</p>");
        }
        Err(err) => h.push_str(&error_note(&err)),
    }
    h.push_str("</section>");
    // Settings.
    let settings = serde_json::to_value(&record.company).unwrap_or_default();
    let _ = write!(
        h,
        "<section aria-labelledby=\"h-settings\"><h2 id=\"h-settings\">Settings</h2>{}</section>",
        fields(&settings)
    );
    // Notices of the admins' inbox for this company.
    h.push_str("<section aria-labelledby=\"h-inbox\"><h2 id=\"h-inbox\">Notices</h2>");
    match crate::api::inbox::list(State(state.clone()), viewer.caller.clone()).await {
        Ok(items) => {
            let mine: Vec<_> = items.0.iter().filter(|i| i.company == id).collect();
            if mine.is_empty() {
                h.push_str("<p class=\"empty\">No notices.</p>");
            } else {
                h.push_str("<ul>");
                for i in mine {
                    let _ = write!(
                        h,
                        "<li>{} — <strong>{}</strong>: {} <span class=\"sub\">To fix: {}</span></li>",
                        time(i.at),
                        E(&i.kind),
                        E(&i.message),
                        E(&i.fix)
                    );
                }
                h.push_str("</ul>");
            }
        }
        Err(err) => h.push_str(&error_note(&err)),
    }
    h.push_str("</section>");
    // Schedules (admins see them; the API allows only admins).
    if viewer.caller.require_admin().is_ok() {
        h.push_str(
            "<section aria-labelledby=\"h-schedules\"><h2 id=\"h-schedules\">Schedules</h2>",
        );
        match crate::api::schedules::list(State(state.clone()), Admin(viewer.caller.clone())).await
        {
            Ok(list) => {
                let mine: Vec<Value> = list
                    .0
                    .iter()
                    .filter_map(|s| serde_json::to_value(s).ok())
                    .filter(|v| {
                        // This company's, and those for every company (the token refresh).
                        let target = v["schedule"]["target"].to_string();
                        target.contains(&format!("\"{id}\"")) || !target.contains("company")
                    })
                    .collect();
                if mine.is_empty() {
                    h.push_str("<p class=\"empty\">No schedules.</p>");
                } else {
                    for s in &mine {
                        h.push_str(&fields(s));
                    }
                }
            }
            Err(err) => h.push_str(&error_note(&err)),
        }
        h.push_str("</section>");
    }
    Html(layout(
        &format!("{} — Steward", record.company.name),
        Some(&viewer),
        "companies",
        &h,
    ))
    .into_response()
}
