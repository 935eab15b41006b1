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
    /// Every signal handed to the plugin so far: what an improve run's
    /// pull request may cite ([`crate::improve::check_pull_request`]).
    pub served: Vec<Signal>,
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
        self.signals.served.extend(signals.iter().cloned());
        Ok(signals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imports::RunContext;
    use crate::plugin::CapabilitySet;
    use crate::plugin::limits::PluginLimits;
    use crate::plugin::types::SignalKind;
    use crate::session::MemoryEvents;

    /// A history whose evidence quotes a token someone pasted in a comment.
    struct Leaky;

    #[async_trait::async_trait]
    impl SignalSource for Leaky {
        async fn recent_runs(&self, _: &SignalQuery) -> Result<Vec<RunRecord>, String> {
            Ok(Vec::new())
        }
        async fn signals(&self, _: &SignalQuery) -> Result<Vec<Signal>, String> {
            Ok(vec![Signal {
                kind: SignalKind::ReviewReply,
                run_id: None,
                number: Some(3),
                author: "maintainer".into(),
                trusted: true,
                evidence: "wrong severity; use ghp_0123456789abcdefghijklmnopqrstuvwxyzAB".into(),
                at: String::new(),
            }])
        }
    }

    fn state(caps: &[&str], source: Option<Arc<dyn SignalSource>>) -> RunState {
        let mut ctx = RunContext::new(Arc::new(MemoryEvents::new()));
        ctx.signals = source;
        let caps = CapabilitySet::parse(caps).expect("caps");
        RunState::new("test", "improve", caps, PluginLimits::default(), ctx)
    }

    fn query(role: &str) -> SignalQuery {
        SignalQuery {
            role: role.into(),
            since_hours: 24,
            limit: 10,
        }
    }

    #[tokio::test]
    async fn signals_reach_the_plugin_redacted_and_only_with_the_capability() {
        let mut s = state(&["signals.read"], Some(Arc::new(Leaky)));
        let got = s.read_signals(query("review")).await.expect("signals");
        assert_eq!(got.len(), 1);
        assert!(
            !got[0].evidence.contains("ghp_0123456789")
                && got[0].evidence.starts_with("wrong severity"),
            "evidence must be redacted before a plugin (and its model) reads it: {}",
            got[0].evidence
        );
        let err = s.read_signals(query("../etc")).await.unwrap_err();
        assert!(matches!(err, RoleError::InvalidArgument(_)), "{err:?}");
        let mut denied = state(&[], Some(Arc::new(Leaky)));
        let err = denied.read_signals(query("review")).await.unwrap_err();
        assert!(matches!(err, RoleError::NotPermitted(m) if m.contains("signals.read")));
        let mut none = state(&["signals.read"], None);
        let err = none.recent_runs(query("review")).await.unwrap_err();
        assert!(matches!(err, RoleError::Unavailable(_)), "{err:?}");
    }
}
