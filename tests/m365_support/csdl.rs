//! Checks Graph request bodies against Microsoft's Graph v1.0 CSDL
//! (`shared/reference/graph-v1.0.csdl.xml`): every property of an entity body, every parameter
//! of an action, recursively through complex types; and every request the checker has no rule
//! for is reported, so a new kind of call cannot slip past it. Mirrors the sandbox's own checker
//! (`sandbox/src/graph/csdl_tests.rs`), which checks what the sandbox accepts and returns.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Where the CSDL is: `STEWARD_GRAPH_CSDL`, else `shared/reference/` beside the checkout or any
/// directory above it, else `/work/shared`.
fn csdl_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("STEWARD_GRAPH_CSDL") {
        return p.into();
    }
    let rel = "shared/reference/graph-v1.0.csdl.xml";
    let mut dir = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join(rel);
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
    }
    std::path::Path::new("/work").join(rel)
}

/// A property: its name and type (`graph.passwordProfile`, `Collection(graph.assignedLicense)`,
/// `Edm.String`).
type Props = HashMap<String, String>;

pub struct Csdl {
    /// type → (base type, properties)
    types: HashMap<String, (Option<String>, Props)>,
    /// (action, binding type) → parameters
    actions: HashMap<(String, String), Props>,
}

fn strip(t: &str) -> String {
    t.trim_start_matches("Collection(")
        .trim_end_matches(')')
        .trim_start_matches("graph.")
        .trim_start_matches("microsoft.graph.")
        .to_owned()
}

