//! Passwords and sessions: reset a password, sign a user out everywhere, remove MFA methods.
//! None of these can be undone; each records what it saw for the audit.

use rand::Rng as _;
use rand::seq::SliceRandom as _;
use serde_json::{Value, json};
use steward_schemas::OpSpec;

use super::{
    Body, Ctx, Fail, OpResult, catalog, done, irreversible, opt_text, s, seg, synced, text,
};
use crate::m365::credentials::Secret;
use crate::op::{OpError, OpOutcome};

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("user.reset_password"), |c, i| {
        Box::pin(reset_password(c, i))
    }));
    v.push((catalog("user.revoke_sessions"), |c, i| {
        Box::pin(revoke_sessions(c, i))
    }));
    v.push((catalog("mfa.remove_methods"), |c, i| {
        Box::pin(remove_methods(c, i))
    }));
}

/// The password method's fixed id (Graph's `passwordAuthenticationMethod`).
const PASSWORD_METHOD: &str = "28c10230-6103-485e-b985-444c60001490";

/// A 16-character password from the thread's CSPRNG (ChaCha12 seeded from the operating
/// system), with a lower-case letter, an upper-case letter, a digit and a symbol, and no
/// look-alike characters. It is only ever held as a [`Secret`].
pub(crate) fn generate_password() -> Secret {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYMBOL: &[u8] = b"!#%+-=?@^_";
    const ALL: [&[u8]; 4] = [LOWER, UPPER, DIGIT, SYMBOL];
    let mut rng = rand::rng();
    let mut chars: Vec<u8> = ALL
        .iter()
        .map(|set| set[rng.random_range(0..set.len())])
        .collect();
    while chars.len() < 16 {
        let set = ALL[rng.random_range(0..ALL.len())];
        chars.push(set[rng.random_range(0..set.len())]);
    }
    chars.shuffle(&mut rng);
    Secret::new(String::from_utf8(chars).expect("ASCII"))
}

async fn user_with(c: &Ctx<'_>, input: &Value, select: &str) -> Result<Value, Fail> {
    let key = text(input, "user")?;
    c.m.graph
        .get_opt(
            &c.call,
            &format!(
                "/users/{}?$select=id,userPrincipalName,onPremisesSyncEnabled,{select}",
                seg(key)
            ),
        )
        .await?
        .ok_or_else(|| {
            Fail::Op(OpError::Terminal {
                message: format!("input `user`: no user `{key}` in the tenant"),
                code: Some("Request_ResourceNotFound".to_owned()),
            })
        })
}

async fn reset_password(c: &Ctx<'_>, input: &Value) -> OpResult {
    match opt_text(input, "password_ref")? {
        None | Some("generate") => {}
        Some(_) => {
            return Err(OpError::bad_input(
                "password_ref",
                "reading a chosen password from the secret store is not supported yet; write `generate` and a new password is generated and delivered by one-time link",
            )
            .into());
        }
    }
    let u = user_with(c, input, "lastPasswordChangeDateTime").await?;
    let (id, upn) = (
        s(&u, "id").to_owned(),
        s(&u, "userPrincipalName").to_owned(),
    );
    let last = u
        .get("lastPasswordChangeDateTime")
        .cloned()
        .unwrap_or(Value::Null);
    let prior = c.prior(json!({"lastPasswordChangeDateTime": last})).await?;
    let kept =
        c.m.secrets
            .keep(
                &c.cx.idempotency_key(),
                &format!("new password of {upn}"),
                generate_password(),
            )
            .await
            .map_err(|e| OpError::retryable(e.to_string()))?;
    let output = json!({"delivery": {"kind": "one_time_secret", "reference": kept.reference}});
    let rollback = irreversible(
        "a password reset cannot be undone (the old password is not known); issue another if needed",
        prior.clone(),
    );
    if prior["lastPasswordChangeDateTime"] != last || c.was_done().await? {
        // An earlier attempt of this step changed it (with the same kept password).
        return done(output, rollback);
    }
    if synced(&u) {
        // Synced users: Graph's resetPassword writes back to AD (needs password writeback); it is
        // not available to app-only callers, so it runs with the tenant's delegated access.
        let answer =
            c.m.graph
                .post(
                    &c.call.delegated(),
                    &format!("/users/{id}/authentication/methods/{PASSWORD_METHOD}/resetPassword"),
                    &json!({"newPassword": kept.secret.expose()}),
                )
                .await?;
        if let Some(location) = answer.location {
            let path = location
                .split_once("/v1.0")
                .map_or(location.as_str(), |(_, p)| p)
                .to_owned();
            let op = c.m.graph.get(&c.call.delegated(), &path).await?;
            match s(&op, "status") {
                "succeeded" => {}
                "failed" => {
                    return Err(OpError::Terminal {
                        message: format!(
                            "the password of {upn} could not be written back to Active Directory: {}",
                            s(&op, "statusDetail")
                        ),
                        code: Some("resetPasswordFailed".to_owned()),
                    }
                    .into());
                }
                other => {
                    return Ok(OpOutcome::Pending {
                        check_after: std::time::Duration::from_secs(10),
                        note: Some(format!("the password reset of {upn} is {other}")),
                    });
                }
            }
        }
    } else {
        c.m.graph
            .patch(
                &c.call,
                &format!("/users/{id}"),
                &json!({"passwordProfile": {"forceChangePasswordNextSignIn": true, "password": kept.secret.expose()}}),
            )
            .await?;
    }
    c.mark_done().await?;
    done(output, rollback)
}

