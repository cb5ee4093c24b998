//! Checks every property name the sandbox accepts or returns for users, groups, SKUs, managed
//! devices (and the complex types and action parameters around them) against Microsoft's Graph
//! v1.0 CSDL, so a typo or an invented property can't pass for Graph.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use serde_json::{Map, Value};

use super::*;
use crate::fixture::Fixture;
use crate::world::World;

/// Where Microsoft's Graph v1.0 CSDL is: `STEWARD_GRAPH_CSDL`, else `shared/reference/` beside
/// the checkout or any directory above it (a fresh clone elsewhere still finds the workplace's
/// copy), else the workplace's own `/work/shared`.
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

struct Csdl {
    /// type name -> (base type, property and navigation names)
    types: HashMap<String, (Option<String>, BTreeSet<String>)>,
    /// bound action name -> (binding type, parameter names)
    actions: Vec<(String, String, BTreeSet<String>)>,
}

impl Csdl {
    fn load() -> Self {
        let path = csdl_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the Graph CSDL must be at {} (shared/reference beside the repo, or set STEWARD_GRAPH_CSDL): {e}",
                path.display()
            )
        });
        let doc = roxmltree::Document::parse(&text).expect("CSDL parses");
        let schema = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("Schema") && n.attribute("Namespace") == Some("microsoft.graph")
            })
            .expect("microsoft.graph schema");
        let mut types = HashMap::new();
        let mut actions = Vec::new();
        for n in schema.children().filter(|n| n.is_element()) {
            let tag = n.tag_name().name();
            if tag == "EntityType" || tag == "ComplexType" {
                let name = n.attribute("Name").unwrap_or_default().to_owned();
                let base = n
                    .attribute("BaseType")
                    .map(|b| b.trim_start_matches("graph.").to_owned());
                let props = n
                    .children()
                    .filter(|c| c.has_tag_name("Property") || c.has_tag_name("NavigationProperty"))
                    .filter_map(|c| c.attribute("Name").map(str::to_owned))
                    .collect();
                types.insert(name, (base, props));
            } else if tag == "Action" && n.attribute("IsBound") == Some("true") {
                let params: Vec<(String, String)> = n
                    .children()
                    .filter(|c| c.has_tag_name("Parameter"))
                    .map(|c| {
                        (
                            c.attribute("Name").unwrap_or_default().to_owned(),
                            c.attribute("Type").unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let binding = params
                    .iter()
                    .find(|(n, _)| n == "bindingParameter")
                    .map(|(_, t)| t.trim_start_matches("graph.").to_owned())
                    .unwrap_or_default();
                actions.push((
                    n.attribute("Name").unwrap_or_default().to_owned(),
                    binding,
                    params
                        .into_iter()
                        .map(|(n, _)| n)
                        .filter(|n| n != "bindingParameter")
                        .collect(),
                ));
            }
        }
        Self { types, actions }
    }

    /// All properties of `ty`, including inherited ones.
    fn props(&self, ty: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut cur = Some(ty.to_owned());
        while let Some(t) = cur {
            let (base, props) = self
                .types
                .get(&t)
                .unwrap_or_else(|| panic!("type {t} not in the CSDL"));
            out.extend(props.iter().cloned());
            cur = base.clone();
        }
        out
    }

    fn action_params(&self, action: &str, binding: &str) -> BTreeSet<String> {
        self.actions
            .iter()
            .find(|(n, b, _)| n == action && b == binding)
            .map(|(_, _, p)| p.clone())
            .unwrap_or_else(|| panic!("no bound action {action} on {binding}"))
    }

    fn assert_all<'a>(&self, ty: &str, names: impl IntoIterator<Item = &'a str>) {
        let known = self.props(ty);
        let unknown: Vec<&str> = names
            .into_iter()
            .filter(|n| !n.starts_with('@') && !known.contains(*n))
            .collect();
        assert!(
            unknown.is_empty(),
            "not properties of microsoft.graph.{ty}: {unknown:?}"
        );
    }
}

fn keys(m: &Map<String, Value>) -> Vec<&str> {
    m.keys().map(String::as_str).collect()
}

