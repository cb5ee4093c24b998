//! The OData query options the sandbox supports: `$select`, `$filter` (`eq`, `in`, `startswith`,
//! joined by `and` and `or`; on `/users` and `/groups` with Graph's advanced queries —
//! `ConsistencyLevel: eventual` and `$count=true` — also `ne` and `endswith`), `$top` with
//! `$skiptoken` paging, and `$count`.
//!
//! `$select` takes every property of the type in Graph v1.0's schema (`schema.rs`, generated from
//! the CSDL), inherited ones included; one the sandbox does not model reads `null` (`[]` for a
//! collection), and a navigation property adds nothing without `$expand`. Only a name outside
//! the schema gets Graph's "Could not find a property" `BadRequest`.
//!
//! Filters the sandbox does not evaluate (other operators, lambdas such as
//! `assignedLicenses/any(…)`, functions other than `startswith`, properties it does not index)
//! get Graph's `Request_UnsupportedQuery`; malformed filters `BadRequest`.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use super::error::GraphError;
use super::schema::Shape;

#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    pub(crate) select: Option<Vec<(String, Shape)>>,
    pub(crate) filter: Option<Vec<Clause>>,
    pub(crate) top: Option<usize>,
    pub(crate) skip: usize,
    pub(crate) count: bool,
    /// The raw pairs (to rebuild `@odata.nextLink`).
    raw: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Clause {
    Eq(String, Value),
    StartsWith(String, String),
    /// `prop in ('a', 'b')`.
    In(String, Vec<Value>),
    /// `a or b …`: any of the groups, each an `and` of clauses.
    Or(Vec<Vec<Clause>>),
    /// `prop ne v` (an advanced query).
    Ne(String, Value),
    /// `endswith(prop,'x')` (an advanced query).
    EndsWith(String, String),
}

fn value_eq(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::String(a), Value::String(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a == b,
    }
}

fn clause_matches(c: &Clause, obj: &Map<String, Value>) -> bool {
    match c {
        Clause::Eq(p, v) => value_eq(obj.get(p).unwrap_or(&Value::Null), v),
        Clause::StartsWith(p, prefix) => obj.get(p).and_then(Value::as_str).is_some_and(|s| {
            s.to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase())
        }),
        Clause::In(p, values) => {
            let have = obj.get(p).unwrap_or(&Value::Null);
            values.iter().any(|v| value_eq(have, v))
        }
        Clause::Or(groups) => groups
            .iter()
            .any(|g| g.iter().all(|c| clause_matches(c, obj))),
        Clause::Ne(p, v) => !value_eq(obj.get(p).unwrap_or(&Value::Null), v),
        Clause::EndsWith(p, suffix) => obj.get(p).and_then(Value::as_str).is_some_and(|s| {
            s.to_ascii_lowercase()
                .ends_with(&suffix.to_ascii_lowercase())
        }),
    }
}

/// Which properties an entity set allows in `$filter`, `$select`, and its type name for errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntitySet {
    pub(crate) resource: &'static str,
    pub(crate) type_name: &'static str,
    pub(crate) filterable: &'static [&'static str],
    /// Every property of the type in Graph's schema (`schema.rs`).
    pub(crate) schema: &'static [(&'static str, Shape)],
}

impl EntitySet {
    /// The shape of `prop` when the type has it.
    pub(crate) fn shape(&self, prop: &str) -> Option<Shape> {
        self.schema
            .iter()
            .find(|(n, _)| *n == prop)
            .map(|(_, s)| *s)
    }
}

impl Query {
    pub(crate) fn parse(query: Option<&str>, set: &EntitySet) -> Result<Self, GraphError> {
        Self::parse_with(query, set, false)
    }

    /// Like [`Query::parse`], for a collection that takes Graph's advanced queries: with the
    /// request header `ConsistencyLevel: eventual` (`eventual`) and `$count=true`, `$filter`
    /// also takes `ne` and `endswith`; without them those get `Request_UnsupportedQuery`, as
    /// Graph answers.
    pub(crate) fn parse_advanced(
        query: Option<&str>,
        set: &EntitySet,
        eventual: bool,
    ) -> Result<Self, GraphError> {
        let count = crate::http::query_pairs(query)
            .iter()
            .any(|(k, v)| k == "$count" && v == "true");
        Self::parse_with(query, set, eventual && count)
    }

