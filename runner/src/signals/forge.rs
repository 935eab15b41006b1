//! Signals read from the forge: what people did after a role's runs. For
//! triage, the labels a maintainer added or removed on an issue after Kiln
//! triaged it, and `needs-info` issues a maintainer moved on without the
//! reporter answering; for spec and implementation, Kiln's pull requests
//! someone closed without merging. Each signal names the run, the issue or
//! pull request, who acted and
//! whether they are trusted; what they wrote is quoted as evidence (the
//! plugin's model sees it inside the same untrusted-text envelopes as any
//! forge text), never followed.
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Role;
use crate::forge::{Forge, LabelEvent, RepoRef, StateFilter};
use crate::plugin::types::{Signal, SignalKind};
use crate::store::{Run, RunFilter, RunState, RunStore};

/// Most triage runs whose issues one collection reads from the forge.
const MAX_ISSUES: usize = 200;

/// The label Kiln's triage asks reporters for more with.
const NEEDS_INFO: &str = "needs-info";

/// The forge side of a repository's history.
pub struct ForgeSignals {
    store: Arc<dyn RunStore>,
    forge: Arc<dyn Forge>,
    repo: RepoRef,
}

impl ForgeSignals {
    /// The corrections people made on `forge` to `repo`'s runs in `store`.
    pub fn new(store: Arc<dyn RunStore>, forge: Arc<dyn Forge>, repo: RepoRef) -> Self {
        ForgeSignals { store, forge, repo }
    }

    /// The signals about `role`'s runs queued since `since_ms`, newest first.
    /// Roles whose corrections are not read from the forge yet give none.
    pub async fn signals(&self, role: Role, since_ms: i64) -> Result<Vec<Signal>, String> {
        match role {
            Role::Triage => self.triage(since_ms).await,
            Role::Spec | Role::Implementation => self.closed_unmerged(role, since_ms).await,
            _ => Ok(Vec::new()),
        }
    }

    /// Whether `login` may act on the repository (write or more), asked once.
    async fn trusted(&self, login: &str, cache: &mut BTreeMap<String, bool>) -> bool {
        if let Some(t) = cache.get(login) {
            return *t;
        }
        let t = !login.ends_with("[bot]")
            && self
                .forge
                .permission(login)
                .await
                .map(|p| p.may_trigger())
                .unwrap_or(false);
        cache.insert(login.to_string(), t);
        t
    }

