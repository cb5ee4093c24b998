//! `POST /v1/hooks/{autotask,connectwise,halo}`: PSA webhooks (no bearer token: each is
//! authenticated as its PSA defines it, see [`crate::psa::verify`]). `?account=ID` names the PSA
//! account when there is more than one of a kind.
//!
//! Answers: 200/202 with a [`crate::psa::Receipt`] (started, needs input, duplicate, ignored…);
//! 401 for a forged, unauthenticated or stale delivery (logged without its body); 503 when
//! Steward cannot handle it now (the PSA retries). Never 500 for anything a sender controls.

use aide::axum::ApiRouter;
use aide::axum::routing::post_with;
use aide::transform::TransformOperation;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use steward_schemas::company::PsaProvider;

use super::ApiState;
use super::error::ApiError;
use crate::psa::{HookError, Psa, Receipt};

/// The webhook's query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct HookQuery {
    /// The Steward PSA account the delivery is for (`PUT /v1/psa/accounts/{id}`), when there is
    /// more than one of its kind.
    #[serde(default)]
    account: Option<String>,
}

/// Documents one PSA's webhook: its authentication, body and answers.
fn hook_doc(
    summary: &'static str,
    auth: &'static str,
) -> impl FnOnce(TransformOperation<'_>) -> TransformOperation<'_> {
    move |o| {
        o.summary(summary)
            .tag("psa")
            .description(auth)
            .response_with::<200, axum::Json<Receipt>, _>(|r| {
                r.description("started a run, or joined one (`started`, `already_started`), or a redelivery (`duplicate`)")
            })
            .response_with::<202, axum::Json<Receipt>, _>(|r| {
                r.description("recorded without starting a run: needs input, ignored (unknown company or ticket type), waiting for a rollback")
            })
            .response_with::<401, axum::Json<super::error::ErrorBody>, _>(|r| {
                r.description("forged, unauthenticated or stale: refused, logged without its body")
            })
            .response_with::<503, axum::Json<super::error::ErrorBody>, _>(|r| {
                r.description("cannot be handled now; the PSA retries")
            })
    }
}

pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/hooks/autotask",
            post_with(
                autotask,
                hook_doc(
                    "Autotask ticket webhook",
                    "No bearer token: authenticated by the `X-Hook-Signature` header (`sha1=` and the base64 HMAC-SHA1 of the body with the account's webhook secret), compared in constant time; events older than the account allows are refused. The body is Autotask's webhook JSON (`Guid`, `EntityType`, `Action`, `EventTime`, `Id`, `Fields`, …).",
                ),
            ),
        )
        .api_route(
            "/v1/hooks/connectwise",
            post_with(
                connectwise,
                hook_doc(
                    "ConnectWise PSA ticket callback",
                    "No bearer token: authenticated as ConnectWise defines its callbacks: the `x-content-signature` header, the base64 HMAC-SHA256 of the body with the signing key read from the callback's `Metadata.key_url` (which must be on the account's own ConnectWise site), compared in constant time. The body is ConnectWise's callback JSON (`MessageId`, `FromUrl`, `CompanyId`, `Action`, `Type`, `ID`, `Entity`, `Metadata`).",
                ),
            ),
        )
        .api_route(
            "/v1/hooks/halo",
            post_with(
                halo,
                hook_doc(
                    "HaloPSA ticket webhook",
                    "No bearer token: HaloPSA's webhooks carry no signature: the `Authorization` header (the Basic or Bearer credential configured on the webhook) is compared in constant time with the account's. The body is HaloPSA's webhook JSON (the ticket object and the event).",
                ),
            ),
        )
}

/// The PSA service behind the API.
pub(crate) fn service(state: &ApiState) -> Psa {
    Psa::new(
        state.store.clone(),
        state.planner.clone(),
        state.workflows.clone(),
    )
}

async fn autotask(
    State(state): State<ApiState>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&state, PsaProvider::Autotask, q, &headers, &body).await
}

async fn connectwise(
    State(state): State<ApiState>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&state, PsaProvider::Connectwise, q, &headers, &body).await
}

async fn halo(
    State(state): State<ApiState>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&state, PsaProvider::Halopsa, q, &headers, &body).await
}

async fn hook(
    state: &ApiState,
    provider: PsaProvider,
    q: HookQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // The account id is the sender's text: only a well-formed one is used or logged.
    let account = q.account.map(|a| {
        if crate::psa::accounts::valid_id(&a) {
            a
        } else {
            "(not an account id)".to_owned()
        }
    });
    let psa = service(state);
    let provider_label = format!("{provider:?}").to_lowercase();
    match psa
        .receive(provider, account.as_deref(), headers, body)
        .await
    {
        Ok(receipt) => {
            state.metrics.count(
                "steward_psa_deliveries_total",
                &[("psa", &provider_label), ("outcome", &receipt.outcome)],
            );
            let status = if receipt.outcome == "started"
                || receipt.outcome == "already_started"
                || receipt.outcome == "duplicate"
            {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (status, axum::Json(receipt)).into_response()
        }
        Err(HookError::Refused(why)) => {
            state.metrics.count(
                "steward_psa_deliveries_total",
                &[("psa", &provider_label), ("outcome", "refused")],
            );
            // The body is not logged: it is untrusted, and may be large or hold personal data.
            tracing::warn!(psa = %provider_label, account = account.as_deref().unwrap_or("-"), bytes = body.len(), reason = %why, "PSA webhook refused");
            ApiError::unauthorized(format!("webhook refused: {why}"))
                .with_fix("check the webhook's secret in the PSA and in PUT /v1/psa/accounts/{id}")
                .into_response()
        }
        Err(HookError::NoAccount(a)) => {
            tracing::warn!(psa = %provider_label, account = %a, bytes = body.len(), "PSA webhook for no configured account refused");
            ApiError::unauthorized("webhook refused: no PSA account matches this delivery")
                .with_fix("add the account with PUT /v1/psa/accounts/{id}, and use the webhook URL it gives")
                .into_response()
        }
        Err(HookError::Internal(e)) => {
            tracing::error!(psa = %provider_label, error = %e, "PSA webhook could not be handled");
            ApiError::unavailable("the webhook could not be handled now; the PSA will retry")
                .into_response()
        }
    }
}
