//! What the op registry says about each op.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

use crate::policy::PermissionGroup;

/// A registry entry: what an op takes and gives, and how its changes are undone.
#[derive(Debug, Clone, Serialize)]
pub struct OpSpec {
    /// The op's name, e.g. `user.create`.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Whether it reads or writes.
    pub access: OpAccess,
    /// The permission group a company's policy allows it by.
    pub group: PermissionGroup,
    /// Whether it needs approval whatever the policy says, or is never allowed.
    pub approval: ApprovalRule,
    /// The system it acts on (resolved to a host per company when a run is planned).
    pub system: System,
    /// How a succeeded run of it is undone.
    pub reversibility: Reversibility,
    /// Its inputs (`with:` keys).
    pub inputs: &'static [OpField],
    /// The fields of its output, or `None` when the output's shape is free-form.
    pub outputs: Option<&'static [OpField]>,
    /// Internal ops (inverses used by rollback) cannot be used in a workflow.
    pub internal: bool,
}

impl OpSpec {
    /// The input named `name`.
    pub fn input(&self, name: &str) -> Option<&OpField> {
        self.inputs.iter().find(|f| f.name == name)
    }

    /// The output field named `name`, when the output's fields are declared.
    pub fn output(&self, name: &str) -> Option<&OpField> {
        self.outputs?.iter().find(|f| f.name == name)
    }

    /// Whether the output can have a field named `name`.
    pub fn has_output(&self, name: &str) -> bool {
        self.outputs
            .is_none_or(|fields| fields.iter().any(|f| f.name == name))
    }
}

/// One input or output field of an op: its name, type, bounds, and whether it is required or
/// secret. `steward validate` checks every `with:` value against these before a run can start;
/// the op checks its input again when it runs (values bound from step outputs or company
/// settings are only known then).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OpField {
    /// The field's name.
    pub name: &'static str,
    /// Whether a workflow must set it.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
    /// The type of its value, with its bounds.
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// A secret (a password, a token): shown as `[secret]` wherever a run is shown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl OpField {
    /// A required text field.
    pub const fn required(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            required: true,
            description,
            kind: FieldType::Text,
            secret: false,
        }
    }

    /// An optional text field.
    pub const fn optional(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            required: false,
            description,
            kind: FieldType::Text,
            secret: false,
        }
    }

    /// The same field with another type.
    pub const fn of(self, kind: FieldType) -> Self {
        Self { kind, ..self }
    }

    /// The same field holding a whole number from `min` to `max`.
    pub const fn integer(self, min: i64, max: i64) -> Self {
        self.of(FieldType::Integer { min, max })
    }

    /// The same field holding `true` or `false`.
    pub const fn boolean(self) -> Self {
        self.of(FieldType::Boolean)
    }

    /// The same field holding any value.
    pub const fn any(self) -> Self {
        self.of(FieldType::Any)
    }

    /// The same field, secret.
    pub const fn secret(self) -> Self {
        Self {
            secret: true,
            ..self
        }
    }

    /// Whether `value` fits the field; the error says what is wrong in a sentence (never the
    /// value itself when the field is secret).
    pub fn check(&self, value: &Value) -> Result<(), String> {
        self.kind.check(value).map_err(|e| {
            if self.secret {
                format!("expected {}", self.kind)
            } else {
                e
            }
        })
    }
}

/// The type of an op field's value, with its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FieldType {
    /// Text.
    Text,
    /// A whole number from `min` to `max`.
    Integer {
        /// The smallest value allowed.
        min: i64,
        /// The largest value allowed.
        max: i64,
    },
    /// `true` or `false`.
    Boolean,
    /// One of a fixed set of words.
    OneOf {
        /// The words allowed.
        values: &'static [&'static str],
    },
    /// A list.
    List,
    /// A map of names to values.
    Map,
    /// Any value.
    Any,
}

