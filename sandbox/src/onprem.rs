//! Applying Steward ops to the simulated on-prem side: Active Directory, Entra Connect and
//! Exchange Server, with their real failure modes (duplicate sAMAccountName, password policy,
//! "AAD is busy", WinRM unreachable, the Kerberos double hop when an Exchange cmdlet runs on a
//! runner without delegation). The script format and op list live in [`crate::runner`].

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::runner::{Op, Script};

mod extra;
use crate::secret::{REDACTED, SecretText};
use crate::world::{
    AdForest, AdUser, Company, ExchangeMode, MailboxKind, OnPremMailbox, Password, RemoteMailbox,
};

#[derive(Debug, Clone)]
pub(crate) struct OpError {
    pub(crate) category: &'static str,
    pub(crate) message: String,
    /// Changes the op still made before failing (New-ADUser's half-created account).
    pub(crate) applied: Vec<Applied>,
}

impl OpError {
    fn new(category: &'static str, message: impl Into<String>) -> Self {
        Self {
            category,
            message: message.into(),
            applied: vec![],
        }
    }
}

/// One change an op made, for the ledger.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) details: Value,
    pub(crate) secret_fingerprint: Option<String>,
}

pub(crate) type OpResult = Result<(Value, Vec<Applied>), OpError>;

fn params<T: DeserializeOwned>(script: &Script) -> Result<T, OpError> {
    serde_path_to_error::deserialize(Value::Object(script.payload.clone())).map_err(|e| {
        let path = e.path().to_string();
        OpError::new(
            "invalid_payload",
            format!(
                "{}: payload field `{}`: {}",
                script.op.name(),
                if path == "." {
                    "<root>".to_owned()
                } else {
                    path
                },
                e.into_inner()
            ),
        )
    })
}

/// Runs `script` on the runner `hostname` of company `c`.
pub(crate) fn execute(
    c: &mut Company,
    seed: u64,
    hostname: &str,
    script: &Script,
    now: DateTime<Utc>,
) -> OpResult {
    match script.op {
        Op::AdNewUser => ad_new_user(c, seed, params(script)?, now),
        Op::AdRemoveUser => ad_remove_user(c, params(script)?),
        Op::AdRestoreUser => ad_restore_user(c, params(script)?),
        Op::AdSetEnabled => ad_set_enabled(c, params(script)?),
        Op::AdResetPassword => ad_reset_password(c, params(script)?, now),
        Op::AdAddGroupMember => ad_group_member(c, params(script)?, true),
        Op::AdRemoveGroupMember => ad_group_member(c, params(script)?, false),
        Op::AdMoveObject => ad_move(c, params(script)?),
        Op::AdSetManager => ad_set_manager(c, params(script)?),
        Op::AdGetUser => ad_get_user(c, params(script)?),
        Op::AdsyncStartDelta => adsync_start(c, params(script)?, now),
        Op::AdsyncStatus => adsync_status(c, params(script)?, now),
        Op::ExEnableRemoteMailbox => ex_enable_remote(c, hostname, params(script)?),
        Op::ExDisableRemoteMailbox => ex_disable_remote(c, hostname, params(script)?),
        Op::ExSetRemoteMailbox => ex_set_remote(c, hostname, params(script)?),
        Op::ExEnableMailbox => ex_enable_mailbox(c, hostname, params(script)?),
        Op::ExDisableMailbox => ex_disable_mailbox(c, hostname, params(script)?),
        _ => match extra::run(c, seed, hostname, script, now) {
            Some(r) => r.map(|(v, _, applied)| (v, applied)),
            None => Err(OpError::new(
                "script_refused",
                format!("{} has no implementation in the sandbox", script.op.name()),
            )),
        },
    }
}

fn unreachable_host(host: &str) -> OpError {
    OpError::new(
        "winrm_unreachable",
        format!(
            "Connecting to remote server {host} failed with the following error message : WinRM cannot complete the operation. Verify that the specified computer name is valid, that the computer is accessible over the network, and that a firewall exception for the WinRM service is enabled and allows access from this computer. By default, the WinRM firewall exception for public profiles limits access to remote computers within the same local subnet. For more information, see the about_Remote_Troubleshooting Help topic."
        ),
    )
}

fn same_host(a: &str, b: &str) -> bool {
    let short = |s: &str| s.split('.').next().unwrap_or(s).to_ascii_lowercase();
    short(a) == short(b) || a.to_ascii_lowercase().ends_with(&format!("-{}", short(b)))
}

/// The forest, after the checks every AD op makes (forest exists, DC reachable over WinRM,
/// `server` if given names the DC).
fn forest<'a>(c: &'a mut Company, server: &Option<String>) -> Result<&'a mut AdForest, OpError> {
    let Some(f) = c.ad.as_mut() else {
        return Err(OpError::new(
            "not_configured",
            format!(
                "{} has no Active Directory forest reachable from this runner.",
                c.name
            ),
        ));
    };
    if let Some(s) = server {
        if !same_host(s, &f.domain_controller) {
            return Err(unreachable_host(s));
        }
    }
    if !f.winrm_reachable {
        return Err(unreachable_host(&f.domain_controller));
    }
    Ok(f)
}

fn not_found(cmdlet: &str, identity: &str, f: &AdForest) -> OpError {
    OpError::new(
        "not_found",
        format!(
            "{cmdlet} : Cannot find an object with identity: '{identity}' under: '{}'.",
            f.base_dn()
        ),
    )
}

