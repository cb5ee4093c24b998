//! Permission policy: what Steward may do in a company's systems, and what needs a human's yes.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A group of ops a company's policy allows or not, as a whole.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PermissionGroup {
    /// Creating, changing, disabling and deleting users.
    Users,
    /// Passwords, sessions, MFA methods.
    PasswordsSecurity,
    /// License assignment.
    Licensing,
    /// Group membership.
    Groups,
    /// Directory role assignments.
    DirectoryRoles,
    /// Mailboxes: type, forwarding, permissions, auto-replies.
    Mailboxes,
    /// Managed and mobile devices.
    Devices,
    /// Conditional Access policies.
    ConditionalAccess,
    /// App registrations and their secrets.
    AppRegistrations,
    /// On-premises Active Directory.
    OnPremAd,
    /// On-premises Exchange Server.
    OnPremExchange,
    /// Entra Connect directory synchronisation.
    DirectorySync,
}

impl PermissionGroup {
    /// Every group.
    pub const ALL: [Self; 12] = [
        Self::Users,
        Self::PasswordsSecurity,
        Self::Licensing,
        Self::Groups,
        Self::DirectoryRoles,
        Self::Mailboxes,
        Self::Devices,
        Self::ConditionalAccess,
        Self::AppRegistrations,
        Self::OnPremAd,
        Self::OnPremExchange,
        Self::DirectorySync,
    ];

    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::PasswordsSecurity => "passwords_security",
            Self::Licensing => "licensing",
            Self::Groups => "groups",
            Self::DirectoryRoles => "directory_roles",
            Self::Mailboxes => "mailboxes",
            Self::Devices => "devices",
            Self::ConditionalAccess => "conditional_access",
            Self::AppRegistrations => "app_registrations",
            Self::OnPremAd => "on_prem_ad",
            Self::OnPremExchange => "on_prem_exchange",
            Self::DirectorySync => "directory_sync",
        }
    }
}

impl fmt::Display for PermissionGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How far a group is allowed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing in the group may run.
    Disabled,
    /// Reads only.
    ReadOnly,
    /// Reads and writes.
    ReadWrite,
}

impl Level {
    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::ReadOnly => "read_only",
            Self::ReadWrite => "read_write",
        }
    }
}

/// One group's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSetting {
    /// How far the group is allowed.
    pub level: Level,
    /// Whether its writes wait for an approver's yes.
    #[serde(default)]
    pub requires_approval: bool,
}

impl GroupSetting {
    const fn new(level: Level, requires_approval: bool) -> Self {
        Self {
            level,
            requires_approval,
        }
    }
}

/// A quick-start profile: a setting for every group at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Everything read-only.
    #[default]
    ReadOnly,
    /// Day-to-day helpdesk work: users, passwords, groups, mailboxes and on-prem AD/Exchange;
    /// licensing with approval; devices read-only; roles, Conditional Access and apps off.
    Helpdesk,
    /// Everything read-write; directory roles, Conditional Access and app registrations with
    /// approval.
    ItAdmin,
    /// Everything read-write without approval (ops that always need approval still do).
    FullAutomation,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Self; 4] = [
        Self::ReadOnly,
        Self::Helpdesk,
        Self::ItAdmin,
        Self::FullAutomation,
    ];

    /// The name as written in settings.
    pub fn name(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::Helpdesk => "helpdesk",
            Self::ItAdmin => "it_admin",
            Self::FullAutomation => "full_automation",
        }
    }

    /// The profile's setting for a group.
    pub fn setting(self, group: PermissionGroup) -> GroupSetting {
        use Level::{Disabled, ReadOnly, ReadWrite};
        use PermissionGroup as G;
        match self {
            Self::ReadOnly => GroupSetting::new(ReadOnly, false),
            Self::Helpdesk => match group {
                G::Users
                | G::PasswordsSecurity
                | G::Groups
                | G::Mailboxes
                | G::OnPremAd
                | G::OnPremExchange
                | G::DirectorySync => GroupSetting::new(ReadWrite, false),
                G::Licensing => GroupSetting::new(ReadWrite, true),
                G::Devices => GroupSetting::new(ReadOnly, false),
                G::DirectoryRoles | G::ConditionalAccess | G::AppRegistrations => {
                    GroupSetting::new(Disabled, false)
                }
            },
            Self::ItAdmin => match group {
                G::DirectoryRoles | G::ConditionalAccess | G::AppRegistrations => {
                    GroupSetting::new(ReadWrite, true)
                }
                _ => GroupSetting::new(ReadWrite, false),
            },
            Self::FullAutomation => GroupSetting::new(ReadWrite, false),
        }
    }
}

/// A company's permission policy: a profile, and per-group settings that override it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// The quick-start profile.
    #[serde(default)]
    pub profile: Profile,
    /// Settings that differ from the profile's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub groups: BTreeMap<PermissionGroup, GroupSetting>,
}

impl Permissions {
    /// The setting in force for a group.
    pub fn setting(&self, group: PermissionGroup) -> GroupSetting {
        self.groups
            .get(&group)
            .copied()
            .unwrap_or_else(|| self.profile.setting(group))
    }

    /// A policy of one profile.
    pub fn profile(profile: Profile) -> Self {
        Self {
            profile,
            groups: BTreeMap::new(),
        }
    }
}
