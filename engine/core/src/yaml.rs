//! Reading a workflow file's YAML safely, and finding the line of any field in it.
//!
//! A workflow file is written by a person and read by `steward validate`, by `serve` (every time
//! the file changes) and, through the stored definition, by workers. So reading it must never
//! hang, exhaust memory or overflow the stack, and every mistake must come back as a sentence
//! with its line and the fix:
//! - the file is at most [`MAX_FILE_BYTES`];
//! - indentation with tabs, an empty file, a top-level list or a single value, several YAML
//!   documents, and duplicate keys are refused with what to write instead;
//! - aliases (`*name`) may reuse anchored values, but the values they expand to are counted as
//!   they are read, and a file that expands beyond [`node_budget`] (an "alias bomb", e.g. the
//!   billion laughs) is refused before it takes the memory;
//! - nesting deeper than the YAML reader's limit (128) is refused with its line.
//!
//! Once the YAML reads, [`decode`] turns it into a [`WorkflowDef`], reporting every field that
//! does not fit (not only the first): each top-level field, input and step is decoded on its own,
//! and a bad field is taken out and the rest decoded again, until nothing more is wrong.
//!
//! Serde's values carry no line numbers, so [`Locator`] finds a field's line from its path
//! (`steps[3].with.times`) in the text: block style is followed key by key; in flow style
//! (`- {id: a, op: noop}`) the line is the one the flow starts on. It looks only inside the
//! enclosing block, and remembers where the items of each list start, so finding every step's
//! line costs one pass over the file.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::{Mapping, Value};
use steward_schemas::{InputDef, StepDef, WorkflowDef};

use crate::plan::Problem;

/// The largest workflow file read, in bytes (a 10,000-step workflow is about 1 MiB).
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// How many values (scalars, lists, maps) reading `source` may produce, aliases expanded: the
/// file's own values and twice as many again, so anchors can be reused freely but a few
/// aliases cannot expand into billions of values.
pub fn node_budget(source: &str) -> usize {
    100_000 + 2 * source.len()
}

/// A segment of a path into the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A list item.
    Index(usize),
}

/// Parses `steps[3].with.times` into segments.
pub fn parse_path(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Seg::Key(rest[..open].to_owned()));
            }
            rest = &rest[open..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest.to_owned()));
        }
    }
    out
}

fn problem(line: Option<usize>, field: &str, message: String, fix: &str) -> Problem {
    Problem {
        step: None,
        index: None,
        field: field.to_owned(),
        message,
        fix: fix.to_owned(),
        line,
    }
}

/// Reads the YAML of a workflow file into a value: a mapping, or every problem that stops it.
pub fn read(source: &str) -> Result<Value, Vec<Problem>> {
    if source.len() > MAX_FILE_BYTES {
        return Err(vec![problem(
            None,
            "(file)",
            format!(
                "the file is {} bytes; the most a workflow file may be is {MAX_FILE_BYTES} bytes (4 MiB)",
                source.len()
            ),
            "split the workflow into smaller workflows",
        )]);
    }
    if let Some(line) = too_deep(source) {
        return Err(vec![problem(
            Some(line),
            "(file)",
            format!("the YAML is nested more than {MAX_NESTING} levels deep"),
            "a workflow needs only a few levels: flatten the nested lists or maps",
        )]);
    }
    let budget = Cell::new(node_budget(source));
    let value = match NodeSeed(&budget).deserialize(serde_yaml_ng::Deserializer::from_str(source)) {
        Ok(v) => v,
        Err(e) => return Err(yaml_error(source, &e)),
    };
    match value {
        Value::Mapping(_) => Ok(value),
        Value::Null => Err(vec![problem(
            Some(1),
            "(file)",
            "the file is empty".to_owned(),
            "a workflow needs at least `name:` and `steps:` (see workflows/demo.yaml)",
        )]),
        Value::Sequence(_) => Err(vec![problem(
            first_content_line(source),
            "(file)",
            "the file is a list at the top; a workflow is a mapping with `name:` and `steps:`"
                .to_owned(),
            "if this is the list of steps, write `name: NAME` and `steps:` above it and indent the list under `steps:`",
        )]),
        _ => Err(vec![problem(
            first_content_line(source),
            "(file)",
            "the file holds a single value; a workflow is a mapping with `name:` and `steps:`"
                .to_owned(),
            "write `name: NAME` and `steps:` with a list of steps (see workflows/demo.yaml)",
        )]),
    }
}

