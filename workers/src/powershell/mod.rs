//! PowerShell templates for Active Directory, Entra Connect and Exchange Server, run through the
//! MSP's RMM.
//!
//! # Why it is built this way
//! Ticket fields are untrusted text, and PowerShell has many quoting rules (it treats the Unicode
//! quotes ‘ ’ ‚ ‛ “ ” „ as quotes too). So no value is ever written into script text: every
//! script is **fixed text per op and version** (the `.ps1` files beside this module, embedded with
//! `include_str!`), and every value travels in **one payload**, base64 of UTF-8 JSON, written as
//! the single-quoted literal of the one `$StewardPayload = '…'` line. The base64 alphabet has no
//! quote, so the literal cannot be broken out of, and the text outside it is byte-for-byte the
//! same whatever the values (the injection corpus in the tests proves it).
//!
//! # Script layout (the sandbox's runner contract, `sandbox/src/runner.rs`)
//! ```text
//! # steward-op: <op>@<version>          header naming op and version
//! # …what it does, its cmdlets…
//! $StewardPayload = '<base64>'           the only line that varies
//! $StewardOp = { param($StewardPayload)  decodes the payload, checks before acting, returns one
//!     …                                  `STEWARD-RESULT {json}` line }
//! & $StewardOp $StewardPayload           direct, on the target
//! Invoke-Command -ComputerName <payload.server> -ScriptBlock $StewardOp -ArgumentList $StewardPayload
//!                                        or from a runner by PowerShell remoting
//! ```
//! Whatever happens (a cmdlet error, a WinRM failure, a decoding failure) the script prints
//! exactly one result line, which [`parse_result`] turns into an [`Outcome`]: changed, already in
//! the desired state, or failed with a reason and a category, plus the prior state its inverse
//! needs ([`inverse`]). Passwords are never echoed: the script scrubs them from every reason,
//! and [`parse_result`] scrubs again.

use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use steward_core::routing::{self, OnPrem, Target, Via};
use steward_schemas::Company;

/// The type of a payload field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (`null` allowed for optional fields: it clears the value).
    Text,
    /// A password: text that is never shown.
    Secret,
    /// `true` or `false` (also the text `true`/`false`, as the CLI gives it).
    Bool,
    /// A list of text (also comma-separated text).
    List,
    /// A map of names to values (also its JSON text).
    Map,
    /// One of a few words.
    Choice(&'static [&'static str]),
}

/// One payload field of a template.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its name in the payload.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whether it must be given.
    pub required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

use Kind::{Bool, Choice, List, Secret, Text};

const SERVER: Field = opt("server", Text);
const IDENTITY: Field = req("identity", Text);

/// How a template's change is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// Reads, and changes that need no undo.
    NotNeeded,
    /// Another template, with the prior state the forward run recorded.
    By(&'static str),
    /// Cannot be undone; the text says why.
    Irreversible(&'static str),
    /// Used only as another template's inverse.
    Internal,
}

/// A fixed PowerShell template.
#[derive(Debug)]
pub struct Template {
    /// The op it carries out (`ad.new_user`).
    pub op: &'static str,
    /// Its version: a change to the text is a new version.
    pub version: u32,
    /// What it does.
    pub summary: &'static str,
    /// The cmdlets it calls.
    pub cmdlets: &'static [&'static str],
    /// The machine it acts on.
    pub role: OnPrem,
    /// Its payload fields.
    pub fields: &'static [Field],
    /// How its change is undone.
    pub undo: Undo,
    body: &'static str,
}

impl Template {
    /// `op@version`, as the header and result line write it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.op, self.version)
    }

    /// The field named `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

macro_rules! t {
    ($op:literal, $summary:literal, [$($cmd:literal),*], $role:ident, [$($f:expr),* $(,)?], $undo:expr) => {
        Template {
            op: $op,
            version: 1,
            summary: $summary,
            cmdlets: &[$($cmd),*],
            role: OnPrem::$role,
            fields: &[$($f),*],
            undo: $undo,
            body: include_str!(concat!("templates/", $op, ".ps1")),
        }
    };
}

const AUTO_REPLY_STATES: &[&str] = &["Enabled", "Disabled", "Scheduled"];
const MAILBOX_TYPES: &[&str] = &["Regular", "Shared", "Room", "Equipment"];

