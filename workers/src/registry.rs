//! The registry of ops by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_core::Catalog;
use steward_schemas::OpSpec;

use crate::op::Op;

/// Ops by name.
#[derive(Clone, Default)]
pub struct Registry {
    ops: BTreeMap<&'static str, Arc<dyn Op>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ops.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every built-in op.
    pub fn builtin() -> Self {
        let mut r = Self::new();
        crate::testing::register(&mut r);
        r
    }

    /// Adds an op under the name its spec gives.
    ///
    /// # Panics
    /// When the name is taken: two ops with one name is a programming error.
    pub fn register(&mut self, op: impl Op) {
        let name = op.spec().name;
        let previous = self.ops.insert(name, Arc::new(op));
        assert!(previous.is_none(), "op `{name}` registered twice");
    }

    /// The op called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Op>> {
        self.ops.get(name)
    }

    /// Every op's spec, by name.
    pub fn specs(&self) -> impl Iterator<Item = &OpSpec> {
        self.ops.values().map(|op| op.spec())
    }
}

impl Catalog for Registry {
    fn op(&self, name: &str) -> Option<&OpSpec> {
        self.ops.get(name).map(|op| op.spec())
    }

    fn op_names(&self) -> Vec<&'static str> {
        self.ops
            .keys()
            .copied()
            .filter(|n| self.ops[n].spec().internal.eq(&false))
            .collect()
    }
}
