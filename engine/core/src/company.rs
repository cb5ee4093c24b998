//! Checking a company's settings: every problem names the field and the fix.
//!
//! Approvers are real: a company's approvers, and the approvers and escalation targets of the
//! gates its runs go through, must be enabled technicians. [`Directory`] is the technicians as
//! these checks see them (read by the caller); [`approver_problems`] checks a company when it is
//! saved, [`gate_problems`] a run's gates when it is planned (a gate nobody could decide is
//! refused then), and [`named_approver_problems`] a workflow's named lists when it is loaded.

use std::collections::BTreeMap;

use steward_schemas::{
    Approvers, Company, IdentityProvider, MailboxProvider, OnExpiry, Role, Technician,
    Unavailability, UnavailableApprover, WorkflowDef,
};

use crate::text::{is_domain, is_email, is_hostname, normalize_email, normalize_emails};

/// One problem with a company's settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldProblem {
    /// The field (`tenant_id`, `defaults.usage_location`).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

fn problem(field: &str, message: impl Into<String>, fix: impl Into<String>) -> FieldProblem {
    FieldProblem {
        field: field.to_owned(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// Tidies what people type: trims, lowercases emails and tenant ids, uppercases the usage
/// location, drops empty optional values and duplicate approvers.
pub fn normalize(c: &mut Company) {
    c.name = c.name.trim().to_owned();
    let tidy = |v: &mut Option<String>| {
        if let Some(s) = v {
            *s = s.trim().to_owned();
            if s.is_empty() {
                *v = None;
            }
        }
    };
    tidy(&mut c.tenant_id);
    tidy(&mut c.ad_runner);
    tidy(&mut c.entra_connect_server);
    tidy(&mut c.exchange_server);
    tidy(&mut c.exchange_runner);
    tidy(&mut c.defaults.upn_domain);
    tidy(&mut c.defaults.usage_location);
    tidy(&mut c.defaults.ou);
    if let Some(t) = &mut c.tenant_id {
        *t = t.to_lowercase();
    }
    if let Some(d) = &mut c.defaults.upn_domain {
        *d = d.to_lowercase();
    }
    if let Some(u) = &mut c.defaults.usage_location {
        *u = u.to_uppercase();
    }
    c.approvers = normalize_emails(&c.approvers);
    c.custom_instructions = c.custom_instructions.trim().to_owned();
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Every problem with a company's settings (after [`normalize`]).
pub fn validate(c: &Company) -> Vec<FieldProblem> {
    let mut out = Vec::new();
    if c.name.is_empty() || c.name.chars().count() > 200 || c.name.chars().any(char::is_control) {
        out.push(problem(
            "name",
            "a name of 1 to 200 printable characters is required",
            "give the company's name",
        ));
    }
    let idp = c.identity_provider;
    let mbx = c.mailbox_provider;
    let cloud_identity = matches!(
        idp,
        IdentityProvider::EntraId | IdentityProvider::Hybrid | IdentityProvider::HybridNoSync
    );
    let cloud_mail = matches!(
        mbx,
        MailboxProvider::ExchangeOnline | MailboxProvider::ExchangeHybrid
    );
    match &c.tenant_id {
        Some(t) if !is_guid(t) => out.push(problem(
            "tenant_id",
            format!("`{t}` is not a tenant id"),
            "use the Entra tenant's id, a GUID such as 8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10 (Entra admin center → Overview)",
        )),
        None if cloud_identity || cloud_mail => out.push(problem(
            "tenant_id",
            format!(
                "required when the identity provider is {} or the mailbox provider is {}",
                idp.name(),
                mbx.name()
            ),
            "add the company's Entra tenant id (a GUID)",
        )),
        _ => {}
    }
    let on_prem_ad = matches!(
        idp,
        IdentityProvider::OnPremAd | IdentityProvider::Hybrid | IdentityProvider::HybridNoSync
    );
    let hosts = [
        ("ad_runner", &c.ad_runner),
        ("entra_connect_server", &c.entra_connect_server),
        ("exchange_server", &c.exchange_server),
        ("exchange_runner", &c.exchange_runner),
    ];
    for (field, host) in hosts {
        if let Some(h) = host
            && !is_hostname(h)
        {
            out.push(problem(
                field,
                format!("`{h}` is not a hostname"),
                "write the device's name exactly as the RMM shows it (letters, digits and `-`, e.g. DC01)",
            ));
        }
    }
    if on_prem_ad && c.ad_runner.is_none() {
        out.push(problem(
            "ad_runner",
            format!("required when the identity provider is {}", idp.name()),
            "name the machine that runs AD scripts: the domain controller, or a runner with RSAT AD tools, as named in the RMM",
        ));
    }
    if !on_prem_ad && c.ad_runner.is_some() {
        out.push(problem(
            "ad_runner",
            "set, but the identity provider is entra_id (no Active Directory)",
            "remove it, or choose on_prem_ad, hybrid or hybrid_no_sync",
        ));
    }
    match (idp, &c.entra_connect_server) {
        (IdentityProvider::Hybrid, None) => out.push(problem(
            "entra_connect_server",
            "required when the identity provider is hybrid (changes made in AD reach Entra ID by a sync it runs)",
            "name the Entra Connect server as the RMM shows it",
        )),
        (IdentityProvider::EntraId | IdentityProvider::OnPremAd | IdentityProvider::HybridNoSync, Some(_)) => {
            out.push(problem(
                "entra_connect_server",
                format!("set, but the identity provider is {} (nothing is synchronised)", idp.name()),
                "remove it, or choose hybrid",
            ));
        }
        _ => {}
    }
    let on_prem_mail = matches!(
        mbx,
        MailboxProvider::ExchangeServer | MailboxProvider::ExchangeHybrid
    );
    if on_prem_mail && c.exchange_server.is_none() {
        out.push(problem(
            "exchange_server",
            format!("required when the mailbox provider is {}", mbx.name()),
            "name the Exchange server",
        ));
    }
    if !on_prem_mail {
        for (field, v) in [
            ("exchange_server", &c.exchange_server),
            ("exchange_runner", &c.exchange_runner),
        ] {
            if v.is_some() {
                out.push(problem(
                    field,
                    "set, but the mailbox provider is exchange_online",
                    "remove it, or choose exchange_server or exchange_hybrid",
                ));
            }
        }
    }
    let needs_rmm =
        c.ad_runner.is_some() || c.entra_connect_server.is_some() || c.exchange_server.is_some();
    match &c.rmm {
        None if needs_rmm => out.push(problem(
            "rmm",
            "on-premises hosts are set, and Steward reaches them through the RMM",
            "set the RMM provider and the company's site in it",
        )),
        Some(rmm) if rmm.site.trim().is_empty() => out.push(problem(
            "rmm.site",
            "empty",
            "give the company's site id in the RMM",
        )),
        _ => {}
    }
    if let Some(psa) = &c.psa
        && psa.company_id.trim().is_empty()
    {
        out.push(problem(
            "psa.company_id",
            "empty",
            "give the company's id in the PSA",
        ));
    }
    if let Some(d) = &c.defaults.upn_domain
        && !is_domain(d)
    {
        out.push(problem(
            "defaults.upn_domain",
            format!("`{d}` is not a domain"),
            "write e.g. contoso.com",
        ));
    }
    if let Some(u) = &c.defaults.usage_location
        && !(u.len() == 2 && u.chars().all(|ch| ch.is_ascii_uppercase()))
    {
        out.push(problem(
            "defaults.usage_location",
            format!("`{u}` is not a country code"),
            "write a two-letter ISO 3166 code such as GB, US or DE (Microsoft refuses licenses without one)",
        ));
    }
    if let Some(ou) = &c.defaults.ou {
        let looks_dn = ou.split(',').all(|part| {
            let part = part.trim();
            ["OU=", "DC=", "CN="].iter().any(|p| {
                part.len() > 3
                    && part
                        .get(..3)
                        .is_some_and(|head| head.eq_ignore_ascii_case(p))
            })
        });
        if !looks_dn || !on_prem_ad {
            out.push(problem(
                "defaults.ou",
                if on_prem_ad {
                    format!("`{ou}` is not a distinguished name")
                } else {
                    "set, but the company has no Active Directory".to_owned()
                },
                "write e.g. OU=Users,OU=Contoso,DC=contoso,DC=local",
            ));
        }
    }
    for a in &c.approvers {
        if !is_email(a) {
            out.push(problem(
                "approvers",
                format!("`{a}` is not an email address"),
                "list technicians by email",
            ));
        }
    }
    if c.custom_instructions.chars().count() > 4000 {
        out.push(problem(
            "custom_instructions",
            "longer than 4000 characters",
            "shorten it",
        ));
    }
    out
}

/// The technicians, as approver checks see them: who exists, who is enabled, who is an admin.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// By normalised email: (enabled, admin).
    by_email: BTreeMap<String, (bool, bool)>,
}

impl Directory {
    /// The directory of these technicians.
    pub fn new<'a>(technicians: impl IntoIterator<Item = &'a Technician>) -> Self {
        Self {
            by_email: technicians
                .into_iter()
                .map(|t| {
                    (
                        normalize_email(&t.email),
                        (!t.disabled, t.role == Role::Admin),
                    )
                })
                .collect(),
        }
    }

    /// Why `email` cannot decide a gate, or `None` when they are an enabled technician.
    pub fn unavailability(&self, email: &str) -> Option<Unavailability> {
        match self.by_email.get(&normalize_email(email)) {
            None => Some(Unavailability::NotATechnician),
            Some((false, _)) => Some(Unavailability::Disabled),
            Some((true, _)) => None,
        }
    }

    /// Those of `emails` who cannot decide, and why (normalised, each once).
    pub fn unavailable<S: AsRef<str>>(
        &self,
        emails: impl IntoIterator<Item = S>,
    ) -> Vec<UnavailableApprover> {
        normalize_emails(emails)
            .into_iter()
            .filter_map(|email| {
                self.unavailability(&email)
                    .map(|reason| UnavailableApprover { email, reason })
            })
            .collect()
    }

    /// The enabled admins, by email: who decides a gate nobody it names can.
    pub fn enabled_admins(&self) -> Vec<String> {
        self.by_email
            .iter()
            .filter(|(_, (enabled, admin))| *enabled && *admin)
            .map(|(email, _)| email.clone())
            .collect()
    }
}

/// The fix for an approver who cannot decide.
fn approver_fix(u: &UnavailableApprover, remove_from: &str) -> String {
    match u.reason {
        Unavailability::NotATechnician => format!(
            "add {} as a technician (steward technicians add --email {}), or remove them from {remove_from}",
            u.email, u.email
        ),
        Unavailability::Disabled => format!(
            "enable {} again (PATCH /v1/technicians/ID with {{\"disabled\": false}}), or remove them from {remove_from}",
            u.email
        ),
    }
}

/// Every approver of a company (after [`normalize`]) who is not an enabled technician.
pub fn approver_problems(c: &Company, directory: &Directory) -> Vec<FieldProblem> {
    directory
        .unavailable(&c.approvers)
        .iter()
        .map(|u| {
            problem(
                "approvers",
                format!("`{}` {}, so they cannot approve", u.email, u.reason.words()),
                approver_fix(u, "the company's approvers"),
            )
        })
        .collect()
}

/// A gate of a run that nobody could decide, or escalate to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GateProblem {
    /// The gate.
    pub step: String,
    /// `gate.approvers` or `gate.escalate_to`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl std::fmt::Display for GateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.message, self.fix)
    }
}