/// Every template.
pub static TEMPLATES: &[Template] = &[
    t!(
        "ad.get_user",
        "read an AD user",
        ["Get-ADUser"],
        ActiveDirectory,
        [IDENTITY, SERVER],
        Undo::NotNeeded
    ),
    t!(
        "ad.new_user",
        "create an AD user (a half-created account, e.g. after a refused password, is removed again)",
        ["Get-ADUser", "New-ADUser", "Remove-ADUser"],
        ActiveDirectory,
        [
            req("sam_account_name", Text),
            req("user_principal_name", Text),
            req("path", Text),
            req("password", Secret),
            opt("name", Text),
            opt("given_name", Text),
            opt("surname", Text),
            opt("display_name", Text),
            opt("title", Text),
            opt("department", Text),
            opt("mail", Text),
            opt("manager", Text),
            opt("enabled", Bool),
            opt("change_password_at_logon", Bool),
            SERVER,
        ],
        Undo::By("ad.remove_user")
    ),
    t!(
        "ad.remove_user",
        "delete an AD user (with its child objects, such as ActiveSync device containers)",
        [
            "Get-ADUser",
            "Get-ADOptionalFeature",
            "Remove-ADUser",
            "Remove-ADObject"
        ],
        ActiveDirectory,
        [IDENTITY, SERVER],
        Undo::By("ad.restore_user")
    ),
    t!(
        "ad.restore_user",
        "restore a deleted AD user from the AD Recycle Bin",
        ["Get-ADObject", "Restore-ADObject"],
        ActiveDirectory,
        [req("object_guid", Text), SERVER],
        Undo::Internal
    ),
    t!(
        "ad.set_enabled",
        "enable or disable an AD account",
        ["Get-ADUser", "Enable-ADAccount", "Disable-ADAccount"],
        ActiveDirectory,
        [IDENTITY, req("enabled", Bool), SERVER],
        Undo::By("ad.set_enabled")
    ),
    t!(
        "ad.set_user",
        "change an AD user's attributes",
        ["Get-ADUser", "Set-ADUser"],
        ActiveDirectory,
        [
            IDENTITY,
            opt("attributes", Kind::Map),
            opt("replace", Kind::Map),
            SERVER
        ],
        Undo::By("ad.set_user")
    ),
    t!(
        "ad.set_manager",
        "set or clear an AD user's manager",
        ["Get-ADUser", "Set-ADUser"],
        ActiveDirectory,
        [IDENTITY, opt("manager", Text), SERVER],
        Undo::By("ad.set_manager")
    ),
    t!(
        "ad.reset_password",
        "reset an AD user's password",
        [
            "Get-ADUser",
            "Set-ADAccountPassword",
            "Set-ADUser",
            "Unlock-ADAccount"
        ],
        ActiveDirectory,
        [
            IDENTITY,
            req("password", Secret),
            opt("change_password_at_logon", Bool),
            opt("unlock", Bool),
            SERVER
        ],
        Undo::Irreversible(
            "the old password is not known, so it cannot be put back; issue a new one"
        )
    ),
    t!(
        "ad.unlock",
        "unlock a locked-out AD account",
        ["Get-ADUser", "Unlock-ADAccount"],
        ActiveDirectory,
        [IDENTITY, SERVER],
        Undo::NotNeeded
    ),
    t!(
        "ad.add_group_member",
        "add an AD user to a group",
        ["Get-ADGroup", "Get-ADUser", "Add-ADGroupMember"],
        ActiveDirectory,
        [req("group", Text), req("member", Text), SERVER],
        Undo::By("ad.remove_group_member")
    ),
    t!(
        "ad.remove_group_member",
        "remove an AD user from a group",
        ["Get-ADGroup", "Get-ADUser", "Remove-ADGroupMember"],
        ActiveDirectory,
        [req("group", Text), req("member", Text), SERVER],
        Undo::By("ad.add_group_member")
    ),
    t!(
        "ad.list_groups",
        "list an AD user's groups",
        ["Get-ADUser"],
        ActiveDirectory,
        [IDENTITY, SERVER],
        Undo::NotNeeded
    ),
    t!(
        "ad.copy_groups",
        "add an AD user to every group of a template user, except privileged (adminCount) groups",
        ["Get-ADUser", "Get-ADGroup", "Add-ADGroupMember"],
        ActiveDirectory,
        [req("template", Text), req("member", Text), SERVER],
        Undo::By("ad.remove_groups")
    ),
    t!(
        "ad.remove_groups",
        "remove an AD user from a list of groups",
        ["Get-ADUser", "Get-ADGroup", "Remove-ADGroupMember"],
        ActiveDirectory,
        [req("member", Text), req("groups", List), SERVER],
        Undo::Internal
    ),
    t!(
        "ad.move_object",
        "move an AD user to another OU",
        ["Get-ADUser", "Move-ADObject"],
        ActiveDirectory,
        [IDENTITY, req("target_path", Text), SERVER],
        Undo::By("ad.move_object")
    ),
    t!(
        "adsync.start_delta",
        "start an Entra Connect delta sync",
        ["Get-ADSyncScheduler", "Start-ADSyncSyncCycle"],
        EntraConnect,
        [SERVER],
        Undo::NotNeeded
    ),
    t!(
        "adsync.status",
        "read the Entra Connect scheduler",
        ["Get-ADSyncScheduler"],
        EntraConnect,
        [SERVER],
        Undo::NotNeeded
    ),
    t!(
        "exchange_server.get_recipient",
        "read an on-prem Exchange recipient",
        ["Get-Recipient"],
        ExchangeServer,
        [IDENTITY, SERVER],
        Undo::NotNeeded
    ),
    t!(
        "exchange_server.new_mailbox",
        "create an AD user with an on-prem mailbox, or a shared mailbox",
        ["Get-User", "New-Mailbox", "Get-Recipient"],
        ExchangeServer,
        [
            req("name", Text),
            req("user_principal_name", Text),
            opt("password", Secret),
            opt("shared", Bool),
            opt("alias", Text),
            opt("display_name", Text),
            opt("first_name", Text),
            opt("last_name", Text),
            opt("organizational_unit", Text),
            opt("database", Text),
            SERVER
        ],
        Undo::By("exchange_server.remove_mailbox")
    ),
    t!(
        "exchange_server.remove_mailbox",
        "delete an on-prem mailbox and its AD user",
        ["Get-User", "Remove-Mailbox"],
        ExchangeServer,
        [IDENTITY, SERVER],
        Undo::Irreversible(
            "Remove-Mailbox deletes the AD account; the disconnected mailbox can only be reconnected by hand (Connect-Mailbox) within the database's retention period"
        )
    ),
    t!(
        "exchange_server.enable_mailbox",
        "give an existing AD user an on-prem mailbox",
        ["Get-User", "Enable-Mailbox", "Get-Recipient"],
        ExchangeServer,
        [IDENTITY, opt("database", Text), opt("alias", Text), SERVER],
        Undo::By("exchange_server.disable_mailbox")
    ),
    t!(
        "exchange_server.disable_mailbox",
        "disconnect an AD user's on-prem mailbox",
        ["Get-User", "Disable-Mailbox"],
        ExchangeServer,
        [IDENTITY, SERVER],
        Undo::Internal
    ),
    t!(
        "exchange_server.enable_remote_mailbox",
        "mail-enable an AD user whose mailbox is in Exchange Online (hybrid)",
        ["Get-User", "Enable-RemoteMailbox", "Get-Recipient"],
        ExchangeServer,
        [
            IDENTITY,
            opt("remote_routing_address", Text),
            opt("shared", Bool),
            SERVER
        ],
        Undo::By("exchange_server.disable_remote_mailbox")
    ),
    t!(
        "exchange_server.disable_remote_mailbox",
        "remove a remote mailbox's mail attributes on-prem",
        ["Get-User", "Disable-RemoteMailbox"],
        ExchangeServer,
        [IDENTITY, SERVER],
        Undo::Internal
    ),
    t!(
        "exchange_server.set_remote_mailbox",
        "change a remote mailbox's type or address-list visibility on-prem",
        ["Get-RemoteMailbox", "Set-RemoteMailbox"],
        ExchangeServer,
        [
            IDENTITY,
            opt("type", Choice(MAILBOX_TYPES)),
            opt("hidden_from_address_lists_enabled", Bool),
            SERVER
        ],
        Undo::By("exchange_server.set_remote_mailbox")
    ),
    t!(
        "exchange_server.set_mailbox_type",
        "convert an on-prem mailbox (e.g. to shared)",
        ["Get-Mailbox", "Set-Mailbox"],
        ExchangeServer,
        [IDENTITY, req("type", Choice(MAILBOX_TYPES)), SERVER],
        Undo::By("exchange_server.set_mailbox_type")
    ),
    t!(
        "exchange_server.add_mailbox_permission",
        "grant Full Access to an on-prem mailbox",
        [
            "Get-Mailbox",
            "Get-Recipient",
            "Get-MailboxPermission",
            "Add-MailboxPermission"
        ],
        ExchangeServer,
        [
            IDENTITY,
            req("user", Text),
            opt("auto_mapping", Bool),
            SERVER
        ],
        Undo::By("exchange_server.remove_mailbox_permission")
    ),
    t!(
        "exchange_server.remove_mailbox_permission",
        "revoke Full Access to an on-prem mailbox",
        [
            "Get-Mailbox",
            "Get-Recipient",
            "Get-MailboxPermission",
            "Remove-MailboxPermission"
        ],
        ExchangeServer,
        [IDENTITY, req("user", Text), SERVER],
        Undo::By("exchange_server.add_mailbox_permission")
    ),
    t!(
        "exchange_server.add_send_as",
        "grant Send As on an on-prem mailbox",
        ["Get-Recipient", "Get-ADPermission", "Add-ADPermission"],
        ExchangeServer,
        [IDENTITY, req("user", Text), SERVER],
        Undo::By("exchange_server.remove_send_as")
    ),
    t!(
        "exchange_server.remove_send_as",
        "revoke Send As on an on-prem mailbox",
        ["Get-Recipient", "Get-ADPermission", "Remove-ADPermission"],
        ExchangeServer,
        [IDENTITY, req("user", Text), SERVER],
        Undo::By("exchange_server.add_send_as")
    ),
    t!(
        "exchange_server.set_send_on_behalf",
        "grant or revoke Send on Behalf on an on-prem mailbox",
        ["Get-Mailbox", "Get-Recipient", "Set-Mailbox"],
        ExchangeServer,
        [
            IDENTITY,
            req("user", Text),
            req("change", Choice(&["add", "remove"])),
            SERVER
        ],
        Undo::By("exchange_server.set_send_on_behalf")
    ),
    t!(
        "exchange_server.set_hidden_from_gal",
        "hide or show an on-prem mailbox in the address lists",
        ["Get-Mailbox", "Set-Mailbox"],
        ExchangeServer,
        [IDENTITY, req("hidden", Bool), SERVER],
        Undo::By("exchange_server.set_hidden_from_gal")
    ),
    t!(
        "exchange_server.set_forwarding",
        "set or clear an on-prem mailbox's forwarding",
        ["Get-Mailbox", "Get-Recipient", "Set-Mailbox"],
        ExchangeServer,
        [
            IDENTITY,
            opt("forwarding_address", Text),
            opt("forwarding_smtp_address", Text),
            opt("deliver_to_mailbox_and_forward", Bool),
            SERVER
        ],
        Undo::By("exchange_server.set_forwarding")
    ),
    t!(
        "exchange_server.set_auto_reply",
        "set an on-prem mailbox's automatic replies",
        [
            "Get-MailboxAutoReplyConfiguration",
            "Set-MailboxAutoReplyConfiguration"
        ],
        ExchangeServer,
        [
            IDENTITY,
            req("state", Choice(AUTO_REPLY_STATES)),
            opt("internal_message", Text),
            opt("external_message", Text),
            opt("external_audience", Choice(&["None", "Known", "All"])),
            opt("start_time", Text),
            opt("end_time", Text),
            SERVER
        ],
        Undo::By("exchange_server.set_auto_reply")
    ),
    t!(
        "exchange_server.remove_mobile_devices",
        "remove a mailbox's mobile device partnerships on-prem",
        ["Get-MobileDevice", "Remove-MobileDevice"],
        ExchangeServer,
        [IDENTITY, SERVER],
        Undo::Irreversible(
            "a removed mobile device partnership cannot be restored; the device re-syncs if it still may"
        )
    ),
];

