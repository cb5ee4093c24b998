//! The public surface the engine uses: `Sandbox::new` + `router()` inside another server,
//! `serve` with a shutdown future, and `spawn`/`shutdown`.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::json;
use steward_sandbox::{Options, Sandbox};

#[tokio::test]
async fn router_mounted_in_another_server_runs_jobs() -> Result<()> {
    let sandbox = Sandbox::new(Options::default())?;
    let app = axum::Router::new().nest("/sbx", sandbox.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // Point the helpers at the mounted prefix.
    let base = format!("http://{addr}/sbx");
    let r = client()
        .post(format!("{base}/datto/auth/oauth/token"))
        .basic_auth("public-client", Some("public"))
        .form(&[
            ("grant_type", "password"),
            ("username", "SANDBOXDATTOKEY"),
            ("password", "sandbox-datto-secret"),
        ])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await?;
    let datto = Datto {
        base: format!("{base}/datto/api/v2"),
        token: token["access_token"].as_str().unwrap().to_owned(),
        http: client(),
    };
    let host = Host::start().await?;
    let cb = datto
        .run_op(
            FAB_RUNNER,
            &host,
            "embedded",
            "ad.get_user@1",
            json!({"identity": "bsmith"}),
        )
        .await?;
    assert_eq!(cb["status"], "success", "{cb}");
    Ok(())
}

/// Marks the sandbox at `base` with a fault rule only it has (on a route nobody calls), so a
/// later check can tell it from any other server that gets the port.
async fn mark(base: &str) -> Result<String> {
    let marker = format!(
        "surface-marker-{}-{}",
        std::process::id(),
        base.rsplit(':').next().unwrap_or_default()
    );
    let r = client()
        .post(format!("{base}/admin/faults"))
        .json(&json!({"id": marker, "path": "/graph/v1.0/surface-marker", "sequence": [{"status": 500}]}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let rules = client()
        .get(format!("{base}/admin/faults"))
        .send()
        .await?
        .text()
        .await?;
    assert!(rules.contains(&marker), "{rules}");
    Ok(marker)
}

/// The stopped sandbox no longer answers at `base`. Tests run in parallel, so the freed port may
/// already serve another test's sandbox: then that one answers, but without our marker.
async fn assert_gone(base: &str, marker: &str) -> Result<()> {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    match fresh.get(format!("{base}/admin/faults")).send().await {
        // Connection refused (or reset): nothing listens.
        Err(_) => {}
        Ok(r) => {
            let text = r.text().await.unwrap_or_default();
            assert!(
                !text.contains(marker),
                "the sandbox still answers after shutdown: {text}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn serve_stops_on_its_shutdown_future_and_spawn_on_shutdown() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Sandbox::new(Options::default())?.serve(listener, async {
        let _ = rx.await;
    }));
    let base = format!("http://{addr}");
    assert_eq!(
        client()
            .get(format!("{base}/admin/health"))
            .send()
            .await?
            .status(),
        200
    );
    let marker = mark(&base).await?;
    tx.send(()).ok();
    // The server task ends (with Ok) once the shutdown future resolves...
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    // ...and the sandbox is gone from its port.
    assert_gone(&base, &marker).await?;

    let sb = sandbox().await?;
    assert!(sb.base_url.starts_with("http://127.0.0.1:"));
    assert_eq!(sb.base_url, format!("http://{}", sb.addr));
    assert_eq!(
        client()
            .get(format!("{}/admin/health", sb.base_url))
            .send()
            .await?
            .status(),
        200
    );
    let base = sb.base_url.clone();
    let marker = mark(&base).await?;
    tokio::time::timeout(Duration::from_secs(10), sb.shutdown()).await??;
    assert_gone(&base, &marker).await?;
    Ok(())
}
