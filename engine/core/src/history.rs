//! What a transition changed, in words, and the redaction applied before anything is recorded.

use serde_json::Value;
use steward_schemas::{RunState, StepRecord};

/// The changes from `old` to `new`: `run: running -> completed`, `create_user: queued ->
/// succeeded`, `undo create_user: waiting -> queued`.
pub fn diff(old: &RunState, new: &RunState) -> Vec<String> {
    let mut out = Vec::new();
    if old.status.name() != new.status.name() {
        out.push(format!(
            "run: {} -> {}",
            old.status.name(),
            new.status.name()
        ));
    }
    for (id, after) in &new.steps {
        let before = old.steps.get(id);
        let from = before.map_or("pending", |r| r.state.name());
        let to = after.state.name();
        if from != to || before.is_some_and(|b| b.seq != after.seq && to == "queued") {
            out.push(format!("{id}: {from} -> {}", describe(after)));
        }
        let from_undo = before.and_then(|r| r.undo.as_ref()).map(|u| u.name());
        let to_undo = after.undo.as_ref().map(|u| u.name());
        if from_undo != to_undo
            || (to_undo == Some("queued") && before.is_some_and(|b| b.seq != after.seq))
        {
            out.push(format!(
                "undo {id}: {} -> {}",
                from_undo.unwrap_or("none"),
                to_undo.unwrap_or("none")
            ));
        }
    }
    out
}

fn describe(rec: &StepRecord) -> String {
    use steward_schemas::StepState as S;
    match &rec.state {
        S::Queued { job, .. } if job.polls > 0 => {
            format!("queued (attempt {}, check {})", job.attempt, job.polls + 1)
        }
        S::Queued { job, .. } => format!("queued (attempt {})", job.attempt),
        S::Retrying {
            next, not_before, ..
        } => format!("retrying (attempt {next} at {not_before})"),
        S::Polling { next_check, .. } => format!("polling (next check at {next_check})"),
        other => other.name().to_owned(),
    }
}

/// Key fragments that mark a value as secret.
const SECRET_KEYS: &[&str] = &[
    "password",
    "secret",
    "token",
    "credential",
    "passphrase",
    "private_key",
    "apikey",
    "api_key",
];

/// Whether a map key names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace(['-', ' '], "_");
    SECRET_KEYS.iter().any(|s| k.contains(s))
}

/// The text that replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Replaces every value under a secret-looking key with `[redacted]`; returns how many.
pub fn redact(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let mut n = 0;
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_null() && v != &Value::String(REDACTED.to_owned()) {
                    *v = Value::String(REDACTED.to_owned());
                    n += 1;
                } else {
                    n += redact(v);
                }
            }
            n
        }
        Value::Array(items) => items.iter_mut().map(redact).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({
            "upn": "jane@contoso.com",
            "passwordProfile": {"password": "hunter2", "forceChangePasswordNextSignIn": true},
            "items": [{"client_secret": "s"}, {"refresh-token": "t"}],
            "api_key": null
        });
        assert_eq!(redact(&mut v), 3);
        assert_eq!(
            v["passwordProfile"], REDACTED,
            "a secret-looking key hides its whole value"
        );
        assert_eq!(v["items"][1]["refresh-token"], REDACTED);
        assert_eq!(v["upn"], "jane@contoso.com");
        assert_eq!(redact(&mut v), 0, "redaction is idempotent");
    }
}
