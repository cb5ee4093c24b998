//! The shared HTTP plumbing: the router that mounts every service under its prefix, the
//! request context (correlation header, request ids), and the fault-injection middleware.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::ledger::{CORRELATION_HEADER, Correlation, Mutation};

pub(crate) type AppState = Arc<Shared>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .nest("/graph", crate::graph::router(shared.clone()))
        .nest("/login", crate::identity::router())
        .nest("/outlook", crate::exchange::router())
        .nest("/datto", crate::datto::router())
        .nest("/autotask", crate::autotask::router())
        .nest("/connectwise", crate::connectwise::router())
        .nest("/halo", crate::halo::router())
        .nest("/admin", crate::admin::router())
        .fallback(root_fallback)
        .layer(middleware::from_fn_with_state(shared.clone(), fault_layer))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            request_context,
        ))
        .with_state(shared)
}

async fn root_fallback(OriginalUri(uri): OriginalUri) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "error": "not_found",
            "message": format!(
                "no sandbox service at {}; prefixes are /graph /login /outlook /datto /autotask /connectwise /halo /admin",
                uri.path()
            )
        })),
    )
        .into_response()
}

/// Which simulated service a path belongs to (decides the error envelope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Graph,
    Login,
    Outlook,
    Datto,
    Autotask,
    Admin,
    Other,
}

impl Service {
    pub(crate) fn of(path: &str) -> Self {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        match first {
            "graph" => Self::Graph,
            "login" => Self::Login,
            "outlook" => Self::Outlook,
            "datto" => Self::Datto,
            "autotask" => Self::Autotask,
            "admin" => Self::Admin,
            _ => Self::Other,
        }
    }
}

/// Per-request ids, reachable from `IntoResponse` impls (which can't see the request).
#[derive(Debug, Clone)]
pub(crate) struct RequestInfo {
    pub(crate) request_id: String,
    pub(crate) client_request_id: String,
}

tokio::task_local! {
    static REQUEST: RequestInfo;
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

pub(crate) fn request_info() -> RequestInfo {
    REQUEST.try_with(Clone::clone).unwrap_or_else(|_| {
        let id = next_request_id();
        RequestInfo {
            request_id: id.clone(),
            client_request_id: id,
        }
    })
}

fn next_request_id() -> String {
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::SeqCst);
    crate::ids::guid(0x5eed, &["request", &n.to_string()])
}

/// The origin (`scheme://host[:port][/prefix]`) clients use to reach the sandbox, for every
/// absolute URL it writes. In order: the configured public URL; the first hop of a `Forwarded`
/// header (RFC 7239 `proto=`, `host=`); `X-Forwarded-Proto` / `X-Forwarded-Host`; the `Host`
/// header (HTTP/2's `:authority`, which arrives in the URI) with the listener's own scheme. Forwarding headers are trusted from anyone: the sandbox
/// is a test double, not a security boundary.
#[derive(Debug, Clone)]
pub(crate) struct Origin(pub(crate) String);

