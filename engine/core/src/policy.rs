//! The permission policy, applied: what a company's policy says about an op, the plan-time check
//! that refuses a workflow or inserts the approval gate, and where each op will act.

use std::fmt;

use steward_schemas::{
    ApprovalRule, Approvers, Company, GateSpec, IdentityProvider, Level, MailboxProvider, OnExpiry,
    OnFailure, OpAccess, OpSpec, Permissions, StepDef, System, WorkflowDef,
};

use crate::plan::{Catalog, GATE_OP};

/// What a policy says about an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It may run.
    Allowed,
    /// It may run once an approver says yes.
    NeedsApproval {
        /// Why, for the approver.
        reason: String,
    },
    /// It may not run.
    Refused {
        /// Why, and what would allow it.
        reason: String,
    },
}

/// Judges `spec` under `permissions` (for company `company`, named in reasons).
pub fn judge(spec: &OpSpec, permissions: &Permissions, company: &str) -> Verdict {
    let group = spec.group;
    if spec.approval == ApprovalRule::Blocked {
        return Verdict::Refused {
            reason: format!(
                "`{}` is never allowed: Steward does not {}",
                spec.name, spec.summary
            ),
        };
    }
    let setting = permissions.setting(group);
    match (setting.level, spec.access) {
        (Level::Disabled, _) => {
            return Verdict::Refused {
                reason: format!(
                    "the `{group}` permission group is disabled for company `{company}`; an admin can enable it in the company's permissions"
                ),
            };
        }
        (Level::ReadOnly, OpAccess::Write) => {
            return Verdict::Refused {
                reason: format!(
                    "the `{group}` permission group is read-only for company `{company}` and `{}` writes; an admin can make it read-write",
                    spec.name
                ),
            };
        }
        (Level::ReadOnly | Level::ReadWrite, _) => {}
    }
    if spec.approval == ApprovalRule::Always {
        return Verdict::NeedsApproval {
            reason: format!("`{}` always needs approval", spec.name),
        };
    }
    if setting.requires_approval && spec.access == OpAccess::Write {
        return Verdict::NeedsApproval {
            reason: format!(
                "the `{group}` permission group requires approval for company `{company}`"
            ),
        };
    }
    Verdict::Allowed
}

/// A workflow a company's policy does not allow: every step it refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyRefusal {
    /// The company.
    pub company: String,
    /// (step, op, group, reason) for every refused step.
    pub steps: Vec<RefusedStep>,
}

/// One step a policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedStep {
    /// The step.
    pub step: String,
    /// Its op.
    pub op: String,
    /// The op's permission group.
    pub group: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for PolicyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "company `{}`'s policy refuses this workflow:",
            self.company
        )?;
        for s in &self.steps {
            write!(
                f,
                "\n  step `{}` (op `{}`, group `{}`): {}",
                s.step, s.op, s.group, s.reason
            )?;
        }
        Ok(())
    }
}

/// The id of the gate the policy inserts.
pub const POLICY_GATE: &str = "policy_approval";

/// How long the inserted gate waits for a decision.
pub const POLICY_GATE_EXPIRY: steward_schemas::Dur = steward_schemas::Dur::secs(72 * 3600);

