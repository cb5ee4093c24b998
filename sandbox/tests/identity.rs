//! Token endpoint: grants, rotation, 90-day inactivity, revocation, and the errors Microsoft
//! answers with; plus bearer checks on Graph and Exchange.

mod common;

use anyhow::Result;
use common::*;
use serde_json::json;

fn codes(body: &serde_json::Value) -> Vec<u64> {
    body["error_codes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn client_credentials_and_its_errors() -> Result<()> {
    let sb = sandbox().await?;
    let ok = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("scope", GRAPH),
    ];
    let (s, b) = token_request(&sb, CONTOSO_TENANT, &ok).await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["expires_in"], 3599);
    assert_eq!(b["access_token"].as_str().unwrap().split('.').count(), 3);
    // A verified domain names the tenant as well as its id.
    let (s, _) = token_request(&sb, "contoso.com", &ok).await?;
    assert_eq!(s, 200);

    let (s, b) = token_request(&sb, "00000000-0000-4000-8000-000000000000", &ok).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_tenant")));
    assert_eq!(codes(&b), vec![90002]);
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS90002:")
    );
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(b[k].is_string(), "{k} missing from {b}");
    }

    let mut bad = ok;
    bad[2] = ("client_secret", "wrong");
    let (s, b) = token_request(&sb, CONTOSO_TENANT, &bad).await?;
    assert_eq!((s, b["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(codes(&b), vec![7000215]);
    assert!(
        !b.to_string().contains("wrong"),
        "the secret must not be echoed"
    );

    let mut unknown = ok;
    unknown[1] = ("client_id", "11111111-2222-4333-8444-555555555555");
    let (s, b) = token_request(&sb, CONTOSO_TENANT, &unknown).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("unauthorized_client")));
    assert_eq!(codes(&b), vec![700016]);

    // Northwind never consented to the partner app: no service principal there, 700016.
    let (s, b) = token_request(&sb, NORTHWIND_TENANT, &ok).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("unauthorized_client")));
    assert_eq!(codes(&b), vec![700016]);

    let (s, b) = token_request(&sb, CONTOSO_TENANT, &[("client_id", CLIENT_ID)]).await?;
    assert_eq!((s, codes(&b)), (400, vec![900144]));
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("'grant_type'")
    );

    let mut bad_scope = ok;
    bad_scope[3] = ("scope", "https://management.azure.com/.default");
    let (s, b) = token_request(&sb, CONTOSO_TENANT, &bad_scope).await?;
    assert_eq!((s, codes(&b)), (400, vec![500011]));

    let mut grant = ok;
    grant[0] = ("grant_type", "password");
    let (s, b) = token_request(&sb, CONTOSO_TENANT, &grant).await?;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    Ok(())
}

fn refresh_form(rt: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "refresh_token".to_owned()),
        ("client_id", CLIENT_ID.to_owned()),
        ("client_secret", CLIENT_SECRET.to_owned()),
        ("refresh_token", rt.to_owned()),
        ("scope", format!("offline_access {GRAPH}")),
    ]
}

async fn refresh(
    sb: &steward_sandbox::RunningSandbox,
    tenant: &str,
    rt: &str,
) -> Result<(u16, serde_json::Value)> {
    let form = refresh_form(rt);
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    token_request(sb, tenant, &pairs).await
}

