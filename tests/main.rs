//! Kiln's integration tests, as modules of one test crate.
//!
//! One crate means one test binary: the `kiln` library and every dependency
//! are linked once for all of them, not once per file (with twelve files
//! that was twelve links of the whole crate graph on each change). Run one
//! file's tests by its module path:
//!
//! ```text
//! cargo test -p kiln --test integration sandbox::
//! cargo test -p kiln --test integration forge::the_contract_holds_for_github
//! ```
//!
//! A new test file `tests/<name>.rs` is a module: add `mod <name>;` below.
//! Shared harness code lives in `support/` (`crate::support::...`), never
//! copied into a test file. Tests run on threads of one process, so a test
//! must not change process-wide state (environment variables, the current
//! directory, a global tracing subscriber); give a child process its own
//! `env`/`current_dir` instead. Each test's Docker resources are named by
//! its own runner id, so tests on one Docker engine leave each other alone.

mod support;

mod answer;
mod api;
mod build_guard;
mod detect;
mod durable;
mod factory;
mod forge;
mod github_app;
mod intake;
mod ledger;
mod logs;
mod metrics;
mod model_providers;
mod operating;
mod operator;
mod outer_loop;
mod outputs;
mod plugin_cli;
mod plugin_host;
mod readme;
mod roles;
mod sandbox;
mod serve_crash;
mod store_crash;
mod verification;
mod webhook_chain;
mod worker;
