//! What Microsoft's auth libraries read before and around a token: the OpenID configuration,
//! instance discovery, ID tokens and `client_info` on refresh, the correlation id in the query
//! string; and how the sandbox is reached: HTTPS with its own certificate, forwarding headers and
//! the public URL in the links it writes.

mod common;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use steward_sandbox::{Options, Sandbox, Tls};

async fn get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, Value)> {
    get_with(&client(), url, headers).await
}

async fn get_with(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Value)> {
    let mut req = http.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.context("a JSON body")?))
}

fn jwt_claims(token: &str) -> Result<Value> {
    let payload = token.split('.').nth(1).context("a JWT has three parts")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[tokio::test]
async fn openid_configuration_for_tenant_ids_and_verified_domains() -> Result<()> {
    let sb = sandbox().await?;
    let base = &sb.base_url;
    for tenant in [CONTOSO_TENANT, "contoso.com"] {
        let (s, doc) = get(
            &format!("{base}/login/{tenant}/v2.0/.well-known/openid-configuration"),
            &[],
        )
        .await?;
        assert_eq!(s, 200, "{doc}");
        // Always the tenant's id, even when a domain named it, as Microsoft answers.
        let root = format!("{base}/login/{CONTOSO_TENANT}");
        assert_eq!(doc["issuer"], format!("{root}/v2.0"));
        assert_eq!(doc["token_endpoint"], format!("{root}/oauth2/v2.0/token"));
        assert_eq!(
            doc["authorization_endpoint"],
            format!("{root}/oauth2/v2.0/authorize")
        );
        assert_eq!(doc["jwks_uri"], format!("{root}/discovery/v2.0/keys"));
        assert!(
            doc["response_types_supported"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("code")))
        );
    }
    let (s, keys) = get(
        &format!("{base}/login/contoso.com/discovery/v2.0/keys"),
        &[],
    )
    .await?;
    assert_eq!((s, &keys["keys"]), (200, &json!([])));

    let (s, b) = get(
        &format!("{base}/login/nowhere.example/v2.0/.well-known/openid-configuration"),
        &[],
    )
    .await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_tenant")));
    assert_eq!(b["error_codes"], json!([90002]));

    // A proxy's forwarding headers and a configured public URL decide the URLs it names.
    let (_, doc) = get(
        &format!("{base}/login/contoso.com/v2.0/.well-known/openid-configuration"),
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "sb.example:8443"),
        ],
    )
    .await?;
    assert_eq!(
        doc["issuer"],
        format!("https://sb.example:8443/login/{CONTOSO_TENANT}/v2.0")
    );
    let (_, doc) = get(
        &format!("{base}/login/contoso.com/v2.0/.well-known/openid-configuration"),
        &[("forwarded", "for=10.1.2.3;proto=https;host=edge.example")],
    )
    .await?;
    assert_eq!(
        doc["token_endpoint"],
        format!("https://edge.example/login/{CONTOSO_TENANT}/oauth2/v2.0/token")
    );
    let public = Sandbox::spawn(Options {
        public_url: Some("https://sandbox.example.com/".to_owned()),
        ..Options::default()
    })
    .await?;
    let (_, doc) = get(
        &format!(
            "{}/login/contoso.com/v2.0/.well-known/openid-configuration",
            public.base_url
        ),
        &[("x-forwarded-host", "ignored.example")],
    )
    .await?;
    assert_eq!(
        doc["issuer"],
        format!("https://sandbox.example.com/login/{CONTOSO_TENANT}/v2.0")
    );
    let bad = Sandbox::new(Options {
        public_url: Some("ftp://x".to_owned()),
        ..Options::default()
    })
    .unwrap_err()
    .to_string();
    assert!(bad.contains("public_url") && bad.contains("fix:"), "{bad}");
    Ok(())
}

#[tokio::test]
async fn instance_discovery_trusts_only_the_sandbox_itself() -> Result<()> {
    let sb = sandbox().await?;
    let base = &sb.base_url;
    let ask = |endpoint: String| {
        let url = reqwest::Url::parse_with_params(
            &format!("{base}/login/common/discovery/instance"),
            &[
                ("api-version", "1.1"),
                ("authorization_endpoint", &endpoint),
            ],
        );
        async move { get(url?.as_str(), &[]).await }
    };
    let (s, b) = ask(format!("{base}/login/contoso.com/oauth2/v2.0/authorize")).await?;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["tenant_discovery_endpoint"],
        format!("{base}/login/contoso.com/v2.0/.well-known/openid-configuration")
    );
    let host = base.trim_start_matches("http://");
    assert_eq!(b["metadata"][0]["preferred_network"], host);
    assert_eq!(b["metadata"][0]["aliases"], json!([host]));

    let (s, b) =
        ask("https://login.evil.example/contoso.com/oauth2/v2.0/authorize".to_owned()).await?;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_instance")));
    assert_eq!(b["error_codes"], json!([50049]));
    Ok(())
}

