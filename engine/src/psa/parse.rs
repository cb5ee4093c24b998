//! Ticket → a workflow's inputs: the PSA's user-defined fields, then a forgiving reading of the
//! free text MSPs actually receive (labelled lines such as `Name: Jane Doe`, `Start date:
//! 03/02/2027`, `Same access as: Bob Smith`). Nothing is guessed: a required input that is absent,
//! given twice with different values, or a date that reads two ways in the company's locale is
//! reported as missing with the reason, and the intake waits for it.

use chrono::{Datelike as _, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use steward_schemas::workflow::{InputType, WorkflowDef};

/// How a company writes numeric dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DateOrder {
    /// `03/02/2027` is 3 February (most of the world).
    DayMonth,
    /// `03/02/2027` is 2 March (the United States and a few others).
    MonthDay,
}

impl DateOrder {
    /// The order for a company's usage location (ISO country code); day-month unless the
    /// country writes month first.
    pub fn for_country(country: Option<&str>) -> Self {
        match country.map(str::to_ascii_uppercase).as_deref() {
            Some("US" | "PH" | "FM" | "MH" | "PW" | "AS" | "GU" | "MP" | "PR" | "VI" | "UM") => {
                Self::MonthDay
            }
            _ => Self::DayMonth,
        }
    }
}

/// An input the ticket did not settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Missing {
    /// The input's name.
    pub input: String,
    /// The label to write it under in the ticket (`Start date`).
    pub label: String,
    /// Why it is needed: absent, ambiguous (and how), or unreadable.
    pub reason: String,
}

/// What a ticket gave.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The inputs read.
    pub inputs: Map<String, Value>,
    /// The required inputs it did not settle.
    pub missing: Vec<Missing>,
}

/// Labels technicians write for the common inputs, by input name.
const ALIASES: &[(&str, &[&str])] = &[
    (
        "name",
        &[
            "name",
            "full name",
            "employee name",
            "employee",
            "user",
            "new starter",
            "new user",
            "leaver",
            "starter",
        ],
    ),
    (
        "display_name",
        &["display name", "name", "full name", "employee name"],
    ),
    ("first_name", &["first name", "given name", "forename"]),
    ("last_name", &["last name", "surname", "family name"]),
    ("given_name", &["given name", "first name", "forename"]),
    ("surname", &["surname", "last name", "family name"]),
    (
        "user_principal_name",
        &[
            "upn",
            "user principal name",
            "email",
            "e mail",
            "email address",
            "sign in name",
        ],
    ),
    (
        "user",
        &[
            "upn",
            "user principal name",
            "email",
            "e mail",
            "email address",
        ],
    ),
    (
        "template_user",
        &[
            "same access as",
            "copy access from",
            "mirror",
            "same as",
            "template user",
        ],
    ),
    (
        "license_sku",
        &[
            "licence",
            "license",
            "licence sku",
            "license sku",
            "licence type",
        ],
    ),
    (
        "forward_to",
        &["forward to", "forward mail to", "forward email to"],
    ),
    (
        "auto_reply",
        &["auto reply", "automatic reply", "out of office"],
    ),
    (
        "start_date",
        &[
            "start date",
            "starting date",
            "starts",
            "start",
            "starting",
            "first day",
        ],
    ),
    (
        "end_date",
        &[
            "end date",
            "last day",
            "leaving date",
            "leave date",
            "last working day",
        ],
    ),
    (
        "manager",
        &["manager", "line manager", "reports to", "reporting to"],
    ),
    (
        "same_access_as",
        &[
            "same access as",
            "copy access from",
            "mirror",
            "same as",
            "template user",
        ],
    ),
    ("department", &["department", "dept", "team"]),
    ("job_title", &["job title", "title", "role", "position"]),
    ("email", &["email", "e mail", "email address", "upn"]),
    ("mobile", &["mobile", "mobile phone", "phone"]),
    ("office", &["office", "location", "site"]),
];

/// A label in its compared form: lowercase words separated by single spaces.
pub fn normalize_label(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The labels that name `input`: its own name (`start_date` → `start date`) and the aliases.
fn labels_of(input: &str) -> Vec<String> {
    let mut out = vec![normalize_label(input)];
    if let Some((_, list)) = ALIASES.iter().find(|(k, _)| *k == input) {
        out.extend(list.iter().map(|l| (*l).to_owned()));
    }
    out
}

/// How to write `input` in a ticket (`Start date`).
pub fn label_for(input: &str) -> String {
    let base = ALIASES
        .iter()
        .find(|(k, _)| *k == input)
        .and_then(|(_, l)| l.first().copied())
        .map_or_else(|| normalize_label(input), str::to_owned);
    let mut c = base.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => base,
    }
}

