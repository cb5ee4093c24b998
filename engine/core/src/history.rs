//! What a transition changed, in words, and the redaction applied before anything is recorded.

use serde_json::{Map, Value};
use steward_schemas::{
    CompState, Rollback, RollbackCause, RunDoc, RunState, RunStatus, StepFailure, StepRecord,
    StepState, WorkflowDef,
};

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

/// The text that replaces a value that came from a secret: an input the workflow declares
/// `secret: true`, or anything sealed (`stw1:…`) — whatever key it sits under.
pub const SECRET_INPUT: &str = "[secret]";

/// Plaintext secrets this long or longer are recognised inside longer text; shorter ones only as
/// the whole text (a two-letter secret would match half of every word).
const MIN_SCRUB_LEN: usize = 4;

/// Where sealed values (`stw1:<key id>:<base64url data>`, see the engine's `secrets` module) sit
/// in `text`, as byte ranges. The core only recognises the form (it never opens anything); the
/// engine tests that this agrees with what its keyring seals.
fn sealed_spans(text: &str) -> Vec<(usize, usize)> {
    const PREFIX: &str = "stw1:";
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX) {
        let start = from + at;
        let kid = start + PREFIX.len();
        let mut i = kid;
        while i < bytes.len()
            && i - kid <= 32
            && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'.' | b'_' | b'-'))
        {
            i += 1;
        }
        if i == kid || i - kid > 32 || bytes.get(i) != Some(&b':') {
            from = start + 1;
            continue;
        }
        let data = i + 1;
        let mut j = data;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || matches!(bytes[j], b'_' | b'-'))
        {
            j += 1;
        }
        if j - data < 38 {
            from = start + 1;
            continue;
        }
        out.push((start, j));
        from = j;
    }
    out
}

/// Whether `text` holds a sealed value.
pub fn looks_sealed(text: &str) -> bool {
    text.contains("stw1:") && !sealed_spans(text).is_empty()
}