/// Who a gate's list names, resolved for `company`, and the words for where it comes from.
fn resolve<'a>(list: &'a Approvers, company: &'a Company) -> (Vec<String>, String) {
    match list {
        Approvers::List(names) => (normalize_emails(names), "the gate's list".to_owned()),
        Approvers::Source(_) => (
            normalize_emails(&company.approvers),
            format!("company `{}`'s approvers", company.id),
        ),
    }
}

/// The gates of a run of `def` (the workflow with the company's policy applied) for `company`,
/// asked for by `requester`, that nobody could decide: too few of their approvers (or, for a
/// gate that escalates, of its escalation targets) are enabled technicians other than the
/// requester to reach the quorum. A run with such a gate is refused when it is planned.
pub fn gate_problems(
    def: &WorkflowDef,
    company: &Company,
    directory: &Directory,
    requester: &str,
) -> Vec<GateProblem> {
    let requester = normalize_email(requester);
    let mut out = Vec::new();
    for step in &def.steps {
        let Some(gate) = &step.gate else { continue };
        let mut lists = vec![("gate.approvers", "approvers", &gate.approvers)];
        if gate.on_expiry == OnExpiry::Escalate
            && let Some(to) = &gate.escalate_to
        {
            lists.push(("gate.escalate_to", "escalation targets", to));
        }
        for (field, what, list) in lists {
            let (named, source) = resolve(list, company);
            let unavailable = directory.unavailable(&named);
            let eligible = named
                .iter()
                .filter(|a| **a != requester && !unavailable.iter().any(|u| &u.email == *a))
                .count();
            if eligible as u64 >= u64::from(gate.quorum) {
                continue;
            }
            let mut why: Vec<String> = unavailable
                .iter()
                .map(|u| format!("{} {}", u.email, u.reason.words()))
                .collect();
            if named.contains(&requester) {
                why.push(format!(
                    "{requester} asked for this run and cannot approve it"
                ));
            }
            let message = if named.is_empty() {
                format!(
                    "gate `{}` would have nobody able to decide: {}",
                    step.id,
                    match list {
                        Approvers::List(_) => format!("the gate names no {what}"),
                        Approvers::Source(_) =>
                            format!("company `{}` has no approvers", company.id),
                    }
                )
            } else {
                format!(
                    "gate `{}` would have nobody able to decide: it needs {} approval{} and only {eligible} of its {what} ({source}: {}) can give one{}",
                    step.id,
                    gate.quorum,
                    if gate.quorum == 1 { "" } else { "s" },
                    named.join(", "),
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", why.join("; "))
                    }
                )
            };
            let mut fixes: Vec<String> = unavailable
                .iter()
                .map(|u| approver_fix(u, &source))
                .collect();
            fixes.push(match list {
                Approvers::List(_) => format!(
                    "or name enabled technicians in the workflow's gate `{}` ({field})",
                    step.id
                ),
                Approvers::Source(_) => format!(
                    "or add enabled technicians to company `{}`'s approvers",
                    company.id
                ),
            });
            if named.contains(&requester) {
                fixes.push("or have another technician start the run".to_owned());
            }
            out.push(GateProblem {
                step: step.id.clone(),
                field: field.to_owned(),
                message,
                fix: fixes.join("; "),
            });
        }
    }
    out
}