fn find_user(f: &AdForest, identity: &str) -> Option<usize> {
    let id = identity.trim();
    f.users.iter().position(|u| {
        !u.deleted
            && (u.sam_account_name.eq_ignore_ascii_case(id)
                || u.user_principal_name.eq_ignore_ascii_case(id)
                || u.dn().eq_ignore_ascii_case(id)
                || u.object_guid
                    .eq_ignore_ascii_case(id.trim_matches(['{', '}'])))
    })
}

fn find_group(f: &AdForest, identity: &str) -> Option<usize> {
    let id = identity.trim();
    f.groups.iter().position(|g| {
        g.name.eq_ignore_ascii_case(id)
            || g.dn().eq_ignore_ascii_case(id)
            || g.object_guid
                .eq_ignore_ascii_case(id.trim_matches(['{', '}']))
    })
}

fn container_exists(f: &AdForest, dn: &str) -> bool {
    f.ous.iter().any(|o| o.eq_ignore_ascii_case(dn))
        || dn.eq_ignore_ascii_case(&format!("CN=Users,{}", f.base_dn()))
}

fn password_meets_policy(f: &AdForest, p: &str) -> bool {
    let classes = [
        p.chars().any(|c| c.is_lowercase()),
        p.chars().any(|c| c.is_uppercase()),
        p.chars().any(|c| c.is_ascii_digit()),
        p.chars().any(|c| !c.is_alphanumeric()),
    ];
    p.chars().count() >= f.min_password_length && classes.iter().filter(|b| **b).count() >= 3
}

fn password_error(cmdlet: &str) -> OpError {
    OpError::new(
        "password_policy",
        format!(
            "{cmdlet} : The password does not meet the length, complexity, or history requirement of the domain."
        ),
    )
}

