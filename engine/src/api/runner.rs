//! The runner protocol's two calls, made by Steward's runner component on a client's machine
//! (`deploy/rmm/StewardRunner.ps1`), not by technicians:
//!
//! - `GET /v1/runner/jobs/{id}` with `Authorization: Bearer <job token>`: the script, once.
//! - `POST /v1/runner/jobs/{id}/result` with the same token and `{stdout, stderr, exit_code,
//!   result}`: the result, once; it wakes the waiting step at once.
//!
//! The token is the quick job's one-time secret: it works for this job only, for one fetch and
//! one result, until it expires. Every refusal answers the same way for an unknown job and a
//! wrong token (404), so the API does not say which job ids exist; a replay answers 409, a late
//! call 410.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use steward_workers::rmm::jobs::{self, Refusal, RunnerResult};
use tracing::warn;

use super::ApiState;
use super::error::ApiError;

/// A runner job's path.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub(crate) struct JobPath {
    /// The job id the quick job carried (`steward_job_id`).
    id: String,
}

/// The runner protocol's routes, in the OpenAPI document under the `runner` tag.
pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/runner/jobs/{id}",
            get_with(script, |op| {
                op.tag("runner")
                    .summary("A runner job's script")
                    .description("Called by Steward's runner component (deploy/rmm/StewardRunner.ps1) on a client's machine, not by technicians: `Authorization: Bearer <steward_job_token>` from the quick job's variables. Answers the PowerShell script as text/plain, once. An unknown job and a wrong token both answer 404; a second fetch 409; an expired token 410.")
                    .response_with::<200, String, _>(|r| r.description("the script (text/plain)"))
                    .response_with::<401, Json<super::error::ErrorBody>, _>(|r| {
                        r.description("no job token")
                    })
                    .response_with::<404, Json<super::error::ErrorBody>, _>(|r| {
                        r.description("no runner job with that id takes this token")
                    })
            }),
        )
        .api_route(
            "/v1/runner/jobs/{id}/result",
            post_with(result, |op| {
                op.tag("runner")
                    .summary("A runner job's result")
                    .description("Called by the runner component with the same job token, once: `{stdout, stderr, exit_code, result}`. Stores the result and wakes the waiting step at once. The same refusals as the script call; a body that is not that JSON answers 400.")
                    .response_with::<401, Json<super::error::ErrorBody>, _>(|r| {
                        r.description("no job token")
                    })
                    .response_with::<404, Json<super::error::ErrorBody>, _>(|r| {
                        r.description("no runner job with that id takes this token")
                    })
            }),
        )
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(super::extract::bearer_token)
        .ok_or_else(|| {
            ApiError::unauthorized("the runner call has no job token").with_fix(
                "send `Authorization: Bearer <steward_job_token>` from the quick job's variables",
            )
        })
}

fn refused(e: jobs::Error) -> ApiError {
    match e {
        jobs::Error::Refused(Refusal::Unknown) => ApiError::not_found(
            "no runner job with that id takes this token",
        )
        .with_fix(
            "run the quick job Steward sent; its steward_job_id and steward_job_token go together",
        ),
        jobs::Error::Refused(Refusal::Expired) => {
            ApiError::gone("the runner job's token has expired")
                .with_fix("the step sends a new quick job when it is retried")
        }
        jobs::Error::Refused(Refusal::Used) => {
            ApiError::conflict("this runner job's token was already used for this call")
                .with_fix("a job token works once for the script and once for the result")
        }
        jobs::Error::Redis(m) => ApiError::unavailable(format!("cannot reach Redis: {m}")),
        other => ApiError::internal(other.to_string()),
    }
}

/// `GET /v1/runner/jobs/{id}`: the job's script, as `text/plain`.
pub(crate) async fn script(
    State(st): State<ApiState>,
    Path(JobPath { id }): Path<JobPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let text = crate::runner::jobs(&st.store)
        .fetch(&id, token)
        .await
        .map_err(refused)?;
    st.metrics
        .count("steward_runner_calls_total", &[("call", "script")]);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}

/// `POST /v1/runner/jobs/{id}/result`: stores the runner's result and wakes the step.
pub(crate) async fn result(
    State(st): State<ApiState>,
    Path(JobPath { id }): Path<JobPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let parsed: RunnerResult = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the result body is not valid: {e}"))
            .with_fix("post {\"stdout\": \"…\", \"stderr\": \"…\", \"exit_code\": 0, \"result\": {…}} as JSON")
    })?;
    let binding = crate::runner::jobs(&st.store)
        .post_result(&id, token, &parsed)
        .await
        .map_err(refused)?;
    st.metrics
        .count("steward_runner_calls_total", &[("call", "result")]);
    // The step may still be reporting *pending* for the job that sent this runner: the wake
    // is retried in the background for a while, so the runner is not kept waiting.
    let store = st.store.clone();
    let woken = match crate::runner::wake(&store, &binding).await {
        Ok(crate::runner::Woken::Queued) => true,
        Ok(crate::runner::Woken::InFlight) => {
            tokio::spawn(async move {
                if let Err(e) =
                    crate::runner::wake_soon(&store, &binding, std::time::Duration::from_secs(30))
                        .await
                {
                    warn!(error = %e, "cannot wake the step after a runner result");
                }
            });
            false
        }
        Ok(crate::runner::Woken::NotWaiting) => false,
        Err(e) => {
            // The result is stored; the step's own poll timer still finds it.
            warn!(error = %e, "cannot wake the step after a runner result");
            false
        }
    };
    Ok((
        StatusCode::OK,
        Json(json!({"accepted": true, "woken": woken})),
    )
        .into_response())
}
