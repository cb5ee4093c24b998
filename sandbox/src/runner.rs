//! The Steward script format and the runner contract: what a simulated Datto agent running
//! Steward's runner component does with a quick job. This module is the single definition of
//! both sides' expectations; the engine's script generator and callback handler must match it.
//!
//! # Script format
//!
//! A Steward script is PowerShell text. Within its first 10 lines it carries exactly one header
//!
//! ```text
//! # steward-op: <op-name>@<version>
//! ```
//!
//! and somewhere in the script exactly one payload line
//!
//! ```text
//! $StewardPayload = '<base64 of a UTF-8 JSON object>'
//! ```
//!
//! Every parameter travels in the payload; untrusted text never appears in the script body. The
//! sandbox "executes" a script by reading the op, version and payload and applying the op to
//! the simulated AD, Entra Connect or Exchange Server. The body below the header is never
//! interpreted. A script without a header, with two headers, with an unknown op or version, or
//! with a payload that is missing, duplicated, not base64, not UTF-8, not a JSON object, or has
//! missing, mistyped or unknown fields, is refused: the job fails with exit code 1, a clear
//! stderr and error category `script_refused` or `invalid_payload`. Nothing is guessed.
//!
//! # Ops (all version 1)
//!
//! Every payload may also carry `"server"`: the host the runner would reach (DC, Entra Connect
//! or Exchange server); when given it must name the company's server. Identities accept a
//! sAMAccountName, UPN, distinguished name or objectGUID.
//!
//! | op | payload | result |
//! |---|---|---|
//! | `ad.new_user` | `sam_account_name`, `user_principal_name`, `path` (OU DN), `password`, optional `name`, `given_name`, `surname`, `display_name`, `title`, `department`, `mail`, `manager`, `enabled` (default true), `change_password_at_logon` (default true) | the user |
//! | `ad.remove_user` | `identity` | `{removed, distinguished_name}` |
//! | `ad.set_enabled` | `identity`, `enabled` | the user |
//! | `ad.reset_password` | `identity`, `password`, optional `change_password_at_logon` (default true), `unlock` | `{identity, password_last_set}` |
//! | `ad.add_group_member` | `group`, `member` | `{group, member, changed}` |
//! | `ad.remove_group_member` | `group`, `member` | `{group, member, changed}` |
//! | `ad.move_object` | `identity`, `target_path` | `{previous_parent, distinguished_name}` |
//! | `ad.set_manager` | `identity`, `manager` (identity or null to clear) | `{identity, previous_manager, manager}` |
//! | `ad.get_user` | `identity` | the user |
//! | `adsync.start_delta` | `{}` | `{Result: "Success", started_at, ends_at}` |
//! | `adsync.status` | `{}` | `{SyncCycleInProgress, NextSyncCycleStartTimeInUTC, ...}` |
//! | `exchange_server.enable_remote_mailbox` | `identity`, optional `remote_routing_address`, `shared` | the recipient |
//! | `exchange_server.disable_remote_mailbox` | `identity` | `{identity}` |
//! | `exchange_server.set_remote_mailbox` | `identity`, optional `type` (`Regular`/`Shared`), `hidden_from_address_lists_enabled` | the recipient |
//! | `exchange_server.enable_mailbox` | `identity`, optional `database` | the recipient |
//! | `exchange_server.disable_mailbox` | `identity` | `{identity}` |
//! | `ad.set_user` | `identity`, `attributes` (named: `given_name`, `title`, `company`, …), `replace` (raw: `msExchHideFromAddressLists`, `extensionAttribute1`…) | the user; prior: the values before, per section |
//! | `ad.unlock` | `identity` | the user; prior `{locked_out}` |
//! | `ad.list_groups` | `identity` | `{distinguished_name, groups}` |
//! | `ad.copy_groups` | `template`, `member` | `{member, added, already_member, skipped_privileged}`; prior `{added}` |
//! | `ad.remove_groups` | `member`, `groups` | `{member, removed}` |
//! | `exchange_server.get_recipient` | `identity` | the recipient |
//! | `exchange_server.new_mailbox` | `name`, `user_principal_name`, `password` (not for `shared`), optional `shared`, `alias`, `display_name`, `first_name`, `last_name`, `organizational_unit`, `database` | the recipient (AD account and mailbox made together) |
//! | `exchange_server.remove_mailbox` | `identity` | `{removed}` (the AD account goes too) |
//! | `exchange_server.set_mailbox_type` | `identity`, `type` (`Regular`/`Shared`) | the recipient; prior `{type}` |
//! | `exchange_server.add_mailbox_permission`, `remove_mailbox_permission` | `identity`, `user`, optional `auto_mapping` | `{mailbox, user}`; prior `{full_access}` |
//! | `exchange_server.add_send_as`, `remove_send_as` | `identity`, `user` | `{mailbox, user}`; prior `{send_as}` |
//! | `exchange_server.set_send_on_behalf` | `identity`, `user`, `change` (`add`/`remove`) | `{mailbox, user}`; prior `{send_on_behalf}` |
//! | `exchange_server.set_hidden_from_gal` | `identity`, `hidden` | the recipient; prior `{hidden}` |
//! | `exchange_server.set_forwarding` | `identity`, optional `forwarding_address`, `forwarding_smtp_address`, `deliver_to_mailbox_and_forward` (what is not given is cleared) | the forwarding; prior the same fields |
//! | `exchange_server.set_auto_reply` | `identity`, `state`, optional `internal_message`, `external_message`, `external_audience`, `start_time`, `end_time` | `{state}`; prior the whole configuration |
//! | `exchange_server.remove_mobile_devices` | `identity` | `{removed}` |
//!
//! # Runner contract
//!
//! Quick job variables (component with `steward_runner: true`):
//! `steward_script_url`, `steward_callback_url`, `steward_job_token`.
//!
//! 1. The agent sends `GET <steward_script_url>` with `Authorization: Bearer <steward_job_token>`;
//!    a 2xx answer's body is the script text. Anything else fails the job (category
//!    `script_fetch_failed`, stderr names the status or error).
//! 2. It parses and runs the script as above.
//! 3. It sends `POST <steward_callback_url>` with the same bearer token and a JSON [`RunResult`]:
//!    `{job_uid, device_uid, hostname, exit_code, status: "success"|"failure", stdout, stderr,
//!    result: <object the op returns> | null, error: {category, message} | null, started_at,
//!    finished_at}`. A non-2xx answer or a transport error is retried twice; the outcome is kept on
//!    the job (`GET /admin/jobs`). The job's status, result, stdout and stderr are also readable
//!    through the Datto API routes whatever the callback's fate.
//!
//! Error categories: `script_fetch_failed`, `script_refused`, `invalid_payload`, `not_found`,
//! `already_exists`, `not_member`, `password_policy`, `sync_busy`, `winrm_unreachable`,
//! `double_hop`, `not_configured`, `invalid_operation`.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub(crate) const SCRIPT_URL_VAR: &str = "steward_script_url";
pub(crate) const CALLBACK_URL_VAR: &str = "steward_callback_url";
pub(crate) const JOB_TOKEN_VAR: &str = "steward_job_token";
/// The runner protocol's variables: Steward's URL and the job's id (with the token above).
pub(crate) const STEWARD_URL_VAR: &str = "steward_url";
pub(crate) const JOB_ID_VAR: &str = "steward_job_id";

