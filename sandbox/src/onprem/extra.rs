//! The rest of the on-prem templates: `Set-ADUser`, `Unlock-ADAccount`, group listing and
//! copying, and the Exchange Server mailbox cmdlets offboarding uses (`New-Mailbox`,
//! `Set-Mailbox -Type`, mailbox and AD permissions, forwarding, automatic replies, address-list
//! visibility, mobile devices), each with the effect the real cmdlet has on the simulated
//! forest and the prior state its template reports for the inverse.
//!
//! Each op reads before it acts, as its template does: already in the desired state is
//! `unchanged` with no ledger entry; a change is one [`Applied`] per object changed.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    Applied, IdentityOnly, OpError, ad_user_result, container_exists, exchange_session,
    exo_not_found, find_group, find_user, forest, not_found, password_error, password_meets_policy,
    recipient_json,
};
use crate::runner::{Op, Script};
use crate::secret::{REDACTED, SecretText};
use crate::world::{AdForest, AutoReply, Company, MailboxKind, OnPremMailbox, Password};

/// What an op returns: its result, the prior state for its inverse, and its changes.
pub(super) type Ran = Result<(Value, Value, Vec<Applied>), OpError>;

fn params<T: serde::de::DeserializeOwned>(script: &Script) -> Result<T, OpError> {
    super::params(script)
}

/// Runs `script` if it is one of this module's ops.
pub(super) fn run(
    c: &mut Company,
    seed: u64,
    host: &str,
    script: &Script,
    now: DateTime<Utc>,
) -> Option<Ran> {
    Some(match script.op {
        Op::AdSetUser => params(script).and_then(|p| ad_set_user(c, p)),
        Op::AdUnlock => params(script).and_then(|p| ad_unlock(c, p)),
        Op::AdListGroups => params(script).and_then(|p| ad_list_groups(c, p)),
        Op::AdCopyGroups => params(script).and_then(|p| ad_copy_groups(c, p)),
        Op::AdRemoveGroups => params(script).and_then(|p| ad_remove_groups(c, p)),
        Op::ExGetRecipient => params(script).and_then(|p| ex_get_recipient(c, host, p)),
        Op::ExNewMailbox => params(script).and_then(|p| ex_new_mailbox(c, seed, host, p, now)),
        Op::ExRemoveMailbox => params(script).and_then(|p| ex_remove_mailbox(c, host, p)),
        Op::ExSetMailboxType => params(script).and_then(|p| ex_set_type(c, host, p)),
        Op::ExAddMailboxPermission => {
            params(script).and_then(|p| ex_trustee(c, host, p, Right::FullAccess, true))
        }
        Op::ExRemoveMailboxPermission => {
            params(script).and_then(|p| ex_trustee(c, host, p, Right::FullAccess, false))
        }
        Op::ExAddSendAs => params(script).and_then(|p| ex_trustee(c, host, p, Right::SendAs, true)),
        Op::ExRemoveSendAs => {
            params(script).and_then(|p| ex_trustee(c, host, p, Right::SendAs, false))
        }
        Op::ExSetSendOnBehalf => params(script).and_then(|p: SendOnBehalf| {
            let add = p.change == "add";
            ex_trustee(
                c,
                host,
                Trustee {
                    identity: p.identity,
                    user: p.user,
                    auto_mapping: None,
                    server: p.server,
                },
                Right::SendOnBehalf,
                add,
            )
        }),
        Op::ExSetHiddenFromGal => params(script).and_then(|p| ex_hide(c, host, p)),
        Op::ExSetForwarding => params(script).and_then(|p| ex_forwarding(c, host, p)),
        Op::ExSetAutoReply => params(script).and_then(|p| ex_auto_reply(c, host, p)),
        Op::ExRemoveMobileDevices => params(script).and_then(|p| ex_mobile(c, host, p)),
        _ => return None,
    })
}

fn applied(action: &str, target: &str, details: Value) -> Applied {
    Applied {
        action: action.to_owned(),
        target: target.to_owned(),
        details,
        secret_fingerprint: None,
    }
}

