//! One-time secret links for people (`/s/{token}`): a page that shows what the link is for and a
//! button; only the button (a `POST`) reveals the secret, once. Mail scanners and link previewers
//! fetch every link in a message, so opening the page (`GET`) never uses the link up — as with
//! approval links. Every answer is `no-store`, not indexed, sends no referrer, and never holds
//! the token or the value in a log line (requests are logged by route, `/s/{token}`).

use std::fmt::Write as _;

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use steward_schemas::Timestamp;
use tracing::warn;

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::html::escape;
use crate::secrets::links::{LinkInfo, LinkState, Revealed, SecretLinks};

/// The path of a secret link.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct SecretLinkPath {
    /// The link's token (`sl_…`).
    token: String,
}

/// The routes.
pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new().api_route(
        "/s/{token}",
        get_with(show, |o| {
            o.summary("a one-time secret link's page (reveals nothing, uses nothing up)")
                .tag("secrets")
        })
        .post_with(reveal, |o| {
            o.summary("reveal a one-time secret link's secret, once (HTML)")
                .tag("secrets")
        }),
    )
}

fn links(state: &ApiState) -> ApiResult<SecretLinks> {
    SecretLinks::for_store(&state.store).ok_or_else(|| {
        ApiError::unavailable("this server has no secrets key, so it keeps no secret links")
            .with_fix("configure secrets.key-dir and secrets.active-key (see deploy/steward.toml)")
    })
}

/// The page of a link: what it is for, and a button that reveals it. Changes nothing.
async fn show(
    State(state): State<ApiState>,
    ApiPath(p): ApiPath<SecretLinkPath>,
) -> ApiResult<Response> {
    let links = links(&state)?;
    Ok(match links.look(&p.token).await? {
        LinkState::Ready(info) => page(StatusCode::OK, "A secret for you", &ready_body(&info)),
        other => gone(&other),
    })
}

/// Reveals the link's secret, once; later it answers 410.
async fn reveal(
    State(state): State<ApiState>,
    ApiPath(p): ApiPath<SecretLinkPath>,
) -> ApiResult<Response> {
    let links = links(&state)?;
    match links.reveal(&p.token).await {
        Ok(Revealed::Value { secret, info }) => {
            let mut body = String::new();
            let _ = write!(
                body,
                "<p>{}</p><pre style=\"font-size:1.4em;padding:.6em;border:1px solid #999;user-select:all;white-space:pre-wrap;word-break:break-all\">{}</pre>\
                 <p>This is the only time it is shown: Steward has deleted it. Copy it now; reloading this page will not show it again.</p>",
                escape(&info.label),
                escape(secret.expose()),
            );
            Ok(page(StatusCode::OK, "Your secret", &body))
        }
        Ok(Revealed::Gone(state)) => Ok(gone(&state)),
        Err(crate::secrets::Error::Open(e)) => {
            // The link stays unused: a server with the right key can still reveal it.
            warn!(error = %e, "a secret link's value does not open");
            Err(ApiError::unavailable(
                "this server cannot open the secret behind this link right now; it is still there: try again later, or tell whoever sent you the link",
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn ready_body(info: &LinkInfo) -> String {
    format!(
        "<p>{}</p><p>The button below shows the secret once, then deletes it. Opening this page did not use it up. The link expires {}.</p>\
         <form method=\"post\"><button type=\"submit\" style=\"font-size:1.2em;padding:.4em 1em\">Show the secret</button></form>",
        escape(&info.label),
        when(info.expires_at),
    )
}

/// The answer for a link that shows nothing: 410 used or expired, 404 unknown.
fn gone(state: &LinkState) -> Response {
    match state {
        LinkState::Opened(info) => page(
            StatusCode::GONE,
            "This secret was already shown",
            &format!(
                "<p>{}</p><p>This link showed its secret {}. A secret link shows its secret once, so it shows nothing now.</p>\
                 <p>If it was not you who opened it, tell whoever sent you the link at once: they should change the secret.</p>",
                escape(&info.label),
                info.opened.map_or_else(|| "earlier".to_owned(), when),
            ),
        ),
        LinkState::Expired(info) => page(
            StatusCode::GONE,
            "This link has expired",
            &format!(
                "<p>{}</p><p>This link expired {} without being opened, and its secret was deleted. Ask whoever sent it for a new one.</p>",
                escape(&info.label),
                when(info.expires_at),
            ),
        ),
        LinkState::Ready(_) | LinkState::Unknown => page(
            StatusCode::NOT_FOUND,
            "This link is not valid",
            "<p>No secret is kept for this link. Check that you copied the whole link, or ask whoever sent it for a new one.</p>",
        ),
    }
}

fn when(t: Timestamp) -> String {
    format!(
        "on {}",
        escape(&t.to_datetime().format("%Y-%m-%d at %H:%M UTC").to_string())
    )
}

/// A page that no cache keeps, no search engine indexes, and no link on it leaks the address of.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex, nofollow\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:2em auto\"><h1>{t}</h1>{body}</body></html>",
        t = escape(title),
    );
    let mut res = (status, Html(html)).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    res
}

impl From<crate::secrets::Error> for ApiError {
    fn from(e: crate::secrets::Error) -> Self {
        match e {
            crate::secrets::Error::Redis(e) => e.into(),
            crate::secrets::Error::Invalid(m) => ApiError::bad_request(m),
            crate::secrets::Error::Open(e) => {
                ApiError::unavailable(format!("a stored secret does not open: {e}"))
            }
            crate::secrets::Error::Config(m) => ApiError::unavailable(m),
        }
    }
}