/// How many leading lines may hold the op header.
const HEADER_WINDOW: usize = 10;

/// Every op the sandbox executes, with its name and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    AdNewUser,
    AdRemoveUser,
    AdRestoreUser,
    AdSetEnabled,
    AdResetPassword,
    AdAddGroupMember,
    AdRemoveGroupMember,
    AdMoveObject,
    AdSetManager,
    AdGetUser,
    AdsyncStartDelta,
    AdsyncStatus,
    ExEnableRemoteMailbox,
    ExDisableRemoteMailbox,
    ExSetRemoteMailbox,
    ExEnableMailbox,
    ExDisableMailbox,
    AdSetUser,
    AdUnlock,
    AdListGroups,
    AdCopyGroups,
    AdRemoveGroups,
    ExGetRecipient,
    ExNewMailbox,
    ExRemoveMailbox,
    ExSetMailboxType,
    ExAddMailboxPermission,
    ExRemoveMailboxPermission,
    ExAddSendAs,
    ExRemoveSendAs,
    ExSetSendOnBehalf,
    ExSetHiddenFromGal,
    ExSetForwarding,
    ExSetAutoReply,
    ExRemoveMobileDevices,
}

pub(crate) const OPS: &[(Op, &str, u32)] = &[
    (Op::AdNewUser, "ad.new_user", 1),
    (Op::AdRemoveUser, "ad.remove_user", 1),
    (Op::AdRestoreUser, "ad.restore_user", 1),
    (Op::AdSetEnabled, "ad.set_enabled", 1),
    (Op::AdResetPassword, "ad.reset_password", 1),
    (Op::AdAddGroupMember, "ad.add_group_member", 1),
    (Op::AdRemoveGroupMember, "ad.remove_group_member", 1),
    (Op::AdMoveObject, "ad.move_object", 1),
    (Op::AdSetManager, "ad.set_manager", 1),
    (Op::AdGetUser, "ad.get_user", 1),
    (Op::AdsyncStartDelta, "adsync.start_delta", 1),
    (Op::AdsyncStatus, "adsync.status", 1),
    (
        Op::ExEnableRemoteMailbox,
        "exchange_server.enable_remote_mailbox",
        1,
    ),
    (
        Op::ExDisableRemoteMailbox,
        "exchange_server.disable_remote_mailbox",
        1,
    ),
    (
        Op::ExSetRemoteMailbox,
        "exchange_server.set_remote_mailbox",
        1,
    ),
    (Op::ExEnableMailbox, "exchange_server.enable_mailbox", 1),
    (Op::ExDisableMailbox, "exchange_server.disable_mailbox", 1),
    (Op::AdSetUser, "ad.set_user", 1),
    (Op::AdUnlock, "ad.unlock", 1),
    (Op::AdListGroups, "ad.list_groups", 1),
    (Op::AdCopyGroups, "ad.copy_groups", 1),
    (Op::AdRemoveGroups, "ad.remove_groups", 1),
    (Op::ExGetRecipient, "exchange_server.get_recipient", 1),
    (Op::ExNewMailbox, "exchange_server.new_mailbox", 1),
    (Op::ExRemoveMailbox, "exchange_server.remove_mailbox", 1),
    (Op::ExSetMailboxType, "exchange_server.set_mailbox_type", 1),
    (
        Op::ExAddMailboxPermission,
        "exchange_server.add_mailbox_permission",
        1,
    ),
    (
        Op::ExRemoveMailboxPermission,
        "exchange_server.remove_mailbox_permission",
        1,
    ),
    (Op::ExAddSendAs, "exchange_server.add_send_as", 1),
    (Op::ExRemoveSendAs, "exchange_server.remove_send_as", 1),
    (
        Op::ExSetSendOnBehalf,
        "exchange_server.set_send_on_behalf",
        1,
    ),
    (
        Op::ExSetHiddenFromGal,
        "exchange_server.set_hidden_from_gal",
        1,
    ),
    (Op::ExSetForwarding, "exchange_server.set_forwarding", 1),
    (Op::ExSetAutoReply, "exchange_server.set_auto_reply", 1),
    (
        Op::ExRemoveMobileDevices,
        "exchange_server.remove_mobile_devices",
        1,
    ),
];

