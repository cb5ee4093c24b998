//! Input bindings (`with:` templates) and `when:` conditions.
//!
//! References name a value of the run: `inputs.NAME…`, `company.FIELD…`,
//! `steps.ID.output.FIELD…`, `run.id`, `run.requested_by`, `run.company`. A `with:` string is a
//! template: `${{ ref }}` alone takes the referenced value with its type; mixed with text, each
//! reference is written into the string. A `when:` condition is a small boolean language:
//! references, literals (`'text'`, `"text"`, numbers, `true`, `false`, `null`), `==`, `!=`,
//! `&&`, `||`, `!` and parentheses; a bare reference is true unless it is null, false, 0, empty
//! text, an empty list or an empty map.

use std::fmt;

use serde_json::{Map, Value};

/// Where a reference starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// `inputs.NAME`.
    Input(String),
    /// `company.FIELD`.
    Company(String),
    /// `steps.ID.output`.
    StepOutput(String),
    /// `run.id`, `run.requested_by`, `run.company`.
    Run(RunField),
}

/// A field of the run itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunField {
    /// The run's id.
    Id,
    /// Who started it.
    RequestedBy,
    /// The company's id.
    Company,
}

/// One step into a value: a field or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// `.name`
    Field(String),
    /// `[3]`
    Index(usize),
}

/// A reference: a root and the way into its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    /// Where it starts.
    pub root: Root,
    /// The way in.
    pub segs: Vec<Seg>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Input(n) => write!(f, "inputs.{n}")?,
            Root::Company(n) => write!(f, "company.{n}")?,
            Root::StepOutput(s) => write!(f, "steps.{s}.output")?,
            Root::Run(RunField::Id) => f.write_str("run.id")?,
            Root::Run(RunField::RequestedBy) => f.write_str("run.requested_by")?,
            Root::Run(RunField::Company) => f.write_str("run.company")?,
        }
        for seg in &self.segs {
            match seg {
                Seg::Field(n) => write!(f, ".{n}")?,
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// An expression that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// What is wrong and how to write it instead.
    pub message: String,
}

fn perr(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
    }
}

/// Parses a reference such as `steps.create_user.output.id` or `inputs.groups[0]`.
pub fn parse_path(text: &str) -> Result<Path, ParseError> {
    let text = text.trim();
    let mut segs = split_segments(text)?;
    if segs.is_empty() {
        return Err(perr("an empty reference; write e.g. `inputs.upn`"));
    }
    let field = |s: Option<Seg>, after: &str| match s {
        Some(Seg::Field(n)) => Ok(n),
        _ => Err(perr(format!("`{text}`: expected a name after `{after}`"))),
    };
    segs.reverse();
    let head = field(segs.pop(), "")?;
    let root = match head.as_str() {
        "inputs" => Root::Input(field(segs.pop(), "inputs.")?),
        "company" => Root::Company(field(segs.pop(), "company.")?),
        "steps" => {
            let step = field(segs.pop(), "steps.")?;
            match segs.pop() {
                Some(Seg::Field(f)) if f == "output" => Root::StepOutput(step),
                _ => {
                    return Err(perr(format!(
                        "`{text}`: a step reference reads the step's output; write `steps.{step}.output.FIELD`"
                    )));
                }
            }
        }
        "run" => match field(segs.pop(), "run.")?.as_str() {
            "id" => Root::Run(RunField::Id),
            "requested_by" => Root::Run(RunField::RequestedBy),
            "company" => Root::Run(RunField::Company),
            other => {
                return Err(perr(format!(
                    "`run.{other}` does not exist; the run has `run.id`, `run.requested_by` and `run.company`"
                )));
            }
        },
        other => {
            return Err(perr(format!(
                "`{other}` is not something a reference can start with; use `inputs.`, `company.`, `steps.ID.output.` or `run.`"
            )));
        }
    };
    segs.reverse();
    Ok(Path { root, segs })
}

