//! Technicians and their API tokens.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::id::{CompanyId, TechnicianId, TokenId};
use crate::time::Timestamp;

/// A technician of the MSP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Technician {
    /// The technician's id.
    pub id: TechnicianId,
    /// Their email (lowercase): how approver lists and run history name them.
    pub email: String,
    /// Their name.
    pub name: String,
    /// What they may administer.
    pub role: Role,
    /// The companies they may act on.
    pub companies: CompanyScope,
    /// A disabled technician's tokens are refused.
    #[serde(default)]
    pub disabled: bool,
    /// When they were added.
    pub created_at: Timestamp,
}

impl Technician {
    /// Whether they may act on `company`.
    pub fn may_access(&self, company: &CompanyId) -> bool {
        match &self.companies {
            CompanyScope::All(_) => true,
            CompanyScope::Only(list) => list.contains(company),
        }
    }
}

/// A technician's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages technicians, tokens and companies, and everything a technician does.
    Admin,
    /// Starts, watches, approves and controls runs of their companies.
    Technician,
}

/// The companies a technician may act on: `"all"` or a list of ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CompanyScope {
    /// Every company.
    All(AllCompanies),
    /// Only these.
    Only(Vec<CompanyId>),
}

/// The word `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllCompanies {
    /// Every company.
    All,
}

impl CompanyScope {
    /// Every company.
    pub const ALL: Self = Self::All(AllCompanies::All);
}

/// An API token's record (the token itself is shown once and stored only as a hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// The token's id.
    pub id: TokenId,
    /// Whose it is.
    pub technician: TechnicianId,
    /// What it is for ("laptop", "PSA integration").
    pub name: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}