/// Applies a company's policy to a workflow at plan time: refuses it if any step's op is refused
/// (naming the step, op, group and company), and otherwise inserts one approval gate
/// (`policy_approval`) that every step needing approval waits for. Returns the definition to run.
pub fn apply_policy(
    def: &WorkflowDef,
    company: &Company,
    catalog: &dyn Catalog,
) -> Result<WorkflowDef, PolicyRefusal> {
    let mut refused = Vec::new();
    let mut gated: Vec<(usize, String)> = Vec::new();
    for (i, step) in def.steps.iter().enumerate() {
        let Some(op) = step.op.as_deref() else {
            continue;
        };
        let Some(spec) = catalog.op(op) else { continue };
        match judge(spec, &company.permissions, company.id.as_str()) {
            Verdict::Allowed => {}
            Verdict::NeedsApproval { reason } => gated.push((i, reason)),
            Verdict::Refused { reason } => refused.push(RefusedStep {
                step: step.id.clone(),
                op: op.to_owned(),
                group: spec.group.to_string(),
                reason,
            }),
        }
    }
    if !refused.is_empty() {
        return Err(PolicyRefusal {
            company: company.id.to_string(),
            steps: refused,
        });
    }
    if gated.is_empty() {
        return Ok(def.clone());
    }
    let mut out = def.clone();
    let mut id = POLICY_GATE.to_owned();
    while out.steps.iter().any(|s| s.id == id) {
        id.push('_');
    }
    let reasons: Vec<String> = gated
        .iter()
        .map(|(i, reason)| format!("{} ({reason})", def.steps[*i].id))
        .collect();
    for (i, _) in &gated {
        out.steps[*i].needs.push(id.clone());
    }
    out.steps.insert(
        0,
        StepDef {
            id,
            op: None,
            gate: Some(GateSpec {
                approvers: Approvers::COMPANY,
                quorum: 1,
                expires_in: Some(POLICY_GATE_EXPIRY),
                on_expiry: OnExpiry::Reject,
                escalate_to: None,
                escalate_expires_in: None,
                message: format!(
                    "Company policy asks for approval before: {}",
                    reasons.join("; ")
                ),
            }),
            description: "approval required by the company's permission policy".to_owned(),
            needs: Vec::new(),
            with: serde_json::Map::new(),
            when: None,
            retry: None,
            timeout: None,
            on_failure: Some(OnFailure::Pause),
            max_wait: None,
        },
    );
    Ok(out)
}

/// Where an op acts for a company: the system and the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// The system, for people (`Active Directory`, `Exchange Online`).
    pub system: String,
    /// The host or service it is reached through.
    pub host: String,
}

/// Routes an op to the system and host it acts on for `company`.
pub fn route(op: &str, spec: Option<&OpSpec>, company: &Company) -> Target {
    if op == GATE_OP {
        return Target {
            system: "Steward".to_owned(),
            host: "approval gate".to_owned(),
        };
    }
    let tenant = company.tenant_id.as_deref().unwrap_or("(no tenant id)");
    let graph = || Target {
        system: "Entra ID".to_owned(),
        host: format!("graph.microsoft.com, tenant {tenant}"),
    };
    let ad = || Target {
        system: "Active Directory".to_owned(),
        host: match &company.ad_runner {
            Some(h) => format!("{h} (AD runner, via RMM)"),
            None => "(no AD runner configured)".to_owned(),
        },
    };
    let exchange_server = || Target {
        system: "Exchange Server".to_owned(),
        host: match (&company.exchange_runner, &company.exchange_server) {
            (Some(r), Some(s)) => format!("{r} (runner, via RMM) → {s}"),
            (None, Some(s)) => format!("{s} (via RMM)"),
            _ => "(no Exchange server configured)".to_owned(),
        },
    };
    let Some(spec) = spec else {
        return Target {
            system: "unknown".to_owned(),
            host: format!("(op `{op}` is not in this Steward's catalog)"),
        };
    };
    match spec.system {
        System::Directory => match company.identity_provider {
            IdentityProvider::EntraId => graph(),
            IdentityProvider::OnPremAd => ad(),
            IdentityProvider::Hybrid => {
                let mut t = ad();
                if let Some(sync) = &company.entra_connect_server {
                    t.host
                        .push_str(&format!(", then synced to Entra ID by {sync}"));
                }
                t
            }
            IdentityProvider::HybridNoSync => Target {
                system: "Active Directory and Entra ID".to_owned(),
                host: format!("{} and graph.microsoft.com, tenant {tenant}", ad().host),
            },
        },
        System::Mail => match company.mailbox_provider {
            MailboxProvider::ExchangeOnline | MailboxProvider::ExchangeHybrid => Target {
                system: "Exchange Online".to_owned(),
                host: format!("outlook.office365.com, tenant {tenant}"),
            },
            MailboxProvider::ExchangeServer => exchange_server(),
        },
        System::EntraId => graph(),
        System::Intune => Target {
            system: "Intune".to_owned(),
            host: format!("graph.microsoft.com, tenant {tenant}"),
        },
        System::ActiveDirectory => ad(),
        System::ExchangeServer => exchange_server(),
        System::EntraConnect => Target {
            system: "Entra Connect".to_owned(),
            host: company
                .entra_connect_server
                .as_ref()
                .map_or("(no Entra Connect server configured)".to_owned(), |h| {
                    format!("{h} (via RMM)")
                }),
        },
        System::Steward => Target {
            system: "Steward".to_owned(),
            host: "built-in".to_owned(),
        },
    }
}
