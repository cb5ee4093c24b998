//! The admin API: reset, clock, snapshots, ledger duplicates and redaction, and 4xx for bad input.

mod common;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn ledger_marks_duplicates_and_reset_restores_the_fixture() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let adele = "/users/adele.vance@contoso.com";
    let off = json!({"accountEnabled": false});
    g.call_with("PATCH", adele, Some(off.clone()), Some("run_D/disable/1"))
        .await?;
    // A retry of the same step re-applies the same change: a duplicate.
    g.call_with("PATCH", adele, Some(off.clone()), Some("run_D/disable/2"))
        .await?;
    g.call_with(
        "PATCH",
        "/users/megan.bowen@contoso.com",
        Some(json!({"jobTitle": "CMO"})),
        None,
    )
    .await?;
    let entries = ledger(&sb).await?;
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["duplicate"], false);
    assert_eq!(entries[1]["duplicate"], true);
    assert_eq!(entries[1]["duplicate_of"], entries[0]["seq"]);
    assert_eq!(entries[1]["attempt"], 2);
    assert!(
        entries[2]["run"].is_null()
            && entries[2]["step"].is_null()
            && entries[2]["attempt"].is_null()
    );
    let (_, b) = admin(&sb, "GET", "/ledger?run=run_D", None).await?;
    assert_eq!(
        (b["count"].as_u64(), b["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, b) = admin(&sb, "GET", "/ledger?since=2", None).await?;
    assert_eq!(b["count"], 1);
    assert_eq!(admin(&sb, "GET", "/ledger?since=x", None).await?.0, 400);

    let (_, snap) = admin(&sb, "GET", "/world/contoso", None).await?;
    let adele_snap = snap["tenant"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["props"]["userPrincipalName"] == "adele.vance@contoso.com")
        .unwrap();
    assert_eq!(adele_snap["props"]["accountEnabled"], false);

    advance(&sb, 3600).await?;
    let (s, b) = admin(&sb, "POST", "/reset", None).await?;
    assert_eq!((s, b["reset"].as_bool()), (200, Some(true)));
    assert!(ledger(&sb).await?.is_empty());
    let (_, clock) = admin(&sb, "GET", "/clock", None).await?;
    assert_eq!(clock["offset_seconds"], 0);
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (_, u) = g
        .call("GET", &format!("{adele}?$select=accountEnabled"), None)
        .await?;
    assert_eq!(u["accountEnabled"], true);
    Ok(())
}

#[tokio::test]
async fn snapshots_never_carry_secrets() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let pw = "Very$ecret-Pa55word";
    let (s, _) = g
        .call(
            "POST",
            "/users",
            Some(json!({"accountEnabled": true, "displayName": "S", "mailNickname": "s", "userPrincipalName": "s@contoso.com",
                        "passwordProfile": {"password": pw}})),
        )
        .await?;
    assert_eq!(s, 201);
    let (_, all) = admin(&sb, "GET", "/world", None).await?;
    let text = all.to_string();
    for secret in [
        pw,
        CLIENT_SECRET,
        "sandbox-datto-secret",
        "sandbox-autotask-secret",
        "SANDBOXDATTOKEY",
        "SANDBOXINTEGRATIONCODE",
        PARTNER_RT,
        &g.token,
    ] {
        assert!(!text.contains(secret), "snapshot leaks a secret");
    }
    // The Autotask API user's name is not a secret.
    assert_eq!(all["autotask"]["username"], "steward-api@examplemsp.com");
    assert!(text.contains("[redacted]"));
    let (_, tokens) = admin(&sb, "GET", "/tokens", None).await?;
    assert!(!tokens.to_string().contains(PARTNER_RT));
    assert_eq!(tokens["refresh_tokens"][0]["user"], "tech@examplemsp.com");
    Ok(())
}

#[tokio::test]
async fn bad_admin_input_is_a_clear_4xx() -> Result<()> {
    let sb = sandbox().await?;
    for body in [
        json!({"seconds": -5}),
        json!({"seconds": "ten"}),
        json!({}),
        json!({"seconds": 1, "extra": true}),
    ] {
        let (s, b) = admin(&sb, "POST", "/clock/advance", Some(body.clone())).await?;
        assert_eq!(s, 400, "{body}: {b}");
        assert_eq!(b["error"], "bad_request");
    }
    assert_eq!(admin(&sb, "GET", "/world/nope", None).await?.0, 404);
    let (s, b) = admin(&sb, "GET", "/no/such/route", None).await?;
    assert_eq!((s, b["error"].as_str()), (404, Some("not_found")));
    assert_eq!(
        admin(
            &sb,
            "POST",
            "/companies/contoso/faults",
            Some(json!({"double_hop_misconfigured": true}))
        )
        .await?
        .0,
        400
    );
    assert_eq!(
        admin(&sb, "POST", "/companies/nope/faults", Some(json!({})))
            .await?
            .0,
        404
    );
    assert_eq!(
        admin(&sb, "POST", "/companies/contoso/sync/start", None)
            .await?
            .0,
        400
    );
    // Spans of time a chrono date can't hold (or that would put the sync cycle's end there) are
    // refused naming the field, not a panic while the world is locked.
    for d in [
        json!(i64::MAX),
        json!(100_000_000_000_000_i64),
        json!(0),
        json!(-1),
    ] {
        let (s, b) = admin(
            &sb,
            "POST",
            "/companies/fabrikam/sync/start",
            Some(json!({"duration_seconds": d})),
        )
        .await?;
        assert_eq!(
            (s, b["error"].as_str()),
            (400, Some("bad_request")),
            "{d}: {b}"
        );
        assert!(
            b["message"].as_str().unwrap().contains("duration_seconds"),
            "{d}: {b}"
        );
    }
    let (s, b) = admin(
        &sb,
        "POST",
        "/companies/fabrikam/sync/start",
        Some(json!({"duration_seconds": 10 * 366 * 24 * 3600})),
    )
    .await?;
    assert_eq!((s, b["started"].as_bool()), (200, Some(true)), "{b}");
    let r = client()
        .get(format!("{}/elsewhere", sb.base_url))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let b: Value = r.json().await?;
    assert!(b["message"].as_str().unwrap().contains("/graph"));
    Ok(())
}

#[tokio::test]
async fn the_clock_stays_within_a_hundred_years() -> Result<()> {
    let sb = sandbox().await?;
    let ten_years = 10 * 366 * 24 * 3600;
    for _ in 0..10 {
        advance(&sb, ten_years).await?;
    }
    let (s, b) = admin(&sb, "POST", "/clock/advance", Some(json!({"seconds": 1}))).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("bad_request")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("seconds"), "{b}");
    let (_, clock) = admin(&sb, "GET", "/clock", None).await?;
    assert_eq!(clock["offset_seconds"], 10 * ten_years);
    // The world still answers a century ahead.
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    assert_eq!(g.call("GET", "/users", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn admin_can_make_aad_busy() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let datto = Datto::new(&sb).await?;
    let (s, b) = admin(
        &sb,
        "POST",
        "/companies/fabrikam/sync/start",
        Some(json!({"duration_seconds": 600})),
    )
    .await?;
    assert_eq!((s, b["started"].as_bool()), (200, Some(true)));
    let (_, b) = admin(&sb, "POST", "/companies/fabrikam/sync/start", None).await?;
    assert_eq!(b["busy"], true);
    let r = datto
        .run_op(FAB_RUNNER, &host, "busy", "adsync.start_delta@1", json!({}))
        .await?;
    assert_eq!(r["error"]["category"], "sync_busy");
    advance(&sb, 601).await?;
    let r = datto
        .run_op(FAB_RUNNER, &host, "free", "adsync.start_delta@1", json!({}))
        .await?;
    assert_eq!(r["status"], "success", "{r}");
    Ok(())
}

#[tokio::test]
async fn bad_fixtures_name_file_path_and_fix() -> Result<()> {
    let f = fixture_variant(|t| {
        t.replace(
            "licenses: [SPB]\n          roles",
            "licenses: [NOPE]\n          roles",
        )
    })?;
    let err = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        fixture: Some(f.path().to_owned()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    assert!(
        err.contains("companies[0].tenant.users[0].licenses[0]"),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
    let err = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        fixture: Some("/nonexistent/fixture.yaml".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/fixture.yaml"), "{err}");
    let err = steward_sandbox::Sandbox::new(steward_sandbox::Options {
        webhook_url: Some("http://x".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("together"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_wipe_unlock_code_reaches_the_ledger_only_as_a_digest() -> Result<()> {
    let sb = sandbox().await?;
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (_, devs) = g
        .call("GET", "/users/adele.vance@contoso.com/managedDevices", None)
        .await?;
    let wipe = format!(
        "/deviceManagement/managedDevices/{}/wipe",
        devs["value"][0]["id"].as_str().unwrap()
    );
    for pin in ["482913", "482913", "771204"] {
        let (s, b) = g
            .call(
                "POST",
                &wipe,
                Some(json!({"keepEnrollmentData": false, "keepUserData": false, "macOsUnlockCode": pin})),
            )
            .await?;
        assert_eq!(s, 204, "{b}");
    }
    let entries = ledger(&sb).await?;
    let text = serde_json::to_string(&entries)?;
    assert!(
        !text.contains("482913") && !text.contains("771204"),
        "{text}"
    );
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["details"]["macOsUnlockCode"], "[redacted]");
    assert_eq!(entries[0]["details"]["keepUserData"], false);
    // The same PIN again is a repeat; a different PIN is a different wipe.
    let dup: Vec<&Value> = entries.iter().map(|e| &e["duplicate"]).collect();
    assert_eq!(dup, vec![&json!(false), &json!(true), &json!(false)]);
    // No PIN stays null (nothing to redact).
    let (s, _) = g
        .call("POST", &wipe, Some(json!({"macOsUnlockCode": null})))
        .await?;
    assert_eq!(s, 204);
    let entries = ledger(&sb).await?;
    assert!(entries[3]["details"]["macOsUnlockCode"].is_null());
    Ok(())
}

#[tokio::test]
async fn quick_jobs_differing_only_in_their_job_token_are_not_duplicates() -> Result<()> {
    let sb = sandbox().await?;
    let d = Datto::new(&sb).await?;
    // The jobs only need to be created; holding keeps the agent from running them.
    assert_eq!(admin(&sb, "POST", "/jobs/hold", None).await?.0, 200);
    let job = |token: &str| {
        json!({"jobName": "steward x", "jobComponent": {"componentUid": RUNNER_COMPONENT, "variables": [
            {"name": "steward_script_url", "value": "http://127.0.0.1:9/scripts/x"},
            {"name": "steward_job_token", "value": token},
        ]}})
    };
    for token in ["tok-first-1111", "tok-first-1111", "tok-second-2222"] {
        let (s, b) = d
            .call(
                "PUT",
                &format!("/device/{FAB_RUNNER}/quickjob"),
                Some(job(token)),
            )
            .await?;
        assert_eq!(s, 200, "{b}");
    }
    let entries = ledger(&sb).await?;
    let text = serde_json::to_string(&entries)?;
    assert!(
        !text.contains("tok-first") && !text.contains("tok-second"),
        "{text}"
    );
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["details"]["variables"][1]["value"], "[redacted]");
    assert_eq!(
        entries[0]["details"]["variables"][0]["value"],
        "http://127.0.0.1:9/scripts/x"
    );
    let dup: Vec<&Value> = entries.iter().map(|e| &e["duplicate"]).collect();
    assert_eq!(dup, vec![&json!(false), &json!(true), &json!(false)]);
    let (_, jobs) = admin(&sb, "GET", "/jobs", None).await?;
    let text = jobs.to_string();
    assert!(
        !text.contains("tok-first") && !text.contains("tok-second"),
        "{text}"
    );
    Ok(())
}
