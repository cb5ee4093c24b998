//! The HTTP API technicians use (`steward serve`): runs, approvals, companies, technicians.
//!
//! Versioned under `/v1`, JSON, one error shape (see [`error`]); the OpenAPI document is
//! generated from the handlers' types (`GET /v1/openapi.json`, checked in as
//! `schemas/openapi.json`).

pub mod approvals;
pub mod companies;
pub mod dashboard;
pub mod error;
pub mod extract;
pub(crate) mod hooks;
mod html;
mod inbox;
pub mod plans;
pub mod psa;
pub mod runner;
pub mod runs;
mod schedules;
mod secrets;
pub mod server;
pub mod technicians;
mod tenants;
mod workflows;

use std::sync::Arc;

use aide::axum::ApiRouter;
use aide::axum::routing::{delete_with, get_with, patch_with, post_with};
use aide::openapi::{Info, OpenApi, SecurityScheme, Tag};
use aide::transform::{TransformOpenApi, TransformOperation};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use steward_workers::Registry;
use tracing::{debug, warn};

pub use axum::response::NoContent;
use error::ApiError;

use crate::auth::Auth;
use crate::companies::Companies;
use crate::links::LinkSigner;
use crate::metrics::Metrics;
use crate::planner::{Library, Planner};
use crate::store::Store;

/// The most a JSON body may weigh.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// What the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Runs.
    pub store: Store,
    /// Companies.
    pub companies: Companies,
    /// Technicians and tokens.
    pub auth: Auth,
    /// Starts runs under policy.
    pub planner: Planner,
    /// The workflows offered (read again when their files change).
    pub workflows: Library,
    /// The op catalog.
    pub registry: Arc<Registry>,
    /// Signs approval links.
    pub signer: LinkSigner,
    /// The URL approval links start with (`https://steward.msp.example`).
    pub public_url: String,
    /// This process's counters for `/metrics` (the store's).
    pub metrics: Arc<Metrics>,
    /// Tenant connections and the consent flow (`steward serve` sets it; without it the
    /// `/v1/tenants` routes answer 503).
    pub tenants: Option<crate::tenants::Connector>,
    /// The token `/metrics` requires, if any (`metrics.token`).
    pub metrics_token: Option<String>,
}

impl ApiState {
    /// This state, with `/metrics` requiring `token` (`Authorization: Bearer <token>`).
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token;
        self
    }
}

/// `201 Created` with a JSON body.
#[derive(Debug)]
pub struct Created<T>(pub T);

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        (StatusCode::CREATED, axum::Json(self.0)).into_response()
    }
}

impl<T: JsonSchema> aide::OperationOutput for Created<T> {
    type Inner = T;

    fn operation_response(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) -> Option<aide::openapi::Response> {
        axum::Json::<T>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut aide::generate::GenContext,
        operation: &mut aide::openapi::Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, aide::openapi::Response)> {
        Self::operation_response(ctx, operation)
            .map(|r| vec![(Some(aide::openapi::StatusCode::Code(201)), r)])
            .unwrap_or_default()
    }
}

/// Documents an operation: a summary and a tag.
macro_rules! op {
    ($summary:expr, $tag:expr) => {
        |o: TransformOperation<'_>| o.summary($summary).tag($tag)
    };
}

fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/healthz",
            get_with(healthz, op!("liveness: the process answers", "system")),
        )
        .api_route(
            "/readyz",
            get_with(readyz, op!("readiness: Redis answers", "system")),
        )
        .api_route(
            "/v1/workflows",
            get_with(
                runs::workflows,
                op!("the workflows this server offers", "runs"),
            ),
        )
        .api_route(
            "/v1/workflows/files",
            get_with(
                workflows::files,
                op!(
                    "every workflow file the server read: on offer, or skipped with each problem's line and fix",
                    "runs"
                ),
            ),
        )
        .api_route(
            "/v1/plans",
            post_with(
                plans::plan,
                op!(
                    "route a workflow for a company without running it: each step's actions, system, host and parameters (secrets hidden)",
                    "runs"
                ),
            ),
        )
        .api_route(
            "/v1/scripts",
            post_with(
                plans::script,
                op!(
                    "the exact PowerShell a script action would send for a company (secret inputs redacted)",
                    "runs"
                ),
            ),
        )
        .api_route(
            "/v1/runs",
            post_with(
                runs::start,
                op!("start a run (under the company's policy)", "runs"),
            )
            .get_with(runs::list, op!("list runs, newest first", "runs")),
        )
        .api_route(
            "/v1/runs/{run}",
            get_with(runs::get, op!("a run: document, plan, history", "runs")),
        )
        .api_route(
            "/v1/runs/{run}/cancel",
            post_with(
                runs::cancel,
                op!("cancel a run, optionally rolling it back", "runs"),
            ),
        )
        .api_route(
            "/v1/runs/{run}/pause",
            post_with(runs::pause, op!("pause a run", "runs")),
        )
        .api_route(
            "/v1/runs/{run}/resume",
            post_with(runs::resume, op!("resume a paused run", "runs")),
        )
        .api_route(
            "/v1/runs/{run}/steps/{step}/retry",
            post_with(runs::retry_step, op!("retry a step now", "runs")),
        )
        .api_route(
            "/v1/runs/{run}/steps/{step}/skip",
            post_with(runs::skip_step, op!("skip a step", "runs")),
        )
        .api_route(
            "/v1/runs/{run}/steps/{step}/retry-undo",
            post_with(
                runs::retry_undo,
                op!(
                    "retry a step's failed undo (also after rollback_failed)",
                    "runs"
                ),
            ),
        )
        .api_route(
            "/v1/runs/{run}/steps/{step}/resolve-undo",
            post_with(
                runs::resolve_undo,
                op!(
                    "mark a step's failed undo done by hand, with a comment",
                    "runs"
                ),
            ),
        )
        .api_route(
            "/v1/approvals",
            get_with(
                approvals::inbox,
                op!("the caller's approval inbox", "approvals"),
            ),
        )
        .api_route(
            "/v1/approvals/{run}/{step}",
            get_with(
                approvals::get_gate,
                op!("a gate: what it unlocks, instructions, ticket", "approvals"),
            )
            .post_with(
                approvals::decide,
                op!("approve or reject a gate", "approvals"),
            ),
        )
        .api_route(
            "/v1/approvals/{run}/{step}/links",
            post_with(
                approvals::make_links,
                op!("signed one-time approve/reject links", "approvals"),
            ),
        )
        .api_route(
            "/v1/links/{token}",
            get_with(
                approvals::open_link,
                op!(
                    "what a signed link would record (records nothing)",
                    "approvals"
                ),
            )
            .post_with(
                approvals::use_link,
                op!("record a signed link's decision, once", "approvals"),
            ),
        )
        .api_route(
            "/v1/companies",
            get_with(
                companies::list,
                op!("companies the caller may act on", "companies"),
            )
            .post_with(companies::create, op!("add a company", "companies")),
        )
        .api_route(
            "/v1/companies/import",
            post_with(
                companies::import,
                op!("import companies from CSV, all or nothing", "companies"),
            ),
        )
        .api_route(
            "/v1/companies/{id}",
            get_with(companies::get, op!("a company", "companies"))
                .put_with(
                    companies::update,
                    op!("replace a company's settings", "companies"),
                )
                .delete_with(companies::delete, op!("delete a company", "companies")),
        )
        .api_route(
            "/v1/technicians",
            get_with(technicians::list, op!("every technician", "technicians"))
                .post_with(technicians::create, op!("add a technician", "technicians")),
        )
        .api_route(
            "/v1/technicians/me",
            get_with(technicians::me, op!("the caller", "technicians")),
        )
        .api_route(
            "/v1/technicians/{id}",
            patch_with(
                technicians::update,
                op!("change a technician", "technicians"),
            ),
        )
        .api_route(
            "/v1/technicians/{id}/tokens",
            get_with(
                technicians::tokens,
                op!("a technician's tokens", "technicians"),
            )
            .post_with(
                technicians::create_token,
                op!("make a token (shown once)", "technicians"),
            ),
        )
        .api_route(
            "/v1/tokens/{id}",
            delete_with(technicians::revoke, op!("revoke a token", "technicians")),
        )
        .merge(secrets::routes())
        .merge(tenants::routes())
        .merge(inbox::routes())
        .merge(schedules::routes())
        .merge(hooks::routes())
        // The runner protocol (machine to machine, a token per job).
        .merge(runner::routes())
        .merge(psa::routes())
        .merge(dashboard::api_routes())
}

