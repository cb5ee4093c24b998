//! Secret run inputs: sealed when the run is created, opened by the worker right before the op
//! runs, and sealed again wherever the op copies them into what it reports.
//!
//! A secret input is sealed for its run ([`Context::run_secret`]) the moment the store creates
//! the run, so the run document, every job in the step stream (which carries the job's bound
//! input and a copy of the document), dead letters and the AOF hold only the sealed form. The
//! pure core binds `with:` templates as usual and so carries the sealed form into job inputs
//! (`"Bearer ${{ inputs.token }}"` binds to `"Bearer stw1:…"`). The worker opens every sealed
//! value in a job's input just before calling the op, and afterwards seals again any opened value
//! the op put in its output or rollback record — under whatever key it put it — so a later step
//! can still use it (`${{ steps.a.output.x }}` binds the sealed form, which that step's worker
//! opens). Error messages and notes are for people: an opened value there becomes `[secret]`.
//! The sealed form is also what marks a value as secret for redaction
//! (`steward_core::history::redact_doc`): it is redacted because of where it came from, not
//! because of its key.

use serde_json::{Map, Value};
use steward_core::history::SECRET_INPUT;
use steward_core::inputs::InputProblem;
use steward_schemas::{Event, Rollback, RunId, StepFailure, WorkflowDef};

use super::{Context, Keyring, Secret, contains_sealed};

/// Opened values at least this long are recognised inside longer text an op reports; shorter
/// ones only when they are the whole text (a two-letter secret would match half of every word).
pub const MIN_SCRUB_LEN: usize = 4;

