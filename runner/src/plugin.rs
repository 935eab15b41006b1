//! The WebAssembly host for role plugins.
//!
//! A role plugin is a component of the `kiln:role` world (see
//! `wit/kiln-role@<version>/`). The [`PluginHost`] compiles each plugin once,
//! checks it (manifest, WIT version, imports against the manifest, manifest
//! against the role's grants), keeps an `InstancePre` per plugin, and runs
//! each task in a fresh `Store` under [`PluginLimits`].
//!
//! Security defaults, for every plugin: no WASI (a plugin importing anything
//! outside `kiln:role` is refused), so no files, clocks, sockets or
//! environment; only the capabilities its manifest asks for and its role
//! grants; 256 MiB of memory, a fuel budget that traps, and a wall-clock cap.
pub mod builtin;
pub mod capability;
pub mod host;
pub mod inspect;
pub mod limits;
pub mod types;
pub mod wit;

pub use capability::{Capability, CapabilitySet};
pub use host::{LoadedPlugin, PluginHost, RunError, RunReport};
pub use inspect::{ImportInfo, LoadError, PluginInfo};
pub use limits::PluginLimits;
pub use types::{Outcome, OutcomeStatus, RoleError, Task, Trigger};
