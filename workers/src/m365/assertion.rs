//! Certificate credentials: the signed client assertion Microsoft's identity platform accepts
//! instead of a client secret.
//!
//! The token request carries `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`
//! and `client_assertion`, a JWT signed with the certificate's private key: header `alg` `RS256`
//! or `PS256`, `typ` `JWT`, `x5t#S256` (the base64url SHA-256 thumbprint of the certificate's
//! DER); claims `aud` (the token endpoint the request goes to), `iss` = `sub` = the client id,
//! `jti` (unique), `nbf`, `iat` and `exp` (ten minutes). The private key is held as a [`Secret`]
//! (it is stored sealed like a client secret) and is parsed only to sign.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::m365::credentials::Secret;

/// The `client_assertion_type` of a JWT client assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid.
const LIFETIME_SECONDS: u64 = 600;

/// The signature algorithm of the assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[default]
    Rs256,
    /// RSASSA-PSS with SHA-256 (salt 32 bytes).
    Ps256,
}

impl Algorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
        }
    }

    /// Parses `RS256` / `PS256` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate or key cannot be used. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The certificate is not a PEM X.509 certificate.
    #[error(
        "`certificate` is not a PEM X.509 certificate ({0}); fix: give the certificate uploaded to the app registration, as PEM (-----BEGIN CERTIFICATE-----)"
    )]
    Certificate(String),
    /// The certificate's key is not RSA.
    #[error(
        "`certificate` does not hold an RSA public key; fix: Microsoft accepts RSA certificates for client assertions (RS256/PS256), make one with an RSA key of 2048 bits or more"
    )]
    NotRsa,
    /// The private key cannot be read.
    #[error(
        "`private_key` is not a PEM RSA private key (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE KEY`, unencrypted); fix: export the certificate's private key as unencrypted PEM"
    )]
    Key,
    /// The key is not the certificate's.
    #[error(
        "`private_key` does not belong to `certificate`; fix: give the private key of that certificate"
    )]
    Mismatch,
    /// The certificate has expired or is not valid yet.
    #[error(
        "`certificate` is valid from {not_before} to {not_after} (Unix seconds), not now; fix: upload a current certificate to the app registration and give it here"
    )]
    NotValidNow {
        /// Start of validity.
        not_before: i64,
        /// End of validity.
        not_after: i64,
    },
    /// Signing failed.
    #[error("the client assertion could not be signed: {0}")]
    Sign(String),
}

/// A certificate credential, ready to sign assertions.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The certificate as given (PEM): public, kept to show and to store.
    pub certificate_pem: String,
    /// The private key (PEM).
    pub private_key: Secret,
    /// RS256 or PS256.
    pub algorithm: Algorithm,
    /// base64url SHA-256 of the certificate's DER (`x5t#S256`).
    pub thumbprint_s256: String,
    /// Hex SHA-1 of the DER, as the Azure portal shows a certificate's thumbprint.
    pub thumbprint_sha1_hex: String,
    /// End of validity (Unix seconds).
    pub not_after: i64,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("thumbprint", &self.thumbprint_sha1_hex)
            .field("algorithm", &self.algorithm)
            .field("private_key", &self.private_key)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn parse_key(pem: &str) -> Result<RsaPrivateKey, CertificateError> {
    RsaPrivateKey::from_pkcs8_pem(pem.trim())
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem.trim()))
        .map_err(|_| CertificateError::Key)
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ClientCertificate {
    /// Checks a certificate (PEM) and its private key (PEM) belong together, hold RSA, and are
    /// valid now; `at` is "now" in Unix seconds (`None`: the system clock).
    pub fn from_pem(
        certificate_pem: &str,
        private_key: Secret,
        algorithm: Algorithm,
        at: Option<i64>,
    ) -> Result<Self, CertificateError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(certificate_pem.trim().as_bytes())
            .map_err(|e| CertificateError::Certificate(e.to_string()))?;
        if pem.label != "CERTIFICATE" {
            return Err(CertificateError::Certificate(format!(
                "the PEM block is `{}`",
                pem.label
            )));
        }
        let cert = pem
            .parse_x509()
            .map_err(|e| CertificateError::Certificate(e.to_string()))?;
        let public = RsaPublicKey::from_public_key_der(cert.public_key().raw)
            .map_err(|_| CertificateError::NotRsa)?;
        let key = parse_key(private_key.expose())?;
        if RsaPublicKey::from(&key) != public {
            return Err(CertificateError::Mismatch);
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let now = at.unwrap_or_else(now_unix);
        if now < not_before || now > not_after {
            return Err(CertificateError::NotValidNow {
                not_before,
                not_after,
            });
        }
        let der = &pem.contents;
        let sha1 = hex::encode_upper(sha1::Sha1::digest(der));
        Ok(Self {
            certificate_pem: certificate_pem.trim().to_owned(),
            private_key,
            algorithm,
            thumbprint_s256: b64url(&Sha256::digest(der)),
            thumbprint_sha1_hex: sha1,
            not_after,
        })
    }

    /// A signed client assertion for `client_id` at the token endpoint `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<Secret, CertificateError> {
        let now = u64::try_from(now_unix()).unwrap_or(0);
        let header = serde_json::json!({
            "alg": self.algorithm.as_str(),
            "typ": "JWT",
            "x5t#S256": self.thumbprint_s256,
        });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_v4(),
            "nbf": now,
            "iat": now,
            "exp": now + LIFETIME_SECONDS,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let key = parse_key(self.private_key.expose())?;
        let signature = match self.algorithm {
            Algorithm::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
                .try_sign(signing_input.as_bytes())
                .map_err(|e| CertificateError::Sign(e.to_string()))?
                .to_vec(),
            Algorithm::Ps256 => rsa::pss::BlindedSigningKey::<Sha256>::new(key)
                .try_sign_with_rng(&mut rsa::rand_core::OsRng, signing_input.as_bytes())
                .map_err(|e| CertificateError::Sign(e.to_string()))?
                .to_vec(),
        };
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            b64url(&signature)
        )))
    }
}