pub(crate) fn origin_of(
    public_url: Option<&str>,
    https: bool,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> String {
    if let Some(u) = public_url {
        return u.to_owned();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    // `Forwarded: for=1.2.3.4;proto=https;host=example.com, for=…`: the first hop is the client's.
    let mut fwd_proto = None;
    let mut fwd_host = None;
    if let Some(first) = header("forwarded").and_then(|f| f.split(',').next()) {
        for pair in first.split(';') {
            if let Some((k, v)) = pair.split_once('=') {
                let v = v.trim().trim_matches('"').to_owned();
                match k.trim().to_ascii_lowercase().as_str() {
                    "proto" => fwd_proto = Some(v),
                    "host" => fwd_host = Some(v),
                    _ => {}
                }
            }
        }
    }
    let first_of = |name: &str| {
        header(name)
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
    };
    let proto = fwd_proto
        .or_else(|| first_of("x-forwarded-proto"))
        .filter(|p| p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https"))
        .map(|p| p.to_ascii_lowercase())
        .unwrap_or_else(|| if https { "https" } else { "http" }.to_owned());
    let valid_host =
        |h: &String| !h.contains(['/', '?', '#', '@']) && h.chars().all(|c| c.is_ascii_graphic());
    let host = [
        fwd_host,
        first_of("x-forwarded-host"),
        header("host").map(str::to_owned),
        authority.map(str::to_owned),
    ]
    .into_iter()
    .flatten()
    .find(valid_host)
    .unwrap_or_else(|| "127.0.0.1".to_owned());
    format!("{proto}://{host}")
}

async fn request_context(State(shared): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = next_request_id();
    // The identity platform also takes the correlation id as a query parameter (MSAL Node sends
    // it there); the header wins when both are given.
    let from_query = || {
        (Service::of(req.uri().path()) == Service::Login)
            .then(|| {
                query_pairs(req.uri().query())
                    .into_iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("client-request-id"))
                    .map(|(_, v)| v)
            })
            .flatten()
            .filter(|v| !v.is_empty())
    };
    let client_request_id = req
        .headers()
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(from_query)
        .unwrap_or_else(|| request_id.clone());
    let origin = origin_of(
        shared.public_url.as_deref(),
        shared.https.load(Ordering::SeqCst),
        req.headers(),
        req.uri().authority().map(|a| a.as_str()),
    );
    req.extensions_mut().insert(Origin(origin));
    let info = RequestInfo {
        request_id: request_id.clone(),
        client_request_id: client_request_id.clone(),
    };
    let span = tracing::debug_span!(
        "sandbox.request",
        http.method = %req.method(),
        http.path = %req.uri().path(),
        http.status = tracing::field::Empty,
        request.id = %request_id,
    );
    let mut resp =
        tracing::Instrument::instrument(REQUEST.scope(info, next.run(req)), span.clone()).await;
    span.record("http.status", resp.status().as_u16());
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&client_request_id) {
        resp.headers_mut().insert("client-request-id", v);
    }
    resp
}

/// A bug in a handler must not drop the connection: answer 500 in the service's envelope,
/// saying plainly that it is the sandbox's bug (not an injected fault, not the real service's
/// hiccup), and log it once. (The state mutex recovers from poisoning in `Shared::lock`.)
async fn catch_panic(req: Request, next: Next) -> Response {
    use futures::FutureExt as _;
    let service = Service::of(req.uri().path());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match std::panic::AssertUnwindSafe(next.run(req))
        .catch_unwind()
        .await
    {
        Ok(resp) => resp,
        Err(payload) => {
            let panic = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%method, %path, %panic, "sandbox handler panicked");
            bug_response(service, method.as_str(), &path)
        }
    }
}

/// The 500 for a handler that panicked, in the service's own envelope.
fn bug_response(service: Service, method: &str, path: &str) -> Response {
    let message =
        format!("sandbox bug: the handler for {method} {path} panicked, see the sandbox's log");
    let code = StatusCode::INTERNAL_SERVER_ERROR;
    let body = match service {
        Service::Graph => crate::graph::error::GraphError::new(code, "sandboxBug", &message).body(),
        Service::Login => {
            crate::identity::aad_error_body("server_error", 50000, &message, chrono::Utc::now())
        }
        Service::Outlook => json!({"error": {"code": "SandboxBug", "message": message}}),
        Service::Datto => json!({
            "timestamp": chrono::Utc::now().timestamp_millis(),
            "status": 500,
            "error": "Internal Server Error",
            "message": message,
            "path": path,
        }),
        Service::Autotask => json!({"errors": [message]}),
        Service::Admin | Service::Other => json!({"error": "sandbox_bug", "message": message}),
    };
    (code, axum::Json(body)).into_response()
}

