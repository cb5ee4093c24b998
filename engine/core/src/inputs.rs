//! Checking a run's inputs against its workflow's declarations.

use serde_json::{Map, Value};
use steward_schemas::WorkflowDef;

/// One bad input: its name, what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input `{name}`: {message}; {fix}")]
pub struct InputProblem {
    /// The input.
    pub name: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// `given` with the company's input defaults (`defaults.inputs`) added for the workflow's inputs
/// it does not give; they take the place of the workflow's own defaults. Values of the wrong type
/// are left for [`prepare_inputs`] to report.
pub fn with_company_defaults(
    def: &WorkflowDef,
    given: &Map<String, Value>,
    company_defaults: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = given.clone();
    if let Some(defaults) = company_defaults {
        for (name, value) in defaults {
            if def.inputs.contains_key(name) && !out.contains_key(name) {
                out.insert(name.clone(), value.clone());
            }
        }
    }
    out
}

/// The run's inputs with defaults applied, or every problem with them.
pub fn prepare_inputs(
    def: &WorkflowDef,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, Vec<InputProblem>> {
    let mut problems = Vec::new();
    let mut out = Map::new();
    for name in given.keys() {
        if !def.inputs.contains_key(name) {
            let known: Vec<&str> = def.inputs.keys().map(String::as_str).collect();
            problems.push(InputProblem {
                name: name.clone(),
                message: format!("workflow `{}` has no such input", def.name),
                fix: if known.is_empty() {
                    "it takes no inputs".to_owned()
                } else {
                    format!("its inputs are: {}", known.join(", "))
                },
            });
        }
    }
    for (name, decl) in &def.inputs {
        match given.get(name) {
            Some(v) if decl.kind.accepts(v) => {
                out.insert(name.clone(), v.clone());
            }
            Some(v) => problems.push(InputProblem {
                name: name.clone(),
                message: format!("expected a {}, got {}", decl.kind.name(), type_name(v)),
                fix: format!("give a {} value", decl.kind.name()),
            }),
            None => match &decl.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None if decl.required => problems.push(InputProblem {
                    name: name.clone(),
                    message: "is required".to_owned(),
                    fix: format!(
                        "pass it, e.g. `--input {name}=…`{}",
                        if decl.description.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", decl.description)
                        }
                    ),
                }),
                None => {}
            },
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_are_checked_and_defaulted() {
        let def: WorkflowDef = serde_json::from_value(json!({
            "name": "w",
            "inputs": {
                "upn": {"type": "string", "description": "the user's UPN"},
                "shared": {"type": "boolean", "default": false},
                "note": {"required": false}
            },
            "steps": [{"id": "a", "op": "noop"}]
        }))
        .unwrap();
        let ok = prepare_inputs(&def, json!({"upn": "a@b.c"}).as_object().unwrap()).unwrap();
        assert_eq!(
            ok,
            *json!({"upn": "a@b.c", "shared": false})
                .as_object()
                .unwrap()
        );
        let errs = prepare_inputs(
            &def,
            json!({"shared": "yes", "extra": 1}).as_object().unwrap(),
        )
        .unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert!(
            text.iter()
                .any(|t| t.contains("input `extra`: workflow `w` has no such input")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("input `shared`: expected a boolean, got text")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("input `upn`: is required") && t.contains("the user's UPN")),
            "{text:?}"
        );
    }
}
