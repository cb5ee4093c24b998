//! Graph's error envelope: `{"error":{"code","message","innerError":{"date","request-id",
//! "client-request-id"},"details":[...]}}`, with Graph's codes and messages.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use crate::http::request_info;

#[derive(Debug, Clone)]
pub(crate) struct GraphError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) details: Vec<Value>,
    pub(crate) retry_after: Option<u64>,
}

pub(crate) type GraphResult<T = Response> = Result<T, GraphError>;

impl GraphError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: vec![],
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Request_BadRequest", message)
    }

    /// OData-layer validation failures use the plain `BadRequest` code.
    pub(crate) fn odata(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub(crate) fn invalid_value(prop: &str, resource: &str) -> Self {
        Self::bad_request(format!(
            "Invalid value specified for property '{prop}' of resource '{resource}'."
        ))
    }

    pub(crate) fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    pub(crate) fn denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }

    pub(crate) fn unauthenticated(message: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    }

    pub(crate) fn synced_object() -> Self {
        Self::bad_request(
            "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
        )
    }

    pub(crate) fn upn_conflict() -> Self {
        let msg =
            "Another object with the same value for property userPrincipalName already exists.";
        Self {
            details: vec![json!({
                "code": "ObjectConflict",
                "message": msg,
                "target": "userPrincipalName",
            })],
            ..Self::bad_request(msg)
        }
    }

    pub(crate) fn invalid_json() -> Self {
        Self::odata(
            "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
        )
    }

    pub(crate) fn body(&self) -> Value {
        let info = request_info();
        let mut error = json!({
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": info.request_id,
                "client-request-id": info.client_request_id,
            }
        });
        if !self.details.is_empty() {
            error["details"] = Value::Array(self.details.clone());
        }
        json!({ "error": error })
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(s));
        }
        resp
    }
}

/// The default body of an injected fault with this status.
pub(crate) fn fault_body(status: StatusCode) -> Value {
    let (code, message) = match status.as_u16() {
        429 => ("TooManyRequests", "Please retry again later."),
        503 => (
            "serviceNotAvailable",
            "The service is temporarily unavailable for maintenance or is overloaded. You may repeat the request after a delay.",
        ),
        504 => ("UnknownError", "Gateway timeout."),
        500 => ("generalException", "An unspecified error has occurred."),
        401 => (
            "InvalidAuthenticationToken",
            "Access token validation failure.",
        ),
        403 => (
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ),
        404 => ("Request_ResourceNotFound", "Resource does not exist."),
        _ => ("UnknownError", "An injected sandbox fault."),
    };
    let mut e = GraphError::new(status, code, message);
    if status == StatusCode::TOO_MANY_REQUESTS {
        e.details.clear();
    }
    let mut body = e.body();
    if status == StatusCode::TOO_MANY_REQUESTS {
        body["error"]["innerError"]["code"] = json!("429");
    }
    body
}