/// The people a workflow's gates name by email (not `company`) who are not enabled technicians:
/// reported when the workflow is loaded, before any run is refused for them.
pub fn named_approver_problems(def: &WorkflowDef, directory: &Directory) -> Vec<GateProblem> {
    let mut out = Vec::new();
    for step in &def.steps {
        let Some(gate) = &step.gate else { continue };
        let lists = [
            ("gate.approvers", Some(&gate.approvers)),
            ("gate.escalate_to", gate.escalate_to.as_ref()),
        ];
        for (field, list) in lists {
            let Some(Approvers::List(names)) = list else {
                continue;
            };
            for u in directory.unavailable(names) {
                out.push(GateProblem {
                    step: step.id.clone(),
                    field: field.to_owned(),
                    message: format!(
                        "workflow `{}`, gate `{}`: {} {}, so they cannot decide it",
                        def.name,
                        step.id,
                        u.email,
                        u.reason.words()
                    ),
                    fix: approver_fix(&u, &format!("the gate's {field}")),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    proptest! {
        /// Whatever people type, checking it answers with problems, never a panic.
        #[test]
        fn any_text_in_any_field_is_checked_without_panicking(
            texts in prop::collection::vec(any::<String>(), 12),
            idp in 0usize..4,
            mbx in 0usize..3,
        ) {
            let idp = ["entra_id", "on_prem_ad", "hybrid", "hybrid_no_sync"][idp];
            let mbx = ["exchange_online", "exchange_server", "exchange_hybrid"][mbx];
            let mut c: Company = serde_json::from_value(json!({
                "id": "x", "name": texts[0], "tenant_id": texts[1],
                "identity_provider": idp,
                "mailbox_provider": mbx,
                "ad_runner": texts[2], "entra_connect_server": texts[3], "exchange_server": texts[4],
                "exchange_runner": texts[5], "rmm": {"provider": "datto", "site": texts[6]},
                "psa": {"provider": "autotask", "company_id": texts[7]},
                "defaults": {"upn_domain": texts[8], "usage_location": texts[9], "ou": texts[10]},
                "approvers": [texts[11]], "custom_instructions": texts[0],
            })).unwrap();
            normalize(&mut c);
            let _ = validate(&c);
        }
    }

    fn company(v: serde_json::Value) -> Company {
        let mut c: Company = serde_json::from_value(v).unwrap();
        normalize(&mut c);
        c
    }

    fn fields(c: &Company) -> Vec<String> {
        validate(c).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn providers_decide_which_hosts_are_needed() {
        let cloud = company(
            json!({"id": "contoso", "name": "Contoso", "tenant_id": "8F1C0E2A-0B5E-4F7E-9A51-3C2D6A7B9E10",
            "identity_provider": "entra_id", "mailbox_provider": "exchange_online",
            "defaults": {"usage_location": "gb", "upn_domain": "Contoso.com"}, "approvers": [" Lead@MSP.example ", "lead@msp.example"]}),
        );
        assert!(validate(&cloud).is_empty(), "{:?}", validate(&cloud));
        assert_eq!(cloud.approvers, ["lead@msp.example"]);
        assert_eq!(cloud.defaults.usage_location.as_deref(), Some("GB"));

        let hybrid = company(
            json!({"id": "fab", "name": "Fabrikam", "identity_provider": "hybrid", "mailbox_provider": "exchange_hybrid"}),
        );
        assert_eq!(
            fields(&hybrid),
            [
                "tenant_id",
                "ad_runner",
                "entra_connect_server",
                "exchange_server"
            ]
        );

        let ok = company(
            json!({"id": "fab", "name": "Fabrikam", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
            "identity_provider": "hybrid", "mailbox_provider": "exchange_hybrid", "ad_runner": "RUNNER01",
            "entra_connect_server": "AADC01", "exchange_server": "EXCH01", "rmm": {"provider": "datto", "site": "abc"},
            "defaults": {"ou": "OU=Users,DC=fabrikam,DC=local"}}),
        );
        assert!(validate(&ok).is_empty(), "{:?}", validate(&ok));

        let onprem = company(
            json!({"id": "x", "name": "X", "identity_provider": "on_prem_ad", "mailbox_provider": "exchange_server",
            "ad_runner": "DC 01", "exchange_server": "EXCH01", "entra_connect_server": "AADC"}),
        );
        assert_eq!(
            fields(&onprem),
            ["ad_runner", "entra_connect_server", "rmm"]
        );

        let cloud_with_ad = company(
            json!({"id": "x", "name": "X", "tenant_id": "bad", "identity_provider": "entra_id",
            "mailbox_provider": "exchange_online", "ad_runner": "DC01", "defaults": {"usage_location": "GBR", "ou": "Users"},
            "approvers": ["not-an-email"]}),
        );
        let f = fields(&cloud_with_ad);
        for expect in [
            "tenant_id",
            "ad_runner",
            "rmm",
            "defaults.usage_location",
            "defaults.ou",
            "approvers",
        ] {
            assert!(
                f.contains(&expect.to_owned()),
                "{expect} missing from {f:?}"
            );
        }
    }

    fn tech(email: &str, role: Role, disabled: bool) -> Technician {
        serde_json::from_value(json!({
            "id": "tech_01ARZ3NDEKTSV4RRFFQ69G5FAV", "email": email, "name": email,
            "role": role, "companies": "all", "disabled": disabled,
            "created_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap()
    }

    fn directory() -> Directory {
        let techs = [
            tech("alice@msp", Role::Technician, false),
            tech("bob@msp", Role::Technician, true),
            tech("root@msp", Role::Admin, false),
            tech("old@msp", Role::Admin, true),
        ];
        Directory::new(&techs)
    }

    fn workflow(gate: serde_json::Value) -> WorkflowDef {
        serde_json::from_value(json!({
            "name": "w",
            "steps": [{"id": "approval", "gate": gate}, {"id": "go", "op": "x", "needs": ["approval"]}],
        }))
        .unwrap()
    }

    #[test]
    fn the_directory_knows_who_can_decide() {
        let d = directory();
        assert_eq!(d.unavailability(" Alice@MSP "), None);
        assert_eq!(d.unavailability("bob@msp"), Some(Unavailability::Disabled));
        assert_eq!(
            d.unavailability("ghost@msp"),
            Some(Unavailability::NotATechnician)
        );
        assert_eq!(
            d.enabled_admins(),
            ["root@msp"],
            "disabled admins take nothing over"
        );
        let c = company(
            json!({"id": "x", "name": "X", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
            "identity_provider": "entra_id", "mailbox_provider": "exchange_online",
            "approvers": ["alice@msp", "BOB@msp", "ghost@msp"]}),
        );
        let problems = approver_problems(&c, &d);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "`bob@msp` is disabled, so they cannot approve",
                "`ghost@msp` is not a technician, so they cannot approve"
            ]
        );
        assert!(problems.iter().all(|p| p.field == "approvers"));
        assert!(
            problems[1]
                .fix
                .contains("steward technicians add --email ghost@msp")
        );
    }

    #[test]
    fn a_gate_nobody_could_decide_is_found_when_planned() {
        let d = directory();
        let c = company(
            json!({"id": "contoso", "name": "C", "tenant_id": "8f1c0e2a-0b5e-4f7e-9a51-3c2d6a7b9e10",
            "identity_provider": "entra_id", "mailbox_provider": "exchange_online",
            "approvers": ["alice@msp", "bob@msp"]}),
        );
        // The company's approvers: bob is disabled, so alice alone decides, unless she asked.
        let def = workflow(json!({"approvers": "company", "quorum": 1}));
        assert!(gate_problems(&def, &c, &d, "tech@msp").is_empty());
        let p = gate_problems(&def, &c, &d, "Alice@msp");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            (p[0].step.as_str(), p[0].field.as_str()),
            ("approval", "gate.approvers")
        );
        assert!(
            p[0].message.contains("needs 1 approval and only 0 of its approvers (company `contoso`'s approvers: alice@msp, bob@msp)")
                && p[0].message.contains("bob@msp is disabled; alice@msp asked for this run"),
            "{}",
            p[0].message
        );
        assert!(
            p[0].fix.contains("enable bob@msp again")
                && p[0].fix.contains("have another technician start the run"),
            "{}",
            p[0].fix
        );
        // A named list and an escalation to nobody who can decide.
        let def = workflow(
            json!({"approvers": ["alice@msp"], "quorum": 1, "expires_in": "1h",
            "on_expiry": "escalate", "escalate_to": ["ghost@msp"]}),
        );
        let p = gate_problems(&def, &c, &d, "tech@msp");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "gate.escalate_to");
        assert!(
            p[0].fix
                .contains("name enabled technicians in the workflow's gate `approval`"),
            "{}",
            p[0].fix
        );
        // The same named people are reported when the workflow is loaded.
        let named = named_approver_problems(&def, &d);
        assert_eq!(named.len(), 1, "{named:?}");
        assert!(
            named[0].message.contains("ghost@msp is not a technician"),
            "{}",
            named[0].message
        );
        // Without approvers at all.
        let mut empty = c;
        empty.approvers.clear();
        let def = workflow(json!({"approvers": "company", "quorum": 1}));
        let p = gate_problems(&def, &empty, &d, "tech@msp");
        assert!(
            p[0].message.contains("company `contoso` has no approvers"),
            "{}",
            p[0].message
        );
    }
}