fn split_segments(text: &str) -> Result<Vec<Seg>, ParseError> {
    let mut segs = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut expect_name = true;
    while i < bytes.len() {
        let c = bytes[i];
        if expect_name {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
            {
                i += 1;
            }
            if start == i {
                return Err(perr(format!(
                    "`{text}`: expected a name at position {}",
                    start + 1
                )));
            }
            segs.push(Seg::Field(text[start..i].to_owned()));
            expect_name = false;
        } else if c == b'.' {
            i += 1;
            expect_name = true;
        } else if c == b'[' {
            let close = text[i..]
                .find(']')
                .ok_or_else(|| perr(format!("`{text}`: `[` without `]`")))?;
            let idx: usize = text[i + 1..i + close].trim().parse().map_err(|_| {
                perr(format!(
                    "`{text}`: a list index must be a whole number, e.g. `[0]`"
                ))
            })?;
            segs.push(Seg::Index(idx));
            i += close + 1;
        } else {
            return Err(perr(format!(
                "`{text}`: unexpected `{}`; references are names joined by `.`",
                c as char
            )));
        }
    }
    if expect_name && !segs.is_empty() {
        return Err(perr(format!("`{text}`: ends with `.`")));
    }
    Ok(segs)
}

/// A `with:` value: literal data with references inside strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// A value with no reference in it.
    Literal(Value),
    /// A string that is exactly one reference: takes the value with its type.
    Ref(Path),
    /// A string mixing text and references.
    Text(Vec<Part>),
    /// A list.
    Array(Vec<Template>),
    /// A map.
    Object(Vec<(String, Template)>),
}

/// A piece of a mixed string.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// Plain text.
    Lit(String),
    /// A reference written into the text.
    Ref(Path),
}