    /// Pull requests of `role`'s runs (found by the run's branch) that
    /// someone closed without merging, with the closer's last comment.
    async fn closed_unmerged(&self, role: Role, since_ms: i64) -> Result<Vec<Signal>, String> {
        let runs = self
            .store
            .list_runs(RunFilter {
                repo: Some(self.repo.clone()),
                role: Some(role),
                limit: Some(1000),
                ..RunFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // The latest run of each branch (runs come newest first).
        let mut by_branch: BTreeMap<String, Run> = BTreeMap::new();
        for run in runs.into_iter().filter(|r| r.created_ms >= since_ms) {
            if let Some(branch) = run.branch.clone() {
                by_branch.entry(branch).or_insert(run);
            }
        }
        if by_branch.is_empty() {
            return Ok(Vec::new());
        }
        let closed = self
            .forge
            .list_pull_requests(StateFilter::Closed)
            .await
            .map_err(|e| e.to_string())?;
        let mut trust = BTreeMap::new();
        let mut out = Vec::new();
        for pr in closed
            .iter()
            .filter(|p| by_branch.contains_key(&p.head_branch))
            .take(MAX_ISSUES)
        {
            let number = pr.issue.number;
            let events = self
                .forge
                .state_events(number)
                .await
                .map_err(|e| format!("#{number}: {e}"))?;
            let Some(closing) = crate::forge::closed_unmerged(&events) else {
                continue;
            };
            let Some(run) = by_branch.get(&pr.head_branch) else {
                continue;
            };
            let trusted = self.trusted(&closing.actor, &mut trust).await;
            let full = self
                .forge
                .get_pull_request(number)
                .await
                .map_err(|e| format!("#{number}: {e}"))?;
            let said = full
                .issue
                .comments
                .iter()
                .rev()
                .find(|c| c.author == closing.actor && !crate::forge::is_bookkeeping(&c.body))
                .map(|c| format!("; their last comment: {}", c.body.trim()))
                .unwrap_or_default();
            out.push(Signal {
                kind: SignalKind::PullRequestClosedUnmerged,
                run_id: Some(run.id.to_string()),
                number: Some(number),
                author: closing.actor.clone(),
                trusted,
                evidence: format!(
                    "Kiln's {role} pull request #{number} {:?} (run {}, branch {}, for #{}) was closed without being merged by {}{said}",
                    pr.issue.title, run.id, pr.head_branch, run.number, closing.actor
                ),
                at: super::rfc3339(closing.at_ms),
            });
        }
        out.sort_by(|a, b| b.at.cmp(&a.at));
        Ok(out)
    }

    /// Label corrections and bypassed `needs-info` on triaged issues.
    async fn triage(&self, since_ms: i64) -> Result<Vec<Signal>, String> {
        let runs = self
            .store
            .list_runs(RunFilter {
                repo: Some(self.repo.clone()),
                role: Some(Role::Triage),
                states: vec![RunState::Succeeded],
                limit: Some(1000),
                ..RunFilter::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        // The latest finished triage of each issue (runs come newest first).
        let mut latest: BTreeMap<u64, Run> = BTreeMap::new();
        for run in runs.into_iter().filter(|r| r.created_ms >= since_ms) {
            if latest.len() >= MAX_ISSUES {
                break;
            }
            latest.entry(run.number).or_insert(run);
        }
        if latest.is_empty() {
            return Ok(Vec::new());
        }
        let own = self.forge.own_login().await.map_err(|e| e.to_string())?;
        let mut trust = BTreeMap::new();
        let mut out = Vec::new();
        for (number, run) in latest {
            let events = self
                .forge
                .label_events(number)
                .await
                .map_err(|e| format!("#{number}: {e}"))?;
            let kiln_set: Vec<&LabelEvent> = events
                .iter()
                .filter(|e| e.actor == own && e.added && e.at_ms <= run.updated_ms)
                .collect();
            // Changes by anyone but Kiln after the run ended, per person
            // (GitHub gives event times to the second).
            let ended = run.updated_ms - run.updated_ms.rem_euclid(1000);
            let mut by_actor: BTreeMap<&str, Vec<&LabelEvent>> = BTreeMap::new();
            for e in events.iter().filter(|e| e.actor != own && e.at_ms >= ended) {
                by_actor.entry(e.actor.as_str()).or_default().push(e);
            }
            if by_actor.is_empty() {
                continue;
            }
            let issue = self
                .forge
                .get_issue(number)
                .await
                .map_err(|e| format!("#{number}: {e}"))?;
            for (actor, changes) in by_actor {
                let trusted = self.trusted(actor, &mut trust).await;
                let at_ms = changes.iter().map(|e| e.at_ms).max().unwrap_or_default();
                let signal = |kind, evidence: String| Signal {
                    kind,
                    run_id: Some(run.id.to_string()),
                    number: Some(number),
                    author: actor.to_string(),
                    trusted,
                    evidence,
                    at: super::rfc3339(at_ms),
                };
                out.push(signal(
                    SignalKind::LabelCorrected,
                    label_evidence(&run, number, &kiln_set, actor, &changes),
                ));
                let removed_needs_info = changes.iter().any(|e| !e.added && e.label == NEEDS_INFO)
                    && kiln_set.iter().any(|e| e.label == NEEDS_INFO);
                if removed_needs_info && actor != issue.author && !reporter_answered(&issue, &own) {
                    out.push(signal(
                        SignalKind::NeedsInfoBypassed,
                        format!(
                            "Kiln's triage (run {}) asked for more information on #{number} \
                             (`{NEEDS_INFO}`); {actor} removed `{NEEDS_INFO}` without the \
                             reporter ({}) answering",
                            run.id, issue.author
                        ),
                    ));
                }
            }
        }
        out.sort_by(|a, b| b.at.cmp(&a.at));
        Ok(out)
    }
}

/// What Kiln set and what the person changed, in one line.
fn label_evidence(
    run: &Run,
    number: u64,
    kiln_set: &[&LabelEvent],
    actor: &str,
    changes: &[&LabelEvent],
) -> String {
    let list = |events: &mut dyn Iterator<Item = &&LabelEvent>| {
        let names: Vec<String> = events.map(|e| format!("`{}`", e.label)).collect();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    format!(
        "Kiln's triage (run {}) labelled #{number} {}; afterwards {actor} added {} and removed {}",
        run.id,
        list(&mut kiln_set.iter()),
        list(&mut changes.iter().filter(|e| e.added)),
        list(&mut changes.iter().filter(|e| !e.added)),
    )
}

/// Whether the reporter wrote after Kiln's last comment on the issue.
fn reporter_answered(issue: &crate::forge::Issue, own: &str) -> bool {
    let last_kiln = issue.comments.iter().rposition(|c| c.author == own);
    issue
        .comments
        .iter()
        .enumerate()
        .any(|(i, c)| c.author == issue.author && last_kiln.is_none_or(|k| i > k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::local::LocalForge;
    use crate::forge::{NewIssue, Permission};
    use crate::policy::Trust;
    use crate::store::{NewRun, SqliteOptions, SqliteStore, Trigger, TriggerKind};

    async fn triaged(
        store: &Arc<dyn RunStore>,
        repo: &RepoRef,
        number: u64,
    ) -> crate::store::RunId {
        let id = store
            .enqueue_run(NewRun {
                script: None,
                repo: repo.clone(),
                role: Role::Triage,
                number,
                trigger: Trigger {
                    kind: TriggerKind::IssueOpened,
                    actor: "bob".into(),
                    actor_trust: Trust::Untrusted,
                    delivery: None,
                    instructions: None,
                },
            })
            .await
            .expect("enqueue");
        for (from, to) in [
            (RunState::Queued, RunState::Preparing),
            (RunState::Preparing, RunState::Running),
        ] {
            store.transition(id, from, to, None).await.expect("state");
        }
        id
    }

    #[tokio::test]
    async fn maintainers_relabelling_after_triage_are_signals_with_their_evidence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = RepoRef::parse("local/app").expect("repo");
        let kiln = LocalForge::create(dir.path(), repo.clone(), "alice", None)
            .await
            .expect("forge");
        let alice = kiln.acting_as("alice");
        let bob = kiln.acting_as("bob");
        kiln.set_permission("bob", Permission::Read)
            .await
            .expect("permission");
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store"),
        );
        let mut runs = Vec::new();
        for (n, kiln_labels) in [
            (1, vec!["question"]),
            (2, vec!["question", NEEDS_INFO]),
            (3, vec!["question"]),
        ] {
            let number = bob
                .create_issue(NewIssue {
                    title: format!("issue {n}"),
                    body: "it crashes".into(),
                    labels: Vec::new(),
                })
                .await
                .expect("issue");
            let run = triaged(&store, &repo, number).await;
            let labels: Vec<String> = kiln_labels.iter().map(|l| l.to_string()).collect();
            kiln.add_labels(number, &labels).await.expect("kiln labels");
            store
                .transition(run, RunState::Running, RunState::Succeeded, None)
                .await
                .expect("done");
            runs.push((number, run));
        }
        // Two issues relabelled the same way; the third differently; the
        // reporter (untrusted) also touches the first.
        for (number, _) in &runs[..2] {
            alice
                .remove_label(*number, "question")
                .await
                .expect("remove");
            alice
                .add_labels(*number, &["bug".to_string()])
                .await
                .expect("add");
        }
        alice
            .remove_label(runs[1].0, NEEDS_INFO)
            .await
            .expect("remove");
        alice
            .add_labels(runs[2].0, &["docs".to_string()])
            .await
            .expect("add");
        bob.add_labels(runs[0].0, &["urgent".to_string()])
            .await
            .expect("add");

        let signals = ForgeSignals::new(store, Arc::new(kiln), repo)
            .signals(Role::Triage, 0)
            .await
            .expect("signals");
        let mut found: Vec<_> = signals
            .iter()
            .map(|s| (s.kind, s.number, s.author.as_str(), s.trusted))
            .collect();
        found.sort_by_key(|f| (f.1, f.2.to_string(), f.0 as u8));
        assert_eq!(
            found,
            vec![
                (SignalKind::LabelCorrected, Some(1), "alice", true),
                (SignalKind::LabelCorrected, Some(1), "bob", false),
                (SignalKind::LabelCorrected, Some(2), "alice", true),
                (SignalKind::NeedsInfoBypassed, Some(2), "alice", true),
                (SignalKind::LabelCorrected, Some(3), "alice", true),
            ],
            "{signals:#?}"
        );
        let evidence = |n: u64, who: &str| {
            signals
                .iter()
                .find(|s| {
                    s.kind == SignalKind::LabelCorrected && s.number == Some(n) && s.author == who
                })
                .map(|s| (s.evidence.clone(), s.run_id.clone()))
                .expect("signal")
        };
        let (text, run) = evidence(1, "alice");
        assert_eq!(run, Some(runs[0].1.to_string()));
        assert_eq!(
            text,
            format!(
                "Kiln's triage (run {}) labelled #1 `question`; afterwards alice added `bug` and removed `question`",
                runs[0].1
            )
        );
        let (text, _) = evidence(3, "alice");
        assert!(
            text.ends_with("alice added `docs` and removed nothing"),
            "{text}"
        );
        // A role whose corrections the forge does not give yet: none, no error.
        let none = ForgeSignals::new(
            Arc::new(
                SqliteStore::open(dir.path().join("other.db"), SqliteOptions::default())
                    .await
                    .expect("store"),
            ),
            Arc::new(alice),
            RepoRef::parse("local/app").expect("repo"),
        )
        .signals(Role::Review, 0)
        .await
        .expect("signals");
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn kilns_pull_requests_closed_without_a_merge_are_signals_with_the_closers_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("README.md"), "# app\n").expect("write");
        let repo = RepoRef::parse("local/app").expect("repo");
        let kiln = LocalForge::create(&dir.path().join("forge"), repo.clone(), "alice", Some(&src))
            .await
            .expect("forge");
        let alice = kiln.acting_as("alice");
        let store: Arc<dyn RunStore> = Arc::new(
            SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store"),
        );
        let remote = kiln.git_remote().await.expect("remote");
        // Three implementation runs, each with its branch and pull request:
        // one closed unmerged (with a word from the maintainer), one merged,
        // one closed and reopened.
        let mut prs = Vec::new();
        for issue in [1u64, 2, 3] {
            let branch = format!("kiln/implement-issue-{issue}");
            let out = std::process::Command::new("git")
                .args(["--git-dir", &remote.url, "branch", &branch, "main"])
                .output()
                .expect("git");
            assert!(out.status.success(), "{out:?}");
            let id = store
                .enqueue_run(NewRun {
                    script: None,
                    repo: repo.clone(),
                    role: Role::Implementation,
                    number: issue,
                    trigger: Trigger {
                        kind: TriggerKind::Manual,
                        actor: "alice".into(),
                        actor_trust: Trust::Trusted,
                        delivery: None,
                        instructions: None,
                    },
                })
                .await
                .expect("enqueue");
            store.set_branch(id, branch.clone()).await.expect("branch");
            let pr = kiln
                .create_draft_pull_request(crate::forge::NewPullRequest {
                    title: format!("Fix #{issue}"),
                    body: String::new(),
                    head: branch,
                    base: "main".into(),
                })
                .await
                .expect("pull request");
            prs.push((id, pr));
        }
        alice
            .comment(prs[0].1, "Wrong approach: this belongs in the parser.")
            .await
            .expect("comment");
        alice.close(prs[0].1).await.expect("close");
        alice.merge(prs[1].1).await.expect("merge");
        alice.close(prs[2].1).await.expect("close");
        alice.reopen(prs[2].1).await.expect("reopen");

        let signals = ForgeSignals::new(store, Arc::new(kiln), repo)
            .signals(Role::Implementation, 0)
            .await
            .expect("signals");
        assert_eq!(signals.len(), 1, "{signals:#?}");
        let s = &signals[0];
        assert_eq!(
            (s.kind, s.number, s.author.as_str(), s.trusted),
            (
                SignalKind::PullRequestClosedUnmerged,
                Some(prs[0].1),
                "alice",
                true
            )
        );
        assert_eq!(s.run_id, Some(prs[0].0.to_string()));
        assert_eq!(
            s.evidence,
            format!(
                "Kiln's implementation pull request #{} \"Fix #1\" (run {}, branch kiln/implement-issue-1, for #1) was closed without being merged by alice; their last comment: Wrong approach: this belongs in the parser.",
                prs[0].1, prs[0].0
            )
        );
    }
}