#[tokio::test]
async fn refresh_rotates_and_expires_after_90_days_of_inactivity() -> Result<()> {
    let sb = sandbox().await?;
    let (s, first) = refresh(&sb, CONTOSO_TENANT, PARTNER_RT).await?;
    assert_eq!(s, 200, "{first}");
    let rt1 = first["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt1, PARTNER_RT, "refresh must rotate the refresh token");
    // The partner's token works across customer tenants that consented.
    let (s, second) = refresh(&sb, FABRIKAM_TENANT, &rt1).await?;
    assert_eq!(s, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(rt2, rt1);
    // The delegated access token works on Graph.
    let g = Graph {
        base: format!("{}/graph/v1.0", sb.base_url),
        token: second["access_token"].as_str().unwrap().to_owned(),
        http: client(),
    };
    let (s, _) = g.call("GET", "/users", None).await?;
    assert_eq!(s, 200);

    // 89 days later rt2 still works (and rotates again into rt3).
    advance(&sb, 89 * 86_400).await?;
    let (s, third) = refresh(&sb, CONTOSO_TENANT, &rt2).await?;
    assert_eq!(s, 200, "{third}");
    let rt3 = third["refresh_token"].as_str().unwrap().to_owned();
    // Two more days: rt2 (issued 91 days ago) is dead, rt3 (2 days old) is fine.
    advance(&sb, 2 * 86_400).await?;
    let (s, b) = refresh(&sb, CONTOSO_TENANT, &rt2).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(codes(&b), vec![700082]);
    assert!(
        b["error_description"]
            .as_str()
            .unwrap()
            .contains("inactivity")
    );
    let (s, _) = refresh(&sb, CONTOSO_TENANT, &rt3).await?;
    assert_eq!(s, 200);
    // The 90-day-old access token from before is long expired on Graph.
    let (s, b) = g.call("GET", "/users", None).await?;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "InvalidAuthenticationToken");
    assert!(b["error"]["message"].as_str().unwrap().contains("expired"));
    Ok(())
}

#[tokio::test]
async fn revoked_refresh_tokens_fail_with_50173() -> Result<()> {
    let sb = sandbox().await?;
    let (s, b) = admin(
        &sb,
        "POST",
        "/tokens/revoke",
        Some(json!({"user": "tech@examplemsp.com"})),
    )
    .await?;
    assert_eq!((s, b["revoked"].as_u64()), (200, Some(1)));
    let (s, b) = refresh(&sb, CONTOSO_TENANT, PARTNER_RT).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(codes(&b), vec![50173]);
    // Garbage refresh tokens are malformed grants, not revocations.
    let (s, b) = refresh(&sb, CONTOSO_TENANT, "not-a-token").await?;
    assert_eq!((s, codes(&b)), (400, vec![9002313]));
    Ok(())
}

#[tokio::test]
async fn apis_check_bearer_audience_and_tenant() -> Result<()> {
    let sb = sandbox().await?;
    let http = client();
    // No token on Graph: 401 in Graph's envelope.
    let r = http
        .get(format!("{}/graph/v1.0/users", sb.base_url))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let b: serde_json::Value = r.json().await?;
    assert_eq!(b["error"]["code"], "InvalidAuthenticationToken");
    assert!(b["error"]["innerError"]["request-id"].is_string());
    // An Exchange token is not a Graph token.
    let exo = app_token(&sb, CONTOSO_TENANT, OUTLOOK).await?;
    let r = http
        .get(format!("{}/graph/v1.0/users", sb.base_url))
        .bearer_auth(&exo)
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // A Contoso Exchange token can't drive Fabrikam's Exchange.
    let r = http
        .post(format!(
            "{}/outlook/adminapi/beta/{FABRIKAM_TENANT}/InvokeCommand",
            sb.base_url
        ))
        .bearer_auth(&exo)
        .json(&json!({"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}}))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    // The Graph token sees only its own tenant.
    let g = Graph::new(&sb, CONTOSO_TENANT).await?;
    let (s, b) = g.call("GET", "/users", None).await?;
    assert_eq!(s, 200);
    let upns: Vec<&str> = b["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["userPrincipalName"].as_str())
        .collect();
    assert!(upns.iter().all(|u| u.ends_with("contoso.com")), "{upns:?}");
    // An access token lives an hour on the sandbox clock.
    advance(&sb, 3600).await?;
    let (s, _) = g.call("GET", "/users", None).await?;
    assert_eq!(s, 401);
    Ok(())
}

/// `client_secret_basic`: the client's id and secret in `Authorization: Basic`, as Microsoft
/// accepts them besides `client_secret_post`.
#[tokio::test]
async fn client_secret_basic_is_accepted() -> Result<()> {
    let sb = sandbox().await?;
    let post = |auth: String| {
        client()
            .post(format!(
                "{}/login/{CONTOSO_TENANT}/oauth2/v2.0/token",
                sb.base_url
            ))
            .header("Authorization", auth)
            .form(&[("grant_type", "client_credentials"), ("scope", GRAPH)])
            .send()
    };
    let basic = |id: &str, secret: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    };
    let r = post(basic(CLIENT_ID, CLIENT_SECRET)).await?;
    assert_eq!(r.status().as_u16(), 200);
    let b: serde_json::Value = r.json().await?;
    assert!(b["access_token"].is_string(), "{b}");
    let r = post(basic(CLIENT_ID, "wrong")).await?;
    assert_eq!(r.status().as_u16(), 401);
    let b: serde_json::Value = r.json().await?;
    assert_eq!(codes(&b), vec![7000215]);
    Ok(())
}
