//! Webhook authenticity, as each PSA defines it. Every comparison is constant-time.
//!
//! - **Autotask**: `X-Hook-Signature: sha1=<base64(HMAC-SHA1(secret key, body))>`, where Autotask
//!   signs its *escaped* form of the JSON (inside strings `& < > ' " \` +` and every non-ASCII
//!   UTF-16 unit as `\uXXXX`, upper-case hex). We check the escaped form first, then the raw
//!   bytes (sources: Autotask developer help "Webhooks", n8n-nodes-autotask `signature.ts` and its
//!   issue #6). **[unverified against live Autotask]**: whether `/` is escaped too.
//! - **ConnectWise PSA**: `x-content-signature: base64(HMAC-SHA256(key = SHA-256(signing_key),
//!   body))`, the signing key read from the callback's `Metadata.key_url`, which must be on the
//!   account's own ConnectWise site (else an attacker names their own key). Source: ConnectWise
//!   "PSA Callbacks" doc and `connectwise-rest`'s callback utility. **[unverified]** against a
//!   live site: whether the key is hashed as text or as base64-decoded bytes (we hash the text,
//!   as `connectwise-rest` does).
//! - **HaloPSA**: outbound webhooks carry no signature; their documented authentication is a
//!   Basic (username/password) or Bearer credential configured on the webhook (usehalo.com
//!   "Webhook Integration"; the Webhook API's `authentication_type`), so we compare the
//!   `Authorization` header with the stored credential.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a delivery is refused. Never carries the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The header that proves authenticity is absent.
    #[error("the `{0}` header is missing")]
    Missing(&'static str),
    /// The signature or credential does not match.
    #[error("the {0} does not match")]
    Mismatch(&'static str),
    /// The event is older than the account accepts.
    #[error(
        "the event is {age_seconds} s old; this account accepts events up to {max_seconds} s old"
    )]
    Stale {
        /// How old.
        age_seconds: i64,
        /// The limit.
        max_seconds: i64,
    },
    /// The callback names a signing-key URL outside the account's site.
    #[error("the callback's key_url is not on this account's ConnectWise site")]
    UntrustedKeyUrl,
    /// The signing key could not be fetched.
    #[error("the signing key could not be fetched: {0}")]
    KeyUnavailable(String),
}

/// Equal, in time that does not depend on where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so the length of the expected value leaks nothing either.
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    let mut diff = 0u8;
    for (x, y) in da.iter().zip(db.iter()) {
        diff |= x ^ y;
    }
    diff == 0 && a.len() == b.len()
}

/// Checks an Autotask delivery's `X-Hook-Signature`.
pub fn autotask(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing("X-Hook-Signature"))?.trim();
    let given = header
        .strip_prefix("sha1=")
        .or_else(|| header.strip_prefix("SHA1="))
        .unwrap_or(header);
    let Ok(given) = B64.decode(given.trim()) else {
        return Err(Refusal::Mismatch("X-Hook-Signature"));
    };
    let check = |msg: &[u8]| {
        let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(msg);
        mac.verify_slice(&given).is_ok()
    };
    let escaped = std::str::from_utf8(body).ok().map(escape_like_autotask);
    if escaped.as_deref().is_some_and(|e| check(e.as_bytes())) || check(body) {
        Ok(())
    } else {
        Err(Refusal::Mismatch("X-Hook-Signature"))
    }
}

