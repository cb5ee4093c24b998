//! A recording reverse proxy in front of the sandbox: the connectors talk to it over real HTTP,
//! it forwards every request unchanged and keeps a copy of each JSON request body, so tests can
//! check exactly what Steward sent.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path (no query).
    pub path: String,
    /// The JSON body, when there was one.
    pub body: Option<Value>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A running proxy.
pub struct Proxy {
    pub base_url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            seen: seen.clone(),
        };
        let app = Router::new().fallback(forward).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            base_url: format!("http://{addr}"),
            seen,
            _task: task,
        })
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn forward(State(st): State<ProxyState>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let headers: HeaderMap = req.headers().clone();
    let Ok(body) = axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    st.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            body: serde_json::from_slice(&body).ok(),
        });
    let url = format!(
        "{}{}",
        st.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut out = st.http.request(method, url).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let Ok(resp) = out.send().await else {
        return reset();
    };
    let status = resp.status();
    let rheaders = resp.headers().clone();
    let Ok(bytes) = resp.bytes().await else {
        return reset();
    };
    let mut r = Response::builder().status(status);
    for (k, v) in &rheaders {
        if k != "content-length" && k != "transfer-encoding" {
            r = r.header(k, v);
        }
    }
    r.body(Body::from(bytes))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Drops the connection, as the sandbox did.
fn reset() -> Response {
    let stream = futures::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "upstream reset",
        ))
    });
    Response::new(Body::from_stream(stream))
}