/// The labelled lines of a text: (normalized label, value), in order. A line is `Label: value`
/// (also `Label - value` and `Label = value`), the label at most five words.
pub fn labelled_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches(['-', '*', '•']).trim();
        let split = line
            .find(':')
            .map(|i| (i, 1))
            .or_else(|| line.find(" - ").map(|i| (i, 3)))
            .or_else(|| line.find(" = ").map(|i| (i, 3)));
        let Some((i, len)) = split else { continue };
        let label = normalize_label(&line[..i]);
        let value = line[i + len..].trim();
        // A short value (a name, a date, an address) loses the full stop or comma a sentence
        // put after it; prose (an auto-reply) keeps its own.
        let value = if value.split_whitespace().count() <= 3 {
            value.trim_end_matches(['.', ',']).trim()
        } else {
            value
        };
        if label.is_empty() || value.is_empty() || label.split(' ').count() > 5 {
            continue;
        }
        out.push((label, value.to_owned()));
    }
    out
}

/// A date read from text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateRead {
    /// One reading.
    Date(NaiveDate),
    /// More than one reading, or a relative date: the reason.
    Ambiguous(String),
    /// Not a date.
    Unreadable,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

fn month_of(word: &str) -> Option<u32> {
    let w = word.to_ascii_lowercase();
    let w = w.trim_end_matches('.');
    if w.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|m| {
            w.starts_with(m) && (w.len() == 3 || full_month(m).starts_with(w) || w == "sept")
        })
        .map(|i| i as u32 + 1)
}

fn full_month(abbr: &str) -> &'static str {
    match abbr {
        "jan" => "january",
        "feb" => "february",
        "mar" => "march",
        "apr" => "april",
        "may" => "may",
        "jun" => "june",
        "jul" => "july",
        "aug" => "august",
        "sep" => "september",
        "oct" => "october",
        "nov" => "november",
        _ => "december",
    }
}

/// Reads a date in a company's order. ISO (`2027-02-03`) and dates with a month name (`3 Feb
/// 2027`, `February 3rd, 2027`) read one way everywhere; `03/02/2027` reads by `order`, and
/// is ambiguous only when no order is known; relative dates (`Monday`, `next week`) are never
/// resolved.
pub fn parse_date(text: &str, order: Option<DateOrder>) -> DateRead {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    const RELATIVE: &[&str] = &[
        "today",
        "tomorrow",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "next week",
        "asap",
        "tbc",
        "tbd",
    ];
    if RELATIVE.iter().any(|r| lower.contains(r)) {
        return DateRead::Ambiguous(format!(
            "`{t}` is relative; write the date itself (e.g. 2027-02-03)"
        ));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return DateRead::Date(d);
    }
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    // A month name: day, month and year in any order.
    if let Some(month) = words.iter().find_map(|w| month_of(w)) {
        let nums: Vec<u32> = words
            .iter()
            .filter_map(|w| {
                w.trim_end_matches(|c: char| c.is_ascii_alphabetic())
                    .parse::<u32>()
                    .ok()
            })
            .collect();
        let (day, year) = match nums.as_slice() {
            [a, b] if *a > 31 => (*b, *a),
            [a, b] => (*a, *b),
            _ => return DateRead::Unreadable,
        };
        return NaiveDate::from_ymd_opt(year as i32, month, day)
            .map_or(DateRead::Unreadable, DateRead::Date);
    }
    let parts: Vec<&str> = t.split(['/', '.', '-']).map(str::trim).collect();
    let nums: Option<Vec<u32>> = parts.iter().map(|p| p.parse().ok()).collect();
    let Some([a, b, y]) = nums.as_deref().and_then(|n| <[u32; 3]>::try_from(n).ok()) else {
        return DateRead::Unreadable;
    };
    let year = if y < 100 { 2000 + y } else { y } as i32;
    let dm = NaiveDate::from_ymd_opt(year, b, a);
    let md = NaiveDate::from_ymd_opt(year, a, b);
    match (dm, md) {
        (Some(d), None) | (None, Some(d)) => DateRead::Date(d),
        (Some(d1), Some(d2)) if d1 == d2 => DateRead::Date(d1),
        (Some(d1), Some(d2)) => match order {
            Some(DateOrder::DayMonth) => DateRead::Date(d1),
            Some(DateOrder::MonthDay) => DateRead::Date(d2),
            None => DateRead::Ambiguous(format!(
                "`{t}` could be {} or {}; write it as YYYY-MM-DD",
                human(d1),
                human(d2)
            )),
        },
        (None, None) => DateRead::Unreadable,
    }
}

