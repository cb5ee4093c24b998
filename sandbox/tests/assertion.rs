//! Certificate credentials at the token endpoint over real HTTP: a client assertion signed with
//! the key of the certificate uploaded to the app (RS256 and PS256) gets a token; each bad one
//! gets the AADSTS answer Microsoft gives.

mod common;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use common::*;
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const KEY: &str = include_str!("../fixtures/certs/steward.key.pem");
const CERT: &str = include_str!("../fixtures/certs/steward.cert.pem");
const OTHER_KEY: &str = include_str!("../fixtures/certs/other.key.pem");
const OTHER_CERT: &str = include_str!("../fixtures/certs/other.cert.pem");
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

fn x5t_s256(cert: &str) -> String {
    b64(&Sha256::digest(der(cert)))
}

fn sign(alg: &str, key_pem: &str, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = RsaPrivateKey::from_pkcs8_pem(key_pem).expect("key");
    let sig = match alg {
        "PS256" => rsa::pss::BlindedSigningKey::<Sha256>::new(key)
            .sign_with_rng(&mut rsa::rand_core::OsRng, input.as_bytes())
            .to_vec(),
        _ => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
            .sign(input.as_bytes())
            .to_vec(),
    };
    format!("{input}.{}", b64(&sig))
}

struct Case {
    alg: &'static str,
    key: &'static str,
    header: Value,
    claims: Value,
}

impl Case {
    fn good(sb: &steward_sandbox::RunningSandbox, now: i64) -> Self {
        Self {
            alg: "RS256",
            key: KEY,
            header: json!({"alg": "RS256", "typ": "JWT", "x5t#S256": x5t_s256(CERT)}),
            claims: json!({
                "aud": format!("{}/login/{CONTOSO_TENANT}/oauth2/v2.0/token", sb.base_url),
                "iss": CLIENT_ID, "sub": CLIENT_ID, "jti": "5f0c8b0e-6a57-4a43-9a39-0f7b2b8c1d11",
                "nbf": now, "iat": now, "exp": now + 600,
            }),
        }
    }

    async fn send(&self, sb: &steward_sandbox::RunningSandbox) -> Result<(u16, Value)> {
        let assertion = sign(self.alg, self.key, &self.header, &self.claims);
        token_request(
            sb,
            CONTOSO_TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
                ("scope", GRAPH),
            ],
        )
        .await
    }
}

async fn sandbox_now(sb: &steward_sandbox::RunningSandbox) -> Result<i64> {
    let (_, c) = admin(sb, "GET", "/clock", None).await?;
    let now = c["now"].as_str().context("now")?;
    Ok(chrono::DateTime::parse_from_rfc3339(now)?.timestamp())
}

fn assert_aad(status: u16, body: &Value, want_status: u16, error: &str, code: u64, text: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    let d = body["error_description"].as_str().unwrap_or_default();
    assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    assert!(d.contains(text), "{d} lacks {text:?}");
}

#[tokio::test]
async fn a_good_assertion_gets_a_token_and_each_bad_one_its_aadsts_error() -> Result<()> {
    let sb = sandbox().await?;
    let now = sandbox_now(&sb).await?;

    // RS256 and PS256, signed with the uploaded certificate's key: tokens that Graph serves.
    for alg in ["RS256", "PS256"] {
        let mut c = Case::good(&sb, now);
        c.alg = alg;
        c.header["alg"] = json!(alg);
        let (s, b) = c.send(&sb).await?;
        assert_eq!(s, 200, "{alg}: {b}");
        let token = b["access_token"].as_str().context("token")?;
        let r = client()
            .get(format!("{}/graph/v1.0/users?$top=1", sb.base_url))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{alg}");
    }
    // The legacy SHA-1 `x5t` header names the key too.
    let mut c = Case::good(&sb, now);
    c.header = json!({"alg": "RS256", "typ": "JWT", "x5t": b64(&<sha1::Sha1 as Digest>::digest(der(CERT)))});
    assert_eq!(c.send(&sb).await?.0, 200);

    // Signed by another key, naming the uploaded certificate: the signature does not verify.
    let mut c = Case::good(&sb, now);
    c.key = OTHER_KEY;
    let (s, b) = c.send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700027,
        "failed signature validation",
    );

    // A certificate the app does not have.
    let mut c = Case::good(&sb, now);
    c.key = OTHER_KEY;
    c.header["x5t#S256"] = json!(x5t_s256(OTHER_CERT));
    let (s, b) = c.send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700027,
        "The key was not found.",
    );

    // Another audience (Microsoft's own endpoint, not the one the request went to).
    let mut c = Case::good(&sb, now);
    c.claims["aud"] = json!(format!(
        "https://login.microsoftonline.com/{CONTOSO_TENANT}/oauth2/v2.0/token"
    ));
    let (s, b) = c.send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700023,
        "does not match Realm issuer",
    );
    // iss/sub of another app.
    let mut c = Case::good(&sb, now);
    c.claims["sub"] = json!("00000000-0000-0000-0000-000000000001");
    let (s, b) = c.send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700021,
        "doesn't match 'client_id'",
    );

    // Expired, and not valid yet (beyond the five minutes of skew).
    for (nbf, exp) in [(now - 1200, now - 600), (now + 900, now + 1500)] {
        let mut c = Case::good(&sb, now);
        c.claims["nbf"] = json!(nbf);
        c.claims["exp"] = json!(exp);
        let (s, b) = c.send(&sb).await?;
        assert_aad(
            s,
            &b,
            401,
            "invalid_client",
            700024,
            "not within its valid time range",
        );
    }

    // An algorithm Microsoft does not take for assertions.
    let mut c = Case::good(&sb, now);
    c.header["alg"] = json!("HS256");
    let (s, b) = c.send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700027,
        "Unsupported asymmetric signing algorithm",
    );

    // No jti.
    let mut c = Case::good(&sb, now);
    c.claims.as_object_mut().context("claims")?.remove("jti");
    let (s, b) = c.send(&sb).await?;
    assert_aad(s, &b, 400, "invalid_request", 90014, "'jti'");

    // A tampered payload fails the signature.
    let good = sign(
        "RS256",
        KEY,
        &Case::good(&sb, now).header,
        &Case::good(&sb, now).claims,
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut claims = Case::good(&sb, now).claims;
    claims["exp"] = json!(now + 86_400);
    parts[1] = b64(claims.to_string().as_bytes());
    let (s, b) = token_request(
        &sb,
        CONTOSO_TENANT,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &parts.join(".")),
            ("scope", GRAPH),
        ],
    )
    .await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700027,
        "failed signature validation",
    );

    // Once the certificate has expired (the sandbox clock moved eleven years on), even a
    // well-formed assertion is refused, naming the key's validity.
    advance(&sb, 10 * 365 * 86_400).await?;
    advance(&sb, 365 * 86_400).await?;
    let later = sandbox_now(&sb).await?;
    let (s, b) = Case::good(&sb, later).send(&sb).await?;
    assert_aad(
        s,
        &b,
        401,
        "invalid_client",
        700027,
        "The key used is expired.",
    );
    Ok(())
}
