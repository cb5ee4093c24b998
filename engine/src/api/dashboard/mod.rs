//! The technicians' dashboard: server-rendered HTML pages at `/`, on `steward serve`'s listener.
//!
//! - **Same authorization as `/v1`.** A page or an action calls the very `/v1` handler
//!   function (`runs::list`, `runs::cancel`, `approvals::decide`, …) with the [`Caller`] the
//!   session stands for, and renders what it answers; so the company scoping, the roles, the
//!   validation and the error messages are the API's, not a copy.
//! - **Sessions** ([`session`]): an API token, or a one-time login link
//!   (`steward technicians login-link EMAIL`), is exchanged for the `stw_session` cookie
//!   (HttpOnly, SameSite=Strict, Secure when `http.public-url` is HTTPS); every form carries the
//!   session's CSRF token, checked before anything is done; the sign-in forms use a
//!   double-submitted one.
//! - **Live updates**: the run list, a run's page and the inbox hold a region that the page's
//!   script refreshes from a server-sent event stream (`/live/…`, `text/event-stream`), which
//!   renders the region again every second and sends it when it changed.
//! - **Assets**: one CSS file and one small script, embedded in the binary; no build step. Every
//!   page sends a Content-Security-Policy that allows only them (no inline script or style).

mod approvals;
mod companies;
mod graph;
pub(crate) mod html;
mod runs;
pub mod session;

use std::collections::HashMap;

use aide::axum::ApiRouter;
use aide::axum::routing::{delete_with, post_with};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use steward_schemas::{TechnicianId, Timestamp, TokenId, TokenInfo};

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiPath, Caller};
use html::E;
pub use session::{Session, Sessions};

/// The session cookie.
const SESSION_COOKIE: &str = "stw_session";
/// The sign-in forms' double-submitted CSRF cookie.
const LOGIN_COOKIE: &str = "stw_login";
/// The form field every post carries its CSRF token in.
const CSRF_FIELD: &str = "_csrf";

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The dashboard's pages, actions, live streams and assets.
pub(crate) fn routes() -> axum::Router<ApiState> {
    axum::Router::new()
        .route("/", get(runs::list_page))
        .route("/runs/{run}", get(runs::run_page))
        .route("/runs/{run}/cancel", post(runs::cancel))
        .route("/runs/{run}/pause", post(runs::pause))
        .route("/runs/{run}/resume", post(runs::resume))
        .route("/runs/{run}/steps/{step}/retry", post(runs::retry_step))
        .route("/runs/{run}/steps/{step}/skip", post(runs::skip_step))
        .route(
            "/runs/{run}/steps/{step}/retry-undo",
            post(runs::retry_undo),
        )
        .route(
            "/runs/{run}/steps/{step}/resolve-undo",
            post(runs::resolve_undo),
        )
        .route("/approvals", get(approvals::inbox_page))
        .route("/approvals/{run}/{step}", post(approvals::decide))
        .route("/companies", get(companies::list_page))
        .route("/companies/import", post(companies::import))
        .route("/companies/{id}", get(companies::company_page))
        .route("/live/runs", get(runs::live_list))
        .route("/live/runs/{run}", get(runs::live_run))
        .route("/live/approvals", get(approvals::live_inbox))
        .route("/login", get(login_page).post(login_with_token))
        .route("/login/{code}", get(link_page).post(login_with_link))
        .route("/logout", post(logout))
        .route("/assets/app.css", get(css))
        .route("/assets/app.js", get(js))
        .layer(axum::middleware::from_fn(headers))
}

/// The `/v1` routes the dashboard adds: login links and ending sessions (admins).
pub(crate) fn api_routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/technicians/{id}/login-link",
            post_with(login_link, |o| {
                o.summary(
                    "a one-time link that signs the technician in to the dashboard (15 minutes)",
                )
                .tag("technicians")
            }),
        )
        .api_route(
            "/v1/technicians/{id}/sessions",
            delete_with(end_sessions, |o| {
                o.summary("sign the technician out of every dashboard session")
                    .tag("technicians")
            }),
        )
}

/// Security headers on every dashboard response: only our own script and style run, nothing
/// frames the pages, no page is cached, and no address (a login link) leaks as a referrer.
async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
}

