//! The YAML fixture that seeds the world: MSP-level credentials (partner app, Datto account,
//! Autotask API user) and the client companies with their tenant, optional on-prem AD forest,
//! Entra Connect server, Exchange Server organisation and RMM site.
//!
//! Loading is strict (`deny_unknown_fields`) because a silently ignored typo in a fixture makes a
//! dry run lie. Every error names the file, the path inside the YAML and what to change.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::ids;
use crate::secret::SecretText;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read fixture {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fixture {file}: at `{path}`: {message}")]
    Parse {
        file: String,
        path: String,
        message: String,
    },
    #[error("fixture {file}: at `{path}`: {problem}; fix: {fix}")]
    Invalid {
        file: String,
        path: String,
        problem: String,
        fix: String,
    },
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// The built-in fixture used when `Options::fixture` is `None` (also `fixtures/msp.yaml`).
pub(crate) const DEFAULT_FIXTURE: &str = include_str!("../fixtures/msp.yaml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fixture {
    #[serde(default)]
    pub(crate) partner: PartnerFx,
    #[serde(default)]
    pub(crate) datto: Option<DattoFx>,
    #[serde(default)]
    pub(crate) autotask: Option<AutotaskFx>,
    pub(crate) companies: Vec<CompanyFx>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PartnerFx {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) apps: Vec<AppFx>,
    #[serde(default)]
    pub(crate) refresh_tokens: Vec<RefreshTokenFx>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppFx {
    pub(crate) client_id: String,
    pub(crate) client_secret: SecretText,
    #[serde(default = "default_app_name")]
    pub(crate) display_name: String,
    /// The app registration's redirect URIs (reply URLs). Loopback ones (`localhost`,
    /// `127.0.0.1`) match whatever port a request names, as Microsoft matches them.
    #[serde(default = "default_redirect_uris")]
    pub(crate) redirect_uris: Vec<String>,
    /// The Microsoft Graph application permissions (app roles) the registration asks for; an
    /// admin's consent grants them in the tenant. Default: what Steward's ops need
    /// ([`crate::graph::permissions::STEWARD_APPLICATION`]).
    #[serde(default = "default_application_permissions")]
    pub(crate) application_permissions: Vec<String>,
    /// The Microsoft Graph delegated permissions the registration asks for. Default:
    /// [`crate::graph::permissions::STEWARD_DELEGATED`].
    #[serde(default = "default_delegated_permissions")]
    pub(crate) delegated_permissions: Vec<String>,
    /// Certificates uploaded to the registration (PEM, RSA): client assertions signed with
    /// their keys are accepted instead of the secret.
    #[serde(default)]
    pub(crate) certificates: Vec<String>,
}

fn default_application_permissions() -> Vec<String> {
    crate::graph::permissions::STEWARD_APPLICATION
        .iter()
        .map(|p| (*p).to_owned())
        .collect()
}

fn default_delegated_permissions() -> Vec<String> {
    crate::graph::permissions::STEWARD_DELEGATED
        .iter()
        .map(|p| (*p).to_owned())
        .collect()
}

/// An app consented in a tenant: its client id alone (the tenant granted everything the app
/// registration asks for), or the client id with what the tenant granted (a consent given
/// before the registration asked for more).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ConsentFx {
    /// Everything the registration asks for.
    Full(String),
    /// An explicit grant.
    Partial {
        client_id: String,
        /// Granted application permissions (default: the registration's).
        #[serde(default)]
        application_permissions: Option<Vec<String>>,
        /// Granted delegated permissions (default: the registration's).
        #[serde(default)]
        delegated_permissions: Option<Vec<String>>,
    },
}

impl ConsentFx {
    pub(crate) fn client_id(&self) -> &str {
        match self {
            Self::Full(id) | Self::Partial { client_id: id, .. } => id,
        }
    }
}

fn default_app_name() -> String {
    "Steward".to_owned()
}

/// Steward's consent callback on a loopback address.
fn default_redirect_uris() -> Vec<String> {
    vec![
        "http://localhost/v1/tenants/callback".to_owned(),
        "http://127.0.0.1/v1/tenants/callback".to_owned(),
    ]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefreshTokenFx {
    pub(crate) token: SecretText,
    pub(crate) client_id: String,
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) issued_days_ago: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DattoFx {
    pub(crate) api_key: SecretText,
    pub(crate) api_secret: SecretText,
    #[serde(default = "default_rate_limit")]
    pub(crate) rate_limit_per_minute: u32,
    /// How long (sandbox clock) a quick job waits before the agent picks it up; real quick jobs
    /// can take minutes to start.
    #[serde(default)]
    pub(crate) job_start_delay_seconds: u64,
    #[serde(default)]
    pub(crate) components: Vec<ComponentFx>,
}

fn default_rate_limit() -> u32 {
    600
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ComponentFx {
    pub(crate) uid: String,
    pub(crate) name: String,
    /// Whether this component is Steward's runner (the only kind the simulated agent executes).
    #[serde(default)]
    pub(crate) steward_runner: bool,
    #[serde(default)]
    pub(crate) variables: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutotaskFx {
    pub(crate) username: String,
    pub(crate) secret: SecretText,
    pub(crate) integration_code: SecretText,
    #[serde(default)]
    pub(crate) webhook_guid: Option<String>,
    #[serde(default)]
    pub(crate) tickets: Vec<TicketFx>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TicketFx {
    pub(crate) id: i64,
    pub(crate) company: String,
    pub(crate) title: String,
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default = "default_ticket_status")]
    pub(crate) status: i64,
    #[serde(default)]
    pub(crate) priority: Option<i64>,
    #[serde(default)]
    pub(crate) queue_id: Option<i64>,
    #[serde(default)]
    pub(crate) issue_type: Option<i64>,
    #[serde(default)]
    pub(crate) sub_issue_type: Option<i64>,
    /// Send a `Create` webhook for this ticket when the sandbox starts serving.
    #[serde(default)]
    pub(crate) emit_on_start: bool,
}

fn default_ticket_status() -> i64 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CompanyFx {
    pub(crate) id: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) autotask_company_id: Option<i64>,
    pub(crate) tenant: TenantFx,
    #[serde(default)]
    pub(crate) ad: Option<AdFx>,
    #[serde(default)]
    pub(crate) entra_connect: Option<EntraConnectFx>,
    #[serde(default)]
    pub(crate) exchange_server: Option<ExchangeServerFx>,
    #[serde(default)]
    pub(crate) rmm_site: Option<SiteFx>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantFx {
    pub(crate) id: String,
    pub(crate) initial_domain: String,
    #[serde(default)]
    pub(crate) domains: Vec<String>,
    #[serde(default)]
    pub(crate) consented_apps: Vec<ConsentFx>,
    /// How long after a mailbox becomes due (licence assigned, remote mailbox synced) Exchange
    /// Online takes to create the recipient.
    #[serde(default = "default_mailbox_delay")]
    pub(crate) mailbox_provisioning_delay_seconds: u64,
    #[serde(default)]
    pub(crate) skus: Vec<SkuFx>,
    #[serde(default)]
    pub(crate) users: Vec<UserFx>,
    #[serde(default)]
    pub(crate) groups: Vec<GroupFx>,
    #[serde(default)]
    pub(crate) managed_devices: Vec<DeviceFx>,
}

fn default_mailbox_delay() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkuFx {
    pub(crate) sku_id: String,
    pub(crate) part_number: String,
    pub(crate) seats: u32,
    /// Whether the SKU carries an Exchange Online plan (assigning it provisions a mailbox).
    #[serde(default)]
    pub(crate) exchange: bool,
    #[serde(default)]
    pub(crate) service_plans: Vec<ServicePlanFx>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServicePlanFx {
    pub(crate) id: String,
    pub(crate) name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MailboxKindFx {
    User,
    Shared,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserFx {
    pub(crate) upn: String,
    pub(crate) display_name: String,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) given_name: Option<String>,
    #[serde(default)]
    pub(crate) surname: Option<String>,
    #[serde(default)]
    pub(crate) mail_nickname: Option<String>,
    #[serde(default)]
    pub(crate) job_title: Option<String>,
    #[serde(default)]
    pub(crate) department: Option<String>,
    #[serde(default)]
    pub(crate) office_location: Option<String>,
    #[serde(default)]
    pub(crate) mobile_phone: Option<String>,
    #[serde(default)]
    pub(crate) usage_location: Option<String>,
    #[serde(default = "yes")]
    pub(crate) account_enabled: bool,
    /// SKU part numbers (or sku ids) assigned directly.
    #[serde(default)]
    pub(crate) licenses: Vec<String>,
    #[serde(default)]
    pub(crate) manager: Option<String>,
    /// Exchange Online mailbox; defaults to a user mailbox when an Exchange licence is assigned.
    #[serde(default)]
    pub(crate) mailbox: Option<MailboxKindFx>,
    #[serde(default)]
    pub(crate) auth_methods: Vec<AuthMethodFx>,
    /// Directory role names (e.g. "User Administrator").
    #[serde(default)]
    pub(crate) roles: Vec<String>,
    #[serde(default)]
    pub(crate) mobile_devices: Vec<MobileDeviceFx>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthMethodFx {
    /// One of the Graph method kinds: microsoftAuthenticator, phone, fido2, softwareOath,
    /// windowsHelloForBusiness, email, temporaryAccessPass.
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) display_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MobileDeviceFx {
    pub(crate) friendly_name: String,
    #[serde(default)]
    pub(crate) model: Option<String>,
    #[serde(default)]
    pub(crate) os: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GroupKindFx {
    Security,
    M365,
    Distribution,
    MailSecurity,
    DynamicSecurity,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupFx {
    pub(crate) display_name: String,
    pub(crate) kind: GroupKindFx,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) mail_nickname: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) membership_rule: Option<String>,
    /// UPNs of members.
    #[serde(default)]
    pub(crate) members: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceFx {
    pub(crate) device_name: String,
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default = "default_os")]
    pub(crate) operating_system: String,
    #[serde(default)]
    pub(crate) os_version: Option<String>,
    #[serde(default)]
    pub(crate) serial_number: Option<String>,
    #[serde(default = "default_compliance")]
    pub(crate) compliance_state: String,
}

fn default_os() -> String {
    "Windows".to_owned()
}

fn default_compliance() -> String {
    "compliant".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdFx {
    /// DNS name of the AD domain, e.g. `contoso.local`.
    pub(crate) domain: String,
    pub(crate) netbios: String,
    pub(crate) domain_controller: String,
    #[serde(default)]
    pub(crate) upn_suffixes: Vec<String>,
    #[serde(default = "default_min_password")]
    pub(crate) min_password_length: usize,
    #[serde(default)]
    pub(crate) ous: Vec<String>,
    #[serde(default)]
    pub(crate) users: Vec<AdUserFx>,
    #[serde(default)]
    pub(crate) groups: Vec<AdGroupFx>,
}

fn default_min_password() -> usize {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdUserFx {
    pub(crate) sam: String,
    pub(crate) upn: String,
    /// Distinguished name of the parent OU (or container).
    pub(crate) ou: String,
    #[serde(default)]
    pub(crate) given_name: Option<String>,
    #[serde(default)]
    pub(crate) surname: Option<String>,
    #[serde(default)]
    pub(crate) display_name: Option<String>,
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
    #[serde(default)]
    pub(crate) title: Option<String>,
    #[serde(default)]
    pub(crate) department: Option<String>,
    #[serde(default)]
    pub(crate) mail: Option<String>,
    #[serde(default)]
    pub(crate) manager: Option<String>,
    #[serde(default)]
    pub(crate) remote_mailbox: Option<MailboxKindFx>,
    #[serde(default)]
    pub(crate) mailbox_database: Option<String>,
    /// Already exported to Entra by an earlier sync (the usual state of an existing user).
    #[serde(default = "yes")]
    pub(crate) synced: bool,
    /// Cloud licences of the synced user (by part number).
    #[serde(default)]
    pub(crate) licenses: Vec<String>,
    #[serde(default)]
    pub(crate) usage_location: Option<String>,
    #[serde(default)]
    pub(crate) auth_methods: Vec<AuthMethodFx>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AdGroupCategoryFx {
    Security,
    Distribution,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdGroupFx {
    pub(crate) name: String,
    pub(crate) ou: String,
    #[serde(default = "default_category")]
    pub(crate) category: AdGroupCategoryFx,
    /// sAMAccountNames of members.
    #[serde(default)]
    pub(crate) members: Vec<String>,
    #[serde(default = "yes")]
    pub(crate) synced: bool,
}

fn default_category() -> AdGroupCategoryFx {
    AdGroupCategoryFx::Security
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntraConnectFx {
    pub(crate) server: String,
    #[serde(default = "default_sync_duration")]
    pub(crate) sync_duration_seconds: u64,
    #[serde(default = "default_sync_interval")]
    pub(crate) interval_minutes: u64,
    #[serde(default = "yes")]
    pub(crate) scheduler_enabled: bool,
}

fn default_sync_duration() -> u64 {
    120
}

fn default_sync_interval() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExchangeModeFx {
    Hybrid,
    OnPrem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExchangeServerFx {
    pub(crate) server: String,
    pub(crate) mode: ExchangeModeFx,
    #[serde(default)]
    pub(crate) databases: Vec<String>,
    /// Kerberos delegation from the runner to the Exchange server is configured; without it an
    /// Exchange cmdlet run from a runner fails with the double-hop credential error.
    #[serde(default = "yes")]
    pub(crate) double_hop_configured: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SiteFx {
    pub(crate) uid: String,
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) devices: Vec<RmmDeviceFx>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RmmDeviceFx {
    pub(crate) uid: String,
    pub(crate) hostname: String,
    #[serde(default = "yes")]
    pub(crate) online: bool,
    #[serde(default = "default_rmm_os")]
    pub(crate) operating_system: String,
    #[serde(default)]
    pub(crate) int_ip_address: Option<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
}

fn default_rmm_os() -> String {
    "Microsoft Windows Server 2022 Standard".to_owned()
}

impl Fixture {
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                    file: file.clone(),
                    source,
                })?;
                Self::parse(&file, &text)
            }
            None => Self::parse("<built-in fixtures/msp.yaml>", DEFAULT_FIXTURE),
        }
    }

    pub(crate) fn parse(file: &str, text: &str) -> Result<Self> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let fixture: Fixture = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            Error::Parse {
                file: file.to_owned(),
                path: if path == "." {
                    "<root>".to_owned()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
        fixture.validate(file)?;
        Ok(fixture)
    }

    /// Cross-reference checks serde can't do. Each names the path and the fix.
    fn validate(&self, file: &str) -> Result<()> {
        let bad = |path: String, problem: String, fix: &str| Error::Invalid {
            file: file.to_owned(),
            path,
            problem,
            fix: fix.to_owned(),
        };
        let app_ids: HashSet<&str> = self
            .partner
            .apps
            .iter()
            .map(|a| a.client_id.as_str())
            .collect();
        for (ai, a) in self.partner.apps.iter().enumerate() {
            for (ci, c) in a.certificates.iter().enumerate() {
                if let Err(e) = crate::assertion::AppCertificate::from_pem(c) {
                    return Err(bad(
                        format!("partner.apps[{ai}].certificates[{ci}]"),
                        e,
                        "give a PEM certificate (-----BEGIN CERTIFICATE-----) with an RSA key",
                    ));
                }
            }
        }
        for (i, t) in self.partner.refresh_tokens.iter().enumerate() {
            if !app_ids.contains(t.client_id.as_str()) {
                return Err(bad(
                    format!("partner.refresh_tokens[{i}].client_id"),
                    format!("no partner app has client_id '{}'", t.client_id),
                    "use the client_id of an entry in partner.apps",
                ));
            }
        }
        if self.companies.is_empty() {
            return Err(bad(
                "companies".to_owned(),
                "no companies".to_owned(),
                "add at least one company",
            ));
        }
        let mut company_ids = HashSet::new();
        let mut device_uids = HashSet::new();
        let mut site_uids = HashSet::new();
        let mut tenant_ids = HashSet::new();
        for (ci, c) in self.companies.iter().enumerate() {
            let p = format!("companies[{ci}]");
            if c.id.is_empty()
                || !c
                    .id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                return Err(bad(
                    format!("{p}.id"),
                    format!("company id '{}' is not a plain identifier", c.id),
                    "use letters, digits, '-' or '_' (it appears in admin URLs)",
                ));
            }
            if !company_ids.insert(c.id.as_str()) {
                return Err(bad(
                    format!("{p}.id"),
                    format!("duplicate company id '{}'", c.id),
                    "give each company a unique id",
                ));
            }
            let t = &c.tenant;
            if !ids::is_guid(&t.id) {
                return Err(bad(
                    format!("{p}.tenant.id"),
                    format!("'{}' is not a GUID", t.id),
                    "use a tenant id like 3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                ));
            }
            if !tenant_ids.insert(t.id.to_ascii_lowercase()) {
                return Err(bad(
                    format!("{p}.tenant.id"),
                    "duplicate tenant id".to_owned(),
                    "each company needs its own tenant",
                ));
            }
            if !t.initial_domain.ends_with(".onmicrosoft.com") {
                return Err(bad(
                    format!("{p}.tenant.initial_domain"),
                    format!("'{}' is not an onmicrosoft.com domain", t.initial_domain),
                    "use <name>.onmicrosoft.com",
                ));
            }
            for (ai, a) in t.consented_apps.iter().enumerate() {
                let a = a.client_id();
                if !app_ids.contains(a) {
                    return Err(bad(
                        format!("{p}.tenant.consented_apps[{ai}]"),
                        format!("no partner app has client_id '{a}'"),
                        "list client ids from partner.apps",
                    ));
                }
            }
            let domains: HashSet<String> = t
                .domains
                .iter()
                .chain(std::iter::once(&t.initial_domain))
                .map(|d| d.to_ascii_lowercase())
                .collect();
            let mut skus = HashSet::new();
            for (si, s) in t.skus.iter().enumerate() {
                if !ids::is_guid(&s.sku_id) {
                    return Err(bad(
                        format!("{p}.tenant.skus[{si}].sku_id"),
                        format!("'{}' is not a GUID", s.sku_id),
                        "use the SKU's GUID (e.g. from subscribedSkus)",
                    ));
                }
                skus.insert(s.part_number.as_str());
                skus.insert(s.sku_id.as_str());
            }
            let mut upns = HashSet::new();
            let mut seat_use: Vec<(String, u32)> = Vec::new();
            let count_seat = |lic: &str, seat_use: &mut Vec<(String, u32)>| {
                let sku = t
                    .skus
                    .iter()
                    .find(|s| s.part_number == lic || s.sku_id == lic);
                if let Some(sku) = sku {
                    match seat_use.iter_mut().find(|(id, _)| *id == sku.sku_id) {
                        Some((_, n)) => *n += 1,
                        None => seat_use.push((sku.sku_id.clone(), 1)),
                    }
                }
            };
            for (ui, u) in t.users.iter().enumerate() {
                let up = format!("{p}.tenant.users[{ui}]");
                check_upn(&u.upn, &domains)
                    .map_err(|(problem, fix)| bad(format!("{up}.upn"), problem, fix))?;
                if !upns.insert(u.upn.to_ascii_lowercase()) {
                    return Err(bad(
                        format!("{up}.upn"),
                        format!("duplicate user '{}'", u.upn),
                        "each userPrincipalName must be unique in a tenant",
                    ));
                }
                for (li, l) in u.licenses.iter().enumerate() {
                    if !skus.contains(l.as_str()) {
                        return Err(bad(
                            format!("{up}.licenses[{li}]"),
                            format!("unknown SKU '{l}'"),
                            "use a part_number or sku_id from tenant.skus",
                        ));
                    }
                    if u.usage_location.is_none() {
                        return Err(bad(
                            format!("{up}.usage_location"),
                            "a licensed user needs a usage location".to_owned(),
                            "set usage_location (e.g. GB) as Entra requires for licences",
                        ));
                    }
                    count_seat(l, &mut seat_use);
                }
                if let Some(id) = &u.id {
                    if !ids::is_guid(id) {
                        return Err(bad(
                            format!("{up}.id"),
                            format!("'{id}' is not a GUID"),
                            "omit id to get a deterministic one, or give a GUID",
                        ));
                    }
                }
                for (mi, m) in u.auth_methods.iter().enumerate() {
                    if !AUTH_METHOD_KINDS.contains(&m.kind.as_str()) {
                        return Err(bad(
                            format!("{up}.auth_methods[{mi}].kind"),
                            format!("unknown method kind '{}'", m.kind),
                            &format!("use one of {}", AUTH_METHOD_KINDS.join(", ")),
                        ));
                    }
                }
                for (ri, r) in u.roles.iter().enumerate() {
                    if !crate::world::ROLE_DEFINITIONS.iter().any(|(_, n)| n == r) {
                        return Err(bad(
                            format!("{up}.roles[{ri}]"),
                            format!("unknown directory role '{r}'"),
                            "use a built-in role name such as 'User Administrator'",
                        ));
                    }
                }
            }
            // Synced users from AD count too, for manager/member references and seats.
            let mut synced_upns = HashSet::new();
            if let Some(ad) = &c.ad {
                for u in ad.users.iter().filter(|u| u.synced) {
                    synced_upns.insert(u.upn.to_ascii_lowercase());
                    for l in &u.licenses {
                        count_seat(l, &mut seat_use);
                    }
                }
            }
            for (ui, u) in t.users.iter().enumerate() {
                if let Some(m) = &u.manager {
                    let m = m.to_ascii_lowercase();
                    if !upns.contains(&m) && !synced_upns.contains(&m) {
                        return Err(bad(
                            format!("{p}.tenant.users[{ui}].manager"),
                            format!("manager '{m}' is not a user of this tenant"),
                            "name the manager by the UPN of another user",
                        ));
                    }
                }
            }
            for (sku_id, used) in &seat_use {
                if let Some((si, s)) = t.skus.iter().enumerate().find(|(_, s)| s.sku_id == *sku_id)
                {
                    if *used > s.seats {
                        return Err(bad(
                            format!("{p}.tenant.skus[{si}].seats"),
                            format!(
                                "{} seats of {} are assigned but only {} exist",
                                used, s.part_number, s.seats
                            ),
                            "raise seats or assign fewer licences",
                        ));
                    }
                }
            }
            for (gi, g) in t.groups.iter().enumerate() {
                for (mi, m) in g.members.iter().enumerate() {
                    let m = m.to_ascii_lowercase();
                    if !upns.contains(&m) && !synced_upns.contains(&m) {
                        return Err(bad(
                            format!("{p}.tenant.groups[{gi}].members[{mi}]"),
                            format!("member '{m}' is not a user of this tenant"),
                            "list members by UPN",
                        ));
                    }
                }
                if g.kind == GroupKindFx::DynamicSecurity && !g.members.is_empty() {
                    return Err(bad(
                        format!("{p}.tenant.groups[{gi}].members"),
                        "a dynamic group's members come from its rule".to_owned(),
                        "remove members or change kind",
                    ));
                }
            }
            for (di, d) in t.managed_devices.iter().enumerate() {
                let u = d.user.to_ascii_lowercase();
                if !upns.contains(&u) && !synced_upns.contains(&u) {
                    return Err(bad(
                        format!("{p}.tenant.managed_devices[{di}].user"),
                        format!("'{u}' is not a user of this tenant"),
                        "name the device's primary user by UPN",
                    ));
                }
            }
            if let Some(ad) = &c.ad {
                validate_ad(ad, &format!("{p}.ad"), &domains, &skus, &bad)?;
                if let Some(ec) = &c.entra_connect {
                    if ec.sync_duration_seconds == 0 {
                        return Err(bad(
                            format!("{p}.entra_connect.sync_duration_seconds"),
                            "a sync cycle can't take zero time".to_owned(),
                            "use at least 1 second",
                        ));
                    }
                }
            } else {
                if c.entra_connect.is_some() {
                    return Err(bad(
                        format!("{p}.entra_connect"),
                        "Entra Connect without an AD forest".to_owned(),
                        "add an `ad:` section or remove `entra_connect:`",
                    ));
                }
                if c.exchange_server.is_some() {
                    return Err(bad(
                        format!("{p}.exchange_server"),
                        "Exchange Server without an AD forest".to_owned(),
                        "add an `ad:` section or remove `exchange_server:`",
                    ));
                }
            }
            if let Some(site) = &c.rmm_site {
                if !site_uids.insert(site.uid.as_str()) {
                    return Err(bad(
                        format!("{p}.rmm_site.uid"),
                        "duplicate site uid".to_owned(),
                        "each company needs its own Datto site",
                    ));
                }
                for (di, d) in site.devices.iter().enumerate() {
                    if !device_uids.insert(d.uid.as_str()) {
                        return Err(bad(
                            format!("{p}.rmm_site.devices[{di}].uid"),
                            format!("duplicate device uid '{}'", d.uid),
                            "device uids are unique across the Datto account",
                        ));
                    }
                }
                if self.datto.is_none() {
                    return Err(bad(
                        format!("{p}.rmm_site"),
                        "an RMM site but no Datto account".to_owned(),
                        "add a top-level `datto:` section with api_key and api_secret",
                    ));
                }
            }
        }
        if let Some(at) = &self.autotask {
            let mut ticket_ids = HashSet::new();
            for (ti, t) in at.tickets.iter().enumerate() {
                if !company_ids.contains(t.company.as_str()) {
                    return Err(bad(
                        format!("autotask.tickets[{ti}].company"),
                        format!("unknown company '{}'", t.company),
                        "use the id of an entry in companies",
                    ));
                }
                if !ticket_ids.insert(t.id) {
                    return Err(bad(
                        format!("autotask.tickets[{ti}].id"),
                        format!("duplicate ticket id {}", t.id),
                        "give each ticket a unique id",
                    ));
                }
            }
        }
        if let Some(d) = &self.datto {
            if d.rate_limit_per_minute == 0 {
                return Err(bad(
                    "datto.rate_limit_per_minute".to_owned(),
                    "zero rate limit".to_owned(),
                    "use a positive number (Datto's is 600)",
                ));
            }
        }
        self.validate_spans(&bad)
    }

    /// Every span of time in the fixture is at most ten years, so the world's date arithmetic
    /// (sync cycles, job delays, token ages) can't overflow.
    fn validate_spans(&self, bad: &dyn Fn(String, String, &str) -> Error) -> Result<()> {
        const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;
        let check = |path: String, value: u64, unit: u64, unit_name: &str| {
            let max = TEN_YEARS / unit;
            if value > max {
                return Err(bad(
                    path,
                    format!("{value} {unit_name} is more than ten years"),
                    &format!("use at most {max} {unit_name}"),
                ));
            }
            Ok(())
        };
        for (i, t) in self.partner.refresh_tokens.iter().enumerate() {
            check(
                format!("partner.refresh_tokens[{i}].issued_days_ago"),
                u64::from(t.issued_days_ago),
                24 * 3600,
                "days",
            )?;
        }
        if let Some(d) = &self.datto {
            check(
                "datto.job_start_delay_seconds".to_owned(),
                d.job_start_delay_seconds,
                1,
                "seconds",
            )?;
        }
        for (ci, c) in self.companies.iter().enumerate() {
            let p = format!("companies[{ci}]");
            check(
                format!("{p}.tenant.mailbox_provisioning_delay_seconds"),
                c.tenant.mailbox_provisioning_delay_seconds,
                1,
                "seconds",
            )?;
            if let Some(ec) = &c.entra_connect {
                check(
                    format!("{p}.entra_connect.sync_duration_seconds"),
                    ec.sync_duration_seconds,
                    1,
                    "seconds",
                )?;
                check(
                    format!("{p}.entra_connect.interval_minutes"),
                    ec.interval_minutes,
                    60,
                    "minutes",
                )?;
            }
        }
        Ok(())
    }
}

pub(crate) const AUTH_METHOD_KINDS: &[&str] = &[
    "microsoftAuthenticator",
    "phone",
    "fido2",
    "softwareOath",
    "windowsHelloForBusiness",
    "email",
    "temporaryAccessPass",
];

fn check_upn(
    upn: &str,
    domains: &HashSet<String>,
) -> std::result::Result<(), (String, &'static str)> {
    let Some((local, domain)) = upn.split_once('@') else {
        return Err((
            format!("'{upn}' is not a user principal name"),
            "write it as name@domain",
        ));
    };
    if local.is_empty() || !domains.contains(&domain.to_ascii_lowercase()) {
        return Err((
            format!("domain '{domain}' is not a verified domain of the tenant"),
            "add it to tenant.domains or use tenant.initial_domain",
        ));
    }
    Ok(())
}

fn validate_ad(
    ad: &AdFx,
    p: &str,
    tenant_domains: &HashSet<String>,
    skus: &HashSet<&str>,
    bad: &dyn Fn(String, String, &str) -> Error,
) -> Result<()> {
    let base = crate::world::domain_dn(&ad.domain);
    let ous: BTreeSet<String> = ad.ous.iter().map(|o| o.to_ascii_lowercase()).collect();
    for (oi, ou) in ad.ous.iter().enumerate() {
        if !ou
            .to_ascii_lowercase()
            .ends_with(&base.to_ascii_lowercase())
        {
            return Err(bad(
                format!("{p}.ous[{oi}]"),
                format!("'{ou}' is not inside {base}"),
                "OUs are distinguished names ending in the domain's DC= components",
            ));
        }
    }
    let container_ok = |dn: &str| {
        let l = dn.to_ascii_lowercase();
        ous.contains(&l) || l == format!("cn=users,{}", base.to_ascii_lowercase())
    };
    let mut sams = HashSet::new();
    let mut upns = HashSet::new();
    for (ui, u) in ad.users.iter().enumerate() {
        let up = format!("{p}.users[{ui}]");
        if u.sam.is_empty() || u.sam.len() > 20 {
            return Err(bad(
                format!("{up}.sam"),
                format!("sAMAccountName '{}' must be 1-20 characters", u.sam),
                "shorten it",
            ));
        }
        if !sams.insert(u.sam.to_ascii_lowercase()) {
            return Err(bad(
                format!("{up}.sam"),
                format!("duplicate sAMAccountName '{}'", u.sam),
                "each sAMAccountName must be unique in the domain",
            ));
        }
        if !upns.insert(u.upn.to_ascii_lowercase()) {
            return Err(bad(
                format!("{up}.upn"),
                format!("duplicate UPN '{}'", u.upn),
                "each UPN must be unique in the forest",
            ));
        }
        if !container_ok(&u.ou) {
            return Err(bad(
                format!("{up}.ou"),
                format!("'{}' is not one of ad.ous", u.ou),
                "add the OU to ad.ous or fix the DN",
            ));
        }
        if u.synced {
            let domain = u.upn.split_once('@').map(|(_, d)| d.to_ascii_lowercase());
            if !domain.is_some_and(|d| tenant_domains.contains(&d)) {
                return Err(bad(
                    format!("{up}.upn"),
                    format!(
                        "synced user '{}' has a UPN suffix the tenant has not verified",
                        u.upn
                    ),
                    "add the suffix to tenant.domains (or set synced: false)",
                ));
            }
        }
        for (mi, m) in u.auth_methods.iter().enumerate() {
            if !AUTH_METHOD_KINDS.contains(&m.kind.as_str()) {
                return Err(bad(
                    format!("{up}.auth_methods[{mi}].kind"),
                    format!("unknown method kind '{}'", m.kind),
                    &format!("use one of {}", AUTH_METHOD_KINDS.join(", ")),
                ));
            }
            if !u.synced {
                return Err(bad(
                    format!("{up}.auth_methods"),
                    "only a synced user has a cloud account to register methods on".to_owned(),
                    "set synced: true (or remove auth_methods)",
                ));
            }
        }
        for (li, l) in u.licenses.iter().enumerate() {
            if !skus.contains(l.as_str()) {
                return Err(bad(
                    format!("{up}.licenses[{li}]"),
                    format!("unknown SKU '{l}'"),
                    "use a part_number from tenant.skus",
                ));
            }
            if !u.synced || u.usage_location.is_none() {
                return Err(bad(
                    format!("{up}.licenses"),
                    "only a synced user with a usage_location can hold cloud licences".to_owned(),
                    "set synced: true and usage_location",
                ));
            }
        }
    }
    for (ui, u) in ad.users.iter().enumerate() {
        if let Some(m) = &u.manager {
            if !sams.contains(&m.to_ascii_lowercase()) {
                return Err(bad(
                    format!("{p}.users[{ui}].manager"),
                    format!("manager '{m}' is not a sAMAccountName in this domain"),
                    "name the manager by sAMAccountName",
                ));
            }
        }
    }
    let mut names = HashSet::new();
    for (gi, g) in ad.groups.iter().enumerate() {
        if !names.insert(g.name.to_ascii_lowercase()) || sams.contains(&g.name.to_ascii_lowercase())
        {
            return Err(bad(
                format!("{p}.groups[{gi}].name"),
                format!("'{}' is already used by another object", g.name),
                "group names (sAMAccountNames) must be unique in the domain",
            ));
        }
        if !container_ok(&g.ou) {
            return Err(bad(
                format!("{p}.groups[{gi}].ou"),
                format!("'{}' is not one of ad.ous", g.ou),
                "add the OU to ad.ous",
            ));
        }
        for (mi, m) in g.members.iter().enumerate() {
            if !sams.contains(&m.to_ascii_lowercase()) {
                return Err(bad(
                    format!("{p}.groups[{gi}].members[{mi}]"),
                    format!("'{m}' is not a user of this domain"),
                    "list members by sAMAccountName",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_fixture_loads() {
        let f = Fixture::load(None).unwrap();
        assert!(f.companies.len() >= 2);
    }

    #[test]
    fn debug_never_prints_a_credential() {
        let f = Fixture::load(None).unwrap();
        let text = format!("{f:?}");
        for secret in [
            "sandbox-client-secret-steward",
            "sandbox-refresh-token-partner-tech",
            "SANDBOXDATTOKEY",
            "sandbox-datto-secret",
            "sandbox-autotask-secret",
            "SANDBOXINTEGRATIONCODE",
        ] {
            assert!(
                DEFAULT_FIXTURE.contains(secret),
                "{secret} left the fixture"
            );
            assert!(!text.contains(secret), "Debug prints {secret}");
        }
        assert!(text.contains("steward-api@examplemsp.com"));
    }

    #[test]
    fn typo_names_the_path() {
        let text = DEFAULT_FIXTURE.replacen("display_name:", "dispaly_name:", 1);
        let err = Fixture::parse("x.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("x.yaml"), "{err}");
        assert!(err.contains("dispaly_name"), "{err}");
    }

    #[test]
    fn unknown_license_names_path_and_fix() {
        let text = r#"
companies:
  - id: a
    name: A
    tenant:
      id: 3f2504e0-4f89-41d3-9a0c-0305e82c3301
      initial_domain: a.onmicrosoft.com
      users:
        - upn: x@a.onmicrosoft.com
          display_name: X
          usage_location: GB
          licenses: [NOPE]
"#;
        let err = Fixture::parse("f.yaml", text).unwrap_err().to_string();
        assert!(
            err.contains("companies[0].tenant.users[0].licenses[0]"),
            "{err}"
        );
        assert!(err.contains("fix:"), "{err}");
    }

    #[test]
    fn spans_of_time_are_at_most_ten_years() {
        for (from, to, path) in [
            (
                "sync_duration_seconds: 120",
                "sync_duration_seconds: 18446744073709551615",
                "entra_connect.sync_duration_seconds",
            ),
            (
                "interval_minutes: 30",
                "interval_minutes: 9223372036854775807",
                "entra_connect.interval_minutes",
            ),
            (
                "mailbox_provisioning_delay_seconds: 300",
                "mailbox_provisioning_delay_seconds: 100000000000000",
                "companies[0].tenant.mailbox_provisioning_delay_seconds",
            ),
        ] {
            let text = DEFAULT_FIXTURE.replacen(from, to, 1);
            assert_ne!(text, DEFAULT_FIXTURE, "the fixture no longer has '{from}'");
            let err = Fixture::parse("x.yaml", &text).unwrap_err().to_string();
            assert!(err.contains(path), "{err}");
            assert!(err.contains("ten years") && err.contains("fix:"), "{err}");
        }
        let text = DEFAULT_FIXTURE.replacen(
            "datto:\n",
            "datto:\n  job_start_delay_seconds: 9223372036854775807\n",
            1,
        );
        assert_ne!(text, DEFAULT_FIXTURE);
        let err = Fixture::parse("x.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("datto.job_start_delay_seconds"), "{err}");
    }

    #[test]
    fn unverified_domain_is_refused() {
        let text = r#"
companies:
  - id: a
    name: A
    tenant:
      id: 3f2504e0-4f89-41d3-9a0c-0305e82c3301
      initial_domain: a.onmicrosoft.com
      users:
        - upn: x@elsewhere.com
          display_name: X
"#;
        let err = Fixture::parse("f.yaml", text).unwrap_err().to_string();
        assert!(err.contains("not a verified domain"), "{err}");
    }
}
