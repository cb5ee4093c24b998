//! Safety rails every run passes when it is planned, whatever started it (API, CLI, PSA):
//!
//! - **Protected accounts** (break-glass and admin accounts), global and per company: a
//!   workflow with any destructive step (disable, delete, remove, revoke, reset, wipe, retire,
//!   convert, hide, move, exclude) is refused when one of its inputs, or a literal value of a
//!   destructive step, names a protected account (exactly, case-insensitive; a protected
//!   `sam` name also matches `sam@any.domain`). The refusal names the account and the step.
//! - **Blast-radius brake**: at most `max_runs` destructive runs per company in
//!   `window_seconds`; the next one engages the company's brake, and every destructive run of
//!   that company is refused until an admin releases it (`POST /v1/guard/brakes/{company}/release`,
//!   `steward guard release`). Runs in flight are not touched.
//!
//! Refusals are [`PolicyRefusal`]s (group `protected accounts` / `blast-radius brake`), so the
//! API answers them like any other policy refusal, naming step, op and reason.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_core::policy::{PolicyRefusal, RefusedStep};
use steward_schemas::CompanyId;
use steward_schemas::workflow::WorkflowDef;

use crate::store::Store;

const SCRIPT: &str = include_str!("../../lua/brake.lua");

/// Words in an op's name that make it destructive.
const DESTRUCTIVE: &[&str] = &[
    "delete",
    "disable",
    "remove",
    "revoke",
    "reset",
    "wipe",
    "retire",
    "convert",
    "hide",
    "move",
    "exclude",
    "set_enabled",
    "block",
];

/// Whether an op changes or takes away what a person has.
pub fn destructive(op: &str) -> bool {
    let op = op.to_ascii_lowercase();
    DESTRUCTIVE.iter().any(|w| op.contains(w))
}

/// The protected accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Protected {
    /// Protected in every company (UPNs, sAMAccountNames or names).
    #[serde(default)]
    pub global: Vec<String>,
    /// Protected in one company.
    #[serde(default)]
    pub companies: BTreeMap<CompanyId, Vec<String>>,
}

/// The brake's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Brake {
    /// Destructive runs allowed per company in the window (0: the brake is off).
    pub max_runs: u32,
    /// The window.
    pub window_seconds: u32,
}

impl Default for Brake {
    fn default() -> Self {
        Self {
            max_runs: 10,
            window_seconds: 3600,
        }
    }
}

/// An engaged brake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Engaged {
    /// The company.
    pub company: CompanyId,
    /// When it engaged (RFC 3339).
    pub since: String,
    /// The limit it hit.
    pub max_runs: u32,
    /// The window.
    pub window_seconds: u32,
}

/// The guard over a store.
#[derive(Debug, Clone)]
pub struct Guard {
    store: Store,
    ns: String,
}

impl Guard {
    /// The guard of a store's namespace.
    pub fn for_store(store: &Store) -> Self {
        Self {
            ns: store.keys().namespace().to_owned(),
            store: store.clone(),
        }
    }

    fn config(&self) -> String {
        format!("{}:guard", self.ns)
    }
    fn window(&self, c: &CompanyId) -> String {
        format!("{}:guard:window:{c}", self.ns)
    }
    fn braked(&self, c: &CompanyId) -> String {
        format!("{}:guard:braked:{c}", self.ns)
    }

    async fn field<T: serde::de::DeserializeOwned + Default>(
        &self,
        f: &str,
    ) -> redis::RedisResult<T> {
        let v: Option<String> = self
            .store
            .db()
            .query(redis::cmd("HGET").arg(self.config()).arg(f))
            .await?;
        Ok(v.and_then(|v| serde_json::from_str(&v).ok())
            .unwrap_or_default())
    }

    /// The protected accounts.
    pub async fn protected(&self) -> redis::RedisResult<Protected> {
        self.field("protected").await
    }

    /// Replaces the protected accounts.
    pub async fn set_protected(&self, p: &Protected) -> redis::RedisResult<()> {
        self.store
            .db()
            .query(
                redis::cmd("HSET")
                    .arg(self.config())
                    .arg("protected")
                    .arg(serde_json::to_string(p).expect("serialises")),
            )
            .await
    }

    /// The brake's limit.
    pub async fn brake(&self) -> redis::RedisResult<Brake> {
        self.field("brake").await
    }

    /// Sets the brake's limit.
    pub async fn set_brake(&self, b: Brake) -> redis::RedisResult<()> {
        self.store
            .db()
            .query(
                redis::cmd("HSET")
                    .arg(self.config())
                    .arg("brake")
                    .arg(serde_json::to_string(&b).expect("serialises")),
            )
            .await
    }