/// A cookie's value in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure over HTTPS.
fn set_cookie(state: &ApiState, name: &str, value: &str, path: &str, max_age: u64) -> String {
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// A page's address to come back to after signing in: a local path only.
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.to_owned(),
        _ => "/".to_owned(),
    }
}

/// The signed-in technician: their session and the [`Caller`] it stands for, exactly what the
/// `/v1` handlers take.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub caller: Caller,
    pub session: Session,
    pub sid: String,
}

impl Viewer {
    /// The session's CSRF token, for forms.
    pub(crate) fn csrf(&self) -> &str {
        &self.session.csrf
    }

    /// The technician's email.
    pub(crate) fn email(&self) -> &str {
        &self.caller.tech.email
    }
}

/// Why there is no viewer.
#[derive(Debug)]
pub(crate) enum NoViewer {
    /// No session cookie.
    Missing,
    /// The session ended: expired, signed out, revoked, or its technician disabled.
    Ended,
    /// Redis failed.
    Failed(ApiError),
}

/// The technician a session cookie stands for, checked as the API checks a token: the
/// technician exists and is enabled, and the token the session came from is not revoked.
pub(crate) async fn viewer(state: &ApiState, headers: &HeaderMap) -> Result<Viewer, NoViewer> {
    let sid = cookie(headers, SESSION_COOKIE).ok_or(NoViewer::Missing)?;
    let sessions = Sessions::for_store(&state.store);
    let session = sessions
        .get(sid)
        .await
        .map_err(|e| NoViewer::Failed(e.into()))?
        .ok_or(NoViewer::Ended)?;
    let tech = state
        .auth
        .technician(session.technician)
        .await
        .map_err(|e| NoViewer::Failed(e.into()))?;
    let Some(tech) = tech.filter(|t| !t.disabled) else {
        let _ = sessions.end(sid).await;
        return Err(NoViewer::Ended);
    };
    let token = match session.token {
        Some(id) => {
            let record = state
                .auth
                .token(id)
                .await
                .map_err(|e| NoViewer::Failed(e.into()))?;
            match record {
                Some(r) if r.info().revoked_at.is_none() => r.info().clone(),
                _ => {
                    let _ = sessions.end(sid).await;
                    return Err(NoViewer::Ended);
                }
            }
        }
        // A login link's session has no token; it stands in for one (nothing reads its id).
        None => TokenInfo {
            id: TokenId::from_ulid(ulid::Ulid::nil()),
            technician: tech.id,
            name: "dashboard session (login link)".to_owned(),
            created_at: session.created_at,
            revoked_at: None,
        },
    };
    Ok(Viewer {
        caller: Caller { tech, token },
        session,
        sid: sid.to_owned(),
    })
}

fn sign_in_again(parts: &Parts, why: NoViewer) -> Response {
    match why {
        NoViewer::Failed(e) => PageError(e).into_response(),
        why => {
            let next = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let ended = matches!(why, NoViewer::Ended);
            if parts.method == axum::http::Method::GET && !next.starts_with("/live/") {
                Redirect::to(&format!(
                    "/login?next={}{}",
                    html::q(&next),
                    if ended { "&ended=1" } else { "" }
                ))
                .into_response()
            } else {
                PageError(
                    ApiError::unauthorized(if ended {
                        "your session has ended (it expired, or was signed out or revoked)"
                    } else {
                        "you are not signed in"
                    })
                    .with_fix("sign in again at /login"),
                )
                .into_response()
            }
        }
    }
}

impl FromRequestParts<ApiState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        viewer(state, &parts.headers)
            .await
            .map_err(|why| sign_in_again(parts, why))
    }
}

/// A posted form from a signed-in technician whose CSRF token matched their session's.
#[derive(Debug)]
pub(crate) struct Posted {
    pub viewer: Viewer,
    pub fields: HashMap<String, String>,
}