/// Raw AD attributes `ad.set_user` may replace (the same list is in its template).
pub const AD_RAW_ATTRIBUTES: &[&str] = &[
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

/// Named AD attributes `ad.set_user` changes (the same list is in its template).
pub const AD_ATTRIBUTES: &[&str] = &[
    "given_name",
    "surname",
    "display_name",
    "title",
    "department",
    "company",
    "office",
    "office_phone",
    "mobile_phone",
    "employee_id",
    "description",
    "street_address",
    "city",
    "state",
    "postal_code",
];

/// The largest payload (its JSON) a script carries: Windows PowerShell 5.1's `ConvertFrom-Json`
/// refuses JSON much above 2 MB.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The template of `op`.
pub fn template(op: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.op == op)
}

/// Why a script cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No template carries out `op`.
    #[error("no PowerShell template for `{op}`; fix: use one of {known}")]
    UnknownTemplate {
        /// The op asked for.
        op: String,
        /// The templates.
        known: String,
    },
    /// `op` is a workflow op: it is routed to concrete actions first.
    #[error(
        "`{op}` is a workflow op; for company `{company}` it runs {actions}; fix: give `steward script` one of the rmm actions"
    )]
    AbstractOp {
        /// The op.
        op: String,
        /// The company.
        company: String,
        /// Where it runs.
        actions: String,
    },
    /// Routing refused the template's machine.
    #[error(transparent)]
    Route(#[from] routing::Error),
    /// An input the template does not take.
    #[error("`{op}` has no input `{field}`; fix: use {known}")]
    UnknownField {
        /// The template.
        op: &'static str,
        /// The input.
        field: String,
        /// Its inputs.
        known: String,
    },
    /// A required input is missing.
    #[error("`{op}` needs input `{field}`; fix: pass it (--input {field}=…)")]
    MissingField {
        /// The template.
        op: &'static str,
        /// The input.
        field: &'static str,
    },
    /// An input has the wrong type (its value is not repeated: it may be a secret).
    #[error("`{op}` input `{field}` must be {expected}")]
    BadField {
        /// The template.
        op: &'static str,
        /// The input.
        field: String,
        /// What it must be.
        expected: String,
    },
    /// The payload is too large.
    #[error(
        "`{op}`'s payload is {bytes} bytes, over the {max}-byte limit; fix: shorten the longest values"
    )]
    TooLarge {
        /// The template.
        op: &'static str,
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// `server` was given but routing decides it.
    #[error(
        "`{op}` input `server` is `{given}`, but company `{company}` reaches this machine as `{routed}`; fix: leave `server` out"
    )]
    ServerConflict {
        /// The template.
        op: &'static str,
        /// The company.
        company: String,
        /// What was given.
        given: String,
        /// What routing says.
        routed: String,
    },
}

