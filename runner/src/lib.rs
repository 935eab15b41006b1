//! Kiln: a self-hosted software factory runner.
//!
//! Issues flow through role plugins (WebAssembly components behind the
//! `kiln:role` WIT contract), each run in its own hardened Docker sandbox,
//! with every effect checked by the host before it reaches a forge.
//!
//! How a run flows through the modules: [`plugin`] loads and checks a role
//! component and runs it in a fresh store; every call it makes lands in
//! [`imports`], one module per WIT interface, which checks the capability
//! and calls the module owning the concern ([`model`], [`forge`], the
//! workspace); everything that happens is a [`session`] event.
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod board;
pub mod caps;
pub mod config;
pub mod control;
pub mod detect;
pub mod effects;
pub mod forge;
pub mod imports;
pub mod improve;
pub mod intake;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod policy;
pub mod publish;
pub mod sandbox;
pub mod schedule;
pub mod service;
pub mod session;
pub mod signals;
pub mod skills;
pub mod store;
pub mod worker;