// ---- Active Directory ------------------------------------------------------------------------

/// `ad.set_user`'s named attributes and the LDAP attribute each is.
const NAMED: &[(&str, &str)] = &[
    ("given_name", "givenName"),
    ("surname", "sn"),
    ("display_name", "displayName"),
    ("title", "title"),
    ("department", "department"),
    ("company", "company"),
    ("office", "physicalDeliveryOfficeName"),
    ("office_phone", "telephoneNumber"),
    ("mobile_phone", "mobile"),
    ("employee_id", "employeeID"),
    ("description", "description"),
    ("street_address", "streetAddress"),
    ("city", "l"),
    ("state", "st"),
    ("postal_code", "postalCode"),
];

/// The raw attributes `ad.set_user` may replace (its template's list).
const RAW: &[&str] = &[
    "msExchHideFromAddressLists",
    "employeeType",
    "employeeNumber",
    "info",
    "extensionAttribute1",
    "extensionAttribute2",
    "extensionAttribute3",
    "extensionAttribute4",
    "extensionAttribute5",
    "extensionAttribute6",
    "extensionAttribute7",
    "extensionAttribute8",
    "extensionAttribute9",
    "extensionAttribute10",
    "extensionAttribute11",
    "extensionAttribute12",
    "extensionAttribute13",
    "extensionAttribute14",
    "extensionAttribute15",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetUser {
    identity: String,
    #[serde(default)]
    attributes: Option<Map<String, Value>>,
    #[serde(default)]
    replace: Option<Map<String, Value>>,
    #[serde(default)]
    server: Option<String>,
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(str::is_empty)
}

/// The text Set-ADUser compares (`[string]`), for a stored value.
fn as_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "True" } else { "False" }.to_owned(),
        other => other.to_string(),
    }
}

fn ldap_get(u: &crate::world::AdUser, ldap: &str) -> Value {
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    match ldap {
        "givenName" => opt(&u.given_name),
        "sn" => opt(&u.surname),
        "displayName" => opt(&u.display_name),
        "title" => opt(&u.title),
        "department" => opt(&u.department),
        other => u.attributes.get(other).cloned().unwrap_or(Value::Null),
    }
}

fn ldap_set(u: &mut crate::world::AdUser, ldap: &str, v: &Value) {
    let text = (!is_empty(v)).then(|| as_text(v));
    match ldap {
        "givenName" => u.given_name = text,
        "sn" => u.surname = text,
        "displayName" => u.display_name = text,
        "title" => u.title = text,
        "department" => u.department = text,
        other => {
            if is_empty(v) {
                u.attributes.remove(other);
            } else {
                u.attributes.insert(other.to_owned(), v.clone());
            }
        }
    }
}