async fn fault_layer(State(shared): State<AppState>, req: Request, next: Next) -> Response {
    // The first request starts the agent and the webhook sender, so a router mounted in someone
    // else's server (without `Sandbox::serve`) still runs jobs and sends webhooks.
    shared.ensure_workers();
    let path = req.uri().path().to_owned();
    let service = Service::of(&path);
    if matches!(service, Service::Admin | Service::Other) {
        return next.run(req).await;
    }
    let action = {
        let (mut st, _) = shared.lock();
        st.faults.decide(req.method().as_str(), &path)
    };
    let Some(action) = action else {
        return next.run(req).await;
    };
    if let Some(ms) = action.latency_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if action.reset {
        return reset_response();
    }
    if action.reset_after {
        let _applied = next.run(req).await;
        return reset_response();
    }
    if let Some(status) = action.status {
        return fault_response(service, status, action.body, action.retry_after);
    }
    next.run(req).await
}

/// A response whose body fails at once: hyper then drops the connection, which the client sees
/// as a reset / incomplete message.
fn reset_response() -> Response {
    let stream = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "sandbox fault: connection reset",
        ))
    });
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn fault_response(
    service: Service,
    status: u16,
    body: Option<Value>,
    retry_after: Option<u64>,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let body = body.unwrap_or_else(|| match service {
        Service::Graph => crate::graph::error::fault_body(code),
        Service::Login => crate::identity::fault_body(code),
        Service::Outlook => crate::exchange::fault_body(code),
        Service::Datto => crate::datto::fault_body(code),
        Service::Autotask => crate::autotask::fault_body(code),
        Service::Admin | Service::Other => json!({"error": code.as_u16()}),
    });
    let mut resp = (code, axum::Json(body)).into_response();
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(s));
    }
    resp
}

/// What every handler needs to know about the request besides its body.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) correlation: Option<Correlation>,
    pub(crate) method: String,
    pub(crate) path: String,
    /// The origin clients reach the sandbox at, for absolute links (`@odata.nextLink`): see
    /// [`Origin`].
    pub(crate) origin: String,
    pub(crate) headers: HeaderMap,
}

