//! Typed identifiers.
//!
//! Generated ids are ULIDs with a short prefix in their text form (`run_01JD…`), so an id pasted
//! into a ticket or a log says what it names. `Debug` prints the same as `Display`.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// An id that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {what}: {why}")]
pub struct IdError {
    /// What kind of id was expected.
    pub what: &'static str,
    /// The offending text (truncated to 80 characters).
    pub value: String,
    /// Why it was refused.
    pub why: &'static str,
}

impl IdError {
    fn new(what: &'static str, value: &str, why: &'static str) -> Self {
        let value = value.chars().take(80).collect();
        Self { what, value, why }
    }
}

macro_rules! ulid_id {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Ulid);

        impl $name {
            /// The text prefix of this id kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new id from a ULID.
            pub const fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            /// The ULID inside.
            pub const fn as_ulid(&self) -> Ulid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let rest = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .ok_or_else(|| IdError::new($what, s, concat!("it must start with `", $prefix, "_`")))?;
                Ulid::from_string(rest)
                    .map(Self)
                    .map_err(|_| IdError::new($what, s, "the part after the prefix must be a 26-character ULID"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": concat!("^", $prefix, "_[0-9A-HJKMNP-TV-Z]{26}$"),
                    "description": $what,
                })
            }
        }
    };
}

ulid_id!(
    /// One execution of a workflow plan.
    RunId,
    "run",
    "run id"
);

ulid_id!(
    /// A technician.
    TechnicianId,
    "tech",
    "technician id"
);

ulid_id!(
    /// An API token.
    TokenId,
    "tok",
    "token id"
);

/// A step's id inside a workflow definition: lowercase letters, digits and `_`, starting with a
/// letter, at most 64 characters (`create_user`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StepId(String);

impl StepId {
    /// Checks the shape of a step id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_name(s, "step id", 64).map(|()| Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StepId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for StepId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for StepId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl JsonSchema for StepId {
    fn schema_name() -> Cow<'static, str> {
        "StepId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[a-z][a-z0-9_]{0,63}$",
            "description": "step id: lowercase letters, digits and `_`, starting with a letter",
        })
    }
}

/// An MSP client company's id, chosen by the MSP: lowercase letters, digits and `-`, starting with
/// a letter or digit, at most 63 characters (`contoso`, `fabrikam-uk`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CompanyId(String);

impl CompanyId {
    /// Checks the shape of a company id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let what = "company id";
        if s.is_empty() || s.len() > 63 {
            return Err(IdError::new(what, s, "it must be 1 to 63 characters long"));
        }
        let ok_first = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
        let ok_rest = s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok_first || !ok_rest {
            return Err(IdError::new(
                what,
                s,
                "use lowercase letters, digits and `-`, starting with a letter or digit",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for CompanyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for CompanyId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CompanyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CompanyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for CompanyId {
    fn schema_name() -> Cow<'static, str> {
        "CompanyId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9-]{0,62}$",
        })
    }
}

fn check_name(s: &str, what: &'static str, max: usize) -> Result<(), IdError> {
    if s.is_empty() || s.len() > max {
        return Err(IdError::new(what, s, "it must be 1 to 64 characters long"));
    }
    if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(IdError::new(
            what,
            s,
            "it must start with a lowercase letter",
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(IdError::new(
            what,
            s,
            "use only lowercase letters, digits and `_`",
        ));
    }
    Ok(())
}

/// One try of a step, counted from 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Attempt(NonZeroU32);

impl Attempt {
    /// The first attempt.
    pub const FIRST: Self = Self(NonZeroU32::MIN);

    /// An attempt number; `None` for zero.
    pub const fn new(n: u32) -> Option<Self> {
        match NonZeroU32::new(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The number, at least 1.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The attempt after this one.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_round_trips_through_text_and_serde() {
        let id = RunId::from_ulid(Ulid::from_parts(1_700_000_000_000, 42));
        let text = id.to_string();
        assert!(text.starts_with("run_"));
        assert_eq!(text.parse::<RunId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), text);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<RunId>(&json).unwrap(), id);
        let err = "job_01ARZ3NDEKTSV4RRFFQ69G5FAV"
            .parse::<RunId>()
            .unwrap_err();
        assert!(err.to_string().contains("must start with `run_`"), "{err}");
        assert!("run_nope".parse::<RunId>().is_err());
    }

    #[test]
    fn step_and_company_ids_are_checked() {
        assert!(StepId::parse("create_user").is_ok());
        for bad in ["", "Create", "1st", "a-b", "a b", &"x".repeat(65)] {
            assert!(StepId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(CompanyId::parse("fabrikam-uk").is_ok());
        assert!(CompanyId::parse("9lives").is_ok());
        for bad in ["", "-x", "Contoso", "a_b", "a/b"] {
            assert!(CompanyId::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(serde_json::from_str::<StepId>("\"Bad\"").is_err());
    }

    #[test]
    fn attempts_count_from_one() {
        assert_eq!(Attempt::new(0), None);
        assert_eq!(Attempt::FIRST.get(), 1);
        assert_eq!(Attempt::FIRST.next().get(), 2);
    }
}
