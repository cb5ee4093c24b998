//! The workflow definition format (`workflows/*.yaml`).
//!
//! A workflow is a graph of steps. Each step runs one op with inputs bound from the run's inputs,
//! the company's settings and earlier steps' outputs (`${{ inputs.upn }}`,
//! `${{ company.defaults.upn_domain }}`, `${{ steps.create_user.output.id }}`), after every step it
//! `needs` has succeeded or been skipped, and only if its `when` condition holds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::time::Dur;

/// A workflow: a named, versioned graph of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Steward workflow")]
pub struct WorkflowDef {
    /// The workflow's name, e.g. `onboarding`: lowercase letters, digits, `_` and `-`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_-]{0,63}$"))]
    pub name: String,
    /// The definition's version; runs pin the exact content by hash as well.
    #[serde(default = "one")]
    pub version: u32,
    /// What the workflow does, for technicians. A template: may refer to `${{ inputs.NAME }}`,
    /// `${{ company.FIELD }}` and `${{ run.… }}` (filled in where a run is shown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The inputs a run takes (`steward run … --input name=value`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputDef>,
    /// Settings every step inherits unless it sets its own.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// The steps. Order does not matter: `needs` decides it.
    pub steps: Vec<StepDef>,
}

fn one() -> u32 {
    1
}

/// One input of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    /// The value's type.
    #[serde(rename = "type", default)]
    pub kind: InputType,
    /// Whether a run must supply it (ignored when `default` is set).
    #[serde(default = "yes")]
    pub required: bool,
    /// The value used when a run does not supply one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What the input means, for technicians: plain text (it is shown before a run exists).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A secret (a password): never shown in run status or history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

fn yes() -> bool {
    true
}

/// The type of an input value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputType {
    /// Text.
    #[default]
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// A list.
    Array,
    /// A map.
    Object,
    /// Anything.
    Any,
}

impl InputType {
    /// Whether `value` has this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            Self::String => value.is_string(),
            Self::Number => value.is_number(),
            Self::Boolean => value.is_boolean(),
            Self::Array => value.is_array(),
            Self::Object => value.is_object(),
            Self::Any => true,
        }
    }

    /// The type's name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Array => "array",
            Self::Object => "object",
            Self::Any => "any",
        }
    }
}

/// Settings every step inherits unless it sets its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// How failed attempts are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// How long one attempt may run before it counts as a retryable failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// What a step's final failure does to the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// How long a step may keep answering "not yet" (e.g. waiting for a directory sync) before it
    /// fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Dur>,
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDef {
    /// The step's id, unique in the workflow: lowercase letters, digits and `_`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,63}$"))]
    pub id: String,
    /// The op the step runs, e.g. `user.create` (see `steward ops`). A gate step has `gate:`
    /// instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    /// Makes the step an approval gate: the steps that need it wait for the approvers' yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
    /// What the step does, for technicians and approvers. A template with the same references
    /// as `with:` (a step output only from a step it needs; never a secret input), filled in
    /// wherever the run is shown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Steps that must succeed (or be skipped) before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// The op's inputs. Strings may reference `${{ inputs.NAME }}`, `${{ company.FIELD }}`,
    /// `${{ steps.ID.output.FIELD }}` and `${{ run.id }}`; a string that is exactly one reference
    /// takes the referenced value with its type.
    #[serde(
        default,
        rename = "with",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    #[schemars(with = "BTreeMap<String, Value>")]
    pub with: serde_json::Map<String, Value>,
    /// A condition; the step is skipped when it is false. E.g.
    /// `inputs.mailbox == 'shared' && !inputs.keep_license`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// How failed attempts are retried (overrides the workflow's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// How long one attempt may run (overrides the workflow's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// What this step's final failure does to the run (overrides the workflow's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// How long the op may keep answering "not yet" before the step fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<Dur>,
}

