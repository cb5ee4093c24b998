//! Datto RMM API v2: OAuth password grant, device lookups, quick job validation and the
//! account rate limit (429, then 403 for a client that keeps going).

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;
use steward_sandbox::Options;

#[tokio::test]
async fn token_devices_and_quick_job_validation() -> Result<()> {
    let sb = sandbox().await?;
    let http = client();
    let token_url = format!("{}/datto/auth/oauth/token", sb.base_url);
    let r = http
        .post(&token_url)
        .basic_auth("public-client", Some("public"))
        .form(&[
            ("grant_type", "password"),
            ("username", "SANDBOXDATTOKEY"),
            ("password", "wrong"),
        ])
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let b: serde_json::Value = r.json().await?;
    assert_eq!(b["error"], "invalid_grant");
    let r = http
        .post(&token_url)
        .form(&[
            ("grant_type", "password"),
            ("username", "SANDBOXDATTOKEY"),
            ("password", "sandbox-datto-secret"),
        ])
        .send()
        .await?;
    assert_eq!(
        r.status(),
        401,
        "the public-client Basic credentials are required"
    );

    let d = Datto::new(&sb).await?;
    let (s, b) = d
        .call("GET", "/account/devices?hostname=runner", None)
        .await?;
    assert_eq!(s, 200);
    let hosts: Vec<&str> = b["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["hostname"].as_str())
        .collect();
    assert_eq!(hosts, vec!["FAB-RUNNER01", "NW-RUNNER01"]);
    assert_eq!(b["devices"][0]["siteName"], "Fabrikam Inc (HQ)");

    let (_, sites) = d.call("GET", "/account/sites", None).await?;
    let site = sites["sites"][0]["uid"].as_str().unwrap().to_owned();
    let (s, b) = d
        .call("GET", &format!("/site/{site}/devices?max=2"), None)
        .await?;
    assert_eq!(s, 200);
    assert_eq!(b["devices"].as_array().unwrap().len(), 2);
    assert_eq!(b["pageDetails"]["totalCount"], 5);
    let next = b["pageDetails"]["nextPageUrl"].as_str().unwrap().to_owned();
    let r = client().get(&next).bearer_auth(&d.token).send().await?;
    let b: serde_json::Value = r.json().await?;
    assert_eq!(b["devices"].as_array().unwrap().len(), 2);
    assert!(b["pageDetails"]["prevPageUrl"].is_string());

    let (s, b) = d.call("GET", "/device/not-a-device", None).await?;
    assert_eq!(s, 404);
    assert_eq!(b["status"], 404);
    let (s, b) = d.call("GET", "/account/components", None).await?;
    assert_eq!(s, 200);
    assert_eq!(
        b["components"][0]["variables"][0]["name"],
        "steward_script_url"
    );

    let (s, _) = d
        .call(
            "PUT",
            &format!("/device/{FAB_RUNNER}/quickjob"),
            Some(json!({"jobComponent": {"componentUid": RUNNER_COMPONENT}})),
        )
        .await?;
    assert_eq!(s, 400, "jobName is required");
    let (s, _) = d
        .call("PUT", &format!("/device/{FAB_RUNNER}/quickjob"), Some(json!({"jobName": "x", "jobComponent": {"componentUid": "00000000-0000-4000-8000-000000000000"}})))
        .await?;
    assert_eq!(s, 404);
    let (s, _) = d
        .call(
            "PUT",
            "/device/nope/quickjob",
            Some(json!({"jobName": "x", "jobComponent": {"componentUid": RUNNER_COMPONENT}})),
        )
        .await?;
    assert_eq!(s, 404);
    let (s, _) = d
        .call("PUT", &format!("/device/{FAB_RUNNER}/quickjob"), Some(json!({"jobName": "x", "jobComponent": {"componentUid": RUNNER_COMPONENT, "variables": [{"name": 1}]}})))
        .await?;
    assert_eq!(s, 400);
    // A component the sandbox doesn't simulate runs and fails clearly.
    let (s, b) = d
        .call("PUT", &format!("/device/{FAB_RUNNER}/quickjob"), Some(json!({"jobName": "reboot", "jobComponent": {"componentUid": "7a7a7a7a-1111-4222-8333-444455556666"}})))
        .await?;
    assert_eq!(s, 200);
    let job = b["job"]["uid"].as_str().unwrap().to_owned();
    d.wait_job(&job).await?;
    let (_, err) = d
        .call(
            "GET",
            &format!("/job/{job}/results/{FAB_RUNNER}/stderr"),
            None,
        )
        .await?;
    assert!(
        err[0]["stdData"]
            .as_str()
            .unwrap()
            .contains("not simulated")
    );
    let (s, _) = d
        .call("GET", &format!("/job/{job}/results/{FAB_EXCH}"), None)
        .await?;
    assert_eq!(s, 404);

    let r = client()
        .get(format!("{}/datto/api/v2/account/devices", sb.base_url))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // Tokens last 100 hours.
    advance(&sb, 100 * 3600 + 1).await?;
    let (s, b) = d.call("GET", "/account/devices", None).await?;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_token")));
    Ok(())
}

#[tokio::test]
async fn rate_limit_then_block() -> Result<()> {
    let f =
        fixture_variant(|t| t.replace("rate_limit_per_minute: 600", "rate_limit_per_minute: 3"))?;
    let sb = sandbox_with(Options {
        fixture: Some(f.path().to_owned()),
        ..Options::default()
    })
    .await?;
    let d = Datto::new(&sb).await?;
    for _ in 0..3 {
        let (s, _) = d.call("GET", "/account", None).await?;
        assert_eq!(s, 200);
    }
    let r = client()
        .get(format!("{}/account", d.base))
        .bearer_auth(&d.token)
        .send()
        .await?;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    // Keep hammering: after five 429s in a row the client is blocked with 403.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(d.call("GET", "/account", None).await?.0);
    }
    assert_eq!(statuses, vec![429, 429, 429, 429, 403, 403]);
    // The block outlasts the window...
    advance(&sb, 61).await?;
    assert_eq!(d.call("GET", "/account", None).await?.0, 403);
    // ...and lifts after five minutes.
    advance(&sb, 5 * 60).await?;
    let (s, b) = d.call("GET", "/system/request_rate", None).await?;
    assert_eq!(s, 200);
    assert_eq!(b["accountRateLimit"], 3);
    Ok(())
}

