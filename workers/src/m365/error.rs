//! What can go wrong talking to Microsoft 365, and whether another attempt may succeed.
//!
//! Classification reads the HTTP status and the service's error *code* (Graph's `error.code`,
//! Exchange's exception type, the identity platform's `AADSTS` number), never the message text,
//! and keeps the code so a run's history and a technician can see it.
//!
//! | service | retryable | terminal |
//! |---|---|---|
//! | Graph | 429 `TooManyRequests`, 503 `serviceNotAvailable`, 504, 502, 509, 500 (`generalException`, `UnknownError`), 412 (`PreconditionFailed`: read again), 423 (`Locked`); `activityLimitReached` and `Request_ThrottledTemporarily` whatever the status | every other 4xx: 400 `Request_BadRequest`/`BadRequest`, 401 `InvalidAuthenticationToken` (after one retry with a fresh token), 403 `Authorization_RequestDenied`, 404 `Request_ResourceNotFound`, 409 |
//! | Exchange Online | 429, 5xx | 400/404 cmdlet errors (the exception type is kept as the code), 401 after one retry with a fresh token, 403 |
//! | identity platform | see [`crate::m365::token`] | |
//! | transport | timeouts, connection refused or reset | — |

use std::fmt;
use std::time::Duration;

use crate::m365::credentials;
use crate::m365::token::TokenError;
use crate::op::OpError;

/// Which Microsoft service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Microsoft Graph.
    Graph,
    /// The Exchange Online admin API.
    Exchange,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Graph => "Microsoft Graph",
            Self::Exchange => "Exchange Online",
        })
    }
}

/// Whether another attempt may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Another attempt may succeed (throttling, an outage, a timeout).
    Retryable,
    /// It will not (bad input, not allowed, not found).
    Terminal,
}

/// An error answer from Graph or Exchange Online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// Which service.
    pub service: Service,
    /// `METHOD path` (no query string, no host).
    pub request: String,
    /// The HTTP status.
    pub status: u16,
    /// Graph's `error.code`, or Exchange's `error.code`.
    pub code: String,
    /// Graph's `error.innerError.code` (e.g. `429` for throttling), when present.
    pub inner_code: Option<String>,
    /// Exchange's exception type (`Microsoft.Exchange…ManagementObjectNotFoundException`), when
    /// the error is a cmdlet's.
    pub exception: Option<String>,
    /// The service's message.
    pub message: String,
    /// `Retry-After`, when the service sent one.
    pub retry_after: Option<Duration>,
    /// The service's `request-id` (for Microsoft support).
    pub request_id: Option<String>,
    /// Our `client-request-id`.
    pub client_request_id: Option<String>,
    /// Retryable or terminal, decided from status and code.
    pub class: Class,
}

impl ServiceError {
    /// The exception's short name (`ManagementObjectNotFoundException`), for Exchange errors.
    pub fn exception_name(&self) -> Option<&str> {
        self.exception
            .as_deref()
            .map(|e| e.rsplit('.').next().unwrap_or(e))
    }

    /// The code a run records: the exception's short name for a cmdlet error, else the code.
    pub fn recorded_code(&self) -> &str {
        self.exception_name().unwrap_or(&self.code)
    }

    /// Whether this is Graph's "not found".
    pub fn is_not_found(&self) -> bool {
        self.status == 404
            || self.exception_name() == Some("ManagementObjectNotFoundException")
            || matches!(
                self.code.as_str(),
                "Request_ResourceNotFound" | "ResourceNotFound" | "itemNotFound"
            )
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answered {} {} to {}: {}",
            self.service,
            self.status,
            self.recorded_code(),
            self.request,
            self.message
        )?;
        if let Some(r) = self.retry_after {
            write!(f, " (retry after {} s)", r.as_secs())?;
        }
        match (&self.request_id, &self.client_request_id) {
            (Some(r), Some(c)) => write!(f, " [request-id {r}, client-request-id {c}]"),
            (None, Some(c)) => write!(f, " [client-request-id {c}]"),
            (Some(r), None) => write!(f, " [request-id {r}]"),
            (None, None) => Ok(()),
        }
    }
}

/// A connector error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service answered with an error.
    #[error("{0}")]
    Service(Box<ServiceError>),
    /// No usable answer: a timeout, a refused or reset connection.
    #[error("{service} did not answer {request}: {reason}")]
    Transport {
        /// Which service.
        service: Service,
        /// `METHOD path`.
        request: String,
        /// What happened.
        reason: String,
    },
    /// The request was not sent: the service is throttling this tenant for a while yet.
    #[error(
        "{service} is throttling tenant {tenant}; the next request may go in {} s",
        retry_after.as_secs().max(1)
    )]
    Throttled {
        /// Which service.
        service: Service,
        /// The tenant.
        tenant: String,
        /// How long until the tenant's gate opens.
        retry_after: Duration,
    },
    /// The answer could not be read.
    #[error("{service} answered {request} with something unreadable: {reason}")]
    Decode {
        /// Which service.
        service: Service,
        /// `METHOD path`.
        request: String,
        /// What was wrong.
        reason: String,
    },
    /// No access token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The company has no Microsoft 365 tenant connection.
    #[error(
        "company `{company}` has no Microsoft 365 tenant connection; connect it (`steward tenants connect {company}`) and retry the step"
    )]
    NotConnected {
        /// The company.
        company: String,
    },
    /// The credential store failed.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    /// Redis (the token cache and the prior-state record) failed.
    #[error("Redis is unavailable: {0}")]
    Redis(String),
}