impl Template {
    /// Parses a `with:` value.
    pub fn parse(value: &Value) -> Result<Self, ParseError> {
        Ok(match value {
            Value::String(s) => parse_string_template(s)?,
            Value::Array(items) => {
                let parsed = items
                    .iter()
                    .map(Self::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed.iter().all(|t| matches!(t, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Array(parsed)
                }
            }
            Value::Object(map) => {
                let parsed = map
                    .iter()
                    .map(|(k, v)| Self::parse(v).map(|t| (k.clone(), t)))
                    .collect::<Result<Vec<_>, _>>()?;
                if parsed.iter().all(|(_, t)| matches!(t, Self::Literal(_))) {
                    Self::Literal(value.clone())
                } else {
                    Self::Object(parsed)
                }
            }
            other => Self::Literal(other.clone()),
        })
    }

    /// The value for a person to read before the run gets there: references that resolve are
    /// shown resolved, the others as written (`${{ steps.create.output.id }}`).
    pub fn describe(&self, scope: &dyn Scope) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::Ref(p) => match scope.lookup(p) {
                Value::Null => Value::String(format!("${{{{ {p} }}}}")),
                v => v,
            },
            Self::Text(parts) => {
                let mut s = String::new();
                for part in parts {
                    match part {
                        Part::Lit(t) => s.push_str(t),
                        Part::Ref(p) => match scope.lookup(p) {
                            Value::Null => s.push_str(&format!("${{{{ {p} }}}}")),
                            Value::String(t) => s.push_str(&t),
                            other => s.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(s)
            }
            Self::Array(items) => Value::Array(items.iter().map(|t| t.describe(scope)).collect()),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.describe(scope)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    /// Every reference in the template.
    pub fn refs(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect_refs(&mut out);
        out
    }

    fn collect_refs<'a>(&'a self, out: &mut Vec<&'a Path>) {
        match self {
            Self::Literal(_) => {}
            Self::Ref(p) => out.push(p),
            Self::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Ref(p) => Some(p),
                Part::Lit(_) => None,
            })),
            Self::Array(items) => items.iter().for_each(|t| t.collect_refs(out)),
            Self::Object(fields) => fields.iter().for_each(|(_, t)| t.collect_refs(out)),
        }
    }

    /// The value, with references resolved in `scope`.
    pub fn render(&self, scope: &dyn Scope) -> Value {
        match self {
            Self::Literal(v) => v.clone(),
            Self::Ref(p) => scope.lookup(p),
            Self::Text(parts) => {
                let mut s = String::new();
                for part in parts {
                    match part {
                        Part::Lit(t) => s.push_str(t),
                        Part::Ref(p) => match scope.lookup(p) {
                            Value::Null => {}
                            Value::String(t) => s.push_str(&t),
                            other => s.push_str(&other.to_string()),
                        },
                    }
                }
                Value::String(s)
            }
            Self::Array(items) => Value::Array(items.iter().map(|t| t.render(scope)).collect()),
            Self::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, t)| (k.clone(), t.render(scope)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

fn parse_string_template(s: &str) -> Result<Template, ParseError> {
    if !s.contains("${{") {
        if s.contains("}}") && s.contains("${") {
            return Err(perr(format!(
                "`{s}`: write references as `${{{{ inputs.NAME }}}}`"
            )));
        }
        return Ok(Template::Literal(Value::String(s.to_owned())));
    }
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${{") {
        if start > 0 {
            parts.push(Part::Lit(rest[..start].to_owned()));
        }
        let after = &rest[start + 3..];
        let end = after
            .find("}}")
            .ok_or_else(|| perr(format!("`{s}`: `${{{{` without a closing `}}}}`")))?;
        parts.push(Part::Ref(parse_path(&after[..end])?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_owned()));
    }
    Ok(match parts.as_slice() {
        [Part::Ref(p)] => Template::Ref(p.clone()),
        _ => Template::Text(parts),
    })
}

/// What references are resolved against.
pub trait Scope {
    /// The referenced value, or null when it does not exist.
    fn lookup(&self, path: &Path) -> Value;
}

/// Follows `segs` into `value`; null when a segment does not exist.
pub fn walk(value: &Value, segs: &[Seg]) -> Value {
    let mut cur = value;
    for seg in segs {
        let next = match (seg, cur) {
            (Seg::Field(f), Value::Object(m)) => m.get(f),
            (Seg::Index(i), Value::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(v) => cur = v,
            None => return Value::Null,
        }
    }
    cur.clone()
}

/// A `when:` condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal value.
    Lit(Value),
    /// A reference.
    Ref(Path),
    /// `!e`
    Not(Box<Expr>),
    /// `a && b && …`: true when every operand is (a chain is one node, however long, so that
    /// evaluating and dropping it never recurses once per operand).
    And(Vec<Expr>),
    /// `a || b || …`: true when any operand is.
    Or(Vec<Expr>),
    /// `a == b`
    Eq(Box<Expr>, Box<Expr>),
    /// `a != b`
    Ne(Box<Expr>, Box<Expr>),
}

/// The deepest a condition may nest parentheses and `!` (a condition is parsed, evaluated and
/// dropped recursively; a bound keeps a condition nested thousands deep from overflowing the
/// stack of `validate`, `serve` or a worker).
pub const MAX_DEPTH: usize = 32;

/// The longest a condition may be, in characters.
pub const MAX_CONDITION_LEN: usize = 4096;

/// At most 60 characters of `text`, for messages about it.
fn quote(text: &str) -> String {
    let mut out: String = text.chars().take(60).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

impl Expr {
    /// Parses a condition; a surrounding `${{ … }}` is allowed.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let chars = text.chars().count();
        if chars > MAX_CONDITION_LEN {
            return Err(perr(format!(
                "the condition is {chars} characters long; the most is {MAX_CONDITION_LEN}"
            )));
        }
        let mut inner = text.trim();
        if let Some(rest) = inner.strip_prefix("${{") {
            inner = rest
                .strip_suffix("}}")
                .ok_or_else(|| perr(format!("`{text}`: `${{{{` without a closing `}}}}`")))?;
        }
        let tokens = lex(inner)?;
        if tokens.is_empty() {
            return Err(perr(
                "an empty condition; write e.g. `inputs.shared == true`",
            ));
        }
        let mut p = Parser {
            tokens,
            pos: 0,
            text,
            depth: 0,
        };
        let e = p.or()?;
        if p.pos != p.tokens.len() {
            return Err(perr(format!(
                "`{}`: unexpected `{}`",
                quote(text),
                p.tokens[p.pos]
            )));
        }
        Ok(e)
    }

    /// Every reference in the condition.
    pub fn refs(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Path>) {
        match self {
            Self::Lit(_) => {}
            Self::Ref(p) => out.push(p),
            Self::Not(e) => e.collect(out),
            Self::And(all) | Self::Or(all) => all.iter().for_each(|e| e.collect(out)),
            Self::Eq(a, b) | Self::Ne(a, b) => {
                a.collect(out);
                b.collect(out);
            }
        }
    }

    /// Evaluates the condition.
    pub fn eval(&self, scope: &dyn Scope) -> bool {
        truthy(&self.value(scope))
    }

    fn value(&self, scope: &dyn Scope) -> Value {
        match self {
            Self::Lit(v) => v.clone(),
            Self::Ref(p) => scope.lookup(p),
            Self::Not(e) => Value::Bool(!e.eval(scope)),
            Self::And(all) => Value::Bool(all.iter().all(|e| e.eval(scope))),
            Self::Or(all) => Value::Bool(all.iter().any(|e| e.eval(scope))),
            Self::Eq(a, b) => Value::Bool(loose_eq(&a.value(scope), &b.value(scope))),
            Self::Ne(a, b) => Value::Bool(!loose_eq(&a.value(scope), &b.value(scope))),
        }
    }
}

/// Equality where `1` equals `1.0`.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Whether a value counts as true in a condition.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Path(String),
    Lit(Value),
    Not,
    And,
    Or,
    Eq,
    Ne,
    Open,
    Close,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(p) => f.write_str(p),
            Self::Lit(v) => write!(f, "{v}"),
            Self::Not => f.write_str("!"),
            Self::And => f.write_str("&&"),
            Self::Or => f.write_str("||"),
            Self::Eq => f.write_str("=="),
            Self::Ne => f.write_str("!="),
            Self::Open => f.write_str("("),
            Self::Close => f.write_str(")"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<Tok>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '!' if next == Some('=') => {
                out.push(Tok::Ne);
                i += 2;
            }
            '!' => {
                out.push(Tok::Not);
                i += 1;
            }
            '=' if next == Some('=') => {
                out.push(Tok::Eq);
                i += 2;
            }
            '=' => return Err(perr(format!("`{text}`: compare with `==`, not `=`"))),
            '&' if next == Some('&') => {
                out.push(Tok::And);
                i += 2;
            }
            '|' if next == Some('|') => {
                out.push(Tok::Or);
                i += 2;
            }
            '\'' | '"' => {
                let close = chars[i + 1..].iter().position(|&d| d == c).ok_or_else(|| {
                    perr(format!("`{text}`: a text literal without its closing {c}"))
                })?;
                let s: String = chars[i + 1..i + 1 + close].iter().collect();
                out.push(Tok::Lit(Value::String(s)));
                i += close + 2;
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|d| d.is_ascii_digit())) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                let v: Value = serde_json::from_str(&s)
                    .map_err(|_| perr(format!("`{text}`: `{s}` is not a number")))?;
                out.push(Tok::Lit(v));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || matches!(chars[i], '_' | '.' | '[' | ']' | '-'))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(match word.as_str() {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "null" => Tok::Lit(Value::Null),
                    "and" | "or" | "not" => {
                        return Err(perr(format!(
                            "`{text}`: write `&&`, `||` and `!` instead of `and`, `or` and `not`"
                        )));
                    }
                    _ => Tok::Path(word),
                });
            }
            other => return Err(perr(format!("`{text}`: unexpected `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    pos: usize,
    text: &'a str,
    /// Parentheses and `!` open around the current position.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut all = vec![self.and()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            all.push(self.and()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::Or(all)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut all = vec![self.unary()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    /// One level deeper (a `(` or a `!`), refused past [`MAX_DEPTH`].
    fn descend(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(perr(format!(
                "`{}`: nested more than {MAX_DEPTH} deep (parentheses and `!`)",
                quote(self.text)
            )));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.descend()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        let left = self.primary()?;
        match self.peek() {
            Some(Tok::Eq) => {
                self.pos += 1;
                Ok(Expr::Eq(Box::new(left), Box::new(self.primary()?)))
            }
            Some(Tok::Ne) => {
                self.pos += 1;
                Ok(Expr::Ne(Box::new(left), Box::new(self.primary()?)))
            }
            _ => Ok(left),
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let text = self.text;
        let tok = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| perr(format!("`{text}`: ends too early")))?;
        self.pos += 1;
        match tok {
            Tok::Open => {
                self.descend()?;
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(perr(format!("`{}`: `(` without `)`", quote(text))));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(e)
            }
            Tok::Lit(v) => Ok(Expr::Lit(v)),
            Tok::Path(p) => Ok(Expr::Ref(parse_path(&p)?)),
            other => Err(perr(format!("`{text}`: unexpected `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed(Value);

    impl Scope for Fixed {
        fn lookup(&self, path: &Path) -> Value {
            let root = match &path.root {
                Root::Input(n) => walk(
                    &self.0,
                    &[Seg::Field("inputs".into()), Seg::Field(n.clone())],
                ),
                Root::Company(n) => walk(
                    &self.0,
                    &[Seg::Field("company".into()), Seg::Field(n.clone())],
                ),
                Root::StepOutput(s) => walk(
                    &self.0,
                    &[Seg::Field("steps".into()), Seg::Field(s.clone())],
                ),
                Root::Run(_) => json!("run_x"),
            };
            walk(&root, &path.segs)
        }
    }

    fn scope() -> Fixed {
        Fixed(json!({
            "inputs": {"upn": "jane@contoso.com", "shared": true, "groups": ["a", "b"], "n": 2},
            "company": {"defaults": {"usage_location": "GB"}},
            "steps": {"create": {"id": "u-1", "mail": null}}
        }))
    }

    #[test]
    fn templates_keep_types_or_interpolate() {
        let s = scope();
        let t = Template::parse(&json!("${{ inputs.groups }}")).unwrap();
        assert_eq!(t.render(&s), json!(["a", "b"]));
        let t = Template::parse(&json!(
            "user ${{inputs.upn}} in ${{ company.defaults.usage_location }}"
        ))
        .unwrap();
        assert_eq!(t.render(&s), json!("user jane@contoso.com in GB"));
        let t = Template::parse(
            &json!({"id": "${{ steps.create.output.id }}", "k": [1, "${{ inputs.n }}"]}),
        )
        .unwrap();
        assert_eq!(t.render(&s), json!({"id": "u-1", "k": [1, 2]}));
        assert_eq!(t.refs().len(), 2);
        let lit = Template::parse(&json!({"a": [1, "x"]})).unwrap();
        assert!(matches!(lit, Template::Literal(_)));
        assert_eq!(
            Template::parse(&json!("${{ inputs.first[0] }}"))
                .unwrap()
                .refs()[0]
                .to_string(),
            "inputs.first[0]"
        );
    }

    #[test]
    fn bad_references_say_how_to_write_them() {
        for (bad, hint) in [
            ("${{ input.upn }}", "can start with"),
            ("${{ steps.create.id }}", "steps.create.output.FIELD"),
            ("${{ run.started }}", "run.id"),
            ("${{ inputs.upn ", "closing"),
            ("${{ inputs. }}", "ends with"),
            ("${{ inputs.a[x] }}", "whole number"),
        ] {
            let err = Template::parse(&json!(bad)).unwrap_err().to_string();
            assert!(err.contains(hint), "{bad}: {err}");
        }
    }

    #[test]
    fn conditions_evaluate() {
        let s = scope();
        let yes = [
            "inputs.shared",
            "inputs.shared == true",
            "inputs.upn == 'jane@contoso.com'",
            "inputs.n == 2.0",
            "!inputs.missing",
            "inputs.missing == null",
            "steps.create.output.mail == null",
            "(inputs.n != 3 && inputs.shared) || false",
            "${{ company.defaults.usage_location == \"GB\" }}",
            "inputs.groups[1] == 'b'",
        ];
        for text in yes {
            assert!(Expr::parse(text).unwrap().eval(&s), "{text}");
        }
        let no = [
            "inputs.missing",
            "!inputs.shared",
            "inputs.n == -2",
            "inputs.shared && inputs.missing",
            "inputs.groups[5]",
        ];
        for text in no {
            assert!(!Expr::parse(text).unwrap().eval(&s), "{text}");
        }
        for (bad, hint) in [
            ("inputs.a = 1", "`==`"),
            ("inputs.a and inputs.b", "`&&`"),
            ("(inputs.a", "without `)`"),
            ("inputs.a ==", "ends too early"),
            ("'open", "closing"),
            ("", "empty"),
            ("inputs.a inputs.b", "unexpected"),
        ] {
            let err = Expr::parse(bad).unwrap_err().to_string();
            assert!(err.contains(hint), "{bad}: {err}");
        }
    }
}
