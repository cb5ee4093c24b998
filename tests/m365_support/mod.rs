//! What the Microsoft 365 tests share: a sandbox, a private Redis, connectors wired to both, and
//! the sandbox's admin routes (faults, ledger, clock, token counters).
#![allow(dead_code, unreachable_pub)]

pub mod csdl;
pub mod proxy;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use steward_engine::embedded::{Persistence, RedisServer};
use steward_sandbox::{Options, RunningSandbox, Sandbox};
use steward_workers::m365::token::Plain;
use steward_workers::m365::{
    Call, Config, Connection, M365, MemoryCredentials, MemorySink, Secret, SharedCache,
};

pub const CLIENT_ID: &str = "5e7a9f3c-1b2d-4c8e-9f00-a1b2c3d4e5f6";
pub const CLIENT_SECRET: &str = "sandbox-client-secret-steward";
pub const PARTNER_RT: &str = "sandbox-refresh-token-partner-tech";
pub const CONTOSO: &str = "8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b";
pub const FABRIKAM: &str = "2c9d8e7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f";
pub const NORTHWIND: &str = "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908";

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// The default sandbox world.
pub async fn sandbox() -> Result<RunningSandbox> {
    Ok(Sandbox::spawn(Options::default()).await?)
}

/// A sandbox loading `yaml` as its fixture.
pub async fn sandbox_with(yaml: &str) -> Result<(RunningSandbox, tempfile::NamedTempFile)> {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut f, yaml.as_bytes())?;
    let sb = Sandbox::spawn(Options {
        fixture: Some(f.path().to_path_buf()),
        ..Options::default()
    })
    .await?;
    Ok((sb, f))
}

/// A private Redis and a cache namespace on it.
pub async fn redis() -> Result<(RedisServer, SharedCache)> {
    let server = RedisServer::start(Persistence::None)?;
    let client = redis::Client::open(server.url())?;
    let conn = redis::aio::ConnectionManager::new(client).await?;
    let ns = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
    Ok((
        server,
        SharedCache {
            redis: conn.into(),
            namespace: ns,
        },
    ))
}

pub fn connection(tenant: &str) -> Connection {
    Connection {
        tenant: tenant.to_owned(),
        client_id: CLIENT_ID.to_owned(),
        client_secret: Secret::new(CLIENT_SECRET),
        certificate: None,
    }
}

/// Credentials for the default world: contoso, fabrikam and northwind connected, contoso and
/// fabrikam with the partner's refresh token.
pub fn credentials() -> MemoryCredentials {
    let c = MemoryCredentials::new();
    for (company, tenant) in [
        ("contoso", CONTOSO),
        ("fabrikam", FABRIKAM),
        ("northwind", NORTHWIND),
    ] {
        c.connect(company, connection(tenant));
    }
    c.set_refresh_token(CONTOSO, Secret::new(PARTNER_RT));
    c.set_refresh_token(FABRIKAM, Secret::new(PARTNER_RT));
    c
}

/// Connectors pointed at `sb`.
pub fn m365(sb: &RunningSandbox, creds: &MemoryCredentials, shared: Option<SharedCache>) -> M365 {
    m365_with(sb, creds, shared, |_| {})
}

/// Connectors pointed at `sb`, with `tweak` applied to the configuration.
pub fn m365_with(
    sb: &RunningSandbox,
    creds: &MemoryCredentials,
    shared: Option<SharedCache>,
    tweak: impl FnOnce(&mut Config),
) -> M365 {
    let mut config = Config::sandbox(&sb.base_url).expect("sandbox URL");
    config.request_timeout = Duration::from_secs(20);
    tweak(&mut config);
    M365::new(
        config,
        Arc::new(creds.clone()),
        Arc::new(MemorySink::new()),
        shared,
        Arc::new(Plain),
    )
    .expect("clients build")
}

/// Connectors at `base_url` (the sandbox or a proxy in front of it) handing secrets to `sink`.
pub fn m365_at(
    base_url: &str,
    creds: &MemoryCredentials,
    shared: Option<SharedCache>,
    sink: &MemorySink,
) -> M365 {
    let mut config = Config::sandbox(base_url).expect("sandbox URL");
    config.request_timeout = Duration::from_secs(20);
    M365::new(
        config,
        Arc::new(creds.clone()),
        Arc::new(sink.clone()),
        shared,
        Arc::new(Plain),
    )
    .expect("clients build")
}

