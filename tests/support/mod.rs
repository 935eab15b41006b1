//! Harness code shared by the integration tests: fake HTTP servers for the
//! GitHub and model APIs, the runner API under test, sandbox images, the
//! runner-service harness, and signed webhook deliveries.

pub mod api;
pub mod github_api;
pub mod images;
pub mod model_api;
pub mod serve;
pub mod service;
pub mod webhooks;

/// The libtest name of test `name` in the module whose `module_path!()` is
/// `module`, for a test that runs its own binary again with
/// `--exact <name>`: libtest names a test by its path below the crate root.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}
