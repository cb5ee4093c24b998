//! The admins' inbox (`steward inbox`): things to do that no run waits on, such as a tenant that
//! needs consent again. Admins see every item; technicians the items of their companies.

use aide::axum::ApiRouter;
use aide::axum::routing::{delete_with, get_with};
use axum::extract::State;
use schemars::JsonSchema;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::extract::{Admin, ApiPath, Caller};
use super::{ApiState, NoContent};
use crate::inbox::{Inbox, InboxItem};

/// The routes.
pub(super) fn routes() -> ApiRouter<ApiState> {
    ApiRouter::new()
        .api_route(
            "/v1/inbox",
            get_with(list, |o| {
                o.summary("the inbox: things to do that no run waits on, newest first")
                    .tag("inbox")
            }),
        )
        .api_route(
            "/v1/inbox/{id}",
            delete_with(dismiss, |o| {
                o.summary("dismiss an inbox item (admins)").tag("inbox")
            }),
        )
}

/// The inbox items the caller may see.
pub(super) async fn list(
    State(state): State<ApiState>,
    caller: Caller,
) -> ApiResult<axum::Json<Vec<InboxItem>>> {
    let items = Inbox::for_store(&state.store).list().await?;
    Ok(axum::Json(
        items
            .into_iter()
            .filter(|i| caller.may_access(&i.company))
            .collect(),
    ))
}

/// An inbox item.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct ItemPath {
    /// The item's id.
    id: String,
}

/// Dismisses an item.
async fn dismiss(
    State(state): State<ApiState>,
    _admin: Admin,
    ApiPath(p): ApiPath<ItemPath>,
) -> ApiResult<NoContent> {
    if Inbox::for_store(&state.store).dismiss(&p.id).await? {
        Ok(NoContent)
    } else {
        Err(ApiError::not_found(format!("no inbox item `{}`", p.id)))
    }
}
