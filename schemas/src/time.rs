//! Time values: instants with microsecond resolution and human-readable durations.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant, in microseconds since the Unix epoch (UTC).
///
/// Its text form is RFC 3339 with microseconds (`2026-11-22T05:53:22.123456Z`); microseconds
/// matter because a step transition takes well under a millisecond.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// An instant from microseconds since the epoch.
    pub const fn from_micros(us: i64) -> Self {
        Self(us)
    }

    /// An instant from milliseconds since the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Self(ms.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Milliseconds since the epoch (rounded down).
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This instant plus a duration (saturating).
    pub fn plus(self, d: Duration) -> Self {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(us))
    }

    /// The time from `earlier` to this instant; zero if `earlier` is later.
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_micros(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }

    /// As a chrono date-time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    /// From a chrono date-time.
    pub fn from_datetime(dt: DateTime<Utc>) -> Self {
        Self(dt.timestamp_micros())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            &self
                .to_datetime()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Timestamp {
    type Err = chrono::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DateTime::parse_from_rfc3339(s).map(|dt| Self::from_datetime(dt.with_timezone(&Utc)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not an RFC 3339 time ({e}); write e.g. `2026-11-22T09:00:00Z`"
            ))
        })
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// A duration written the way people write them: `250ms`, `30s`, `5m`, `1h30m`, `2d`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(Duration);

/// A duration that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a duration; write a number and a unit, e.g. `250ms`, `30s`, `5m`, `1h30m`, `2d`"
)]
pub struct DurError(String);

impl Dur {
    /// A duration from a std duration.
    pub const fn new(d: Duration) -> Self {
        Self(d)
    }

    /// From seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// From milliseconds.
    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// The std duration inside.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl FromStr for Dur {
    type Err = DurError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurError(s.chars().take(40).collect());
        let text = s.trim();
        if text.is_empty() {
            return Err(err());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let part = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
                "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(err)?),
                _ => return Err(err()),
            };
            total = total.checked_add(part).ok_or_else(err)?;
            rest = &rest[unit_len..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        if rest > 0 {
            write!(f, "{rest}ms")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `30s`, `5m` or `1h30m`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit; write e.g. `{v}s` for seconds or `{v}ms` for milliseconds"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration; write e.g. `30s` or `5m`"
                )))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "`{v}` is not a duration; write e.g. `1500ms` or `2s`"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "a duration: a number and a unit (ms, s, m, h, d), e.g. `30s`, `5m`, `1h30m`",
            "examples": ["250ms", "30s", "5m", "1h30m"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(172_800)),
            ("1m500ms", Duration::from_millis(60_500)),
        ];
        for (text, want) in cases {
            let d: Dur = text.parse().unwrap();
            assert_eq!(d.get(), want, "{text}");
            assert_eq!(d.to_string(), text);
        }
        for bad in ["", "5", "m", "5 minutes", "1.5s", "-3s", "3w", "s5"] {
            let err = bad.parse::<Dur>().unwrap_err();
            assert!(
                err.to_string().contains("write a number and a unit"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bare_numbers_get_a_hint() {
        let err = serde_json::from_str::<Dur>("30").unwrap_err().to_string();
        assert!(err.contains("`30s`"), "{err}");
    }

    #[test]
    fn timestamps_keep_microseconds() {
        let t = Timestamp::from_micros(1_763_790_802_123_456);
        let text = t.to_string();
        assert_eq!(text, "2025-11-22T05:53:22.123456Z");
        assert_eq!(text.parse::<Timestamp>().unwrap(), t);
        assert_eq!(
            t.plus(Duration::from_millis(2)).since(t),
            Duration::from_millis(2)
        );
        assert_eq!(t.since(t.plus(Duration::from_secs(1))), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn any_millisecond_duration_round_trips(ms in 0u64..10_000_000_000) {
            let d = Dur::millis(ms);
            prop_assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
    }
}
