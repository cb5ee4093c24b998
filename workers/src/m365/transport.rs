//! The request loop Graph and Exchange Online share: the tenant's gate and place, a token, the
//! correlation headers, one retry with a fresh token after a 401, and `Retry-After`.
//!
//! What is retried here, inside one attempt of a step:
//! - 429 and 503 (the service did not act on the request), once, after `Retry-After` (or 1 s
//!   without one) when that is short (`throttle::Config::max_inline_wait`); the tenant's gate
//!   closes for that long, so its other requests are handed back to the engine rather than
//!   sent, and the rest of the fleet is not held up;
//! - 504, 500, 502, and transport failures, only for reads: for a write the change may have been
//!   applied, so the error goes back to the op's caller, whose next attempt checks before it acts;
//! - 401, once, with a new token (the old one is dropped from the caches).
//!
//! Everything else is returned, classified ([`crate::m365::error`]).

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::m365::call::{CORRELATION_HEADER, Call, new_request_id};
use crate::m365::error::{Class, Error, Service, ServiceError};
use crate::m365::throttle::Throttle;
use crate::m365::token::{Resource, TokenClient, retry_after, transport_reason};

/// A raw answer.
#[derive(Debug)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) request_id: Option<String>,
    pub(crate) client_request_id: String,
    pub(crate) location: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Raw {
    pub(crate) fn json(&self) -> Option<Value> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        serde_json::from_slice(&self.body).ok()
    }
}

/// Turns an error answer into a [`ServiceError`] (each service has its own envelope).
pub(crate) type ParseError = fn(Service, &str, &Raw) -> ServiceError;

/// The shared part of the Graph and Exchange clients.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    pub(crate) http: reqwest::Client,
    pub(crate) tokens: TokenClient,
    pub(crate) throttle: std::sync::Arc<Throttle>,
    /// Tries per call (the first included).
    pub(crate) max_tries: u32,
}

/// One request to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing<'a> {
    pub(crate) service: Service,
    pub(crate) resource: Resource,
    pub(crate) method: Method,
    pub(crate) url: url::Url,
    /// `METHOD path` for messages (no host, no query).
    pub(crate) label: String,
    pub(crate) body: Option<&'a Value>,
    /// Safe to repeat after an answer we did not get (reads).
    pub(crate) idempotent: bool,
    pub(crate) headers: &'a [(&'static str, String)],
}

impl Transport {
    pub(crate) async fn send(
        &self,
        call: &Call,
        out: Outgoing<'_>,
        parse: ParseError,
    ) -> Result<Raw, Error> {
        let tenant = call.tenant();
        let inline = self.throttle.config().max_inline_wait;
        let mut refreshed = false;
        let mut waited = false;
        let mut tries = 0;
        loop {
            tries += 1;
            let last = tries >= self.max_tries;
            let place = self.throttle.enter(out.service, tenant).await?;
            let token = self
                .tokens
                .token(&call.conn, out.resource, call.grant)
                .await?;
            let request_id = new_request_id(call.correlation.as_ref());
            let mut req = self
                .http
                .request(out.method.clone(), out.url.clone())
                .bearer_auth(token.value.expose())
                .header("client-request-id", &request_id)
                .header("return-client-request-id", "true");
            if let Some(c) = &call.correlation {
                req = req.header(CORRELATION_HEADER, c.header());
            }
            for (k, v) in out.headers {
                req = req.header(*k, v);
            }
            if let Some(b) = out.body {
                req = req.json(b);
            }
            let sent = req.send().await;
            let raw = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    match resp.bytes().await {
                        Ok(body) => Ok(Raw {
                            status,
                            retry_after: retry_after(&headers),
                            request_id: header(&headers, "request-id"),
                            client_request_id: request_id.clone(),
                            location: header(&headers, "location"),
                            body: body.to_vec(),
                        }),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            drop(place);
            let raw = match raw {
                Ok(r) => r,
                Err(e) => {
                    let err = Error::Transport {
                        service: out.service,
                        request: out.label.clone(),
                        reason: format!(
                            "{} [client-request-id {request_id}]",
                            transport_reason(&e)
                        ),
                    };
                    if out.idempotent && !last {
                        tokio::time::sleep(backoff(tries)).await;
                        continue;
                    }
                    return Err(err);
                }
            };
            if (200..300).contains(&raw.status) {
                return Ok(raw);
            }
            if raw.status == 401 && !refreshed {
                refreshed = true;
                self.tokens
                    .invalidate(tenant, out.resource, call.grant, &token.value)
                    .await;
                continue;
            }
            let mut err = parse(out.service, &out.label, &raw);
            if raw.status == 403 && err.code == "Authorization_RequestDenied" {
                // The token carries the permissions of its day: once the tenant grants more (a
                // re-consent), the next attempt must not reuse it.
                self.tokens
                    .invalidate(tenant, out.resource, call.grant, &token.value)
                    .await;
            }
            if matches!(raw.status, 429 | 503 | 504) {
                let wait = raw.retry_after.unwrap_or_else(|| backoff(tries));
                err.retry_after = Some(wait);
                // The tenant's gate closes for everyone's requests, not only this one's.
                self.throttle.close(out.service, tenant, wait);
                let not_applied = matches!(raw.status, 429 | 503);
                if (not_applied || out.idempotent) && !last && !waited && wait <= inline {
                    waited = true;
                    tokio::time::sleep(wait).await;
                    continue;
                }
            } else if err.class == Class::Retryable && out.idempotent && !last {
                tokio::time::sleep(backoff(tries)).await;
                continue;
            }
            return Err(Error::Service(Box::new(err)));
        }
    }
}

/// 1 s, 2 s, 4 s, … (at most 30 s): the wait when the service names none.
fn backoff(tries: u32) -> Duration {
    Duration::from_secs(1 << tries.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}
