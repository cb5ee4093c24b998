//! Every fixture shipped in `fixtures/` loads, validates and serves.

mod common;

use anyhow::Result;
use common::*;
use steward_sandbox::{Options, Sandbox};

#[tokio::test]
async fn every_shipped_fixture_serves() -> Result<()> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let sb = Sandbox::spawn(Options {
                fixture: Some(path.clone()),
                ..Options::default()
            })
            .await?;
            let (s, world) = admin(&sb, "GET", "/world", None).await?;
            assert_eq!(s, 200, "{}", path.display());
            assert!(!world["companies"].as_object().unwrap().is_empty());
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
            sb.shutdown().await?;
        }
    }
    names.sort();
    assert_eq!(
        names,
        vec!["cloud-only.yaml", "hybrid.yaml", "msp.yaml", "on-prem.yaml"]
    );
    Ok(())
}

#[tokio::test]
async fn single_company_fixtures_have_what_they_promise() -> Result<()> {
    let hybrid = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hybrid.yaml");
    let sb = Sandbox::spawn(Options {
        fixture: Some(hybrid.into()),
        ..Options::default()
    })
    .await?;
    let (_, w) = admin(&sb, "GET", "/world/fabrikam", None).await?;
    assert!(
        w["ad"].is_object() && w["entra_connect"].is_object() && w["exchange_server"].is_object()
    );
    assert_eq!(w["rmm_site"]["devices"][0]["hostname"], "FAB-RUNNER01");
    let (_, t) = admin(&sb, "GET", "/tickets", None).await?;
    assert_eq!(t["tickets"][0]["id"], 1001);
    let (s, _) = admin(
        &sb,
        "PATCH",
        "/tickets/abc",
        Some(serde_json::json!({"status": 2})),
    )
    .await?;
    assert_eq!(s, 400);

    let cloud = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/cloud-only.yaml");
    let sb = Sandbox::spawn(Options {
        fixture: Some(cloud.into()),
        ..Options::default()
    })
    .await?;
    let (_, w) = admin(&sb, "GET", "/world/contoso", None).await?;
    assert!(w["ad"].is_null());
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    assert_eq!(g.call("GET", "/users", None).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn synced_users_get_their_fixture_auth_methods() -> Result<()> {
    let f = fixture_variant(|t| {
        t.replace(
            "          licenses: [SPB]\n          usage_location: US\n        - sam: ckim",
            "          licenses: [SPB]\n          usage_location: US\n          auth_methods:\n            - { kind: microsoftAuthenticator, display_name: Galaxy S24 }\n        - sam: ckim",
        )
    })?;
    let sb = sandbox_with(Options {
        fixture: Some(f.path().to_owned()),
        ..Options::default()
    })
    .await?;
    let g = Graph::new(&sb, FABRIKAM_TENANT).await?;
    let (s, b) = g
        .call(
            "GET",
            "/users/bob.smith@fabrikam.com/authentication/methods",
            None,
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let kinds: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["@odata.type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "#microsoft.graph.passwordAuthenticationMethod",
            "#microsoft.graph.microsoftAuthenticatorAuthenticationMethod"
        ]
    );
    assert_eq!(b["value"][1]["displayName"], "Galaxy S24");

    // A method on an AD user that never reaches the cloud is a fixture error, not ignored.
    let f = fixture_variant(|t| {
        t.replace(
            "        - sam: ckim\n",
            "        - sam: ckim\n          synced: false\n          auth_methods: [{ kind: phone }]\n",
        )
    })?;
    let err = Sandbox::new(Options {
        fixture: Some(f.path().to_owned()),
        ..Options::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("auth_methods") && err.contains("synced"),
        "{err}"
    );
    Ok(())
}
