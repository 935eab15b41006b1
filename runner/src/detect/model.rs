//! The optional model-backed layer of the detection step: something that
//! reads the same artifacts and answers findings. The host's scanners do
//! not depend on it; when it is enabled, its error or silence holds.
use std::future::Future;
use std::pin::Pin;

use super::{Artifacts, Verdict};

/// What a model detector's answer is awaited as.
pub type DetectFuture<'a> = Pin<Box<dyn Future<Output = Result<Verdict, String>> + Send + 'a>>;

/// A detector backed by a model (the built-in `detect` role plugin).
pub trait ModelDetector: Send + Sync {
    /// Judges the artifacts: findings, or why it could not.
    fn detect<'a>(&'a self, artifacts: &'a Artifacts) -> DetectFuture<'a>;
}
