//! Kiln: a self-hosted software factory runner.
//!
//! Issues flow through role plugins (WebAssembly components behind the
//! `kiln:role` WIT contract), each run in its own hardened Docker sandbox,
//! with every effect checked by the host before it reaches a forge.
#![deny(missing_docs)]

pub mod policy;