/// Autotask's escaped form of a JSON text: what it signs.
pub fn escape_like_autotask(json_text: &str) -> String {
    let mut out = String::with_capacity(json_text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    for ch in json_text.chars() {
        if in_string && escaped {
            if ch == '"' {
                out.pop();
                out.push_str("\\u0022");
            } else {
                out.push(ch);
            }
            escaped = false;
            continue;
        }
        match ch {
            '\\' if in_string => {
                escaped = true;
                out.push(ch);
            }
            '"' => {
                in_string = !in_string;
                out.push(ch);
            }
            '&' | '<' | '>' | '\'' | '`' | '+' if in_string => {
                out.push_str(&format!("\\u{:04X}", ch as u32));
            }
            c if in_string && (c as u32) > 127 => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Signs like Autotask (for tests and the sandbox's twin).
pub fn autotask_signature(secret: &[u8], body: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(escape_like_autotask(body).as_bytes());
    format!("sha1={}", B64.encode(mac.finalize().into_bytes()))
}

/// ConnectWise's signature of `body` with `signing_key`.
pub fn connectwise_signature(signing_key: &str, body: &[u8]) -> String {
    let key = Sha256::digest(signing_key.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(body);
    B64.encode(mac.finalize().into_bytes())
}

/// Checks a ConnectWise callback's `x-content-signature` with its signing key.
pub fn connectwise(signing_key: &str, body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing("x-content-signature"))?;
    let Ok(given) = B64.decode(header.trim()) else {
        return Err(Refusal::Mismatch("x-content-signature"));
    };
    let key = Sha256::digest(signing_key.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| Refusal::Mismatch("x-content-signature"))
}

/// Whether a callback's `key_url` is on the account's site: same scheme, host and port as
/// `site`, and under its path.
pub fn key_url_trusted(site: &str, key_url: &str) -> bool {
    let (Ok(site), Ok(key)) = (url::Url::parse(site), url::Url::parse(key_url)) else {
        return false;
    };
    site.scheme() == key.scheme()
        && site.host_str().is_some()
        && site.host_str() == key.host_str()
        && site.port_or_known_default() == key.port_or_known_default()
        && key.path().starts_with(site.path().trim_end_matches('/'))
        && key.username().is_empty()
        && key.password().is_none()
}

/// A HaloPSA webhook's configured credential.
#[derive(Debug, Clone, Copy)]
pub enum HaloCredential<'a> {
    /// Basic authentication.
    Basic {
        /// The username.
        username: &'a str,
        /// The password.
        password: &'a str,
    },
    /// A bearer token.
    Bearer(&'a str),
}

/// Checks a HaloPSA delivery's `Authorization` header against the configured credential.
pub fn halo(expected: HaloCredential<'_>, header: Option<&str>) -> Result<(), Refusal> {
    let header = header.ok_or(Refusal::Missing("Authorization"))?.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let ok = match expected {
        HaloCredential::Basic { username, password } => {
            scheme.eq_ignore_ascii_case("basic") && {
                let want = B64.encode(format!("{username}:{password}"));
                ct_eq(rest.trim().as_bytes(), want.as_bytes())
            }
        }
        HaloCredential::Bearer(token) => {
            scheme.eq_ignore_ascii_case("bearer") && ct_eq(rest.trim().as_bytes(), token.as_bytes())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::Mismatch("Authorization credential"))
    }
}

/// Refuses an event older than `max_seconds` (or more than five minutes in the future).
pub fn fresh(
    event_time: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    max_seconds: i64,
) -> Result<(), Refusal> {
    let Some(t) = event_time else {
        return Ok(());
    };
    let age = (now - t).num_seconds();
    if age > max_seconds || age < -300 {
        return Err(Refusal::Stale {
            age_seconds: age,
            max_seconds,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autotask_accepts_its_escaped_signature_and_the_raw_one_refuses_others() {
        let body = r#"{"Fields":{"title":"Tom & Jerry <x> café"},"Id":1}"#;
        let sig = autotask_signature(b"k", body);
        assert_eq!(autotask(b"k", body.as_bytes(), Some(&sig)), Ok(()));
        // A sender that signs the raw bytes is accepted too.
        let mut mac = Hmac::<Sha1>::new_from_slice(b"k").unwrap();
        mac.update(body.as_bytes());
        let raw = format!("sha1={}", B64.encode(mac.finalize().into_bytes()));
        assert_eq!(autotask(b"k", body.as_bytes(), Some(&raw)), Ok(()));
        assert!(autotask(b"other", body.as_bytes(), Some(&sig)).is_err());
        assert!(autotask(b"k", b"{\"Id\":2}", Some(&sig)).is_err());
        assert_eq!(
            autotask(b"k", body.as_bytes(), None),
            Err(Refusal::Missing("X-Hook-Signature"))
        );
        assert!(autotask(b"k", body.as_bytes(), Some("sha1=not base64!")).is_err());
        assert_eq!(
            escape_like_autotask(r#"{"a":"x+y \"q\" é"}"#),
            r#"{"a":"x\u002By \u0022q\u0022 \u00E9"}"#
        );
    }

    #[test]
    fn connectwise_signature_and_key_url_checks() {
        let sig = connectwise_signature("abc", b"{}");
        assert_eq!(connectwise("abc", b"{}", Some(&sig)), Ok(()));
        assert!(connectwise("abd", b"{}", Some(&sig)).is_err());
        assert!(connectwise("abc", b"{ }", Some(&sig)).is_err());
        let site = "https://na.myconnectwise.net/v4_6_release/apis/3.0";
        assert!(key_url_trusted(
            site,
            "https://na.myconnectwise.net/v4_6_release/apis/3.0/system/callbackEntry/key?id=3"
        ));
        assert!(!key_url_trusted(
            site,
            "https://evil.example/v4_6_release/apis/3.0/key"
        ));
        assert!(!key_url_trusted(
            site,
            "http://na.myconnectwise.net/v4_6_release/apis/3.0/key"
        ));
        assert!(!key_url_trusted(
            site,
            "https://na.myconnectwise.net.evil.example/v4_6_release/apis/3.0/k"
        ));
        assert!(!key_url_trusted(
            site,
            "https://na.myconnectwise.net/other/key"
        ));
        assert!(!key_url_trusted(site, "not a url"));
    }

    #[test]
    fn halo_credentials_compare() {
        let basic = HaloCredential::Basic {
            username: "steward",
            password: "pw",
        };
        let good = format!("Basic {}", B64.encode("steward:pw"));
        assert_eq!(halo(basic, Some(&good)), Ok(()));
        assert!(halo(basic, Some(&format!("Basic {}", B64.encode("steward:pX")))).is_err());
        assert!(halo(basic, Some("Bearer pw")).is_err());
        assert!(halo(basic, None).is_err());
        assert_eq!(
            halo(HaloCredential::Bearer("t0k"), Some("Bearer t0k")),
            Ok(())
        );
        assert!(halo(HaloCredential::Bearer("t0k"), Some("Bearer t0")).is_err());
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }

    #[test]
    fn freshness() {
        let now = chrono::Utc::now();
        assert!(fresh(Some(now - chrono::Duration::seconds(10)), now, 60).is_ok());
        assert!(matches!(
            fresh(Some(now - chrono::Duration::seconds(100)), now, 60),
            Err(Refusal::Stale { .. })
        ));
        assert!(fresh(Some(now + chrono::Duration::seconds(3600)), now, 60).is_err());
        assert!(fresh(None, now, 60).is_ok());
    }
}
