//! Mailboxes in Exchange Online (Graph cannot change any of this): convert to shared, forwarding,
//! Full Access / Send As / Send on Behalf, hiding from the address list, automatic replies, and
//! mobile devices.
//!
//! A mailbox that Exchange Online has not provisioned yet (it appears some minutes after a
//! licence with Exchange is assigned) makes a running step pending rather than failed.

use serde_json::{Map, Value, json};
use steward_schemas::{OpField, OpSpec, PermissionGroup, Reversibility, Rollback, System};

use super::{
    Body, Ctx, Fail, OpResult, catalog, done, inverse, irreversible, not_provisioned, own, params,
    s, text,
};
use crate::m365::error::Error;
use crate::op::{OpError, opt_bool};

pub(super) fn ops(v: &mut Vec<(&'static OpSpec, Body)>) {
    v.push((catalog("mailbox.create"), |c, i| {
        Box::pin(wait_for_mailbox(c, i))
    }));
    v.push((catalog("mailbox.convert_to_shared"), |c, i| {
        Box::pin(convert_to_shared(c, i))
    }));
    v.push((catalog("mailbox.set_forwarding"), |c, i| {
        Box::pin(set_forwarding(c, i))
    }));
    v.push((&CLEAR_FORWARDING, |c, i| Box::pin(clear_forwarding(c, i))));
    v.push((catalog("mailbox.grant_access"), |c, i| {
        Box::pin(access(c, i, true))
    }));
    v.push((&REVOKE_ACCESS, |c, i| Box::pin(access(c, i, false))));
    v.push((catalog("mailbox.hide_from_gal"), |c, i| {
        Box::pin(hide_from_gal(c, i))
    }));
    v.push((catalog("mailbox.set_auto_reply"), |c, i| {
        Box::pin(set_auto_reply(c, i))
    }));
    v.push((&RESTORE_SETTINGS, |c, i| Box::pin(restore_settings(c, i))));
    v.push((&RESTORE_AUTO_REPLY, |c, i| {
        Box::pin(restore_auto_reply(c, i))
    }));
    v.push((catalog("mobile_device.remove"), |c, i| {
        Box::pin(remove_mobile_devices(c, i))
    }));
}

static CLEAR_FORWARDING: OpSpec = own(
    "mailbox.clear_forwarding",
    "stop forwarding a mailbox's mail",
    PermissionGroup::Mailboxes,
    System::Mail,
    Reversibility::Reversible,
    &[OpField::required("user", "the mailbox's user: UPN")],
    false,
);

static REVOKE_ACCESS: OpSpec = own(
    "mailbox.revoke_access",
    "take away a user's access to a mailbox",
    PermissionGroup::Mailboxes,
    System::Mail,
    Reversibility::Reversible,
    &[
        OpField::required("mailbox", "the mailbox"),
        OpField::required("trustee", "whose access is taken away"),
        OpField::required("rights", "full_access, send_as or send_on_behalf"),
    ],
    false,
);

static RESTORE_SETTINGS: OpSpec = own(
    "mailbox.restore_settings",
    "put a mailbox's type, forwarding and address-list visibility back as they were",
    PermissionGroup::Mailboxes,
    System::Mail,
    Reversibility::NotNeeded,
    &[
        OpField::required("user", "the mailbox's user: UPN"),
        OpField::required("settings", "Set-Mailbox settings as they were"),
    ],
    true,
);

static RESTORE_AUTO_REPLY: OpSpec = own(
    "mailbox.restore_auto_reply",
    "put a mailbox's automatic replies back as they were",
    PermissionGroup::Mailboxes,
    System::Mail,
    Reversibility::NotNeeded,
    &[
        OpField::required("user", "the mailbox's user: UPN"),
        OpField::required("config", "the automatic-reply configuration as it was"),
    ],
    true,
);

/// The mailbox of `who`; `Err` is a pending or terminal outcome when Exchange has none.
async fn mailbox(c: &Ctx<'_>, who: &str) -> Result<Result<Value, Error>, Fail> {
    match c
        .m
        .exo
        .invoke(&c.call, "Get-Mailbox", params(&[("Identity", json!(who))]))
        .await
    {
        Ok(a) => Ok(a.value.into_iter().next().ok_or_else(|| Error::Decode {
            service: crate::m365::error::Service::Exchange,
            request: "Get-Mailbox".to_owned(),
            reason: "no mailbox in the answer".to_owned(),
        })),
        Err(e) if e.is_not_found() => Ok(Err(e)),
        Err(e) => Err(e.into()),
    }
}

/// Like [`mailbox`], turning "none" into the step's outcome.
macro_rules! mailbox_or_wait {
    ($c:expr, $who:expr) => {
        match mailbox($c, $who).await? {
            Ok(m) => m,
            Err(e) => return not_provisioned($c, $who, e),
        }
    };
}

async fn set_mailbox(c: &Ctx<'_>, who: &str, settings: Map<String, Value>) -> Result<(), Fail> {
    let mut p = settings;
    p.insert("Identity".into(), json!(who));
    c.m.exo.invoke(&c.call, "Set-Mailbox", p).await?;
    Ok(())
}

/// `smtp:a@b` or `SMTP:a@b` → `a@b`, lower-case; null stays null.
fn smtp(v: &Value) -> Value {
    match v.as_str() {
        Some(t) if !t.is_empty() => json!(
            t.trim_start_matches("smtp:")
                .trim_start_matches("SMTP:")
                .to_ascii_lowercase()
        ),
        _ => Value::Null,
    }
}

/// Whether `value` names the recipient `r` (an object from Get-Mailbox).
fn names(r: &Value, value: &str) -> bool {
    [
        "Identity",
        "Alias",
        "Name",
        "DisplayName",
        "UserPrincipalName",
        "PrimarySmtpAddress",
        "ExternalDirectoryObjectId",
    ]
    .iter()
    .any(|k| s(r, k).eq_ignore_ascii_case(value) && !value.is_empty())
}

/// The Set-Mailbox settings this module restores, as a mailbox shows them now.
fn settings_of(m: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "Type".into(),
        json!(if s(m, "RecipientTypeDetails") == "SharedMailbox" {
            "Shared"
        } else {
            "Regular"
        }),
    );
    out.insert(
        "HiddenFromAddressListsEnabled".into(),
        m.get("HiddenFromAddressListsEnabled")
            .cloned()
            .unwrap_or(json!(false)),
    );
    out.insert(
        "ForwardingAddress".into(),
        m.get("ForwardingAddress").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "ForwardingSmtpAddress".into(),
        smtp(m.get("ForwardingSmtpAddress").unwrap_or(&Value::Null)),
    );
    out.insert(
        "DeliverToMailboxAndForward".into(),
        m.get("DeliverToMailboxAndForward")
            .cloned()
            .unwrap_or(json!(false)),
    );
    out
}

