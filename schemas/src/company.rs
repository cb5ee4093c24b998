//! Companies: the MSP's clients, and how Steward reaches their systems.

use schemars::JsonSchema;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::id::CompanyId;
use crate::policy::Permissions;

/// An MSP client company.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Company {
    /// The company's id, chosen by the MSP (`contoso`).
    pub id: CompanyId,
    /// Its name.
    pub name: String,
    /// Its Microsoft Entra tenant id (a GUID); needed for Entra ID and Exchange Online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Where its users live.
    pub identity_provider: IdentityProvider,
    /// Where its mailboxes live.
    pub mailbox_provider: MailboxProvider,
    /// The machine that runs Active Directory scripts (the DC, or a runner with RSAT), as named in
    /// the RMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ad_runner: Option<String>,
    /// The Entra Connect server, as named in the RMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entra_connect_server: Option<String>,
    /// The Exchange server, as named in the RMM (or reachable from the Exchange runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_server: Option<String>,
    /// A runner that reaches the Exchange server by PowerShell remoting, when the server has no
    /// RMM agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_runner: Option<String>,
    /// The RMM that runs its on-premises scripts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmm: Option<RmmLink>,
    /// Its company in the MSP's PSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psa: Option<PsaLink>,
    /// Defaults for new users.
    #[serde(default)]
    pub defaults: CompanyDefaults,
    /// Technicians (emails) who approve its gated steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// What Steward may do in its systems.
    #[serde(default)]
    pub permissions: Permissions,
    /// Free text shown to approvers and written to tickets (e.g. "never license before HR signs").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub custom_instructions: String,
    /// Anything else workflows read as `company.settings.…`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub settings: Map<String, Value>,
}

/// Where a company's users live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityProvider {
    /// Entra ID only (cloud).
    EntraId,
    /// On-premises Active Directory only.
    OnPremAd,
    /// AD synchronised to Entra ID by Entra Connect.
    Hybrid,
    /// AD and Entra ID, not synchronised: changes go to both.
    HybridNoSync,
}

impl IdentityProvider {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::EntraId => "entra_id",
            Self::OnPremAd => "on_prem_ad",
            Self::Hybrid => "hybrid",
            Self::HybridNoSync => "hybrid_no_sync",
        }
    }

    /// Every value.
    pub const ALL: [Self; 4] = [
        Self::EntraId,
        Self::OnPremAd,
        Self::Hybrid,
        Self::HybridNoSync,
    ];
}

/// Where a company's mailboxes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MailboxProvider {
    /// Exchange Online.
    ExchangeOnline,
    /// On-premises Exchange Server.
    ExchangeServer,
    /// Exchange hybrid: on-premises Exchange managing remote mailboxes in Exchange Online.
    ExchangeHybrid,
}

impl MailboxProvider {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExchangeOnline => "exchange_online",
            Self::ExchangeServer => "exchange_server",
            Self::ExchangeHybrid => "exchange_hybrid",
        }
    }

    /// Every value.
    pub const ALL: [Self; 3] = [
        Self::ExchangeOnline,
        Self::ExchangeServer,
        Self::ExchangeHybrid,
    ];
}

/// A company's site in the MSP's RMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RmmLink {
    /// Which RMM.
    pub provider: RmmProvider,
    /// The company's site id in it.
    pub site: String,
}

/// An RMM platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RmmProvider {
    /// Datto RMM.
    Datto,
    /// NinjaOne.
    Ninjaone,
    /// ConnectWise Automate.
    ConnectwiseAutomate,
}

impl RmmProvider {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Datto => "datto",
            Self::Ninjaone => "ninjaone",
            Self::ConnectwiseAutomate => "connectwise_automate",
        }
    }

    /// Every value.
    pub const ALL: [Self; 3] = [Self::Datto, Self::Ninjaone, Self::ConnectwiseAutomate];
}

/// A company's record in the MSP's PSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PsaLink {
    /// Which PSA.
    pub provider: PsaProvider,
    /// The company's id in it.
    pub company_id: String,
}

/// A PSA platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PsaProvider {
    /// Autotask (Datto PSA).
    Autotask,
    /// ConnectWise PSA (Manage).
    Connectwise,
    /// HaloPSA.
    Halopsa,
}

impl PsaProvider {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Autotask => "autotask",
            Self::Connectwise => "connectwise",
            Self::Halopsa => "halopsa",
        }
    }

    /// Every value.
    pub const ALL: [Self; 3] = [Self::Autotask, Self::Connectwise, Self::Halopsa];
}

/// Defaults for new users.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyDefaults {
    /// The UPN and mail domain (`contoso.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upn_domain: Option<String>,
    /// The usage location (ISO 3166-1 alpha-2, e.g. `GB`): Microsoft refuses licenses without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_location: Option<String>,
    /// The OU new AD users go to (`OU=Users,OU=Contoso,DC=contoso,DC=local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ou: Option<String>,
    /// How usernames are made from names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_format: Option<UsernameFormat>,
    /// Workflow inputs this company uses when a run does not give them, by input name (e.g.
    /// `wipe_devices: true`, `delete_after_days: 30`): they replace the workflow's own default,
    /// and are shown in the plan approvers see.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Value>,
}

/// How a username is made from a first and last name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UsernameFormat {
    /// `jane.doe`
    #[serde(rename = "first.last")]
    FirstDotLast,
    /// `jdoe`
    #[serde(rename = "flast")]
    FLast,
    /// `janed`
    #[serde(rename = "firstl")]
    FirstL,
    /// `jane`
    #[serde(rename = "first")]
    First,
    /// `jane_doe`
    #[serde(rename = "first_last")]
    FirstUnderscoreLast,
    /// `doej`
    #[serde(rename = "lastf")]
    LastF,
}

impl UsernameFormat {
    /// Every value with its name.
    pub const ALL: [(Self, &'static str); 6] = [
        (Self::FirstDotLast, "first.last"),
        (Self::FLast, "flast"),
        (Self::FirstL, "firstl"),
        (Self::First, "first"),
        (Self::FirstUnderscoreLast, "first_last"),
        (Self::LastF, "lastf"),
    ];

    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("first.last", |(_, n)| n)
    }
}
