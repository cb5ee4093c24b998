//! Which workflow a ticket starts: an ordered list of rules (`GET`/`PUT /v1/psa/rules`), the
//! first that matches wins. A rule's criteria are all optional and all must hold: each list
//! matches when the ticket's field equals one of its values (ids or names, case-insensitive);
//! `title_keywords` when the title contains any of them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use steward_schemas::company::PsaProvider;

use super::event::TicketFields;

/// Which kind of lifecycle a workflow is: one run per (company, person) at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// Creates a person: a second onboarding of the same person is the same run.
    Onboarding,
    /// Removes a person: cancels (and rolls back) their pending onboarding first.
    Offboarding,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The workflow it starts.
    pub workflow: String,
    /// Only tickets from this PSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<PsaProvider>,
    /// Queue / board / team ids or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
    /// Ticket type ids or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ticket_type: Vec<String>,
    /// Category ids or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub category: Vec<String>,
    /// Issue type (or sub-issue type) ids or names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issue_type: Vec<String>,
    /// Words in the title (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub title_keywords: Vec<String>,
    /// The workflow's lifecycle kind, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

fn any_eq(want: &[String], have: &[String]) -> bool {
    want.is_empty()
        || want
            .iter()
            .any(|w| have.iter().any(|h| h.trim().eq_ignore_ascii_case(w.trim())))
}

impl Rule {
    /// Whether the rule matches a ticket from `provider`.
    pub fn matches(&self, provider: PsaProvider, t: &TicketFields) -> bool {
        let title = t.title.as_deref().unwrap_or_default().to_lowercase();
        self.provider.is_none_or(|p| p == provider)
            && any_eq(&self.queue, &t.queue)
            && any_eq(&self.ticket_type, &t.ticket_type)
            && any_eq(&self.category, &t.category)
            && any_eq(&self.issue_type, &t.issue_type)
            && (self.title_keywords.is_empty()
                || self
                    .title_keywords
                    .iter()
                    .any(|k| !k.trim().is_empty() && title.contains(&k.trim().to_lowercase())))
    }
}

/// The first rule that matches.
pub fn first_match<'a>(
    rules: &'a [Rule],
    provider: PsaProvider,
    t: &TicketFields,
) -> Option<&'a Rule> {
    rules.iter().find(|r| r.matches(provider, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_criteria_must_hold_and_the_first_rule_wins() {
        let rules: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"workflow": "offboarding", "title_keywords": ["leaver", "offboard"], "lifecycle": "offboarding"},
            {"workflow": "onboarding", "provider": "autotask", "queue": ["8"], "issue_type": ["10"], "title_keywords": ["new starter"]},
            {"workflow": "cw-onboarding", "provider": "connectwise", "ticket_type": ["Onboarding"]},
        ]))
        .unwrap();
        let t = |title: &str, queue: &str| TicketFields {
            title: Some(title.to_owned()),
            queue: vec![queue.to_owned()],
            issue_type: vec!["10".to_owned(), "150".to_owned()],
            ticket_type: vec!["5".to_owned(), "onboarding".to_owned()],
            ..TicketFields::default()
        };
        let w = |p, f: &TicketFields| first_match(&rules, p, f).map(|r| r.workflow.as_str());
        assert_eq!(
            w(PsaProvider::Autotask, &t("New Starter: Jane", "8")),
            Some("onboarding")
        );
        assert_eq!(w(PsaProvider::Autotask, &t("New Starter: Jane", "9")), None);
        assert_eq!(
            w(PsaProvider::Autotask, &t("Leaver: new starter Bob", "8")),
            Some("offboarding")
        );
        assert_eq!(
            w(PsaProvider::Connectwise, &t("anything", "1")),
            Some("cw-onboarding")
        );
        assert_eq!(w(PsaProvider::Halopsa, &t("printer jam", "1")), None);
        assert!(
            serde_json::from_value::<Rule>(serde_json::json!({"workflow": "x", "colour": 1}))
                .is_err()
        );
    }
}