impl Op {
    pub(crate) fn name(self) -> &'static str {
        OPS.iter()
            .find(|(o, _, _)| *o == self)
            .map(|(_, n, _)| *n)
            .expect("every op is in OPS")
    }
}

#[derive(Clone)]
pub(crate) struct Script {
    pub(crate) op: Op,
    pub(crate) version: u32,
    /// May carry a password (`ad.new_user`, `ad.reset_password`), so `Debug` shows only its keys.
    pub(crate) payload: Map<String, Value>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("op", &self.op)
            .field("version", &self.version)
            .field("payload_keys", &self.payload.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScriptError {
    #[error(
        "no '# steward-op: <op>@<version>' header in the first {HEADER_WINDOW} lines; refusing to run a script that doesn't say what it does"
    )]
    NoHeader,
    #[error("more than one '# steward-op:' header")]
    TwoHeaders,
    #[error("malformed op header '{0}': expected '# steward-op: <op-name>@<version>'")]
    BadHeader(String),
    #[error("unknown op '{0}'")]
    UnknownOp(String),
    #[error("op '{op}' has no version {version} (this runner knows version {known})")]
    UnknownVersion {
        op: String,
        version: u32,
        known: u32,
    },
    #[error("no \"$StewardPayload = '<base64>'\" line")]
    NoPayload,
    #[error("more than one $StewardPayload line")]
    TwoPayloads,
    #[error("$StewardPayload is not valid base64")]
    PayloadNotBase64,
    #[error("$StewardPayload is not UTF-8")]
    PayloadNotUtf8,
    #[error("$StewardPayload is not JSON: {0}")]
    PayloadNotJson(String),
    #[error("$StewardPayload must be a JSON object")]
    PayloadNotObject,
}

