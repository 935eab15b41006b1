//! `kiln:role/signals` (WIT 0.2.0): a repository's earlier runs and the
//! corrections people made to them, read-only, for roles that improve the
//! factory itself. The host collects them ([`crate::signals`]); the plugin
//! only reads.
//!
//! | WIT function  | capability     | gate |
//! |---------------|----------------|------|
//! | `recent-runs` | `signals.read` | role name checked; at most [`MAX_ITEMS`]; texts redacted |
//! | `list-signals` | `signals.read` | same |
use std::sync::Arc;

use super::RunState;
use crate::plugin::capability::Capability;
use crate::plugin::types::{RoleError, RunRecord, Signal, SignalQuery};

/// Most items one call returns, whatever the plugin asks.
pub const MAX_ITEMS: u32 = 1000;

/// Where a run's signals come from (the store and the forge of its repository).
#[async_trait::async_trait]
pub trait SignalSource: Send + Sync {
    /// Earlier runs matching `query`, newest first.
    async fn recent_runs(&self, query: &SignalQuery) -> Result<Vec<RunRecord>, String>;
    /// Signals matching `query`, newest first.
    async fn signals(&self, query: &SignalQuery) -> Result<Vec<Signal>, String>;
}

/// Per-run state of the signals interface.
#[derive(Default)]
pub struct SignalsCtx {
    /// The run's source of signals; `None` answers `unavailable`.
    pub source: Option<Arc<dyn SignalSource>>,
}

impl RunState {
    fn signal_query(
        &self,
        what: &str,
        mut query: SignalQuery,
    ) -> Result<(Arc<dyn SignalSource>, SignalQuery), RoleError> {
        self.require(Capability::SignalsRead, format_args!("{what}"))?;
        if !crate::config::is_role_name(&query.role) {
            return Err(RoleError::InvalidArgument(format!(
                "{what}: role {:?} must be 1-64 of [a-z0-9-]",
                query.role.chars().take(80).collect::<String>()
            )));
        }
        query.limit = query.limit.clamp(1, MAX_ITEMS);
        let source = self.signals.source.clone().ok_or_else(|| {
            RoleError::Unavailable(format!("{what}: this run has no history attached"))
        })?;
        Ok((source, query))
    }

    /// `signals.recent-runs`.
    pub(crate) async fn recent_runs(
        &mut self,
        query: SignalQuery,
    ) -> Result<Vec<RunRecord>, RoleError> {
        let (source, query) = self.signal_query("signals.recent-runs", query)?;
        let mut runs = source
            .recent_runs(&query)
            .await
            .map_err(|e| RoleError::Unavailable(format!("signals.recent-runs: {e}")))?;
        runs.truncate(query.limit as usize);
        for r in &mut runs {
            r.summary = self.redact(std::mem::take(&mut r.summary));
        }
        Ok(runs)
    }

    /// `signals.list-signals`.
    pub(crate) async fn read_signals(
        &mut self,
        query: SignalQuery,
    ) -> Result<Vec<Signal>, RoleError> {
        let (source, query) = self.signal_query("signals.list-signals", query)?;
        let mut signals = source
            .signals(&query)
            .await
            .map_err(|e| RoleError::Unavailable(format!("signals.list-signals: {e}")))?;
        signals.truncate(query.limit as usize);
        for s in &mut signals {
            s.evidence = self.redact(std::mem::take(&mut s.evidence));
        }
        Ok(signals)
    }
}