fn user_json(f: &AdForest, u: &AdUser) -> Value {
    let manager = u
        .manager
        .as_ref()
        .and_then(|m| f.users.iter().find(|x| &x.object_guid == m))
        .map(AdUser::dn);
    json!({
        "DistinguishedName": u.dn(),
        "Enabled": u.enabled,
        "GivenName": u.given_name,
        "Name": u.name,
        "ObjectClass": "user",
        "ObjectGUID": u.object_guid,
        "SamAccountName": u.sam_account_name,
        "Surname": u.surname,
        "UserPrincipalName": u.user_principal_name,
        "DisplayName": u.display_name,
        "Title": u.title,
        "Department": u.department,
        "EmailAddress": u.mail,
        "Manager": manager,
        "MemberOf": f.groups.iter().filter(|g| g.members.contains(&u.object_guid)).map(|g| g.dn()).collect::<Vec<_>>(),
        "msExchRemoteRecipientType": u.remote_mailbox.as_ref().map(|r| if r.kind == MailboxKind::SharedMailbox { 100 } else { 4 }),
        "HomeMDB": u.mailbox.as_ref().map(|m| m.database.clone()),
        "uSNChanged": u.usn_changed,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    sam_account_name: String,
    user_principal_name: String,
    path: String,
    password: SecretText,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    surname: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    manager: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    change_password_at_logon: bool,
    #[serde(default)]
    server: Option<String>,
}

fn yes() -> bool {
    true
}

fn ad_new_user(c: &mut Company, seed: u64, p: NewUser, now: DateTime<Utc>) -> OpResult {
    let f = forest(c, &p.server)?;
    let sam = p.sam_account_name.trim().to_owned();
    if sam.is_empty()
        || sam.chars().count() > 20
        || sam.chars().any(|ch| "\"/\\[]:;|=,+*?<>@".contains(ch))
    {
        return Err(OpError::new(
            "invalid_operation",
            format!(
                "New-ADUser : The name provided is not a properly formed account name: '{sam}'"
            ),
        ));
    }
    if f.users
        .iter()
        .any(|u| !u.deleted && u.sam_account_name.eq_ignore_ascii_case(&sam))
        || f.groups.iter().any(|g| g.name.eq_ignore_ascii_case(&sam))
    {
        return Err(OpError::new(
            "already_exists",
            "New-ADUser : The specified account already exists",
        ));
    }
    if f.users.iter().any(|u| {
        !u.deleted
            && u.user_principal_name
                .eq_ignore_ascii_case(&p.user_principal_name)
    }) {
        return Err(OpError::new(
            "already_exists",
            "New-ADUser : The operation failed because UPN value provided for addition/modification is not unique forest-wide",
        ));
    }
    if !container_exists(f, &p.path) {
        return Err(OpError::new(
            "not_found",
            "New-ADUser : Directory object not found",
        ));
    }
    let name = p
        .name
        .clone()
        .or_else(|| p.display_name.clone())
        .or_else(|| match (&p.given_name, &p.surname) {
            (Some(g), Some(s)) => Some(format!("{g} {s}")),
            _ => None,
        })
        .unwrap_or_else(|| sam.clone());
    if f.users.iter().any(|u| {
        !u.deleted && u.name.eq_ignore_ascii_case(&name) && u.parent.eq_ignore_ascii_case(&p.path)
    }) {
        return Err(OpError::new(
            "already_exists",
            "New-ADUser : An attempt was made to add an object to the directory with a name that is already in use",
        ));
    }
    let manager = match &p.manager {
        Some(m) => Some(
            f.users[find_user(f, m).ok_or_else(|| not_found("New-ADUser", m, f))?]
                .object_guid
                .clone(),
        ),
        None => None,
    };
    let usn = f.bump();
    let guid_bytes =
        crate::ids::guid_bytes(seed, &["aduser-new", &f.domain, &sam, &usn.to_string()]);
    let policy_ok = password_meets_policy(f, p.password.expose());
    let secret = p.password.digest();
    // New-ADUser creates the account first and sets the password second: a password the domain
    // refuses leaves a disabled account behind, and the cmdlet reports the password error.
    let user = AdUser {
        object_guid: crate::ids::dotnet_guid_string(&guid_bytes),
        guid_bytes,
        sam_account_name: sam.clone(),
        user_principal_name: p.user_principal_name.clone(),
        name,
        parent: p.path.clone(),
        given_name: p.given_name.clone(),
        surname: p.surname.clone(),
        display_name: p.display_name.clone(),
        enabled: p.enabled && policy_ok,
        password: policy_ok.then(|| Password {
            value: secret.clone(),
            force_change_next_sign_in: p.change_password_at_logon,
            set_at: now,
        }),
        title: p.title.clone(),
        department: p.department.clone(),
        mail: p.mail.clone(),
        manager,
        usn_changed: usn,
        remote_mailbox: None,
        mailbox: None,
        deleted: false,
        locked_out: false,
        attributes: Default::default(),
        usage_location: None,
        created_at: now,
    };
    let result = user_json(f, &user);
    let guid = user.object_guid.clone();
    f.users.push(user);
    let applied = vec![Applied {
        action: "ad.new_user".into(),
        target: guid,
        details: json!({
            "sam_account_name": sam, "user_principal_name": p.user_principal_name, "path": p.path,
            "password": REDACTED, "enabled": p.enabled && policy_ok,
            "change_password_at_logon": p.change_password_at_logon,
        }),
        secret_fingerprint: Some(secret.fingerprint()),
    }];
    if !policy_ok {
        // The half-created account is a real change the ledger must show.
        return Err(OpError {
            category: "password_policy",
            message: format!(
                "{} (the account '{sam}' was created disabled without a password)",
                password_error("New-ADUser").message
            ),
            applied,
        });
    }
    Ok((result, applied))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityOnly {
    identity: String,
    #[serde(default)]
    server: Option<String>,
}

fn ad_remove_user(c: &mut Company, p: IdentityOnly) -> OpResult {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Remove-ADUser", &p.identity, f))?;
    let usn = f.bump();
    let guid = f.users[i].object_guid.clone();
    for g in &mut f.groups {
        if g.members.contains(&guid) {
            g.members.retain(|m| m != &guid);
        }
    }
    let u = &mut f.users[i];
    u.deleted = true;
    u.usn_changed = usn;
    let dn = u.dn();
    Ok((
        json!({"removed": true, "distinguished_name": dn}),
        vec![Applied {
            action: "ad.remove_user".into(),
            target: guid,
            details: json!({"identity": p.identity}),
            secret_fingerprint: None,
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetEnabled {
    identity: String,
    enabled: bool,
    #[serde(default)]
    server: Option<String>,
}

fn ad_set_enabled(c: &mut Company, p: SetEnabled) -> OpResult {
    let f = forest(c, &p.server)?;
    let cmdlet = if p.enabled {
        "Enable-ADAccount"
    } else {
        "Disable-ADAccount"
    };
    let i = find_user(f, &p.identity).ok_or_else(|| not_found(cmdlet, &p.identity, f))?;
    if p.enabled && f.users[i].password.is_none() {
        return Err(password_error(cmdlet));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    u.enabled = p.enabled;
    u.usn_changed = usn;
    let guid = u.object_guid.clone();
    let v = user_json(f, &f.users[i]);
    Ok((
        v,
        vec![Applied {
            action: "ad.set_enabled".into(),
            target: guid,
            details: json!({"enabled": p.enabled}),
            secret_fingerprint: None,
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetPassword {
    identity: String,
    password: SecretText,
    #[serde(default = "yes")]
    change_password_at_logon: bool,
    #[serde(default)]
    unlock: bool,
    #[serde(default)]
    server: Option<String>,
}

fn ad_reset_password(c: &mut Company, p: ResetPassword, now: DateTime<Utc>) -> OpResult {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity)
        .ok_or_else(|| not_found("Set-ADAccountPassword", &p.identity, f))?;
    if !password_meets_policy(f, p.password.expose()) {
        return Err(password_error("Set-ADAccountPassword"));
    }
    let usn = f.bump();
    let secret = p.password.digest();
    let u = &mut f.users[i];
    u.password = Some(Password {
        value: secret.clone(),
        force_change_next_sign_in: p.change_password_at_logon,
        set_at: now,
    });
    u.usn_changed = usn;
    Ok((
        json!({"identity": u.sam_account_name, "password_last_set": now}),
        vec![Applied {
            action: "ad.reset_password".into(),
            target: u.object_guid.clone(),
            details: json!({"password": REDACTED, "change_password_at_logon": p.change_password_at_logon, "unlock": p.unlock}),
            secret_fingerprint: Some(secret.fingerprint()),
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupMember {
    group: String,
    member: String,
    #[serde(default)]
    server: Option<String>,
}

fn ad_group_member(c: &mut Company, p: GroupMember, add: bool) -> OpResult {
    let f = forest(c, &p.server)?;
    let cmdlet = if add {
        "Add-ADGroupMember"
    } else {
        "Remove-ADGroupMember"
    };
    let gi = find_group(f, &p.group).ok_or_else(|| not_found(cmdlet, &p.group, f))?;
    let ui = find_user(f, &p.member).ok_or_else(|| not_found(cmdlet, &p.member, f))?;
    let guid = f.users[ui].object_guid.clone();
    let is_member = f.groups[gi].members.contains(&guid);
    let group_name = f.groups[gi].name.clone();
    let changed = match (add, is_member) {
        // Add-ADGroupMember is quietly idempotent for existing members.
        (true, true) => false,
        (false, false) => {
            return Err(OpError::new(
                "not_member",
                format!("{cmdlet} : The specified account name is not a member of the group"),
            ));
        }
        (true, false) => {
            f.groups[gi].members.push(guid.clone());
            true
        }
        (false, true) => {
            f.groups[gi].members.retain(|m| m != &guid);
            true
        }
    };
    let mut applied = vec![];
    if changed {
        let usn = f.bump();
        f.groups[gi].usn_changed = usn;
        applied.push(Applied {
            action: if add {
                "ad.add_group_member".into()
            } else {
                "ad.remove_group_member".into()
            },
            target: f.groups[gi].object_guid.clone(),
            details: json!({"member": guid}),
            secret_fingerprint: None,
        });
    }
    Ok((
        json!({"group": group_name, "member": f.users[ui].sam_account_name, "changed": changed}),
        applied,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveObject {
    identity: String,
    target_path: String,
    #[serde(default)]
    server: Option<String>,
}

fn ad_move(c: &mut Company, p: MoveObject) -> OpResult {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Move-ADObject", &p.identity, f))?;
    if !container_exists(f, &p.target_path) {
        return Err(OpError::new(
            "not_found",
            "Move-ADObject : Directory object not found",
        ));
    }
    let name = f.users[i].name.clone();
    if f.users.iter().enumerate().any(|(j, u)| {
        j != i
            && !u.deleted
            && u.name.eq_ignore_ascii_case(&name)
            && u.parent.eq_ignore_ascii_case(&p.target_path)
    }) {
        return Err(OpError::new(
            "already_exists",
            "Move-ADObject : An attempt was made to add an object to the directory with a name that is already in use",
        ));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    let previous = std::mem::replace(&mut u.parent, p.target_path.clone());
    u.usn_changed = usn;
    Ok((
        json!({"previous_parent": previous, "distinguished_name": u.dn()}),
        vec![Applied {
            action: "ad.move_object".into(),
            target: u.object_guid.clone(),
            details: json!({"target_path": p.target_path}),
            secret_fingerprint: None,
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetManager {
    identity: String,
    manager: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

fn ad_set_manager(c: &mut Company, p: SetManager) -> OpResult {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Set-ADUser", &p.identity, f))?;
    let manager = match &p.manager {
        Some(m) => {
            let mi = find_user(f, m).ok_or_else(|| not_found("Set-ADUser", m, f))?;
            Some(f.users[mi].object_guid.clone())
        }
        None => None,
    };
    let dn_of = |f: &AdForest, g: &Option<String>| {
        g.as_ref()
            .and_then(|g| f.users.iter().find(|u| &u.object_guid == g))
            .map(AdUser::dn)
    };
    let previous = dn_of(f, &f.users[i].manager);
    let usn = f.bump();
    f.users[i].manager = manager.clone();
    f.users[i].usn_changed = usn;
    let now_dn = dn_of(f, &manager);
    Ok((
        json!({"identity": f.users[i].sam_account_name, "previous_manager": previous, "manager": now_dn}),
        vec![Applied {
            action: "ad.set_manager".into(),
            target: f.users[i].object_guid.clone(),
            details: json!({"manager": manager}),
            secret_fingerprint: None,
        }],
    ))
}

fn ad_get_user(c: &mut Company, p: IdentityOnly) -> OpResult {
    let f = forest(c, &p.server)?;
    let i = find_user(f, &p.identity).ok_or_else(|| not_found("Get-ADUser", &p.identity, f))?;
    Ok((user_json(f, &f.users[i]), vec![]))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {
    #[serde(default)]
    server: Option<String>,
}

fn entra_connect_checks(c: &Company, server: &Option<String>) -> Result<(), OpError> {
    let Some(ec) = &c.entra_connect else {
        return Err(OpError::new(
            "not_configured",
            format!("{} has no Entra Connect server.", c.name),
        ));
    };
    if let Some(s) = server {
        if !same_host(s, &ec.server) {
            return Err(unreachable_host(s));
        }
    }
    if c.ad.as_ref().is_some_and(|f| !f.winrm_reachable) {
        return Err(unreachable_host(&ec.server));
    }
    Ok(())
}

fn adsync_start(c: &mut Company, p: NoParams, now: DateTime<Utc>) -> OpResult {
    entra_connect_checks(c, &p.server)?;
    let tenant = c.tenant.initial_domain.clone();
    match crate::world::start_sync_cycle(c, now, "Start-ADSyncSyncCycle", None) {
        Ok(cycle) => Ok((
            json!({"Result": "Success", "started_at": cycle.started_at, "ends_at": cycle.ends_at}),
            vec![Applied {
                action: "adsync.start_delta".into(),
                target: c
                    .entra_connect
                    .as_ref()
                    .map(|e| e.server.clone())
                    .unwrap_or_default(),
                details: json!({"policy_type": "Delta"}),
                secret_fingerprint: None,
            }],
        )),
        Err(_) => Err(OpError::new(
            "sync_busy",
            format!(
                "Start-ADSyncSyncCycle : System.InvalidOperationException: Connector: {tenant} - AAD is busy."
            ),
        )),
    }
}

fn adsync_status(c: &mut Company, p: NoParams, now: DateTime<Utc>) -> OpResult {
    entra_connect_checks(c, &p.server)?;
    let ec = c.entra_connect.as_ref().expect("checked above");
    let _ = now;
    Ok((
        json!({
            "SyncCycleInProgress": ec.cycle.is_some(),
            "CurrentCycleEndsAtUTC": ec.cycle.as_ref().map(|cy| cy.ends_at),
            "NextSyncCycleStartTimeInUTC": ec.next_scheduled_at,
            "SchedulerEnabled": ec.scheduler_enabled,
            "SyncCycleIntervalMinutes": ec.interval_minutes,
            "LastCycle": ec.last_cycle,
        }),
        vec![],
    ))
}

/// Checks for an Exchange Management Shell session from runner `hostname`.
fn exchange_session(
    c: &Company,
    hostname: &str,
    server: &Option<String>,
    hybrid_only: bool,
) -> Result<(), OpError> {
    let Some(x) = &c.exchange_server else {
        return Err(OpError::new(
            "not_configured",
            format!("{} has no Exchange Server.", c.name),
        ));
    };
    if let Some(s) = server {
        if !same_host(s, &x.server) {
            return Err(unreachable_host(s));
        }
    }
    if c.ad.as_ref().is_some_and(|f| !f.winrm_reachable) {
        return Err(unreachable_host(&x.server));
    }
    if !x.double_hop_configured && !same_host(hostname, &x.server) {
        return Err(OpError::new(
            "double_hop",
            format!(
                "Connecting to remote server {} failed with the following error message : The supplied credential is invalid. For more information, see the about_Remote_Troubleshooting Help topic.",
                x.server
            ),
        ));
    }
    if hybrid_only && x.mode != ExchangeMode::Hybrid {
        return Err(OpError::new(
            "invalid_operation",
            format!(
                "{} is not configured for Exchange hybrid; remote mailboxes are not available.",
                x.server
            ),
        ));
    }
    Ok(())
}

fn exo_not_found(cmdlet: &str, identity: &str, f: &AdForest) -> OpError {
    OpError::new(
        "not_found",
        format!(
            "{cmdlet} : The operation couldn't be performed because object '{identity}' couldn't be found on '{}.{}'.",
            f.domain_controller, f.domain
        ),
    )
}

fn recipient_json(u: &AdUser) -> Value {
    json!({
        "Identity": u.dn(),
        "Alias": u.sam_account_name,
        "PrimarySmtpAddress": u.mail,
        "RecipientTypeDetails": match (&u.remote_mailbox, &u.mailbox) {
            (Some(r), _) if r.kind == MailboxKind::SharedMailbox => "RemoteSharedMailbox",
            (Some(_), _) => "RemoteUserMailbox",
            (None, Some(_)) => "UserMailbox",
            (None, None) => "User",
        },
        "RemoteRoutingAddress": u.remote_mailbox.as_ref().map(|r| format!("SMTP:{}", r.remote_routing_address)),
        "HiddenFromAddressListsEnabled": u.remote_mailbox.as_ref().map(|r| r.hidden_from_address_lists)
            .or(u.mailbox.as_ref().map(|m| m.hidden_from_address_lists)),
        "Database": u.mailbox.as_ref().map(|m| m.database.clone()),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRemote {
    identity: String,
    #[serde(default)]
    remote_routing_address: Option<String>,
    #[serde(default)]
    shared: bool,
    #[serde(default)]
    server: Option<String>,
}

fn ex_enable_remote(c: &mut Company, host: &str, p: EnableRemote) -> OpResult {
    exchange_session(c, host, &p.server, true)?;
    let routing_domain = c
        .tenant
        .initial_domain
        .replace(".onmicrosoft.com", ".mail.onmicrosoft.com");
    let f = forest(c, &None)?;
    let i = find_user(f, &p.identity)
        .ok_or_else(|| exo_not_found("Enable-RemoteMailbox", &p.identity, f))?;
    if f.users[i].remote_mailbox.is_some() || f.users[i].mailbox.is_some() {
        return Err(OpError::new(
            "already_exists",
            format!(
                "Enable-RemoteMailbox : The user '{}' is already mail-enabled.",
                f.users[i].sam_account_name
            ),
        ));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    let routing = p
        .remote_routing_address
        .clone()
        .unwrap_or_else(|| format!("{}@{routing_domain}", u.sam_account_name));
    u.remote_mailbox = Some(RemoteMailbox {
        kind: if p.shared {
            MailboxKind::SharedMailbox
        } else {
            MailboxKind::UserMailbox
        },
        remote_routing_address: routing.clone(),
        hidden_from_address_lists: false,
    });
    if u.mail.is_none() {
        u.mail = Some(u.user_principal_name.clone());
    }
    u.usn_changed = usn;
    Ok((
        recipient_json(u),
        vec![Applied {
            action: "exchange_server.enable_remote_mailbox".into(),
            target: u.object_guid.clone(),
            details: json!({"remote_routing_address": routing, "shared": p.shared}),
            secret_fingerprint: None,
        }],
    ))
}

fn ex_disable_remote(c: &mut Company, host: &str, p: IdentityOnly) -> OpResult {
    exchange_session(c, host, &p.server, true)?;
    let f = forest(c, &None)?;
    let i = find_user(f, &p.identity)
        .filter(|i| f.users[*i].remote_mailbox.is_some())
        .ok_or_else(|| exo_not_found("Disable-RemoteMailbox", &p.identity, f))?;
    let usn = f.bump();
    let u = &mut f.users[i];
    u.remote_mailbox = None;
    u.mail = None;
    u.usn_changed = usn;
    Ok((
        json!({"identity": u.sam_account_name}),
        vec![Applied {
            action: "exchange_server.disable_remote_mailbox".into(),
            target: u.object_guid.clone(),
            details: json!({}),
            secret_fingerprint: None,
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRemote {
    identity: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    hidden_from_address_lists_enabled: Option<bool>,
    #[serde(default)]
    server: Option<String>,
}

fn ex_set_remote(c: &mut Company, host: &str, p: SetRemote) -> OpResult {
    exchange_session(c, host, &p.server, true)?;
    let kind = match p.kind.as_deref() {
        None => None,
        Some(k) if k.eq_ignore_ascii_case("shared") => Some(MailboxKind::SharedMailbox),
        Some(k) if k.eq_ignore_ascii_case("regular") => Some(MailboxKind::UserMailbox),
        Some(k) => {
            return Err(OpError::new(
                "invalid_payload",
                format!(
                    "exchange_server.set_remote_mailbox: payload field `type`: '{k}' is not Regular or Shared"
                ),
            ));
        }
    };
    let f = forest(c, &None)?;
    let i = find_user(f, &p.identity)
        .filter(|i| f.users[*i].remote_mailbox.is_some())
        .ok_or_else(|| exo_not_found("Set-RemoteMailbox", &p.identity, f))?;
    let usn = f.bump();
    let u = &mut f.users[i];
    let r = u.remote_mailbox.as_mut().expect("filtered above");
    let mut details = serde_json::Map::new();
    if let Some(k) = kind {
        r.kind = k;
        details.insert("type".into(), json!(k.as_str()));
    }
    if let Some(h) = p.hidden_from_address_lists_enabled {
        r.hidden_from_address_lists = h;
        details.insert("hidden_from_address_lists_enabled".into(), json!(h));
    }
    u.usn_changed = usn;
    Ok((
        recipient_json(u),
        vec![Applied {
            action: "exchange_server.set_remote_mailbox".into(),
            target: u.object_guid.clone(),
            details: Value::Object(details),
            secret_fingerprint: None,
        }],
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableMailbox {
    identity: String,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

fn ex_enable_mailbox(c: &mut Company, host: &str, p: EnableMailbox) -> OpResult {
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
                    "Enable-Mailbox : Couldn't find database \"{d}\". Make sure you have typed it correctly."
                ),
            ));
        }
        None => databases
            .first()
            .cloned()
            .unwrap_or_else(|| "Mailbox Database".to_owned()),
    };
    let f = forest(c, &None)?;
    let i =
        find_user(f, &p.identity).ok_or_else(|| exo_not_found("Enable-Mailbox", &p.identity, f))?;
    if f.users[i].remote_mailbox.is_some() || f.users[i].mailbox.is_some() {
        return Err(OpError::new(
            "already_exists",
            format!(
                "Enable-Mailbox : The user '{}' is already mail-enabled.",
                f.users[i].sam_account_name
            ),
        ));
    }
    let usn = f.bump();
    let u = &mut f.users[i];
    u.mailbox = Some(OnPremMailbox::new(database.clone()));
    if u.mail.is_none() {
        u.mail = Some(u.user_principal_name.clone());
    }
    u.usn_changed = usn;
    Ok((
        recipient_json(u),
        vec![Applied {
            action: "exchange_server.enable_mailbox".into(),
            target: u.object_guid.clone(),
            details: json!({"database": database}),
            secret_fingerprint: None,
        }],
    ))
}

fn ex_disable_mailbox(c: &mut Company, host: &str, p: IdentityOnly) -> OpResult {
    exchange_session(c, host, &p.server, false)?;
    let f = forest(c, &None)?;
    let i = find_user(f, &p.identity)
        .filter(|i| f.users[*i].mailbox.is_some())
        .ok_or_else(|| exo_not_found("Disable-Mailbox", &p.identity, f))?;
    let usn = f.bump();
    let u = &mut f.users[i];
    u.mailbox = None;
    u.mail = None;
    u.usn_changed = usn;
    Ok((
        json!({"identity": u.sam_account_name}),
        vec![Applied {
            action: "exchange_server.disable_mailbox".into(),
            target: u.object_guid.clone(),
            details: json!({}),
            secret_fingerprint: None,
        }],
    ))
}

// ---- the templates' result line ---------------------------------------------------------------

/// What a template sees before it acts: it is already in the desired state (reported
/// `unchanged`, nothing done), or it acts, having recorded `prior` for its inverse.
enum Before {
    Unchanged { result: Value, prior: Value },
    Acts { prior: Value },
}

fn ad_user_result(f: &AdForest, u: &AdUser) -> Value {
    let manager = u
        .manager
        .as_ref()
        .and_then(|m| f.users.iter().find(|x| &x.object_guid == m))
        .map(AdUser::dn);
    json!({
        "distinguished_name": u.dn(),
        "parent": u.parent,
        "object_guid": u.object_guid,
        "sam_account_name": u.sam_account_name,
        "user_principal_name": u.user_principal_name,
        "enabled": u.enabled,
        "locked_out": false,
        "display_name": u.display_name,
        "given_name": u.given_name,
        "surname": u.surname,
        "title": u.title,
        "department": u.department,
        "mail": u.mail,
        "manager": manager,
        "when_created": u.created_at,
    })
}

fn text(script: &Script, k: &str) -> String {
    script
        .payload
        .get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Reads the state a template reads before acting (mirroring its checks, so a repeat reports
/// `unchanged` and changes nothing).
fn before(c: &Company, script: &Script) -> Before {
    let acts = |prior: Value| Before::Acts { prior };
    let Some(f) = c.ad.as_ref() else {
        return acts(Value::Null);
    };
    let user = |k: &str| find_user(f, &text(script, k)).map(|i| &f.users[i]);
    match script.op {
        Op::AdNewUser => match user("sam_account_name") {
            Some(u)
                if u.user_principal_name
                    .eq_ignore_ascii_case(&text(script, "user_principal_name"))
                    && u.parent.eq_ignore_ascii_case(&text(script, "path")) =>
            {
                Before::Unchanged {
                    result: ad_user_result(f, u),
                    prior: json!({"existed": true}),
                }
            }
            _ => acts(json!({"existed": false})),
        },
        Op::AdRemoveUser => match user("identity") {
            None => Before::Unchanged {
                result: json!({"removed": false}),
                prior: json!({"existed": false}),
            },
            Some(u) => acts(json!({
                "existed": true, "recycle_bin": true, "user": ad_user_result(f, u),
                "member_of": f.groups.iter().filter(|g| g.members.contains(&u.object_guid)).map(|g| g.dn()).collect::<Vec<_>>(),
            })),
        },
        Op::AdRestoreUser => {
            let guid = text(script, "object_guid");
            match f
                .users
                .iter()
                .find(|u| u.object_guid.eq_ignore_ascii_case(&guid))
            {
                Some(u) if !u.deleted => Before::Unchanged {
                    result: ad_user_result(f, u),
                    prior: json!({"deleted": false}),
                },
                _ => acts(json!({"deleted": true})),
            }
        }
        Op::AdSetEnabled => match user("identity") {
            Some(u)
                if Some(u.enabled) == script.payload.get("enabled").and_then(Value::as_bool) =>
            {
                Before::Unchanged {
                    result: ad_user_result(f, u),
                    prior: json!({"enabled": u.enabled}),
                }
            }
            Some(u) => acts(json!({"enabled": u.enabled})),
            None => acts(Value::Null),
        },
        Op::AdRemoveGroupMember | Op::AdAddGroupMember => {
            let add = script.op == Op::AdAddGroupMember;
            let member = find_group(f, &text(script, "group"))
                .and_then(|g| user("member").map(|u| f.groups[g].members.contains(&u.object_guid)));
            match member {
                Some(m) if m == add => Before::Unchanged {
                    result: json!({"group": text(script, "group"), "member": text(script, "member"), "changed": false}),
                    prior: json!({"member": m}),
                },
                Some(m) => acts(json!({"member": m})),
                None => acts(Value::Null),
            }
        }
        Op::AdMoveObject => match user("identity") {
            Some(u) if u.parent.eq_ignore_ascii_case(&text(script, "target_path")) => {
                Before::Unchanged {
                    result: ad_user_result(f, u),
                    prior: json!({"previous_parent": u.parent}),
                }
            }
            Some(u) => acts(json!({"previous_parent": u.parent})),
            None => acts(Value::Null),
        },
        Op::AdSetManager => match user("identity") {
            Some(u) => {
                let current = u
                    .manager
                    .as_ref()
                    .and_then(|m| f.users.iter().find(|x| &x.object_guid == m));
                let wanted = script
                    .payload
                    .get("manager")
                    .and_then(Value::as_str)
                    .and_then(|m| find_user(f, m))
                    .map(|i| &f.users[i]);
                let prior = json!({"manager": current.map(AdUser::dn)});
                let same = match (current, wanted, script.payload.get("manager")) {
                    (None, _, None | Some(Value::Null)) => true,
                    (Some(a), Some(b), _) => a.object_guid == b.object_guid,
                    _ => false,
                };
                if same {
                    Before::Unchanged {
                        result: ad_user_result(f, u),
                        prior,
                    }
                } else {
                    acts(prior)
                }
            }
            None => acts(Value::Null),
        },
        Op::ExEnableRemoteMailbox => match user("identity") {
            Some(u) if u.remote_mailbox.is_some() => Before::Unchanged {
                result: recipient_json(u),
                prior: json!({"recipient_type_details": "RemoteUserMailbox"}),
            },
            _ => acts(json!({"recipient_type_details": "User"})),
        },
        Op::ExDisableRemoteMailbox => match user("identity") {
            Some(u) if u.remote_mailbox.is_none() => Before::Unchanged {
                result: json!({"identity": text(script, "identity")}),
                prior: json!({"recipient_type_details": "User"}),
            },
            _ => acts(json!({"recipient_type_details": "RemoteUserMailbox"})),
        },
        Op::ExSetRemoteMailbox => match user("identity").and_then(|u| u.remote_mailbox.as_ref()) {
            Some(r) => {
                let mut prior = serde_json::Map::new();
                let mut same = true;
                if let Some(t) = script.payload.get("type").and_then(Value::as_str) {
                    let now = if r.kind == MailboxKind::SharedMailbox {
                        "Shared"
                    } else {
                        "Regular"
                    };
                    prior.insert("type".into(), json!(now));
                    same &= t.eq_ignore_ascii_case(now);
                }
                if let Some(h) = script
                    .payload
                    .get("hidden_from_address_lists_enabled")
                    .and_then(Value::as_bool)
                {
                    prior.insert(
                        "hidden_from_address_lists_enabled".into(),
                        json!(r.hidden_from_address_lists),
                    );
                    same &= h == r.hidden_from_address_lists;
                }
                if same {
                    Before::Unchanged {
                        result: json!({"identity": text(script, "identity")}),
                        prior: Value::Object(prior),
                    }
                } else {
                    acts(Value::Object(prior))
                }
            }
            None => acts(Value::Null),
        },
        Op::ExEnableMailbox => match user("identity") {
            Some(u) if u.mailbox.is_some() => Before::Unchanged {
                result: recipient_json(u),
                prior: json!({"recipient_type_details": "UserMailbox"}),
            },
            _ => acts(json!({"recipient_type_details": "User"})),
        },
        Op::ExDisableMailbox => match user("identity") {
            Some(u) if u.mailbox.is_none() => Before::Unchanged {
                result: json!({"identity": text(script, "identity")}),
                prior: json!({"recipient_type_details": "User"}),
            },
            _ => acts(json!({"recipient_type_details": "UserMailbox"})),
        },
        // The rest read their prior state as they act (`extra`).
        _ => acts(Value::Null),
    }
}

/// Runs `script` as its template would, returning the template's one result line
/// (`STEWARD-RESULT {template, status, result, prior, reason, category}`) and the changes made.
pub(crate) fn run_template(
    c: &mut Company,
    seed: u64,
    hostname: &str,
    script: &Script,
    now: DateTime<Utc>,
) -> (String, Vec<Applied>) {
    let template = format!("{}@{}", script.op.name(), script.version);
    let line = |status: &str, result: Value, prior: Value, reason: &str, category: &str| {
        format!(
            "STEWARD-RESULT {}",
            json!({"template": template, "status": status, "result": result, "prior": prior,
                   "reason": reason, "category": category})
        )
    };
    // The ops of `extra` read their prior state and check their connection as they act.
    if let Some(ran) = extra::run(c, seed, hostname, script, now) {
        return match ran {
            Ok((result, prior, applied)) => {
                let status = if applied.is_empty() {
                    "unchanged"
                } else {
                    "changed"
                };
                (line(status, result, prior, "", ""), applied)
            }
            Err(e) => (
                line("failed", Value::Null, Value::Null, &e.message, e.category),
                e.applied,
            ),
        };
    }
    // The connection checks come first, as in the templates (WinRM, the server named).
    let prior = match before(c, script) {
        Before::Unchanged { result, prior } => {
            // Still fail where the template would fail before reading (an unreachable DC).
            if let Err(e) = reachability(c, hostname, script) {
                return (
                    line("failed", Value::Null, Value::Null, &e.message, e.category),
                    vec![],
                );
            }
            return (line("unchanged", result, prior, "", ""), vec![]);
        }
        Before::Acts { prior } => prior,
    };
    match execute(c, seed, hostname, script, now) {
        Ok((v, applied)) => {
            let result = match script.op {
                Op::AdNewUser
                | Op::AdMoveObject
                | Op::AdSetEnabled
                | Op::AdSetManager
                | Op::AdRestoreUser
                | Op::AdGetUser => {
                    let f = c.ad.as_ref().expect("the op found the forest");
                    let key = match script.op {
                        Op::AdNewUser => text(script, "sam_account_name"),
                        Op::AdRestoreUser => text(script, "object_guid"),
                        _ => text(script, "identity"),
                    };
                    find_user(f, &key).map_or(v, |i| ad_user_result(f, &f.users[i]))
                }
                _ => v,
            };
            let status = if applied.is_empty() {
                "unchanged"
            } else {
                "changed"
            };
            (line(status, result, prior, "", ""), applied)
        }
        Err(e) => {
            let applied = e.applied.clone();
            (
                line("failed", Value::Null, prior, &e.message, e.category),
                applied,
            )
        }
    }
}

/// The checks a template makes before reading anything: the machine it reaches answers.
fn reachability(c: &mut Company, hostname: &str, script: &Script) -> Result<(), OpError> {
    let server = script
        .payload
        .get("server")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match script.op {
        Op::AdsyncStartDelta | Op::AdsyncStatus => entra_connect_checks(c, &server),
        Op::ExEnableRemoteMailbox
        | Op::ExDisableRemoteMailbox
        | Op::ExSetRemoteMailbox
        | Op::ExEnableMailbox
        | Op::ExDisableMailbox => {
            let _ = hostname;
            forest(c, &None).map(|_| ())
        }
        _ => forest(c, &server).map(|_| ()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreUser {
    object_guid: String,
    #[serde(default)]
    server: Option<String>,
}

/// `Restore-ADObject` from the AD Recycle Bin.
fn ad_restore_user(c: &mut Company, p: RestoreUser) -> OpResult {
    let f = forest(c, &p.server)?;
    let guid = p.object_guid.trim_matches(['{', '}']).to_owned();
    let Some(i) = f
        .users
        .iter()
        .position(|u| u.deleted && u.object_guid.eq_ignore_ascii_case(&guid))
    else {
        return Err(OpError::new(
            "not_found",
            format!(
                "Restore-ADObject : Cannot find an object with identity: '{guid}' under: 'CN=Deleted Objects,{}'.",
                f.base_dn()
            ),
        ));
    };
    let usn = f.bump();
    let u = &mut f.users[i];
    u.deleted = false;
    u.usn_changed = usn;
    Ok((
        json!({"restored": true, "object_guid": u.object_guid}),
        vec![Applied {
            action: "ad.restore_user".into(),
            target: u.object_guid.clone(),
            details: json!({}),
            secret_fingerprint: None,
        }],
    ))
}