impl ScriptError {
    pub(crate) fn category(&self) -> &'static str {
        match self {
            Self::NoHeader
            | Self::TwoHeaders
            | Self::BadHeader(_)
            | Self::UnknownOp(_)
            | Self::UnknownVersion { .. } => "script_refused",
            Self::NoPayload
            | Self::TwoPayloads
            | Self::PayloadNotBase64
            | Self::PayloadNotUtf8
            | Self::PayloadNotJson(_)
            | Self::PayloadNotObject => "invalid_payload",
        }
    }
}

pub(crate) fn parse_script(text: &str) -> Result<Script, ScriptError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let header_lines: Vec<&str> = lines.iter().filter(|l| is_header(l)).copied().collect();
    if header_lines.len() > 1 {
        return Err(ScriptError::TwoHeaders);
    }
    let Some(header) = lines.iter().take(HEADER_WINDOW).find(|l| is_header(l)) else {
        return Err(ScriptError::NoHeader);
    };
    let spec = header
        .trim()
        .trim_start_matches('#')
        .trim()
        .strip_prefix("steward-op:")
        .map(str::trim)
        .unwrap_or_default();
    let Some((name, version)) = spec.split_once('@') else {
        return Err(ScriptError::BadHeader(header.trim().to_owned()));
    };
    let version: u32 = version
        .trim()
        .parse()
        .map_err(|_| ScriptError::BadHeader(header.trim().to_owned()))?;
    let name = name.trim();
    let Some((op, _, known)) = OPS.iter().find(|(_, n, _)| *n == name) else {
        return Err(ScriptError::UnknownOp(name.to_owned()));
    };
    if *known != version {
        return Err(ScriptError::UnknownVersion {
            op: name.to_owned(),
            version,
            known: *known,
        });
    }
    let payloads: Vec<&str> = lines.iter().filter_map(|l| payload_literal(l)).collect();
    let encoded = match payloads.as_slice() {
        [] => return Err(ScriptError::NoPayload),
        [one] => *one,
        _ => return Err(ScriptError::TwoPayloads),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ScriptError::PayloadNotBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| ScriptError::PayloadNotUtf8)?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| ScriptError::PayloadNotJson(e.to_string()))?;
    let Value::Object(payload) = value else {
        return Err(ScriptError::PayloadNotObject);
    };
    Ok(Script {
        op: *op,
        version,
        payload,
    })
}

fn is_header(line: &str) -> bool {
    let l = line.trim();
    l.starts_with('#') && l.trim_start_matches('#').trim().starts_with("steward-op:")
}

/// The base64 literal of a `$StewardPayload = '...'` line, if this is one.
fn payload_literal(line: &str) -> Option<&str> {
    let l = line.trim();
    let rest = l.strip_prefix("$StewardPayload")?.trim_start();
    let rest = rest.strip_prefix('=')?.trim();
    let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    Some(inner)
}

