//! The API's one error shape: `{"error": {"code", "message", "field", "fix", "details"}}`.
//!
//! Codes are stable; bad input always answers 4xx with the field at fault; a Redis outage answers
//! 503. 500 is kept for bugs.

use aide::OperationOutput;
use aide::generate::GenContext;
use aide::openapi::{
    MediaType, Operation, Response as ApiResponse, SchemaObject, StatusCode as ApiStatus,
};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// The error body.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable code: `bad_request`, `validation_failed`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `gone`, `payload_too_large`, `unsupported_media_type`,
    /// `policy_refused`, `unavailable`, `internal`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// How to fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// Every problem, when there are several (rows of a CSV file, fields of a company).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    detail: Box<ErrorDetail>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            detail: Box::new(ErrorDetail {
                code,
                message: message.into(),
                field: None,
                fix: None,
                details: None,
            }),
        }
    }

    /// Any status, with a code.
    pub fn status_code(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: well-formed, but a field is wrong.
    pub fn invalid(
        field: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        );
        e.detail.field = Some(field.into());
        e.detail.fix = Some(fix.into());
        e
    }

    /// 422 with every problem listed.
    pub fn invalid_many(message: impl Into<String>, details: Value) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        );
        e.detail.details = Some(details);
        e
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.detail.fix = Some("send `Authorization: Bearer <token>`; an admin makes tokens (steward technicians token)".to_owned());
        e
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: it does not apply now.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 410: it no longer works (a used or expired link).
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", message)
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than {} KiB", limit / 1024),
        );
        e.detail.fix = Some("send less (split a CSV import into several files)".to_owned());
        e
    }

    /// 415.
    pub fn unsupported_media(expected: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected a body of type {expected}"),
        );
        e.detail.fix = Some(format!("send `Content-Type: {expected}`"));
        e
    }

    /// 422: the company's policy refuses it.
    pub fn policy(message: impl Into<String>, details: Value) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "policy_refused", message);
        e.detail.details = Some(details);
        e
    }

    /// 503: Redis is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: a bug.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Adds the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.detail.field = Some(field.into());
        self
    }

    /// Adds every detail (the runs in flight that stop a deletion, …).
    pub fn with_details(mut self, details: Value) -> Self {
        self.detail.details = Some(details);
        self
    }

    /// Adds the fix.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.detail.fix = Some(fix.into());
        self
    }

    /// The HTTP status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong (the dashboard shows it as a page).
    pub fn detail(&self) -> &ErrorDetail {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                error: (*self.detail).clone(),
            }),
        )
            .into_response();
        // The logging middleware reads it from here, so errors are logged once.
        res.extensions_mut().insert(self);
        res
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        Self::unavailable(format!("the run store is unavailable ({})", e.category()))
    }
}

/// Why nothing can change a run whose workflow definition Redis lost.
pub fn missing_definition(hash: &str) -> String {
    format!(
        "the workflow definition this run was started with (hash {hash}) is missing from Redis (writes lost in a crash, a failover or a restore), so the run cannot change until it is back"
    )
}

/// How a lost definition comes back.
pub const MISSING_DEFINITION_FIX: &str = "put the workflow file of that version back in the folder `steward serve` offers (http.workflows): the server writes a missing definition back as soon as a run needs it; starting a run of that workflow version writes it back too";

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        use crate::store::Error as E;
        match e {
            E::Redis(e) => e.into(),
            E::NoSuchRun(r) => Self::not_found(format!("no run `{r}`")),
            E::Inputs(problems) => Self::invalid_many(
                "the inputs are wrong",
                serde_json::to_value(
                    problems
                        .iter()
                        .map(|p| serde_json::json!({"field": format!("inputs.{}", p.name), "message": p.message, "fix": p.fix}))
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
            ),
            E::Contention(_) => Self::conflict(e.to_string()),
            E::TooLarge {
                field, setting, ..
            } => Self::status_code(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            )
            .with_field(field)
            .with_fix(format!(
                "send less (large data belongs in the systems the ops reach, not in the run), or ask an operator to raise {setting}"
            )),
            E::NotDurable(_) => Self::unavailable(e.to_string()),
            E::NoSuchDefinition(hash) => {
                Self::conflict(missing_definition(&hash)).with_fix(MISSING_DEFINITION_FIX)
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<crate::companies::Error> for ApiError {
    fn from(e: crate::companies::Error) -> Self {
        use crate::companies::Error as E;
        match e {
            E::Redis(e) => e.into(),
            E::Invalid(problems) => Self::invalid_many(
                match problems.as_slice() {
                    [one] => format!(
                        "the company's settings have a problem: {}: {}",
                        one.field, one.message
                    ),
                    many => format!("the company's settings have {} problems", many.len()),
                },
                serde_json::to_value(&problems).unwrap_or_default(),
            ),
            E::Exists(_) => Self::conflict(e.to_string()),
            E::NotFound(_) => Self::not_found(e.to_string()),
            E::Stale { .. } => Self::conflict(e.to_string()),
            E::Busy(_) => Self::conflict(e.to_string())
                .with_fix("send the same request again; nothing was imported"),
            E::Corrupt(_) => Self::internal(e.to_string()),
        }
    }
}

impl From<crate::auth::Error> for ApiError {
    fn from(e: crate::auth::Error) -> Self {
        use crate::auth::Error as E;
        match e {
            E::Redis(e) => e.into(),
            E::Unauthenticated(m) => Self::unauthorized(m),
            E::EmailTaken(_) => Self::conflict(e.to_string()).with_field("email"),
            E::Invalid { field, message } => {
                Self::invalid(field, message, "see the field's description")
            }
            E::NotFound(m) => Self::not_found(m),
            E::Conflict(m) => Self::conflict(m).with_fix("send the same request again"),
            E::Corrupt(_) => Self::internal(e.to_string()),
        }
    }
}

fn error_response(ctx: &mut GenContext) -> ApiResponse {
    let json_schema = ctx.schema.subschema_for::<ErrorBody>();
    ApiResponse {
        description: "an error: a stable code, a message, the field at fault and the fix"
            .to_owned(),
        content: IndexMap::from_iter([(
            "application/json".into(),
            MediaType {
                schema: Some(SchemaObject {
                    json_schema,
                    example: None,
                    external_docs: None,
                }),
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

impl OperationOutput for ApiError {
    type Inner = ErrorBody;

    fn operation_response(ctx: &mut GenContext, _operation: &mut Operation) -> Option<ApiResponse> {
        Some(error_response(ctx))
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        _operation: &mut Operation,
    ) -> Vec<(Option<ApiStatus>, ApiResponse)> {
        let r = error_response(ctx);
        [400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 503]
            .into_iter()
            .map(|c| (Some(ApiStatus::Code(c)), r.clone()))
            .collect()
    }
}

/// `Result` for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