fn describe(api: TransformOpenApi<'_>) -> TransformOpenApi<'_> {
    api.title("Steward API")
        .version("1")
        .description("Durable onboarding and offboarding workflows for MSPs: runs, approval gates, companies, technicians. Errors share one shape: {\"error\": {\"code\", \"message\", \"field\", \"fix\"}}.")
        .security_scheme(
            "bearer",
            SecurityScheme::Http {
                scheme: "bearer".to_owned(),
                bearer_format: Some("stw_…".to_owned()),
                description: Some("an API token (steward technicians token)".to_owned()),
                extensions: Default::default(),
            },
        )
        .tag(Tag { name: "runs".to_owned(), ..Default::default() })
        .tag(Tag { name: "approvals".to_owned(), ..Default::default() })
        .tag(Tag { name: "companies".to_owned(), ..Default::default() })
        .tag(Tag { name: "technicians".to_owned(), ..Default::default() })
        .tag(Tag { name: "secrets".to_owned(), description: Some("one-time secret links (HTML pages for the people they are sent to)".to_owned()), ..Default::default() })
        .tag(Tag { name: "tenants".to_owned(), description: Some("Microsoft 365 tenant connections: consent, status, refresh".to_owned()), ..Default::default() })
        .tag(Tag { name: "inbox".to_owned(), ..Default::default() })
        .tag(Tag { name: "schedules".to_owned(), ..Default::default() })
        .tag(Tag { name: "psa".to_owned(), description: Some("PSA accounts, ticket-to-workflow rules, intakes and notes; the webhooks themselves are POST /v1/hooks/{autotask,connectwise,halo}".to_owned()), ..Default::default() })
        .tag(Tag { name: "runner".to_owned(), description: Some("The runner protocol: Steward's runner component on a client's machine fetches its job's script and posts the result, with a one-time token per job".to_owned()), ..Default::default() })
        .tag(Tag { name: "system".to_owned(), ..Default::default() })
}

/// Builds the handlers' state: the link key comes from `link_key`, or is made once and kept in
/// Redis (`<ns>:meta` field `link-key`) so every replica signs alike.
pub async fn state(
    store: Store,
    registry: Arc<Registry>,
    workflows: impl Into<Library>,
    link_key: Option<&str>,
    public_url: String,
) -> Result<ApiState, String> {
    let key_text = match link_key {
        Some(k) => k.to_owned(),
        None => {
            let meta = store.keys().meta();
            let mut pipe = redis::pipe();
            pipe.hset_nx(&meta, "link-key", LinkSigner::generate_key())
                .ignore()
                .hget(&meta, "link-key");
            let (key,): (String,) = store
                .db()
                .pipe(&pipe)
                .await
                .map_err(|e| format!("cannot read the link key from Redis: {e}"))?;
            key
        }
    };
    let signer = LinkSigner::new(LinkSigner::decode_key(&key_text)?)?;
    let store_metrics = store.metrics().clone();
    let companies = Companies::for_store(&store);
    let auth = Auth::for_store(&store);
    let workflows: Library = workflows.into();
    report_named_approvers(&auth, &workflows.current()).await;
    let planner = Planner {
        store: store.clone(),
        companies: companies.clone(),
        registry: registry.clone(),
    };
    Ok(ApiState {
        store,
        companies,
        auth,
        planner,
        workflows,
        registry,
        signer,
        public_url,
        metrics: store_metrics,
        metrics_token: None,
        tenants: None,
    })
}

/// Warns about the people the workflows' gates name who are not enabled technicians: runs that
/// need them are refused when planned, or their gates go to the admins when they open.
async fn report_named_approvers(auth: &Auth, workflows: &crate::planner::Workflows) {
    let directory = match auth.directory().await {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "cannot read the technicians to check the workflows' approvers");
            return;
        }
    };
    for plan in workflows.all() {
        for problem in steward_core::company::named_approver_problems(plan.def(), &directory) {
            warn!(workflow = %plan.def().name, step = %problem.step, "{problem}");
        }
    }
}

/// The documented routes and the OpenAPI document generated from them.
fn documented() -> (axum::Router<ApiState>, OpenApi) {
    let mut api = OpenApi {
        info: Info::default(),
        ..OpenApi::default()
    };
    let router = routes().finish_api_with(&mut api, describe);
    (router, api)
}

fn render(api: &OpenApi) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(api).expect("the OpenAPI document serialises")
    )
}

/// The OpenAPI document.
pub fn openapi() -> OpenApi {
    documented().1
}

/// The OpenAPI document as checked in (`schemas/openapi.json`).
pub fn openapi_json() -> String {
    render(&openapi())
}

/// The API's router.
pub fn app(state: ApiState) -> axum::Router {
    let (router, api) = documented();
    let doc = Arc::new(render(&api));
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/metrics", axum::routing::get(metrics))
        // The technicians' dashboard (HTML pages at `/`).
        .merge(dashboard::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        // A panic is a bug; still, the caller gets the error shape and the connection survives.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked (a bug)");
                ApiError::internal("the server hit a bug handling this request; it has been logged")
                    .into_response()
            },
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// A method's name for a metric label: the standard ones, else `other` (clients choose the
/// method, and every label value is a counter kept forever).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts and logs every request once; errors are logged from the response's extensions.
async fn observe(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(unmatched)".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status();
    state.metrics.count(
        "steward_http_requests_total",
        &[
            ("method", method),
            ("route", &route),
            ("status", status.as_str()),
        ],
    );
    if let Some(e) = res.extensions().get::<ApiError>() {
        if status.is_server_error() {
            warn!(%method, %route, status = status.as_u16(), error = ?e, "request failed");
        } else {
            debug!(%method, %route, status = status.as_u16(), error = ?e, "request refused");
        }
    }
    res
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route").with_fix("see GET /v1/openapi.json for the routes")
}

async fn method_not_allowed() -> ApiError {
    ApiError::status_code(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The service's health.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    /// `ok` or `ready`.
    pub status: &'static str,
}

async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

async fn readyz(State(state): State<ApiState>) -> Result<axum::Json<Health>, ApiError> {
    state
        .store
        .db()
        .query::<String>(&redis::cmd("PING"))
        .await?;
    Ok(axum::Json(Health { status: "ready" }))
}

async fn metrics(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    crate::metrics::respond(&state.store, state.metrics_token.as_deref(), &headers).await
}