fn human(d: NaiveDate) -> String {
    format!(
        "{} {} {}",
        d.day(),
        full_month(MONTHS[d.month0() as usize]),
        d.year()
    )
}

/// Whether an input holds a date (by its name: `start_date`, `last_day`, `leave_on`).
pub fn is_date_input(name: &str) -> bool {
    name.ends_with("date") || name.ends_with("_day") || name.ends_with("_on")
}

/// Reads a workflow's inputs from a ticket: `udfs` (user-defined fields by name) first, then
/// the labelled lines of `text`. `given` (supplied by a technician, or read before) wins over
/// both.
pub fn extract(
    def: &WorkflowDef,
    text: &str,
    udfs: &Map<String, Value>,
    given: &Map<String, Value>,
    order: Option<DateOrder>,
) -> Extracted {
    let lines = labelled_lines(text);
    let udf_lines: Vec<(String, String)> = udfs
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                Value::String(s) if !s.trim().is_empty() => s.trim().to_owned(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((normalize_label(k), v))
        })
        .collect();
    let mut out = Extracted::default();
    for (name, input) in &def.inputs {
        if input.secret {
            // Secrets never come from a ticket.
            continue;
        }
        if let Some(v) = given.get(name) {
            out.inputs.insert(name.clone(), v.clone());
            continue;
        }
        let labels = labels_of(name);
        let found = |source: &[(String, String)]| -> Vec<String> {
            let mut vals: Vec<String> = source
                .iter()
                .filter(|(l, _)| labels.iter().any(|x| x == l))
                .map(|(_, v)| v.clone())
                .collect();
            vals.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
            vals
        };
        let mut values = found(&udf_lines);
        if values.is_empty() {
            values = found(&lines);
        }
        let label = label_for(name);
        let needed = input.required && input.default.is_none();
        let mut miss = |reason: String| {
            if needed {
                out.missing.push(Missing {
                    input: name.clone(),
                    label: label.clone(),
                    reason,
                });
            }
        };
        match values.as_slice() {
            [] => miss("not in the ticket".to_owned()),
            [one] => {
                if is_date_input(name) {
                    match parse_date(one, order) {
                        DateRead::Date(d) => {
                            out.inputs.insert(
                                name.clone(),
                                Value::String(d.format("%Y-%m-%d").to_string()),
                            );
                        }
                        DateRead::Ambiguous(why) => miss(why),
                        DateRead::Unreadable => {
                            miss(format!("`{one}` is not a date; write it as YYYY-MM-DD"));
                        }
                    }
                } else {
                    match typed(input.kind, one) {
                        Some(v) => {
                            out.inputs.insert(name.clone(), v);
                        }
                        None => miss(format!("`{one}` is not a {}", input.kind.name())),
                    }
                }
            }
            many => miss(format!(
                "the ticket gives {} different values ({}); give one",
                many.len(),
                many.join(" / ")
            )),
        }
    }
    out
}

