//! `/v1/psa/…`: PSA accounts (webhook and API secrets, sealed), the rules that map tickets to
//! workflows, the ignored events, the intakes (tickets on their way to a run, some waiting for
//! inputs) and the notes outbox.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with, put_with};
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath, Caller};
use super::hooks::service;
use super::{ApiState, NoContent};
use crate::psa::accounts::{AccountInput, AccountView};
use crate::psa::guard::{Brake, Engaged, Guard, Protected};
use crate::psa::rules::Rule;
use crate::psa::{self, Ignored, Intake, Receipt};

pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/psa/accounts",
            get_with(list_accounts, |o| {
                o.summary("PSA accounts (no secrets)").tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/accounts/{id}",
            put_with(put_account, |o| {
                o.summary("add or replace a PSA account (secrets are sealed)")
                    .tag("psa")
            })
            .delete_with(delete_account, |o| {
                o.summary("remove a PSA account").tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/rules",
            get_with(get_rules, |o| {
                o.summary("the rules mapping tickets to workflows")
                    .tag("psa")
            })
            .put_with(put_rules, |o| {
                o.summary("replace the rules (first match wins)").tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/ignored",
            get_with(ignored, |o| {
                o.summary("PSA events recorded and ignored, newest first")
                    .tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/intakes",
            get_with(intakes, |o| {
                o.summary("tickets on their way to a run, newest first")
                    .tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/intakes/{id}",
            get_with(intake, |o| o.summary("one ticket's intake").tag("psa")),
        )
        .api_route(
            "/v1/psa/intakes/{id}/inputs",
            post_with(supply, |o| {
                o.summary("supply inputs an intake waits for; starts its run when none are missing")
                    .tag("psa")
            }),
        )
        .api_route(
            "/v1/guard",
            get_with(guard, |o| {
                o.summary(
                    "safety rails: protected accounts, the blast-radius brake and engaged brakes",
                )
                .tag("psa")
            }),
        )
        .api_route(
            "/v1/guard/protected",
            put_with(put_protected, |o| {
                o.summary("replace the protected accounts (global and per company)")
                    .tag("psa")
            }),
        )
        .api_route(
            "/v1/guard/brake",
            put_with(put_brake, |o| {
                o.summary("set the blast-radius brake: destructive runs per company per window")
                    .tag("psa")
            }),
        )
        .api_route(
            "/v1/guard/brakes/{id}/release",
            post_with(release, |o| {
                o.summary("release a company's engaged brake").tag("psa")
            }),
        )
        .api_route(
            "/v1/psa/notes",
            get_with(notes, |o| {
                o.summary("ticket notes: written, waiting or failed")
                    .tag("psa")
            }),
        )
}

fn internal(e: psa::Error) -> ApiError {
    match e {
        psa::Error::NoKeyring => ApiError::unavailable(e.to_string())
            .with_fix("configure secrets.key-dir and secrets.active-key (see deploy/steward.toml)"),
        psa::Error::Redis(r) => r.into(),
        other => ApiError::internal(other.to_string()),
    }
}

/// An id in a path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct IdPath {
    /// The id.
    id: String,
}

async fn list_accounts(
    State(state): State<ApiState>,
    _a: Admin,
) -> ApiResult<axum::Json<Vec<AccountView>>> {
    let all = service(&state).accounts().await.map_err(internal)?;
    Ok(axum::Json(
        all.iter().map(psa::accounts::Stored::view).collect(),
    ))
}

async fn put_account(
    State(state): State<ApiState>,
    _a: Admin,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(input): ApiJson<AccountInput>,
) -> ApiResult<axum::Json<AccountView>> {
    match service(&state)
        .put_account(&p.id, input)
        .await
        .map_err(internal)?
    {
        Ok(s) => Ok(axum::Json(s.view())),
        Err(bad) => Err(ApiError::invalid(bad.field, bad.message, bad.fix)),
    }
}

async fn delete_account(
    State(state): State<ApiState>,
    _a: Admin,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<NoContent> {
    if service(&state)
        .delete_account(&p.id)
        .await
        .map_err(internal)?
    {
        Ok(NoContent)
    } else {
        Err(ApiError::not_found(format!("no PSA account `{}`", p.id)))
    }
}

/// The rules.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// In order; the first that matches a ticket wins.
    pub rules: Vec<Rule>,
}

async fn get_rules(State(state): State<ApiState>, _c: Caller) -> ApiResult<axum::Json<Rules>> {
    Ok(axum::Json(Rules {
        rules: service(&state).rules().await.map_err(internal)?,
    }))
}

async fn put_rules(
    State(state): State<ApiState>,
    _a: Admin,
    ApiJson(body): ApiJson<Rules>,
) -> ApiResult<axum::Json<Rules>> {
    let workflows = state.workflows.current();
    for (i, r) in body.rules.iter().enumerate() {
        if workflows.get(&r.workflow).is_none() {
            let known: Vec<&str> = workflows.all().map(|p| p.def().name.as_str()).collect();
            return Err(ApiError::invalid(
                format!("rules[{i}].workflow"),
                format!("no workflow `{}`", r.workflow),
                format!("use one of: {}", known.join(", ")),
            ));
        }
        if r.title_keywords.iter().any(|k| k.trim().is_empty()) {
            return Err(ApiError::invalid(
                format!("rules[{i}].title_keywords"),
                "an empty keyword",
                "remove it, or give a word",
            ));
        }
    }
    service(&state)
        .put_rules(&body.rules)
        .await
        .map_err(internal)?;
    Ok(axum::Json(body))
}

async fn ignored(State(state): State<ApiState>, _a: Admin) -> ApiResult<axum::Json<Vec<Ignored>>> {
    Ok(axum::Json(
        service(&state).ignored().await.map_err(internal)?,
    ))
}

async fn intakes(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<axum::Json<Vec<Intake>>> {
    let all = service(&state).intakes(200).await.map_err(internal)?;
    Ok(axum::Json(
        all.into_iter()
            .filter(|i| caller.may_access(&i.company))
            .collect(),
    ))
}

async fn intake(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<axum::Json<Intake>> {
    let i = service(&state)
        .intake(&p.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no intake `{}`", p.id)))?;
    caller.require_company(&i.company)?;
    Ok(axum::Json(i))
}

/// Inputs a technician supplies.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Supply {
    /// Input name → value (`{"start_date": "2027-02-01"}`).
    pub inputs: Map<String, Value>,
}

async fn supply(
    State(state): State<ApiState>,
    caller: Caller,
    ApiPath(p): ApiPath<IdPath>,
    ApiJson(body): ApiJson<Supply>,
) -> ApiResult<axum::Json<Receipt>> {
    let svc = service(&state);
    let i = svc
        .intake(&p.id)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no intake `{}`", p.id)))?;
    caller.require_company(&i.company)?;
    if body.inputs.is_empty() {
        return Err(ApiError::invalid(
            "inputs",
            "no inputs given",
            "give at least one input, e.g. {\"start_date\": \"2027-02-01\"}",
        ));
    }
    let r = svc
        .supply(&p.id, body.inputs)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no intake `{}`", p.id)))?;
    Ok(axum::Json(r))
}

async fn notes(
    State(state): State<ApiState>,
    _a: Admin,
) -> ApiResult<axum::Json<Vec<psa::notes::Queued>>> {
    Ok(axum::Json(
        psa::notes::all(&service(&state)).await.map_err(internal)?,
    ))
}

/// The safety rails.
#[derive(Debug, Serialize, JsonSchema)]
pub struct GuardView {
    /// Protected accounts.
    pub protected: Protected,
    /// The brake's limit.
    pub brake: Brake,
    /// Companies whose brake is engaged.
    pub engaged: Vec<Engaged>,
}

async fn guard_view(state: &ApiState) -> ApiResult<GuardView> {
    let g = Guard::for_store(&state.store);
    Ok(GuardView {
        protected: g.protected().await?,
        brake: g.brake().await?,
        engaged: g.engaged().await?,
    })
}

async fn guard(State(state): State<ApiState>, _c: Caller) -> ApiResult<axum::Json<GuardView>> {
    Ok(axum::Json(guard_view(&state).await?))
}

async fn put_protected(
    State(state): State<ApiState>,
    _a: Admin,
    ApiJson(p): ApiJson<Protected>,
) -> ApiResult<axum::Json<GuardView>> {
    for (i, a) in p.global.iter().enumerate() {
        if a.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("global[{i}]"),
                "an empty account",
                "remove it, or name the account (UPN or sAMAccountName)",
            ));
        }
    }
    Guard::for_store(&state.store).set_protected(&p).await?;
    Ok(axum::Json(guard_view(&state).await?))
}

async fn put_brake(
    State(state): State<ApiState>,
    _a: Admin,
    ApiJson(b): ApiJson<Brake>,
) -> ApiResult<axum::Json<GuardView>> {
    if b.max_runs > 0 && b.window_seconds == 0 {
        return Err(ApiError::invalid(
            "window_seconds",
            "zero",
            "give the window in seconds, e.g. 3600",
        ));
    }
    Guard::for_store(&state.store).set_brake(b).await?;
    Ok(axum::Json(guard_view(&state).await?))
}

/// A company in a path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct CompanyPath {
    /// The company.
    id: steward_schemas::CompanyId,
}

async fn release(
    State(state): State<ApiState>,
    _a: Admin,
    ApiPath(p): ApiPath<CompanyPath>,
) -> ApiResult<axum::Json<GuardView>> {
    if !Guard::for_store(&state.store).release(&p.id).await? {
        return Err(ApiError::not_found(format!(
            "company `{}`'s brake is not engaged",
            p.id
        )));
    }
    tracing::info!(company = %p.id, "blast-radius brake released");
    Ok(axum::Json(guard_view(&state).await?))
}