/// An approval gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// Who decides: `company` (the company's approvers when the gate opens) or a list of
    /// technicians' emails.
    #[serde(default)]
    pub approvers: Approvers,
    /// How many different approvers must say yes.
    #[serde(default = "one")]
    pub quorum: u32,
    /// How long the gate waits for a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<Dur>,
    /// What happens when it expires.
    #[serde(default)]
    pub on_expiry: OnExpiry,
    /// Who decides once it has been escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_to: Option<Approvers>,
    /// How long the escalated gate waits (default: `expires_in`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate_expires_in: Option<Dur>,
    /// What approvers are asked, in a sentence. A template with the same references as `with:`
    /// (e.g. `Delete ${{ inputs.user }}'s mailbox?`; never a secret input), filled in in the
    /// inbox, on the link page and in notes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Who decides a gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Approvers {
    /// `company`: the company's approvers, as they are when the gate opens.
    Source(ApproverSource),
    /// These technicians (emails).
    List(Vec<String>),
}

impl Approvers {
    /// The company's approvers.
    pub const COMPANY: Self = Self::Source(ApproverSource::Company);
}

impl Default for Approvers {
    fn default() -> Self {
        Self::COMPANY
    }
}

/// A named source of approvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApproverSource {
    /// The company's approvers.
    #[default]
    Company,
}

/// What an expired gate does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnExpiry {
    /// Counts as a rejection: the run rolls back.
    #[default]
    Reject,
    /// Hands the gate to `escalate_to` with a new expiry; if that expires too, it is rejected.
    Escalate,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included (1 = no retry).
    pub attempts: u32,
    /// How the delay grows between attempts.
    #[serde(default)]
    pub backoff: Backoff,
    /// The delay before the second attempt.
    #[serde(default = "default_initial")]
    pub initial: Dur,
    /// The longest delay between two attempts.
    #[serde(default = "default_max_delay")]
    pub max_delay: Dur,
    /// The growth factor of exponential backoff.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// The fraction of each delay that is randomised (0 to 1), so that retries of many runs
    /// do not hit a service at the same instant.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
}

fn default_initial() -> Dur {
    Dur::secs(1)
}

fn default_max_delay() -> Dur {
    Dur::secs(300)
}

fn default_multiplier() -> f64 {
    2.0
}

fn default_jitter() -> f64 {
    0.2
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Backoff::Exponential,
            initial: default_initial(),
            max_delay: default_max_delay(),
            multiplier: default_multiplier(),
            jitter: default_jitter(),
        }
    }
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `initial × multiplier^(attempt-1)`, capped at `max_delay`.
    #[default]
    Exponential,
    /// Always `initial`.
    Fixed,
}

/// What a step's final failure does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Undo every change the run made, newest first, and end `rolled_back`.
    Rollback,
    /// Stop and wait for a technician to retry or skip the step, or cancel the run.
    Pause,
    /// Go on with the steps that do not depend on this one; the run ends `completed` with this
    /// step listed as failed.
    Continue,
}

impl OnFailure {
    /// The name as written in YAML.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rollback => "rollback",
            Self::Pause => "pause",
            Self::Continue => "continue",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_workflow_parses_with_defaults() {
        let def: WorkflowDef = serde_json::from_value(serde_json::json!({
            "name": "w",
            "steps": [{"id": "a", "op": "noop"}, {"id": "b", "op": "noop", "needs": ["a"],
                       "retry": {"attempts": 5}, "timeout": "30s"}]
        }))
        .unwrap();
        assert_eq!(def.version, 1);
        let b = &def.steps[1];
        assert_eq!(b.retry.as_ref().unwrap().initial, Dur::secs(1));
        assert_eq!(b.timeout, Some(Dur::secs(30)));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = serde_json::from_value::<WorkflowDef>(serde_json::json!({
            "name": "w", "steps": [{"id": "a", "op": "noop", "neds": ["x"]}]
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `neds`"), "{err}");
    }
}