    fn parse_with(
        query: Option<&str>,
        set: &EntitySet,
        advanced: bool,
    ) -> Result<Self, GraphError> {
        let raw = crate::http::query_pairs(query);
        let mut q = Query {
            raw: raw.clone(),
            ..Query::default()
        };
        for (k, v) in &raw {
            match k.as_str() {
                "$select" => {
                    let mut props = Vec::new();
                    for p in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        let Some(shape) = set.shape(p) else {
                            return Err(GraphError::odata(format!(
                                "Could not find a property named '{p}' on type '{}'.",
                                set.type_name
                            )));
                        };
                        props.push((p.to_owned(), shape));
                    }
                    q.select = Some(props);
                }
                "$filter" => q.filter = Some(parse_filter(v, set, advanced)?),
                "$top" => {
                    let n: i64 = v.parse().map_err(|_| {
                        GraphError::odata(format!(
                            "Invalid value '{v}' for $top query option found."
                        ))
                    })?;
                    if !(1..=999).contains(&n) {
                        return Err(GraphError::bad_request(format!(
                            "Invalid page size specified: '{n}'. Must be between 1 and 999 inclusive."
                        )));
                    }
                    q.top = Some(n as usize);
                }
                "$skiptoken" => {
                    q.skip = decode_skiptoken(v).ok_or_else(|| {
                        GraphError::bad_request("Invalid paging token specified.".to_owned())
                    })?;
                }
                "$count" => q.count = v == "true",
                "$orderby" | "$search" | "$expand" => {
                    return Err(GraphError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "Request_UnsupportedQuery",
                        format!("The sandbox does not support the query option '{k}'."),
                    ));
                }
                other if other.starts_with('$') => {
                    return Err(GraphError::odata(format!(
                        "Query option '{other}' is not allowed. To allow it, set the 'AllowedQueryOptions' property on EnableQueryAttribute or QueryValidationSettings."
                    )));
                }
                _ => {}
            }
        }
        Ok(q)
    }

    pub(crate) fn matches(&self, obj: &Map<String, Value>) -> bool {
        let Some(clauses) = &self.filter else {
            return true;
        };
        clauses.iter().all(|c| clause_matches(c, obj))
    }

    /// Projects an object to `$select` (or the set's defaults when `$select` is absent) into
    /// `out`. Annotations such as `@odata.type` are the response's business, not the
    /// projection's: see `graph::collection` and `graph::entity`.
    pub(crate) fn project_into(
        &self,
        out: &mut Map<String, Value>,
        obj: &Map<String, Value>,
        defaults: &[&str],
    ) {
        match &self.select {
            Some(props) => {
                for (p, shape) in props {
                    let value = match (obj.get(p), shape) {
                        (_, Shape::Navigation) => continue,
                        (Some(v), _) => v.clone(),
                        (None, Shape::Single) => Value::Null,
                        (None, Shape::Collection) => Value::Array(vec![]),
                    };
                    out.insert(p.clone(), value);
                }
            }
            None => {
                for p in defaults {
                    out.insert((*p).to_owned(), obj.get(*p).cloned().unwrap_or(Value::Null));
                }
            }
        }
    }

    /// The `(prop,…)` that `$select` adds to a context URL's entity set.
    pub(crate) fn context_select(&self) -> String {
        match &self.select {
            Some(s) => format!(
                "({})",
                s.iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            None => String::new(),
        }
    }

    /// A collection response with Graph's paging.
    pub(crate) fn page(
        &self,
        items: Vec<Value>,
        origin: &str,
        path: &str,
        context: &str,
        default_page: usize,
    ) -> Value {
        let total = items.len();
        let size = self.top.unwrap_or(default_page);
        let page: Vec<Value> = items.into_iter().skip(self.skip).take(size).collect();
        let ctx = format!(
            "{origin}/graph/v1.0/$metadata#{context}{}",
            self.context_select()
        );
        let mut out = Map::new();
        out.insert("@odata.context".into(), json!(ctx));
        if self.count {
            out.insert("@odata.count".into(), json!(total));
        }
        let next = self.skip + page.len();
        if next < total {
            let mut ser = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &self.raw {
                if k != "$skiptoken" {
                    ser.append_pair(k, v);
                }
            }
            if self.top.is_none() {
                ser.append_pair("$top", &size.to_string());
            }
            ser.append_pair("$skiptoken", &encode_skiptoken(next));
            out.insert(
                "@odata.nextLink".into(),
                json!(format!("{origin}{path}?{}", ser.finish())),
            );
        }
        out.insert("value".into(), Value::Array(page));
        Value::Object(out)
    }
}

