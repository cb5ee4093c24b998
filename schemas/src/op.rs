//! What the op registry says about each op.

use serde::Serialize;

use crate::policy::PermissionGroup;

/// A registry entry: what an op takes and gives, and how its changes are undone.
#[derive(Debug, Clone, Serialize)]
pub struct OpSpec {
    /// The op's name, e.g. `user.create`.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Whether it reads or writes.
    pub access: OpAccess,
    /// The permission group a company's policy allows it by.
    pub group: PermissionGroup,
    /// Whether it needs approval whatever the policy says, or is never allowed.
    pub approval: ApprovalRule,
    /// The system it acts on (resolved to a host per company when a run is planned).
    pub system: System,
    /// How a succeeded run of it is undone.
    pub reversibility: Reversibility,
    /// Its inputs (`with:` keys).
    pub inputs: &'static [OpField],
    /// The fields of its output, or `None` when the output's shape is free-form.
    pub outputs: Option<&'static [OpField]>,
    /// Internal ops (inverses used by rollback) cannot be used in a workflow.
    pub internal: bool,
}

impl OpSpec {
    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&OpField> {
        self.inputs.iter().find(|f| f.name == name)
    }

    /// Whether the output can have a field named `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.outputs
            .is_none_or(|fields| fields.iter().any(|f| f.name == name))
    }
}

/// One input or output field of an op.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OpField {
    /// The field's name.
    pub name: &'static str,
    /// Whether a workflow must set it.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

impl OpField {
    /// A required field.
    pub const fn required(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            required: true,
            description,
        }
    }

    /// An optional field.
    pub const fn optional(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            required: false,
            description,
        }
    }
}

/// Whether an op reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpAccess {
    /// Changes nothing.
    Read,
    /// Changes something.
    Write,
}

/// How a succeeded run of an op is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reversibility {
    /// Nothing to undo.
    NotNeeded,
    /// The op records an inverse that rollback runs.
    Reversible,
    /// The change cannot be undone (a password reset, a device wipe); rollback lists it.
    Irreversible,
}

/// Whether an op needs approval whatever the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalRule {
    /// As the company's policy for the op's group says.
    Policy,
    /// Always: deleting users, wiping devices, assigning directory roles, destructive
    /// Conditional Access changes.
    Always,
    /// Never allowed, by any policy: deleting a domain, deleting a device.
    Blocked,
}

/// The system an op acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// The company's user directory: Entra ID, Active Directory, or both, by identity provider.
    Directory,
    /// The company's mail system: Exchange Online or Exchange Server, by mailbox provider.
    Mail,
    /// Entra ID through Microsoft Graph (licenses, roles, Conditional Access, apps, MFA).
    EntraId,
    /// Intune through Microsoft Graph.
    Intune,
    /// Active Directory, through the AD runner.
    ActiveDirectory,
    /// Exchange Server, through its runner or on the server.
    ExchangeServer,
    /// The Entra Connect server.
    EntraConnect,
    /// Nothing outside Steward (test ops).
    Steward,
}