    /// The engaged brakes.
    pub async fn engaged(&self) -> redis::RedisResult<Vec<Engaged>> {
        let keys: Vec<String> = self
            .store
            .db()
            .query(redis::cmd("KEYS").arg(format!("{}:guard:braked:*", self.ns)))
            .await?;
        let mut out = Vec::new();
        for k in keys {
            let v: Option<String> = self.store.db().query(redis::cmd("GET").arg(&k)).await?;
            if let Some(e) = v.and_then(|v| serde_json::from_str(&v).ok()) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Releases a company's brake (and forgets its window); whether it was engaged.
    pub async fn release(&self, c: &CompanyId) -> redis::RedisResult<bool> {
        let (n, _): (i64, i64) = self
            .store
            .db()
            .pipe(
                redis::pipe()
                    .cmd("DEL")
                    .arg(self.braked(c))
                    .cmd("DEL")
                    .arg(self.window(c)),
            )
            .await?;
        Ok(n > 0)
    }

    /// Checks a run about to start; for a destructive run, counts it against the brake.
    pub async fn check(
        &self,
        def: &WorkflowDef,
        company: &CompanyId,
        inputs: &Map<String, Value>,
    ) -> Result<(), GuardError> {
        let steps: Vec<(&str, &str, Vec<String>)> = def
            .steps
            .iter()
            .filter_map(|s| {
                let op = s.op.as_deref()?;
                destructive(op).then(|| {
                    let literals = s
                        .with
                        .values()
                        .filter_map(Value::as_str)
                        .filter(|v| !v.contains("${{"))
                        .map(str::to_owned)
                        .collect();
                    (s.id.as_str(), op, literals)
                })
            })
            .collect();
        let Some(&(first_step, first_op, _)) = steps.first() else {
            return Ok(());
        };
        let protected = self.protected().await?;
        let named: Vec<(&str, &str)> = protected
            .global
            .iter()
            .map(|p| (p.as_str(), "the global list"))
            .chain(
                protected
                    .companies
                    .get(company)
                    .into_iter()
                    .flatten()
                    .map(|p| (p.as_str(), "this company's list")),
            )
            .collect();
        let values: Vec<String> = inputs.values().flat_map(strings).collect();
        let mut refused = Vec::new();
        for (step, op, literals) in &steps {
            for v in values.iter().chain(literals.iter()) {
                if let Some((p, list)) = named.iter().find(|(p, _)| matches(p, v)) {
                    refused.push(RefusedStep {
                        step: (*step).to_owned(),
                        op: (*op).to_owned(),
                        group: "protected accounts".to_owned(),
                        reason: format!(
                            "`{v}` is a protected account (`{p}` in {list}); no workflow may disable, delete or strip it: remove it from the protected accounts first if this is really meant"
                        ),
                    });
                    break;
                }
            }
        }
        if !refused.is_empty() {
            return Err(GuardError::Refused(PolicyRefusal {
                company: company.to_string(),
                steps: refused,
            }));
        }
        let brake = self.brake().await?;
        if brake.max_runs == 0 {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let engaged = Engaged {
            company: company.clone(),
            since: now.to_rfc3339(),
            max_runs: brake.max_runs,
            window_seconds: brake.window_seconds,
        };
        let n: i64 = self
            .store
            .db()
            .query(
                redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(2)
                    .arg(self.window(company))
                    .arg(self.braked(company))
                    .arg(now.timestamp_millis())
                    .arg(u64::from(brake.window_seconds) * 1000)
                    .arg(brake.max_runs)
                    .arg(ulid::Ulid::new().to_string())
                    .arg(serde_json::to_string(&engaged).expect("serialises")),
            )
            .await?;
        if n < 0 {
            return Err(GuardError::Refused(PolicyRefusal {
                company: company.to_string(),
                steps: vec![RefusedStep {
                    step: first_step.to_owned(),
                    op: first_op.to_owned(),
                    group: "blast-radius brake".to_owned(),
                    reason: format!(
                        "the blast-radius brake is engaged for this company (more than {} destructive runs within {} s); destructive runs wait until an admin releases it (steward guard release {company})",
                        brake.max_runs, brake.window_seconds
                    ),
                }],
            }));
        }
        Ok(())
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().flat_map(strings).collect(),
        Value::Object(o) => o.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

/// Whether `value` names the protected account `p`.
fn matches(p: &str, value: &str) -> bool {
    let (p, v) = (p.trim().to_lowercase(), value.trim().to_lowercase());
    if p.is_empty() {
        return false;
    }
    p == v || (!p.contains('@') && v.split_once('@').is_some_and(|(local, _)| local == p))
}

/// A run the guard refuses, or Redis failing.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Refused (protected account, or the brake).
    #[error(transparent)]
    Refused(PolicyRefusal),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destructive_ops_and_account_matching() {
        for op in [
            "user.disable",
            "user.delete",
            "license.remove",
            "mfa.remove_methods",
            "mailbox.convert_to_shared",
            "user.revoke_sessions",
            "device.wipe",
            "ad.set_enabled",
        ] {
            assert!(destructive(op), "{op}");
        }
        for op in [
            "user.create",
            "license.assign",
            "group.add_member",
            "user.get",
            "ledger",
        ] {
            assert!(!destructive(op), "{op}");
        }
        assert!(matches("breakglass@contoso.com", "BreakGlass@Contoso.com"));
        assert!(matches("admin", "admin@fabrikam.com"));
        assert!(!matches("admin@contoso.com", "admin@fabrikam.com"));
        assert!(!matches("admin", "administrator@x.com"));
        assert!(!matches("", ""));
    }
}
