//! The workflow files a server read: which are on offer and every problem of those that are not.
//!
//! A bad workflow file does not stop `serve`: it is skipped, logged, and listed here with each
//! problem's line, field and fix, so a technician can see why a workflow is missing without
//! reading the server's log.

use axum::extract::State;

use super::ApiState;
use super::extract::Caller;
use crate::planner::FileStatus;

/// Every workflow file the server read, in path order, with its status.
pub(super) async fn files(
    State(state): State<ApiState>,
    _caller: Caller,
) -> axum::Json<Vec<FileStatus>> {
    axum::Json(state.workflows.current().files().to_vec())
}