/// Hides every value that came from a secret, and every value under a secret-looking key:
/// a string holding a sealed value becomes `[secret]`, a value under a secret-looking key
/// `[redacted]`. Returns how many values it hid. Idempotent.
pub fn redact(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => redact_map(map),
        Value::Array(items) => items.iter_mut().map(redact).sum(),
        Value::String(s) if looks_sealed(s) => {
            *s = SECRET_INPUT.to_owned();
            1
        }
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

/// Hides, in a value, every string that holds one of `plain` (secret inputs stored in clear by
/// an older Steward): the whole string becomes `[secret]`.
fn hide_plain(value: &mut Value, plain: &[&str]) {
    match value {
        Value::String(s) if holds_plain(s, plain) => *s = SECRET_INPUT.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(|v| hide_plain(v, plain)),
        Value::Object(map) => map.values_mut().for_each(|v| hide_plain(v, plain)),
        _ => {}
    }
}

fn holds_plain(s: &str, plain: &[&str]) -> bool {
    plain
        .iter()
        .any(|p| s == *p || (p.len() >= MIN_SCRUB_LEN && s.contains(p)))
}

/// Hides secrets inside free text (an error message, a note): each sealed value and each of
/// `plain` becomes `[secret]`, the rest of the text stays.
fn hide_in_text(text: &mut String, plain: &[&str]) {
    let spans = sealed_spans(text);
    if !spans.is_empty() {
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (start, end) in spans {
            out.push_str(&text[pos..start]);
            out.push_str(SECRET_INPUT);
            pos = end;
        }
        out.push_str(&text[pos..]);
        *text = out;
    }
    for p in plain {
        if *text == *p {
            *text = SECRET_INPUT.to_owned();
        } else if p.len() >= MIN_SCRUB_LEN && text.contains(p) {
            *text = text.replace(p, SECRET_INPUT);
        }
    }
}

fn hide_failure(error: &mut StepFailure, plain: &[&str]) {
    hide_in_text(&mut error.message, plain);
}

fn hide_cause(cause: &mut RollbackCause, plain: &[&str]) {
    match cause {
        RollbackCause::StepFailed { message, .. } => hide_in_text(message, plain),
        RollbackCause::Cancelled { .. } | RollbackCause::Rejected { .. } => {}
    }
}

/// Hides the sealed values in a run's status (the message of the failure that made it roll
/// back), for views that show the status without the rest of the document (run lists).
pub fn redact_status(status: &mut RunStatus) {
    hide_status(status, &[]);
}

fn hide_status(status: &mut RunStatus, plain: &[&str]) {
    match status {
        RunStatus::RollingBack { cause }
        | RunStatus::RolledBack { cause, .. }
        | RunStatus::RollbackFailed { cause, .. } => hide_cause(cause, plain),
        RunStatus::Created
        | RunStatus::Scheduled { .. }
        | RunStatus::Running
        | RunStatus::Paused { .. }
        | RunStatus::Cancelling { .. }
        | RunStatus::Completed { .. }
        | RunStatus::Cancelled { .. } => {}
    }
}

/// Hides the secrets in a run's document before it leaves the engine (API answers, printed
/// status), by where each value came from as well as by its key:
/// - the inputs `def` declares secret become `[secret]`;
/// - anything sealed (`stw1:…`) becomes `[secret]` wherever it is: the worker seals what an op
///   copied out of a secret into its output or rollback record, under whatever key;
/// - a secret input an older Steward stored in clear is looked for by value, in every output,
///   rollback record and error message;
/// - values under secret-looking keys become `[redacted]` in the inputs, the company settings,
///   every step's output and every rollback record.
///
/// Idempotent.
pub fn redact_doc(doc: &mut RunDoc, def: &WorkflowDef) {
    let inputs = &mut doc.ctx.inputs;
    let mut plain_values: Vec<String> = Vec::new();
    for (name, decl) in &def.inputs {
        if decl.secret
            && let Some(v) = inputs.get_mut(name)
        {
            if let Value::String(s) = v
                && !s.is_empty()
                && s != SECRET_INPUT
                && !looks_sealed(s)
            {
                plain_values.push(std::mem::take(s));
            }
            *v = Value::String(SECRET_INPUT.to_owned());
        }
    }
    let plain: Vec<&str> = plain_values.iter().map(String::as_str).collect();
    redact_map(inputs);
    redact_map(&mut doc.ctx.company_settings);
    hide_status(&mut doc.state.status, &plain);
    for rec in doc.state.steps.values_mut() {
        match &mut rec.undo {
            Some(CompState::Retrying { error, .. } | CompState::Failed { error, .. }) => {
                hide_failure(error, &plain);
            }
            Some(CompState::Irreversible { reason }) => hide_in_text(reason, &plain),
            // A technician's own words: they may quote a value, so hide plain secrets there too.
            Some(CompState::Resolved { comment, .. }) => hide_in_text(comment, &plain),
            Some(
                CompState::Waiting
                | CompState::Queued { .. }
                | CompState::Done { .. }
                | CompState::Blocked { .. },
            )
            | None => {}
        }
        match &mut rec.state {
            StepState::Succeeded {
                output, rollback, ..
            } => {
                hide_plain(output, &plain);
                redact(output);
                match rollback {
                    Rollback::Nothing => {}
                    Rollback::Inverse { input, prior, .. } => {
                        hide_plain(input, &plain);
                        hide_plain(prior, &plain);
                        redact(input);
                        redact(prior);
                    }
                    Rollback::Irreversible { reason, prior } => {
                        hide_in_text(reason, &plain);
                        hide_plain(prior, &plain);
                        redact(prior);
                    }
                }
            }
            StepState::Retrying { error, .. } | StepState::Failed { error, .. } => {
                hide_failure(error, &plain);
            }
            StepState::Polling {
                note: Some(note), ..
            } => hide_in_text(note, &plain),
            StepState::Pending
            | StepState::Ready { .. }
            | StepState::AwaitingApproval { .. }
            | StepState::Queued { .. }
            | StepState::Polling { note: None, .. }
            | StepState::Skipped { .. }
            | StepState::Cancelled { .. } => {}
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

    const SEALED: &str = "stw1:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn values_are_hidden_by_where_they_came_from_not_only_by_key() {
        let (mut doc, def) = doc();
        // The run as this Steward stores it: the secret input sealed, and a step that copied it
        // into its output under an innocent key (sealed again by the worker), inside text too.
        doc.ctx
            .inputs
            .insert("pin".into(), Value::String(SEALED.into()));
        let StepState::Succeeded { output, .. } = &mut doc.state.steps.get_mut("a").unwrap().state
        else {
            panic!()
        };
        *output = serde_json::json!({
            "id": "u1",
            "display": SEALED,
            "sentence": format!("pin is {SEALED}!"),
            "list": [SEALED, "fine"]
        });
        redact_doc(&mut doc, &def);
        let StepState::Succeeded { output, .. } = &doc.state.steps["a"].state else {
            panic!()
        };
        assert_eq!(output["display"], SECRET_INPUT);
        assert_eq!(output["sentence"], SECRET_INPUT);
        assert_eq!(output["list"], serde_json::json!([SECRET_INPUT, "fine"]));
        assert_eq!(output["id"], "u1");
        assert_eq!(doc.ctx.inputs["pin"], SECRET_INPUT);
        assert!(!serde_json::to_string(&doc).unwrap().contains("stw1:"));
    }

    #[test]
    fn a_secret_stored_in_clear_by_an_older_steward_is_found_by_value() {
        let (mut doc, def) = doc();
        doc.ctx
            .inputs
            .insert("pin".into(), Value::String("Sesame-7731".into()));
        let a = doc.state.steps.get_mut("a").unwrap();
        let StepState::Succeeded { output, .. } = &mut a.state else {
            panic!()
        };
        output["innocent"] = Value::String("Sesame-7731".into());
        output["note"] = Value::String("the pin is Sesame-7731".into());
        doc.state.steps.get_mut("c").unwrap().state = StepState::Failed {
            attempt: steward_schemas::Attempt::FIRST,
            at: doc.ctx.created_at,
            error: StepFailure::terminal(format!("pin Sesame-7731 refused; also {SEALED}")),
        };
        doc.state.status = RunStatus::RollingBack {
            cause: RollbackCause::StepFailed {
                step: steward_schemas::StepId::parse("c").unwrap(),
                message: "pin Sesame-7731 refused".into(),
            },
        };
        redact_doc(&mut doc, &def);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(
            !text.contains("Sesame") && !text.contains("stw1:"),
            "{text}"
        );
        let StepState::Failed { error, .. } = &doc.state.steps["c"].state else {
            panic!()
        };
        assert_eq!(error.message, "pin [secret] refused; also [secret]");
        let StepState::Succeeded { output, .. } = &doc.state.steps["a"].state else {
            panic!()
        };
        assert_eq!(output["innocent"], SECRET_INPUT);
        assert_eq!(output["id"], "u1");
        let again = doc.clone();
        redact_doc(&mut doc, &def);
        assert_eq!(doc, again, "redaction is idempotent");
    }
}
