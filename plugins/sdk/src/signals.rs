//! The repository's history, for roles that improve the factory itself
//! (capability `signals.read`; WIT 0.2.0): earlier runs and the signals the
//! host collected about them. Text written by people keeps its trust tag:
//! wrap it with [`crate::forge::envelope`] before a model reads it.
pub use crate::wit::kiln::role::signals::{Query, RunRecord, Signal, SignalKind};
use crate::{RoleError, wit::kiln::role::signals as raw};

/// The repository's runs of `role` in the last `since_hours` hours, newest first.
pub fn recent_runs(role: &str, since_hours: u32, limit: u32) -> Result<Vec<RunRecord>, RoleError> {
    raw::recent_runs(&Query {
        role: role.to_string(),
        since_hours,
        limit,
    })
}

/// Signals about `role`'s runs in the last `since_hours` hours, newest first.
pub fn list(role: &str, since_hours: u32, limit: u32) -> Result<Vec<Signal>, RoleError> {
    raw::list_signals(&Query {
        role: role.to_string(),
        since_hours,
        limit,
    })
}