impl Ctx {
    /// Whether the request asked for Graph's advanced queries (`ConsistencyLevel: eventual`).
    pub(crate) fn eventual(&self) -> bool {
        self.headers
            .get("consistencylevel")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("eventual"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map(|u| u.0.path().to_owned())
            .unwrap_or_else(|| parts.uri.path().to_owned());
        let origin = match parts.extensions.get::<Origin>() {
            Some(o) => o.0.clone(),
            // A router mounted without `request_context` (unit tests): the Host header.
            None => origin_of(
                None,
                false,
                &parts.headers,
                parts.uri.authority().map(|a| a.as_str()),
            ),
        };
        Ok(Self {
            correlation: parts
                .headers
                .get(CORRELATION_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(Correlation::parse),
            method: parts.method.as_str().to_owned(),
            path,
            origin,
            headers: parts.headers.clone(),
        })
    }
}

impl Ctx {
    /// A ledger record for this request.
    pub(crate) fn mutation(
        &self,
        service: &'static str,
        company: &str,
        action: &str,
        target: Option<&str>,
        details: Value,
    ) -> Mutation {
        Mutation {
            service,
            method: self.method.clone(),
            path: self.path.clone(),
            company: Some(company.to_owned()),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            details,
            secret_fingerprint: None,
            correlation: self.correlation.clone(),
        }
    }

    pub(crate) fn bearer(&self) -> Option<&str> {
        bearer(&self.headers)
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// What became of a POST the sandbox sent on its own (a runner callback, an Autotask webhook).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct PostOutcome {
    pub(crate) attempts: u32,
    /// The last HTTP status received, if any.
    pub(crate) status: Option<u16>,
    /// The last transport error, cleared by a delivery.
    pub(crate) error: Option<String>,
    pub(crate) delivered: bool,
}

/// Sends the request `build` makes up to three times, 100 ms then 200 ms apart, until one is
/// answered 2xx.
pub(crate) async fn post_with_retries(build: impl Fn() -> reqwest::RequestBuilder) -> PostOutcome {
    const ATTEMPTS: u32 = 3;
    let mut out = PostOutcome::default();
    for attempt in 1..=ATTEMPTS {
        out.attempts = attempt;
        match build().send().await {
            Ok(r) => {
                out.status = Some(r.status().as_u16());
                if r.status().is_success() {
                    out.delivered = true;
                    out.error = None;
                    return out;
                }
            }
            Err(e) => out.error = Some(e.to_string()),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
        }
    }
    out
}

/// Parses a JSON body; the error string is for the service's own 400 envelope.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty body".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Parses `application/x-www-form-urlencoded` into ordered pairs (last value wins on lookup).
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

pub(crate) fn form_get<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking handler behind the real `catch_panic`, served and called over HTTP.
    #[tokio::test]
    async fn a_handler_panic_is_an_honest_500_in_the_services_envelope() {
        async fn boom() -> Response {
            panic!("deliberate test panic")
        }
        let app = Router::new()
            .route("/{service}/boom", axum::routing::get(boom))
            .layer(middleware::from_fn(catch_panic))
            .layer(middleware::from_fn_with_state(
                crate::Sandbox::new(crate::Options::default())
                    .unwrap()
                    .shared,
                request_context,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        for (service, message_at) in [
            ("graph", "/error/message"),
            ("login", "/error_description"),
            ("outlook", "/error/message"),
            ("datto", "/message"),
            ("autotask", "/errors/0"),
            ("admin", "/message"),
        ] {
            let r = http
                .get(format!("http://{addr}/{service}/boom"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 500, "{service}");
            let body: Value = r.json().await.unwrap();
            let message = body
                .pointer(message_at)
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(
                message.contains("sandbox bug")
                    && message.contains(&format!("GET /{service}/boom"))
                    && message.contains("log"),
                "{service}: {body}"
            );
            assert!(!body.to_string().contains("injected"), "{service}: {body}");
        }
    }

    #[test]
    fn origin_from_public_url_forwarded_and_host() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8090"));
        assert_eq!(origin_of(None, false, &h, None), "http://127.0.0.1:8090");
        assert_eq!(origin_of(None, true, &h, None), "https://127.0.0.1:8090");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https, http"));
        assert_eq!(origin_of(None, false, &h, None), "https://127.0.0.1:8090");
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("sb.example.com"),
        );
        assert_eq!(origin_of(None, false, &h, None), "https://sb.example.com");
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=10.0.0.1;proto=http;host=\"proxy.example:8443\", for=x"),
        );
        assert_eq!(origin_of(None, true, &h, None), "http://proxy.example:8443");
        assert_eq!(
            origin_of(Some("https://public.example/sb"), false, &h, None),
            "https://public.example/sb"
        );
        // Nonsense in a forwarding header falls back instead of ending up in a link.
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("h:1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("javascript"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil/path"));
        assert_eq!(origin_of(None, false, &h, None), "http://h:1");
        // HTTP/2 carries the host in `:authority`, which arrives in the URI, not as `Host`.
        assert_eq!(
            origin_of(None, true, &HeaderMap::new(), Some("127.0.0.1:8443")),
            "https://127.0.0.1:8443"
        );
    }

    #[test]
    fn service_of_prefix() {
        assert_eq!(Service::of("/graph/v1.0/users"), Service::Graph);
        assert_eq!(Service::of("/login/x/oauth2/v2.0/token"), Service::Login);
        assert_eq!(Service::of("/admin/reset"), Service::Admin);
        assert_eq!(Service::of("/nope"), Service::Other);
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert("authorization", HeaderValue::from_static("bearer   "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn json_and_form_parsing() {
        assert!(parse_json(b"  ").is_err());
        assert!(parse_json(b"{").is_err());
        assert_eq!(parse_json(b"{\"a\":1}").unwrap()["a"], 1);
        let f = parse_form(b"grant_type=client_credentials&scope=https%3A%2F%2Fx%2F.default");
        assert_eq!(form_get(&f, "scope"), Some("https://x/.default"));
    }
}