/// `Set-ADUser -Replace/-Clear` for the attributes given; the prior values per section.
fn ad_set_user(c: &mut Company, p: SetUser) -> Ran {
    let f = forest(c, &p.server)?;
    let mut wanted: Vec<(&'static str, String, &'static str, Value)> = Vec::new();
    for (section, given) in [("attributes", &p.attributes), ("replace", &p.replace)] {
        for (k, v) in given.iter().flatten() {
            let ldap = if section == "attributes" {
                NAMED.iter().find(|(n, _)| n == k).map(|(_, l)| *l)
            } else {
                RAW.iter().find(|r| **r == k).copied()
            }
            .ok_or_else(|| {
                OpError::new(
                    "invalid_payload",
                    if section == "attributes" {
                        format!("Steward does not know the attribute {k}.")
                    } else {
                        format!("Steward does not change the AD attribute {k}.")
                    },
                )
            })?;
            wanted.push((section, k.clone(), ldap, v.clone()));
        }
    }
    if wanted.is_empty() {
        return Err(OpError::new(
            "invalid_payload",
            "Nothing to change: give attributes or replace.",
        ));
    }
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Get-ADUser", &p.identity, f))?;
    let mut prior = json!({"attributes": {}, "replace": {}});
    let mut changes = Map::new();
    for (section, name, ldap, v) in &wanted {
        let now = ldap_get(&f.users[i], ldap);
        prior[*section][name] = now.clone();
        let differs = if is_empty(v) {
            !is_empty(&now)
        } else {
            as_text(&now) != as_text(v)
        };
        if differs {
            changes.insert((*ldap).to_owned(), v.clone());
        }
    }
    if changes.is_empty() {
        return Ok((ad_user_result(f, &f.users[i]), prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    for (ldap, v) in &changes {
        ldap_set(u, ldap, v);
    }
    u.usn_changed = usn;
    let guid = u.object_guid.clone();
    let f = &*f;
    Ok((
        ad_user_result(f, &f.users[i]),
        prior,
        vec![applied("ad.set_user", &guid, Value::Object(changes))],
    ))
}

/// `Unlock-ADAccount`: clears a lockout; an account that is not locked is left alone.
fn ad_unlock(c: &mut Company, p: IdentityOnly) -> Ran {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Get-ADUser", &p.identity, f))?;
    let prior = json!({"locked_out": f.users[i].locked_out});
    if !f.users[i].locked_out {
        return Ok((locked(f, i), prior, vec![]));
    }
    f.users[i].locked_out = false;
    let guid = f.users[i].object_guid.clone();
    Ok((
        locked(f, i),
        prior,
        vec![applied("ad.unlock", &guid, json!({"locked_out": false}))],
    ))
}

fn locked(f: &AdForest, i: usize) -> Value {
    let mut r = ad_user_result(f, &f.users[i]);
    r["locked_out"] = json!(f.users[i].locked_out);
    r
}

fn member_of(f: &AdForest, guid: &str) -> Vec<String> {
    f.groups
        .iter()
        .filter(|g| g.members.iter().any(|m| m == guid))
        .map(crate::world::AdGroup::dn)
        .collect()
}

/// `Get-ADUser -Properties MemberOf` (the primary group, Domain Users, is not in MemberOf).
fn ad_list_groups(c: &mut Company, p: IdentityOnly) -> Ran {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Get-ADUser", &p.identity, f))?;
    let u = &f.users[i];
    Ok((
        json!({"distinguished_name": u.dn(), "groups": member_of(f, &u.object_guid)}),
        Value::Null,
        vec![],
    ))
}

/// Groups whose members hold administrative rights (`adminCount = 1` in a real forest).
const PRIVILEGED: &[&str] = &[
    "Domain Admins",
    "Enterprise Admins",
    "Schema Admins",
    "Administrators",
    "Account Operators",
    "Server Operators",
    "Backup Operators",
    "Print Operators",
    "Group Policy Creator Owners",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CopyGroups {
    template: String,
    member: String,
    #[serde(default)]
    server: Option<String>,
}

/// Adds `member` to each group of `template`, except privileged ones.
fn ad_copy_groups(c: &mut Company, p: CopyGroups) -> Ran {
    let f = forest(c, &p.server)?;
    let t = find_user(f, &p.template).ok_or_else(|| not_found("Get-ADUser", &p.template, f))?;
    let m = find_user(f, &p.member).ok_or_else(|| not_found("Get-ADUser", &p.member, f))?;
    let tg = f.users[t].object_guid.clone();
    let mg = f.users[m].object_guid.clone();
    let (mut added, mut already, mut skipped) = (vec![], vec![], vec![]);
    let mut changes = vec![];
    for gi in 0..f.groups.len() {
        if !f.groups[gi].members.contains(&tg) {
            continue;
        }
        let dn = f.groups[gi].dn();
        if f.groups[gi].members.contains(&mg) {
            already.push(dn);
            continue;
        }
        if PRIVILEGED
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&f.groups[gi].name))
        {
            skipped.push(dn);
            continue;
        }
        let usn = f.bump();
        let g = &mut f.groups[gi];
        g.members.push(mg.clone());
        g.usn_changed = usn;
        changes.push(applied(
            "ad.add_group_member",
            &g.object_guid,
            json!({"member": mg, "from_template": tg}),
        ));
        added.push(dn);
    }
    if !changes.is_empty() {
        let usn = f.bump();
        f.users[m].usn_changed = usn;
    }
    Ok((
        json!({"member": f.users[m].dn(), "added": added, "already_member": already, "skipped_privileged": skipped}),
        json!({"added": added}),
        changes,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveGroups {
    member: String,
    groups: Vec<String>,
    #[serde(default)]
    server: Option<String>,
}

/// `Remove-ADGroupMember` for each group listed that still has the user.
fn ad_remove_groups(c: &mut Company, p: RemoveGroups) -> Ran {
    let f = forest(c, &p.server)?;
    let m = find_user(f, &p.member).ok_or_else(|| not_found("Get-ADUser", &p.member, f))?;
    let mg = f.users[m].object_guid.clone();
    let mut removed = vec![];
    let mut changes = vec![];
    for g in &p.groups {
        let gi = find_group(f, g).ok_or_else(|| not_found("Get-ADGroup", g, f))?;
        if !f.groups[gi].members.contains(&mg) {
            continue;
        }
        let usn = f.bump();
        let grp = &mut f.groups[gi];
        grp.members.retain(|x| x != &mg);
        grp.usn_changed = usn;
        changes.push(applied(
            "ad.remove_group_member",
            &grp.object_guid,
            json!({"member": mg}),
        ));
        removed.push(grp.dn());
    }
    Ok((
        json!({"member": f.users[m].dn(), "removed": removed}),
        json!({"removed": removed}),
        changes,
    ))
}

// ---- Exchange Server -------------------------------------------------------------------------

fn ex_get_recipient(c: &mut Company, host: &str, p: IdentityOnly) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let i =
        find_user(f, &p.identity).ok_or_else(|| exo_not_found("Get-Recipient", &p.identity, f))?;
    Ok((recipient_json(&f.users[i]), Value::Null, vec![]))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewMailbox {
    name: String,
    user_principal_name: String,
    #[serde(default)]
    password: Option<SecretText>,
    #[serde(default)]
    shared: bool,
    #[serde(default)]
    alias: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    organizational_unit: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

/// `New-Mailbox`: creates the AD account and its mailbox together (a user mailbox needs a
/// password the domain accepts; a shared mailbox's account is disabled and has none).
fn ex_new_mailbox(
    c: &mut Company,
    seed: u64,
    host: &str,
    p: NewMailbox,
    now: DateTime<Utc>,
) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let databases = c
        .exchange_server
        .as_ref()
        .map(|x| x.databases.clone())
        .unwrap_or_default();
    let database = match &p.database {
        Some(d) if databases.iter().any(|x| x.eq_ignore_ascii_case(d)) => d.clone(),
        Some(d) => {
            return Err(OpError::new(
                "not_found",
                format!(
                    "New-Mailbox : Couldn't find database \"{d}\". Make sure you have typed it correctly."
                ),
            ));
        }
        None => databases
            .first()
            .cloned()
            .unwrap_or_else(|| "Mailbox Database".to_owned()),
    };
    let f = forest(c, &None)?;
    let prior = json!({"existed": false});
    if let Some(i) = find_user(f, &p.user_principal_name) {
        let u = &f.users[i];
        let kind = match &u.mailbox {
            Some(m) => m.kind.as_str(),
            None if u.remote_mailbox.is_some() => "RemoteUserMailbox",
            None => "User",
        };
        let wanted = if p.shared {
            "SharedMailbox"
        } else {
            "UserMailbox"
        };
        if kind == wanted {
            return Ok((recipient_json(u), json!({"existed": true}), vec![]));
        }
        return Err(OpError::new(
            "already_exists",
            format!(
                "New-Mailbox : {} already exists ({kind}).",
                p.user_principal_name
            ),
        ));
    }
    let ou = p
        .organizational_unit
        .clone()
        .unwrap_or_else(|| format!("CN=Users,{}", f.base_dn()));
    if !container_exists(f, &ou) {
        return Err(OpError::new(
            "not_found",
            format!(
                "New-Mailbox : The organizational unit \"{ou}\" was not found. Please make sure you have typed it correctly."
            ),
        ));
    }
    let alias = p.alias.clone().unwrap_or_else(|| {
        p.user_principal_name
            .split('@')
            .next()
            .unwrap_or_default()
            .to_owned()
    });
    let sam: String = alias.chars().take(20).collect();
    if f.users
        .iter()
        .any(|u| !u.deleted && u.sam_account_name.eq_ignore_ascii_case(&sam))
    {
        return Err(OpError::new(
            "already_exists",
            format!("New-Mailbox : The user account '{sam}' already exists in Active Directory."),
        ));
    }
    if f.users.iter().any(|u| {
        !u.deleted && u.name.eq_ignore_ascii_case(&p.name) && u.parent.eq_ignore_ascii_case(&ou)
    }) {
        return Err(OpError::new(
            "already_exists",
            format!(
                "New-Mailbox : An object named '{}' already exists in '{ou}'.",
                p.name
            ),
        ));
    }
    let secret = match (&p.password, p.shared) {
        (_, true) => None,
        (Some(pw), false) if password_meets_policy(f, pw.expose()) => Some(pw.digest()),
        (Some(_), false) => return Err(password_error("New-Mailbox")),
        (None, false) => {
            return Err(OpError::new(
                "invalid_payload",
                "New-Mailbox : a user mailbox needs -Password (only a shared mailbox's account has none)",
            ));
        }
    };
    let usn = f.bump();
    let guid_bytes = crate::ids::guid_bytes(seed, &["ex-new-mailbox", &f.domain, &sam]);
    let mut mailbox = OnPremMailbox::new(database.clone());
    if p.shared {
        mailbox.kind = MailboxKind::SharedMailbox;
    }
    let user = crate::world::AdUser {
        object_guid: crate::ids::dotnet_guid_string(&guid_bytes),
        guid_bytes,
        sam_account_name: sam,
        user_principal_name: p.user_principal_name.clone(),
        name: p.name.clone(),
        parent: ou.clone(),
        given_name: p.first_name.clone(),
        surname: p.last_name.clone(),
        display_name: p.display_name.clone().or_else(|| Some(p.name.clone())),
        enabled: !p.shared,
        password: secret.clone().map(|value| Password {
            value,
            force_change_next_sign_in: true,
            set_at: now,
        }),
        title: None,
        department: None,
        mail: Some(p.user_principal_name.clone()),
        manager: None,
        usn_changed: usn,
        remote_mailbox: None,
        mailbox: Some(mailbox),
        deleted: false,
        locked_out: false,
        attributes: Default::default(),
        usage_location: None,
        created_at: now,
    };
    let result = recipient_json(&user);
    let guid = user.object_guid.clone();
    f.users.push(user);
    let mut a = applied(
        "exchange_server.new_mailbox",
        &guid,
        json!({
            "user_principal_name": p.user_principal_name, "organizational_unit": ou,
            "database": database, "shared": p.shared,
            "password": if secret.is_some() { json!(REDACTED) } else { Value::Null },
        }),
    );
    a.secret_fingerprint = secret.map(|s| s.fingerprint());
    Ok((result, prior, vec![a]))
}

/// `Remove-Mailbox`: deletes the mailbox and its AD account.
fn ex_remove_mailbox(c: &mut Company, host: &str, p: IdentityOnly) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let Some(i) = find_user(f, &p.identity) else {
        return Ok((json!({"removed": false}), json!({"existed": false}), vec![]));
    };
    if f.users[i].mailbox.is_none() {
        return Err(exo_not_found("Remove-Mailbox", &p.identity, f));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    u.deleted = true;
    u.usn_changed = usn;
    let guid = u.object_guid.clone();
    for g in &mut f.groups {
        g.members.retain(|m| m != &guid);
    }
    Ok((
        json!({"removed": true}),
        json!({"existed": true}),
        vec![applied("exchange_server.remove_mailbox", &guid, json!({}))],
    ))
}

/// The on-prem mailbox named `identity`, after the session checks.
fn mailbox_of(f: &AdForest, cmdlet: &str, identity: &str) -> Result<usize, OpError> {
    find_user(f, identity)
        .filter(|i| f.users[*i].mailbox.is_some())
        .ok_or_else(|| exo_not_found(cmdlet, identity, f))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetType {
    identity: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    server: Option<String>,
}

fn type_name(k: MailboxKind) -> &'static str {
    match k {
        MailboxKind::UserMailbox => "Regular",
        MailboxKind::SharedMailbox => "Shared",
    }
}

/// `Set-Mailbox -Type Regular|Shared`.
fn ex_set_type(c: &mut Company, host: &str, p: SetType) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let kind = match p.kind.to_ascii_lowercase().as_str() {
        "regular" => MailboxKind::UserMailbox,
        "shared" => MailboxKind::SharedMailbox,
        other => {
            return Err(OpError::new(
                "invalid_operation",
                format!(
                    "Set-Mailbox : the sandbox's Exchange Server models Regular and Shared mailboxes, not '{other}'"
                ),
            ));
        }
    };
    let f = forest(c, &None)?;
    let i = mailbox_of(f, "Get-Mailbox", &p.identity)?;
    let now = f.users[i]
        .mailbox
        .as_ref()
        .map(|m| m.kind)
        .expect("a mailbox");
    let prior = json!({"type": type_name(now)});
    if now == kind {
        return Ok((recipient_json(&f.users[i]), prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    if let Some(m) = u.mailbox.as_mut() {
        m.kind = kind;
    }
    u.usn_changed = usn;
    Ok((
        recipient_json(u),
        prior,
        vec![applied(
            "exchange_server.set_mailbox_type",
            &u.object_guid.clone(),
            json!({"type": type_name(kind)}),
        )],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Trustee {
    identity: String,
    user: String,
    #[serde(default)]
    auto_mapping: Option<bool>,
    #[serde(default)]
    server: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SendOnBehalf {
    identity: String,
    user: String,
    change: String,
    #[serde(default)]
    server: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Right {
    FullAccess,
    SendAs,
    SendOnBehalf,
}

/// Full Access (`Add/Remove-MailboxPermission`), Send As (`Add/Remove-ADPermission`) and
/// Send on Behalf (`Set-Mailbox -GrantSendOnBehalfTo @{Add/Remove}`) for trustee `user`.
fn ex_trustee(c: &mut Company, host: &str, p: Trustee, right: Right, add: bool) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let (cmdlet, action, key) = match (right, add) {
        (Right::FullAccess, true) => (
            "Add-MailboxPermission",
            "exchange_server.add_mailbox_permission",
            "full_access",
        ),
        (Right::FullAccess, false) => (
            "Remove-MailboxPermission",
            "exchange_server.remove_mailbox_permission",
            "full_access",
        ),
        (Right::SendAs, true) => ("Add-ADPermission", "exchange_server.add_send_as", "send_as"),
        (Right::SendAs, false) => (
            "Remove-ADPermission",
            "exchange_server.remove_send_as",
            "send_as",
        ),
        (Right::SendOnBehalf, _) => (
            "Set-Mailbox",
            "exchange_server.set_send_on_behalf",
            "send_on_behalf",
        ),
    };
    let i = mailbox_of(f, cmdlet, &p.identity)?;
    let t = find_user(f, &p.user).ok_or_else(|| exo_not_found("Get-Recipient", &p.user, f))?;
    let tg = f.users[t].object_guid.clone();
    let tdn = f.users[t].dn();
    let mdn = f.users[i].dn();
    fn list(u: &mut crate::world::AdUser, right: Right) -> &mut Vec<String> {
        let m = u.mailbox.as_mut().expect("a mailbox");
        match right {
            Right::FullAccess => &mut m.full_access,
            Right::SendAs => &mut m.send_as,
            Right::SendOnBehalf => &mut m.send_on_behalf,
        }
    }
    let has = list(&mut f.users[i], right).contains(&tg);
    let prior = json!({ key: has });
    let result = json!({"mailbox": mdn, "user": tdn});
    if has == add {
        return Ok((result, prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    let l = list(u, right);
    if add {
        l.push(tg.clone());
    } else {
        l.retain(|x| x != &tg);
    }
    u.usn_changed = usn;
    let mut details = json!({"trustee": tg, "change": if add { "add" } else { "remove" }});
    if let Some(a) = p.auto_mapping {
        details["auto_mapping"] = json!(a);
    }
    Ok((
        result,
        prior,
        vec![applied(action, &u.object_guid.clone(), details)],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Hide {
    identity: String,
    hidden: bool,
    #[serde(default)]
    server: Option<String>,
}

/// `Set-Mailbox -HiddenFromAddressListsEnabled`.
fn ex_hide(c: &mut Company, host: &str, p: Hide) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let i = mailbox_of(f, "Get-Mailbox", &p.identity)?;
    let now = f.users[i]
        .mailbox
        .as_ref()
        .is_some_and(|m| m.hidden_from_address_lists);
    let prior = json!({"hidden": now});
    if now == p.hidden {
        return Ok((recipient_json(&f.users[i]), prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    if let Some(m) = u.mailbox.as_mut() {
        m.hidden_from_address_lists = p.hidden;
    }
    u.usn_changed = usn;
    Ok((
        recipient_json(u),
        prior,
        vec![applied(
            "exchange_server.set_hidden_from_gal",
            &u.object_guid.clone(),
            json!({"hidden": p.hidden}),
        )],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Forwarding {
    identity: String,
    #[serde(default)]
    forwarding_address: Option<String>,
    #[serde(default)]
    forwarding_smtp_address: Option<String>,
    #[serde(default)]
    deliver_to_mailbox_and_forward: Option<bool>,
    #[serde(default)]
    server: Option<String>,
}

/// `Set-Mailbox -ForwardingAddress -ForwardingSmtpAddress -DeliverToMailboxAndForward`: the
/// template sets all three (a field not given clears it).
fn ex_forwarding(c: &mut Company, host: &str, p: Forwarding) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let i = mailbox_of(f, "Get-Mailbox", &p.identity)?;
    let want_address = match p.forwarding_address.as_deref().filter(|s| !s.is_empty()) {
        Some(a) => {
            let t = find_user(f, a).ok_or_else(|| exo_not_found("Get-Recipient", a, f))?;
            Some(f.users[t].object_guid.clone())
        }
        None => None,
    };
    let want_smtp = p
        .forwarding_smtp_address
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_start_matches("smtp:")
                .trim_start_matches("SMTP:")
                .to_owned()
        });
    let want_keep = p.deliver_to_mailbox_and_forward.unwrap_or(false);
    let dn_of = |f: &AdForest, g: &Option<String>| -> Value {
        g.as_ref()
            .and_then(|g| f.users.iter().find(|u| &u.object_guid == g))
            .map_or(Value::Null, |u| json!(u.dn()))
    };
    let m = f.users[i].mailbox.as_ref().expect("a mailbox");
    let prior = json!({
        "forwarding_address": dn_of(f, &m.forwarding_address),
        "forwarding_smtp_address": m.forwarding_smtp_address,
        "deliver_to_mailbox_and_forward": m.deliver_to_mailbox_and_forward,
    });
    let result = json!({
        "forwarding_address": dn_of(f, &want_address),
        "forwarding_smtp_address": want_smtp,
        "deliver_to_mailbox_and_forward": want_keep,
    });
    if m.forwarding_address == want_address
        && m.forwarding_smtp_address
            .as_deref()
            .map(str::to_ascii_lowercase)
            == want_smtp.as_deref().map(str::to_ascii_lowercase)
        && m.deliver_to_mailbox_and_forward == want_keep
    {
        return Ok((prior.clone(), prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    let m = u.mailbox.as_mut().expect("a mailbox");
    m.forwarding_address = want_address;
    m.forwarding_smtp_address = want_smtp;
    m.deliver_to_mailbox_and_forward = want_keep;
    u.usn_changed = usn;
    Ok((
        result.clone(),
        prior,
        vec![applied(
            "exchange_server.set_forwarding",
            &u.object_guid.clone(),
            result,
        )],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AutoReplyParams {
    identity: String,
    state: String,
    #[serde(default)]
    internal_message: Option<String>,
    #[serde(default)]
    external_message: Option<String>,
    #[serde(default)]
    external_audience: Option<String>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

fn auto_reply_json(a: &AutoReply) -> Value {
    json!({
        "state": a.state,
        "internal_message": a.internal_message.clone().unwrap_or_default(),
        "external_message": a.external_message.clone().unwrap_or_default(),
        "external_audience": a.external_audience,
        "start_time": a.start_time,
        "end_time": a.end_time,
    })
}

/// `Set-MailboxAutoReplyConfiguration`: the fields given change, the others stay.
fn ex_auto_reply(c: &mut Company, host: &str, p: AutoReplyParams) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let Some(state) = ["Enabled", "Disabled", "Scheduled"]
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(&p.state))
    else {
        return Err(OpError::new(
            "invalid_payload",
            format!(
                "Set-MailboxAutoReplyConfiguration : Cannot bind parameter 'AutoReplyState'. '{}' is not Enabled, Disabled or Scheduled.",
                p.state
            ),
        ));
    };
    let f = forest(c, &None)?;
    let i = mailbox_of(f, "Get-MailboxAutoReplyConfiguration", &p.identity)?;
    let now = f.users[i]
        .mailbox
        .as_ref()
        .map(|m| m.auto_reply.clone())
        .expect("a mailbox");
    let mut next = now.clone();
    next.state = state.to_owned();
    if let Some(m) = &p.internal_message {
        next.internal_message = Some(m.clone()).filter(|s| !s.is_empty());
    }
    if let Some(m) = &p.external_message {
        next.external_message = Some(m.clone()).filter(|s| !s.is_empty());
    }
    if let Some(a) = &p.external_audience {
        next.external_audience = a.clone();
    }
    if let Some(t) = &p.start_time {
        next.start_time = Some(t.clone()).filter(|s| !s.is_empty());
    }
    if let Some(t) = &p.end_time {
        next.end_time = Some(t.clone()).filter(|s| !s.is_empty());
    }
    let prior = auto_reply_json(&now);
    let after = auto_reply_json(&next);
    if prior == after {
        return Ok((prior.clone(), prior, vec![]));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    if let Some(m) = u.mailbox.as_mut() {
        m.auto_reply = next;
    }
    u.usn_changed = usn;
    Ok((
        json!({"state": state}),
        prior,
        vec![applied(
            "exchange_server.set_auto_reply",
            &u.object_guid.clone(),
            json!({"state": state, "external_audience": after["external_audience"]}),
        )],
    ))
}

/// `Get-MobileDevice -Mailbox` then `Remove-MobileDevice` for each partnership.
fn ex_mobile(c: &mut Company, host: &str, p: IdentityOnly) -> Ran {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let i = mailbox_of(f, "Get-MobileDevice", &p.identity)?;
    let u = &mut f.users[i];
    let devices = std::mem::take(&mut u.mailbox.as_mut().expect("a mailbox").mobile_devices);
    let removed: Vec<Value> = devices
        .iter()
        .map(|d| json!({"identity": d.guid, "friendly_name": d.friendly_name, "device_model": d.device_model}))
        .collect();
    let guid = u.object_guid.clone();
    let changes = devices
        .iter()
        .map(|d| {
            applied(
                "exchange_server.remove_mobile_device",
                &guid,
                json!({"device": d.guid}),
            )
        })
        .collect();
    Ok((
        json!({"removed": removed}),
        json!({"removed": removed}),
        changes,
    ))
}
