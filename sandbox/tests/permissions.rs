//! Graph's per-endpoint permissions over real HTTP: tokens carry what the tenant granted the app
//! (`roles` app-only, `scp` delegated), each route needs its documented permission, and a token
//! without it gets 403 `Authorization_RequestDenied` while one with it is served.

mod common;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

fn claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn assert_denied(status: u16, body: &Value, what: &str) {
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(
        body["error"]["code"], "Authorization_RequestDenied",
        "{what}: {body}"
    );
    assert_eq!(
        body["error"]["message"], "Insufficient privileges to complete the operation.",
        "{what}: {body}"
    );
    assert!(
        body["error"]["innerError"]["request-id"].is_string(),
        "{body}"
    );
}

async fn grant(sb: &steward_sandbox::RunningSandbox, app: Value) -> Result<Value> {
    let (s, b) = admin(
        sb,
        "PUT",
        &format!("/companies/contoso/consents/{CLIENT_ID}"),
        Some(app),
    )
    .await?;
    assert_eq!(s, 200, "{b}");
    Ok(b)
}

#[tokio::test]
async fn tokens_carry_the_grant_and_each_route_needs_its_permission() -> Result<()> {
    let sb = sandbox().await?;
    // The default grant is what Steward's ops need: every route they call is served.
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let roles = claims(&g.token)?["roles"].clone();
    for p in steward_sandbox::GRAPH_APPLICATION_PERMISSIONS {
        assert!(
            roles.as_array().unwrap().iter().any(|r| r == p),
            "{p} not in {roles}"
        );
    }
    assert!(
        !roles
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "Directory.ReadWrite.All"),
        "the default grant is least privileged: {roles}"
    );
    for path in [
        "/users/adele.vance@contoso.com",
        "/users/adele.vance@contoso.com/memberOf/microsoft.graph.group",
        "/groups",
        "/subscribedSkus",
        "/deviceManagement/managedDevices",
        "/users/adele.vance@contoso.com/authentication/methods",
        "/roleManagement/directory/roleDefinitions",
    ] {
        let (s, b) = g.call("GET", path, None).await?;
        assert_eq!(s, 200, "GET {path}: {b}");
    }

    // A tenant that granted only User.Read.All: reads of users work, everything else is 403.
    grant(&sb, json!({"application_permissions": ["User.Read.All"]})).await?;
    // The token already issued keeps its roles until it expires, as Microsoft's do.
    let (s, _) = g.call("GET", "/groups", None).await?;
    assert_eq!(s, 200);
    let narrow = Graph::new(&sb, CONTOSO_TENANT).await?;
    assert_eq!(claims(&narrow.token)?["roles"], json!(["User.Read.All"]));
    let (s, b) = narrow
        .call("GET", "/users/adele.vance@contoso.com", None)
        .await?;
    assert_eq!(s, 200, "{b}");
    for (method, path, body) in [
        ("GET", "/groups", None),
        ("GET", "/subscribedSkus", None),
        (
            "PATCH",
            "/users/adele.vance@contoso.com",
            Some(json!({"jobTitle": "Boss"})),
        ),
        (
            "POST",
            "/users/adele.vance@contoso.com/assignLicense",
            Some(json!({"addLicenses": [], "removeLicenses": []})),
        ),
        (
            "POST",
            "/users/adele.vance@contoso.com/revokeSignInSessions",
            None,
        ),
        ("GET", "/users/adele.vance@contoso.com/memberOf", None),
        ("GET", "/deviceManagement/managedDevices", None),
    ] {
        let (s, b) = narrow.call(method, path, body).await?;
        assert_denied(s, &b, &format!("{method} {path}"));
    }
    // Nothing was changed by the refused writes.
    let (_, adele) = narrow
        .call(
            "GET",
            "/users/adele.vance@contoso.com?$select=jobTitle",
            None,
        )
        .await?;
    assert_ne!(adele["jobTitle"], "Boss");

    // Higher privileged permissions work where Microsoft lists them, but Directory.ReadWrite.All
    // does not delete users (only User.ReadWrite.All does).
    grant(
        &sb,
        json!({"application_permissions": ["Directory.ReadWrite.All"]}),
    )
    .await?;
    let dir = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = dir
        .call(
            "PATCH",
            "/users/adele.vance@contoso.com",
            Some(json!({"jobTitle": "Lead"})),
        )
        .await?;
    assert_eq!(s, 204, "{b}");
    let (s, b) = dir
        .call("DELETE", "/users/adele.vance@contoso.com", None)
        .await?;
    assert_denied(s, &b, "DELETE with Directory.ReadWrite.All");

    // Inside $batch each request is checked on its own: one denied, one served.
    let (s, b) = dir
        .call(
            "POST",
            "/$batch",
            Some(json!({"requests": [
                {"id": "1", "method": "GET", "url": "/users/adele.vance@contoso.com"},
                {"id": "2", "method": "GET", "url": "/deviceManagement/managedDevices"},
            ]})),
        )
        .await?;
    assert_eq!(s, 200, "{b}");
    let status_of = |id: &str| {
        b["responses"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["id"] == id))
            .map(|x| x["status"].clone())
    };
    assert_eq!(status_of("1"), Some(json!(200)), "{b}");
    assert_eq!(status_of("2"), Some(json!(403)), "{b}");
    Ok(())
}

