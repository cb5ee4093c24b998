//! The simulated world: every company's Entra tenant, Exchange Online organisation, optional
//! on-prem AD forest, Entra Connect server, Exchange Server and RMM site, plus the MSP-level
//! Datto and Autotask accounts.
//!
//! Hybrid behaviour is modelled the way it happens for real, and lazily: AD objects carry an
//! update sequence number (USN); a sync cycle snapshots the forest's USN when it starts and, once
//! the sandbox clock passes its end, exports every object changed up to that USN to Entra.
//! Exchange Online recipients get a `provisioned_at` time, so a new user's mailbox stays
//! invisible for a while after it becomes due. [`World::settle`] applies whatever the clock has
//! made due, and every request calls it before looking at the world, so there are no timers.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::fixture::{
    self, AdGroupCategoryFx, ExchangeModeFx, Fixture, GroupKindFx, MailboxKindFx,
};
use crate::ids;
use crate::secret::Secret;

/// Built-in Entra role templates the sandbox knows (id, display name).
pub(crate) const ROLE_DEFINITIONS: &[(&str, &str)] = &[
    (
        "62e90394-69f5-4237-9190-012177145e10",
        "Global Administrator",
    ),
    ("fe930be7-5e62-47db-91af-98c3a49a38b1", "User Administrator"),
    (
        "729827e3-9c14-49f7-bb1b-9608f156bbb8",
        "Helpdesk Administrator",
    ),
    (
        "29232cdf-9323-42fd-ade2-1d097af3e4de",
        "Exchange Administrator",
    ),
    (
        "4d6ac14f-3453-41d0-bef9-a3e0c569773a",
        "License Administrator",
    ),
    (
        "c4e39bd9-1100-46d3-8c65-fb160da0071f",
        "Authentication Administrator",
    ),
    (
        "3a2c62db-5318-420d-8d74-23affee5d9d5",
        "Intune Administrator",
    ),
    (
        "e8611ab8-c189-46e8-94e1-60213ab1f814",
        "Privileged Role Administrator",
    ),
    ("f2ef992c-3afb-46b9-b7cf-a126ee74c451", "Global Reader"),
];

/// Deleted users stay restorable this long (Entra's soft-delete window).
pub(crate) const RESTORE_WINDOW_DAYS: i64 = 30;

