//! Certificate credentials at the token endpoint: the client assertion (a JWT signed with the
//! private key of a certificate uploaded to the app registration) checked as Microsoft's
//! identity platform checks it, with its AADSTS answers.
//!
//! Order of the checks: the assertion's form (three base64url parts, JSON, `alg` RS256/PS256),
//! the key (`x5t#S256`, else `x5t`, among the app's certificates), the key's validity on the
//! sandbox clock, the signature, then the claims (`aud` the token endpoint the request went to,
//! `iss` = `sub` = the client id, `jti`, `nbf`/`exp` with five minutes of skew).

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use rsa::RsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `client_assertion_type` Microsoft accepts.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew allowed on `nbf` and `exp`.
const SKEW_SECONDS: i64 = 300;

/// A certificate uploaded to an app registration (its public part).
#[derive(Debug, Clone)]
pub(crate) struct AppCertificate {
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub(crate) x5t_s256: String,
    /// base64url SHA-1 of the DER (`x5t`).
    pub(crate) x5t: String,
    /// Upper-case hex SHA-1, as Microsoft names keys in its errors.
    pub(crate) thumbprint: String,
    pub(crate) public_key: RsaPublicKey,
    pub(crate) not_before: DateTime<Utc>,
    pub(crate) not_after: DateTime<Utc>,
}

impl serde::Serialize for AppCertificate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "thumbprint": self.thumbprint,
            "not_before": self.not_before,
            "not_after": self.not_after,
        })
        .serialize(s)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl AppCertificate {
    /// Reads a PEM certificate with an RSA key.
    pub(crate) fn from_pem(pem: &str) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.trim().as_bytes())
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let public_key = RsaPublicKey::from_public_key_der(cert.public_key().raw)
            .map_err(|_| "its key is not RSA (Microsoft signs assertions with RSA)".to_owned())?;
        let at = |t: i64| Utc.timestamp_opt(t, 0).single().unwrap_or_default();
        let der = &pem.contents;
        let sha1 = sha1::Sha1::digest(der);
        Ok(Self {
            x5t_s256: b64url(&Sha256::digest(der)),
            x5t: b64url(&sha1),
            thumbprint: hex::encode_upper(sha1),
            public_key,
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }
}

/// A refused assertion: the AAD error and code, and its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    pub(crate) description: String,
}

fn refuse(error: &'static str, code: u32, description: impl Into<String>) -> Refusal {
    Refusal {
        error,
        code,
        description: description.into(),
    }
}

fn malformed(what: &str) -> Refusal {
    refuse(
        "invalid_client",
        50027,
        format!("JWT token is invalid or malformed: {what}."),
    )
}

const DOC: &str = "Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .";

/// Checks `assertion` for app `client_id` with `certificates`, presented at the token
/// endpoint whose accepted addresses are `audiences`, at `now` (the sandbox clock).
pub(crate) fn check(
    assertion: &str,
    client_id: &str,
    certificates: &[AppCertificate],
    audiences: &[String],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let parts: Vec<&str> = assertion.trim().split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return Err(malformed("it does not have three parts"));
    };
    let decode = |p: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p);
    let (Ok(hb), Ok(cb), Ok(signature)) = (decode(h), decode(c), decode(sig)) else {
        return Err(malformed("a part is not base64url"));
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&hb),
        serde_json::from_slice::<Value>(&cb),
    ) else {
        return Err(malformed("a part is not JSON"));
    };
    let alg = header["alg"].as_str().unwrap_or_default();
    if alg != "RS256" && alg != "PS256" {
        return Err(refuse(
            "invalid_client",
            700027,
            "Invalid JWT token. Unsupported asymmetric signing algorithm.",
        ));
    }
    let presented = header["x5t#S256"]
        .as_str()
        .map(|t| (t, true))
        .or_else(|| header["x5t"].as_str().map(|t| (t, false)));
    let key = presented.and_then(|(t, s256)| {
        certificates
            .iter()
            .find(|c| if s256 { c.x5t_s256 == t } else { c.x5t == t })
    });
    let Some(key) = key else {
        return Err(refuse(
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'. Review the documentation at https://learn.microsoft.com/en-us/graph/deployments if you are not using the global cloud.]",
                presented.map(|(t, _)| t).unwrap_or_default()
            ),
        ));
    };
    if now > key.not_after || now < key.not_before {
        return Err(refuse(
            "invalid_client",
            700027,
            format!(
                "Client assertion contains an invalid signature. [Reason - The key used is expired. Thumbprint of key used by client: '{}', Found key 'Start={}, End={}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]",
                key.thumbprint,
                key.not_before.format("%m/%d/%Y %H:%M:%S"),
                key.not_after.format("%m/%d/%Y %H:%M:%S"),
            ),
        ));
    }
    let signed = format!("{h}.{c}");
    let valid = if alg == "RS256" {
        rsa::pkcs1v15::Signature::try_from(signature.as_slice()).is_ok_and(|s| {
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.public_key.clone())
                .verify(signed.as_bytes(), &s)
                .is_ok()
        })
    } else {
        rsa::pss::Signature::try_from(signature.as_slice()).is_ok_and(|s| {
            rsa::pss::VerifyingKey::<Sha256>::new(key.public_key.clone())
                .verify(signed.as_bytes(), &s)
                .is_ok()
        })
    };
    if !valid {
        return Err(refuse(
            "invalid_client",
            700027,
            "Client assertion failed signature validation.",
        ));
    }
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !audiences.iter().any(|a| a.eq_ignore_ascii_case(aud)) {
        return Err(refuse(
            "invalid_client",
            700023,
            format!("Client assertion audience claim does not match Realm issuer. {DOC}"),
        ));
    }
    for claim in ["iss", "sub"] {
        if claims[claim].as_str() != Some(client_id) {
            return Err(refuse(
                "invalid_client",
                700021,
                format!(
                    "Client assertion application identifier doesn't match 'client_id' parameter. {DOC}"
                ),
            ));
        }
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err(refuse(
            "invalid_request",
            90014,
            "The required field 'jti' is missing from the credential. Ensure that you have all the necessary parameters for the login request.",
        ));
    }
    let (Some(nbf), Some(exp)) = (claims["nbf"].as_i64(), claims["exp"].as_i64()) else {
        return Err(malformed("nbf or exp is missing"));
    };
    let t = now.timestamp();
    if t + SKEW_SECONDS < nbf || t - SKEW_SECONDS >= exp {
        let at = |s: i64| {
            Utc.timestamp_opt(s, 0)
                .single()
                .map(|d| d.format("%m/%d/%Y %H:%M:%S").to_string())
                .unwrap_or_default()
        };
        return Err(refuse(
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}.{:07}Z, assertion valid from {}, expiry time of assertion {}. {DOC}",
                now.format("%Y-%m-%dT%H:%M:%S"),
                now.timestamp_subsec_nanos() / 100,
                at(nbf),
                at(exp)
            ),
        ));
    }
    Ok(())
}