/// A checked payload: the template's fields in its order. Its `Debug` shows only the keys (a
/// payload may carry a password).
#[derive(Clone, PartialEq)]
pub struct Payload(Map<String, Value>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Payload")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Payload {
    /// Checks `inputs` against `t`'s fields and builds its payload. Text given for a boolean,
    /// list or map field (as `--input k=v` gives it) is converted.
    pub fn build(t: &'static Template, inputs: &Map<String, Value>) -> Result<Self, Error> {
        for k in inputs.keys() {
            if t.field(k).is_none() {
                return Err(Error::UnknownField {
                    op: t.op,
                    field: k.clone(),
                    known: t
                        .fields
                        .iter()
                        .map(|f| f.name)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let mut out = Map::new();
        for f in t.fields {
            match inputs.get(f.name) {
                None if f.required => {
                    return Err(Error::MissingField {
                        op: t.op,
                        field: f.name,
                    });
                }
                None => {}
                Some(v) => {
                    out.insert(f.name.to_owned(), coerce(t, f, v)?);
                }
            }
        }
        check_semantics(t, &out)?;
        let p = Self(out);
        let bytes = p.json().len();
        if bytes > MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge {
                op: t.op,
                bytes,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(p)
    }

    /// The fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The JSON text.
    pub fn json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    /// The base64 of the JSON text: the script's `$StewardPayload` literal.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.json())
    }

    /// The secret values it carries (to scrub from output).
    pub fn secrets(&self, t: &Template) -> Vec<&str> {
        t.fields
            .iter()
            .filter(|f| f.kind == Secret)
            .filter_map(|f| self.0.get(f.name).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect()
    }
}

fn coerce(t: &'static Template, f: &Field, v: &Value) -> Result<Value, Error> {
    let bad = |expected: &str| Error::BadField {
        op: t.op,
        field: f.name.to_owned(),
        expected: expected.to_owned(),
    };
    match (f.kind, v) {
        (Text, Value::Null) if !f.required => Ok(Value::Null),
        (Text | Secret, Value::String(_)) => Ok(v.clone()),
        (Text, _) => Err(bad("text")),
        (Secret, _) => Err(bad("text (a password)")),
        (Bool, Value::Bool(_)) => Ok(v.clone()),
        (Bool, Value::String(s)) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
        (Bool, _) => Err(bad("true or false")),
        (List, Value::Array(items)) if items.iter().all(Value::is_string) => Ok(v.clone()),
        (List, Value::String(s)) => Ok(Value::Array(
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(|x| Value::String(x.to_owned()))
                .collect(),
        )),
        (List, _) => Err(bad("a list of text")),
        (Kind::Map, Value::Object(_)) => Ok(v.clone()),
        (Kind::Map, Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(m @ Value::Object(_)) => Ok(m),
            _ => Err(bad("a map (a JSON object)")),
        },
        (Kind::Map, _) => Err(bad("a map (a JSON object)")),
        (Choice(words), Value::String(s)) if words.contains(&s.as_str()) => Ok(v.clone()),
        (Choice(words), _) => Err(bad(&format!("one of {}", words.join(", ")))),
    }
}

/// The checks one field's type cannot express.
fn check_semantics(t: &'static Template, p: &Map<String, Value>) -> Result<(), Error> {
    let bad = |field: &str, expected: &str| Error::BadField {
        op: t.op,
        field: field.to_owned(),
        expected: expected.to_owned(),
    };
    match t.op {
        "ad.set_user" => {
            let mut any = false;
            for (section, allowed) in [
                ("attributes", AD_ATTRIBUTES),
                ("replace", AD_RAW_ATTRIBUTES),
            ] {
                if let Some(Value::Object(m)) = p.get(section) {
                    for (k, v) in m {
                        if !allowed.contains(&k.as_str()) {
                            return Err(bad(
                                &format!("{section}.{k}"),
                                &format!("one of {}", allowed.join(", ")),
                            ));
                        }
                        if !(v.is_null() || v.is_string() || v.is_boolean() || v.is_number()) {
                            return Err(bad(
                                &format!("{section}.{k}"),
                                "text, a number, true, false or null",
                            ));
                        }
                        any = true;
                    }
                }
            }
            if !any {
                return Err(bad(
                    "attributes",
                    "a map with at least one attribute (or give `replace`)",
                ));
            }
        }
        "exchange_server.new_mailbox" => {
            let shared = p.get("shared").and_then(Value::as_bool).unwrap_or(false);
            if !shared
                && p.get("password")
                    .is_none_or(|v| v.as_str().is_none_or(str::is_empty))
            {
                return Err(bad(
                    "password",
                    "given for a user mailbox (only a shared mailbox has none)",
                ));
            }
        }
        "ad.remove_groups"
            if p.get("groups")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty) =>
        {
            return Err(bad("groups", "a list of at least one group"));
        }
        _ => {}
    }
    Ok(())
}

/// Whether the script runs on its target, or on a runner that reaches it by remoting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `& $StewardOp $StewardPayload` on the target.
    Direct,
    /// `Invoke-Command -ComputerName <payload.server> -ScriptBlock $StewardOp -ArgumentList $StewardPayload`.
    Remote,
}

const PRELUDE: &str = include_str!("parts/prelude.ps1");
const AD_HELPERS: &str = include_str!("parts/ad.ps1");
const EXCHANGE_HELPERS: &str = include_str!("parts/exchange.ps1");
const ADSYNC_HELPERS: &str = include_str!("parts/adsync.ps1");
const RUN_DIRECT: &str = include_str!("parts/direct.ps1");
const RUN_REMOTE: &str = include_str!("parts/remote.ps1");

/// The line prefix of the one result line.
pub const RESULT_PREFIX: &str = "STEWARD-RESULT ";

fn indent(out: &mut String, text: &str, spaces: usize) {
    for line in text.lines() {
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', spaces));
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// The script with the payload literal `encoded`. `encoded` must be base64 (the only text that
/// varies); [`Payload::encode`] makes it.
pub fn render(t: &Template, mode: Mode, encoded: &str) -> String {
    debug_assert!(
        encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='),
        "the payload literal is base64"
    );
    let id = t.id();
    let mut s = String::with_capacity(16 * 1024 + encoded.len());
    s.push_str(&format!("# steward-op: {id}\n"));
    s.push_str(&format!(
        "# Steward PowerShell template {}, version {}: {}.\n",
        t.op, t.version, t.summary
    ));
    s.push_str(&format!("# Cmdlets: {}.\n", t.cmdlets.join(", ")));
    s.push_str(match mode {
        Mode::Direct => "# Runs directly on the target machine.\n",
        Mode::Remote => {
            "# Runs on a runner and reaches the target (payload field `server`) with Invoke-Command.\n"
        }
    });
    s.push_str("# Every value comes from $StewardPayload (base64 of UTF-8 JSON) decoded below; none is part of this text.\n");
    s.push_str("#Requires -Version 5.1\n");
    s.push_str("$ErrorActionPreference = 'Stop'\n");
    s.push_str(&format!("$StewardTemplate = '{id}'\n"));
    s.push_str(&format!("$StewardPayload = '{encoded}'\n"));
    s.push_str("$StewardOp = {\n");
    s.push_str("    param([string]$StewardPayload)\n");
    s.push_str(&format!("    $StewardTemplate = '{id}'\n"));
    indent(&mut s, PRELUDE, 4);
    s.push_str("    try {\n");
    indent(
        &mut s,
        match t.role {
            OnPrem::ActiveDirectory => AD_HELPERS,
            OnPrem::EntraConnect => ADSYNC_HELPERS,
            OnPrem::ExchangeServer => EXCHANGE_HELPERS,
        },
        8,
    );
    indent(&mut s, t.body, 8);
    s.push_str("    } catch {\n");
    s.push_str("        return (Out-StewardResult -Status 'failed' -Prior $StewardPrior -Reason ([string]$_.Exception.Message) -Category (Get-StewardCategory $_))\n");
    s.push_str("    }\n");
    s.push_str("}\n");
    s.push_str(match mode {
        Mode::Direct => RUN_DIRECT,
        Mode::Remote => RUN_REMOTE,
    });
    s
}

/// The script's fixed text: [`render`] with an empty payload literal. Every script of `t` in
/// `mode` is this text with the payload's base64 between the quotes of its
/// `$StewardPayload = ''` line.
pub fn skeleton(t: &Template, mode: Mode) -> String {
    render(t, mode, "")
}

/// The mode routing gives a target.
pub fn mode_of(target: &Target) -> Mode {
    match target {
        Target::Rmm {
            via: Via::Runner { .. },
            ..
        } => Mode::Remote,
        Target::Rmm {
            via: Via::Direct, ..
        }
        | Target::Graph
        | Target::ExchangeOnline
        | Target::Steward => Mode::Direct,
    }
}

/// A script ready to send: its text, the RMM device to send it to, and how it runs.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The template.
    pub template: &'static Template,
    /// Where routing placed it.
    pub target: Target,
    /// Direct or remote.
    pub mode: Mode,
    /// The checked payload.
    pub payload: Payload,
}

impl Prepared {
    /// The exact script text.
    pub fn text(&self) -> String {
        render(self.template, self.mode, &self.payload.encode())
    }

    /// [`Prepared::text`] with every secret input replaced by `[redacted]` before encoding: the
    /// text a terminal may show. Apart from the payload literal it is the same text.
    pub fn redacted_text(&self) -> String {
        let mut payload = self.payload.clone();
        for f in self.template.fields.iter().filter(|f| f.kind == Secret) {
            if let Some(v) = payload.0.get_mut(f.name) {
                *v = Value::String(steward_core::history::REDACTED.to_owned());
            }
        }
        render(self.template, self.mode, &payload.encode())
    }
}

/// Checks `inputs` for template `op` and places it for `company`: when routing says the target
/// is reached from a runner, the payload's `server` is the target's name.
pub fn prepare(
    op: &str,
    company: &Company,
    inputs: &Map<String, Value>,
) -> Result<Prepared, Error> {
    let Some(t) = template(op) else {
        if routing::ROUTED_OPS.contains(&op) {
            let actions = match routing::route(company, op) {
                Ok(r) if r.actions.is_empty() => r.note.unwrap_or_else(|| "nothing".to_owned()),
                Ok(r) => r
                    .actions
                    .iter()
                    .map(|a| match &a.target {
                        Target::Rmm { host, via } => format!("{} on {host} ({via})", a.action),
                        other => format!("{} via {}", a.action, other.system()),
                    })
                    .collect::<Vec<_>>()
                    .join(", then "),
                Err(e) => e.to_string(),
            };
            return Err(Error::AbstractOp {
                op: op.to_owned(),
                company: company.id.to_string(),
                actions,
            });
        }
        return Err(Error::UnknownTemplate {
            op: op.to_owned(),
            known: TEMPLATES
                .iter()
                .map(|t| t.op)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let target = routing::placement(company, op, t.role)?;
    let mode = mode_of(&target);
    let mut inputs = inputs.clone();
    if let (Mode::Remote, Target::Rmm { host, .. }) = (mode, &target) {
        match inputs.get("server") {
            Some(Value::String(given)) if !routing::same_host(given, host) => {
                return Err(Error::ServerConflict {
                    op: t.op,
                    company: company.id.to_string(),
                    given: given.clone(),
                    routed: host.clone(),
                });
            }
            _ => {
                inputs.insert("server".to_owned(), Value::String(host.clone()));
            }
        }
    }
    let payload = Payload::build(t, &inputs)?;
    Ok(Prepared {
        template: t,
        target,
        mode,
        payload,
    })
}

/// The exact script text that would be sent for template `op`, company `company` and `inputs`
/// (for `steward script`).
pub fn script(op: &str, company: &Company, inputs: &Map<String, Value>) -> Result<String, Error> {
    Ok(prepare(op, company, inputs)?.text())
}

/// [`script`] with every secret input replaced by `[redacted]` before encoding: the text a
/// terminal may show. Apart from the payload literal it is the same text.
pub fn script_redacted(
    op: &str,
    company: &Company,
    inputs: &Map<String, Value>,
) -> Result<String, Error> {
    Ok(prepare(op, company, inputs)?.redacted_text())
}

/// What a script reported.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It made the change.
    Changed {
        /// What it returns.
        result: Value,
        /// The state before, for the inverse.
        prior: Value,
    },
    /// Nothing to do: already in the desired state (or a read).
    Unchanged {
        /// What it returns.
        result: Value,
        /// The state it saw.
        prior: Value,
    },
    /// It failed.
    Failed {
        /// Why, secrets scrubbed.
        reason: String,
        /// A category (`not_found`, `already_exists`, `sync_busy`, `winrm_unreachable`, …).
        category: String,
        /// What it had changed before failing, if anything.
        prior: Value,
    },
}

/// Why a script's output could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    /// No result line: the script did not run to its end (or another script ran).
    #[error("the script printed no `STEWARD-RESULT` line")]
    Missing,
    /// More than one result line.
    #[error("the script printed {0} `STEWARD-RESULT` lines; it prints exactly one")]
    Several(usize),
    /// The line is not the expected JSON.
    #[error("the `STEWARD-RESULT` line is not valid: {0}")]
    Invalid(String),
    /// It came from another template.
    #[error("the result is from template `{got}`, not `{expected}`")]
    WrongTemplate {
        /// The template that ran.
        expected: String,
        /// The template named in the result.
        got: String,
    },
}

/// Reads the one result line of `t`'s script from `stdout`. Secret values of `payload` are
/// scrubbed from what it returns.
pub fn parse_result(t: &Template, stdout: &str, payload: &Payload) -> Result<Outcome, ResultError> {
    let lines: Vec<&str> = stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter_map(|l| l.strip_prefix(RESULT_PREFIX))
        .collect();
    let line = match lines.as_slice() {
        [] => return Err(ResultError::Missing),
        [one] => *one,
        many => return Err(ResultError::Several(many.len())),
    };
    let mut v: Value =
        serde_json::from_str(line).map_err(|e| ResultError::Invalid(e.to_string()))?;
    let secrets = payload.secrets(t);
    scrub(&mut v, &secrets);
    let Value::Object(m) = v else {
        return Err(ResultError::Invalid("not a JSON object".to_owned()));
    };
    let got = m.get("template").and_then(Value::as_str).unwrap_or("");
    if got != t.id() {
        return Err(ResultError::WrongTemplate {
            expected: t.id(),
            got: got.to_owned(),
        });
    }
    let field = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
    let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match m.get("status").and_then(Value::as_str) {
        Some("changed") => Ok(Outcome::Changed {
            result: field("result"),
            prior: field("prior"),
        }),
        Some("unchanged") => Ok(Outcome::Unchanged {
            result: field("result"),
            prior: field("prior"),
        }),
        Some("failed") => Ok(Outcome::Failed {
            reason: match text("reason") {
                r if r.is_empty() => "the script failed without a reason".to_owned(),
                r => r,
            },
            category: match text("category") {
                c if c.is_empty() => "error".to_owned(),
                c => c,
            },
            prior: field("prior"),
        }),
        other => Err(ResultError::Invalid(format!(
            "status {}: expected changed, unchanged or failed",
            other.map_or_else(|| "missing".to_owned(), |s| format!("`{s}`"))
        ))),
    }
}

fn scrub(v: &mut Value, secrets: &[&str]) {
    match v {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret) {
                    *s = s.replace(secret, steward_core::history::REDACTED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| scrub(i, secrets)),
        Value::Object(m) => m.values_mut().for_each(|i| scrub(i, secrets)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// How to undo one run of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Inverse {
    /// Nothing to undo (nothing changed, or a read).
    Nothing,
    /// Run this template with this payload.
    Run {
        /// The template.
        op: &'static str,
        /// Its inputs.
        inputs: Map<String, Value>,
    },
    /// The change cannot be undone.
    Irreversible(String),
}

/// How to undo what `t` reported with `outcome`, given the payload it ran with.
///
/// An `Unchanged` outcome has nothing to undo — including `ad.new_user` finding the account
/// already there: it may be someone else's, and rollback must never delete what it did not see
/// itself create. A `Failed` outcome undoes what the prior state says was done before the
/// failure (`ad.copy_groups`' groups added so far).
pub fn inverse(t: &Template, payload: &Payload, outcome: &Outcome) -> Inverse {
    let (result, prior) = match outcome {
        Outcome::Changed { result, prior } => (result, prior),
        Outcome::Failed { prior, .. } if t.op == "ad.copy_groups" => (&Value::Null, prior),
        Outcome::Unchanged { .. } | Outcome::Failed { .. } => return Inverse::Nothing,
    };
    let p = payload.fields();
    let get = |k: &str| p.get(k).cloned().unwrap_or(Value::Null);
    let run = |op: &'static str, fields: Value| {
        let mut inputs = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        if let Some(s) = p.get("server") {
            inputs.insert("server".to_owned(), s.clone());
        }
        Inverse::Run { op, inputs }
    };
    match t.undo {
        Undo::NotNeeded | Undo::Internal => return Inverse::Nothing,
        Undo::Irreversible(why) => return Inverse::Irreversible(why.to_owned()),
        Undo::By(_) => {}
    }
    match t.op {
        "ad.new_user" => run("ad.remove_user", json!({"identity": result["object_guid"]})),
        "ad.remove_user" => {
            if prior["recycle_bin"] == Value::Bool(true) {
                run(
                    "ad.restore_user",
                    json!({"object_guid": prior["user"]["object_guid"]}),
                )
            } else {
                Inverse::Irreversible(
                    "the AD Recycle Bin is not enabled, so the deleted account cannot be restored"
                        .to_owned(),
                )
            }
        }
        "ad.set_enabled" => run(
            "ad.set_enabled",
            json!({"identity": get("identity"), "enabled": prior["enabled"]}),
        ),
        "ad.set_user" => {
            let mut f = json!({"identity": get("identity")});
            for section in ["attributes", "replace"] {
                if let Some(m) = prior[section].as_object()
                    && !m.is_empty()
                {
                    f[section] = Value::Object(m.clone());
                }
            }
            run("ad.set_user", f)
        }
        "ad.set_manager" => run(
            "ad.set_manager",
            json!({"identity": get("identity"), "manager": prior["manager"]}),
        ),
        "ad.add_group_member" => run(
            "ad.remove_group_member",
            json!({"group": get("group"), "member": get("member")}),
        ),
        "ad.remove_group_member" => run(
            "ad.add_group_member",
            json!({"group": get("group"), "member": get("member")}),
        ),
        "ad.copy_groups" => match prior["added"].as_array() {
            Some(a) if !a.is_empty() => run(
                "ad.remove_groups",
                json!({"member": get("member"), "groups": a}),
            ),
            _ => Inverse::Nothing,
        },
        "ad.move_object" => run(
            "ad.move_object",
            json!({"identity": result["object_guid"], "target_path": prior["previous_parent"]}),
        ),
        "exchange_server.new_mailbox" => run(
            "exchange_server.remove_mailbox",
            json!({"identity": get("user_principal_name")}),
        ),
        "exchange_server.enable_mailbox" => run(
            "exchange_server.disable_mailbox",
            json!({"identity": get("identity")}),
        ),
        "exchange_server.enable_remote_mailbox" => run(
            "exchange_server.disable_remote_mailbox",
            json!({"identity": get("identity")}),
        ),
        "exchange_server.set_remote_mailbox" => {
            let mut f = json!({"identity": get("identity")});
            for k in ["type", "hidden_from_address_lists_enabled"] {
                if !prior[k].is_null() {
                    f[k] = prior[k].clone();
                }
            }
            run("exchange_server.set_remote_mailbox", f)
        }
        "exchange_server.set_mailbox_type" => run(
            "exchange_server.set_mailbox_type",
            json!({"identity": get("identity"), "type": prior["type"]}),
        ),
        "exchange_server.add_mailbox_permission" => run(
            "exchange_server.remove_mailbox_permission",
            json!({"identity": get("identity"), "user": get("user")}),
        ),
        "exchange_server.remove_mailbox_permission" => run(
            "exchange_server.add_mailbox_permission",
            json!({"identity": get("identity"), "user": get("user")}),
        ),
        "exchange_server.add_send_as" => run(
            "exchange_server.remove_send_as",
            json!({"identity": get("identity"), "user": get("user")}),
        ),
        "exchange_server.remove_send_as" => run(
            "exchange_server.add_send_as",
            json!({"identity": get("identity"), "user": get("user")}),
        ),
        "exchange_server.set_send_on_behalf" => run(
            "exchange_server.set_send_on_behalf",
            json!({"identity": get("identity"), "user": get("user"),
                   "change": if get("change") == json!("add") { "remove" } else { "add" }}),
        ),
        "exchange_server.set_hidden_from_gal" => run(
            "exchange_server.set_hidden_from_gal",
            json!({"identity": get("identity"), "hidden": prior["hidden"]}),
        ),
        "exchange_server.set_forwarding" => run(
            "exchange_server.set_forwarding",
            json!({"identity": get("identity"),
                   "forwarding_address": prior["forwarding_address"],
                   "forwarding_smtp_address": prior["forwarding_smtp_address"],
                   "deliver_to_mailbox_and_forward": prior["deliver_to_mailbox_and_forward"]}),
        ),
        "exchange_server.set_auto_reply" => {
            let mut f = json!({"identity": get("identity"), "state": prior["state"]});
            for k in [
                "internal_message",
                "external_message",
                "external_audience",
                "start_time",
                "end_time",
            ] {
                if prior[k].as_str().is_some_and(|s| !s.is_empty()) {
                    f[k] = prior[k].clone();
                }
            }
            run("exchange_server.set_auto_reply", f)
        }
        other => Inverse::Irreversible(format!("no inverse is defined for `{other}`")),
    }
}

#[cfg(test)]
mod tests;
