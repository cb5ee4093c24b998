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
                expires_in: Some(crate::machine::DEFAULT_GATE_EXPIRY),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Catalog;
    use steward_schemas::{GroupSetting, OpField, PermissionGroup, Profile, Reversibility};

    fn spec(
        name: &'static str,
        group: PermissionGroup,
        access: OpAccess,
        approval: ApprovalRule,
    ) -> OpSpec {
        OpSpec {
            name,
            summary: "do something",
            access,
            group,
            approval,
            system: System::Directory,
            reversibility: Reversibility::Reversible,
            inputs: &[],
            outputs: Some(&[] as &[OpField]),
            internal: false,
        }
    }

    fn expected(profile: Profile, group: PermissionGroup, access: OpAccess) -> &'static str {
        use PermissionGroup as G;
        let (level, approval) = match profile {
            Profile::ReadOnly => (Level::ReadOnly, false),
            Profile::Helpdesk => match group {
                G::Users
                | G::PasswordsSecurity
                | G::Groups
                | G::Mailboxes
                | G::OnPremAd
                | G::OnPremExchange
                | G::DirectorySync => (Level::ReadWrite, false),
                G::Licensing => (Level::ReadWrite, true),
                G::Devices => (Level::ReadOnly, false),
                G::DirectoryRoles | G::ConditionalAccess | G::AppRegistrations => {
                    (Level::Disabled, false)
                }
            },
            Profile::ItAdmin => match group {
                G::DirectoryRoles | G::ConditionalAccess | G::AppRegistrations => {
                    (Level::ReadWrite, true)
                }
                _ => (Level::ReadWrite, false),
            },
            Profile::FullAutomation => (Level::ReadWrite, false),
        };
        match (level, access) {
            (Level::Disabled, _) | (Level::ReadOnly, OpAccess::Write) => "refused",
            (_, OpAccess::Write) if approval => "approval",
            _ => "allowed",
        }
    }

    fn outcome(v: &Verdict) -> &'static str {
        match v {
            Verdict::Allowed => "allowed",
            Verdict::NeedsApproval { .. } => "approval",
            Verdict::Refused { .. } => "refused",
        }
    }

    #[test]
    fn every_profile_against_every_group_reads_and_writes() {
        for profile in Profile::ALL {
            let perms = Permissions::profile(profile);
            for group in PermissionGroup::ALL {
                for access in [OpAccess::Read, OpAccess::Write] {
                    let v = judge(
                        &spec("x.op", group, access, ApprovalRule::Policy),
                        &perms,
                        "contoso",
                    );
                    assert_eq!(
                        outcome(&v),
                        expected(profile, group, access),
                        "{profile:?} {group} {access:?}: {v:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn always_approval_and_blocked_ops_cannot_be_unlocked() {
        for profile in Profile::ALL {
            let mut perms = Permissions::profile(profile);
            // Even with every group read-write and no approval asked.
            for g in PermissionGroup::ALL {
                perms.groups.insert(
                    g,
                    GroupSetting {
                        level: Level::ReadWrite,
                        requires_approval: false,
                    },
                );
            }
            for group in PermissionGroup::ALL {
                let delete_domain = judge(
                    &spec(
                        "domain.delete",
                        group,
                        OpAccess::Write,
                        ApprovalRule::Blocked,
                    ),
                    &perms,
                    "c",
                );
                assert!(
                    matches!(&delete_domain, Verdict::Refused { reason } if reason.contains("never allowed")),
                    "{delete_domain:?}"
                );
                let wipe = judge(
                    &spec("device.wipe", group, OpAccess::Write, ApprovalRule::Always),
                    &perms,
                    "c",
                );
                assert!(
                    matches!(&wipe, Verdict::NeedsApproval { reason } if reason.contains("always needs approval")),
                    "{wipe:?}"
                );
            }
        }
        // A disabled group still refuses an always-approval op (approval cannot unlock it).
        let perms = Permissions::profile(Profile::Helpdesk);
        let role = judge(
            &spec(
                "role.assign",
                PermissionGroup::DirectoryRoles,
                OpAccess::Write,
                ApprovalRule::Always,
            ),
            &perms,
            "contoso",
        );
        assert!(
            matches!(&role, Verdict::Refused { reason } if reason.contains("`directory_roles` permission group is disabled for company `contoso`")),
            "{role:?}"
        );
    }

    #[test]
    fn overrides_beat_the_profile_and_reasons_say_what_to_change() {
        let mut perms = Permissions::profile(Profile::FullAutomation);
        perms.groups.insert(
            PermissionGroup::Licensing,
            GroupSetting {
                level: Level::ReadOnly,
                requires_approval: false,
            },
        );
        let v = judge(
            &spec(
                "license.assign",
                PermissionGroup::Licensing,
                OpAccess::Write,
                ApprovalRule::Policy,
            ),
            &perms,
            "fabrikam",
        );
        let Verdict::Refused { reason } = v else {
            panic!("{v:?}")
        };
        assert!(
            reason.contains("read-only for company `fabrikam`")
                && reason.contains("license.assign"),
            "{reason}"
        );
    }

    struct Cat(Vec<OpSpec>);

    impl Catalog for Cat {
        fn op(&self, name: &str) -> Option<&OpSpec> {
            self.0.iter().find(|s| s.name == name)
        }
        fn op_names(&self) -> Vec<&'static str> {
            self.0.iter().map(|s| s.name).collect()
        }
    }

    fn company(profile: Profile) -> Company {
        serde_json::from_value(serde_json::json!({
            "id": "contoso", "name": "Contoso", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
            "identity_provider": "entra_id", "mailbox_provider": "exchange_online",
            "permissions": {"profile": profile.name()}
        }))
        .unwrap()
    }

    #[test]
    fn plans_are_refused_with_names_or_gated_before_what_needs_approval() {
        let cat = Cat(vec![
            spec(
                "user.create",
                PermissionGroup::Users,
                OpAccess::Write,
                ApprovalRule::Policy,
            ),
            spec(
                "license.assign",
                PermissionGroup::Licensing,
                OpAccess::Write,
                ApprovalRule::Policy,
            ),
            spec(
                "role.assign",
                PermissionGroup::DirectoryRoles,
                OpAccess::Write,
                ApprovalRule::Always,
            ),
        ]);
        let def: WorkflowDef = serde_json::from_value(serde_json::json!({
            "name": "onboard",
            "steps": [
                {"id": "create", "op": "user.create"},
                {"id": "license", "op": "license.assign", "needs": ["create"]},
                {"id": "admin", "op": "role.assign", "needs": ["create"]}
            ]
        }))
        .unwrap();
        let refusal = apply_policy(&def, &company(Profile::Helpdesk), &cat).unwrap_err();
        let text = refusal.to_string();
        assert!(
            text.contains("step `admin` (op `role.assign`, group `directory_roles`)")
                && text.contains("company `contoso`"),
            "{text}"
        );
        assert_eq!(refusal.steps.len(), 1);

        let gated = apply_policy(&def, &company(Profile::ItAdmin), &cat).unwrap();
        assert_eq!(gated.steps[0].id, POLICY_GATE);
        assert!(
            gated.steps[0]
                .gate
                .as_ref()
                .unwrap()
                .message
                .contains("admin (`role.assign` always needs approval)")
        );
        let admin = gated.steps.iter().find(|s| s.id == "admin").unwrap();
        assert!(admin.needs.contains(&POLICY_GATE.to_owned()));
        let license = gated.steps.iter().find(|s| s.id == "license").unwrap();
        assert!(
            !license.needs.contains(&POLICY_GATE.to_owned()),
            "it_admin licenses without approval"
        );

        let ungated = apply_policy(
            &def,
            &company(Profile::FullAutomation),
            &Cat(cat.0[..2].to_vec()),
        )
        .unwrap();
        assert_eq!(ungated, {
            let mut d = def;
            d.steps.truncate(3);
            d
        });
    }
}
