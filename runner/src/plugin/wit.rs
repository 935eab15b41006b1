//! One binding module per supported version of the `kiln:role` contract,
//! and the dispatch between them.
//!
//! Released WIT folders are frozen (`wit/kiln-role@<version>/`). Each
//! version module holds its `bindgen!` and converts its generated types to
//! and from the host's domain types ([`super::types`]); the imports
//! themselves are written once, against the domain types
//! (`crate::imports`). A plugin names its version in its manifest; the host
//! links it with that version's [`Linker`] and runs it through [`RolePre`].
use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::types::{Outcome, RoleError, Task};
use crate::imports::RunState;

mod common;
pub mod v0_1_0;
pub mod v0_2_0;

/// The newest version: what the SDK and the built-in role plugins use.
pub use v0_2_0 as latest;

/// The WIT versions this host can load, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[v0_2_0::VERSION, v0_1_0::VERSION];

/// The WIT package every import of a plugin must belong to.
pub const PACKAGE: &str = "kiln:role";

/// One linker per supported version, each with every import of its version.
pub struct Linkers {
    v0_1_0: Linker<RunState>,
    v0_2_0: Linker<RunState>,
}

impl Linkers {
    /// Link every supported version's imports.
    pub fn new(engine: &wasmtime::Engine) -> wasmtime::Result<Self> {
        let mut first = Linker::new(engine);
        v0_1_0::add_to_linker(&mut first)?;
        let mut second = Linker::new(engine);
        v0_2_0::add_to_linker(&mut second)?;
        Ok(Linkers {
            v0_1_0: first,
            v0_2_0: second,
        })
    }
}

/// A plugin's component, linked and checked against its contract version,
/// ready to instantiate once per run.
pub enum RolePre {
    /// Built against 0.1.0.
    V0_1_0(v0_1_0::RolePre<RunState>),
    /// Built against 0.2.0.
    V0_2_0(v0_2_0::RolePre<RunState>),
}

/// A plugin instance of one run.
pub enum RoleInstance {
    /// Built against 0.1.0.
    V0_1_0(v0_1_0::Role),
    /// Built against 0.2.0.
    V0_2_0(v0_2_0::Role),
}

impl RolePre {
    /// Link `component` as a plugin of contract version `wit`. `Err` says
    /// why it does not fit (an import or the `run` export of the wrong type).
    pub fn new(linkers: &Linkers, wit: &str, component: &Component) -> Result<Self, String> {
        match wit {
            v0_1_0::VERSION => {
                let pre = linkers
                    .v0_1_0
                    .instantiate_pre(component)
                    .map_err(|e| format!("{e:#}"))?;
                v0_1_0::RolePre::new(pre)
                    .map(RolePre::V0_1_0)
                    .map_err(|e| format!("{e:#}"))
            }
            v0_2_0::VERSION => {
                let pre = linkers
                    .v0_2_0
                    .instantiate_pre(component)
                    .map_err(|e| format!("{e:#}"))?;
                v0_2_0::RolePre::new(pre)
                    .map(RolePre::V0_2_0)
                    .map_err(|e| format!("{e:#}"))
            }
            other => Err(format!(
                "kiln:role@{other} is not supported (this host supports {})",
                SUPPORTED_VERSIONS.join(", ")
            )),
        }
    }

    /// The contract version.
    pub fn version(&self) -> &'static str {
        match self {
            RolePre::V0_1_0(_) => v0_1_0::VERSION,
            RolePre::V0_2_0(_) => v0_2_0::VERSION,
        }
    }

    /// A fresh instance in `store`.
    pub async fn instantiate(&self, store: &mut Store<RunState>) -> wasmtime::Result<RoleInstance> {
        Ok(match self {
            RolePre::V0_1_0(pre) => RoleInstance::V0_1_0(pre.instantiate_async(store).await?),
            RolePre::V0_2_0(pre) => RoleInstance::V0_2_0(pre.instantiate_async(store).await?),
        })
    }
}

impl RoleInstance {
    /// Call the plugin's `run` with `task`, in its version's types. The
    /// outer error is a trap, the inner one the plugin's own.
    pub async fn call_run(
        &self,
        store: &mut Store<RunState>,
        task: &Task,
    ) -> wasmtime::Result<Result<Outcome, RoleError>> {
        match self {
            RoleInstance::V0_1_0(role) => {
                v0_1_0::run_result(role.call_run(store, &v0_1_0::task(task)).await)
            }
            RoleInstance::V0_2_0(role) => {
                v0_2_0::run_result(role.call_run(store, &v0_2_0::task(task)).await)
            }
        }
    }
}
