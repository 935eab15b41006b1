//! Collecting a repository's history for the `signals` interface: its
//! earlier runs from the store, and the signals the store's event logs hold
//! (effects the gate denied or held, runs that ended blocked or out of
//! budget), and, when the run has its forge, the corrections people made
//! there ([`forge`]: labels changed after triage, `needs-info` bypassed).
use std::sync::Arc;

pub mod forge;

use crate::config::Role;
use crate::forge::RepoRef;
use crate::imports::signals::SignalSource;
use crate::plugin::types::{RunRecord, Signal, SignalKind, SignalQuery};
use crate::store::{RunFilter, RunState, RunStore};

/// Most runs whose event logs one `signals.list-signals` call reads (all
/// that one `list_runs` gives).
const MAX_RUNS_READ: usize = 1000;
/// Most events read from one run's log.
const MAX_EVENTS_PER_RUN: usize = 5_000;

/// The signals of one repository, read from the run store.
pub struct StoreSignals {
    store: Arc<dyn RunStore>,
    repo: RepoRef,
    forge: Option<forge::ForgeSignals>,
}

impl StoreSignals {
    /// The history of `repo` in `store`.
    pub fn new(store: Arc<dyn RunStore>, repo: RepoRef) -> Self {
        StoreSignals {
            store,
            repo,
            forge: None,
        }
    }

    /// Also the corrections people made on `forge` (the repository's own).
    pub fn with_forge(mut self, forge: Arc<dyn crate::forge::Forge>) -> Self {
        self.forge = Some(forge::ForgeSignals::new(
            self.store.clone(),
            forge,
            self.repo.clone(),
        ));
        self
    }