#[tokio::test]
async fn refresh_with_openid_returns_an_id_token_client_info_and_the_granted_scopes() -> Result<()>
{
    let sb = sandbox().await?;
    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("client_secret", CLIENT_SECRET),
        ("refresh_token", PARTNER_RT),
        (
            "scope",
            "https://graph.microsoft.com/.default offline_access openid profile",
        ),
        ("client_info", "1"),
    ];
    let (s, b) = token_request(&sb, "contoso.com", &form).await?;
    assert_eq!(s, 200, "{b}");
    let scopes: Vec<&str> = b["scope"].as_str().context("scope")?.split(' ').collect();
    assert!(
        !scopes.iter().any(|s| s.ends_with("/.default")),
        "{scopes:?}"
    );
    for want in [
        "https://graph.microsoft.com/Directory.AccessAsUser.All",
        "openid",
        "profile",
        "offline_access",
    ] {
        assert!(scopes.contains(&want), "{want} missing from {scopes:?}");
    }
    let id = jwt_claims(b["id_token"].as_str().context("id_token")?)?;
    assert_eq!(id["aud"], CLIENT_ID);
    assert_eq!(
        id["iss"],
        format!("{}/login/{CONTOSO_TENANT}/v2.0", sb.base_url)
    );
    assert_eq!(id["tid"], CONTOSO_TENANT);
    assert_eq!(id["ver"], "2.0");
    assert_eq!(id["preferred_username"], "tech@examplemsp.com");
    for k in ["oid", "sub", "name"] {
        assert!(id[k].as_str().is_some_and(|v| !v.is_empty()), "{k} in {id}");
    }
    let (iat, nbf, exp) = (id["iat"].as_i64(), id["nbf"].as_i64(), id["exp"].as_i64());
    assert!(iat.is_some() && iat == nbf && exp > iat, "{id}");
    let info: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b["client_info"].as_str().context("client_info")?)?,
    )?;
    assert_eq!(info["uid"], id["oid"]);
    // The technician's home is the MSP's tenant, not the customer's.
    assert!(
        info["utid"].as_str().is_some_and(|t| t != CONTOSO_TENANT),
        "{info}"
    );

    // Without openid and client_info=1: neither (as the identity platform answers).
    let rotated = b["refresh_token"].as_str().context("refresh_token")?;
    let (s, b) = token_request(
        &sb,
        CONTOSO_TENANT,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", rotated),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await?;
    assert_eq!(s, 200, "{b}");
    assert!(
        b.get("id_token").is_none() && b.get("client_info").is_none(),
        "{b}"
    );
    Ok(())
}

#[tokio::test]
async fn the_token_endpoint_takes_the_correlation_id_from_the_query_string() -> Result<()> {
    let sb = sandbox().await?;
    let r = client()
        .post(format!(
            "{}/login/{CONTOSO_TENANT}/oauth2/v2.0/token?client-request-id=7a1c0d2e-0000-4000-8000-000000000001",
            sb.base_url
        ))
        .form(&[("grant_type", "client_credentials"), ("client_id", CLIENT_ID)])
        .send()
        .await?;
    assert_eq!(
        r.headers()
            .get("client-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("7a1c0d2e-0000-4000-8000-000000000001")
    );
    let b: Value = r.json().await?;
    assert_eq!(b["correlation_id"], "7a1c0d2e-0000-4000-8000-000000000001");
    Ok(())
}

#[tokio::test]
async fn https_with_a_certificate_it_makes_and_links_that_say_https() -> Result<()> {
    let sb = Sandbox::spawn_tls(Options::default(), None).await?;
    assert!(
        sb.base_url.starts_with("https://127.0.0.1:"),
        "{}",
        sb.base_url
    );
    let ca = sb.trust_pem.as_deref().context("a CA to trust")?;
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .build()?;
    let (s, doc) = get_with(
        &trusting,
        &format!(
            "{}/login/contoso.com/v2.0/.well-known/openid-configuration",
            sb.base_url
        ),
        &[],
    )
    .await?;
    assert_eq!(s, 200);
    assert_eq!(
        doc["issuer"],
        format!("{}/login/{CONTOSO_TENANT}/v2.0", sb.base_url)
    );
    // A client that does not trust the sandbox's CA gets no answer.
    assert!(
        client()
            .get(format!("{}/admin/ledger", sb.base_url))
            .send()
            .await
            .is_err()
    );

    // Paging links keep the scheme the client used.
    let r = trusting
        .post(format!(
            "{}/login/{CONTOSO_TENANT}/oauth2/v2.0/token",
            sb.base_url
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("scope", GRAPH),
        ])
        .send()
        .await?;
    let token: Value = r.json().await?;
    let token = token["access_token"].as_str().context("access_token")?;
    let page: Value = trusting
        .get(format!("{}/graph/v1.0/users?$top=1", sb.base_url))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    let next = page["@odata.nextLink"].as_str().context("nextLink")?;
    assert!(
        next.starts_with(&format!("{}/graph/v1.0/users?", sb.base_url)),
        "{next}"
    );
    assert!(
        page["@odata.context"]
            .as_str()
            .is_some_and(|c| c.starts_with("https://")),
        "{page}"
    );
    Ok(())
}

#[tokio::test]
async fn tls_from_pem_files_and_clear_errors_for_bad_ones() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate")?;
    let err = Tls::from_pem_files(&bad, &bad).unwrap_err().to_string();
    assert!(err.contains("bad.pem") && err.contains("fix:"), "{err}");
    let err = Tls::from_pem_files(&dir.path().join("missing.pem"), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    Ok(())
}
