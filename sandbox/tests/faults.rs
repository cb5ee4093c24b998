//! Fault injection: scripted sequences, seeded error rates (deterministic), resets, latency, and
//! each service's own envelope for injected errors.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;
use serde_json::{Value, json};
use steward_sandbox::Options;

async fn statuses_under_rate(seed: u64) -> Result<(Vec<u16>, Value)> {
    let sb = sandbox_with(Options {
        seed,
        ..Options::default()
    })
    .await?;
    let (s, b) = admin(
        &sb,
        "POST",
        "/faults",
        Some(json!({"id": "flaky-users", "method": "GET", "path": "/graph/v1.0/users", "rate": 0.5, "error": {"status": 503}})),
    )
    .await?;
    assert_eq!((s, b["ids"][0].as_str()), (201, Some("flaky-users")));
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let mut out = Vec::new();
    for _ in 0..40 {
        out.push(g.call("GET", "/users", None).await?.0);
        // Traffic on other routes must not shift the draw.
        g.call("GET", "/subscribedSkus", None).await?;
    }
    let (_, rules) = admin(&sb, "GET", "/faults", None).await?;
    Ok((out, rules))
}

#[tokio::test]
async fn error_rates_are_deterministic_under_the_seed() -> Result<()> {
    let (a, rules) = statuses_under_rate(7).await?;
    let (b, _) = statuses_under_rate(7).await?;
    let (c, _) = statuses_under_rate(8).await?;
    assert_eq!(a, b, "same seed, same faults");
    assert_ne!(a, c, "another seed, other faults");
    let failures = a.iter().filter(|s| **s == 503).count();
    assert!((8..=32).contains(&failures), "{failures} of 40 at rate 0.5");
    assert!(a.iter().all(|s| *s == 503 || *s == 200));
    assert_eq!(rules["rules"][0]["matched"], 40);
    assert_eq!(
        rules["rules"][0]["injected"].as_u64().unwrap() as usize,
        failures
    );
    Ok(())
}