#[test]
fn every_graph_property_name_is_in_the_csdl() {
    let csdl = Csdl::load();
    let fx = Fixture::load(None).expect("fixture");
    let world = World::from_fixture(&fx, 1, Utc::now());

    // Users: everything accepted, everything selectable, everything returned (cloud and synced).
    csdl.assert_all("user", USER_WRITABLE.iter().map(|(n, _)| *n));
    csdl.assert_all("user", USER_READABLE.iter().copied());
    csdl.assert_all("user", USER_DEFAULT.iter().copied());
    csdl.assert_all("user", USER_FILTERABLE.iter().copied());
    csdl.assert_all("user", SYNCED_USER_CLOUD_WRITABLE.iter().copied());
    let mut saw_synced = false;
    for c in &world.companies {
        for u in &c.tenant.users {
            saw_synced |= u.synced();
            let j = user_json(u, &c.tenant);
            csdl.assert_all("user", keys(&j));
            for l in j["assignedLicenses"].as_array().into_iter().flatten() {
                csdl.assert_all("assignedLicense", keys(l.as_object().expect("object")));
            }
            for l in j["licenseAssignmentStates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                csdl.assert_all(
                    "licenseAssignmentState",
                    keys(l.as_object().expect("object")),
                );
            }
        }
        for g in &c.tenant.groups {
            csdl.assert_all("group", keys(&group_json(g)));
        }
        for s in &c.tenant.skus {
            let j = sku_json(s, c);
            csdl.assert_all("subscribedSku", keys(&j));
            csdl.assert_all(
                "licenseUnitsDetail",
                keys(j["prepaidUnits"].as_object().expect("object")),
            );
            for p in j["servicePlans"].as_array().into_iter().flatten() {
                csdl.assert_all("servicePlanInfo", keys(p.as_object().expect("object")));
            }
        }
        for d in &c.tenant.managed_devices {
            csdl.assert_all("managedDevice", keys(&device_json(d, &c.tenant)));
        }
    }
    assert!(saw_synced, "the fixture should exercise synced users");
    csdl.assert_all(
        "passwordProfile",
        [
            "password",
            "forceChangePasswordNextSignIn",
            "forceChangePasswordNextSignInWithMfa",
        ],
    );
    csdl.assert_all("group", GROUP_READABLE.iter().copied());
    csdl.assert_all("group", GROUPS.filterable.iter().copied());
    csdl.assert_all("subscribedSku", SKU_READABLE.iter().copied());
    csdl.assert_all("managedDevice", DEVICE_READABLE.iter().copied());
    csdl.assert_all("managedDevice", DEVICES.filterable.iter().copied());
    csdl.assert_all(
        "unifiedRoleAssignment",
        [
            "id",
            "principalId",
            "roleDefinitionId",
            "directoryScopeId",
            "appScopeId",
        ],
    );
    csdl.assert_all(
        "unifiedRoleDefinition",
        ["id", "templateId", "displayName", "isBuiltIn", "isEnabled"],
    );
    csdl.assert_all(
        "passwordAuthenticationMethod",
        ["id", "password", "createdDateTime"],
    );
    csdl.assert_all(
        "phoneAuthenticationMethod",
        ["id", "phoneNumber", "phoneType", "smsSignInState"],
    );
    csdl.assert_all(
        "microsoftAuthenticatorAuthenticationMethod",
        ["id", "displayName", "createdDateTime"],
    );
    csdl.assert_all("emailAuthenticationMethod", ["id", "emailAddress"]);
    for (kind, _) in users::METHOD_SEGMENTS {
        let ty = format!("{kind}AuthenticationMethod");
        assert!(csdl.types.contains_key(&ty), "{ty} is not a Graph type");
        assert!(
            csdl.props("authentication")
                .contains(&format!("{kind}Methods")),
            "authentication has no {kind}Methods"
        );
    }

    // Action parameters the sandbox accepts.
    assert_eq!(
        csdl.action_params("assignLicense", "user"),
        ["addLicenses", "removeLicenses"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    let wipe = csdl.action_params("wipe", "managedDevice");
    for p in [
        "keepEnrollmentData",
        "keepUserData",
        "macOsUnlockCode",
        "persistEsimDataPlan",
    ] {
        assert!(wipe.contains(p), "wipe has no parameter {p}");
    }
    assert!(csdl.action_params("retire", "managedDevice").is_empty());
    assert_eq!(
        csdl.action_params("resetPassword", "authenticationMethod"),
        ["newPassword".to_owned()].into_iter().collect()
    );
    csdl.assert_all(
        "longRunningOperation",
        [
            "id",
            "createdDateTime",
            "lastActionDateTime",
            "resourceLocation",
            "status",
            "statusDetail",
        ],
    );
    assert!(csdl.props("authentication").contains("operations"));
    assert!(
        csdl.action_params("revokeSignInSessions", "user")
            .is_empty()
    );
    assert_eq!(
        csdl.action_params("restore", "directoryObject"),
        users::RESTORE_PARAMS
            .iter()
            .map(|p| (*p).to_owned())
            .collect()
    );
}

#[test]
fn the_checker_catches_invented_names() {
    let csdl = Csdl::load();
    let caught = std::panic::catch_unwind(|| csdl.assert_all("user", ["favouriteColour"]));
    assert!(caught.is_err());
}

/// The entity types whose properties `schema.rs` lists, with the constant naming each.
const SCHEMA_TYPES: &[(&str, &str)] = &[
    ("user", "USER"),
    ("group", "GROUP"),
    ("managedDevice", "MANAGED_DEVICE"),
    ("subscribedSku", "SUBSCRIBED_SKU"),
    ("unifiedRoleAssignment", "UNIFIED_ROLE_ASSIGNMENT"),
];

/// A type's base type and its own properties with their shapes.
type TypeProps = (Option<String>, Vec<(String, &'static str)>);

/// `schema.rs` as the CSDL makes it: every property of each type in [`SCHEMA_TYPES`], inherited
/// ones included, with its shape.
fn schema_source() -> String {
    let text = std::fs::read_to_string(csdl_path()).expect("the Graph CSDL (see csdl_path)");
    let doc = roxmltree::Document::parse(&text).expect("CSDL parses");
    let schema = doc
        .descendants()
        .find(|n| n.has_tag_name("Schema") && n.attribute("Namespace") == Some("microsoft.graph"))
        .expect("microsoft.graph schema");
    let mut types: HashMap<String, TypeProps> = HashMap::new();
    for n in schema
        .children()
        .filter(|n| n.has_tag_name("EntityType") || n.has_tag_name("ComplexType"))
    {
        let props = n
            .children()
            .filter_map(|c| {
                let name = c.attribute("Name")?.to_owned();
                let shape = if c.has_tag_name("NavigationProperty") {
                    "Navigation"
                } else if !c.has_tag_name("Property") {
                    return None;
                } else if c
                    .attribute("Type")
                    .is_some_and(|t| t.starts_with("Collection("))
                {
                    "Collection"
                } else {
                    "Single"
                };
                Some((name, shape))
            })
            .collect();
        types.insert(
            n.attribute("Name").unwrap_or_default().to_owned(),
            (
                n.attribute("BaseType")
                    .map(|b| b.trim_start_matches("graph.").to_owned()),
                props,
            ),
        );
    }
    let mut out = String::from(
        "//! Microsoft Graph v1.0's properties of the entity types the sandbox serves, inherited ones\n\
         //! included, generated from `shared/reference/graph-v1.0.csdl.xml`: what `$select` may name.\n\
         //! Do not edit: `csdl_tests::schema_file_is_what_the_csdl_makes` checks it, and\n\
         //! `STEWARD_WRITE_GRAPH_SCHEMA=1 cargo test -p steward-sandbox schema_file` rewrites it.\n\n\
         /// What a property holds, which decides how one the sandbox does not model reads.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq)]\n\
         pub(crate) enum Shape {\n    \
             /// One value (or complex object): `null` when not modelled.\n    \
             Single,\n    \
             /// A collection: `[]` when not modelled.\n    \
             Collection,\n    \
             /// A navigation property: selectable, but without `$expand` it adds nothing to an\n    \
             /// object in OData's minimal metadata.\n    \
             Navigation,\n\
         }\n",
    );
    for (ty, constant) in SCHEMA_TYPES {
        let mut all: Vec<(String, &str)> = Vec::new();
        let mut cur = Some((*ty).to_owned());
        while let Some(t) = cur {
            let (base, props) = types
                .get(&t)
                .unwrap_or_else(|| panic!("{t} not in the CSDL"));
            all.extend(props.iter().cloned());
            cur = base.clone();
        }
        all.sort();
        all.dedup_by(|a, b| a.0 == b.0);
        out.push_str(&format!(
            "\n/// `microsoft.graph.{ty}`: {} properties.\npub(crate) const {constant}: &[(&str, Shape)] = &[\n",
            all.len()
        ));
        for (name, shape) in all {
            out.push_str(&format!("    (\"{name}\", Shape::{shape}),\n"));
        }
        out.push_str("];\n");
    }
    out
}

#[test]
fn schema_file_is_what_the_csdl_makes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/graph/schema.rs");
    let want = schema_source();
    if std::env::var_os("STEWARD_WRITE_GRAPH_SCHEMA").is_some() {
        std::fs::write(&path, &want).expect("write schema.rs");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is not what the CSDL makes; regenerate it with STEWARD_WRITE_GRAPH_SCHEMA=1 cargo test -p steward-sandbox schema_file",
        path.display()
    );
}