/// The cache connectors share through `env`'s Redis, in its namespace.
pub fn shared_cache(env: &steward_tests::Env) -> SharedCache {
    SharedCache {
        redis: env.store.db().manager(),
        namespace: env.namespace.clone(),
    }
}

/// Connectors at `base_url` with the test credentials, sharing their cache through `env`'s Redis
/// and handing secrets to `sink`.
pub fn m365_shared(base_url: &str, env: &steward_tests::Env, sink: &MemorySink) -> M365 {
    m365_at(base_url, &credentials(), Some(shared_cache(env)), sink)
}

pub fn call(tenant: &str) -> Call {
    Call::new(connection(tenant))
}

pub async fn admin(
    sb: &RunningSandbox,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let mut req = http().request(method.parse()?, format!("{}/admin{path}", sb.base_url));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    if !(200..300).contains(&status) {
        bail!("{method} /admin{path} answered {status}: {text}");
    }
    Ok(if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)?
    })
}

/// Adds a fault rule; returns its id.
pub async fn fault(sb: &RunningSandbox, rule: Value) -> Result<String> {
    let v = admin(sb, "POST", "/faults", Some(rule)).await?;
    v["ids"][0]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no rule id in {v}"))
}

/// How many requests matched the rule `id`.
pub async fn matched(sb: &RunningSandbox, id: &str) -> Result<u64> {
    let v = admin(sb, "GET", "/faults", None).await?;
    let rules = v
        .get("rules")
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
        .with_context(|| format!("no rules in {v}"))?;
    rules
        .iter()
        .find(|r| r["id"] == json!(id))
        .and_then(|r| r["matched"].as_u64())
        .with_context(|| format!("no rule {id} in {v}"))
}

/// Counts every request to the token endpoint from now on: a rule that only lets requests
/// through and counts them.
pub async fn count_token_requests(sb: &RunningSandbox) -> Result<String> {
    fault(
        sb,
        json!({"path": "/login/**", "sequence": [{"pass": true}], "repeat": true}),
    )
    .await
}

/// Every ledger entry.
pub async fn ledger(sb: &RunningSandbox) -> Result<Vec<Value>> {
    let v = admin(sb, "GET", "/ledger", None).await?;
    v["entries"]
        .as_array()
        .cloned()
        .with_context(|| format!("no entries in {v}"))
}

pub async fn advance(sb: &RunningSandbox, seconds: i64) -> Result<()> {
    admin(
        sb,
        "POST",
        "/clock/advance",
        Some(json!({"seconds": seconds})),
    )
    .await?;
    Ok(())
}

/// `access_tokens_issued` of `/admin/tokens`.
pub async fn tokens_issued(sb: &RunningSandbox) -> Result<u64> {
    let v = admin(sb, "GET", "/tokens", None).await?;
    v["access_tokens_issued"]
        .as_u64()
        .with_context(|| format!("no access_tokens_issued in {v}"))
}

/// A world of `n` cloud-only companies `t0`…, each with `users` users `u0@tN.example`….
pub fn fleet_fixture(n: usize, users: usize) -> String {
    let mut y = format!(
        "partner:\n  name: Example MSP\n  apps:\n    - client_id: {CLIENT_ID}\n      client_secret: {CLIENT_SECRET}\n      display_name: Steward\n  refresh_tokens:\n    - token: {PARTNER_RT}\n      client_id: {CLIENT_ID}\n      user: tech@examplemsp.com\ncompanies:\n"
    );
    for i in 0..n {
        y.push_str(&format!(
            "  - id: t{i}\n    name: Tenant {i}\n    tenant:\n      id: {}\n      initial_domain: t{i}.onmicrosoft.com\n      domains: [t{i}.example]\n      consented_apps: [{CLIENT_ID}]\n      users:\n",
            fleet_tenant(i)
        ));
        for u in 0..users {
            y.push_str(&format!(
                "        - upn: u{u}@t{i}.example\n          display_name: User {u}\n"
            ));
        }
    }
    y
}

/// The tenant id of fleet company `i`.
pub fn fleet_tenant(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}