impl Csdl {
    pub fn load() -> Result<Self> {
        let path = csdl_path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("the Graph CSDL must be at {}", path.display()))?;
        let doc = roxmltree::Document::parse(&text)?;
        let schema = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("Schema") && n.attribute("Namespace") == Some("microsoft.graph")
            })
            .context("no microsoft.graph schema")?;
        let mut types = HashMap::new();
        let mut actions = HashMap::new();
        for n in schema.children().filter(|n| n.is_element()) {
            let tag = n.tag_name().name();
            let props = |n: roxmltree::Node<'_, '_>, tags: &[&str]| -> Props {
                n.children()
                    .filter(|c| tags.iter().any(|t| c.has_tag_name(*t)))
                    .filter_map(|c| {
                        Some((
                            c.attribute("Name")?.to_owned(),
                            c.attribute("Type")?.to_owned(),
                        ))
                    })
                    .collect()
            };
            if tag == "EntityType" || tag == "ComplexType" {
                types.insert(
                    n.attribute("Name").unwrap_or_default().to_owned(),
                    (
                        n.attribute("BaseType").map(strip),
                        props(n, &["Property", "NavigationProperty"]),
                    ),
                );
            } else if tag == "Action" && n.attribute("IsBound") == Some("true") {
                let mut params = props(n, &["Parameter"]);
                let binding = params
                    .remove("bindingParameter")
                    .map(|t| strip(&t))
                    .unwrap_or_default();
                actions.insert(
                    (n.attribute("Name").unwrap_or_default().to_owned(), binding),
                    params,
                );
            }
        }
        Ok(Self { types, actions })
    }

    fn props(&self, ty: &str) -> Result<Props> {
        let mut out = Props::new();
        let mut cur = Some(ty.to_owned());
        while let Some(t) = cur {
            let (base, props) = self
                .types
                .get(&t)
                .with_context(|| format!("type {t} not in the CSDL"))?;
            out.extend(props.iter().map(|(k, v)| (k.clone(), v.clone())));
            cur = base.clone();
        }
        Ok(out)
    }

    /// Checks every key of `body` against `props`, and complex values against their types.
    fn check_object(&self, what: &str, props: &Props, body: &Value) -> Result<()> {
        let Some(obj) = body.as_object() else {
            bail!("{what}: the body is not a JSON object: {body}");
        };
        for (k, v) in obj {
            if k.starts_with('@') {
                continue;
            }
            let Some(ty) = props.get(k) else {
                let known: BTreeSet<&String> = props.keys().collect();
                bail!("{what}: `{k}` is not in the CSDL (known: {known:?})");
            };
            let inner = strip(ty);
            if self.types.contains_key(&inner) && !v.is_null() {
                let sub = self.props(&inner)?;
                match v {
                    Value::Array(items) => {
                        for item in items {
                            self.check_object(&format!("{what}.{k}[]"), &sub, item)?;
                        }
                    }
                    other => self.check_object(&format!("{what}.{k}"), &sub, other)?,
                }
            }
        }
        Ok(())
    }

    fn action(&self, name: &str, binding: &str) -> Result<&Props> {
        self.actions
            .get(&(name.to_owned(), binding.to_owned()))
            .with_context(|| format!("no bound action {name} on {binding} in the CSDL"))
    }

    /// Checks one Graph request (`path` relative to `/v1.0`, no query).
    pub fn check(&self, method: &str, path: &str, body: &Value) -> Result<()> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let what = format!("{method} {path}");
        match (method, segs.as_slice()) {
            ("POST", ["$batch"]) => {
                let reqs = body["requests"]
                    .as_array()
                    .context("a batch without requests")?;
                for r in reqs {
                    let url = r["url"].as_str().context("a batch request without url")?;
                    if url.starts_with("http") {
                        bail!("{what}: batch URLs must be relative, got {url}");
                    }
                    if let Some(b) = r.get("body").filter(|b| !b.is_null()) {
                        let has_type = r["headers"].as_object().is_some_and(|h| {
                            h.keys().any(|k| k.eq_ignore_ascii_case("content-type"))
                        });
                        if !has_type {
                            bail!(
                                "{what}: batch request {} has a body but no Content-Type",
                                r["id"]
                            );
                        }
                        let p = url.split('?').next().unwrap_or(url);
                        self.check(r["method"].as_str().unwrap_or("GET"), p, b)?;
                    }
                }
                Ok(())
            }
            ("POST", ["roleManagement", "directory", "roleAssignments"]) => {
                self.check_object(&what, &self.props("unifiedRoleAssignment")?, body)
            }
            ("POST", ["users"]) | ("PATCH", ["users", _]) => {
                self.check_object(&what, &self.props("user")?, body)
            }
            ("POST", ["users", _, "assignLicense"]) => {
                let params = self.action("assignLicense", "user")?;
                for required in ["addLicenses", "removeLicenses"] {
                    if body.get(required).is_none() {
                        bail!("{what}: `{required}` is required (Graph answers 400 without it)");
                    }
                }
                self.check_object(&what, params, body)
            }
            ("POST", ["users", _, "revokeSignInSessions"]) => {
                self.check_object(&what, self.action("revokeSignInSessions", "user")?, body)
            }
            ("POST", ["users", _, "authentication", "methods", _, "resetPassword"]) => self
                .check_object(
                    &what,
                    self.action("resetPassword", "authenticationMethod")?,
                    body,
                ),
            (
                "POST",
                [
                    "deviceManagement",
                    "managedDevices",
                    _,
                    action @ ("wipe" | "retire"),
                ],
            ) => self.check_object(&what, self.action(action, "managedDevice")?, body),
            ("POST", ["directory", "deletedItems", _, "restore"]) => {
                self.check_object(&what, self.action("restore", "directoryObject")?, body)
            }
            ("PUT", ["users", _, "manager", "$ref"])
            | ("POST", ["groups", _, "members", "$ref"]) => {
                let obj = body.as_object().context("a $ref body must be an object")?;
                if obj.len() != 1 || !obj.contains_key("@odata.id") {
                    bail!("{what}: a $ref body holds exactly `@odata.id`, got {body}");
                }
                // The navigation property exists on the entity.
                let (ty, nav) = if segs[0] == "users" {
                    ("user", "manager")
                } else {
                    ("group", "members")
                };
                if !self.props(ty)?.contains_key(nav) {
                    bail!("{what}: {ty} has no navigation property {nav}");
                }
                Ok(())
            }
            _ => bail!(
                "{what}: no CSDL rule for this request; add one to tests/m365_support/csdl.rs"
            ),
        }
    }
}
