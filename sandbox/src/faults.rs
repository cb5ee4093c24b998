//! Fault injection: per-route error rates and scripted sequences, deterministic under the seed.
//!
//! A rule matches a method (or any) and a path pattern, where `*` stands for one path segment and
//! `**` for any number (including none). The first matching rule decides. A `sequence` hands out
//! its steps one per matching request (then passes, or starts over with `repeat`); a `rate` draws
//! from the rule's own RNG, seeded from the sandbox seed and the rule's position, so the same
//! traffic against the same rules fails the same requests regardless of other routes' traffic.

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultAction {
    /// Let the request through (after `latency_ms`, if set).
    #[serde(default)]
    pub(crate) pass: bool,
    /// HTTP status to answer with instead of the real handler.
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// Response body; defaults to the service's own error envelope for `status`.
    #[serde(default)]
    pub(crate) body: Option<Value>,
    /// `Retry-After` header value in seconds.
    #[serde(default)]
    pub(crate) retry_after: Option<u64>,
    /// Delay before answering (or passing), in real milliseconds.
    #[serde(default)]
    pub(crate) latency_ms: Option<u64>,
    /// Drop the connection without a response.
    #[serde(default)]
    pub(crate) reset: bool,
    /// Apply the request, then drop the connection: the change happened but the client never
    /// hears about it (the case idempotent retries exist for).
    #[serde(default)]
    pub(crate) reset_after: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRule {
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) method: Option<String>,
    pub(crate) path: String,
    /// Probability in [0, 1] that a matching request gets `error`.
    #[serde(default)]
    pub(crate) rate: Option<f64>,
    #[serde(default)]
    pub(crate) error: Option<FaultAction>,
    #[serde(default)]
    pub(crate) sequence: Vec<FaultAction>,
    #[serde(default)]
    pub(crate) repeat: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum RuleError {
    #[error("path must start with '/': {0}")]
    Path(String),
    #[error("rule needs either `rate` (with `error`) or a non-empty `sequence`")]
    Empty,
    #[error("rate must be between 0 and 1, got {0}")]
    Rate(f64),
    #[error("a fault step needs `pass`, `status`, `reset`, `reset_after` or `latency_ms`")]
    Step,
    #[error("status {0} is not an HTTP status code")]
    Status(u16),
}

impl FaultRule {
    pub(crate) fn validate(&self) -> Result<(), RuleError> {
        if !self.path.starts_with('/') {
            return Err(RuleError::Path(self.path.clone()));
        }
        let steps: Vec<&FaultAction> = self.sequence.iter().chain(self.error.iter()).collect();
        match (self.rate, self.sequence.is_empty()) {
            (None, true) => return Err(RuleError::Empty),
            (Some(r), _) if !(0.0..=1.0).contains(&r) || r.is_nan() => {
                return Err(RuleError::Rate(r));
            }
            (Some(_), _) if self.error.is_none() => return Err(RuleError::Empty),
            _ => {}
        }
        for s in steps {
            if !s.pass && s.status.is_none() && !s.reset && !s.reset_after && s.latency_ms.is_none()
            {
                return Err(RuleError::Step);
            }
            if let Some(st) = s.status {
                if !(100..=599).contains(&st) {
                    return Err(RuleError::Status(st));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct ActiveRule {
    pub(crate) id: String,
    pub(crate) rule: FaultRule,
    pub(crate) matched: u64,
    pub(crate) injected: u64,
    #[serde(skip)]
    cursor: usize,
    #[serde(skip)]
    rng: StdRng,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    rules: Vec<ActiveRule>,
    added: u64,
}

impl Faults {
    pub(crate) fn add(&mut self, seed: u64, rule: FaultRule) -> String {
        self.added += 1;
        let id = rule
            .id
            .clone()
            .unwrap_or_else(|| format!("fault-{}", self.added));
        let rng = StdRng::seed_from_u64(seed ^ self.added.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.rules.retain(|r| r.id != id);
        self.rules.push(ActiveRule {
            id: id.clone(),
            rule,
            matched: 0,
            injected: 0,
            cursor: 0,
            rng,
        });
        id
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        before != self.rules.len()
    }

    pub(crate) fn rules(&self) -> &[ActiveRule] {
        &self.rules
    }

    /// The fault (if any) for this request; `None` means "handle normally".
    pub(crate) fn decide(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let rule = self.rules.iter_mut().find(|r| {
            r.rule
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && path_matches(&r.rule.path, path)
        })?;
        rule.matched += 1;
        let action = if !rule.rule.sequence.is_empty() {
            if rule.cursor >= rule.rule.sequence.len() {
                if rule.rule.repeat {
                    rule.cursor = 0;
                } else {
                    return None;
                }
            }
            let a = rule.rule.sequence[rule.cursor].clone();
            rule.cursor += 1;
            a
        } else {
            let rate = rule.rule.rate.unwrap_or(0.0);
            let draw: f64 = rule.rng.random();
            if draw >= rate {
                return None;
            }
            rule.rule.error.clone()?
        };
        if !action.pass {
            rule.injected += 1;
        }
        Some(action)
    }
}

/// `*` matches one segment, `**` any number of segments; literal segments compare exactly.
pub(crate) fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let s: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    fn go(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16) -> FaultAction {
        FaultAction {
            status: Some(status),
            ..FaultAction::default()
        }
    }

    #[test]
    fn patterns_match_segments() {
        assert!(path_matches("/graph/v1.0/users", "/graph/v1.0/users"));
        assert!(path_matches("/graph/v1.0/users/*", "/graph/v1.0/users/abc"));
        assert!(!path_matches(
            "/graph/v1.0/users/*",
            "/graph/v1.0/users/abc/manager"
        ));
        assert!(path_matches("/graph/**", "/graph/v1.0/users/abc/manager"));
        assert!(path_matches(
            "/graph/v1.0/users/*/assignLicense",
            "/graph/v1.0/users/u/assignLicense"
        ));
        assert!(path_matches("/datto/**", "/datto"));
        assert!(!path_matches("/graph/v1.0/users", "/graph/v1.0/groups"));
    }

    #[test]
    fn sequence_then_pass_and_repeat() {
        let mut f = Faults::default();
        f.add(
            1,
            FaultRule {
                id: None,
                method: Some("post".into()),
                path: "/graph/v1.0/users".into(),
                rate: None,
                error: None,
                sequence: vec![
                    err(429),
                    FaultAction {
                        pass: true,
                        ..Default::default()
                    },
                    err(503),
                ],
                repeat: false,
            },
        );
        assert_eq!(f.decide("GET", "/graph/v1.0/users"), None);
        assert_eq!(
            f.decide("POST", "/graph/v1.0/users").unwrap().status,
            Some(429)
        );
        assert!(f.decide("POST", "/graph/v1.0/users").unwrap().pass);
        assert_eq!(
            f.decide("POST", "/graph/v1.0/users").unwrap().status,
            Some(503)
        );
        assert_eq!(f.decide("POST", "/graph/v1.0/users"), None);
        assert_eq!(f.rules()[0].injected, 2);
    }

    #[test]
    fn rates_are_deterministic_under_the_seed() {
        let run = |seed: u64| {
            let mut f = Faults::default();
            f.add(
                seed,
                FaultRule {
                    id: Some("r".into()),
                    method: None,
                    path: "/graph/**".into(),
                    rate: Some(0.5),
                    error: Some(err(503)),
                    sequence: vec![],
                    repeat: false,
                },
            );
            (0..64)
                .map(|_| f.decide("GET", "/graph/v1.0/users").is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).iter().filter(|b| **b).count();
        assert!((16..=48).contains(&hits), "{hits}");
    }

    #[test]
    fn validation_rejects_nonsense() {
        let mut r = FaultRule {
            id: None,
            method: None,
            path: "graph".into(),
            rate: None,
            error: None,
            sequence: vec![],
            repeat: false,
        };
        assert!(r.validate().is_err());
        r.path = "/graph".into();
        assert!(matches!(r.validate(), Err(RuleError::Empty)));
        r.rate = Some(1.5);
        r.error = Some(err(503));
        assert!(matches!(r.validate(), Err(RuleError::Rate(_))));
        r.rate = Some(0.5);
        assert!(r.validate().is_ok());
        r.sequence = vec![FaultAction::default()];
        assert!(matches!(r.validate(), Err(RuleError::Step)));
    }
}