/// The deepest lists and maps may nest (the YAML reader's own limit).
pub const MAX_NESTING: usize = 128;

/// The first line at which the text nests lists and maps deeper than [`MAX_NESTING`], by a
/// cheap scan of flow brackets and block indentation. The YAML reader refuses such nesting too,
/// but only after parsing all of it, which takes minutes for a line of 100,000 `[`.
fn too_deep(source: &str) -> Option<usize> {
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let info = LineInfo::of(line);
        if flow == 0 && info.content {
            while indents.last().is_some_and(|&top| top >= info.indent) {
                indents.pop();
            }
            indents.push(info.indent);
            // Each `- ` opens a list (and a map may follow in it).
            let dashes = line[info.indent..]
                .split("- ")
                .take_while(|s| s.trim().is_empty())
                .count();
            if indents.len() + 2 * dashes > MAX_NESTING {
                return Some(n + 1);
            }
        }
        let mut quote: Option<u8> = None;
        let mut prev = b' ';
        for &c in line.as_bytes() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'#' if prev == b' ' => break,
                    b'\'' | b'"' if matches!(prev, b' ' | b'[' | b'{' | b',' | b':') => {
                        quote = Some(c);
                    }
                    b'[' | b'{' => {
                        flow += 1;
                        if flow + indents.len() > MAX_NESTING {
                            return Some(n + 1);
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

const ALIAS_BOMB: &str = "alias expansion budget exceeded";
const DUPLICATE: &str = "duplicate key ";
const TAGGED: &str = "a YAML tag";

/// The problems a YAML error stands for, in words.
fn yaml_error(source: &str, e: &serde_yaml_ng::Error) -> Vec<Problem> {
    let raw = e.to_string();
    // serde_yaml appends "at line L column C"; the line is reported on its own.
    let message = raw.split(" at line ").next().unwrap_or(&raw).to_owned();
    let line = e.location().map(|l| l.line());
    if message.contains(ALIAS_BOMB) || message.contains("repetition limit exceeded") {
        return vec![problem(
            first_alias_line(source).or(line),
            "(file)",
            format!(
                "the file's aliases (`*name`) expand to more than {} values: an alias bomb, or anchors reused far too often",
                node_budget(source)
            ),
            "write the values out, or reuse an anchor only a few times",
        )];
    }
    if message.contains("recursion limit exceeded") {
        return vec![problem(
            line,
            "(file)",
            format!("the YAML is nested more than {MAX_NESTING} levels deep"),
            "a workflow needs only a few levels: flatten the nested lists or maps",
        )];
    }
    if let Some(at) = message.find(DUPLICATE) {
        let key = message[at + DUPLICATE.len()..].to_owned();
        let (path, _) = message.split_once(": ").unwrap_or(("", ""));
        let field = if path.is_empty() || path.contains(' ') {
            "(file)"
        } else {
            path
        };
        return vec![problem(
            duplicate_line(source, line, &key).or(line),
            field,
            format!("the key {key} appears twice in the same mapping"),
            "keep one of them (YAML would otherwise silently use the last)",
        )];
    }
    if message.contains(TAGGED) {
        return vec![problem(
            line,
            "(file)",
            "a YAML tag (`!name`) is not used in workflows".to_owned(),
            "remove the tag",
        )];
    }
    if message.contains("more than one document") {
        return vec![problem(
            line,
            "(file)",
            "the file holds more than one YAML document (`---`)".to_owned(),
            "put one workflow in each file",
        )];
    }
    let tabs = tab_lines(source);
    if !tabs.is_empty() {
        return tabs
            .into_iter()
            .map(|l| {
                problem(
                    Some(l),
                    "(file)",
                    "the line is indented with a tab; YAML indents with spaces only".to_owned(),
                    "replace the tab with spaces (set your editor to insert spaces)",
                )
            })
            .collect();
    }
    if message.contains("unknown anchor") {
        return vec![problem(
            line,
            "(file)",
            "an alias (`*name`) refers to an anchor (`&name`) that is not defined before it"
                .to_owned(),
            "define the anchor first, or fix the alias's name",
        )];
    }
    let (field, message) = match message.split_once(": ") {
        Some((path, rest)) if !path.contains(' ') => (path.to_owned(), rest.to_owned()),
        _ => ("(file)".to_owned(), message),
    };
    vec![problem(
        line,
        &field,
        format!("the YAML does not read: {message}"),
        "check this line's indentation and that every `key: value` is written as in workflows/demo.yaml; quote text that holds `: ` or starts with `{`, `[`, `*`, `&`, `!` or `%`",
    )]
}

/// The lines (1-based) whose indentation holds a tab.
fn tab_lines(source: &str) -> Vec<usize> {
    source
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            l.chars()
                .take_while(|c| c.is_whitespace())
                .any(|c| c == '\t')
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The first line that is neither blank nor a comment nor a document marker.
fn first_content_line(source: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| {
            let t = l.trim();
            !(t.is_empty() || t.starts_with('#') || t == "---")
        })
        .map(|i| i + 1)
}

/// The first line with an alias (`*name` after a space, `[`, `{`, `,` or `-`).
fn first_alias_line(source: &str) -> Option<usize> {
    source
        .lines()
        .position(|l| {
            let b = l.as_bytes();
            (0..b.len()).any(|i| {
                b[i] == b'*'
                    && (i == 0 || matches!(b[i - 1], b' ' | b'[' | b'{' | b',' | b'-'))
                    && b.get(i + 1)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            })
        })
        .map(|i| i + 1)
}

/// The line of the second `key:` at the indentation of the mapping starting at `from`.
fn duplicate_line(source: &str, from: Option<usize>, key: &str) -> Option<usize> {
    let key = key.trim_matches('`');
    let lines: Vec<&str> = source.lines().collect();
    let start = from?.saturating_sub(1);
    let indent = lines.get(start).map(|l| key_indent(l))?;
    let mut seen = 0;
    for (i, l) in lines.iter().enumerate().skip(start) {
        let parsed = LineInfo::of(l);
        if parsed.content && parsed.key_indent < indent {
            break;
        }
        if parsed.key_indent == indent && parsed.key.as_deref() == Some(key) {
            seen += 1;
            if seen == 2 {
                return Some(i + 1);
            }
        }
    }
    None
}

fn key_indent(line: &str) -> usize {
    LineInfo::of(line).key_indent
}

/// Builds a YAML value while counting every value produced (aliases expanded), refusing
/// duplicate keys and tags.
struct NodeSeed<'b>(&'b Cell<usize>);

impl NodeSeed<'_> {
    fn take<E: de::Error>(&self) -> Result<(), E> {
        match self.0.get().checked_sub(1) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(E::custom(ALIAS_BOMB)),
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Number(v.into()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.take()?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.take()?;
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(NodeSeed(self.0))? {
            out.push(v);
        }
        Ok(Value::Sequence(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.take()?;
        let mut out = Mapping::new();
        while let Some(k) = map.next_key_seed(NodeSeed(self.0))? {
            if out.contains_key(&k) {
                let name = match &k {
                    Value::String(s) => format!("`{s}`"),
                    Value::Number(n) => format!("`{n}`"),
                    Value::Bool(b) => format!("`{b}`"),
                    _ => "(a complex key)".to_owned(),
                };
                return Err(de::Error::custom(format!("{DUPLICATE}{name}")));
            }
            let v = map.next_value_seed(NodeSeed(self.0))?;
            out.insert(k, v);
        }
        Ok(Value::Mapping(out))
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _data: A) -> Result<Value, A::Error> {
        Err(de::Error::custom(TAGGED))
    }
}

/// Decodes a workflow from its YAML mapping, with every field that does not fit.
pub fn decode(value: &Value) -> Result<WorkflowDef, Vec<Problem>> {
    let first = match serde_path_to_error::deserialize::<_, WorkflowDef>(value) {
        Ok(def) => return Ok(def),
        Err(e) => e,
    };
    let Value::Mapping(top) = value else {
        return Err(vec![problem(
            None,
            "(file)",
            "a workflow is a mapping".to_owned(),
            "write `name:` and `steps:`",
        )]);
    };
    let mut problems = Vec::new();
    // The workflow's own fields, with its inputs and steps checked one by one below.
    let mut shell = top.clone();
    shell.remove("inputs");
    if shell.contains_key("steps") {
        shell.insert(Value::from("steps"), Value::Sequence(Vec::new()));
    }
    collect::<WorkflowDef>(Value::Mapping(shell), &[], None, &mut problems);
    match top.get("inputs") {
        Some(Value::Mapping(inputs)) => {
            for (k, v) in inputs {
                let name = key_text(k);
                collect::<InputDef>(
                    v.clone(),
                    &[Seg::Key("inputs".to_owned()), Seg::Key(name)],
                    None,
                    &mut problems,
                );
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => problems.push(problem(
            None,
            "inputs",
            "`inputs` must be a mapping of input names to their declarations".to_owned(),
            "write e.g. `inputs: {upn: {type: string}}`",
        )),
    }
    match top.get("steps") {
        Some(Value::Sequence(steps)) => {
            for (i, v) in steps.iter().enumerate() {
                let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
                collect::<StepDef>(
                    v.clone(),
                    &[Seg::Key("steps".to_owned()), Seg::Index(i)],
                    Some((i, id.unwrap_or_else(|| format!("#{}", i + 1)))),
                    &mut problems,
                );
            }
        }
        Some(_) => problems.push(problem(
            None,
            "steps",
            "`steps` must be a list of steps".to_owned(),
            "write each step as a list item: `- id: NAME` with `op:` below it",
        )),
        None => {}
    }
    if problems.is_empty() {
        // Decoding piece by piece found nothing: report what decoding the whole said.
        problems.push(serde_problem(&[], None, &first));
    }
    Err(problems)
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".to_owned(),
    }
}

/// Decodes `value` as a `T`; on each error, records it, takes the offending field out and
/// tries again, so every bad field of the value is reported.
fn collect<T: for<'de> Deserialize<'de>>(
    mut value: Value,
    prefix: &[Seg],
    step: Option<(usize, String)>,
    problems: &mut Vec<Problem>,
) {
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    // Each round removes one field, so a value has at most as many rounds as it has fields.
    for _ in 0..256 {
        let Err(err) = serde_path_to_error::deserialize::<_, T>(&value) else {
            return;
        };
        let mut path: Vec<Seg> = err
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = err.inner().to_string();
        if let Some(missing) = missing_field(&message) {
            let mut full = path.clone();
            full.push(Seg::Key(missing));
            if removed.contains(&full) {
                // Only missing because its bad value was taken out (and reported): take the
                // value holding it out too, silently.
                if path.is_empty() || !remove(&mut value, &path) {
                    return;
                }
                removed.push(path);
                continue;
            }
        }
        problems.push(serde_problem(prefix, step.as_ref(), &err));
        if let Some(unknown) = unknown_field(&message)
            && path.last() != Some(&Seg::Key(unknown.clone()))
        {
            path.push(Seg::Key(unknown));
        }
        if path.is_empty() || !remove(&mut value, &path) {
            return;
        }
        removed.push(path);
    }
}

/// The field an "unknown field `x`" error names.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// The field a "missing field `x`" error names.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

/// Removes the value at `path`; whether there was one.
fn remove(value: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// A decoding error as a problem, in words a technician reads.
fn serde_problem(
    prefix: &[Seg],
    step: Option<&(usize, String)>,
    err: &serde_path_to_error::Error<serde_yaml_ng::Error>,
) -> Problem {
    let mut segs: Vec<Seg> = prefix.to_vec();
    for s in err.path() {
        match s {
            serde_path_to_error::Segment::Seq { index } => segs.push(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => segs.push(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let raw = err.inner().to_string();
    let raw = raw.split(" at line ").next().unwrap_or(&raw).to_owned();
    let (message, fix) = if let Some(name) = unknown_field(&raw) {
        let expected: Vec<String> = raw
            .split_once("expected ")
            .map(|(_, list)| {
                list.split(", ")
                    .map(|s| s.trim_start_matches("one of ").trim_matches('`').to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let known: Vec<&str> = expected.iter().map(String::as_str).collect();
        if segs.last() != Some(&Seg::Key(name.clone())) {
            segs.push(Seg::Key(name.clone()));
        }
        (
            format!(
                "unknown field `{name}`{}",
                crate::plan::suggest(&name, &known)
            ),
            if known.is_empty() {
                "remove it".to_owned()
            } else {
                format!("remove it, or use one of: {}", known.join(", "))
            },
        )
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest).to_owned();
        (format!("`{name}` is missing"), format!("add `{name}:`"))
    } else {
        (
            words(&raw),
            "see the field in schemas/json/workflow.schema.json".to_owned(),
        )
    };
    let (step, index, field_segs) = match (step, segs.as_slice()) {
        (Some((i, id)), [Seg::Key(s), Seg::Index(_), rest @ ..]) if s == "steps" => {
            (Some(id.clone()), Some(*i), rest.to_vec())
        }
        _ => (None, None, segs),
    };
    let field = if field_segs.is_empty() {
        "(step)".to_owned()
    } else {
        path_text(&field_segs)
    };
    Problem {
        step,
        index,
        field,
        message,
        fix,
        line: None,
    }
}

/// Serde's type names as words: "invalid type: string \"x\", expected u32" becomes
/// "expected a whole number, got text \"x\"".
fn words(raw: &str) -> String {
    let swap = |s: &str| -> String {
        let mut s = s.to_owned();
        for (from, to) in [
            ("a sequence", "a list"),
            ("sequence", "a list"),
            ("a string", "text"),
            ("string ", "text "),
            ("u32", "a whole number"),
            ("u64", "a whole number"),
            ("i64", "a whole number"),
            ("f64", "a number"),
            ("a boolean", "true or false"),
            ("boolean ", ""),
            ("a map", "a mapping"),
            ("map", "a mapping"),
            ("unit value", "nothing"),
            ("struct ", "the fields of "),
        ] {
            if let Some(rest) = s.strip_prefix(from) {
                s = format!("{to}{rest}");
                break;
            }
        }
        s
    };
    if let Some(rest) = raw.strip_prefix("invalid type: ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, got {}", swap(expected), swap(got));
    }
    if let Some(rest) = raw.strip_prefix("invalid value: ")
        && let Some((got, expected)) = rest.split_once(", expected ")
    {
        return format!("expected {}, got {}", swap(expected), swap(got));
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `")
        && let Some((name, expected)) = rest.split_once("`, expected ")
    {
        return format!(
            "`{name}` is not one of {}",
            expected.trim_start_matches("one of ").replace('`', "")
        );
    }
    raw.to_owned()
}

/// `steps[3].with.times` from segments.
pub fn path_text(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push_str(&format!("[{i}]"));
            }
        }
    }
    out
}

/// What a line says, for [`Locator`].
#[derive(Debug, Clone, Default)]
struct LineInfo {
    /// Leading spaces.
    indent: usize,
    /// Whether it starts a list item (`- `).
    dash: bool,
    /// The column its key starts at (after any `- `).
    key_indent: usize,
    /// Its key, when it has one (`key:`).
    key: Option<String>,
    /// Whether it has content (not blank, not only a comment).
    content: bool,
}

impl LineInfo {
    fn of(line: &str) -> Self {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let mut rest = &line[indent..];
        let t = rest.trim();
        if t.is_empty() || t.starts_with('#') || t == "---" || t == "..." {
            return Self {
                indent,
                key_indent: indent,
                ..Self::default()
            };
        }
        let mut key_indent = indent;
        let mut dash = false;
        while let Some(after) = rest
            .strip_prefix('-')
            .filter(|a| a.is_empty() || a.starts_with(' '))
        {
            dash = true;
            let spaces = after.len() - after.trim_start_matches(' ').len();
            key_indent += 1 + spaces;
            rest = &after[spaces..];
        }
        let key = key_of(rest);
        Self {
            indent,
            dash,
            key_indent,
            key,
            content: true,
        }
    }
}

/// The key of `key: value` or `key:` (quotes removed), if the text starts with one.
fn key_of(text: &str) -> Option<String> {
    let (raw, after) = if let Some(q) = text.strip_prefix('"').or_else(|| text.strip_prefix('\'')) {
        let quote = text.as_bytes()[0] as char;
        let end = q.find(quote)?;
        (&q[..end], &q[end + 1..])
    } else {
        if text.starts_with(['{', '[', '#', '|', '>', '&', '*', '!']) {
            return None;
        }
        let end = text
            .find(": ")
            .or_else(|| text.strip_suffix(':').map(str::len))?;
        (&text[..end], &text[end..])
    };
    let after = after.trim_start();
    (after.starts_with(':') && (after.len() == 1 || after[1..].starts_with(' ')))
        .then(|| raw.trim().to_owned())
}

/// Finds the line of a field from its path.
#[derive(Debug)]
pub struct Locator<'a> {
    lines: Vec<LineInfo>,
    text: Vec<&'a str>,
    /// The start lines of list items under a line, by that line (memoised).
    items: HashMap<usize, Vec<usize>>,
    /// Where the block a line owns ends, by line and whether it is a list item (memoised).
    ends: HashMap<(usize, bool), usize>,
}

impl<'a> Locator<'a> {
    /// A locator over `source`.
    pub fn new(source: &'a str) -> Self {
        let text: Vec<&str> = source.lines().collect();
        Self {
            lines: text.iter().map(|l| LineInfo::of(l)).collect(),
            text,
            items: HashMap::new(),
            ends: HashMap::new(),
        }
    }

    /// The 1-based line of the field at `path`, or of the closest enclosing one found.
    pub fn line(&mut self, path: &[Seg]) -> Option<usize> {
        // The region is the lines of the current value: [start, end). `owner` is the line that
        // holds the current value's key or list dash (None for the whole file).
        let mut owner: Option<usize> = None;
        let mut start = 0;
        let mut end = self.lines.len();
        for seg in path {
            match seg {
                Seg::Key(k) => {
                    let Some(found) = self.find_key(owner, start, end, k) else {
                        break;
                    };
                    end = self.block_end(found, false);
                    owner = Some(found);
                    start = found + 1;
                }
                Seg::Index(i) => {
                    let Some(o) = owner else {
                        break;
                    };
                    let Some(item) = self.item(o, start, end, *i) else {
                        break;
                    };
                    end = self.block_end(item, true);
                    owner = Some(item);
                    start = item;
                }
            }
            // A flow value (`{…}` or `[…]`) on its owner's line: nothing finer to find.
            if let Some(o) = owner
                && self.is_flow(o)
            {
                break;
            }
        }
        owner
            .map(|o| o + 1)
            .or_else(|| self.lines.iter().position(|l| l.content).map(|i| i + 1))
    }

    /// Whether the value on line `i` is written in flow style after its key or dash.
    fn is_flow(&self, i: usize) -> bool {
        let l = &self.lines[i];
        let text = self.text[i];
        let rest = &text[l.key_indent.min(text.len())..];
        let value = match &l.key {
            Some(_) => rest.split_once(':').map_or("", |(_, v)| v.trim_start()),
            None => rest,
        };
        value.starts_with(['{', '['])
    }

    /// The line (0-based) in [start, end) holding `key` among the owner's fields.
    fn find_key(&self, owner: Option<usize>, start: usize, end: usize, key: &str) -> Option<usize> {
        // The owner's fields sit at the key column of the first line with content (for a list
        // item, the item's own line holds its first field).
        let first = (start..end).find(|&i| self.lines[i].content)?;
        let col = self.lines[first].key_indent;
        let _ = owner;
        (start..end).find(|&i| {
            let l = &self.lines[i];
            l.content
                && l.key_indent == col
                && (i == first || !l.dash)
                && l.key.as_deref() == Some(key)
        })
    }

    /// The start line of the `i`-th list item of the value owned by line `owner`.
    fn item(&mut self, owner: usize, start: usize, end: usize, i: usize) -> Option<usize> {
        if !self.items.contains_key(&owner) {
            let found = self.scan_items(owner, start, end);
            self.items.insert(owner, found);
        }
        self.items
            .get(&owner)
            .and_then(|items| items.get(i).copied())
    }

    fn scan_items(&self, owner: usize, start: usize, end: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut dash_col = None;
        let from = if self.lines[owner].dash && start == owner {
            // A list directly inside a list item: `- - a`.
            owner + 1
        } else {
            start
        };
        for i in from..end {
            let l = &self.lines[i];
            if !(l.content && l.dash) {
                continue;
            }
            match dash_col {
                None => {
                    dash_col = Some(l.indent);
                    out.push(i);
                }
                Some(c) if l.indent == c => out.push(i),
                Some(_) => {}
            }
        }
        out
    }

    /// The end (exclusive) of the block owned by line `i`: a key's value, or a list item.
    fn block_end(&mut self, i: usize, item: bool) -> usize {
        if let Some(&end) = self.ends.get(&(i, item)) {
            return end;
        }
        let end = self.scan_block_end(i, item);
        self.ends.insert((i, item), end);
        end
    }

    fn scan_block_end(&self, i: usize, item: bool) -> usize {
        let own = &self.lines[i];
        let (col, same_col_dash_belongs) = if item {
            (own.indent, false)
        } else {
            (own.key_indent, true)
        };
        ((i + 1)..self.lines.len())
            .find(|&j| {
                let l = &self.lines[j];
                l.content
                    && (l.indent < col || (l.indent == col && !(same_col_dash_belongs && l.dash)))
            })
            .unwrap_or(self.lines.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(src: &str, path: &str) -> Option<usize> {
        Locator::new(src).line(&parse_path(path))
    }

    #[test]
    fn fields_are_found_by_path() {
        let src = "# c\nname: w\ninputs:\n  n: {type: number}\nsteps:\n  - id: a\n    op: noop\n    with:\n      times: 3\n      ms: 4\n  - {id: b, op: noop}\n  - id: c\n    retry:\n      attempts: 0\n";
        assert_eq!(line(src, "name"), Some(2));
        assert_eq!(line(src, "inputs.n.type"), Some(4));
        assert_eq!(line(src, "steps[0]"), Some(6));
        assert_eq!(line(src, "steps[0].with.ms"), Some(10));
        assert_eq!(line(src, "steps[1].op"), Some(11));
        assert_eq!(line(src, "steps[2].retry.attempts"), Some(14));
        assert_eq!(line(src, "steps[2].op"), Some(12), "falls back to the step");
        let compact = "name: w\nsteps:\n- id: a\n  op: noop\n- id: b\n  needs: [a]\n";
        assert_eq!(line(compact, "steps[1].needs"), Some(6));
    }

    #[test]
    fn bad_yaml_says_what_to_do() {
        let err = |src: &str| {
            let p = read(src).unwrap_err();
            p.iter()
                .map(|p| {
                    format!(
                        "{}: {}: {} / {}",
                        p.line.unwrap_or(0),
                        p.field,
                        p.message,
                        p.fix
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let e = err("name: w\nsteps:\n  - id: a\n\t op: noop\n");
        assert!(
            e.starts_with("4: (file): the line is indented with a tab"),
            "{e}"
        );
        let e = err("");
        assert!(e.contains("1: (file): the file is empty"), "{e}");
        let e = err("# only a comment\n");
        assert!(e.contains("the file is empty"), "{e}");
        let e = err("# c\n- id: a\n  op: noop\n");
        assert!(
            e.starts_with("2: (file): the file is a list at the top"),
            "{e}"
        );
        assert!(e.contains("`steps:`"), "{e}");
        let e = err("name: w\nname: v\nsteps: []\n");
        assert!(e.contains("2: (file): the key `name` appears twice"), "{e}");
        let e = err("name: w\nsteps:\n  - id: a\n    with:\n      k: 1\n      j: 2\n      k: 3\n");
        assert!(
            e.contains("7: ") && e.contains("the key `k` appears twice"),
            "{e}"
        );
        let e = err("just text\n");
        assert!(e.contains("a single value"), "{e}");
        let e = err("name: w\n---\nname: v\n");
        assert!(e.contains("more than one YAML document"), "{e}");
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        let mut src = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
            let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
            src.push_str(&format!(
                "{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let p = read(&src).unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(p[0].message.contains("alias bomb"), "{p:?}");
        assert_eq!(p[0].line, Some(2), "the first alias");
        // One big anchored list reused a few hundred times: few jumps, a large expansion.
        let big: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        let src = format!(
            "a: &a [{}]\nb: [{}]\n",
            big.join(","),
            vec!["*a"; 300].join(",")
        );
        let p = read(&src).unwrap_err();
        assert!(p[0].message.contains("alias bomb"), "{p:?}");
        // Reasonable reuse reads.
        read("d: &r {attempts: 3}\nx: [*r, *r, *r]\n").unwrap();
    }

    #[test]
    fn deep_nesting_is_refused_with_its_line() {
        let src = format!(
            "name: w\nsteps: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let p = read(&src).unwrap_err();
        assert!(p[0].message.contains("nested more than 128"), "{p:?}");
        assert_eq!(p[0].line, Some(2));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let v = read("name: w\nversion: x\nbogus: 1\ninputs:\n  a: {type: nope}\n  b: {kind: string}\nsteps:\n  - id: a\n    op: noop\n    timeout: 5 minutes\n    retry: {attempts: x}\n    neds: [b]\n  - id: b\n    on_failure: explode\n").unwrap();
        let p = decode(&v).unwrap_err();
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{:?} {} {}", p.step, p.field, p.message))
            .collect();
        let all = got.join("\n");
        for want in [
            "None version expected a whole number",
            "None bogus unknown field `bogus`",
            "None inputs.a.type `nope` is not one of",
            "None inputs.b.kind unknown field `kind`",
            "Some(\"a\") timeout `5 minutes` is not a duration",
            "Some(\"a\") retry.attempts expected a whole number",
            "Some(\"a\") neds unknown field `neds`; did you mean `needs`?",
            "Some(\"b\") on_failure `explode` is not one of rollback, pause, continue",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(p.len(), 8, "{all}\n{p:#?}");
    }
}