impl Error {
    /// Retryable or terminal.
    pub fn class(&self) -> Class {
        match self {
            Self::Service(e) => e.class,
            Self::Transport { .. } | Self::Throttled { .. } | Self::Redis(_) => Class::Retryable,
            Self::Decode { .. } | Self::NotConnected { .. } => Class::Terminal,
            Self::Token(e) => e.class(),
            Self::Credentials(credentials::Error::Unavailable(_)) => Class::Retryable,
            Self::Credentials(credentials::Error::Unusable { .. }) => Class::Terminal,
        }
    }

    /// The service's code, if there is one.
    pub fn code(&self) -> Option<String> {
        match self {
            Self::Service(e) => Some(e.recorded_code().to_owned()),
            Self::Throttled { .. } => Some("TooManyRequests".to_owned()),
            Self::Token(e) => e.code(),
            Self::Transport { .. }
            | Self::Decode { .. }
            | Self::NotConnected { .. }
            | Self::Credentials(_)
            | Self::Redis(_) => None,
        }
    }

    /// How long the service asked us to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Service(e) => e.retry_after,
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            Self::Token(e) => e.retry_after(),
            Self::Transport { .. }
            | Self::Decode { .. }
            | Self::NotConnected { .. }
            | Self::Credentials(_)
            | Self::Redis(_) => None,
        }
    }

    /// The service's error, when it answered with one.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            Self::Service(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the service said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.service_error().is_some_and(ServiceError::is_not_found)
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        let code = e.code();
        let message = e.to_string();
        match e.class() {
            Class::Retryable => OpError::Retryable {
                message,
                code,
                retry_after: e.retry_after(),
            },
            Class::Terminal => OpError::Terminal { message, code },
        }
    }
}

/// Graph: retryable or terminal, from the status and `error.code`.
pub fn classify_graph(status: u16, code: &str) -> Class {
    if matches!(
        code,
        "TooManyRequests" | "activityLimitReached" | "Request_ThrottledTemporarily"
    ) {
        return Class::Retryable;
    }
    match status {
        429 | 500 | 502 | 503 | 504 | 509 | 412 | 423 => Class::Retryable,
        _ => Class::Terminal,
    }
}

/// Exchange Online: retryable or terminal, from the status (cmdlet errors are terminal; the
/// ops decide what "not found" or "already a member" mean to them).
pub fn classify_exchange(status: u16) -> Class {
    match status {
        429 | 500 | 502 | 503 | 504 => Class::Retryable,
        _ => Class::Terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_are_classified_by_status_and_code() {
        assert_eq!(classify_graph(429, "TooManyRequests"), Class::Retryable);
        assert_eq!(classify_graph(503, "serviceNotAvailable"), Class::Retryable);
        assert_eq!(classify_graph(504, "UnknownError"), Class::Retryable);
        assert_eq!(classify_graph(500, "generalException"), Class::Retryable);
        assert_eq!(
            classify_graph(400, "activityLimitReached"),
            Class::Retryable
        );
        assert_eq!(classify_graph(400, "Request_BadRequest"), Class::Terminal);
        assert_eq!(
            classify_graph(403, "Authorization_RequestDenied"),
            Class::Terminal
        );
        assert_eq!(
            classify_graph(404, "Request_ResourceNotFound"),
            Class::Terminal
        );
        assert_eq!(classify_exchange(400), Class::Terminal);
        assert_eq!(classify_exchange(503), Class::Retryable);
    }

    #[test]
    fn an_op_error_keeps_the_code_and_the_wait() {
        let e = Error::Service(Box::new(ServiceError {
            service: Service::Exchange,
            request: "POST /adminapi/beta/t/InvokeCommand Set-Mailbox".into(),
            status: 404,
            code: "NotFound".into(),
            inner_code: None,
            exception: Some(
                "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException".into(),
            ),
            message: "Error executing cmdlet".into(),
            retry_after: None,
            request_id: Some("r".into()),
            client_request_id: Some("c".into()),
            class: Class::Terminal,
        }));
        assert!(e.is_not_found());
        let op: OpError = e.into();
        assert_eq!(
            op,
            OpError::Terminal {
                message: "Exchange Online answered 404 ManagementObjectNotFoundException to POST /adminapi/beta/t/InvokeCommand Set-Mailbox: Error executing cmdlet [request-id r, client-request-id c]".into(),
                code: Some("ManagementObjectNotFoundException".into()),
            }
        );
        let t: OpError = Error::Throttled {
            service: Service::Graph,
            tenant: "t".into(),
            retry_after: Duration::from_secs(7),
        }
        .into();
        assert!(
            matches!(t, OpError::Retryable { retry_after: Some(d), code: Some(ref c), .. }
            if d == Duration::from_secs(7) && c == "TooManyRequests")
        );
    }
}