async fn revoke_sessions(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user_with(c, input, "signInSessionsValidFromDateTime").await?;
    let valid_from = u
        .get("signInSessionsValidFromDateTime")
        .cloned()
        .unwrap_or(Value::Null);
    let prior = c
        .prior(json!({"signInSessionsValidFromDateTime": valid_from}))
        .await?;
    // Done already when the timestamp moved since the first attempt looked, or an attempt
    // recorded it (the timestamp has whole seconds only).
    if prior["signInSessionsValidFromDateTime"] == valid_from && !c.was_done().await? {
        c.m.graph
            .post(
                &c.call,
                &format!("/users/{}/revokeSignInSessions", s(&u, "id")),
                &json!({}),
            )
            .await?;
        c.mark_done().await?;
    }
    done(
        json!({}),
        irreversible(
            "signing a user out cannot be undone (and needs no undoing: they sign in again)",
            prior,
        ),
    )
}

/// The `…Methods` collection of an authentication method's type.
fn kind_path(odata_type: &str) -> Option<&'static str> {
    Some(match odata_type.trim_start_matches("#microsoft.graph.") {
        "microsoftAuthenticatorAuthenticationMethod" => "microsoftAuthenticatorMethods",
        "phoneAuthenticationMethod" => "phoneMethods",
        "fido2AuthenticationMethod" => "fido2Methods",
        "softwareOathAuthenticationMethod" => "softwareOathMethods",
        "windowsHelloForBusinessAuthenticationMethod" => "windowsHelloForBusinessMethods",
        "emailAuthenticationMethod" => "emailMethods",
        "temporaryAccessPassAuthenticationMethod" => "temporaryAccessPassMethods",
        _ => return None,
    })
}

async fn remove_methods(c: &Ctx<'_>, input: &Value) -> OpResult {
    let u = user_with(c, input, "displayName").await?;
    let id = s(&u, "id").to_owned();
    let methods =
        c.m.graph
            .get_all(&c.call, &format!("/users/{id}/authentication/methods"))
            .await?;
    let listed: Vec<Value> = methods
        .iter()
        .map(|m| {
            json!({"id": s(m, "id"), "type": s(m, "@odata.type"),
                   "display_name": m.get("displayName").cloned().unwrap_or(Value::Null)})
        })
        .collect();
    let prior = c.prior(json!({"methods": listed})).await?;
    let mut kept = Vec::new();
    for m in &methods {
        let ty = s(m, "@odata.type");
        let Some(path) = kind_path(ty) else {
            // The password is not an MFA method and cannot be removed; others are unknown here.
            kept.push(json!({"id": s(m, "id"), "type": ty}));
            continue;
        };
        let mid = s(m, "id");
        match c
            .m
            .graph
            .delete(
                &c.call,
                &format!("/users/{id}/authentication/{path}/{}", seg(mid)),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    // What an earlier attempt removed counts too: the prior list minus what is left.
    let all_removed: Vec<Value> = prior["methods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| kind_path(s(m, "type")).is_some())
        .cloned()
        .collect();
    done(
        json!({"removed": all_removed, "kept": kept}),
        irreversible(
            "removed MFA methods cannot be put back: the user registers them again",
            prior,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_have_every_class_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert_ne!(a, b);
        for p in [&a, &b] {
            let t = p.expose();
            assert_eq!(t.len(), 16);
            assert!(t.bytes().any(|c| c.is_ascii_lowercase()));
            assert!(t.bytes().any(|c| c.is_ascii_uppercase()));
            assert!(t.bytes().any(|c| c.is_ascii_digit()));
            assert!(t.bytes().any(|c| !c.is_ascii_alphanumeric()));
        }
        assert_eq!(format!("{a:?}"), "[redacted]");
    }
}
