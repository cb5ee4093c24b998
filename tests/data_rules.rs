//! Data rules that agree everywhere: a CSV re-import changes only the columns the file has and
//! says what changed; the API refuses what the CSV import refuses; an approver outside a
//! company's scope sees the gate and nothing else, and a refusal names neither the gate's
//! approvers nor the company; the `Bearer` scheme in any case.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use steward_tests::api::{ApiEnv, send};
use steward_tests::wait_for;

const T: Duration = Duration::from_secs(30);
const TENANT: &str = "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10";

fn workflows() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/workflows"
    ))
}

async fn import(api: &ApiEnv, csv: &str) -> Result<(u16, Value)> {
    send(
        api.req("admin", reqwest::Method::POST, "/v1/companies/import")
            .header("content-type", "text/csv")
            .body(csv.to_owned()),
    )
    .await
}

async fn put_company(api: &ApiEnv, company: &Value) -> Result<(u16, Value)> {
    send(
        api.req("admin", reqwest::Method::PUT, "/v1/companies/contoso")
            .json(company),
    )
    .await
}

async fn contoso(api: &ApiEnv) -> Result<Value> {
    let (s, record) = api.get("admin", "/v1/companies/contoso").await?;
    anyhow::ensure!(s == 200, "{s} {record}");
    Ok(record["company"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reimport_changes_the_columns_the_file_has_and_reports_each_change() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let mut company = contoso(&api).await?;
    company["custom_instructions"] = json!("Call Dana before any leaver.");
    company["defaults"]["username_format"] = json!("flast");
    company["settings"] = json!({"ticket_queue": "onboarding"});
    let (s, body) = put_company(&api, &company).await?;
    assert_eq!(s, 200, "{body}");
    let before = contoso(&api).await?;

    // The file has no approvers, instructions, username_format, upn_domain or permission_profile
    // column.
    let csv = format!(
        "id,name,identity_provider,mailbox_provider,tenant_id,usage_location\r\ncontoso,Contoso Ltd,entra_id,exchange_online,{TENANT},fr\r\n"
    );
    let (s, report) = import(&api, &csv).await?;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["updated"], json!(["contoso"]), "{report}");
    assert_eq!(
        report["changes"],
        json!([{"id": "contoso", "fields": [
            {"field": "name", "old": "contoso (sample)", "new": "Contoso Ltd"},
            {"field": "defaults.usage_location", "old": "GB", "new": "FR"},
        ]}]),
        "{report}"
    );
    let after = contoso(&api).await?;
    assert_eq!(after["name"], "Contoso Ltd");
    assert_eq!(after["defaults"]["usage_location"], "FR");
    for kept in [
        &["approvers"][..],
        &["custom_instructions"],
        &["defaults", "username_format"],
        &["defaults", "upn_domain"],
        &["permissions"],
        &["settings"],
    ] {
        let get = |v: &Value| kept.iter().fold(v.clone(), |v, k| v[*k].clone());
        assert_eq!(get(&after), get(&before), "{kept:?} kept: {after}");
    }
    assert_eq!(
        after["approvers"],
        json!(["alice@msp.example", "bob@msp.example"])
    );

    // The same file again changes nothing; a column present with an empty cell clears it.
    let (s, report) = import(&api, &csv).await?;
    assert_eq!(
        (s, &report["unchanged"], report.get("changes")),
        (200, &json!(["contoso"]), None),
        "{report}"
    );
    let (s, report) = import(
        &api,
        &format!(
            "id,name,identity_provider,mailbox_provider,tenant_id,custom_instructions\ncontoso,Contoso Ltd,entra_id,exchange_online,{TENANT},\n"
        ),
    )
    .await?;
    assert_eq!(s, 200, "{report}");
    assert_eq!(
        report["changes"][0]["fields"],
        json!([{"field": "custom_instructions", "old": "Call Dana before any leaver.", "new": "(none)"}]),
        "{report}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_the_csv_import_refuses() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // A technician whose address imitates alice's with a Cyrillic `а` (U+0430).
    let lookalike = "\u{430}lice@msp.example";
    let (s, body) = api
        .post(
            "admin",
            "/v1/technicians",
            json!({"email": lookalike, "name": "not alice", "role": "technician", "companies": ["contoso"]}),
        )
        .await?;
    assert_eq!(s, 201, "{body}");

    let company = contoso(&api).await?;
    let cases: [(&str, &str, &str, &str); 4] = [
        ("name", "\u{202E}dtl osotnoC", "name", "U+202E"),
        ("name", "=HYPERLINK(\"http://x\")", "name", "formula"),
        ("name", "Contoso\u{2066}Ltd", "name", "U+2066"),
        ("approvers", lookalike, "approvers", "look like Latin"),
    ];
    for (field, value, column, says) in cases {
        // Through the API.
        let mut c = company.clone();
        c[field] = if field == "approvers" {
            json!(["bob@msp.example", value])
        } else {
            json!(value)
        };
        let (s, body) = put_company(&api, &c).await?;
        assert_eq!(s, 422, "API {field}={value:?}: {body}");
        let problems = body["error"]["details"].to_string();
        assert!(
            problems.contains(&format!("\"field\":\"{field}\"")) && problems.contains(says),
            "API {field}={value:?}: {body}"
        );
        // Through the CSV import.
        let (name, approvers) = if field == "approvers" {
            ("Contoso".to_owned(), format!("bob@msp.example;{value}"))
        } else {
            (
                format!("\"{}\"", value.replace('"', "\"\"")),
                "bob@msp.example".to_owned(),
            )
        };
        let csv = format!(
            "id,name,identity_provider,mailbox_provider,tenant_id,approvers\ncontoso,{name},entra_id,exchange_online,{TENANT},{approvers}\n"
        );
        let (s, body) = import(&api, &csv).await?;
        assert_eq!(s, 422, "CSV {field}={value:?}: {body}");
        let problems = body["error"]["details"].to_string();
        assert!(
            problems.contains(&format!("\"column\":\"{column}\"")),
            "CSV {field}={value:?}: {body}"
        );
    }
    // Nothing was changed by either path.
    assert_eq!(contoso(&api).await?, company);
    Ok(())
}

async fn start_gated(api: &ApiEnv, user: &str) -> Result<String> {
    let (s, body) = api
        .post(
            "tech",
            "/v1/runs",
            json!({"workflow": "gated", "company": "contoso", "inputs": {"user": user}}),
        )
        .await?;
    anyhow::ensure!(s == 201, "{s} {body}");
    let run = body["run"].as_str().context("run id")?.to_owned();
    wait_for("the gate to open", T, || async {
        let (s, body) = api
            .get("admin", &format!("/v1/approvals/{run}/approval"))
            .await?;
        Ok((s == 200 && body["state"] == "awaiting_approval").then_some(()))
    })
    .await?;
    Ok(run)
}

async fn set_approvers(api: &ApiEnv, approvers: &[&str]) -> Result<()> {
    let mut c = contoso(api).await?;
    c["approvers"] = json!(approvers);
    let (s, body) = put_company(api, &c).await?;
    anyhow::ensure!(s == 200, "{s} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_outside_the_company_sees_the_gate_and_a_refusal_names_nobody() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    // outsider (a technician of fabrikam only) approves this one of contoso's gates.
    set_approvers(&api, &["alice@msp.example", "outsider@msp.example"]).await?;
    let theirs = start_gated(&api, "ann").await?;
    set_approvers(&api, &["alice@msp.example", "bob@msp.example"]).await?;
    let other = start_gated(&api, "joe").await?;

    let (s, gate) = api
        .get("outsider", &format!("/v1/approvals/{theirs}/approval"))
        .await?;
    assert_eq!(s, 200, "what they must decide: {gate}");
    assert!(gate["unlocks"].as_array().is_some_and(|u| !u.is_empty()));
    let (s, inbox) = api.get("outsider", "/v1/approvals").await?;
    assert_eq!(s, 200);
    let listed: Vec<&str> = inbox["approvals"]
        .as_array()
        .context("approvals")?
        .iter()
        .filter_map(|g| g["run"].as_str())
        .collect();
    assert_eq!(listed, [theirs.as_str()], "{inbox}");

    // Nothing else of the company: not the run's page, not its other runs, not its settings.
    let (s, runs) = api.get("outsider", "/v1/runs").await?;
    assert_eq!(
        (s, runs["runs"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{runs}"
    );
    for path in [
        format!("/v1/runs/{theirs}"),
        format!("/v1/runs/{other}"),
        "/v1/companies/contoso".to_owned(),
        format!("/v1/approvals/{other}/approval"),
        format!("/v1/approvals/{other}/no_such_step"),
    ] {
        let (s, body) = api.get("outsider", &path).await?;
        assert_eq!(s, 403, "{path}: {body}");
        let text = body.to_string().to_lowercase();
        for secret in ["contoso", "alice@", "bob@", "tech@"] {
            assert!(!text.contains(secret), "{path} reveals {secret}: {body}");
        }
    }
    // Deciding a gate they are not asked on is refused the same way.
    let (s, body) = api
        .post(
            "outsider",
            &format!("/v1/approvals/{other}/approval"),
            json!({"decision": "approve"}),
        )
        .await?;
    assert_eq!(s, 403, "{body}");
    let text = body.to_string().to_lowercase();
    assert!(
        !text.contains("contoso") && !text.contains("alice@") && !text.contains("bob@"),
        "{body}"
    );
    // A company that does not exist is refused exactly as one that does.
    let (s1, b1) = api.get("outsider", "/v1/companies/contoso").await?;
    let (s2, b2) = api.get("outsider", "/v1/companies/no-such-co").await?;
    assert_eq!((s1, &b1["error"]["message"]), (s2, &b2["error"]["message"]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_matched_in_any_case() -> Result<()> {
    let api = ApiEnv::start(workflows()).await?;
    let token = api.tokens.get("tech").context("token")?;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let (s, body) = send(
            api.http
                .get(format!("{}/v1/runs", api.base))
                .header("authorization", format!("{scheme} {token}")),
        )
        .await?;
        assert_eq!(s, 200, "{scheme}: {body}");
    }
    let (s, _) = send(
        api.http
            .get(format!("{}/v1/runs", api.base))
            .header("authorization", format!("Basic {token}")),
    )
    .await?;
    assert_eq!(s, 401);
    Ok(())
}