#[tokio::test]
async fn scripted_sequences_resets_and_latency() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, _) = admin(
        &sb,
        "POST",
        "/faults",
        Some(json!({"rules": [{
            "path": "/graph/v1.0/users/*",
            "sequence": [
                {"status": 429, "retry_after": 3},
                {"pass": true},
                {"status": 503, "body": {"error": {"code": "custom", "message": "scripted"}}},
                {"reset": true},
                {"latency_ms": 150, "pass": true}
            ]
        }]})),
    )
    .await?;
    assert_eq!(s, 201);
    let url = format!("{}/users/megan.bowen@contoso.com", g.base);
    let get = || g.http.get(&url).bearer_auth(&g.token).send();

    let r = get().await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    let b: Value = r.json().await?;
    assert_eq!(b["error"]["code"], "TooManyRequests");
    assert!(b["error"]["innerError"]["request-id"].is_string());

    assert_eq!(get().await?.status(), 200);
    let r = get().await?;
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await?;
    assert_eq!(b["error"]["message"], "scripted");

    let reset = match get().await {
        Err(e) => Some(e),
        Ok(r) => r.bytes().await.err(),
    };
    assert!(reset.is_some(), "a reset must surface as a transport error");

    let t = Instant::now();
    assert_eq!(get().await?.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    // The sequence is spent: back to normal.
    assert_eq!(get().await?.status(), 200);
    // Other paths never matched.
    assert_eq!(g.call("GET", "/users", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn injected_errors_use_each_services_envelope() -> Result<()> {
    let sb = sandbox().await?;
    add_faults(
        &sb,
        json!({"rules": [
            {"path": "/login/**", "sequence": [{"status": 503}]},
            {"path": "/datto/**", "sequence": [{"status": 429, "retry_after": 60}]},
            {"path": "/outlook/**", "sequence": [{"status": 503}]},
            {"path": "/autotask/**", "sequence": [{"status": 500}]}
        ]}),
    )
    .await?;
    let (s, b) =
        token_request(&sb, CONTOSO_TENANT, &[("grant_type", "client_credentials")]).await?;
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS")
    );
    let r = client()
        .get(format!("{}/datto/api/v2/account", sb.base_url))
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let r = client()
        .post(format!(
            "{}/outlook/adminapi/beta/x/InvokeCommand",
            sb.base_url
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    let b: Value = r.json().await?;
    assert!(b["error"]["code"].is_string());
    let r = client()
        .get(format!(
            "{}/autotask/atservicesrest/v1.0/Tickets/1",
            sb.base_url
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 500);
    let b: Value = r.json().await?;
    assert!(b["errors"].is_array());
    // The admin API is never faulted.
    add_faults(
        &sb,
        json!({"path": "/admin/**", "sequence": [{"status": 500}]}),
    )
    .await?;
    assert_eq!(admin(&sb, "GET", "/health", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn fault_rules_are_managed_and_validated() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    for bad in [
        json!({"path": "graph/v1.0/users", "sequence": [{"status": 500}]}),
        json!({"path": "/graph/**"}),
        json!({"path": "/graph/**", "rate": 2.0, "error": {"status": 500}}),
        json!({"path": "/graph/**", "rate": 0.5}),
        json!({"path": "/graph/**", "sequence": [{}]}),
        json!({"path": "/graph/**", "sequence": [{"status": 99}]}),
        json!({"path": "/graph/**", "sequence": [{"status": 500}], "colour": "red"}),
    ] {
        let (s, b) = admin(&sb, "POST", "/faults", Some(bad.clone())).await?;
        assert_eq!(s, 400, "{bad} -> {b}");
        assert!(b["message"].is_string());
    }
    let r = client()
        .post(format!("{}/admin/faults", sb.base_url))
        .body("{oops")
        .send()
        .await?;
    assert_eq!(r.status(), 400);

    let ids = add_faults(
        &sb,
        json!({"id": "a", "path": "/graph/**", "rate": 1.0, "error": {"status": 500}}),
    )
    .await?;
    assert_eq!(ids, vec!["a"]);
    assert_eq!(g.call("GET", "/users", None).await?.0, 500);
    let (s, _) = admin(&sb, "DELETE", "/faults/a", None).await?;
    assert_eq!(s, 204);
    assert_eq!(admin(&sb, "DELETE", "/faults/a", None).await?.0, 404);
    assert_eq!(g.call("GET", "/users", None).await?.0, 200);
    add_faults(
        &sb,
        json!({"path": "/graph/**", "rate": 1.0, "error": {"status": 500}}),
    )
    .await?;
    assert_eq!(admin(&sb, "DELETE", "/faults", None).await?.0, 204);
    assert_eq!(g.call("GET", "/users", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn reset_after_applies_the_change_then_loses_the_answer() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    add_faults(
        &sb,
        json!({"method": "POST", "path": "/graph/v1.0/users", "sequence": [{"reset_after": true}]}),
    )
    .await?;
    let body = json!({"accountEnabled": true, "displayName": "Lost Answer", "mailNickname": "lost", "userPrincipalName": "lost@contoso.com",
                      "passwordProfile": {"password": "Sandbox!Pass123"}});
    let first = g
        .http
        .post(format!("{}/users", g.base))
        .bearer_auth(&g.token)
        .json(&body)
        .send()
        .await;
    let lost = match first {
        Err(_) => true,
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(lost, "the client must not see the answer");
    // The user exists; a blind retry conflicts; the ledger holds one creation.
    assert_eq!(g.call("GET", "/users/lost@contoso.com", None).await?.0, 200);
    let (s, b) = g.call("POST", "/users", Some(body)).await?;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"][0]["code"], "ObjectConflict");
    let creates = ledger(&sb)
        .await?
        .into_iter()
        .filter(|e| e["action"] == "user.create")
        .count();
    assert_eq!(creates, 1);
    Ok(())
}