/// Applies `wanted` (a subset of [`settings_of`]'s keys) where the mailbox differs; returns the
/// prior values of the keys it covers (as the first attempt saw them) and an inverse.
async fn ensure_settings(
    c: &Ctx<'_>,
    who: &str,
    m: &Value,
    wanted: &Map<String, Value>,
) -> Result<(Value, Rollback), Fail> {
    let now = settings_of(m);
    let current: Map<String, Value> = wanted
        .keys()
        .map(|k| (k.clone(), now.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    let prior = c.prior(Value::Object(current.clone())).await?;
    let changes: Map<String, Value> = wanted
        .iter()
        .filter(|(k, v)| {
            let normalised = if k.as_str() == "ForwardingSmtpAddress" {
                smtp(v)
            } else {
                (*v).clone()
            };
            current.get(*k) != Some(&normalised)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !changes.is_empty() {
        set_mailbox(c, who, changes).await?;
    }
    let undo: Map<String, Value> = wanted
        .iter()
        .filter_map(|(k, v)| {
            let before = prior.get(k).cloned().unwrap_or(Value::Null);
            let normalised = if k == "ForwardingSmtpAddress" {
                smtp(v)
            } else {
                v.clone()
            };
            (before != normalised).then(|| (k.clone(), before))
        })
        .collect();
    let rollback = if undo.is_empty() {
        Rollback::Nothing
    } else {
        inverse(
            "mailbox.restore_settings",
            json!({"user": who, "settings": undo}),
            prior.clone(),
        )
    };
    Ok((prior, rollback))
}

/// `mailbox.create` in Exchange Online (routing's `exchange_online.wait_for_mailbox`): Exchange
/// Online makes the mailbox itself once the user has a licence with Exchange (and, in hybrid,
/// once the remote mailbox has synced), so this creates nothing: it waits, durably (the step
/// pending, no worker held), until `Get-Mailbox` finds it. Nothing to undo here: removing the
/// licence (the licence step's undo) is what removes the mailbox.
async fn wait_for_mailbox(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let m = mailbox_or_wait!(c, who);
    done(
        json!({
            "mailbox": s(&m, "PrimarySmtpAddress"),
            "type": s(&m, "RecipientTypeDetails"),
        }),
        Rollback::Nothing,
    )
}

async fn convert_to_shared(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let m = mailbox_or_wait!(c, who);
    let mut wanted = Map::new();
    wanted.insert("Type".into(), json!("Shared"));
    let (_, rollback) = ensure_settings(c, who, &m, &wanted).await?;
    let mut out = json!({"mailbox": s(&m, "PrimarySmtpAddress")});
    if m["IsDirSynced"] == json!(true) {
        out["note"] = json!(
            "the user is synced from on-premises: also set the remote mailbox to shared on-premises (exchange_server.set_remote_mailbox type Shared), or the next sync may undo this"
        );
    }
    done(out, rollback)
}

async fn set_forwarding(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let to = text(input, "to")?;
    if !to.contains('@') {
        return Err(OpError::bad_input("to", "must be an email address").into());
    }
    let keep = opt_bool(input, "keep_copy")?.unwrap_or(true);
    let m = mailbox_or_wait!(c, who);
    // A recipient of the tenant is forwarded to as a recipient; anyone else by SMTP address
    // (the tenant's outbound policy may block automatic external forwarding).
    let internal = mailbox(c, to).await?.ok();
    let mut wanted = Map::new();
    match &internal {
        Some(target) => {
            let current = m
                .get("ForwardingAddress")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // Keep the mailbox's own spelling when it already names the target.
            let value = if names(target, current) {
                current.to_owned()
            } else {
                to.to_owned()
            };
            wanted.insert("ForwardingAddress".into(), json!(value));
            wanted.insert("ForwardingSmtpAddress".into(), Value::Null);
        }
        None => {
            wanted.insert("ForwardingAddress".into(), Value::Null);
            wanted.insert(
                "ForwardingSmtpAddress".into(),
                json!(format!("smtp:{}", to.to_ascii_lowercase())),
            );
        }
    }
    wanted.insert("DeliverToMailboxAndForward".into(), json!(keep));
    let (_, rollback) = ensure_settings(c, who, &m, &wanted).await?;
    done(
        json!({"to": to, "internal": internal.is_some(), "keep_copy": keep}),
        rollback,
    )
}

async fn clear_forwarding(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let m = mailbox_or_wait!(c, who);
    let mut wanted = Map::new();
    wanted.insert("ForwardingAddress".into(), Value::Null);
    wanted.insert("ForwardingSmtpAddress".into(), Value::Null);
    wanted.insert("DeliverToMailboxAndForward".into(), json!(false));
    let (_, rollback) = ensure_settings(c, who, &m, &wanted).await?;
    done(json!({}), rollback)
}

async fn hide_from_gal(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let m = mailbox_or_wait!(c, who);
    if m["IsDirSynced"] == json!(true) && m["HiddenFromAddressListsEnabled"] != json!(true) {
        return Err(OpError::Terminal {
            message: format!(
                "{who} is synced from on-premises, so Exchange Online cannot hide it; hide it on-premises (exchange_server.set_remote_mailbox hidden_from_address_lists_enabled: true), then sync"
            ),
            code: Some("synced_from_on_premises".to_owned()),
        }
        .into());
    }
    let mut wanted = Map::new();
    wanted.insert("HiddenFromAddressListsEnabled".into(), json!(true));
    let (_, rollback) = ensure_settings(c, who, &m, &wanted).await?;
    done(json!({}), rollback)
}

async fn restore_settings(c: &Ctx<'_>, input: &Value) -> OpResult {
    const KEYS: &[&str] = &[
        "Type",
        "HiddenFromAddressListsEnabled",
        "ForwardingAddress",
        "ForwardingSmtpAddress",
        "DeliverToMailboxAndForward",
    ];
    let who = text(input, "user")?;
    let Some(Value::Object(wanted)) = input.get("settings") else {
        return Err(OpError::bad_input("settings", "must be a map of Set-Mailbox settings").into());
    };
    if let Some(k) = wanted.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(OpError::bad_input(
            &format!("settings.{k}"),
            &format!(
                "is not a setting this op restores; use: {}",
                KEYS.join(", ")
            ),
        )
        .into());
    }
    let m = match mailbox(c, who).await? {
        Ok(m) => m,
        Err(e) => return Err(e.into()),
    };
    let mut wanted = wanted.clone();
    if let Some(v) = wanted.get_mut("ForwardingSmtpAddress")
        && let Some(a) = v.as_str()
    {
        *v = json!(format!("smtp:{}", a.trim_start_matches("smtp:")));
    }
    ensure_settings(c, who, &m, &wanted).await?;
    done(json!({}), Rollback::Nothing)
}

/// The access right named by the `rights` input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Right {
    FullAccess,
    SendAs,
    SendOnBehalf,
}

fn right(input: &Value) -> Result<Right, Fail> {
    let r = text(input, "rights")?;
    match r.to_ascii_lowercase().replace(['_', ' ', '-'], "").as_str() {
        "fullaccess" => Ok(Right::FullAccess),
        "sendas" => Ok(Right::SendAs),
        "sendonbehalf" | "sendonbehalfto" => Ok(Right::SendOnBehalf),
        _ => Err(OpError::bad_input(
            "rights",
            &format!("`{r}` is not a right; use full_access, send_as or send_on_behalf"),
        )
        .into()),
    }
}

async fn has_right(
    c: &Ctx<'_>,
    mbx: &Value,
    mailbox_id: &str,
    trustee: &str,
    r: Right,
) -> Result<bool, Fail> {
    Ok(match r {
        Right::FullAccess => {
            c.m.exo
                .invoke(
                    &c.call,
                    "Get-MailboxPermission",
                    params(&[("Identity", json!(mailbox_id)), ("User", json!(trustee))]),
                )
                .await?
                .value
                .iter()
                .any(|p| {
                    p["IsInherited"] != json!(true)
                        && p["Deny"] != json!(true)
                        && p["AccessRights"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == "FullAccess"))
                })
        }
        Right::SendAs => {
            !c.m.exo
                .invoke(
                    &c.call,
                    "Get-RecipientPermission",
                    params(&[("Identity", json!(mailbox_id)), ("Trustee", json!(trustee))]),
                )
                .await?
                .value
                .is_empty()
        }
        Right::SendOnBehalf => {
            let t = match mailbox(c, trustee).await? {
                Ok(t) => t,
                Err(e) => return Err(e.into()),
            };
            mbx["GrantSendOnBehalfTo"]
                .as_array()
                .is_some_and(|a| a.iter().filter_map(Value::as_str).any(|n| names(&t, n)))
        }
    })
}

async fn change_right(
    c: &Ctx<'_>,
    mailbox_id: &str,
    trustee: &str,
    r: Right,
    grant: bool,
) -> Result<(), Fail> {
    let (cmdlet, p) = match (r, grant) {
        (Right::FullAccess, true) => (
            "Add-MailboxPermission",
            params(&[
                ("Identity", json!(mailbox_id)),
                ("User", json!(trustee)),
                ("AccessRights", json!(["FullAccess"])),
                ("InheritanceType", json!("All")),
                ("AutoMapping", json!(false)),
                ("Confirm", json!(false)),
            ]),
        ),
        (Right::FullAccess, false) => (
            "Remove-MailboxPermission",
            params(&[
                ("Identity", json!(mailbox_id)),
                ("User", json!(trustee)),
                ("AccessRights", json!(["FullAccess"])),
                ("InheritanceType", json!("All")),
                ("Confirm", json!(false)),
            ]),
        ),
        (Right::SendAs, add) => (
            if add {
                "Add-RecipientPermission"
            } else {
                "Remove-RecipientPermission"
            },
            params(&[
                ("Identity", json!(mailbox_id)),
                ("Trustee", json!(trustee)),
                ("AccessRights", json!(["SendAs"])),
                ("Confirm", json!(false)),
            ]),
        ),
        (Right::SendOnBehalf, add) => (
            "Set-Mailbox",
            params(&[
                ("Identity", json!(mailbox_id)),
                (
                    "GrantSendOnBehalfTo",
                    json!({"@odata.type": "#Exchange.GenericHashTable", (if add { "add" } else { "remove" }): trustee}),
                ),
            ]),
        ),
    };
    c.m.exo.invoke(&c.call, cmdlet, p).await?;
    Ok(())
}

async fn access(c: &Ctx<'_>, input: &Value, grant: bool) -> OpResult {
    let mailbox_id = text(input, "mailbox")?;
    let trustee = text(input, "trustee")?;
    let r = right(input)?;
    let mbx = mailbox_or_wait!(c, mailbox_id);
    let current = has_right(c, &mbx, mailbox_id, trustee, r).await?;
    let prior = c.prior(json!({"granted": current})).await?;
    if current != grant {
        change_right(c, mailbox_id, trustee, r, grant).await?;
    }
    let rights = text(input, "rights")?;
    let rollback = if prior["granted"] == json!(!grant) {
        inverse(
            if grant {
                "mailbox.revoke_access"
            } else {
                "mailbox.grant_access"
            },
            json!({"mailbox": mailbox_id, "trustee": trustee, "rights": rights}),
            prior,
        )
    } else {
        Rollback::Nothing
    };
    done(json!({}), rollback)
}

const AUTO_REPLY_KEYS: &[&str] = &[
    "AutoReplyState",
    "InternalMessage",
    "ExternalMessage",
    "ExternalAudience",
    "StartTime",
    "EndTime",
];

async fn auto_reply(c: &Ctx<'_>, who: &str) -> Result<Result<Value, Error>, Fail> {
    match c
        .m
        .exo
        .invoke(
            &c.call,
            "Get-MailboxAutoReplyConfiguration",
            params(&[("Identity", json!(who))]),
        )
        .await
    {
        Ok(a) => Ok(Ok(a.value.into_iter().next().unwrap_or_default())),
        Err(e) if e.is_not_found() => Ok(Err(e)),
        Err(e) => Err(e.into()),
    }
}

/// Sets the automatic-reply settings in `wanted` where they differ; returns the prior ones.
async fn ensure_auto_reply(
    c: &Ctx<'_>,
    who: &str,
    now: &Value,
    wanted: &Map<String, Value>,
) -> Result<Value, Fail> {
    let current: Map<String, Value> = AUTO_REPLY_KEYS
        .iter()
        .map(|k| ((*k).to_owned(), now.get(*k).cloned().unwrap_or(Value::Null)))
        .collect();
    let prior = c.prior(Value::Object(current.clone())).await?;
    let changes: Map<String, Value> = wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !changes.is_empty() {
        let mut p = changes;
        p.insert("Identity".into(), json!(who));
        c.m.exo
            .invoke(&c.call, "Set-MailboxAutoReplyConfiguration", p)
            .await?;
    }
    Ok(prior)
}

async fn set_auto_reply(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let message = text(input, "message")?;
    let now = match auto_reply(c, who).await? {
        Ok(v) => v,
        Err(e) => return not_provisioned(c, who, e),
    };
    let mut wanted = Map::new();
    wanted.insert("AutoReplyState".into(), json!("Enabled"));
    wanted.insert("InternalMessage".into(), json!(message));
    wanted.insert("ExternalMessage".into(), json!(message));
    wanted.insert("ExternalAudience".into(), json!("All"));
    let prior = ensure_auto_reply(c, who, &now, &wanted).await?;
    let same = wanted.iter().all(|(k, v)| prior.get(k) == Some(v));
    let rollback = if same {
        Rollback::Nothing
    } else {
        let mut config = prior.clone();
        // A time window only matters (and is only accepted) for a scheduled reply.
        if prior["AutoReplyState"] != json!("Scheduled")
            && let Some(o) = config.as_object_mut()
        {
            o.remove("StartTime");
            o.remove("EndTime");
        }
        inverse(
            "mailbox.restore_auto_reply",
            json!({"user": who, "config": config}),
            prior,
        )
    };
    done(json!({}), rollback)
}

async fn restore_auto_reply(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let Some(Value::Object(config)) = input.get("config") else {
        return Err(
            OpError::bad_input("config", "must be the automatic-reply configuration").into(),
        );
    };
    if let Some(k) = config
        .keys()
        .find(|k| !AUTO_REPLY_KEYS.contains(&k.as_str()))
    {
        return Err(OpError::bad_input(
            &format!("config.{k}"),
            &format!(
                "is not an automatic-reply setting; use: {}",
                AUTO_REPLY_KEYS.join(", ")
            ),
        )
        .into());
    }
    let now = match auto_reply(c, who).await? {
        Ok(v) => v,
        Err(e) => return Err(e.into()),
    };
    // A setting that was unset (null) is left as it is: the state and audience decide whether
    // anything is sent.
    let wanted: Map<String, Value> = config
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ensure_auto_reply(c, who, &now, &wanted).await?;
    done(json!({}), Rollback::Nothing)
}

async fn remove_mobile_devices(c: &Ctx<'_>, input: &Value) -> OpResult {
    let who = text(input, "user")?;
    let devices = match c
        .m
        .exo
        .invoke(
            &c.call,
            "Get-MobileDevice",
            params(&[("Mailbox", json!(who))]),
        )
        .await
    {
        Ok(a) => a.value,
        Err(e) if e.is_not_found() => return not_provisioned(c, who, e),
        Err(e) => return Err(e.into()),
    };
    let listed: Vec<Value> = devices
        .iter()
        .map(|d| json!({"guid": s(d, "Guid"), "friendly_name": s(d, "FriendlyName"), "model": s(d, "DeviceModel"), "os": s(d, "DeviceOS")}))
        .collect();
    let prior = c.prior(json!({"devices": listed})).await?;
    for d in &devices {
        match c
            .m
            .exo
            .invoke(
                &c.call,
                "Remove-MobileDevice",
                params(&[("Identity", json!(s(d, "Guid"))), ("Confirm", json!(false))]),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    done(
        json!({"removed": prior["devices"]}),
        irreversible(
            "removed mobile device partnerships cannot be put back; the devices sync again when the user signs in",
            prior,
        ),
    )
}
