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

#[tokio::test]
async fn serve_stops_on_its_shutdown_future_and_spawn_on_shutdown() -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Sandbox::new(Options::default())?.serve(listener, async {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}/admin/health");
    assert_eq!(client().get(&url).send().await?.status(), 200);
    tx.send(()).ok();
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    assert!(
        fresh.get(&url).send().await.is_err(),
        "nothing listens after shutdown"
    );

    let sb = sandbox().await?;
    let url = format!("{}/admin/health", sb.base_url);
    assert!(sb.base_url.starts_with("http://127.0.0.1:"));
    assert_eq!(
        sb.addr.port(),
        url.rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse::<u16>()?
    );
    assert_eq!(fresh.get(&url).send().await?.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), sb.shutdown()).await??;
    assert!(fresh.get(&url).send().await.is_err());
    Ok(())
}
