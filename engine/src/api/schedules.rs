//! Schedules (admins): cron expressions with a time zone that fire the token refresh or start a
//! workflow per company, once per tick however many servers run.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiJson, ApiPath};
use super::{ApiState, Created, NoContent};
use crate::schedules::{self, Schedule, ScheduleView, Schedules, Target};

impl From<schedules::Error> for ApiError {
    fn from(e: schedules::Error) -> Self {
        use schedules::Error as E;
        match e {
            E::Redis(e) => e.into(),
            E::Invalid {
                field,
                message,
                fix,
            } => Self::invalid(field, message, fix),
            E::NotFound(_) => Self::not_found(e.to_string()),
            E::Exists(_) => Self::conflict(e.to_string()).with_field("id"),
        }
    }
}

/// The routes.
pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/schedules",
            get_with(list, |o| {
                o.summary("every schedule (admins)").tag("schedules")
            })
            .post_with(add, |o| {
                o.summary("add a schedule (admins)").tag("schedules")
            }),
        )
        .api_route(
            "/v1/schedules/{id}",
            get_with(show, |o| o.summary("a schedule (admins)").tag("schedules"))
                .delete_with(remove, |o| {
                    o.summary("remove a schedule (admins)").tag("schedules")
                }),
        )
        .api_route(
            "/v1/schedules/{id}/run",
            post_with(run_now, |o| {
                o.summary("fire a schedule now, outside its cadence (admins)")
                    .tag("schedules")
            }),
        )
}

/// A schedule to add.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AddSchedule {
    /// Its id: lowercase letters, digits and `-`.
    id: String,
    /// Five fields (`minute hour day month weekday`), or six with seconds first.
    cron: String,
    /// The IANA time zone (default `UTC`).
    #[serde(default)]
    time_zone: Option<String>,
    /// What it does.
    target: Target,
}

/// The schedule's path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct IdPath {
    /// The schedule.
    id: String,
}

/// A firing just recorded.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct Firing {
    /// The schedule.
    schedule: String,
    /// The firing's id (in the firings stream).
    firing: String,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    _admin: Admin,
) -> ApiResult<axum::Json<Vec<ScheduleView>>> {
    Ok(axum::Json(
        Schedules::new(state.store.clone()).list().await?,
    ))
}

async fn add(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    ApiJson(req): ApiJson<AddSchedule>,
) -> ApiResult<Created<ScheduleView>> {
    if let Target::Workflow { workflow, .. } = &req.target
        && state.workflows.current().get(workflow).is_none()
    {
        return Err(ApiError::invalid(
            "target.workflow",
            format!("no workflow `{workflow}` is offered"),
            "name a workflow of GET /v1/workflows",
        ));
    }
    let view = Schedules::new(state.store.clone())
        .add(Schedule {
            id: req.id,
            cron: req.cron,
            time_zone: req.time_zone.unwrap_or_else(|| "UTC".to_owned()),
            target: req.target,
            created_by: caller.tech.email.clone(),
            created_at: state.store.clock().now(),
        })
        .await?;
    Ok(Created(view))
}

async fn show(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<axum::Json<ScheduleView>> {
    Schedules::new(state.store.clone())
        .get(&p.id)
        .await?
        .map(axum::Json)
        .ok_or_else(|| schedules::Error::NotFound(p.id).into())
}

async fn remove(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<NoContent> {
    if Schedules::new(state.store.clone()).remove(&p.id).await? {
        Ok(NoContent)
    } else {
        Err(schedules::Error::NotFound(p.id).into())
    }
}

async fn run_now(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    ApiPath(p): ApiPath<IdPath>,
) -> ApiResult<axum::Json<Firing>> {
    let firing = Schedules::new(state.store.clone())
        .run_now(&p.id, &caller.tech.email)
        .await?;
    Ok(axum::Json(Firing {
        schedule: p.id,
        firing,
    }))
}