#[tokio::test]
async fn delegated_scopes_and_consent_grant_the_registrations_permissions() -> Result<()> {
    let sb = sandbox().await?;
    // Delegated: password reset needs UserAuthenticationMethod.ReadWrite.All in `scp`.
    grant(
        &sb,
        json!({"delegated_permissions": ["Directory.AccessAsUser.All", "User.ReadWrite.All"]}),
    )
    .await?;
    let d = Graph::delegated(&sb, CONTOSO_TENANT).await?;
    let scp = claims(&d.token)?["scp"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!scp.contains("UserAuthenticationMethod"), "{scp}");
    let reset = "/users/adele.vance@contoso.com/authentication/methods/28c10230-6103-485e-b985-444c60001490/resetPassword";
    let (s, b) = d.call("POST", reset, Some(json!({}))).await?;
    assert_denied(s, &b, "delegated reset without the scope");
    // Directory.AccessAsUser.All covers directory reads for a signed-in admin.
    let (s, b) = d
        .call("GET", "/users/adele.vance@contoso.com", None)
        .await?;
    assert_eq!(s, 200, "{b}");

    // An admin's consent grants what the registration asks for now (a re-consent restores it).
    let redirect = "http://localhost:8080/v1/tenants/callback";
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!(
            "{}/login/{CONTOSO_TENANT}/oauth2/v2.0/authorize",
            sb.base_url
        ))
        .form(&[
            ("client_id", CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", redirect),
            (
                "scope",
                "https://graph.microsoft.com/.default offline_access",
            ),
            ("state", "s"),
            ("decision", "accept"),
        ])
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 302, "{}", r.text().await?);
    let (_, world) = admin(&sb, "GET", "/world/contoso", None).await?;
    let consent = world["tenant"]["consented_apps"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["client_id"] == CLIENT_ID))
        .cloned()
        .context("consent")?;
    assert_eq!(
        consent["scopes"],
        json!(steward_sandbox::GRAPH_DELEGATED_PERMISSIONS),
        "{consent}"
    );
    let d = Graph::delegated(&sb, CONTOSO_TENANT).await?;
    let (s, b) = d.call("POST", reset, Some(json!({}))).await?;
    assert_eq!(s, 202, "{b}");

    // App-only resetPassword is not supported whatever the app holds.
    grant(
        &sb,
        json!({"application_permissions": ["UserAuthenticationMethod.ReadWrite.All", "Directory.ReadWrite.All"]}),
    )
    .await?;
    let app = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = app.call("POST", reset, Some(json!({}))).await?;
    assert_denied(s, &b, "app-only reset");

    // Withdrawn consent: no service principal, so client credentials answer AADSTS700016.
    let (s, b) = admin(
        &sb,
        "DELETE",
        &format!("/companies/contoso/consents/{CLIENT_ID}"),
        None,
    )
    .await?;
    assert_eq!((s, &b["withdrawn"]), (200, &json!(true)), "{b}");
    let err = Graph::new(&sb, CONTOSO_TENANT)
        .await
        .err()
        .context("refused")?;
    assert!(err.to_string().contains("700016"), "{err}");
    Ok(())
}
