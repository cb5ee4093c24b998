//! Extractors whose rejections answer in the API's error shape, and the caller's identity.

use aide::OperationInput;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as ApiResponse, StatusCode as ApiStatus};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use steward_schemas::{CompanyId, Role, Technician, TokenInfo};

use super::ApiState;
use super::error::ApiError;

/// A JSON body; a bad one is answered with the field at fault.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.starts_with("application/json")
                    || (ct.starts_with("application/") && ct.contains("+json"))
            });
        let bytes = read_limited(req, super::BODY_LIMIT).await?;
        // An empty body counts as `{}`, so `POST …/resume` needs no body.
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        if !is_json && bytes != b"{}" {
            return Err(ApiError::unsupported_media("application/json"));
        }
        match axum::Json::<T>::from_bytes(bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// Reads a body up to `limit` bytes. Past it, keeps reading (and dropping) up to a hard cap so
/// the client finishes sending and receives the 413, rather than a reset connection.
pub(crate) async fn read_limited(req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = req.into_body().into_data_stream();
    let mut body = Vec::new();
    let mut total = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("the body could not be read: {e}")))?;
        total += chunk.len();
        if total <= limit {
            body.extend_from_slice(&chunk);
        } else if total > 16 * limit {
            break;
        }
    }
    if total > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(body)
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::unsupported_media("application/json"),
        JsonRejection::JsonDataError(e) => {
            // serde_path_to_error's text is "path: message"; name the field.
            let text = e.body_text();
            let detail = text
                .split_once(": ")
                .map_or(text.as_str(), |(_, d)| d)
                .to_owned();
            let named = |marker: &str| {
                detail.find(marker).and_then(|i| {
                    let rest = &detail[i + marker.len()..];
                    rest.find('`').map(|j| rest[..j].to_owned())
                })
            };
            match detail.split_once(": ") {
                Some((path, message)) if !path.contains(' ') => {
                    ApiError::invalid(path, message, "see the request schema in /v1/openapi.json")
                }
                _ => {
                    let field = named("missing field `")
                        .or_else(|| named("unknown field `"))
                        .unwrap_or_else(|| "(body)".to_owned());
                    ApiError::invalid(field, detail, "see the request schema in /v1/openapi.json")
                }
            }
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))
                .with_fix("send a JSON object")
        }
        JsonRejection::BytesRejection(e)
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
        {
            ApiError::too_large(super::BODY_LIMIT)
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

impl<T: JsonSchema> OperationInput for ApiJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        axum::Json::<T>::operation_input(ctx, operation);
    }

    fn inferred_early_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<ApiStatus>, ApiResponse)> {
        <ApiError as aide::OperationOutput>::inferred_responses(ctx, operation)
    }
}

/// Path parameters; a malformed one (a bad run id) is a 400 naming it.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(ApiError::bad_request(e.body_text()).with_field("(path)"))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

impl<T: JsonSchema> OperationInput for ApiPath<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Path::<T>::operation_input(ctx, operation);
    }
}

/// Query parameters; a bad one is a 400 naming it.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request(e.body_text()).with_field("(query)"))
            }
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

impl<T: JsonSchema> OperationInput for ApiQuery<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Query::<T>::operation_input(ctx, operation);
    }
}

/// The authenticated technician.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub tech: Technician,
    /// With which token.
    pub token: TokenInfo,
}

impl Caller {
    /// Whether they may act on `company`.
    pub fn may_access(&self, company: &CompanyId) -> bool {
        self.tech.role == Role::Admin || self.tech.may_access(company)
    }

    /// Refuses unless they may act on `company`. The refusal names neither the company nor
    /// whether it exists (the same answer for one that does not).
    pub fn require_company(&self, company: &CompanyId) -> Result<(), ApiError> {
        if self.may_access(company) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} may not act on this company, or it does not exist; an admin can add it to their companies",
                self.tech.email
            )))
        }
    }

    /// Refuses unless they are an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.tech.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "only admins may do this; {} is a technician",
                self.tech.email
            )))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("no credentials"))?;
        let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
        })?;
        let (tech, token) = state.auth.authenticate(token).await?;
        Ok(Self { tech, token })
    }
}

/// The token of an `Authorization: Bearer <token>` header value. The scheme is matched in any
/// case (RFC 9110 §11.1: auth schemes are case-insensitive); `None` for another scheme or no token.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(char::is_whitespace)?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The authenticated technician, who must be an admin (checked before the body is read, so a
/// technician learns nothing from validation errors).
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require_admin()?;
        Ok(Self(caller))
    }
}

impl OperationInput for Admin {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Caller::operation_input(ctx, operation);
    }
}

impl OperationInput for Caller {
    fn operation_input(_ctx: &mut GenContext, operation: &mut Operation) {
        let requirement = indexmap::IndexMap::from_iter([("bearer".to_owned(), Vec::new())]);
        if !operation.security.contains(&requirement) {
            operation.security.push(requirement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_matched_in_any_case() {
        for (header, want) in [
            ("Bearer stw_x", Some("stw_x")),
            ("bearer stw_x", Some("stw_x")),
            ("BEARER stw_x", Some("stw_x")),
            ("bEaReR  stw_x ", Some("stw_x")),
            ("Basic stw_x", None),
            ("Bearer", None),
            ("Bearer   ", None),
            ("stw_x", None),
        ] {
            assert_eq!(bearer_token(header), want, "{header:?}");
        }
    }
}