/// The JSON the agent POSTs to `steward_callback_url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunResult {
    pub(crate) job_uid: String,
    pub(crate) device_uid: String,
    pub(crate) hostname: String,
    pub(crate) exit_code: i32,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<RunError>,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct RunError {
    pub(crate) category: String,
    pub(crate) message: String,
}

#[cfg(test)]
pub(crate) fn build_script(op: &str, payload: &Value) -> String {
    format!(
        "# steward-op: {op}\n#Requires -Version 5.1\n$ErrorActionPreference = 'Stop'\n$StewardPayload = '{}'\n$p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json\n",
        base64::engine::general_purpose::STANDARD.encode(payload.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_well_formed_script() {
        let s = build_script("ad.new_user@1", &json!({"sam_account_name": "jdoe"}));
        let parsed = parse_script(&s).unwrap();
        assert_eq!(parsed.op, Op::AdNewUser);
        assert_eq!(parsed.version, 1);
        assert_eq!(parsed.payload["sam_account_name"], "jdoe");
        assert_eq!(Op::AdNewUser.name(), "ad.new_user");
    }

    #[test]
    fn debug_shows_the_payload_keys_not_the_values() {
        let s = build_script(
            "ad.reset_password@1",
            &json!({"identity": "jdoe", "password": "Hunter2!pass"}),
        );
        let text = format!("{:?}", parse_script(&s).unwrap());
        assert!(!text.contains("Hunter2!pass"), "{text}");
        assert!(
            text.contains("password") && text.contains("AdResetPassword"),
            "{text}"
        );
    }

    #[test]
    fn refuses_rather_than_guesses() {
        let p = json!({});
        assert_eq!(
            parse_script("Write-Host hi").unwrap_err(),
            ScriptError::NoHeader
        );
        assert!(matches!(
            parse_script(&build_script("ad.format_disk@1", &p)).unwrap_err(),
            ScriptError::UnknownOp(_)
        ));
        assert!(matches!(
            parse_script(&build_script("ad.new_user@2", &p)).unwrap_err(),
            ScriptError::UnknownVersion { version: 2, .. }
        ));
        assert!(matches!(
            parse_script(&build_script("ad.new_user", &p)).unwrap_err(),
            ScriptError::BadHeader(_)
        ));
        let two = format!(
            "{}# steward-op: ad.get_user@1\n",
            build_script("ad.new_user@1", &p)
        );
        assert_eq!(parse_script(&two).unwrap_err(), ScriptError::TwoHeaders);
        let late = format!(
            "{}# steward-op: ad.get_user@1\n$StewardPayload = 'e30='\n",
            "Write-Host x\n".repeat(12)
        );
        assert_eq!(parse_script(&late).unwrap_err(), ScriptError::NoHeader);
        let no_payload = "# steward-op: ad.get_user@1\nGet-ADUser x\n";
        assert_eq!(
            parse_script(no_payload).unwrap_err(),
            ScriptError::NoPayload
        );
        let bad64 = "# steward-op: ad.get_user@1\n$StewardPayload = '***'\n";
        assert_eq!(
            parse_script(bad64).unwrap_err(),
            ScriptError::PayloadNotBase64
        );
        let not_obj = format!(
            "# steward-op: ad.get_user@1\n$StewardPayload = '{}'\n",
            base64::engine::general_purpose::STANDARD.encode("[1]")
        );
        assert_eq!(
            parse_script(&not_obj).unwrap_err(),
            ScriptError::PayloadNotObject
        );
        let not_json = format!(
            "# steward-op: ad.get_user@1\n$StewardPayload = '{}'\n",
            base64::engine::general_purpose::STANDARD.encode("{nope")
        );
        assert!(matches!(
            parse_script(&not_json).unwrap_err(),
            ScriptError::PayloadNotJson(_)
        ));
        assert_eq!(ScriptError::NoHeader.category(), "script_refused");
        assert_eq!(ScriptError::NoPayload.category(), "invalid_payload");
    }
}