#[tokio::test]
async fn jobs_start_after_the_configured_delay_on_the_sandbox_clock() -> Result<()> {
    let f = fixture_variant(|t| {
        t.replace(
            "rate_limit_per_minute: 600",
            "rate_limit_per_minute: 600\n  job_start_delay_seconds: 900",
        )
    })?;
    let sb = sandbox_with(Options {
        fixture: Some(f.path().to_owned()),
        ..Options::default()
    })
    .await?;
    let host = Host::start().await?;
    let d = Datto::new(&sb).await?;
    host.host.put_script(
        "late",
        script("ad.get_user@1", &json!({"identity": "bsmith"})),
    );
    let job = d.runner_job(FAB_RUNNER, &host, "late", None).await?;
    let (_, j) = d.call("GET", &format!("/job/{job}"), None).await?;
    assert_eq!(j["status"], "active");
    advance(&sb, 899).await?;
    let (_, j) = d.call("GET", &format!("/job/{job}"), None).await?;
    assert_eq!(j["status"], "active");
    assert!(host.host.all("/callbacks/late").is_empty());
    advance(&sb, 2).await?;
    d.wait_job(&job).await?;
    assert_eq!(host.host.all("/callbacks/late").len(), 1);
    Ok(())
}

#[tokio::test]
async fn out_of_range_pages_are_a_clear_400_on_every_paged_route() -> Result<()> {
    let sb = sandbox().await?;
    let d = Datto::new(&sb).await?;
    let (_, sites) = d.call("GET", "/account/sites", None).await?;
    let site = sites["sites"][0]["uid"].as_str().unwrap().to_owned();
    let max = u64::MAX;
    for route in [
        "/account/sites".to_owned(),
        "/account/devices".to_owned(),
        "/account/components".to_owned(),
        format!("/site/{site}/devices"),
    ] {
        for query in [format!("page={max}"), format!("page={}&max=2", max / 2 + 1)] {
            let path = format!("{route}?{query}");
            let (s, b) = d.call("GET", &path, None).await?;
            assert_eq!(s, 400, "{path}: {b}");
            assert_eq!(b["status"], 400, "{path}: {b}");
            assert_eq!(b["error"], "Bad Request", "{path}: {b}");
            assert!(
                b["message"].as_str().unwrap().contains("page"),
                "{path}: {b}"
            );
            assert!(b["path"].as_str().unwrap().ends_with(&route), "{path}: {b}");
        }
    }
    // The last page whose first item can be counted is just empty: no next page, and the
    // previous-page link points one page back.
    let page = max / 250;
    let (s, b) = d
        .call("GET", &format!("/account/devices?page={page}"), None)
        .await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["devices"], json!([]));
    assert!(b["pageDetails"]["nextPageUrl"].is_null(), "{b}");
    assert!(
        b["pageDetails"]["prevPageUrl"]
            .as_str()
            .unwrap()
            .ends_with(&format!("page={}", page - 1)),
        "{b}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_runner_callback_is_tried_three_times_and_recorded() -> Result<()> {
    let sb = sandbox().await?;
    let host = Host::start().await?;
    let d = Datto::new(&sb).await?;
    host.host.put_script(
        "cb",
        script("ad.get_user@1", &json!({"identity": "bsmith"})),
    );
    let (s, b) = d
        .call(
            "PUT",
            &format!("/device/{FAB_RUNNER}/quickjob"),
            Some(json!({"jobName": "steward cb", "jobComponent": {"componentUid": RUNNER_COMPONENT, "variables": [
                {"name": "steward_script_url", "value": format!("{}/scripts/cb", host.base)},
                // The host answers 404 here.
                {"name": "steward_callback_url", "value": format!("{}/nowhere/cb", host.base)},
                {"name": "steward_job_token", "value": JOB_TOKEN},
            ]}})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let job = b["job"]["uid"].as_str().unwrap().to_owned();
    d.wait_job(&job).await?;
    let (_, jobs) = admin(&sb, "GET", "/jobs", None).await?;
    let j = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["uid"] == job.as_str())
        .unwrap();
    assert_eq!(
        j["callback"],
        json!({"attempts": 3, "status": 404, "error": null, "delivered": false}),
        "{j}"
    );
    assert_eq!(j["run"]["status"], "success", "{j}");
    Ok(())
}