/// A random (version 4) GUID for `jti`.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = include_str!("../../../sandbox/fixtures/certs/steward.cert.pem");
    const KEY: &str = include_str!("../../../sandbox/fixtures/certs/steward.key.pem");
    const OTHER_KEY: &str = include_str!("../../../sandbox/fixtures/certs/other.key.pem");

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(i).expect("part"))
            .expect("base64url");
        serde_json::from_slice(&b).expect("json")
    }

    #[test]
    fn assertions_carry_microsofts_header_and_claims_and_bad_inputs_name_the_field() {
        let c = ClientCertificate::from_pem(CERT, Secret::new(KEY), Algorithm::Ps256, None)
            .expect("good pair");
        assert!(!format!("{c:?}").contains("PRIVATE"), "{c:?}");
        assert_eq!(c.thumbprint_sha1_hex.len(), 40);
        let jwt = c
            .assertion("app-id", "https://login.example/t/oauth2/v2.0/token")
            .expect("signed");
        let (h, claims) = (part(jwt.expose(), 0), part(jwt.expose(), 1));
        assert_eq!(h["alg"], "PS256");
        assert_eq!(h["typ"], "JWT");
        assert_eq!(h["x5t#S256"], c.thumbprint_s256.as_str());
        assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert_eq!(
            (&claims["iss"], &claims["sub"]),
            (&claims["sub"], &"app-id".into())
        );
        assert_eq!(claims["jti"].as_str().map(str::len), Some(36));
        let (nbf, exp) = (claims["nbf"].as_i64(), claims["exp"].as_i64());
        assert_eq!(exp.zip(nbf).map(|(e, n)| e - n), Some(600));
        // Two assertions never share a jti.
        let again = c.assertion("app-id", "x").expect("signed");
        assert_ne!(part(again.expose(), 1)["jti"], claims["jti"]);

        assert_eq!(
            ClientCertificate::from_pem(CERT, Secret::new(OTHER_KEY), Algorithm::Rs256, None),
            Err(CertificateError::Mismatch)
        );
        assert_eq!(
            ClientCertificate::from_pem(CERT, Secret::new("x"), Algorithm::Rs256, None),
            Err(CertificateError::Key)
        );
        assert!(matches!(
            ClientCertificate::from_pem("x", Secret::new(KEY), Algorithm::Rs256, None),
            Err(CertificateError::Certificate(_))
        ));
        // Eleven years on, the certificate is no longer valid.
        let later = now_unix() + 11 * 365 * 86_400;
        assert!(matches!(
            ClientCertificate::from_pem(CERT, Secret::new(KEY), Algorithm::Rs256, Some(later)),
            Err(CertificateError::NotValidNow { .. })
        ));
        assert_eq!(Algorithm::parse("ps256"), Some(Algorithm::Ps256));
        assert_eq!(Algorithm::parse("HS256"), None);
    }
}
