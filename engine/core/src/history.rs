//! What a transition changed, in words, and the redaction applied before anything is recorded.

use serde_json::{Map, Value};
use steward_schemas::{Rollback, RunDoc, RunState, StepRecord, StepState, WorkflowDef};

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

/// The text that replaces the value of an input the workflow declares `secret: true`.
pub const SECRET_INPUT: &str = "[secret]";

/// Replaces every value under a secret-looking key with `[redacted]`; returns how many.
pub fn redact(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => redact_map(map),
        Value::Array(items) => items.iter_mut().map(redact).sum(),
        _ => 0,
    }
}

/// [`redact`] for the entries of a map.
fn redact_map(map: &mut Map<String, Value>) -> usize {
    let mut n = 0;
    for (k, v) in map.iter_mut() {
        let hidden = v
            .as_str()
            .is_some_and(|s| s == REDACTED || s == SECRET_INPUT);
        if is_secret_key(k) && !v.is_null() && !hidden {
            *v = Value::String(REDACTED.to_owned());
            n += 1;
        } else {
            n += redact(v);
        }
    }
    n
}

/// Hides the secrets in a run's document before it leaves the engine (API answers, printed
/// status): the inputs `def` declares secret become `[secret]`, and every value under a
/// secret-looking key becomes `[redacted]` in the inputs, the company settings, every step's
/// output, and every rollback record (an inverse's input and the prior state). Idempotent.
pub fn redact_doc(doc: &mut RunDoc, def: &WorkflowDef) {
    let inputs = &mut doc.ctx.inputs;
    for (name, decl) in &def.inputs {
        if decl.secret
            && let Some(v) = inputs.get_mut(name)
        {
            *v = Value::String(SECRET_INPUT.to_owned());
        }
    }
    redact_map(inputs);
    redact_map(&mut doc.ctx.company_settings);
    for rec in doc.state.steps.values_mut() {
        let StepState::Succeeded {
            output, rollback, ..
        } = &mut rec.state
        else {
            continue;
        };
        redact(output);
        match rollback {
            Rollback::Nothing => {}
            Rollback::Inverse { input, prior, .. } => {
                redact(input);
                redact(prior);
            }
            Rollback::Irreversible { prior, .. } => {
                redact(prior);
            }
        }
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

    fn doc() -> (RunDoc, WorkflowDef) {
        let def: WorkflowDef = serde_yaml_ng::from_str(
            "name: w\ninputs:\n  pin: {type: string, secret: true}\n  upn: {type: string}\n  note: {type: string, secret: true, required: false}\nsteps:\n  - {id: a, op: x}\n  - {id: b, op: x}\n  - {id: c, op: x}\n",
        )
        .unwrap();
        let doc: RunDoc = serde_json::from_value(json!({
            "v": 1,
            "ctx": {
                "run_id": "run_01ARZ3NDEKTSV4RRFFQ69G5FAV",
                "workflow": {"name": "w", "version": 1, "hash": "h"},
                "company": "contoso",
                "company_settings": {
                    "name": "Contoso",
                    "psa": {"kind": "halopsa", "client_secret": "cs-1"},
                    "rmm_api_key": "rk-1"
                },
                "inputs": {"pin": "4711", "upn": "jane@contoso.com", "extra": {"password": "pw-1"}},
                "requested_by": "tech@msp",
                "created_at": "2026-01-01T00:00:00.000000Z"
            },
            "state": {
                "status": {"status": "running"},
                "updated_at": "2026-01-01T00:00:00.000000Z",
                "steps": {
                    "a": {
                        "seq": 1, "state": "succeeded", "attempt": 1, "at": "2026-01-01T00:00:00.000000Z",
                        "output": {"id": "u1", "temporaryPassword": "pw-2"},
                        "rollback": {"kind": "inverse", "op": "user.delete",
                            "input": {"id": "u1", "token": "tk-1"},
                            "prior": {"profile": {"passphrase": "pp-1"}, "upn": "jane@contoso.com"}}
                    },
                    "b": {
                        "seq": 1, "state": "succeeded", "attempt": 1, "at": "2026-01-01T00:00:00.000000Z",
                        "output": [{"secret": "s-1"}],
                        "rollback": {"kind": "irreversible", "reason": "r",
                            "prior": {"credential": "cr-1", "enabled": true}}
                    },
                    "c": {"seq": 0, "state": "pending"}
                }
            }
        }))
        .unwrap();
        (doc, def)
    }

    #[test]
    fn a_run_document_loses_every_secret() {
        let (mut doc, def) = doc();
        let clean = serde_json::to_string(&doc).unwrap();
        for s in [
            "4711", "cs-1", "rk-1", "pw-1", "pw-2", "tk-1", "pp-1", "s-1", "cr-1",
        ] {
            assert!(clean.contains(s), "the fixture holds {s}");
        }
        redact_doc(&mut doc, &def);
        let text = serde_json::to_string(&doc).unwrap();
        for s in [
            "4711", "cs-1", "rk-1", "pw-1", "pw-2", "tk-1", "pp-1", "s-1", "cr-1",
        ] {
            assert!(!text.contains(s), "{s} survived: {text}");
        }
        assert_eq!(doc.ctx.inputs["pin"], SECRET_INPUT);
        assert!(
            !doc.ctx.inputs.contains_key("note"),
            "a secret the run was not given is not invented"
        );
        assert_eq!(doc.ctx.inputs["extra"]["password"], REDACTED);
        assert_eq!(doc.ctx.inputs["upn"], "jane@contoso.com");
        assert_eq!(doc.ctx.company_settings["name"], "Contoso");
        assert_eq!(doc.ctx.company_settings["psa"]["kind"], "halopsa");
        let StepState::Succeeded {
            output, rollback, ..
        } = &doc.state.steps["a"].state
        else {
            panic!()
        };
        assert_eq!(output["id"], "u1");
        let Rollback::Inverse { input, prior, .. } = rollback else {
            panic!()
        };
        assert_eq!(input["id"], "u1");
        assert_eq!(prior["upn"], "jane@contoso.com");
        let again = doc.clone();
        redact_doc(&mut doc, &def);
        assert_eq!(doc, again, "redaction is idempotent");
    }
}