fn encode_skiptoken(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("sbx-offset:{offset}"))
}

fn decode_skiptoken(token: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("sbx-offset:")?
        .parse()
        .ok()
}

fn parse_filter(text: &str, set: &EntitySet, advanced: bool) -> Result<Vec<Clause>, GraphError> {
    let invalid = || GraphError::odata(format!("Invalid filter clause: {text}"));
    let tokens = tokenize(text).ok_or_else(invalid)?;
    let mut clauses = Vec::new();
    let mut groups: Vec<Vec<Clause>> = Vec::new();
    let mut i = 0;
    loop {
        let clause = match tokens.get(i) {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("startswith") => {
                // startswith ( prop , 'x' )
                match (
                    tokens.get(i + 1),
                    tokens.get(i + 2),
                    tokens.get(i + 3),
                    tokens.get(i + 4),
                    tokens.get(i + 5),
                ) {
                    (
                        Some(Tok::Open),
                        Some(Tok::Word(p)),
                        Some(Tok::Comma),
                        Some(Tok::Str(s)),
                        Some(Tok::Close),
                    ) => {
                        i += 6;
                        check_prop(p, set)?;
                        Clause::StartsWith(p.clone(), s.clone())
                    }
                    _ => return Err(invalid()),
                }
            }
            Some(Tok::Word(w)) if advanced && w.eq_ignore_ascii_case("endswith") => {
                match (
                    tokens.get(i + 1),
                    tokens.get(i + 2),
                    tokens.get(i + 3),
                    tokens.get(i + 4),
                    tokens.get(i + 5),
                ) {
                    (
                        Some(Tok::Open),
                        Some(Tok::Word(p)),
                        Some(Tok::Comma),
                        Some(Tok::Str(s)),
                        Some(Tok::Close),
                    ) => {
                        i += 6;
                        check_prop(p, set)?;
                        Clause::EndsWith(p.clone(), s.clone())
                    }
                    _ => return Err(invalid()),
                }
            }
            // `assignedLicenses/any(x:x/skuId eq …)`, `manager/id eq …`: paths and lambdas.
            Some(Tok::Word(w)) if w.contains('/') => {
                let prop = w.split('/').next().unwrap_or_default();
                check_prop(prop, set)?;
                return Err(unsupported(prop, set));
            }
            // `endswith(mail,'…')`, `not(…)`: functions other than startswith.
            Some(Tok::Word(_)) if tokens.get(i + 1) == Some(&Tok::Open) => {
                let prop = tokens[i + 2..].iter().find_map(|t| match t {
                    Tok::Word(w) => Some(w.split('/').next().unwrap_or_default()),
                    _ => None,
                });
                return match prop {
                    Some(p) if set.shape(p).is_some() => Err(unsupported(p, set)),
                    Some(p) => Err(could_not_find(p, set)),
                    None => Err(invalid()),
                };
            }
            Some(Tok::Word(p)) => {
                let op = match tokens.get(i + 1) {
                    Some(Tok::Word(op)) => op.to_ascii_lowercase(),
                    _ => return Err(invalid()),
                };
                if op == "in" {
                    // prop in ( v , v … )
                    check_prop(p, set)?;
                    if tokens.get(i + 2) != Some(&Tok::Open) {
                        return Err(invalid());
                    }
                    let mut values = Vec::new();
                    let mut j = i + 3;
                    loop {
                        values.push(literal(tokens.get(j)).ok_or_else(invalid)?);
                        match tokens.get(j + 1) {
                            Some(Tok::Comma) => j += 2,
                            Some(Tok::Close) => break,
                            _ => return Err(invalid()),
                        }
                    }
                    i = j + 2;
                    Clause::In(p.clone(), values)
                } else {
                    let value = literal(tokens.get(i + 2)).ok_or_else(invalid)?;
                    check_prop(p, set)?;
                    // `ne` (like `endswith`) needs Graph's advanced queries
                    // (`ConsistencyLevel: eventual` with `$count=true`): unsupported without,
                    // as Graph answers.
                    i += 3;
                    match op.as_str() {
                        "eq" => Clause::Eq(p.clone(), value),
                        "ne" if advanced => Clause::Ne(p.clone(), value),
                        _ => return Err(unsupported(p, set)),
                    }
                }
            }
            _ => return Err(invalid()),
        };
        clauses.push(clause);
        match tokens.get(i) {
            None => break,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("or") => {
                groups.push(std::mem::take(&mut clauses));
                i += 1;
            }
            Some(_) => return Err(invalid()),
        }
    }
    if groups.is_empty() {
        return Ok(clauses);
    }
    groups.push(clauses);
    Ok(vec![Clause::Or(groups)])
}