fn typed(kind: InputType, text: &str) -> Option<Value> {
    match kind {
        InputType::String | InputType::Any => Some(Value::String(text.to_owned())),
        InputType::Number => text
            .parse::<f64>()
            .ok()
            .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number)),
        InputType::Boolean => match text.to_ascii_lowercase().as_str() {
            "yes" | "true" | "y" => Some(Value::Bool(true)),
            "no" | "false" | "n" => Some(Value::Bool(false)),
            _ => None,
        },
        InputType::Array => Some(Value::Array(
            text.split([',', ';'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_owned()))
                .collect(),
        )),
        InputType::Object => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> WorkflowDef {
        serde_json::from_value(serde_json::json!({
            "name": "onb",
            "inputs": {"name": {}, "start_date": {}, "manager": {"required": false},
                       "same_access_as": {"required": false}, "password": {"secret": true}},
            "steps": []
        }))
        .unwrap()
    }

    #[test]
    fn prose_keeps_its_full_stop_and_short_values_lose_theirs() {
        let lines = labelled_lines(
            "Auto reply: Ann has left; please write to her manager.\nName: Ann Lee.\nManager: bob@contoso.com,",
        );
        assert_eq!(
            lines,
            vec![
                (
                    "auto reply".to_owned(),
                    "Ann has left; please write to her manager.".to_owned()
                ),
                ("name".to_owned(), "Ann Lee".to_owned()),
                ("manager".to_owned(), "bob@contoso.com".to_owned()),
            ]
        );
    }

    #[test]
    fn labelled_lines_are_read_forgivingly() {
        let text = "Hi team,\n\n - Name: Jane Doe\nStart Date : 03/02/2027.\nLine manager - Bob Smith\nSame access as: bob@contoso.com\nThanks!";
        let e = extract(
            &def(),
            text,
            &Map::new(),
            &Map::new(),
            Some(DateOrder::DayMonth),
        );
        assert_eq!(e.missing, vec![]);
        assert_eq!(e.inputs["name"], "Jane Doe");
        assert_eq!(e.inputs["start_date"], "2027-02-03");
        assert_eq!(e.inputs["manager"], "Bob Smith");
        assert_eq!(e.inputs["same_access_as"], "bob@contoso.com");
        assert!(!e.inputs.contains_key("password"));
        let us = extract(
            &def(),
            text,
            &Map::new(),
            &Map::new(),
            Some(DateOrder::MonthDay),
        );
        assert_eq!(us.inputs["start_date"], "2027-03-02");
    }

    #[test]
    fn missing_and_ambiguous_are_never_guessed() {
        let e = extract(
            &def(),
            "Name: Jane Doe\nStarts: Monday",
            &Map::new(),
            &Map::new(),
            Some(DateOrder::DayMonth),
        );
        assert_eq!(e.missing.len(), 1);
        assert_eq!(e.missing[0].input, "start_date");
        assert_eq!(e.missing[0].label, "Start date");
        assert!(
            e.missing[0].reason.contains("relative"),
            "{}",
            e.missing[0].reason
        );
        let e = extract(
            &def(),
            "Name: Jane\nName: John\nStart date: 2027-01-04",
            &Map::new(),
            &Map::new(),
            None,
        );
        assert_eq!(e.missing[0].input, "name");
        assert!(e.missing[0].reason.contains("2 different values"));
        let e = extract(
            &def(),
            "Name: Jane\nStart date: 03/02/2027",
            &Map::new(),
            &Map::new(),
            None,
        );
        assert!(
            e.missing[0]
                .reason
                .contains("3 february 2027 or 2 march 2027"),
            "{:?}",
            e.missing
        );
        let e = extract(&def(), "", &Map::new(), &Map::new(), None);
        assert_eq!(e.missing.len(), 2);
    }

    #[test]
    fn udfs_and_given_values_win() {
        let mut udfs = Map::new();
        udfs.insert("Start Date".into(), "2027-05-01".into());
        let mut given = Map::new();
        given.insert("name".into(), "Given Name".into());
        let e = extract(
            &def(),
            "Name: Jane\nStart date: 2027-01-01",
            &udfs,
            &given,
            None,
        );
        assert_eq!(e.inputs["start_date"], "2027-05-01");
        assert_eq!(e.inputs["name"], "Given Name");
    }

    #[test]
    fn dates() {
        let d = |y, m, dd| DateRead::Date(NaiveDate::from_ymd_opt(y, m, dd).unwrap());
        assert_eq!(parse_date("2027-02-03", None), d(2027, 2, 3));
        assert_eq!(parse_date("3 Feb 2027", None), d(2027, 2, 3));
        assert_eq!(parse_date("February 3rd, 2027", None), d(2027, 2, 3));
        assert_eq!(parse_date("13/02/2027", None), d(2027, 2, 13));
        assert_eq!(parse_date("02/13/27", None), d(2027, 2, 13));
        assert_eq!(parse_date("05.05.2027", None), d(2027, 5, 5));
        assert!(matches!(
            parse_date("next week", None),
            DateRead::Ambiguous(_)
        ));
        assert_eq!(parse_date("soon-ish", None), DateRead::Unreadable);
        assert_eq!(parse_date("31/02/2027", None), DateRead::Unreadable);
        assert_eq!(DateOrder::for_country(Some("us")), DateOrder::MonthDay);
        assert_eq!(DateOrder::for_country(Some("GB")), DateOrder::DayMonth);
    }
}