impl Posted {
    /// A field, trimmed; `None` when absent or blank.
    pub(crate) fn field(&self, name: &str) -> Option<String> {
        self.fields
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// The fields of a form body (`application/x-www-form-urlencoded`), at most 64 KiB.
async fn form_fields(req: Request) -> Result<HashMap<String, String>, ApiError> {
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    let bytes = super::extract::read_limited(req, 64 * 1024).await?;
    if !is_form && !bytes.is_empty() {
        return Err(ApiError::unsupported_media(
            "application/x-www-form-urlencoded",
        ));
    }
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

fn csrf_refused() -> ApiError {
    ApiError::forbidden(
        "the form's security token is missing or does not match your session (CSRF protection); nothing was done",
    )
    .with_field(CSRF_FIELD)
    .with_fix("reload the page and submit the form again")
}

impl FromRequest<ApiState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &ApiState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, state).await?;
        let fields = form_fields(Request::from_parts(parts, body))
            .await
            .map_err(|e| PageError(e).into_response())?;
        let sent = fields.get(CSRF_FIELD).map_or("", String::as_str);
        if !session::same_secret(sent, viewer.csrf()) {
            return Err(PageError(csrf_refused()).into_response());
        }
        Ok(Self { viewer, fields })
    }
}

/// An error as a page: the API's message, the field at fault and the fix, with its status.
#[derive(Debug)]
pub(crate) struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let d = self.0.detail();
        let status = self.0.status();
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>{}</h1><p class=\"error\" role=\"alert\" data-code=\"{}\">{}</p>",
            E(status.canonical_reason().unwrap_or("Error")),
            E(d.code),
            E(&d.message)
        );
        if let Some(f) = &d.field {
            let _ = write!(body, "<p>Field: <code>{}</code></p>", E(f));
        }
        if let Some(f) = &d.fix {
            let _ = write!(body, "<p>To fix: {}</p>", E(f));
        }
        if let Some(details) = &d.details {
            body.push_str(&problems_table(details));
        }
        body.push_str("<p><a href=\"/\">Back to the runs</a></p>");
        let page = layout(
            &format!("{} — Steward", status.canonical_reason().unwrap_or("Error")),
            None,
            "",
            &body,
        );
        let mut res = (status, Html(page)).into_response();
        // The logging middleware reads it from here, as for the API's errors.
        res.extensions_mut().insert(self.0);
        res
    }
}