#[derive(Debug, Serialize)]
pub(crate) struct World {
    #[serde(skip)]
    pub(crate) seed: u64,
    #[serde(skip)]
    counter: u64,
    pub(crate) partner: Partner,
    pub(crate) companies: Vec<Company>,
    pub(crate) datto: Option<DattoAccount>,
    pub(crate) autotask: Option<AutotaskAccount>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Partner {
    pub(crate) name: Option<String>,
    pub(crate) apps: Vec<App>,
}

#[derive(Debug, Serialize)]
pub(crate) struct App {
    pub(crate) client_id: String,
    pub(crate) client_secret: Secret,
    pub(crate) display_name: String,
    pub(crate) redirect_uris: Vec<String>,
    /// The Graph application permissions the registration asks for.
    pub(crate) application_permissions: Vec<String>,
    /// The Graph delegated permissions the registration asks for.
    pub(crate) delegated_permissions: Vec<String>,
    /// Certificates uploaded to the registration.
    pub(crate) certificates: Vec<crate::assertion::AppCertificate>,
}

/// An app's consent in a tenant: what the tenant's administrator granted it on Graph.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Consent {
    pub(crate) client_id: String,
    /// Application permissions (the `roles` of app-only tokens).
    pub(crate) roles: Vec<String>,
    /// Delegated permissions (the `scp` of delegated tokens).
    pub(crate) scopes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Company {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) autotask_company_id: Option<i64>,
    pub(crate) tenant: Tenant,
    pub(crate) exchange_online: Exo,
    pub(crate) ad: Option<AdForest>,
    pub(crate) entra_connect: Option<EntraConnect>,
    pub(crate) exchange_server: Option<ExchangeServer>,
    pub(crate) rmm_site: Option<Site>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Tenant {
    pub(crate) id: String,
    pub(crate) initial_domain: String,
    pub(crate) domains: Vec<String>,
    pub(crate) consented_apps: Vec<Consent>,
    pub(crate) mailbox_provisioning_delay_seconds: i64,
    pub(crate) skus: Vec<Sku>,
    pub(crate) users: Vec<User>,
    pub(crate) deleted_users: Vec<User>,
    pub(crate) groups: Vec<Group>,
    pub(crate) managed_devices: Vec<ManagedDevice>,
    pub(crate) role_assignments: Vec<RoleAssignment>,
    /// Long-running operations of `resetPassword` (id, user id, created).
    pub(crate) password_operations: Vec<(String, String, DateTime<Utc>)>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Sku {
    pub(crate) sku_id: String,
    pub(crate) part_number: String,
    pub(crate) seats: u32,
    pub(crate) exchange: bool,
    pub(crate) service_plans: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AssignedLicense {
    pub(crate) sku_id: String,
    pub(crate) disabled_plans: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Password {
    pub(crate) value: Secret,
    pub(crate) force_change_next_sign_in: bool,
    pub(crate) set_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuthMethod {
    pub(crate) id: String,
    pub(crate) kind: String,
    pub(crate) display_name: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OnPremLink {
    pub(crate) sam_account_name: String,
    pub(crate) immutable_id: String,
    pub(crate) distinguished_name: String,
    pub(crate) domain_name: String,
    pub(crate) netbios_name: String,
    pub(crate) user_principal_name: String,
    pub(crate) last_sync: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct User {
    pub(crate) id: String,
    /// Plain Graph properties (`userPrincipalName`, `displayName`, `accountEnabled`, ...), kept in
    /// Graph's own names so reads and writes need no mapping table.
    pub(crate) props: Map<String, Value>,
    pub(crate) password: Option<Password>,
    pub(crate) licenses: Vec<AssignedLicense>,
    pub(crate) manager: Option<String>,
    pub(crate) auth_methods: Vec<AuthMethod>,
    pub(crate) on_prem: Option<OnPremLink>,
    /// Set when the cloud object was matched to an AD object and is mastered on-prem.
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) deleted_at: Option<DateTime<Utc>>,
    pub(crate) sessions_revoked_at: Option<DateTime<Utc>>,
    /// Which Exchange Online mailbox this user should have (None: none).
    pub(crate) mailbox_wanted: Option<MailboxKind>,
}

impl User {
    pub(crate) fn upn(&self) -> &str {
        self.props
            .get("userPrincipalName")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub(crate) fn str_prop(&self, name: &str) -> Option<&str> {
        self.props.get(name).and_then(Value::as_str)
    }

    pub(crate) fn synced(&self) -> bool {
        self.on_prem.is_some()
    }

    pub(crate) fn mail_nickname(&self) -> String {
        self.str_prop("mailNickname")
            .map(str::to_owned)
            .unwrap_or_else(|| self.upn().split('@').next().unwrap_or_default().to_owned())
    }

    /// The primary SMTP address Exchange gives the user.
    pub(crate) fn primary_smtp(&self) -> String {
        self.str_prop("mail")
            .map(str::to_owned)
            .unwrap_or_else(|| self.upn().to_owned())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GroupKind {
    Security,
    M365,
    Distribution,
    MailSecurity,
    DynamicSecurity,
}

impl GroupKind {
    pub(crate) fn mail_enabled(self) -> bool {
        matches!(self, Self::M365 | Self::Distribution | Self::MailSecurity)
    }

    pub(crate) fn security_enabled(self) -> bool {
        matches!(
            self,
            Self::Security | Self::MailSecurity | Self::DynamicSecurity
        )
    }

    pub(crate) fn group_types(self) -> Vec<&'static str> {
        match self {
            Self::M365 => vec!["Unified"],
            Self::DynamicSecurity => vec!["DynamicMembership"],
            Self::Security | Self::Distribution | Self::MailSecurity => vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupOnPrem {
    pub(crate) sam_account_name: String,
    pub(crate) object_guid: String,
    pub(crate) last_sync: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Group {
    pub(crate) id: String,
    pub(crate) display_name: String,
    pub(crate) mail_nickname: String,
    pub(crate) description: Option<String>,
    pub(crate) kind: GroupKind,
    pub(crate) membership_rule: Option<String>,
    pub(crate) members: Vec<String>,
    pub(crate) on_prem: Option<GroupOnPrem>,
    pub(crate) mail: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ManagedDevice {
    pub(crate) id: String,
    pub(crate) device_name: String,
    pub(crate) user_id: String,
    pub(crate) operating_system: String,
    pub(crate) os_version: String,
    pub(crate) serial_number: String,
    pub(crate) compliance_state: String,
    /// `managed`, `retirePending` or `wipePending` (Intune's managementState values).
    pub(crate) management_state: String,
    pub(crate) azure_ad_device_id: String,
    pub(crate) enrolled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoleAssignment {
    pub(crate) id: String,
    pub(crate) principal_id: String,
    pub(crate) role_definition_id: String,
    pub(crate) directory_scope_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum MailboxKind {
    UserMailbox,
    SharedMailbox,
}

impl MailboxKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::UserMailbox => "UserMailbox",
            Self::SharedMailbox => "SharedMailbox",
        }
    }
}

impl From<MailboxKindFx> for MailboxKind {
    fn from(k: MailboxKindFx) -> Self {
        match k {
            MailboxKindFx::User => Self::UserMailbox,
            MailboxKindFx::Shared => Self::SharedMailbox,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Exo {
    pub(crate) mailboxes: Vec<Mailbox>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FullAccess {
    pub(crate) user_id: String,
    pub(crate) automapping: bool,
    pub(crate) inheritance_type: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AutoReply {
    pub(crate) state: String,
    pub(crate) internal_message: Option<String>,
    pub(crate) external_message: Option<String>,
    pub(crate) external_audience: String,
    pub(crate) start_time: Option<String>,
    pub(crate) end_time: Option<String>,
}

impl Default for AutoReply {
    fn default() -> Self {
        Self {
            state: "Disabled".to_owned(),
            internal_message: None,
            external_message: None,
            external_audience: "All".to_owned(),
            start_time: None,
            end_time: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct MobileDevice {
    pub(crate) guid: String,
    pub(crate) friendly_name: String,
    pub(crate) device_model: String,
    pub(crate) device_os: String,
    pub(crate) first_sync_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Mailbox {
    pub(crate) guid: String,
    pub(crate) user_id: String,
    pub(crate) kind: MailboxKind,
    /// The recipient exists in Exchange Online from this instant on.
    pub(crate) provisioned_at: DateTime<Utc>,
    pub(crate) hidden_from_address_lists: bool,
    pub(crate) forwarding_address: Option<String>,
    pub(crate) forwarding_smtp_address: Option<String>,
    pub(crate) deliver_to_mailbox_and_forward: bool,
    pub(crate) grant_send_on_behalf_to: Vec<String>,
    pub(crate) full_access: Vec<FullAccess>,
    pub(crate) send_as: Vec<String>,
    pub(crate) auto_reply: AutoReply,
    pub(crate) mobile_devices: Vec<MobileDevice>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AdForest {
    pub(crate) domain: String,
    pub(crate) netbios: String,
    pub(crate) domain_controller: String,
    pub(crate) upn_suffixes: Vec<String>,
    pub(crate) min_password_length: usize,
    /// The forest's highest committed update sequence number.
    pub(crate) usn: u64,
    pub(crate) ous: Vec<String>,
    pub(crate) users: Vec<AdUser>,
    pub(crate) groups: Vec<AdGroup>,
    /// WinRM from runners to the domain controller works (admin fault `winrm_unreachable`).
    pub(crate) winrm_reachable: bool,
}

impl AdForest {
    pub(crate) fn base_dn(&self) -> String {
        domain_dn(&self.domain)
    }

    pub(crate) fn bump(&mut self) -> u64 {
        self.usn += 1;
        self.usn
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RemoteMailbox {
    pub(crate) kind: MailboxKind,
    pub(crate) remote_routing_address: String,
    pub(crate) hidden_from_address_lists: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OnPremMailbox {
    pub(crate) database: String,
    pub(crate) hidden_from_address_lists: bool,
    /// `Set-Mailbox -Type`: a user or a shared mailbox.
    pub(crate) kind: MailboxKind,
    /// Full Access holders (objectGUIDs), `Add-MailboxPermission`.
    pub(crate) full_access: Vec<String>,
    /// Send As holders (objectGUIDs), an AD extended right: `Add-ADPermission`.
    pub(crate) send_as: Vec<String>,
    /// `GrantSendOnBehalfTo` (objectGUIDs).
    pub(crate) send_on_behalf: Vec<String>,
    /// `ForwardingAddress`: a recipient's objectGUID.
    pub(crate) forwarding_address: Option<String>,
    pub(crate) forwarding_smtp_address: Option<String>,
    pub(crate) deliver_to_mailbox_and_forward: bool,
    pub(crate) auto_reply: AutoReply,
    pub(crate) mobile_devices: Vec<MobileDevice>,
}

impl OnPremMailbox {
    /// A new user mailbox in `database`, as `Enable-Mailbox`/`New-Mailbox` leave it.
    pub(crate) fn new(database: String) -> Self {
        Self {
            database,
            hidden_from_address_lists: false,
            kind: MailboxKind::UserMailbox,
            full_access: vec![],
            send_as: vec![],
            send_on_behalf: vec![],
            forwarding_address: None,
            forwarding_smtp_address: None,
            deliver_to_mailbox_and_forward: false,
            auto_reply: AutoReply::default(),
            mobile_devices: vec![],
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AdUser {
    pub(crate) object_guid: String,
    #[serde(skip)]
    pub(crate) guid_bytes: [u8; 16],
    pub(crate) sam_account_name: String,
    pub(crate) user_principal_name: String,
    pub(crate) name: String,
    pub(crate) parent: String,
    pub(crate) given_name: Option<String>,
    pub(crate) surname: Option<String>,
    pub(crate) display_name: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) password: Option<Password>,
    pub(crate) title: Option<String>,
    pub(crate) department: Option<String>,
    pub(crate) mail: Option<String>,
    pub(crate) manager: Option<String>,
    pub(crate) usn_changed: u64,
    pub(crate) remote_mailbox: Option<RemoteMailbox>,
    pub(crate) mailbox: Option<OnPremMailbox>,
    pub(crate) deleted: bool,
    /// Locked out by bad passwords (`Unlock-ADAccount` clears it; the admin API sets it).
    pub(crate) locked_out: bool,
    /// Other LDAP attributes `Set-ADUser` changes (company, l, msExchHideFromAddressLists, …).
    pub(crate) attributes: BTreeMap<String, Value>,
    pub(crate) usage_location: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
}

impl AdUser {
    pub(crate) fn dn(&self) -> String {
        format!("CN={},{}", self.name, self.parent)
    }

    pub(crate) fn immutable_id(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.guid_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdGroupCategory {
    Security,
    Distribution,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AdGroup {
    pub(crate) object_guid: String,
    pub(crate) name: String,
    pub(crate) parent: String,
    pub(crate) category: AdGroupCategory,
    pub(crate) members: Vec<String>,
    pub(crate) usn_changed: u64,
    pub(crate) synced: bool,
}

impl AdGroup {
    pub(crate) fn dn(&self) -> String {
        format!("CN={},{}", self.name, self.parent)
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SyncCycle {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ends_at: DateTime<Utc>,
    pub(crate) start_usn: u64,
    pub(crate) trigger: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SyncResult {
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) trigger: String,
    pub(crate) objects_exported: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct EntraConnect {
    pub(crate) server: String,
    pub(crate) sync_duration_seconds: i64,
    pub(crate) interval_minutes: i64,
    pub(crate) scheduler_enabled: bool,
    pub(crate) cycle: Option<SyncCycle>,
    pub(crate) last_exported_usn: u64,
    pub(crate) next_scheduled_at: DateTime<Utc>,
    pub(crate) last_cycle: Option<SyncResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExchangeMode {
    Hybrid,
    OnPrem,
}

#[derive(Debug, Serialize)]
pub(crate) struct ExchangeServer {
    pub(crate) server: String,
    pub(crate) mode: ExchangeMode,
    pub(crate) databases: Vec<String>,
    pub(crate) double_hop_configured: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct Site {
    pub(crate) uid: String,
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) devices: Vec<RmmDevice>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RmmDevice {
    pub(crate) uid: String,
    pub(crate) id: u64,
    pub(crate) hostname: String,
    pub(crate) online: bool,
    pub(crate) operating_system: String,
    pub(crate) int_ip_address: String,
    pub(crate) description: String,
    pub(crate) last_seen: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Component {
    pub(crate) uid: String,
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) steward_runner: bool,
    pub(crate) variables: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct DattoAccount {
    /// Datto calls it a key, but together with the secret it is the account's password grant.
    pub(crate) api_key: Secret,
    pub(crate) api_secret: Secret,
    pub(crate) rate_limit_per_minute: u32,
    pub(crate) job_start_delay_seconds: i64,
    pub(crate) components: Vec<Component>,
    pub(crate) jobs: Vec<crate::datto::Job>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Ticket {
    pub(crate) id: i64,
    pub(crate) company: String,
    pub(crate) company_id: Option<i64>,
    pub(crate) ticket_number: String,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) status: i64,
    pub(crate) priority: Option<i64>,
    pub(crate) queue_id: Option<i64>,
    pub(crate) issue_type: Option<i64>,
    pub(crate) sub_issue_type: Option<i64>,
    pub(crate) create_date: DateTime<Utc>,
    pub(crate) last_activity_date: DateTime<Utc>,
    #[serde(skip)]
    pub(crate) emit_on_start: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TicketNote {
    pub(crate) id: i64,
    pub(crate) ticket_id: i64,
    pub(crate) title: String,
    pub(crate) description: String,
    pub(crate) note_type: i64,
    pub(crate) publish: i64,
    pub(crate) create_date: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
pub(crate) struct AutotaskAccount {
    pub(crate) username: String,
    pub(crate) secret: Secret,
    pub(crate) integration_code: Secret,
    pub(crate) webhook_guid: String,
    pub(crate) tickets: Vec<Ticket>,
    pub(crate) notes: Vec<TicketNote>,
    pub(crate) next_note_id: i64,
    pub(crate) next_ticket_id: i64,
    pub(crate) webhook_sequence: i64,
}

/// A fixture user's authentication methods, registered well before the sandbox starts.
fn auth_methods_from(
    seed: u64,
    user_id: &str,
    methods: &[fixture::AuthMethodFx],
    now: DateTime<Utc>,
) -> Vec<AuthMethod> {
    methods
        .iter()
        .enumerate()
        .map(|(i, m)| AuthMethod {
            id: ids::guid(seed, &["authm", user_id, &i.to_string()]),
            kind: m.kind.clone(),
            display_name: m.display_name.clone(),
            created_at: now - Duration::days(200),
        })
        .collect()
}

pub(crate) fn domain_dn(dns: &str) -> String {
    dns.split('.')
        .map(|p| format!("DC={p}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl World {
    pub(crate) fn from_fixture(fx: &Fixture, seed: u64, now: DateTime<Utc>) -> Self {
        let mut w = World {
            seed,
            counter: 0,
            partner: Partner {
                name: fx.partner.name.clone(),
                apps: fx
                    .partner
                    .apps
                    .iter()
                    .map(|a| App {
                        client_id: a.client_id.clone(),
                        client_secret: a.client_secret.digest(),
                        display_name: a.display_name.clone(),
                        redirect_uris: a.redirect_uris.clone(),
                        application_permissions: a.application_permissions.clone(),
                        delegated_permissions: a.delegated_permissions.clone(),
                        certificates: a
                            .certificates
                            .iter()
                            .filter_map(|c| crate::assertion::AppCertificate::from_pem(c).ok())
                            .collect(),
                    })
                    .collect(),
            },
            companies: Vec::new(),
            datto: fx.datto.as_ref().map(|d| DattoAccount {
                api_key: d.api_key.digest(),
                api_secret: d.api_secret.digest(),
                rate_limit_per_minute: d.rate_limit_per_minute,
                job_start_delay_seconds: i64::try_from(d.job_start_delay_seconds)
                    .unwrap_or(i64::MAX),
                components: d
                    .components
                    .iter()
                    .map(|c| Component {
                        uid: c.uid.clone(),
                        id: ids::number(seed, &["component", &c.uid], 900_000) + 100_000,
                        name: c.name.clone(),
                        steward_runner: c.steward_runner,
                        variables: c.variables.clone(),
                    })
                    .collect(),
                jobs: Vec::new(),
            }),
            autotask: fx.autotask.as_ref().map(|a| {
                let tickets: Vec<Ticket> = a
                    .tickets
                    .iter()
                    .map(|t| Ticket {
                        id: t.id,
                        company: t.company.clone(),
                        company_id: fx
                            .companies
                            .iter()
                            .find(|c| c.id == t.company)
                            .and_then(|c| c.autotask_company_id),
                        ticket_number: format!("T{}.{:04}", now.format("%Y%m%d"), t.id % 10_000),
                        title: t.title.clone(),
                        description: t.description.clone(),
                        status: t.status,
                        priority: t.priority,
                        queue_id: t.queue_id,
                        issue_type: t.issue_type,
                        sub_issue_type: t.sub_issue_type,
                        create_date: now,
                        last_activity_date: now,
                        emit_on_start: t.emit_on_start,
                    })
                    .collect();
                let next_ticket_id = tickets.iter().map(|t| t.id).max().unwrap_or(1000) + 1;
                AutotaskAccount {
                    username: a.username.clone(),
                    secret: a.secret.digest(),
                    integration_code: a.integration_code.digest(),
                    webhook_guid: a
                        .webhook_guid
                        .clone()
                        .unwrap_or_else(|| ids::guid(seed, &["autotask-webhook"])),
                    tickets,
                    notes: Vec::new(),
                    next_note_id: 30_000_001,
                    next_ticket_id,
                    webhook_sequence: 0,
                }
            }),
        };
        for c in &fx.companies {
            let company = w.load_company(c, now);
            w.companies.push(company);
        }
        w
    }

    /// Adds `count` empty cloud-only companies `<prefix>-00001`…, their tenants consented to
    /// every partner app; answers `{id, tenant}` of each. Refuses ids that exist.
    pub(crate) fn add_empty_companies(
        &mut self,
        prefix: &str,
        count: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Value>, String> {
        let apps: Vec<String> = self
            .partner
            .apps
            .iter()
            .map(|a| a.client_id.clone())
            .collect();
        let mut out = Vec::with_capacity(count);
        for i in 1..=count {
            let id = format!("{prefix}-{i:05}");
            if self.companies.iter().any(|c| c.id == id) {
                return Err(format!("company `{id}` exists; use another prefix"));
            }
            let tenant = ids::guid(self.seed, &["bench-tenant", &id]);
            let fx: fixture::CompanyFx = serde_json::from_value(json!({
                "id": id,
                "name": id,
                "tenant": {
                    "id": tenant,
                    "initial_domain": format!("{id}.onmicrosoft.com"),
                    "consented_apps": apps,
                },
            }))
            .map_err(|e| e.to_string())?;
            let company = self.load_company(&fx, now);
            self.companies.push(company);
            out.push(json!({"id": id, "tenant": tenant}));
        }
        Ok(out)
    }

    /// What a fixture's consent grants: its explicit lists, else the app registration's.
    fn consent_of(&self, c: &fixture::ConsentFx) -> Consent {
        let app = self
            .partner
            .apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(c.client_id()));
        let (roles, scopes) = match c {
            fixture::ConsentFx::Full(_) => (None, None),
            fixture::ConsentFx::Partial {
                application_permissions,
                delegated_permissions,
                ..
            } => (
                application_permissions.clone(),
                delegated_permissions.clone(),
            ),
        };
        Consent {
            client_id: c.client_id().to_owned(),
            roles: roles
                .or_else(|| app.map(|a| a.application_permissions.clone()))
                .unwrap_or_default(),
            scopes: scopes
                .or_else(|| app.map(|a| a.delegated_permissions.clone()))
                .unwrap_or_default(),
        }
    }

    fn load_company(&mut self, c: &fixture::CompanyFx, now: DateTime<Utc>) -> Company {
        let seed = self.seed;
        let t = &c.tenant;
        let mut domains = vec![t.initial_domain.clone()];
        domains.extend(t.domains.iter().cloned());
        let mut tenant = Tenant {
            id: t.id.to_ascii_lowercase(),
            initial_domain: t.initial_domain.clone(),
            domains,
            consented_apps: t
                .consented_apps
                .iter()
                .map(|c| self.consent_of(c))
                .collect(),
            mailbox_provisioning_delay_seconds: t.mailbox_provisioning_delay_seconds as i64,
            skus: t
                .skus
                .iter()
                .map(|s| Sku {
                    sku_id: s.sku_id.to_ascii_lowercase(),
                    part_number: s.part_number.clone(),
                    seats: s.seats,
                    exchange: s.exchange,
                    service_plans: s
                        .service_plans
                        .iter()
                        .map(|p| (p.id.clone(), p.name.clone()))
                        .collect(),
                })
                .collect(),
            users: Vec::new(),
            deleted_users: Vec::new(),
            groups: Vec::new(),
            managed_devices: Vec::new(),
            role_assignments: Vec::new(),
            password_operations: Vec::new(),
        };
        let mut exo = Exo::default();
        for u in &t.users {
            let id = u
                .id
                .clone()
                .unwrap_or_else(|| ids::guid(seed, &["user", &c.id, &u.upn.to_ascii_lowercase()]));
            let mut props = Map::new();
            props.insert("userPrincipalName".into(), json!(u.upn));
            props.insert("displayName".into(), json!(u.display_name));
            props.insert(
                "mailNickname".into(),
                json!(
                    u.mail_nickname.clone().unwrap_or_else(|| u
                        .upn
                        .split('@')
                        .next()
                        .unwrap_or_default()
                        .to_owned())
                ),
            );
            props.insert("accountEnabled".into(), json!(u.account_enabled));
            let opt = |props: &mut Map<String, Value>, k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    props.insert(k.to_owned(), json!(v));
                }
            };
            opt(&mut props, "givenName", &u.given_name);
            opt(&mut props, "surname", &u.surname);
            opt(&mut props, "jobTitle", &u.job_title);
            opt(&mut props, "department", &u.department);
            opt(&mut props, "officeLocation", &u.office_location);
            opt(&mut props, "mobilePhone", &u.mobile_phone);
            opt(&mut props, "usageLocation", &u.usage_location);
            props.insert("userType".into(), json!("Member"));
            let licenses = license_list(&tenant.skus, &u.licenses);
            let has_exchange = licenses
                .iter()
                .any(|l| tenant_sku_has_exchange(&tenant.skus, &l.sku_id));
            let mailbox_wanted = u
                .mailbox
                .map(MailboxKind::from)
                .or(has_exchange.then_some(MailboxKind::UserMailbox));
            if mailbox_wanted.is_some() {
                props.insert("mail".into(), json!(u.upn));
            }
            let auth_methods = auth_methods_from(seed, &id, &u.auth_methods, now);
            let user = User {
                id: id.clone(),
                props,
                password: None,
                licenses,
                manager: None,
                auth_methods,
                on_prem: None,
                created_at: now - Duration::days(365),
                deleted_at: None,
                sessions_revoked_at: None,
                mailbox_wanted,
            };
            if let Some(kind) = mailbox_wanted {
                let mut mbx = new_mailbox(seed, &user, kind, now - Duration::days(300));
                for (i, d) in u.mobile_devices.iter().enumerate() {
                    mbx.mobile_devices.push(MobileDevice {
                        guid: ids::guid(seed, &["mobile", &id, &i.to_string()]),
                        friendly_name: d.friendly_name.clone(),
                        device_model: d.model.clone().unwrap_or_else(|| "iPhone".to_owned()),
                        device_os: d.os.clone().unwrap_or_else(|| "iOS 18.1".to_owned()),
                        first_sync_time: now - Duration::days(100),
                    });
                }
                exo.mailboxes.push(mbx);
            }
            for r in &u.roles {
                if let Some((rid, _)) = ROLE_DEFINITIONS.iter().find(|(_, n)| n == r) {
                    tenant.role_assignments.push(RoleAssignment {
                        id: ids::guid(seed, &["roleassign", &id, rid]),
                        principal_id: id.clone(),
                        role_definition_id: (*rid).to_owned(),
                        directory_scope_id: "/".to_owned(),
                    });
                }
            }
            tenant.users.push(user);
        }
        // AD forest, and the users an earlier sync already exported.
        let ad = c.ad.as_ref().map(|a| {
            let mut forest = AdForest {
                domain: a.domain.clone(),
                netbios: a.netbios.clone(),
                domain_controller: a.domain_controller.clone(),
                upn_suffixes: a.upn_suffixes.clone(),
                min_password_length: a.min_password_length,
                usn: 1000,
                ous: a.ous.clone(),
                users: Vec::new(),
                groups: Vec::new(),
                winrm_reachable: true,
            };
            for u in &a.users {
                let usn = forest.bump();
                let guid_bytes = ids::guid_bytes(seed, &["aduser", &c.id, &u.sam]);
                let name = u
                    .display_name
                    .clone()
                    .or_else(|| match (&u.given_name, &u.surname) {
                        (Some(g), Some(s)) => Some(format!("{g} {s}")),
                        _ => None,
                    })
                    .unwrap_or_else(|| u.sam.clone());
                let routing = format!(
                    "{}@{}",
                    u.sam,
                    t.initial_domain
                        .replace(".onmicrosoft.com", ".mail.onmicrosoft.com")
                );
                forest.users.push(AdUser {
                    object_guid: ids::dotnet_guid_string(&guid_bytes),
                    guid_bytes,
                    sam_account_name: u.sam.clone(),
                    user_principal_name: u.upn.clone(),
                    name,
                    parent: u.ou.clone(),
                    given_name: u.given_name.clone(),
                    surname: u.surname.clone(),
                    display_name: u.display_name.clone(),
                    enabled: u.enabled,
                    password: None,
                    title: u.title.clone(),
                    department: u.department.clone(),
                    mail: u.mail.clone().or_else(|| {
                        (u.remote_mailbox.is_some() || u.mailbox_database.is_some())
                            .then(|| u.upn.clone())
                    }),
                    manager: None,
                    usn_changed: usn,
                    remote_mailbox: u.remote_mailbox.map(|k| RemoteMailbox {
                        kind: k.into(),
                        remote_routing_address: routing,
                        hidden_from_address_lists: false,
                    }),
                    mailbox: u
                        .mailbox_database
                        .as_ref()
                        .map(|db| OnPremMailbox::new(db.clone())),
                    deleted: false,
                    locked_out: false,
                    attributes: BTreeMap::new(),
                    usage_location: u.usage_location.clone(),
                    created_at: now - Duration::days(400),
                });
            }
            for (i, u) in a.users.iter().enumerate() {
                if let Some(m) = &u.manager {
                    let mg = forest
                        .users
                        .iter()
                        .find(|x| x.sam_account_name.eq_ignore_ascii_case(m))
                        .map(|x| x.object_guid.clone());
                    forest.users[i].manager = mg;
                }
            }
            for g in &a.groups {
                let usn = forest.bump();
                let members = g
                    .members
                    .iter()
                    .filter_map(|m| {
                        forest
                            .users
                            .iter()
                            .find(|x| x.sam_account_name.eq_ignore_ascii_case(m))
                            .map(|x| x.object_guid.clone())
                    })
                    .collect();
                forest.groups.push(AdGroup {
                    object_guid: ids::dotnet_guid_string(&ids::guid_bytes(
                        seed,
                        &["adgroup", &c.id, &g.name],
                    )),
                    name: g.name.clone(),
                    parent: g.ou.clone(),
                    category: match g.category {
                        AdGroupCategoryFx::Security => AdGroupCategory::Security,
                        AdGroupCategoryFx::Distribution => AdGroupCategory::Distribution,
                    },
                    members,
                    usn_changed: usn,
                    synced: g.synced,
                });
            }
            forest
        });
        let mut company = Company {
            id: c.id.clone(),
            name: c.name.clone(),
            autotask_company_id: c.autotask_company_id,
            tenant,
            exchange_online: exo,
            entra_connect: c.entra_connect.as_ref().map(|e| EntraConnect {
                server: e.server.clone(),
                sync_duration_seconds: e.sync_duration_seconds as i64,
                interval_minutes: e.interval_minutes as i64,
                scheduler_enabled: e.scheduler_enabled,
                cycle: None,
                last_exported_usn: 0,
                next_scheduled_at: now + Duration::minutes(e.interval_minutes as i64),
                last_cycle: None,
            }),
            ad,
            exchange_server: c.exchange_server.as_ref().map(|x| ExchangeServer {
                server: x.server.clone(),
                mode: match x.mode {
                    ExchangeModeFx::Hybrid => ExchangeMode::Hybrid,
                    ExchangeModeFx::OnPrem => ExchangeMode::OnPrem,
                },
                databases: x.databases.clone(),
                double_hop_configured: x.double_hop_configured,
            }),
            rmm_site: c.rmm_site.as_ref().map(|s| Site {
                uid: s.uid.clone(),
                id: ids::number(seed, &["site", &s.uid], 900_000) + 100_000,
                name: s.name.clone(),
                devices: s
                    .devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| RmmDevice {
                        uid: d.uid.clone(),
                        id: ids::number(seed, &["device", &d.uid], 9_000_000) + 1_000_000,
                        hostname: d.hostname.clone(),
                        online: d.online,
                        operating_system: d.operating_system.clone(),
                        int_ip_address: d
                            .int_ip_address
                            .clone()
                            .unwrap_or_else(|| format!("10.0.0.{}", 10 + i)),
                        description: d.description.clone().unwrap_or_default(),
                        last_seen: now,
                    })
                    .collect(),
            }),
        };
        // The users an earlier sync exported: run an export of exactly those, instantly.
        if let (Some(ad), Some(_)) = (&c.ad, &company.entra_connect) {
            let exported: Vec<String> = ad
                .users
                .iter()
                .filter(|u| u.synced)
                .map(|u| u.sam.to_ascii_lowercase())
                .collect();
            let group_names: Vec<String> = ad
                .groups
                .iter()
                .filter(|g| g.synced)
                .map(|g| g.name.to_ascii_lowercase())
                .collect();
            export_selected(
                &mut company,
                seed,
                now - Duration::days(1),
                &exported,
                &group_names,
                true,
            );
            // Fixture authentication methods and licences of synced users.
            for u in &ad.users {
                if !u.auth_methods.is_empty() {
                    if let Some(eu) = company
                        .tenant
                        .users
                        .iter_mut()
                        .find(|x| x.upn().eq_ignore_ascii_case(&u.upn))
                    {
                        eu.auth_methods = auth_methods_from(seed, &eu.id, &u.auth_methods, now);
                    }
                }
                if u.licenses.is_empty() {
                    continue;
                }
                let lic = license_list(&company.tenant.skus, &u.licenses);
                if let Some(eu) = company
                    .tenant
                    .users
                    .iter_mut()
                    .find(|x| x.upn().eq_ignore_ascii_case(&u.upn))
                {
                    eu.licenses = lic;
                }
                let ids_: Vec<String> = company
                    .tenant
                    .users
                    .iter()
                    .filter(|x| x.upn().eq_ignore_ascii_case(&u.upn))
                    .map(|x| x.id.clone())
                    .collect();
                for id in ids_ {
                    ensure_mailbox(&mut company, seed, &id, now - Duration::days(1), true);
                }
            }
            if let (Some(ec), Some(forest)) = (company.entra_connect.as_mut(), company.ad.as_ref())
            {
                // Objects marked `synced: false` stay above the watermark, so the next cycle
                // exports them.
                let pending_min = forest
                    .users
                    .iter()
                    .filter(|u| {
                        !ad.users
                            .iter()
                            .any(|f| f.synced && f.sam.eq_ignore_ascii_case(&u.sam_account_name))
                    })
                    .map(|u| u.usn_changed)
                    .chain(
                        forest
                            .groups
                            .iter()
                            .filter(|g| !g.synced)
                            .map(|g| g.usn_changed),
                    )
                    .min();
                ec.last_exported_usn = match pending_min {
                    Some(m) => m - 1,
                    None => forest.usn,
                };
            }
        }
        // Managers, groups and devices reference users by UPN, so they come after users exist.
        for u in &t.users {
            if let Some(m) = &u.manager {
                let mid = company
                    .tenant
                    .users
                    .iter()
                    .find(|x| x.upn().eq_ignore_ascii_case(m))
                    .map(|x| x.id.clone());
                if let Some(x) = company
                    .tenant
                    .users
                    .iter_mut()
                    .find(|x| x.upn().eq_ignore_ascii_case(&u.upn))
                {
                    x.manager = mid;
                }
            }
        }
        for g in &t.groups {
            let members = g
                .members
                .iter()
                .filter_map(|m| {
                    company
                        .tenant
                        .users
                        .iter()
                        .find(|x| x.upn().eq_ignore_ascii_case(m))
                        .map(|x| x.id.clone())
                })
                .collect();
            let kind = match g.kind {
                GroupKindFx::Security => GroupKind::Security,
                GroupKindFx::M365 => GroupKind::M365,
                GroupKindFx::Distribution => GroupKind::Distribution,
                GroupKindFx::MailSecurity => GroupKind::MailSecurity,
                GroupKindFx::DynamicSecurity => GroupKind::DynamicSecurity,
            };
            let nick = g
                .mail_nickname
                .clone()
                .unwrap_or_else(|| g.display_name.replace(' ', "").to_ascii_lowercase());
            company.tenant.groups.push(Group {
                id: g
                    .id
                    .clone()
                    .unwrap_or_else(|| ids::guid(seed, &["group", &c.id, &g.display_name])),
                mail: kind.mail_enabled().then(|| {
                    format!(
                        "{nick}@{}",
                        company.tenant.domains.last().cloned().unwrap_or_default()
                    )
                }),
                display_name: g.display_name.clone(),
                mail_nickname: nick,
                description: g.description.clone(),
                kind,
                membership_rule: g.membership_rule.clone(),
                members,
                on_prem: None,
                created_at: now - Duration::days(300),
            });
        }
        for d in &t.managed_devices {
            let user_id = company
                .tenant
                .users
                .iter()
                .find(|x| x.upn().eq_ignore_ascii_case(&d.user))
                .map(|x| x.id.clone())
                .unwrap_or_default();
            company.tenant.managed_devices.push(ManagedDevice {
                id: d
                    .id
                    .clone()
                    .unwrap_or_else(|| ids::guid(seed, &["device", &c.id, &d.device_name])),
                device_name: d.device_name.clone(),
                user_id,
                operating_system: d.operating_system.clone(),
                os_version: d
                    .os_version
                    .clone()
                    .unwrap_or_else(|| "10.0.22631.4460".to_owned()),
                serial_number: d.serial_number.clone().unwrap_or_else(|| {
                    format!(
                        "SN{}",
                        ids::number(seed, &["serial", &d.device_name], 99_999_999)
                    )
                }),
                compliance_state: d.compliance_state.clone(),
                management_state: "managed".to_owned(),
                azure_ad_device_id: ids::guid(seed, &["aaddevice", &c.id, &d.device_name]),
                enrolled_at: now - Duration::days(120),
            });
        }
        company
    }

    /// A fresh deterministic GUID for an object created at run time.
    pub(crate) fn new_guid(&mut self, kind: &str) -> String {
        self.counter += 1;
        ids::guid(self.seed, &["new", kind, &self.counter.to_string()])
    }

    pub(crate) fn next_number(&mut self, kind: &str, modulo: u64) -> u64 {
        self.counter += 1;
        ids::number(self.seed, &["new", kind, &self.counter.to_string()], modulo)
    }

    pub(crate) fn company(&self, id: &str) -> Option<&Company> {
        self.companies.iter().find(|c| c.id == id)
    }

    pub(crate) fn company_mut(&mut self, id: &str) -> Option<&mut Company> {
        self.companies.iter_mut().find(|c| c.id == id)
    }

    /// The partner app `client_id`.
    pub(crate) fn app(&self, client_id: &str) -> Option<&App> {
        self.partner
            .apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    pub(crate) fn company_by_tenant(&self, tenant: &str) -> Option<&Company> {
        let t = tenant.to_ascii_lowercase();
        self.companies.iter().find(|c| {
            c.tenant.id == t || c.tenant.domains.iter().any(|d| d.eq_ignore_ascii_case(&t))
        })
    }

    /// Applies everything the clock has made due: finished sync cycles, scheduled cycles,
    /// purges of deleted users past the restore window.
    pub(crate) fn settle(&mut self, now: DateTime<Utc>) {
        let seed = self.seed;
        for c in &mut self.companies {
            settle_sync(c, seed, now);
            c.tenant.deleted_users.retain(|u| {
                u.deleted_at
                    .is_some_and(|d| now - d < Duration::days(RESTORE_WINDOW_DAYS))
            });
        }
    }

    /// The JSON snapshot of one company (secrets print as `[redacted]`).
    pub(crate) fn snapshot(&self, company: &str, now: DateTime<Utc>) -> Option<Value> {
        let c = self.company(company)?;
        let mut v = serde_json::to_value(c).ok()?;
        // Derived facts a test wants without re-deriving them.
        if let Some(obj) = v.as_object_mut() {
            let skus: Vec<Value> = c
                .tenant
                .skus
                .iter()
                .map(|s| {
                    json!({"sku_id": s.sku_id, "part_number": s.part_number, "seats": s.seats,
                           "consumed": consumed_units(&c.tenant, &s.sku_id)})
                })
                .collect();
            obj.insert("license_usage".into(), Value::Array(skus));
            let live: Vec<Value> = c
                .exchange_online
                .mailboxes
                .iter()
                .filter(|m| m.provisioned_at <= now)
                .map(|m| json!(m.user_id))
                .collect();
            obj.insert("provisioned_mailboxes".into(), Value::Array(live));
            obj.insert("snapshot_at".into(), json!(now));
        }
        Some(v)
    }
}

pub(crate) fn tenant_sku_has_exchange(skus: &[Sku], sku_id: &str) -> bool {
    skus.iter().any(|s| s.sku_id == sku_id && s.exchange)
}

fn license_list(skus: &[Sku], names: &[String]) -> Vec<AssignedLicense> {
    names
        .iter()
        .filter_map(|n| {
            skus.iter()
                .find(|s| s.part_number == *n || s.sku_id.eq_ignore_ascii_case(n))
                .map(|s| AssignedLicense {
                    sku_id: s.sku_id.clone(),
                    disabled_plans: vec![],
                })
        })
        .collect()
}

pub(crate) fn consumed_units(t: &Tenant, sku_id: &str) -> u32 {
    t.users
        .iter()
        .filter(|u| u.licenses.iter().any(|l| l.sku_id == sku_id))
        .count() as u32
}

pub(crate) fn new_mailbox(seed: u64, user: &User, kind: MailboxKind, at: DateTime<Utc>) -> Mailbox {
    Mailbox {
        guid: ids::guid(seed, &["mailbox", &user.id]),
        user_id: user.id.clone(),
        kind,
        provisioned_at: at,
        hidden_from_address_lists: false,
        forwarding_address: None,
        forwarding_smtp_address: None,
        deliver_to_mailbox_and_forward: false,
        grant_send_on_behalf_to: vec![],
        full_access: vec![],
        send_as: vec![],
        auto_reply: AutoReply::default(),
        mobile_devices: vec![],
    }
}

/// Creates the Exchange Online mailbox a user is now due, if any, visible after the tenant's
/// provisioning delay (or at once when `immediate`, for fixture state).
pub(crate) fn ensure_mailbox(
    c: &mut Company,
    seed: u64,
    user_id: &str,
    at: DateTime<Utc>,
    immediate: bool,
) {
    let Some(user) = c.tenant.users.iter_mut().find(|u| u.id == user_id) else {
        return;
    };
    let licensed = user
        .licenses
        .iter()
        .any(|l| tenant_sku_has_exchange(&c.tenant.skus, &l.sku_id));
    // A synced user's recipient type is mastered on-prem. An on-prem mailbox (its
    // ExchangeGuid synced) keeps Exchange Online from making a second one, licensed or not; a
    // remote mailbox is provisioned in the cloud; and a user with neither (no Exchange
    // attributes on-prem) gets a cloud mailbox from a licence with Exchange, as Exchange
    // Online's provisioning does whether or not the organisation still has an Exchange
    // server (c7solutions.com "mailbox on-premises and in the cloud": only an ExchangeGuid
    // stops it). The on-prem organisation then does not know that mailbox: the reason
    // Exchange hybrid creates mailboxes with Enable-RemoteMailbox instead.
    let wanted = if let Some(link) = &user.on_prem {
        let ad_user = c.ad.as_ref().and_then(|f| {
            f.users.iter().find(|u| {
                u.sam_account_name
                    .eq_ignore_ascii_case(&link.sam_account_name)
            })
        });
        match ad_user {
            Some(a) => match (&a.remote_mailbox, &a.mailbox) {
                (Some(r), _) if r.kind == MailboxKind::SharedMailbox || licensed => Some(r.kind),
                (Some(_), _) => None,
                (None, Some(_)) => None,
                (None, None) if licensed => Some(MailboxKind::UserMailbox),
                (None, None) => None,
            },
            None => None,
        }
    } else if licensed {
        Some(user.mailbox_wanted.unwrap_or(MailboxKind::UserMailbox))
    } else {
        user.mailbox_wanted
    };
    let Some(kind) = wanted else {
        return;
    };
    user.mailbox_wanted = Some(kind);
    if user.str_prop("mail").is_none() {
        let upn = user.upn().to_owned();
        user.props.insert("mail".into(), json!(upn));
    }
    if c.exchange_online
        .mailboxes
        .iter()
        .any(|m| m.user_id == user_id)
    {
        return;
    }
    let delay = if immediate {
        Duration::zero()
    } else {
        Duration::seconds(c.tenant.mailbox_provisioning_delay_seconds)
    };
    let user = user.clone();
    c.exchange_online
        .mailboxes
        .push(new_mailbox(seed, &user, kind, at + delay));
}

fn settle_sync(c: &mut Company, seed: u64, now: DateTime<Utc>) {
    // Bounded: each turn finishes a cycle or starts one, and a start moves the schedule past now.
    for _ in 0..8 {
        let Some(ec) = c.entra_connect.as_mut() else {
            return;
        };
        if let Some(cycle) = ec.cycle.clone() {
            if cycle.ends_at <= now {
                ec.cycle = None;
                let exported = export_changes(c, seed, cycle.start_usn, cycle.ends_at);
                if let Some(ec) = c.entra_connect.as_mut() {
                    ec.last_cycle = Some(SyncResult {
                        started_at: cycle.started_at,
                        finished_at: cycle.ends_at,
                        trigger: cycle.trigger,
                        objects_exported: exported,
                    });
                }
                continue;
            }
            return;
        }
        if ec.scheduler_enabled && ec.next_scheduled_at <= now {
            let interval = Duration::minutes(ec.interval_minutes.max(1));
            // Missed slots collapse into the latest one: the real scheduler doesn't queue them.
            let mut slot = ec.next_scheduled_at;
            while slot + interval <= now {
                slot += interval;
            }
            ec.next_scheduled_at = slot + interval;
            let usn = c.ad.as_ref().map_or(0, |f| f.usn);
            let ec = c.entra_connect.as_mut().expect("checked above");
            ec.cycle = Some(SyncCycle {
                started_at: slot,
                ends_at: slot + Duration::seconds(ec.sync_duration_seconds),
                start_usn: usn,
                trigger: "scheduler".to_owned(),
            });
            continue;
        }
        return;
    }
}

/// Starts a delta cycle now; `Err(())` when one is already running ("AAD is busy").
pub(crate) fn start_sync_cycle(
    c: &mut Company,
    now: DateTime<Utc>,
    trigger: &str,
    duration_override: Option<i64>,
) -> Result<SyncCycle, SyncCycle> {
    let usn = c.ad.as_ref().map_or(0, |f| f.usn);
    let Some(ec) = c.entra_connect.as_mut() else {
        return Err(SyncCycle {
            started_at: now,
            ends_at: now,
            start_usn: usn,
            trigger: trigger.to_owned(),
        });
    };
    if let Some(cycle) = &ec.cycle {
        return Err(cycle.clone());
    }
    let cycle = SyncCycle {
        started_at: now,
        ends_at: now + Duration::seconds(duration_override.unwrap_or(ec.sync_duration_seconds)),
        start_usn: usn,
        trigger: trigger.to_owned(),
    };
    ec.cycle = Some(cycle.clone());
    Ok(cycle)
}

fn export_changes(c: &mut Company, seed: u64, start_usn: u64, at: DateTime<Utc>) -> usize {
    let Some(ec) = c.entra_connect.as_ref() else {
        return 0;
    };
    let from = ec.last_exported_usn;
    let Some(forest) = c.ad.as_ref() else {
        return 0;
    };
    let users: Vec<String> = forest
        .users
        .iter()
        .filter(|u| u.usn_changed > from && u.usn_changed <= start_usn)
        .map(|u| u.sam_account_name.to_ascii_lowercase())
        .collect();
    let groups: Vec<String> = forest
        .groups
        .iter()
        .filter(|g| g.usn_changed > from && g.usn_changed <= start_usn)
        .map(|g| g.name.to_ascii_lowercase())
        .collect();
    let n = users.len() + groups.len();
    export_selected(c, seed, at, &users, &groups, false);
    if let Some(ec) = c.entra_connect.as_mut() {
        ec.last_exported_usn = ec.last_exported_usn.max(start_usn);
    }
    n
}

/// Writes the named AD users and groups to Entra as Entra Connect would: create or update by
/// immutable id (soft-matching a cloud user with the same UPN), soft-delete removed objects,
/// and provision Exchange Online recipients for remote mailboxes.
fn export_selected(
    c: &mut Company,
    seed: u64,
    at: DateTime<Utc>,
    users: &[String],
    groups: &[String],
    immediate_mailboxes: bool,
) {
    let Some(forest) = c.ad.as_ref() else {
        return;
    };
    let domain = forest.domain.clone();
    let netbios = forest.netbios.clone();
    let ad_users: Vec<AdUser> = forest
        .users
        .iter()
        .filter(|u| users.contains(&u.sam_account_name.to_ascii_lowercase()))
        .cloned()
        .collect();
    let ad_groups: Vec<AdGroup> = forest
        .groups
        .iter()
        .filter(|g| groups.contains(&g.name.to_ascii_lowercase()))
        .cloned()
        .collect();
    let all_ad_users: Vec<AdUser> = forest.users.clone();
    let mut touched = Vec::new();
    for a in &ad_users {
        let immutable = a.immutable_id();
        let pos = c
            .tenant
            .users
            .iter()
            .position(|u| {
                u.on_prem
                    .as_ref()
                    .is_some_and(|l| l.immutable_id == immutable)
            })
            .or_else(|| {
                c.tenant.users.iter().position(|u| {
                    u.on_prem.is_none() && u.upn().eq_ignore_ascii_case(&a.user_principal_name)
                })
            });
        if a.deleted {
            if let Some(i) = pos {
                let mut u = c.tenant.users.remove(i);
                u.deleted_at = Some(at);
                remove_references(&mut c.tenant, &u.id);
                c.tenant.deleted_users.push(u);
            }
            continue;
        }
        // A UPN suffix the tenant hasn't verified becomes the initial domain, as in Entra.
        let (local, suffix) = a
            .user_principal_name
            .split_once('@')
            .unwrap_or((&a.user_principal_name, ""));
        let upn = if c
            .tenant
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(suffix))
        {
            a.user_principal_name.clone()
        } else {
            format!("{local}@{}", c.tenant.initial_domain)
        };
        let id = match pos {
            Some(i) => c.tenant.users[i].id.clone(),
            None => ids::guid(seed, &["synced", &c.id, &immutable]),
        };
        let mut props = pos
            .map(|i| c.tenant.users[i].props.clone())
            .unwrap_or_default();
        props.insert("userPrincipalName".into(), json!(upn));
        props.insert(
            "displayName".into(),
            json!(a.display_name.clone().unwrap_or_else(|| a.name.clone())),
        );
        props.insert("mailNickname".into(), json!(a.sam_account_name));
        props.insert("accountEnabled".into(), json!(a.enabled));
        props.insert("userType".into(), json!("Member"));
        for (k, v) in [
            ("givenName", &a.given_name),
            ("surname", &a.surname),
            ("jobTitle", &a.title),
            ("department", &a.department),
            ("mail", &a.mail),
        ] {
            match v {
                Some(v) => props.insert(k.into(), json!(v)),
                None => props.remove(k),
            };
        }
        if let (Some(loc), false) = (&a.usage_location, props.contains_key("usageLocation")) {
            props.insert("usageLocation".into(), json!(loc));
        }
        let manager = a.manager.as_ref().and_then(|mg| {
            let m = all_ad_users.iter().find(|x| &x.object_guid == mg)?;
            let mid = m.immutable_id();
            c.tenant
                .users
                .iter()
                .find(|u| u.on_prem.as_ref().is_some_and(|l| l.immutable_id == mid))
                .map(|u| u.id.clone())
        });
        let link = OnPremLink {
            sam_account_name: a.sam_account_name.clone(),
            immutable_id: immutable,
            distinguished_name: a.dn(),
            domain_name: domain.clone(),
            netbios_name: netbios.clone(),
            user_principal_name: a.user_principal_name.clone(),
            last_sync: at,
        };
        match pos {
            Some(i) => {
                let u = &mut c.tenant.users[i];
                u.props = props;
                u.on_prem = Some(link);
                u.manager = manager;
            }
            None => c.tenant.users.push(User {
                id: id.clone(),
                props,
                password: None,
                licenses: vec![],
                manager,
                auth_methods: vec![],
                on_prem: Some(link),
                created_at: at,
                deleted_at: None,
                sessions_revoked_at: None,
                mailbox_wanted: None,
            }),
        }
        // Remote mailbox attributes flow to the Exchange Online recipient.
        if let Some(r) = &a.remote_mailbox {
            if let Some(m) = c
                .exchange_online
                .mailboxes
                .iter_mut()
                .find(|m| m.user_id == id)
            {
                m.hidden_from_address_lists = r.hidden_from_address_lists;
                m.kind = r.kind;
            }
        }
        touched.push(id);
    }
    for id in touched {
        ensure_mailbox(c, seed, &id, at, immediate_mailboxes);
    }
    for g in &ad_groups {
        let pos = c.tenant.groups.iter().position(|x| {
            x.on_prem
                .as_ref()
                .is_some_and(|o| o.object_guid == g.object_guid)
        });
        let members: Vec<String> = g
            .members
            .iter()
            .filter_map(|mg| {
                let m = all_ad_users.iter().find(|x| &x.object_guid == mg)?;
                let mid = m.immutable_id();
                c.tenant
                    .users
                    .iter()
                    .find(|u| u.on_prem.as_ref().is_some_and(|l| l.immutable_id == mid))
                    .map(|u| u.id.clone())
            })
            .collect();
        let kind = match g.category {
            AdGroupCategory::Security => GroupKind::Security,
            AdGroupCategory::Distribution => GroupKind::Distribution,
        };
        let on_prem = GroupOnPrem {
            sam_account_name: g.name.clone(),
            object_guid: g.object_guid.clone(),
            last_sync: at,
        };
        match pos {
            Some(i) => {
                let x = &mut c.tenant.groups[i];
                x.members = members;
                x.display_name = g.name.clone();
                x.on_prem = Some(on_prem);
            }
            None => {
                let nick = g.name.replace(' ', "");
                c.tenant.groups.push(Group {
                    id: ids::guid(seed, &["syncedgroup", &c.id, &g.object_guid]),
                    display_name: g.name.clone(),
                    mail: kind.mail_enabled().then(|| format!("{nick}@{domain}")),
                    mail_nickname: nick,
                    description: None,
                    kind,
                    membership_rule: None,
                    members,
                    on_prem: Some(on_prem),
                    created_at: at,
                })
            }
        }
    }
}

/// Drops every reference to a user that is going to deleted items (Entra removes memberships,
/// manager links and role assignments of a deleted user; a restore does not bring back groups).
pub(crate) fn remove_references(t: &mut Tenant, user_id: &str) {
    for g in &mut t.groups {
        g.members.retain(|m| m != user_id);
    }
    for u in &mut t.users {
        if u.manager.as_deref() == Some(user_id) {
            u.manager = None;
        }
    }
    t.role_assignments.retain(|r| r.principal_id != user_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> (World, DateTime<Utc>) {
        let fx = Fixture::load(None).unwrap();
        let now = Utc::now();
        (World::from_fixture(&fx, 42, now), now)
    }

    #[test]
    fn fixture_builds_deterministically() {
        let fx = Fixture::load(None).unwrap();
        let now = Utc::now();
        let a = World::from_fixture(&fx, 42, now);
        let b = World::from_fixture(&fx, 42, now);
        let ids_a: Vec<&str> = a.companies[0]
            .tenant
            .users
            .iter()
            .map(|u| u.id.as_str())
            .collect();
        let ids_b: Vec<&str> = b.companies[0]
            .tenant
            .users
            .iter()
            .map(|u| u.id.as_str())
            .collect();
        assert_eq!(ids_a, ids_b);
        let c = World::from_fixture(&fx, 43, now);
        assert_ne!(
            c.companies[0].tenant.users[0].id,
            a.companies[0].tenant.users[0].id
        );
    }

    #[test]
    fn synced_users_exist_in_entra_and_new_ad_users_wait_for_a_cycle() {
        let (mut w, now) = world();
        let c = w
            .companies
            .iter_mut()
            .find(|c| c.ad.is_some() && c.entra_connect.is_some())
            .expect("hybrid company in default fixture");
        let synced = c.tenant.users.iter().filter(|u| u.synced()).count();
        assert!(synced > 0);
        // Create an AD user, start a cycle, and watch it appear only after the cycle ends.
        let forest = c.ad.as_mut().unwrap();
        let usn = forest.bump();
        let mut u = forest.users[0].clone();
        u.sam_account_name = "newbie".into();
        u.user_principal_name = format!("newbie@{}", c.tenant.domains[1]);
        u.guid_bytes = [9; 16];
        u.usn_changed = usn;
        u.remote_mailbox = None;
        forest.users.push(u);
        let cycle = start_sync_cycle(c, now, "manual", None).unwrap();
        assert!(
            start_sync_cycle(c, now, "manual", None).is_err(),
            "AAD is busy"
        );
        let find = |c: &Company| {
            c.tenant.users.iter().any(|u| {
                u.on_prem
                    .as_ref()
                    .is_some_and(|l| l.sam_account_name == "newbie")
            })
        };
        settle_sync(c, 1, cycle.ends_at - Duration::seconds(1));
        assert!(!find(c));
        settle_sync(c, 1, cycle.ends_at);
        assert!(find(c));
        assert!(c.entra_connect.as_ref().unwrap().last_cycle.is_some());
    }
}