impl FieldType {
    /// Whether `value` has this type and lies within its bounds; the error is a sentence such
    /// as "expected a whole number from 0 to 100, got text `three`".
    pub fn check(self, value: &Value) -> Result<(), String> {
        let ok = match (self, value) {
            (Self::Any, _)
            | (Self::Text, Value::String(_))
            | (Self::Boolean, Value::Bool(_))
            | (Self::List, Value::Array(_))
            | (Self::Map, Value::Object(_)) => true,
            (Self::Integer { min, max }, Value::Number(n)) => {
                match n.as_i64() {
                    Some(i) if (min..=max).contains(&i) => true,
                    Some(i) if i < min => {
                        return Err(format!("{i} is below the smallest allowed, {min}"));
                    }
                    Some(i) => return Err(format!("{i} is above the largest allowed, {max}")),
                    // Above i64 or a fraction.
                    None => match n.as_u64() {
                        Some(_) => return Err(format!("{n} is above the largest allowed, {max}")),
                        None => false,
                    },
                }
            }
            (Self::OneOf { values }, Value::String(s)) => {
                if values.contains(&s.as_str()) {
                    true
                } else {
                    return Err(format!(
                        "`{}` is not one of {}",
                        short(s),
                        values.join(", ")
                    ));
                }
            }
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expected {self}, got {}", describe(value)))
        }
    }

    /// Whether a value of this type is always text (what a template with text around its
    /// references gives).
    pub fn takes_text(self) -> bool {
        matches!(self, Self::Text | Self::OneOf { .. } | Self::Any)
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text"),
            Self::Integer { min, max } => write!(f, "a whole number from {min} to {max}"),
            Self::Boolean => f.write_str("true or false"),
            Self::OneOf { values } => write!(f, "one of {}", values.join(", ")),
            Self::List => f.write_str("a list"),
            Self::Map => f.write_str("a map"),
            Self::Any => f.write_str("any value"),
        }
    }
}

/// A value in a few words, for "got …": its kind and, for short scalars, the value.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("text `{}`", short(s)),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    }
}

/// At most 40 characters of `s`.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Whether an op reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpAccess {
    /// Changes nothing.
    Read,
    /// Changes something.
    Write,
}

/// How a succeeded run of an op is undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reversibility {
    /// Nothing to undo.
    NotNeeded,
    /// The op records an inverse that rollback runs.
    Reversible,
    /// The change cannot be undone (a password reset, a device wipe); rollback lists it.
    Irreversible,
}

/// Whether an op needs approval whatever the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalRule {
    /// As the company's policy for the op's group says.
    Policy,
    /// Always: deleting users, wiping devices, assigning directory roles, destructive
    /// Conditional Access changes.
    Always,
    /// Never allowed, by any policy: deleting a domain, deleting a device.
    Blocked,
}

/// The system an op acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// The company's user directory: Entra ID, Active Directory, or both, by identity provider.
    Directory,
    /// The company's mail system: Exchange Online or Exchange Server, by mailbox provider.
    Mail,
    /// Entra ID through Microsoft Graph (licenses, roles, Conditional Access, apps, MFA).
    EntraId,
    /// Intune through Microsoft Graph.
    Intune,
    /// Active Directory, through the AD runner.
    ActiveDirectory,
    /// Exchange Server, through its runner or on the server.
    ExchangeServer,
    /// The Entra Connect server.
    EntraConnect,
    /// Nothing outside Steward (test ops).
    Steward,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn values_are_checked_against_types_and_bounds() {
        let times = OpField::required("times", "how many").integer(0, 100);
        assert_eq!(times.check(&json!(3)), Ok(()));
        assert_eq!(
            times.check(&json!("three")).unwrap_err(),
            "expected a whole number from 0 to 100, got text `three`"
        );
        assert_eq!(
            times.check(&json!(-5)).unwrap_err(),
            "-5 is below the smallest allowed, 0"
        );
        assert_eq!(
            times.check(&json!(101)).unwrap_err(),
            "101 is above the largest allowed, 100"
        );
        assert!(
            times
                .check(&json!(1.5))
                .unwrap_err()
                .contains("the number 1.5")
        );
        let rights = OpField::required("rights", "r").of(FieldType::OneOf {
            values: &["full_access", "send_as"],
        });
        assert_eq!(
            rights.check(&json!("owner")).unwrap_err(),
            "`owner` is not one of full_access, send_as"
        );
        let password = OpField::required("password", "p").secret();
        assert_eq!(
            password.check(&json!(12345678)).unwrap_err(),
            "expected text",
            "a secret's value is never echoed"
        );
        assert_eq!(
            serde_json::to_value(times).unwrap()["type"],
            json!({"kind": "integer", "min": 0, "max": 100})
        );
    }
}