/// An error's details (the rows and columns of a CSV import, the fields of a company) as a
/// table: each item's fields as columns.
pub(crate) fn problems_table(details: &serde_json::Value) -> String {
    let Some(items) = details.as_array().filter(|a| !a.is_empty()) else {
        return html::json_block(details);
    };
    let mut columns: Vec<String> = Vec::new();
    for item in items {
        if let Some(obj) = item.as_object() {
            for k in obj.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let mut h = String::from(
        "<div class=\"scroll\"><table class=\"problems\"><caption>Problems</caption><thead><tr>",
    );
    for c in &columns {
        let _ = write!(h, "<th scope=\"col\">{}</th>", E(c));
    }
    h.push_str("</tr></thead><tbody>");
    for item in items {
        h.push_str("<tr>");
        for c in &columns {
            let cell = match item.get(c) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            let _ = write!(h, "<td>{}</td>", E(&cell));
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    h
}

/// A whole page: the header with the navigation and who is signed in, and `main`.
pub(crate) fn layout(title: &str, viewer: Option<&Viewer>, current: &str, main: &str) -> String {
    let mut h = String::with_capacity(main.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title>\
         <link rel=\"stylesheet\" href=\"/assets/app.css\"><script src=\"/assets/app.js\" defer></script></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to the content</a><header class=\"top\"><span class=\"brand\">Steward</span>",
        E(title)
    );
    if let Some(v) = viewer {
        h.push_str("<nav aria-label=\"Main\"><ul>");
        for (href, name, key) in [
            ("/", "Runs", "runs"),
            ("/approvals", "Approvals", "approvals"),
            ("/companies", "Companies", "companies"),
        ] {
            let _ = write!(
                h,
                "<li><a href=\"{href}\"{}>{name}</a></li>",
                if key == current {
                    " aria-current=\"page\""
                } else {
                    ""
                }
            );
        }
        let _ = write!(
            h,
            "</ul></nav><div class=\"who\"><span>{} ({})</span>\
             <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">\
             <button type=\"submit\" class=\"link\">Sign out</button></form></div>",
            E(v.email()),
            E(match v.caller.tech.role {
                steward_schemas::Role::Admin => "admin",
                steward_schemas::Role::Technician => "technician",
            }),
            E(v.csrf())
        );
    }
    let _ = write!(h, "</header><main id=\"main\">{main}</main></body></html>");
    h
}

/// The hidden CSRF field of a form.
pub(crate) fn csrf_input(v: &Viewer) -> String {
    format!(
        "<input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{}\">",
        E(v.csrf())
    )
}

/// A time as the pages show it (`2026-11-03 14:05:09 UTC`), in a `<time>` element.
pub(crate) fn time(t: Timestamp) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        E(&t.to_string()),
        E(&steward_core::words::time(t))
    )
}

/// A redirect after a post (303: the browser GETs the page).
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

// ---- signing in and out ----

#[derive(Debug, Deserialize)]
struct LoginQuery {
    next: Option<String>,
    ended: Option<String>,
}

fn login_form(
    state: &ApiState,
    status: StatusCode,
    next: &str,
    message: Option<(&str, bool)>,
) -> Response {
    let pre = session::random_secret();
    let mut body = String::from("<h1>Sign in to Steward</h1>");
    if let Some((m, is_error)) = message {
        let _ = write!(
            body,
            "<p class=\"{}\" role=\"{}\">{}</p>",
            if is_error { "error" } else { "note" },
            if is_error { "alert" } else { "status" },
            E(m)
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/login\" class=\"card narrow\">\
         <input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{pre}\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label for=\"token\">API token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required placeholder=\"stw_…\">\
         <p class=\"hint\">Or open a login link from an admin (<code>steward technicians login-link EMAIL</code>).</p>\
         <button type=\"submit\">Sign in</button></form>",
        E(next)
    );
    (
        status,
        [(
            header::SET_COOKIE,
            set_cookie(state, LOGIN_COOKIE, &pre, "/login", 900),
        )],
        Html(layout("Sign in — Steward", None, "", &body)),
    )
        .into_response()
}

async fn login_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    q: Result<axum::extract::Query<LoginQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = q.map(|q| q.0).unwrap_or(LoginQuery {
        next: None,
        ended: None,
    });
    let next = local_path(q.next.as_deref());
    if viewer(&state, &headers).await.is_ok() {
        return see_other(&next);
    }
    let message = q.ended.is_some().then_some((
        "Your session has ended (it expired, or was signed out or revoked). Sign in again.",
        false,
    ));
    login_form(&state, StatusCode::OK, &next, message)
}

/// The sign-in forms' double-submitted token: the form's field equals the cookie.
fn login_csrf_ok(headers: &HeaderMap, fields: &HashMap<String, String>) -> bool {
    match (cookie(headers, LOGIN_COOKIE), fields.get(CSRF_FIELD)) {
        (Some(c), Some(f)) => session::same_secret(c, f),
        _ => false,
    }
}

/// Starts a session: the cookie, and off to `next`.
async fn start_session(
    state: &ApiState,
    technician: TechnicianId,
    token: Option<TokenId>,
    next: &str,
) -> Response {
    match Sessions::for_store(&state.store)
        .create(technician, token)
        .await
    {
        Ok((sid, _)) => {
            let mut res = see_other(next);
            let h = res.headers_mut();
            for c in [
                set_cookie(
                    state,
                    SESSION_COOKIE,
                    &sid,
                    "/",
                    session::SESSION_TTL.as_secs(),
                ),
                set_cookie(state, LOGIN_COOKIE, "", "/login", 0),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    h.append(header::SET_COOKIE, v);
                }
            }
            res
        }
        Err(e) => PageError(e.into()).into_response(),
    }
}

async fn login_with_token(State(state): State<ApiState>, req: Request) -> Response {
    let headers = req.headers().clone();
    let fields = match form_fields(req).await {
        Ok(f) => f,
        Err(e) => return PageError(e).into_response(),
    };
    let next = local_path(fields.get("next").map(String::as_str));
    if !login_csrf_ok(&headers, &fields) {
        return PageError(csrf_refused()).into_response();
    }
    let token = fields.get("token").map_or("", |t| t.trim());
    if token.is_empty() {
        return login_form(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            &next,
            Some(("token: enter your API token (stw_…)", true)),
        );
    }
    // The API's own check of a token.
    match state.auth.authenticate(token).await {
        Ok((tech, info)) => start_session(&state, tech.id, Some(info.id), &next).await,
        Err(crate::auth::Error::Unauthenticated(why)) => login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            &next,
            Some((&format!("That token does not sign you in: {why}."), true)),
        ),
        Err(e) => PageError(e.into()).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct CodePath {
    code: String,
}

fn link_used() -> ApiError {
    ApiError::gone("this login link was used already, or it expired (links last 15 minutes)")
        .with_fix("ask an admin for a new one: steward technicians login-link EMAIL")
}

/// A login link shows a button; following the link changes nothing (mail scanners open links).
async fn link_page(
    State(state): State<ApiState>,
    axum::extract::Path(p): axum::extract::Path<CodePath>,
) -> Response {
    match Sessions::for_store(&state.store)
        .login_code_valid(&p.code)
        .await
    {
        Ok(true) => {}
        Ok(false) => return PageError(link_used()).into_response(),
        Err(e) => return PageError(e.into()).into_response(),
    }
    let pre = session::random_secret();
    let body = format!(
        "<h1>Sign in to Steward</h1><form method=\"post\" class=\"card narrow\">\
         <input type=\"hidden\" name=\"{CSRF_FIELD}\" value=\"{pre}\">\
         <p>This one-time link signs you in to the dashboard.</p>\
         <button type=\"submit\">Sign in</button></form>"
    );
    (
        [(
            header::SET_COOKIE,
            set_cookie(&state, LOGIN_COOKIE, &pre, "/login", 900),
        )],
        Html(layout("Sign in — Steward", None, "", &body)),
    )
        .into_response()
}

async fn login_with_link(
    State(state): State<ApiState>,
    axum::extract::Path(p): axum::extract::Path<CodePath>,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    let fields = match form_fields(req).await {
        Ok(f) => f,
        Err(e) => return PageError(e).into_response(),
    };
    if !login_csrf_ok(&headers, &fields) {
        return PageError(csrf_refused()).into_response();
    }
    let tech = match Sessions::for_store(&state.store)
        .take_login_code(&p.code)
        .await
    {
        Ok(Some(t)) => t,
        Ok(None) => return PageError(link_used()).into_response(),
        Err(e) => return PageError(e.into()).into_response(),
    };
    match state.auth.technician(tech).await {
        Ok(Some(t)) if !t.disabled => start_session(&state, t.id, None, "/").await,
        Ok(_) => PageError(ApiError::unauthorized(
            "the link's technician no longer exists or is disabled",
        ))
        .into_response(),
        Err(e) => PageError(e.into()).into_response(),
    }
}

async fn logout(State(state): State<ApiState>, posted: Posted) -> Response {
    if let Err(e) = Sessions::for_store(&state.store)
        .end(&posted.viewer.sid)
        .await
    {
        return PageError(e.into()).into_response();
    }
    let mut res = see_other("/login");
    if let Ok(v) = HeaderValue::from_str(&set_cookie(&state, SESSION_COOKIE, "", "/", 0)) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

// ---- the /v1 routes for sessions ----

#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct TechPath {
    /// The technician.
    id: TechnicianId,
}

/// A one-time login link.
#[derive(Debug, Serialize, JsonSchema)]
pub struct LoginLink {
    /// Whom it signs in.
    pub email: String,
    /// The link (`<http.public-url>/login/<code>`): give it to them only.
    pub url: String,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// Makes a one-time dashboard login link for a technician (admins).
async fn login_link(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<TechPath>,
) -> ApiResult<super::Created<LoginLink>> {
    let tech = state
        .auth
        .technician(p.id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no technician `{}`", p.id)))?;
    if tech.disabled {
        return Err(ApiError::conflict(format!(
            "{} is disabled; enable them first",
            tech.email
        )));
    }
    let (code, expires_at) = Sessions::for_store(&state.store)
        .login_code(tech.id)
        .await?;
    Ok(super::Created(LoginLink {
        email: tech.email,
        url: format!("{}/login/{code}", state.public_url.trim_end_matches('/')),
        expires_at,
    }))
}

/// How many sessions were ended.
#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionsEnded {
    /// Sessions ended.
    pub ended: u64,
}

/// Signs a technician out of every dashboard session (admins).
async fn end_sessions(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<TechPath>,
) -> ApiResult<axum::Json<SessionsEnded>> {
    if state.auth.technician(p.id).await?.is_none() {
        return Err(ApiError::not_found(format!("no technician `{}`", p.id)));
    }
    let ended = Sessions::for_store(&state.store).end_all(p.id).await?;
    Ok(axum::Json(SessionsEnded { ended }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(local_path(Some("/runs/x?a=1")), "/runs/x?a=1");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", ""] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x_stw_session=no; stw_session=yes; other=1"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("yes"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
    }
}