    async fn runs(
        &self,
        query: &SignalQuery,
        limit: usize,
    ) -> Result<Vec<crate::store::Run>, String> {
        let role: Role = query.role.parse()?;
        let since = now_ms() - i64::from(query.since_hours) * 3_600_000;
        let runs = self
            .store
            .list_runs(RunFilter {
                repo: Some(self.repo.clone()),
                role: Some(role),
                limit: Some(limit.min(1000)),
                ..RunFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok(runs.into_iter().filter(|r| r.created_ms >= since).collect())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 in UTC (`2026-12-07T01:02:03Z`).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl SignalSource for StoreSignals {
    async fn recent_runs(&self, query: &SignalQuery) -> Result<Vec<RunRecord>, String> {
        let runs = self.runs(query, query.limit as usize).await?;
        Ok(runs
            .into_iter()
            .map(|r| RunRecord {
                run_id: r.id.to_string(),
                role: r.role.to_string(),
                number: Some(r.number),
                state: r.state.as_str().to_string(),
                summary: r.reason.unwrap_or_default(),
                queued_at: rfc3339(r.created_ms),
            })
            .collect())
    }

    async fn signals(&self, query: &SignalQuery) -> Result<Vec<Signal>, String> {
        let mut out = Vec::new();
        for run in self.runs(query, MAX_RUNS_READ).await? {
            let run_id = run.id.to_string();
            let signal = |kind, evidence: String, at_ms| Signal {
                kind,
                run_id: Some(run_id.clone()),
                number: Some(run.number),
                author: "kiln".to_string(),
                trusted: true,
                evidence,
                at: rfc3339(at_ms),
            };
            match (run.state, run.reason.as_deref()) {
                (RunState::Blocked, reason) => out.push(signal(
                    SignalKind::RunBlocked,
                    reason.unwrap_or_default().to_string(),
                    run.updated_ms,
                )),
                (RunState::Failed, Some(reason)) if reason.contains("budget") => out.push(signal(
                    SignalKind::BudgetExhausted,
                    reason.to_string(),
                    run.updated_ms,
                )),
                _ => {}
            }
            let events = self
                .store
                .events_after(run.id, 0, MAX_EVENTS_PER_RUN)
                .await
                .map_err(|e| e.to_string())?;
            for e in events {
                let verdict = e.kind.get("verdict").and_then(|v| v.as_str());
                let kind = match (e.type_name(), verdict) {
                    ("policy", Some("deny")) | ("denied", _) => SignalKind::EffectDenied,
                    ("policy", Some("hold")) => SignalKind::EffectHeld,
                    _ => continue,
                };
                out.push(signal(kind, e.message.clone(), e.at_ms));
            }
        }
        if let Some(forge) = &self.forge {
            let role: Role = query.role.parse()?;
            let since = now_ms() - i64::from(query.since_hours) * 3_600_000;
            match forge.signals(role, since).await {
                Ok(found) => out.extend(found),
                // The store's half still stands; the run's log says why the
                // forge's is missing.
                Err(e) => {
                    tracing::warn!(repo = %self.repo, error = %e, "signals: cannot read the forge")
                }
            }
        }
        out.reverse();
        out.sort_by(|a, b| b.at.cmp(&a.at));
        out.truncate(query.limit as usize);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Trust;
    use crate::session::EventKind;
    use crate::store::{NewRun, SqliteOptions, SqliteStore, Trigger, TriggerKind};

    fn new_run(repo: &RepoRef, role: Role, number: u64) -> NewRun {
        NewRun {
            script: None,
            repo: repo.clone(),
            role,
            number,
            trigger: Trigger {
                kind: TriggerKind::Manual,
                actor: "alice".into(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        }
    }

    #[tokio::test]
    async fn a_repositorys_history_gives_its_runs_and_what_the_gate_and_the_runs_said() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store"),
        );
        let repo = RepoRef::parse("local/app").expect("repo");
        let other = RepoRef::parse("local/other").expect("repo");
        let blocked = store
            .enqueue_run(new_run(&repo, Role::Triage, 1))
            .await
            .expect("enqueue");
        let denied = store
            .enqueue_run(new_run(&repo, Role::Triage, 2))
            .await
            .expect("enqueue");
        // Not this repository, and not this role: never part of the answer.
        store
            .enqueue_run(new_run(&other, Role::Triage, 1))
            .await
            .expect("enqueue");
        store
            .enqueue_run(new_run(&repo, Role::Spec, 1))
            .await
            .expect("enqueue");
        for (id, end, reason) in [
            (blocked, RunState::Blocked, "the issue names no version"),
            (denied, RunState::Succeeded, "labelled"),
        ] {
            store
                .transition(id, RunState::Queued, RunState::Preparing, None)
                .await
                .expect("preparing");
            store
                .transition(id, RunState::Preparing, RunState::Running, None)
                .await
                .expect("running");
            store
                .transition(id, RunState::Running, end, Some(reason.into()))
                .await
                .expect("end");
        }
        store
            .append_event(
                denied,
                &EventKind::Policy {
                    action: "forge.set-labels".into(),
                    verdict: "deny".into(),
                },
                "ready-to-spec is a human-only label",
            )
            .await
            .expect("event");
        store
            .append_event(denied, &EventKind::Note, "chose the bug label")
            .await
            .expect("event");
        store.flush().await.expect("flush");

        let signals = StoreSignals::new(store, repo);
        let query = SignalQuery {
            role: "triage".into(),
            since_hours: 24,
            limit: 100,
        };
        let runs = signals.recent_runs(&query).await.expect("runs");
        assert_eq!(
            runs.iter()
                .map(|r| (r.run_id.as_str(), r.state.as_str(), r.summary.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (denied.to_string().as_str(), "succeeded", "labelled"),
                (
                    blocked.to_string().as_str(),
                    "blocked",
                    "the issue names no version"
                ),
            ],
            "this repository's triage runs, newest first"
        );
        assert!(runs.iter().all(|r| r.queued_at.ends_with('Z')), "{runs:?}");
        let found = signals.signals(&query).await.expect("signals");
        let kinds: Vec<_> = found
            .iter()
            .map(|s| (s.kind, s.evidence.as_str()))
            .collect();
        assert!(
            kinds.contains(&(SignalKind::RunBlocked, "the issue names no version")),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&(
                SignalKind::EffectDenied,
                "ready-to-spec is a human-only label"
            )),
            "{kinds:?}"
        );
        assert_eq!(found.len(), 2, "a note is not a signal: {kinds:?}");
        // A role name that is not a role is an error, not an empty answer.
        let bad = SignalQuery {
            role: "no such role!".into(),
            ..query
        };
        assert!(signals.signals(&bad).await.is_err());
    }
}