/// A literal of a filter: a string, `true`, `false`, `null` or a GUID.
fn literal(t: Option<&Tok>) -> Option<Value> {
    Some(match t? {
        Tok::Str(s) => Value::String(s.clone()),
        Tok::Word(w) if w == "true" => Value::Bool(true),
        Tok::Word(w) if w == "false" => Value::Bool(false),
        Tok::Word(w) if w == "null" => Value::Null,
        Tok::Word(w) if crate::ids::is_guid(w) => Value::String(w.clone()),
        _ => return None,
    })
}

fn unsupported(p: &str, set: &EntitySet) -> GraphError {
    GraphError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "Request_UnsupportedQuery",
        format!(
            "Unsupported or invalid query filter clause specified for property '{p}' of resource '{}'.",
            set.resource
        ),
    )
}

fn could_not_find(p: &str, set: &EntitySet) -> GraphError {
    GraphError::odata(format!(
        "Could not find a property named '{p}' on type '{}'.",
        set.type_name
    ))
}

/// A property the sandbox filters on passes; one of the type that it does not index is
/// unsupported; anything else does not exist.
fn check_prop(p: &str, set: &EntitySet) -> Result<(), GraphError> {
    if set.filterable.contains(&p) {
        Ok(())
    } else if set.shape(p).is_some() {
        Err(unsupported(p, set))
    } else {
        Err(could_not_find(p, set))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut v = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return None,
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            v.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            v.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(v));
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '\t' | '(' | ')' | ',' | '\'') {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: EntitySet = EntitySet {
        resource: "User",
        type_name: "microsoft.graph.user",
        filterable: &[
            "userPrincipalName",
            "onPremisesSamAccountName",
            "accountEnabled",
        ],
        schema: &[
            ("id", Shape::Single),
            ("userPrincipalName", Shape::Single),
            ("onPremisesSamAccountName", Shape::Single),
            ("accountEnabled", Shape::Single),
            ("jobTitle", Shape::Single),
            ("assignedLicenses", Shape::Collection),
            ("identities", Shape::Collection),
            ("manager", Shape::Navigation),
        ],
    };

    #[test]
    fn filters_parse_and_match() {
        let q = Query::parse(
            Some("$filter=userPrincipalName%20eq%20'O''Brien@x.com'%20and%20accountEnabled%20eq%20true"),
            &SET,
        )
        .unwrap();
        let mut obj = Map::new();
        obj.insert("userPrincipalName".into(), json!("o'brien@x.com"));
        obj.insert("accountEnabled".into(), json!(true));
        assert!(q.matches(&obj));
        obj.insert("accountEnabled".into(), json!(false));
        assert!(!q.matches(&obj));
        let q = Query::parse(Some("$filter=startswith(userPrincipalName,'o')"), &SET).unwrap();
        obj.insert("accountEnabled".into(), json!(true));
        assert!(q.matches(&obj));
        // `in` and `or` (and binds tighter than or).
        let q = Query::parse(
            Some("$filter=userPrincipalName in ('a@x.com', 'O''BRIEN@x.com')"),
            &SET,
        )
        .unwrap();
        assert!(q.matches(&obj));
        let q = Query::parse(
            Some("$filter=userPrincipalName eq 'a@x.com' or userPrincipalName eq 'o''brien@x.com' and accountEnabled eq true"),
            &SET,
        )
        .unwrap();
        assert!(q.matches(&obj));
        obj.insert("accountEnabled".into(), json!(false));
        assert!(!q.matches(&obj));
        assert!(Query::parse(Some("$filter=userPrincipalName in ('a'"), &SET).is_err());
        // Advanced queries: `ne` and `endswith` with ConsistencyLevel: eventual and $count.
        let adv = "$count=true&$filter=endswith(userPrincipalName,'@X.com') and userPrincipalName ne 'b@x.com'";
        assert!(Query::parse(Some(adv), &SET).is_err());
        assert!(Query::parse_advanced(Some(adv), &SET, false).is_err());
        assert!(Query::parse_advanced(Some(&adv.replace("$count=true&", "")), &SET, true).is_err());
        let q = Query::parse_advanced(Some(adv), &SET, true).unwrap();
        let obj = |upn: &str| {
            let mut m = Map::new();
            m.insert("userPrincipalName".into(), json!(upn));
            m
        };
        assert!(q.matches(&obj("a@x.com")));
        assert!(!q.matches(&obj("b@x.com")));
        assert!(!q.matches(&obj("a@y.com")));
        assert!(Query::parse(Some("$filter=userPrincipalName in ()"), &SET).is_err());
        assert!(Query::parse(Some("$filter=userPrincipalName eq 'a' or"), &SET).is_err());
    }

    #[test]
    fn bad_filters_get_graph_errors() {
        let e = Query::parse(Some("$filter=jobTitle eq 'x'"), &SET).unwrap_err();
        assert_eq!(e.code, "Request_UnsupportedQuery");
        let e = Query::parse(Some("$filter=nope eq 'x'"), &SET).unwrap_err();
        assert_eq!(e.code, "BadRequest");
        let e = Query::parse(Some("$filter=userPrincipalName eq 'x"), &SET).unwrap_err();
        assert!(e.message.starts_with("Invalid filter clause"));
        let e = Query::parse(Some("$filter=userPrincipalName ne 'x'"), &SET).unwrap_err();
        assert_eq!(e.code, "Request_UnsupportedQuery");
        let e = Query::parse(Some("$top=0"), &SET).unwrap_err();
        assert!(e.message.contains("page size"));
        assert!(Query::parse(Some("$select=nope"), &SET).is_err());
        // Lambdas and other functions are not evaluated: unsupported, not malformed.
        for f in [
            "assignedLicenses/any(x:x/skuId eq 8a6f1c2e-3b4d-4e5f-9a0b-1c2d3e4f5a6b)",
            "endswith(userPrincipalName,'@x.com')",
            "not(accountEnabled eq true)",
        ] {
            let e = Query::parse(Some(&format!("$filter={f}")), &SET).unwrap_err();
            assert_eq!(e.code, "Request_UnsupportedQuery", "{f}: {}", e.message);
        }
        let e = Query::parse(Some("$filter=nope/any(x:x eq 'a')"), &SET).unwrap_err();
        assert_eq!(e.code, "BadRequest");
        assert!(e.message.contains("'nope'"), "{}", e.message);
        assert!(Query::parse(Some("$skiptoken=garbage!"), &SET).is_err());
    }

    #[test]
    fn select_reads_unmodelled_properties_as_null_or_empty() {
        let q = Query::parse(
            Some("$select=id,jobTitle,identities,manager,assignedLicenses"),
            &SET,
        )
        .unwrap();
        let mut obj = Map::new();
        obj.insert("id".into(), json!("1"));
        obj.insert("assignedLicenses".into(), json!([{"skuId": "s"}]));
        let mut out = Map::new();
        q.project_into(&mut out, &obj, &[]);
        assert_eq!(
            Value::Object(out),
            json!({"id": "1", "jobTitle": null, "identities": [], "assignedLicenses": [{"skuId": "s"}]})
        );
        assert_eq!(
            q.context_select(),
            "(id,jobTitle,identities,manager,assignedLicenses)"
        );
    }

    #[test]
    fn paging_links_round_trip() {
        let q = Query::parse(Some("$top=2&$select=id"), &SET).unwrap();
        let items: Vec<Value> = (0..5).map(|i| json!({"id": i})).collect();
        let page = q.page(items.clone(), "http://h", "/graph/v1.0/users", "users", 100);
        assert_eq!(page["value"].as_array().unwrap().len(), 2);
        let next = page["@odata.nextLink"].as_str().unwrap();
        let query = next.split_once('?').unwrap().1;
        let q2 = Query::parse(Some(query), &SET).unwrap();
        assert_eq!(q2.skip, 2);
        let page3 = Query::parse(Some(query), &SET)
            .map(|mut q| {
                q.skip = 4;
                q
            })
            .unwrap()
            .page(items, "http://h", "/graph/v1.0/users", "users", 100);
        assert!(page3.get("@odata.nextLink").is_none());
        assert_eq!(page3["value"].as_array().unwrap().len(), 1);
    }
}
