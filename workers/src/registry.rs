//! The registry of ops by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_core::Catalog;
use steward_schemas::OpSpec;

use crate::op::Op;

/// Ops by name: the catalog of every op Steward knows (for validation and policy), and the
/// implementations this process can run.
#[derive(Clone, Default)]
pub struct Registry {
    ops: BTreeMap<&'static str, Arc<dyn Op>>,
    catalog: BTreeMap<&'static str, &'static OpSpec>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("implemented", &self.ops.keys().collect::<Vec<_>>())
            .field("catalogued", &self.catalog.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog and every built-in implementation. The Microsoft 365 ops are registered
    /// without connectors: listed as implemented, they fail with a clear message if run; a
    /// worker that talks to Microsoft uses [`Registry::with_m365`].
    pub fn builtin() -> Self {
        Self::build(None)
    }

    /// [`Registry::builtin`], with the Microsoft 365 ops connected through `m365`.
    pub fn with_m365(m365: crate::m365::M365) -> Self {
        Self::build(Some(m365))
    }

    /// The catalog and every built-in implementation, connected to Microsoft 365 and to the
    /// RMM where given.
    pub fn connected(
        m365: Option<crate::m365::M365>,
        onprem: Option<crate::onprem::OnPrem>,
    ) -> Self {
        let mut r = Self::new();
        for spec in crate::catalog::CATALOG {
            r.catalog.insert(spec.name, spec);
        }
        crate::testing::register(&mut r);
        r.register(crate::timer::Wait);
        let secrets = m365
            .as_ref()
            .map(|m| m.secrets.clone())
            .or_else(|| onprem.as_ref().and_then(|o| o.secrets.clone()));
        // The cloud ops, by their own names: the routed dispatcher's cloud executor.
        let mut cloud = Self::new();
        crate::m365::ops::register(&mut cloud, m365);
        let cloud_ops = Arc::new(cloud.ops.clone());
        for (name, op) in cloud.ops {
            let routed = steward_core::routing::ROUTED_OPS.contains(&name)
                && crate::catalog::CATALOG.iter().any(|s| s.name == name);
            if !routed {
                r.ops.insert(name, op);
            }
        }
        // Every catalogue op that routing knows is the routed dispatcher.
        for spec in crate::catalog::CATALOG {
            if steward_core::routing::ROUTED_OPS.contains(&spec.name) {
                r.register(crate::onprem::routed::Routed {
                    spec,
                    cloud: cloud_ops.clone(),
                    onprem: onprem.clone(),
                    secrets: secrets.clone(),
                });
            }
        }
        r.register(crate::onprem::routed::RoutedUndo {
            spec: &crate::onprem::routed::UNDO_SPEC,
            cloud: cloud_ops,
            onprem: onprem.clone(),
        });
        crate::onprem::register(&mut r, onprem);
        r
    }

    fn build(m365: Option<crate::m365::M365>) -> Self {
        Self::connected(m365, None)
    }

    /// Whether this registry can run the op called `name` (not only validate it).
    pub fn is_implemented(&self, name: &str) -> bool {
        self.ops.contains_key(name)
    }

    /// Adds an implementation under the name its spec gives.
    ///
    /// # Panics
    /// When the name is taken: two ops with one name is a programming error.
    pub fn register(&mut self, op: impl Op) {
        let name = op.spec().name;
        let previous = self.ops.insert(name, Arc::new(op));
        assert!(previous.is_none(), "op `{name}` registered twice");
    }

    /// The implementation of the op called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Op>> {
        self.ops.get(name)
    }

    /// Every op's spec (implemented or only catalogued), by name.
    pub fn specs(&self) -> Vec<&OpSpec> {
        let mut all: BTreeMap<&str, &OpSpec> = self.catalog.iter().map(|(k, v)| (*k, *v)).collect();
        for (name, op) in &self.ops {
            all.insert(name, op.spec());
        }
        all.into_values().collect()
    }
}

impl Catalog for Registry {
    fn op(&self, name: &str) -> Option<&OpSpec> {
        self.ops
            .get(name)
            .map(|op| op.spec())
            .or_else(|| self.catalog.get(name).copied())
    }

    fn op_names(&self) -> Vec<&'static str> {
        self.specs()
            .into_iter()
            .filter(|s| !s.internal)
            .map(|s| s.name)
            .collect()
    }
}