/// Seals the inputs `def` declares secret (empty text is not a secret, and stays empty so a
/// `when:` can still test whether one was given). Refuses any input that already holds a sealed
/// value: sealed values come from this Steward only, never from a caller.
pub fn seal_inputs(
    ring: Option<&Keyring>,
    def: &WorkflowDef,
    run: RunId,
    mut inputs: Map<String, Value>,
) -> Result<Map<String, Value>, Vec<InputProblem>> {
    let mut problems = Vec::new();
    for (name, value) in &inputs {
        if holds_sealed(value) {
            problems.push(InputProblem {
                name: name.clone(),
                message: "holds text in Steward's sealed-secret form (`stw1:…`)".to_owned(),
                fix: "give the value itself; Steward seals secret inputs when the run starts"
                    .to_owned(),
            });
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let cx = Context::run_secret(&run.to_string());
    for (name, decl) in &def.inputs {
        if !decl.secret {
            continue;
        }
        let Some(Value::String(plain)) = inputs.get_mut(name) else {
            continue;
        };
        if plain.is_empty() {
            continue;
        }
        let Some(ring) = ring else {
            problems.push(InputProblem {
                name: name.clone(),
                message: "is secret, and this Steward process has no secrets key to store it encrypted".to_owned(),
                fix: "configure secrets.key-dir and secrets.active-key (see deploy/steward.toml) on the process that starts runs".to_owned(),
            });
            continue;
        };
        let secret = Secret::new(std::mem::take(plain));
        *plain = ring.seal(&secret, &cx);
    }
    if problems.is_empty() {
        Ok(inputs)
    } else {
        Err(problems)
    }
}

fn holds_sealed(value: &Value) -> bool {
    match value {
        Value::String(s) => contains_sealed(s),
        Value::Array(items) => items.iter().any(holds_sealed),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| contains_sealed(k) || holds_sealed(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// A job's input with its sealed values opened, and those values (to recognise them in what the
/// op reports). Never printed.
pub struct Opened {
    /// The input the op gets.
    pub input: Value,
    /// The values opened, wiped from memory when dropped.
    pub secrets: Vec<Secret>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({} secrets)", self.secrets.len())
    }
}

/// Opens every sealed value in a job's input (run `run`). The error is a message for the step's
/// failure: it names the key and the fix, never a value.
pub fn open_input(ring: Option<&Keyring>, run: RunId, input: &Value) -> Result<Opened, String> {
    let mut secrets = Vec::new();
    let mut out = input.clone();
    let cx = Context::run_secret(&run.to_string());
    let mut error = None;
    map_strings(&mut out, &mut |s: &mut String| {
        if error.is_some() || !contains_sealed(s) {
            return;
        }
        let Some(ring) = ring else {
            error = Some("the step's input holds a secret, and this worker has no secrets key to open it; configure secrets.key-dir and secrets.active-key on the worker (see deploy/steward.toml), then retry the step".to_owned());
            return;
        };
        match ring.open_within(s, &cx, &mut secrets) {
            Ok(Some(plain)) => *s = plain.expose().to_owned(),
            Ok(None) => {}
            Err(e) => {
                error = Some(format!(
                    "cannot open the step's secret input: {e}; then retry the step"
                ))
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(Opened {
            input: out,
            secrets,
        }),
    }
}

/// Seals again (in outputs and rollback records) or hides (in messages and notes) every opened
/// secret an op put in what it reports.
pub fn protect(ring: Option<&Keyring>, run: RunId, secrets: &[Secret], event: &mut Event) {
    let mut known: Vec<&Secret> = secrets.iter().filter(|s| !s.is_empty()).collect();
    if known.is_empty() {
        return;
    }
    known.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
    let cx = Context::run_secret(&run.to_string());
    let seal = |value: &mut Value| {
        map_strings(value, &mut |s: &mut String| {
            if let Some(r) = replace_known(s, &known, &mut |secret: &Secret| match ring {
                Some(ring) => ring.seal(secret, &cx),
                None => SECRET_INPUT.to_owned(),
            }) {
                *s = r;
            }
        });
    };
    match event {
        Event::StepSucceeded {
            output, rollback, ..
        } => {
            seal(output);
            match rollback {
                Rollback::Nothing => {}
                Rollback::Inverse { input, prior, .. } => {
                    seal(input);
                    seal(prior);
                }
                Rollback::Irreversible { reason, prior } => {
                    hide(reason, &known);
                    seal(prior);
                }
            }
        }
        Event::StepPending {
            note: Some(note), ..
        } => hide(note, &known),
        Event::StepFailed { error, .. } | Event::UndoFailed { error, .. } => {
            hide_failure(error, &known);
        }
        _ => {}
    }
}

fn hide(text: &mut String, known: &[&Secret]) {
    if let Some(r) = replace_known(text, known, &mut |_| SECRET_INPUT.to_owned()) {
        *text = r;
    }
}

fn hide_failure(error: &mut StepFailure, known: &[&Secret]) {
    hide(&mut error.message, known);
    if let Some(code) = &mut error.code {
        hide(code, known);
    }
}

/// `text` with each known secret (longest first) replaced by `with(secret)`; `None` if none
/// occurs. Short secrets count only as the whole text.
fn replace_known(
    text: &str,
    known: &[&Secret],
    with: &mut dyn FnMut(&Secret) -> String,
) -> Option<String> {
    if let Some(whole) = known.iter().find(|s| s.expose() == text) {
        return Some(with(whole));
    }
    let long: Vec<&&Secret> = known
        .iter()
        .filter(|s| s.expose().len() >= MIN_SCRUB_LEN)
        .collect();
    if !long.iter().any(|s| text.contains(s.expose())) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < text.len() {
        for s in &long {
            if text[i..].starts_with(s.expose()) {
                out.push_str(&with(s));
                i += s.expose().len();
                continue 'outer;
            }
        }
        let c = text[i..].chars().next().expect("i is below the length");
        out.push(c);
        i += c.len_utf8();
    }
    Some(out)
}

/// Applies `f` to every string in `value`, map keys included.
fn map_strings(value: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|v| map_strings(v, f)),
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (mut k, mut v) in old {
                f(&mut k);
                map_strings(&mut v, f);
                map.insert(k, v);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use steward_secrets::generate_key;

    fn ring() -> Keyring {
        Keyring::new(
            "k1",
            vec![steward_secrets::parse_key("k1", &generate_key(), "test").unwrap()],
        )
        .unwrap()
    }

    fn def() -> WorkflowDef {
        serde_json::from_value(json!({
            "name": "w",
            "inputs": {
                "pw": {"type": "string", "secret": true},
                "note": {"type": "string", "secret": true, "required": false},
                "upn": {"type": "string"}
            },
            "steps": [{"id": "a", "op": "noop"}]
        }))
        .unwrap()
    }

    fn run(n: u128) -> RunId {
        RunId::from_ulid(ulid::Ulid::from(n))
    }

    #[test]
    fn secret_inputs_are_sealed_for_their_run_and_opened_in_the_worker() {
        let ring = ring();
        let inputs = json!({"pw": "Sesame-7731", "note": "", "upn": "jane@contoso.com"});
        let sealed = seal_inputs(
            Some(&ring),
            &def(),
            run(1),
            inputs.as_object().unwrap().clone(),
        )
        .unwrap();
        let pw = sealed["pw"].as_str().unwrap();
        assert!(pw.starts_with("stw1:k1:") && !pw.contains("Sesame"));
        assert_eq!(sealed["note"], "", "an empty secret stays empty");
        assert_eq!(sealed["upn"], "jane@contoso.com");

        // The core binds templates with the sealed form; the worker opens it, even inside text.
        let job = json!({"password": pw, "header": format!("Basic {pw}"), "user": "jane"});
        let opened = open_input(Some(&ring), run(1), &job).unwrap();
        assert_eq!(
            opened.input,
            json!({"password": "Sesame-7731", "header": "Basic Sesame-7731", "user": "jane"})
        );
        assert_eq!(format!("{opened:?}"), "Opened(2 secrets)");
        // Another run's worker cannot open it.
        let err = open_input(Some(&ring), run(2), &job).unwrap_err();
        assert!(
            err.contains("does not open") && !err.contains("Sesame"),
            "{err}"
        );
        let err = open_input(None, run(1), &job).unwrap_err();
        assert!(err.contains("no secrets key"), "{err}");

        // Without a key a secret input is refused, naming it; a sealed value is never an input.
        let problems =
            seal_inputs(None, &def(), run(1), inputs.as_object().unwrap().clone()).unwrap_err();
        assert_eq!(problems[0].name, "pw");
        let smuggled = json!({"pw": "x", "upn": pw});
        let problems = seal_inputs(
            Some(&ring),
            &def(),
            run(1),
            smuggled.as_object().unwrap().clone(),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("input `upn`: holds text in Steward's sealed-secret form")
        );
    }

    #[test]
    fn what_an_op_copies_out_of_a_secret_is_sealed_again_or_hidden() {
        let ring = ring();
        let r = run(7);
        let secrets = vec![Secret::from("Sesame-7731"), Secret::from("ab")];
        let mut event: Event = serde_json::from_value(json!({
            "type": "step_succeeded", "step": "a", "seq": 1,
            "output": {"innocent": "Sesame-7731", "sentence": "pw is Sesame-7731!", "short": "ab", "cab": "cab", "n": 1},
            "rollback": {"kind": "inverse", "op": "noop", "input": {"restore": "Sesame-7731"}, "prior": {}}
        }))
        .unwrap();
        protect(Some(&ring), r, &secrets, &mut event);
        let text = serde_json::to_string(&event).unwrap();
        assert!(!text.contains("Sesame"), "{text}");
        let Event::StepSucceeded {
            output, rollback, ..
        } = &event
        else {
            panic!()
        };
        assert!(output["innocent"].as_str().unwrap().starts_with("stw1:k1:"));
        assert_eq!(
            output["cab"], "cab",
            "a short secret counts only as the whole text"
        );
        assert!(output["short"].as_str().unwrap().starts_with("stw1:k1:"));
        assert_eq!(output["n"], 1);
        // What was sealed opens back to what the op returned, for the next step.
        let opened = open_input(Some(&ring), r, output).unwrap();
        assert_eq!(opened.input["sentence"], "pw is Sesame-7731!");
        let Rollback::Inverse { input, .. } = rollback else {
            panic!()
        };
        assert!(input["restore"].as_str().unwrap().starts_with("stw1:"));

        let mut failed: Event = serde_json::from_value(json!({
            "type": "step_failed", "step": "a", "seq": 1,
            "error": {"kind": "terminal", "message": "password Sesame-7731 is too weak"}
        }))
        .unwrap();
        protect(Some(&ring), r, &secrets, &mut failed);
        let Event::StepFailed { error, .. } = &failed else {
            panic!()
        };
        assert_eq!(error.message, "password [secret] is too weak");
    }
}
