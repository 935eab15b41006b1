//! One binding module per supported version of the `kiln:role` contract.
//!
//! Released WIT folders are frozen (`wit/kiln-role@<version>/`). When 0.2.0
//! arrives, `v0_1_0` keeps its `bindgen!` and implements its Host traits by
//! converting to `latest` and delegating, so old plugins keep loading.
pub mod v0_1_0;

pub use v0_1_0 as latest;

/// The WIT versions this host can load, newest first.
pub const SUPPORTED_VERSIONS: &[&str] = &[v0_1_0::VERSION];

/// The WIT package every import of a plugin must belong to.
pub const PACKAGE: &str = "kiln:role";
