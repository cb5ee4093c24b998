//! The Microsoft Graph v1.0 client: requests with the tenant's token, errors classified from
//! status and `error.code`, paging through `@odata.nextLink`, and `$batch`.
//!
//! Paths are relative to the configured base (`https://graph.microsoft.com/v1.0`, or the
//! sandbox's `…/graph/v1.0`). A `nextLink` is followed only when it points under that base, so
//! the bearer token never goes anywhere else.
//!
//! `$batch` sends at most 20 requests per batch (Graph's limit); a request whose `dependsOn`
//! names a request of an earlier batch runs only if that one succeeded (else it is answered 424
//! here, as Graph would). Inner requests answered 429, 503 or 504 are sent again (with the
//! requests that depend on them) after the longest `Retry-After` among them, a few times; every
//! other inner answer is returned as it came, for the caller to judge per request.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::m365::call::Call;
use crate::m365::error::{Class, Error, Service, ServiceError, classify_graph};
use crate::m365::token::Resource;
use crate::m365::transport::{Outgoing, Raw, Transport};

/// Graph's limit of requests per `$batch`.
pub const BATCH_LIMIT: usize = 20;

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status (2xx).
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<Value>,
    /// The `Location` header (async operations).
    pub location: Option<String>,
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// Unique within the batch.
    pub id: String,
    /// The method.
    pub method: Method,
    /// Relative to the base: `/users/…`.
    pub url: String,
    /// The JSON body.
    pub body: Option<Value>,
    /// Ids of requests that must succeed first.
    pub depends_on: Vec<String>,
}

impl BatchRequest {
    /// A request without dependencies.
    pub fn new(
        id: impl Into<String>,
        method: Method,
        url: impl Into<String>,
        body: Option<Value>,
    ) -> Self {
        Self {
            id: id.into(),
            method,
            url: url.into(),
            body,
            depends_on: Vec::new(),
        }
    }
}

/// One answer of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswer {
    /// The request's id.
    pub id: String,
    /// Its status.
    pub status: u16,
    /// Its body.
    pub body: Option<Value>,
    /// Its `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl BatchAnswer {
    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The answer as a classified error (`None` when it succeeded).
    pub fn error(&self, request: &str) -> Option<Error> {
        if self.ok() {
            return None;
        }
        let (code, message, inner) = graph_envelope(self.body.as_ref(), self.status);
        Some(Error::Service(Box::new(ServiceError {
            service: Service::Graph,
            request: request.to_owned(),
            status: self.status,
            class: classify_graph(self.status, &code),
            code,
            inner_code: inner,
            exception: None,
            message,
            retry_after: self.retry_after,
            request_id: None,
            client_request_id: None,
        })))
    }
}

/// The Graph client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GraphClient {
    base: url::Url,
    transport: Transport,
    batch_tries: u32,
}

/// `code`, `message` and `innerError.code` of a Graph error body.
fn graph_envelope(body: Option<&Value>, status: u16) -> (String, String, Option<String>) {
    let e = body.and_then(|b| b.get("error"));
    let code = e
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("HTTP{status}"), str::to_owned);
    let message = e
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("(no message)")
        .to_owned();
    let inner = e
        .and_then(|e| e.get("innerError").or_else(|| e.get("innererror")))
        .and_then(|i| i.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    (code, message, inner)
}

fn parse_error(service: Service, request: &str, raw: &Raw) -> ServiceError {
    let body = raw.json();
    let (code, message, inner) = graph_envelope(body.as_ref(), raw.status);
    ServiceError {
        service,
        request: request.to_owned(),
        status: raw.status,
        class: classify_graph(raw.status, &code),
        code,
        inner_code: inner,
        exception: None,
        message,
        retry_after: raw.retry_after,
        request_id: raw.request_id.clone(),
        client_request_id: Some(raw.client_request_id.clone()),
    }
}

