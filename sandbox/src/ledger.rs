//! The effect ledger: every mutation the sandbox applied, in order.
//!
//! Tests and dry runs ask two questions of it: "what did Steward change, for which run and
//! step?" and "was anything applied twice?". An entry is a *duplicate* when an earlier entry has
//! the same fingerprint (company, action, target and parameters, with secrets reduced to a digest)
//! and nothing else touched that target in between, i.e. the same change was re-applied to an
//! object that hadn't changed since. Entries carry no secrets: passwords appear as
//! `[redacted]` and only feed the fingerprint through their digest.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The parsed `X-Steward-Correlation: <run_id>/<step_id>/<attempt>` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Correlation {
    pub(crate) run: String,
    pub(crate) step: String,
    pub(crate) attempt: Option<u32>,
}

pub(crate) const CORRELATION_HEADER: &str = "x-steward-correlation";

impl Correlation {
    /// Parses `run/step/attempt`. The step id may itself contain `/`; run is the first segment
    /// and attempt the last. A malformed header still records what can be read rather than
    /// dropping it, because a ledger that silently loses correlation is worse than a partial one.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return None;
        }
        let (run, rest) = raw.split_once('/').unwrap_or((raw, ""));
        let (step, attempt) = match rest.rsplit_once('/') {
            Some((s, a)) => match a.parse::<u32>() {
                Ok(n) => (s.to_owned(), Some(n)),
                Err(_) => (rest.to_owned(), None),
            },
            None => (rest.to_owned(), None),
        };
        Some(Self {
            run: run.to_owned(),
            step,
            attempt,
        })
    }
}

/// What a handler reports after applying a change.
#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub(crate) service: &'static str,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) company: Option<String>,
    pub(crate) action: String,
    pub(crate) target: Option<String>,
    /// Parameters of the change, already redacted.
    pub(crate) details: Value,
    /// Digest of any secret the change carried (feeds only the fingerprint).
    pub(crate) secret_fingerprint: Option<String>,
    pub(crate) correlation: Option<Correlation>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub(crate) seq: u64,
    pub(crate) at: DateTime<Utc>,
    pub(crate) service: &'static str,
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) company: Option<String>,
    pub(crate) action: String,
    pub(crate) target: Option<String>,
    pub(crate) details: Value,
    pub(crate) run: Option<String>,
    pub(crate) step: Option<String>,
    pub(crate) attempt: Option<u32>,
    pub(crate) duplicate: bool,
    pub(crate) duplicate_of: Option<u64>,
    #[serde(skip)]
    fingerprint: String,
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    entries: Vec<Entry>,
}

impl Ledger {
    pub(crate) fn record(&mut self, m: Mutation, at: DateTime<Utc>) -> u64 {
        let seq = self.entries.len() as u64 + 1;
        let fingerprint = fingerprint(&m);
        let mut duplicate_of = None;
        for e in self.entries.iter().rev() {
            if e.company == m.company && e.target == m.target {
                if e.fingerprint == fingerprint {
                    duplicate_of = Some(e.seq);
                }
                // The latest change to this target decides: an intervening different change
                // makes a repeat a new change, not a duplicate.
                break;
            }
        }
        let (run, step, attempt) = match m.correlation {
            Some(c) => (Some(c.run), Some(c.step), c.attempt),
            None => (None, None, None),
        };
        self.entries.push(Entry {
            seq,
            at,
            service: m.service,
            method: m.method,
            route: m.path,
            company: m.company,
            action: m.action,
            target: m.target,
            details: m.details,
            run,
            step,
            attempt,
            duplicate: duplicate_of.is_some(),
            duplicate_of,
            fingerprint,
        });
        seq
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

fn fingerprint(m: &Mutation) -> String {
    let mut h = Sha256::new();
    for part in [
        m.company.as_deref().unwrap_or(""),
        &m.action,
        m.target.as_deref().unwrap_or(""),
        &m.details.to_string(),
        m.secret_fingerprint.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(action: &str, target: &str, details: Value, secret: Option<&str>) -> Mutation {
        Mutation {
            service: "graph",
            method: "PATCH".into(),
            path: "/graph/v1.0/users/x".into(),
            company: Some("contoso".into()),
            action: action.into(),
            target: Some(target.into()),
            details,
            secret_fingerprint: secret.map(str::to_owned),
            correlation: Correlation::parse("run_1/disable_user/2"),
        }
    }

    #[test]
    fn correlation_parses_run_step_attempt() {
        let c = Correlation::parse("run_01JD/create_user/2").unwrap();
        assert_eq!(c.run, "run_01JD");
        assert_eq!(c.step, "create_user");
        assert_eq!(c.attempt, Some(2));
        let c = Correlation::parse("run_1/group/add/3").unwrap();
        assert_eq!(c.step, "group/add");
        let c = Correlation::parse("run_1/step").unwrap();
        assert_eq!((c.step.as_str(), c.attempt), ("step", None));
        assert!(Correlation::parse("  ").is_none());
    }

    #[test]
    fn duplicates_are_repeats_with_nothing_in_between() {
        let now = Utc::now();
        let mut l = Ledger::default();
        l.record(
            m("user.update", "u1", json!({"accountEnabled": false}), None),
            now,
        );
        l.record(
            m("user.update", "u1", json!({"accountEnabled": false}), None),
            now,
        );
        l.record(
            m("user.update", "u2", json!({"accountEnabled": false}), None),
            now,
        );
        l.record(
            m("user.update", "u1", json!({"accountEnabled": true}), None),
            now,
        );
        l.record(
            m("user.update", "u1", json!({"accountEnabled": false}), None),
            now,
        );
        let d: Vec<bool> = l.entries().iter().map(|e| e.duplicate).collect();
        assert_eq!(d, vec![false, true, false, false, false]);
        assert_eq!(l.entries()[1].duplicate_of, Some(1));
        assert_eq!(l.entries()[0].attempt, Some(2));
    }

    #[test]
    fn secrets_only_change_the_fingerprint() {
        let now = Utc::now();
        let mut l = Ledger::default();
        let redacted = json!({"password": "[redacted]"});
        l.record(
            m("user.reset_password", "u1", redacted.clone(), Some("aa")),
            now,
        );
        l.record(
            m("user.reset_password", "u1", redacted.clone(), Some("bb")),
            now,
        );
        l.record(m("user.reset_password", "u1", redacted, Some("bb")), now);
        let d: Vec<bool> = l.entries().iter().map(|e| e.duplicate).collect();
        assert_eq!(d, vec![false, false, true]);
        let text = serde_json::to_string(l.entries()).unwrap();
        assert!(
            !text.contains("bb"),
            "fingerprint input must not leak: {text}"
        );
    }
}
