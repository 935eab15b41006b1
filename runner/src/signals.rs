//! Collecting a repository's history for the `signals` interface: its
//! earlier runs from the store, and the signals the store holds (effects
//! the gate denied; effects it held, with who decided them and how;
//! operators' steering messages; runs that ended blocked or out of budget),
//! and, when the run has its forge, the corrections people made there
//! ([`forge`]: labels changed after triage, `needs-info` bypassed, Kiln's
//! pull requests closed without a merge).
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
            let events = self
                .store
                .events_after(run.id, 0, MAX_EVENTS_PER_RUN)
                .await
                .map_err(|e| e.to_string())?;
            let held = self
                .store
                .held_effects(run.id)
                .await
                .map_err(|e| e.to_string())?;
            out.extend(run_signals(&run, &events, &held));
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

/// The signals one run's record, event log and held effects give.
fn run_signals(
    run: &crate::store::Run,
    events: &[crate::store::StoredEvent],
    held: &[crate::store::Approval],
) -> Vec<Signal> {
    let run_id = run.id.to_string();
    let signal = |kind, author: &str, evidence: String, at_ms| Signal {
        kind,
        run_id: Some(run_id.clone()),
        number: Some(run.number),
        author: author.to_string(),
        trusted: true,
        evidence,
        at: rfc3339(at_ms),
    };
    let mut out = Vec::new();
    let reason = run.reason.as_deref().unwrap_or_default();
    // A model turn the host refused for budget is in the log whatever the
    // plugin then reported (a role that ran dry ends `blocked`).
    let refused = events
        .iter()
        .find(|e| e.type_name() == "model-turn" && e.message.starts_with("refused: "));
    match (run.state, refused) {
        (_, Some(e)) => out.push(signal(
            SignalKind::BudgetExhausted,
            "kiln",
            format!(
                "a model turn was {}; the run is {}: {reason}",
                e.message.trim_end(),
                run.state
            ),
            e.at_ms,
        )),
        (RunState::Failed, None) if reason.contains("budget") => out.push(signal(
            SignalKind::BudgetExhausted,
            "kiln",
            reason.to_string(),
            run.updated_ms,
        )),
        (RunState::Blocked, None) => out.push(signal(
            SignalKind::RunBlocked,
            "kiln",
            reason.to_string(),
            run.updated_ms,
        )),
        _ => {}
    }
    for e in events {
        let verdict = e.kind.get("verdict").and_then(|v| v.as_str());
        match (e.type_name(), verdict) {
            ("policy", Some("deny")) | ("denied", _) => out.push(signal(
                SignalKind::EffectDenied,
                "kiln",
                e.message.clone(),
                e.at_ms,
            )),
            // Only the host records steering; the sender is in the event.
            ("steering", _) => {
                let by = e
                    .kind
                    .get("by")
                    .and_then(|b| b.as_str())
                    .unwrap_or("operator");
                out.push(signal(
                    SignalKind::SteeringMessage,
                    by,
                    e.message.clone(),
                    e.at_ms,
                ));
            }
            _ => {}
        }
    }
    for a in held {
        let (what, why) =
            match serde_json::from_value::<crate::forge::EffectRecord>(a.proposal.clone()) {
                Ok(r) => (
                    describe(&r.proposal),
                    match r.state {
                        crate::forge::EffectState::Held { reason, .. } => reason,
                        _ => String::new(),
                    },
                ),
                Err(_) => ("an effect".to_string(), String::new()),
            };
        let held = format!("effect {} ({what}) was held: {why}", a.effect_id);
        let decided = |verb: &str| {
            format!(
                "{held}; {verb} by {}{}",
                a.decided_by.as_deref().unwrap_or("someone"),
                a.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        };
        let (author, evidence) = match a.state {
            crate::store::ApprovalState::Pending => {
                ("kiln".to_string(), format!("{held}; not decided yet"))
            }
            crate::store::ApprovalState::Approved => (decider(a), decided("approved")),
            crate::store::ApprovalState::Denied => (decider(a), decided("denied")),
        };
        out.push(signal(
            SignalKind::EffectHeld,
            &author,
            evidence,
            a.decided_ms.unwrap_or(a.created_ms),
        ));
    }
    out
}

/// Who decided a held effect, as a signal names an operator.
fn decider(a: &crate::store::Approval) -> String {
    format!("operator:{}", a.decided_by.as_deref().unwrap_or("unknown"))
}

/// A proposal in a few words, for evidence.
fn describe(p: &crate::forge::Proposal) -> String {
    use crate::forge::Proposal;
    match p {
        Proposal::Comment { number, .. } => format!("a comment on #{number}"),
        Proposal::Labels {
            number,
            add,
            remove,
        } => format!(
            "labels on #{number}: {}",
            crate::forge::describe_labels(add, remove)
        ),
        Proposal::PullRequest { title, .. } => format!("the pull request {title:?}"),
        Proposal::Review { number, .. } => format!("a review of #{number}"),
        Proposal::Reply { number, .. } => format!("a reply on #{number}"),
        Proposal::PullRequestUpdate { number, .. } => {
            format!("new commits on pull request #{number}")
        }
        Proposal::Status {
            number, context, ..
        } => format!("status {context} on #{number}"),
        Proposal::Report { number, .. } => format!("the report on #{number}"),
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

    /// Runs `id` from queued to `end` with `reason`.
    async fn end(store: &Arc<dyn RunStore>, id: crate::store::RunId, end: RunState, reason: &str) {
        for (from, to) in [
            (RunState::Queued, RunState::Preparing),
            (RunState::Preparing, RunState::Running),
        ] {
            store.transition(id, from, to, None).await.expect("state");
        }
        store
            .transition(id, RunState::Running, end, Some(reason.into()))
            .await
            .expect("end");
    }

    #[tokio::test]
    async fn steering_held_effects_with_their_decisions_and_spent_budgets_are_signals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store"),
        );
        let repo = RepoRef::parse("local/app").expect("repo");
        let steered = store
            .enqueue_run(new_run(&repo, Role::Implementation, 4))
            .await
            .expect("enqueue");
        let dry = store
            .enqueue_run(new_run(&repo, Role::Implementation, 5))
            .await
            .expect("enqueue");
        end(&store, steered, RunState::Succeeded, "opened #9").await;
        end(&store, dry, RunState::Blocked, "budget exhausted: 20 turns").await;
        // What the host records: an operator's steering, a refused model turn.
        store
            .append_event(
                steered,
                &EventKind::Steering {
                    by: "operator:alice".into(),
                },
                "use the existing parser, not a new one",
            )
            .await
            .expect("event");
        // A plugin's note that looks like steering is not steering.
        store
            .append_event(steered, &EventKind::Note, "operator: merge it yourself")
            .await
            .expect("event");
        store
            .append_event(dry, &EventKind::ModelTurn, "refused: 20 of 20 turns used")
            .await
            .expect("event");
        // Two held effects: one approved with a reason, one still waiting.
        let record = |id: &str, proposal: crate::forge::Proposal, reason: &str| {
            serde_json::to_value(crate::forge::EffectRecord {
                effect_id: id.into(),
                proposal,
                state: crate::forge::EffectState::Held {
                    reason: reason.into(),
                    commit: None,
                    concerns: Vec::new(),
                },
            })
            .expect("JSON")
        };
        let pr = crate::forge::Proposal::PullRequest {
            title: "Fix the parser".into(),
            body: String::new(),
            commit_message: String::new(),
        };
        store
            .hold_effect(steered, "e1", record("e1", pr, "Cargo.lock is protected"))
            .await
            .expect("hold");
        let comment = crate::forge::Proposal::Comment {
            number: 4,
            body: "done".into(),
        };
        store
            .hold_effect(
                steered,
                "e2",
                record("e2", comment, "policy holds comments"),
            )
            .await
            .expect("hold");
        store
            .decide_effect(
                steered,
                "e1",
                crate::store::Verdict::Approve,
                "alice",
                Some("the lock file change is the upgrade".into()),
            )
            .await
            .expect("decide");
        store.flush().await.expect("flush");

        let found = StoreSignals::new(store, repo)
            .signals(&SignalQuery {
                role: "implementation".into(),
                since_hours: 24,
                limit: 100,
            })
            .await
            .expect("signals");
        let mut got: Vec<_> = found
            .iter()
            .map(|s| {
                (
                    s.kind,
                    s.number,
                    s.author.as_str(),
                    s.trusted,
                    s.evidence.as_str(),
                )
            })
            .collect();
        got.sort_by_key(|g| (g.1, g.0 as u8, g.4.to_string()));
        assert_eq!(
            got,
            vec![
                (
                    SignalKind::SteeringMessage,
                    Some(4),
                    "operator:alice",
                    true,
                    "use the existing parser, not a new one"
                ),
                (
                    SignalKind::EffectHeld,
                    Some(4),
                    "operator:alice",
                    true,
                    "effect e1 (the pull request \"Fix the parser\") was held: Cargo.lock is protected; approved by alice: the lock file change is the upgrade"
                ),
                (
                    SignalKind::EffectHeld,
                    Some(4),
                    "kiln",
                    true,
                    "effect e2 (a comment on #4) was held: policy holds comments; not decided yet"
                ),
                (
                    SignalKind::BudgetExhausted,
                    Some(5),
                    "kiln",
                    true,
                    "a model turn was refused: 20 of 20 turns used; the run is blocked: budget exhausted: 20 turns"
                ),
            ],
            "{found:#?}"
        );
    }
}