impl GraphClient {
    pub(crate) fn new(base: url::Url, transport: Transport) -> Self {
        Self {
            base,
            transport,
            batch_tries: 4,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    /// `{base}{path}`; `path` starts with `/` and may carry a query.
    fn url(&self, path: &str) -> Result<url::Url, Error> {
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        url::Url::parse(&joined).map_err(|e| Error::Decode {
            service: Service::Graph,
            request: path.to_owned(),
            reason: format!("not a valid URL: {e}"),
        })
    }

    /// The reference Graph's `$ref` bodies name an object by.
    pub fn directory_object(&self, id: &str) -> Value {
        json!({ "@odata.id": format!("{}/directoryObjects/{id}", self.base.as_str().trim_end_matches('/')) })
    }

    async fn raw(
        &self,
        call: &Call,
        method: Method,
        url: url::Url,
        body: Option<&Value>,
        headers: &[(&'static str, String)],
    ) -> Result<Answer, Error> {
        let label = format!("{method} {}", url.path());
        let idempotent = matches!(method, Method::GET | Method::HEAD);
        let raw = self
            .transport
            .send(
                call,
                Outgoing {
                    service: Service::Graph,
                    resource: Resource::Graph,
                    method,
                    url,
                    label: label.clone(),
                    body,
                    idempotent,
                    headers,
                },
                parse_error,
            )
            .await?;
        let parsed = raw.json();
        if parsed.is_none() && !raw.body.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::Decode {
                service: Service::Graph,
                request: label,
                reason: "the body is not JSON".to_owned(),
            });
        }
        Ok(Answer {
            status: raw.status,
            body: parsed,
            location: raw.location,
        })
    }

    /// Sends one request.
    pub async fn send(
        &self,
        call: &Call,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, Error> {
        let url = self.url(path)?;
        self.raw(call, method, url, body, &[]).await
    }

    /// GETs an object.
    pub async fn get(&self, call: &Call, path: &str) -> Result<Value, Error> {
        Ok(self
            .send(call, Method::GET, path, None)
            .await?
            .body
            .unwrap_or(Value::Null))
    }

    /// GETs an object; `None` when Graph answers 404.
    pub async fn get_opt(&self, call: &Call, path: &str) -> Result<Option<Value>, Error> {
        match self.get(call, path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.service_error().is_some_and(|s| s.status == 404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GETs every item of a collection, following `@odata.nextLink`.
    pub async fn get_all(&self, call: &Call, path: &str) -> Result<Vec<Value>, Error> {
        const MAX_PAGES: usize = 10_000;
        let mut items = Vec::new();
        let mut url = self.url(path)?;
        for _ in 0..MAX_PAGES {
            let page = self
                .raw(call, Method::GET, url.clone(), None, &[])
                .await?
                .body
                .unwrap_or(Value::Null);
            match page.get("value") {
                Some(Value::Array(v)) => items.extend(v.iter().cloned()),
                _ => {
                    return Err(Error::Decode {
                        service: Service::Graph,
                        request: format!("GET {}", url.path()),
                        reason: "a collection answer without `value`".to_owned(),
                    });
                }
            }
            let Some(next) = page.get("@odata.nextLink").and_then(Value::as_str) else {
                return Ok(items);
            };
            let next = url::Url::parse(next).map_err(|e| Error::Decode {
                service: Service::Graph,
                request: format!("GET {}", url.path()),
                reason: format!("`@odata.nextLink` is not a URL: {e}"),
            })?;
            if next.origin() != self.base.origin()
                || !next
                    .path()
                    .starts_with(self.base.path().trim_end_matches('/'))
            {
                return Err(Error::Decode {
                    service: Service::Graph,
                    request: format!("GET {}", url.path()),
                    reason: format!(
                        "`@odata.nextLink` points outside {} (to {}); not following it with the tenant's token",
                        self.base,
                        next.origin().ascii_serialization()
                    ),
                });
            }
            url = next;
        }
        Err(Error::Decode {
            service: Service::Graph,
            request: format!("GET {path}"),
            reason: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// POSTs.
    pub async fn post(&self, call: &Call, path: &str, body: &Value) -> Result<Answer, Error> {
        self.send(call, Method::POST, path, Some(body)).await
    }

    /// PATCHes.
    pub async fn patch(&self, call: &Call, path: &str, body: &Value) -> Result<Answer, Error> {
        self.send(call, Method::PATCH, path, Some(body)).await
    }

    /// DELETEs.
    pub async fn delete(&self, call: &Call, path: &str) -> Result<Answer, Error> {
        self.send(call, Method::DELETE, path, None).await
    }

    /// Sends `requests` through `$batch` (as many batches as needed) and returns every answer,
    /// in the order of `requests`.
    pub async fn batch(
        &self,
        call: &Call,
        requests: &[BatchRequest],
    ) -> Result<Vec<BatchAnswer>, Error> {
        let mut seen = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            if seen.insert(r.id.to_ascii_lowercase(), i).is_some() {
                return Err(Error::Decode {
                    service: Service::Graph,
                    request: "POST /$batch".to_owned(),
                    reason: format!("two requests share the id `{}`", r.id),
                });
            }
        }
        let mut done: BTreeMap<usize, BatchAnswer> = BTreeMap::new();
        for chunk in chunks(requests) {
            self.run_chunk(call, requests, &chunk, &mut done).await?;
        }
        Ok(done.into_values().collect())
    }

    async fn run_chunk(
        &self,
        call: &Call,
        all: &[BatchRequest],
        chunk: &[usize],
        done: &mut BTreeMap<usize, BatchAnswer>,
    ) -> Result<(), Error> {
        let index_of = |id: &str| all.iter().position(|r| r.id.eq_ignore_ascii_case(id));
        let mut pending: Vec<usize> = chunk.to_vec();
        for round in 0..self.batch_tries {
            let mut body = Vec::new();
            let mut sent = Vec::new();
            for &i in &pending {
                let r = &all[i];
                // Dependencies already answered (earlier batch or round) are resolved here.
                let mut deps = Vec::new();
                let mut failed = false;
                for d in &r.depends_on {
                    match index_of(d).and_then(|j| done.get(&j)) {
                        Some(a) if a.ok() => {}
                        Some(_) => failed = true,
                        None => deps.push(d.clone()),
                    }
                }
                if failed {
                    done.insert(i, failed_dependency(&r.id));
                    continue;
                }
                let mut item = json!({"id": r.id, "method": r.method.as_str(), "url": r.url});
                if let Some(b) = &r.body {
                    item["body"] = b.clone();
                    item["headers"] = json!({"Content-Type": "application/json"});
                }
                if !deps.is_empty() {
                    item["dependsOn"] = json!(deps);
                }
                body.push(item);
                sent.push(i);
            }
            if sent.is_empty() {
                return Ok(());
            }
            let answer = self
                .send(
                    call,
                    Method::POST,
                    "/$batch",
                    Some(&json!({ "requests": body })),
                )
                .await?;
            let responses = answer
                .body
                .as_ref()
                .and_then(|b| b.get("responses"))
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| Error::Decode {
                    service: Service::Graph,
                    request: "POST /$batch".to_owned(),
                    reason: "no `responses`".to_owned(),
                })?;
            let mut by_id: HashMap<String, BatchAnswer> = HashMap::new();
            for r in responses {
                let id = r
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let status = r
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or(0);
                let retry_after = r
                    .get("headers")
                    .and_then(Value::as_object)
                    .and_then(|h| {
                        h.iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                            .and_then(|(_, v)| {
                                v.as_u64()
                                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                            })
                    })
                    .map(Duration::from_secs);
                by_id.insert(
                    id.to_ascii_lowercase(),
                    BatchAnswer {
                        id,
                        status,
                        body: r.get("body").cloned().filter(|b| !b.is_null()),
                        retry_after,
                    },
                );
            }
            let throttled = |a: &BatchAnswer| matches!(a.status, 429 | 503 | 504);
            let last = round + 1 >= self.batch_tries;
            let mut again = Vec::new();
            let mut wait = Duration::ZERO;
            for &i in &sent {
                let r = &all[i];
                let Some(a) = by_id.remove(&r.id.to_ascii_lowercase()) else {
                    return Err(Error::Decode {
                        service: Service::Graph,
                        request: "POST /$batch".to_owned(),
                        reason: format!("no answer for request `{}`", r.id),
                    });
                };
                if throttled(&a) && !last {
                    wait = wait.max(a.retry_after.unwrap_or(Duration::from_secs(1)));
                    again.push(i);
                } else {
                    done.insert(i, a);
                }
            }
            // A 424 whose dependency is sent again goes again with it.
            let retried: Vec<String> = again
                .iter()
                .map(|&i| all[i].id.to_ascii_lowercase())
                .collect();
            for &i in &sent {
                if done.get(&i).is_some_and(|a| a.status == 424)
                    && all[i]
                        .depends_on
                        .iter()
                        .any(|d| retried.contains(&d.to_ascii_lowercase()))
                    && !last
                {
                    done.remove(&i);
                    again.push(i);
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            if wait > self.transport.throttle.config().max_inline_wait {
                // Too long to wait inside an attempt: answer what is left as throttled.
                for i in again {
                    done.insert(
                        i,
                        BatchAnswer {
                            id: all[i].id.clone(),
                            status: 429,
                            body: None,
                            retry_after: Some(wait),
                        },
                    );
                }
                return Ok(());
            }
            self.transport
                .throttle
                .close(Service::Graph, call.tenant(), wait);
            tokio::time::sleep(wait).await;
            again.sort_unstable();
            pending = again;
        }
        Ok(())
    }
}

fn failed_dependency(id: &str) -> BatchAnswer {
    BatchAnswer {
        id: id.to_owned(),
        status: 424,
        body: Some(json!({"error": {"code": "BadRequest", "message": "Failed dependency."}})),
        retry_after: None,
    }
}

/// Splits `requests` into batches of at most [`BATCH_LIMIT`], in order.
fn chunks(requests: &[BatchRequest]) -> Vec<Vec<usize>> {
    (0..requests.len())
        .collect::<Vec<_>>()
        .chunks(BATCH_LIMIT)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Classifies a batch answer's class (for callers deciding per item).
pub fn answer_class(a: &BatchAnswer) -> Option<Class> {
    a.error("").map(|e| e.class())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_twenty() {
        let reqs: Vec<BatchRequest> = (0..45)
            .map(|i| BatchRequest::new(i.to_string(), Method::GET, "/users", None))
            .collect();
        let c = chunks(&reqs);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![20, 20, 5]);
        assert_eq!(c[2], vec![40, 41, 42, 43, 44]);
    }

    #[test]
    fn a_batch_answer_is_classified_like_a_request() {
        let a = BatchAnswer {
            id: "1".into(),
            status: 404,
            body: Some(json!({"error": {"code": "Request_ResourceNotFound", "message": "gone"}})),
            retry_after: None,
        };
        let e = a.error("GET /users/x").unwrap();
        assert!(e.is_not_found());
        assert_eq!(e.code().as_deref(), Some("Request_ResourceNotFound"));
        assert_eq!(answer_class(&a), Some(Class::Terminal));
    }
}
