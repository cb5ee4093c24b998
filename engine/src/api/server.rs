//! The HTTP server loop `steward serve` (and a worker's `/metrics`) runs: HTTP/1.1 on hyper,
//! hardened against slow and idle clients.
//!
//! - A connection must send a complete request head within `header_timeout` of opening, and of
//!   each response on a kept-alive connection; otherwise it is closed (slowloris, half-open
//!   connections, idle keep-alives).
//! - A request body must arrive whole within `body_timeout` (408 otherwise); it is read before
//!   the handler runs, up to [`MAX_BODY`].
//! - At most `max_connections` connections are served at once; one beyond that is answered 503
//!   as soon as its request arrives (at most 250 ms after it opens) and closed, so file descriptors are never exhausted (the systemd units also raise
//!   `LimitNOFILE`) and the accept loop never stalls. Slow connections free their places within
//!   `header_timeout`, so `/healthz` answers again within it.
//! - Accept errors (`EMFILE`) are logged and retried after a short pause, never fatal.
//! - A graceful stop stops accepting, lets requests in flight finish (up to 10 s) and closes
//!   idle connections.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use super::error::ApiError;

/// The most a request body may weigh when it is read ahead of the handler (the routes' own
/// limits are lower: 1 MiB JSON, 2 MiB CSV).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// How long in-flight requests may take to finish after a stop is asked.
const DRAIN: Duration = Duration::from_secs(10);

/// What slow clients are allowed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send a request's head, from the connection's opening or the last response.
    pub header_timeout: Duration,
    /// Time to send a request's whole body.
    pub body_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, within `limits`.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.body_timeout,
        read_body,
    ));
    let places = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                warn!(error = %e, "http: cannot accept a connection; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                warn!(
                    refused,
                    max = limits.max_connections,
                    "http: at the connection limit (http.max-connections); answering 503"
                );
            }
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _place = place;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(error = %e, "http: connection ended");
                    }
                }
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, places.acquire_many(all)).await;
}

/// How long a connection beyond the limit is given to send its request before it is answered.
const REFUSE_WAIT: Duration = Duration::from_millis(250);

/// Answers a connection beyond the limit with a 503 and closes it. The request (what arrives
/// within [`REFUSE_WAIT`]) is read first: an HTTP/1.1 client takes a response that comes before
/// its request for a broken connection (hyper: "received unexpected message from connection"),
/// and a close with the request unread resets the connection, losing the 503.
async fn refuse(mut stream: TcpStream) {
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(REFUSE_WAIT, stream.read(&mut request)).await;
    let body = r#"{"error":{"code":"unavailable","message":"the server is at its connection limit","fix":"try again in a moment; an operator can raise http.max-connections"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Reads the whole request body within the body timeout before the handler sees it.
async fn read_body(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return ApiError::too_large(MAX_BODY).into_response();
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => ApiError::status_code(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {} (http.body-timeout)",
                steward_schemas::Dur::new(timeout)
            ),
        )
        .with_fix("send the whole body at once")
        .into_response(),
        Ok(Err(_)) => ApiError::bad_request(format!(
            "the request body could not be read (broken off, or larger than {} MiB)",
            MAX_BODY / (1024 * 1024)
        ))
        .into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}
