//! `kiln:role/forge`: forge reads tagged with trust, and proposals that the
//! policy gate decides and the host applies with its own credentials.
//!
//! | WIT function            | capability                   | policy effect |
//! |-------------------------|------------------------------|---------------|
//! | `get-issue`             | `forge.read`                 | — (reads come from the run's snapshot) |
//! | `get-pull-request`      | `forge.read`                 | — |
//! | `get-pull-request-diff` | `forge.read`                 | — |
//! | `propose-comment`       | `forge.comment`              | `forge.comment`; text size cap; redacted |
//! | `propose-labels`        | `forge.set-labels`           | `forge.set-labels` (added and removed labels) |
//! | `propose-pull-request`  | `forge.propose-pull-request` | `forge.push` over the changed paths + secret scan of the commit, then `forge.propose-pull-request` (always a draft, head = the run's branch); redacted |
//! | `propose-review`        | `forge.review`               | `forge.review` with each line comment marked in or out of the diff; no approve verdict exists; redacted |
//! | `propose-reply`         | `forge.reply`                | `forge.reply`; text size cap; redacted |
//! | `propose-status`        | `forge.status`               | `forge.status` (`kiln/...` contexts only) |
//! | `propose-pull-request-update` | `forge.propose-pull-request` | `forge.push` over the changed paths + secret scan, then `forge.update-pull-request` (the pull request's head must be the run's own branch); never a new pull request; the Verification section redacted |
//! | `propose-report`        | `forge.report`               | `forge.report`; the role's one report comment, found again by a marker in Kiln's own comment and edited in place; redacted |
//!
//! Allowed proposals are applied at once when the run has a forge (receipt
//! `applied`), recorded otherwise; held ones wait for an operator (receipt
//! `held`) and are applied by [`apply`] when approved; denied ones come back
//! as `denied` with the gate's reason. Every decision is a run event.
use std::sync::Arc;

use super::RunState;
use crate::detect::{Text, Verdict, step};
use crate::forge::diff::CommentableLines;
use crate::forge::{
    self as domain, EffectRecord, EffectState, Forge, ForgeSnapshot, NewPullRequest, NewReview,
    Proposal,
};
use crate::plugin::capability::Capability;
use crate::plugin::types::{Receipt, RoleError};
use crate::policy::{Decision, Effect, Gate, ReviewComment, ReviewEvent, TextKind};
use crate::publish::Publisher;
use crate::session::EventKind;

/// Where a run's allowed proposals go: the forge, and the run's branches.
#[derive(Clone)]
pub struct ForgeTarget {
    /// The repository's forge, called with the host's credentials.
    pub forge: Arc<dyn Forge>,
    /// The run's own branch (`kiln/...`), the head of its pull request.
    pub head_branch: String,
    /// The branch its pull request targets.
    pub base_branch: String,
    /// Where each write is journaled before it is sent, so it happens
    /// once across a crash ([`crate::effects`]); `None` (a one-shot `kiln
    /// run` without a store): written without a journal.
    pub journal: Option<crate::effects::EffectJournal>,
}

/// Per-run state of the forge interface.
pub struct ForgeCtx {
    /// What the run may read.
    pub snapshot: ForgeSnapshot,
    /// What the run proposed and the gate did not deny, in order.
    pub proposals: Vec<Proposal>,
    /// The same proposals with their effect ids and states.
    pub effects: Vec<EffectRecord>,
    /// How many proposals the gate denied (they are in no list above; the
    /// run's final line counts them).
    pub denied: usize,
    /// The role's caps on effects per run (`[budgets.<role>]`).
    pub caps: crate::caps::EffectCaps,
    /// What the run has used of them: proposals the gate let through.
    pub used: crate::caps::EffectUse,
    /// Where allowed proposals are applied; `None` records them only.
    pub target: Option<ForgeTarget>,
    /// Commits the workspace for a pull request.
    pub publisher: Option<Arc<Publisher>>,
    /// The detection step's settings.
    pub detection: crate::detect::step::Settings,
    /// For an `improve` run: the role whose override its pull request may
    /// change (`None` for an improve run without one refuses every pull
    /// request).
    pub improve_target: Option<String>,
    /// The verdict of the detection step run for the proposal being
    /// decided (none for proposals it does not cover): a held effect lists
    /// its findings as concerns.
    pub verdict: std::sync::Mutex<Option<Verdict>>,
}

/// The stricter of two decisions: deny over hold over allow.
fn stricter(a: Decision, b: Decision) -> Decision {
    match (&a, &b) {
        (Decision::Deny { .. }, _) => a,
        (_, Decision::Deny { .. }) => b,
        (Decision::Hold { .. }, _) => a,
        _ => b,
    }
}

/// A decision on effects the detection step covered, with its verdict: a
/// hold carries the findings in its reason (what the person approving
/// reads next to the diff), and a detector that failed holds what would
/// have been allowed (failing closed, whatever the policies say).
fn with_findings(decision: Decision, verdict: &Verdict) -> Decision {
    match decision {
        Decision::Hold { reason } if verdict.holds() => Decision::Hold {
            reason: format!("{reason}; {}", verdict.summary()),
        },
        Decision::Allow { reason } if !verdict.errors.is_empty() => Decision::Hold {
            reason: format!(
                "{reason}, but held: a detector failed (failing closed); {}",
                verdict.summary()
            ),
        },
        d => d,
    }
}

/// Where a pull request's commit comes from.
pub enum CommitSource<'a> {
    /// Commit the workspace now, through its shadow repository.
    Workspace(&'a Publisher),
    /// A commit made earlier (when a held pull request was proposed), in
    /// the git repository at `git_dir` (e.g. a handback bundle's clone).
    Frozen {
        /// A repository holding the commit.
        git_dir: &'a std::path::Path,
        /// The commit.
        commit: &'a str,
    },
    /// No workspace: a pull request cannot be opened.
    None,
}

/// Apply an allowed (or approved) proposal to the forge. A pull request's
/// files are scanned for secrets once more (they may have changed since
/// the decision), committed (or the frozen commit taken), pushed to the
/// run's branch with the host's credentials and opened as a draft. Returns
/// where it landed.
pub async fn apply(
    target: &ForgeTarget,
    source: CommitSource<'_>,
    gate: &Gate,
    proposal: &Proposal,
) -> Result<Option<String>, String> {
    let forge = &target.forge;
    match proposal {
        Proposal::Comment { number, body } => {
            let id = forge
                .comment(*number, body)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(format!("#{number} comment {id}")))
        }
        Proposal::Labels {
            number,
            add,
            remove,
        } => {
            if !add.is_empty() {
                forge
                    .add_labels(*number, add)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            for l in remove {
                forge
                    .remove_label(*number, l)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(Some(format!("#{number}")))
        }
        Proposal::PullRequest {
            title,
            body,
            commit_message,
        } => {
            let (git_dir, commit) = match source {
                CommitSource::Workspace(publisher) => {
                    let files = publisher.changed_files().await.map_err(|e| e.to_string())?;
                    gate.check_commit(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())))
                        .map_err(|e| e.to_string())?;
                    let commit = publisher
                        .commit(commit_message)
                        .await
                        .map_err(|e| e.to_string())?;
                    (publisher.git_dir().to_path_buf(), commit)
                }
                CommitSource::Frozen { git_dir, commit } => {
                    (git_dir.to_path_buf(), commit.to_string())
                }
                CommitSource::None => {
                    return Err("the run has no workspace to open a pull request from".into());
                }
            };
            forge
                .push(&git_dir, &commit, &target.head_branch)
                .await
                .map_err(|e| e.to_string())?;
            let n = forge
                .create_draft_pull_request(NewPullRequest {
                    title: title.clone(),
                    body: body.clone(),
                    head: target.head_branch.clone(),
                    base: target.base_branch.clone(),
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(format!("#{n}")))
        }
        Proposal::PullRequestUpdate {
            number,
            commit_message,
            verification,
        } => {
            let commit = match source {
                CommitSource::Workspace(publisher) => {
                    let files = publisher.changed_files().await.map_err(|e| e.to_string())?;
                    if files.is_empty() {
                        // Only the body changes (every comment answered with
                        // "why not"): nothing to push.
                        None
                    } else {
                        gate.check_commit(files.iter().map(|(p, b)| (p.as_str(), b.as_slice())))
                            .map_err(|e| e.to_string())?;
                        let commit = publisher
                            .commit(commit_message)
                            .await
                            .map_err(|e| e.to_string())?;
                        Some((publisher.git_dir().to_path_buf(), commit))
                    }
                }
                CommitSource::Frozen { git_dir, commit } => {
                    Some((git_dir.to_path_buf(), commit.to_string()))
                }
                CommitSource::None => {
                    return Err("the run has no workspace to update a pull request from".into());
                }
            };
            let pr = forge
                .get_pull_request(*number)
                .await
                .map_err(|e| e.to_string())?;
            check_updatable(&pr, &target.head_branch)?;
            let mut landed = format!("#{number}");
            if let Some((git_dir, commit)) = commit {
                // The forge pushes with force (a run owns its branch): refuse
                // here when someone pushed since the run read the branch, so
                // a human's commit is never overwritten.
                let on_top = crate::publish::host_git(Some(git_dir.as_path()), None)
                    .args([
                        "merge-base",
                        "--is-ancestor",
                        pr.head_sha.as_str(),
                        commit.as_str(),
                    ])
                    .output()
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .success();
                if !on_top {
                    return Err(format!(
                        "{} moved since the run read it (its head is now {}); not overwriting those commits",
                        target.head_branch,
                        &pr.head_sha[..pr.head_sha.len().min(12)]
                    ));
                }
                forge
                    .push(&git_dir, &commit, &target.head_branch)
                    .await
                    .map_err(|e| e.to_string())?;
                landed.push_str(&format!(" at {}", &commit[..commit.len().min(12)]));
            }
            if let Some(section) = verification {
                let body = domain::replace_verification(&pr.issue.body, section);
                forge
                    .edit_pull_request_body(*number, &body)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(Some(landed))
        }
        Proposal::Review {
            number,
            request_changes,
            summary,
            comments,
        } => {
            let id = forge
                .create_review(
                    *number,
                    NewReview {
                        request_changes: *request_changes,
                        body: summary.clone(),
                        comments: comments.clone(),
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(format!("#{number} review {id}")))
        }
        Proposal::Reply {
            number,
            comment_id,
            body,
        } => {
            let id = forge
                .reply_to_review_comment(*number, *comment_id, body)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(format!("#{number} reply {id}")))
        }
        Proposal::Status {
            number,
            context,
            state,
            description,
        } => {
            forge
                .set_status(
                    *number,
                    &domain::CommitStatus {
                        context: context.clone(),
                        state: *state,
                        description: description.clone(),
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(format!("#{number} status {context}")))
        }
        Proposal::Report { number, role, body } => {
            // Marker first: it finds this report again on the next run. The
            // search reads raw bodies (the plugin's copy has markers
            // stripped) and trusts only Kiln's own comments.
            let text = format!("{}\n{body}", domain::report_marker(role));
            let own = forge.own_login().await.map_err(|e| e.to_string())?;
            let comments = match forge.get_issue(*number).await {
                Ok(issue) => issue.comments,
                // The local forge keeps pull requests apart from issues.
                Err(domain::ForgeError::NotFound(_)) => {
                    forge
                        .get_pull_request(*number)
                        .await
                        .map_err(|e| e.to_string())?
                        .issue
                        .comments
                }
                Err(e) => return Err(e.to_string()),
            };
            match domain::find_report(&comments, &own, role) {
                Some(id) => {
                    forge
                        .edit_comment(id, &text)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Some(format!("#{number} comment {id} (updated)")))
                }
                None => {
                    let id = forge
                        .comment(*number, &text)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(Some(format!("#{number} comment {id}")))
                }
            }
        }
    }
}

/// [`apply`], exactly once across a crash when the target has a journal
/// ([`crate::effects`]): the write's intent is committed under its
/// idempotency key before anything is sent, and its texts carry the key's
/// hidden marker. A write an earlier attempt of the run applied (the same
/// effect id and content) is not sent again: its recorded place is
/// returned. One left in doubt by a crash is looked for on the forge first.
/// The outcome is recorded. `read_head`: for a pull request update, the
/// head commit the run read. Returns where the write landed.
pub async fn apply_once(
    target: &ForgeTarget,
    effect_id: &str,
    source: CommitSource<'_>,
    gate: &Gate,
    proposal: &Proposal,
    read_head: Option<String>,
) -> Result<Option<String>, String> {
    use crate::effects::{self, Intent};
    use crate::store::{EffectLogState, EffectOutcome};
    let Some(journal) = &target.journal else {
        return apply(target, source, gate, proposal).await;
    };
    let key = effects::effect_key(journal.run, effect_id, proposal);
    let sent = effects::with_marker(proposal, &key);
    let intent = Intent {
        proposal: sent.clone(),
        head_branch: target.head_branch.clone(),
        base_branch: target.base_branch.clone(),
        read_head,
    };
    let intent_json = serde_json::to_value(&intent)
        .map_err(|e| format!("its intent cannot be written down ({e}), so it was not sent"))?;
    let earlier = journal
        .store
        .begin_effect(journal.run, effect_id, &key, intent_json)
        .await
        .map_err(|e| format!("its intent could not be recorded ({e}), so it was not sent"))?;
    let record = |outcome: EffectOutcome| {
        let (store, key) = (journal.store.clone(), key.clone());
        async move {
            if let Err(e) = store.finish_effect(&key, outcome).await {
                tracing::error!(%key, error = %e, "a forge write's outcome is not recorded; a restart looks for it on the forge");
            }
        }
    };
    match earlier.as_ref().map(|e| e.state) {
        Some(EffectLogState::Applied) => {
            let at = earlier
                .and_then(|e| e.outcome)
                .unwrap_or_else(|| key.clone());
            return Ok(Some(format!(
                "{at} (by an earlier attempt of this run; not sent again)"
            )));
        }
        Some(EffectLogState::Sending) => {
            match effects::find_on_forge(target.forge.as_ref(), &intent, &key).await {
                Ok(Some(at)) => {
                    record(EffectOutcome::Applied {
                        at: Some(at.clone()),
                    })
                    .await;
                    return Ok(Some(format!(
                        "{at} (an interrupted attempt had applied it; not sent again)"
                    )));
                }
                // Not there: the interrupted attempt never landed; send it now.
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "an interrupted attempt may have applied it and the forge cannot be asked ({e}); not sent, so it is not doubled"
                    ));
                }
            }
        }
        _ => {}
    }
    let result = apply(target, source, gate, &sent).await;
    record(match &result {
        Ok(at) => EffectOutcome::Applied { at: at.clone() },
        Err(e) => EffectOutcome::Failed { error: e.clone() },
    })
    .await;
    result
}

/// Refuses to update a pull request that is closed, comes from a fork, or
/// whose head is not the run's branch (it changed since the run started).
fn check_updatable(pr: &domain::PullRequest, branch: &str) -> Result<(), String> {
    let n = pr.issue.number;
    if !pr.issue.open {
        return Err(format!("pull request #{n} is closed"));
    }
    if pr.head_from_fork {
        return Err(format!(
            "pull request #{n} comes from a fork; Kiln never pushes to it"
        ));
    }
    if pr.head_branch != branch {
        return Err(format!(
            "pull request #{n}'s head is {:?}, not the run's branch {branch:?}",
            pr.head_branch
        ));
    }
    Ok(())
}

impl RunState {
    /// The gate's decision on a proposal, with the effects it implies.
    async fn decide_proposal(&self, proposal: &Proposal) -> Decision {
        match proposal {
            Proposal::Comment { number, body } => {
                self.decide(Effect::Comment {
                    number: *number,
                    body: body.clone(),
                })
                .0
            }
            Proposal::Labels {
                number,
                add,
                remove,
            } => {
                self.decide(Effect::SetLabels {
                    number: *number,
                    labels: add.iter().chain(remove).cloned().collect(),
                })
                .0
            }
            Proposal::PullRequest {
                title,
                body,
                commit_message,
            } => {
                let (head, base) = match &self.forge.target {
                    Some(t) => (t.head_branch.clone(), t.base_branch.clone()),
                    None => match &self.policy {
                        Some(b) => (b.run.branch().to_string(), "main".to_string()),
                        None => (String::new(), String::new()),
                    },
                };
                let (paths, files) = match self.commit_paths("forge.propose-pull-request").await {
                    Ok(changes) => changes,
                    Err(denied) => return denied,
                };
                if let Some(denied) = self.improvement_refused(body, &paths, &files) {
                    return denied;
                }
                let verdict = self
                    .detection(vec![
                        Text::new("pull request title", title.clone()),
                        Text::new("pull request body", body.clone()),
                        Text::new("commit message", commit_message.clone()),
                    ])
                    .await;
                let run = self.detected_run(&verdict);
                let push = self
                    .decide_as(
                        run.as_ref(),
                        Effect::Push {
                            branch: head.clone(),
                            paths,
                        },
                    )
                    .0;
                if push.is_deny() {
                    return push;
                }
                let pr = self
                    .decide_as(
                        run.as_ref(),
                        Effect::ProposePullRequest {
                            head,
                            base,
                            title: title.clone(),
                            body: body.clone(),
                            draft: true,
                        },
                    )
                    .0;
                with_findings(stricter(push, pr), &verdict)
            }
            Proposal::PullRequestUpdate {
                number,
                verification,
                commit_message,
            } => {
                // The pull request must be the one the run read: its head
                // is what the commits go to.
                let Some(pr) = self.forge.snapshot.pull_requests.get(number) else {
                    return Decision::Deny {
                        reason: format!(
                            "forge.update-pull-request: pull request #{number} is not the one this run answers"
                        ),
                        blame: crate::policy::Blame::Guest,
                    };
                };
                let head = pr.head_branch.clone();
                let paths = match self.commit_paths("forge.update-pull-request").await {
                    Ok((paths, _)) => paths,
                    Err(denied) => return denied,
                };
                let mut texts = vec![Text::new("commit message", commit_message.clone())];
                if let Some(v) = verification {
                    texts.push(Text::new("pull request Verification section", v.clone()));
                }
                let verdict = self.detection(texts).await;
                let run = self.detected_run(&verdict);
                let update = self
                    .decide_as(
                        run.as_ref(),
                        Effect::UpdatePullRequest {
                            number: *number,
                            head: head.clone(),
                            verification: verification.clone(),
                        },
                    )
                    .0;
                if update.is_deny() || paths.is_empty() {
                    return with_findings(update, &verdict);
                }
                let push = self
                    .decide_as(
                        run.as_ref(),
                        Effect::Push {
                            branch: head,
                            paths,
                        },
                    )
                    .0;
                with_findings(stricter(push, update), &verdict)
            }
            Proposal::Review {
                number,
                request_changes,
                summary,
                comments,
            } => {
                let on_diff = self
                    .forge
                    .snapshot
                    .pull_requests
                    .get(number)
                    .map(|p| CommentableLines::parse(&p.diff))
                    .unwrap_or_default();
                self.decide(Effect::Review {
                    number: *number,
                    event: if *request_changes {
                        ReviewEvent::RequestChanges
                    } else {
                        ReviewEvent::Comment
                    },
                    body: summary.clone(),
                    comments: comments
                        .iter()
                        .map(|c| ReviewComment {
                            path: c.path.clone(),
                            line: c.line,
                            in_diff: on_diff.contains(&c.path, c.line, c.new_side),
                            body: c.body.clone(),
                        })
                        .collect(),
                })
                .0
            }
            Proposal::Reply {
                number,
                comment_id,
                body,
            } => {
                self.decide(Effect::Reply {
                    number: *number,
                    comment_id: *comment_id,
                    body: body.clone(),
                })
                .0
            }
            Proposal::Status {
                number,
                context,
                state,
                description,
            } => {
                self.decide(Effect::Status {
                    number: *number,
                    context: context.clone(),
                    state: *state,
                    description: description.clone(),
                })
                .0
            }
            Proposal::Report { number, body, .. } => {
                self.decide(Effect::Report {
                    number: *number,
                    body: body.clone(),
                })
                .0
            }
        }
    }

    /// The detection step over the run's work before it leaves: the
    /// workspace's patch, `outbound` (the proposal's texts) and the run's
    /// untrusted inputs. The verdict is a run event.
    async fn detection(&self, outbound: Vec<Text>) -> Verdict {
        let Some(binding) = &self.policy else {
            // No gate: every effect is denied anyway.
            return Verdict::default();
        };
        let settings = &self.forge.detection;
        let mut verdict = step::run(
            self.forge.publisher.as_deref(),
            outbound,
            step::untrusted_inputs(&self.forge.snapshot),
            binding.gate.redactor(),
            settings.model.as_deref(),
            settings.budget,
        )
        .await;
        // An improve run's override is a steering file by design: the host
        // checked it (overridable sections only, evidence cited) before this
        // step, and a maintainer reviews the draft pull request before any
        // run reads it. Only that one finding goes; every other scanner's
        // findings in it stay.
        if binding.run.role() == crate::config::Role::Improve
            && let Some(target) = &self.forge.improve_target
        {
            let own = crate::improve::override_path(target);
            let before = verdict.findings.len();
            verdict
                .findings
                .retain(|f| !(f.scanner == "steering" && f.file == own));
            if verdict.findings.len() < before {
                self.events.record(
                    EventKind::Note,
                    format!(
                        "detection: {own} is this improve run's own override, checked by the host and reviewed in its pull request: not held as a steering file"
                    ),
                );
            }
        }
        self.events.record(
            EventKind::Detection {
                verdict: verdict.label().to_string(),
                findings: verdict.findings.len(),
            },
            step::event_message(&verdict),
        );
        *self
            .forge
            .verdict
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(verdict.clone());
        verdict
    }

    /// The run as the principal of the effects a verdict covers: the same
    /// run with the verdict in its Cedar context.
    fn detected_run(&self, verdict: &Verdict) -> Option<Arc<crate::policy::RunContext>> {
        self.policy
            .as_ref()
            .map(|b| Arc::new(b.run.with_detection(step::policy_context(verdict))))
    }

    /// For an `improve` run, the host's check of its pull request
    /// ([`crate::improve::check_pull_request`]: the target's override only,
    /// two independent cited signals, overridable sections only), whatever
    /// the plugin checked: the denial, recorded as a policy event, if it fails.
    fn improvement_refused(
        &self,
        body: &str,
        paths: &[String],
        files: &[(String, Vec<u8>)],
    ) -> Option<Decision> {
        let binding = self.policy.as_ref()?;
        if binding.run.role() != crate::config::Role::Improve {
            return None;
        }
        let checked = match &self.forge.improve_target {
            Some(target) => {
                crate::improve::check_pull_request(target, body, paths, files, &self.signals.served)
                    .map_err(|e| e.to_string())
            }
            None => Err("the run has no target role (argument `target`)".to_string()),
        };
        let why = checked.err()?;
        let reason = format!("forge.propose-pull-request: improve: {why}");
        self.events.record(
            EventKind::Policy {
                action: "forge.propose-pull-request".into(),
                verdict: "deny".into(),
            },
            reason.clone(),
        );
        Some(Decision::Deny {
            reason,
            blame: crate::policy::Blame::Guest,
        })
    }

    /// The paths the run's commit would change and the contents of those
    /// that still exist, after the commit's secret scan; `Err` is the
    /// decision refusing the proposal (`action` names it when the workspace
    /// cannot be read).
    #[allow(
        clippy::type_complexity,
        reason = "the pair Publisher::changes returns, passed through"
    )]
    async fn commit_paths(
        &self,
        action: &str,
    ) -> Result<(Vec<String>, Vec<(String, Vec<u8>)>), Decision> {
        let (paths, files) = match &self.forge.publisher {
            Some(p) => p.changes().await.map_err(|e| Decision::Deny {
                reason: format!("{action}: the workspace cannot be read: {e}"),
                blame: crate::policy::Blame::Host,
            })?,
            None => (Vec::new(), Vec::new()),
        };
        if let Some(b) = &self.policy
            && let Err(e) = b
                .gate
                .check_commit(files.iter().map(|(p, c)| (p.as_str(), c.as_slice())))
        {
            let d = Decision::Deny {
                reason: format!("forge.push: {e}"),
                blame: crate::policy::Blame::Guest,
            };
            self.events.record(
                EventKind::Policy {
                    action: "forge.push".into(),
                    verdict: "deny".into(),
                },
                d.reason().to_string(),
            );
            return Err(d);
        }
        Ok((paths, files))
    }

    /// Every outbound text of a proposal made inert and redacted.
    fn redact_proposal(&self, proposal: Proposal) -> Proposal {
        match proposal {
            Proposal::Comment { number, body } => Proposal::Comment {
                number,
                body: self.outbound(TextKind::Comment, body),
            },
            Proposal::Labels { .. } => proposal,
            Proposal::PullRequest {
                title,
                body,
                commit_message,
            } => Proposal::PullRequest {
                title: self.outbound(TextKind::PullRequestTitle, title),
                body: self.outbound(TextKind::PullRequestBody, body),
                commit_message: self.outbound(TextKind::CommitMessage, commit_message),
            },
            Proposal::PullRequestUpdate {
                number,
                commit_message,
                verification,
            } => Proposal::PullRequestUpdate {
                number,
                commit_message: self.outbound(TextKind::CommitMessage, commit_message),
                verification: verification.map(|v| self.outbound(TextKind::PullRequestBody, v)),
            },
            Proposal::Review {
                number,
                request_changes,
                summary,
                comments,
            } => Proposal::Review {
                number,
                request_changes,
                summary: self.outbound(TextKind::Review, summary),
                comments: comments
                    .into_iter()
                    .map(|c| domain::LineComment {
                        body: self.outbound(TextKind::Review, c.body),
                        ..c
                    })
                    .collect(),
            },
            Proposal::Reply {
                number,
                comment_id,
                body,
            } => Proposal::Reply {
                number,
                comment_id,
                body: self.outbound(TextKind::Comment, body),
            },
            Proposal::Status {
                number,
                context,
                state,
                description,
            } => Proposal::Status {
                number,
                context,
                state,
                description: self.outbound(TextKind::Status, description),
            },
            Proposal::Report { number, role, body } => Proposal::Report {
                number,
                role,
                body: self.outbound(TextKind::Comment, body),
            },
        }
    }

    /// What a human should see next to a held pull request: each protected
    /// path it changes, with that file's diff, then each of the detection
    /// step's findings (with the diff of a file of the patch it names, unless
    /// a protected path's concern shows it already) and detector errors.
    async fn hold_concerns(
        &self,
        proposal: &Proposal,
        verdict: Option<&Verdict>,
    ) -> Vec<domain::HoldConcern> {
        let (Some(publisher), Some(binding)) = (&self.forge.publisher, &self.policy) else {
            return Vec::new();
        };
        if !matches!(
            proposal,
            Proposal::PullRequest { .. } | Proposal::PullRequestUpdate { .. }
        ) {
            return Vec::new();
        }
        let paths = match publisher.changed_paths().await {
            Ok(p) => p,
            Err(e) => {
                self.events.record(
                    EventKind::Warning,
                    format!("held effect: no diff to show: {e}"),
                );
                Vec::new()
            }
        };
        let mut concerns = Vec::new();
        for change in binding.gate.protected_changes(binding.run.role(), &paths) {
            let diff = publisher
                .diff_paths(std::slice::from_ref(&change.path))
                .await
                .unwrap_or_else(|e| format!("(the diff cannot be shown: {e})"));
            concerns.push(domain::HoldConcern {
                source: "protected-paths".into(),
                reason: format!("{} is protected ({})", change.path, change.why),
                paths: vec![change.path],
                diff: self.redact(diff),
            });
        }
        let Some(verdict) = verdict else {
            return concerns;
        };
        for f in &verdict.findings {
            let in_patch = paths.contains(&f.file);
            let shown = concerns.iter().any(|c| c.paths.contains(&f.file));
            let diff = if in_patch && !shown {
                publisher
                    .diff_paths(std::slice::from_ref(&f.file))
                    .await
                    .unwrap_or_else(|e| format!("(the diff cannot be shown: {e})"))
            } else {
                String::new()
            };
            concerns.push(domain::HoldConcern {
                source: format!("detection/{}", f.scanner),
                reason: f.to_string(),
                paths: if in_patch {
                    vec![f.file.clone()]
                } else {
                    Vec::new()
                },
                diff: self.redact(diff),
            });
        }
        for e in &verdict.errors {
            concerns.push(domain::HoldConcern {
                source: "detection".into(),
                reason: format!("a detector failed, so this is held (failing closed): {e}"),
                paths: Vec::new(),
                diff: String::new(),
            });
        }
        concerns
    }

    async fn propose(
        &mut self,
        what: &str,
        cap: Capability,
        texts: &[(&str, usize)],
        proposal: Proposal,
    ) -> Result<Receipt, RoleError> {
        self.unless_paused().await;
        self.require(cap, format_args!("{what}"))?;
        for (field, len) in texts {
            if *len > self.limits.max_forge_text_bytes {
                return Err(RoleError::LimitExceeded(format!(
                    "{what}: {field} is {len} bytes, the limit is {}",
                    self.limits.max_forge_text_bytes
                )));
            }
        }
        // Counted here, in the host: the plugin cannot reset or skip it.
        if let Some(why) = self
            .forge
            .used
            .check(&self.forge.caps, &self.role, &proposal)
        {
            let reason = format!("{what}: denied: {why}");
            self.events.record(
                EventKind::Policy {
                    action: what.split_whitespace().next().unwrap_or(what).to_string(),
                    verdict: "deny".into(),
                },
                reason.clone(),
            );
            self.forge.denied += 1;
            return Err(RoleError::Denied(reason));
        }
        // The detection step (for a pull request or a push) leaves its
        // verdict here while the proposal is decided.
        *self
            .forge
            .verdict
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        let decision = self.decide_proposal(&proposal).await;
        let verdict = self
            .forge
            .verdict
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Decision::Deny { reason, .. } = decision {
            self.forge.denied += 1;
            return Err(RoleError::Denied(reason));
        }
        self.forge.used.charge(&proposal);
        let proposal = self.redact_proposal(proposal);
        let effect_id = format!("e{}", self.forge.effects.len() + 1);
        let (state, held, url) = match decision {
            Decision::Hold { reason } => {
                let commit = match (&proposal, &self.forge.publisher) {
                    (
                        Proposal::PullRequest { commit_message, .. }
                        | Proposal::PullRequestUpdate { commit_message, .. },
                        Some(p),
                    ) => match p.commit(commit_message).await {
                        Ok(c) => Some(c),
                        // An update may change only the body.
                        Err(crate::publish::PublishError::NothingToCommit)
                            if matches!(proposal, Proposal::PullRequestUpdate { .. }) =>
                        {
                            None
                        }
                        Err(e) => {
                            return Err(RoleError::Unavailable(format!(
                                "{what}: held, but the workspace could not be committed: {e}"
                            )));
                        }
                    },
                    _ => None,
                };
                let concerns = self.hold_concerns(&proposal, verdict.as_ref()).await;
                (
                    EffectState::Held {
                        reason,
                        commit,
                        concerns,
                    },
                    true,
                    None,
                )
            }
            _ => match (&self.forge.target, &self.policy) {
                (Some(target), Some(binding)) => {
                    let source = match self.forge.publisher.as_deref() {
                        Some(p) => CommitSource::Workspace(p),
                        None => CommitSource::None,
                    };
                    let read_head = match &proposal {
                        Proposal::PullRequestUpdate { number, .. } => self
                            .forge
                            .snapshot
                            .pull_requests
                            .get(number)
                            .map(|p| p.head_sha.clone()),
                        _ => None,
                    };
                    match apply_once(
                        target,
                        &effect_id,
                        source,
                        &binding.gate,
                        &proposal,
                        read_head,
                    )
                    .await
                    {
                        Ok(url) => (EffectState::Applied { url: url.clone() }, false, url),
                        Err(e) => {
                            let msg = format!("{what}: allowed, but the forge refused it: {e}");
                            self.events.record(EventKind::Warning, msg.clone());
                            return Err(RoleError::Unavailable(msg));
                        }
                    }
                }
                _ => (EffectState::Recorded, false, None),
            },
        };
        let verb = match &state {
            EffectState::Recorded => "recorded (no forge attached)".to_string(),
            EffectState::Applied { url } => {
                format!(
                    "applied{}",
                    url.as_deref()
                        .map(|u| format!(" at {u}"))
                        .unwrap_or_default()
                )
            }
            EffectState::Held { reason, .. } => format!("held for approval: {reason}"),
        };
        self.events.record(
            EventKind::Proposal {
                effect: effect_id.clone(),
            },
            format!("{what} {verb}"),
        );
        self.forge.proposals.push(proposal.clone());
        self.forge.effects.push(EffectRecord {
            effect_id: effect_id.clone(),
            proposal,
            state,
        });
        Ok(Receipt {
            effect_id,
            held,
            url,
        })
    }
}

impl RunState {
    /// `forge.get-issue`: an issue of the run's snapshot.
    pub(crate) fn get_issue(&self, number: u64) -> Result<&domain::Issue, RoleError> {
        self.require(
            Capability::ForgeRead,
            format_args!("forge.get-issue #{number}"),
        )?;
        self.forge
            .snapshot
            .issues
            .get(&number)
            .ok_or_else(|| RoleError::NotFound(format!("issue #{number}")))
    }

    /// `forge.get-pull-request` (and `-diff`): a pull request of the run's snapshot.
    pub(crate) fn get_pull_request(
        &self,
        number: u64,
        what: &str,
    ) -> Result<&domain::PullRequest, RoleError> {
        self.require(Capability::ForgeRead, format_args!("{what} #{number}"))?;
        self.forge
            .snapshot
            .pull_requests
            .get(&number)
            .ok_or_else(|| RoleError::NotFound(format!("pull request #{number}")))
    }

    /// `forge.propose-*`: check the proposal's capability and text sizes,
    /// have the gate decide it, and apply, record or hold it.
    pub(crate) async fn propose_effect(
        &mut self,
        proposal: Proposal,
    ) -> Result<Receipt, RoleError> {
        let (what, cap, texts): (String, Capability, Vec<(&str, usize)>) = match &proposal {
            Proposal::Comment { number, body } => (
                format!("forge.comment on #{number}"),
                Capability::ForgeComment,
                vec![("body", body.len())],
            ),
            Proposal::Labels {
                number,
                add,
                remove,
            } => (
                format!(
                    "forge.set-labels on #{number} ({})",
                    crate::forge::describe_labels(add, remove)
                ),
                Capability::ForgeSetLabels,
                Vec::new(),
            ),
            Proposal::PullRequest {
                title,
                body,
                commit_message,
            } => (
                "forge.propose-pull-request".to_string(),
                Capability::ForgeProposePullRequest,
                vec![
                    ("title", title.len()),
                    ("body", body.len()),
                    ("commit message", commit_message.len()),
                ],
            ),
            Proposal::PullRequestUpdate {
                number,
                commit_message,
                verification,
            } => (
                format!("forge.update-pull-request #{number}"),
                Capability::ForgeProposePullRequest,
                vec![
                    ("commit message", commit_message.len()),
                    ("verification", verification.as_deref().map_or(0, str::len)),
                ],
            ),
            Proposal::Review {
                number,
                summary,
                comments,
                ..
            } => (
                format!("forge.review on #{number}"),
                Capability::ForgeReview,
                vec![(
                    "review text",
                    summary.len()
                        + comments
                            .iter()
                            .map(|c| c.body.len() + c.path.len())
                            .sum::<usize>(),
                )],
            ),
            Proposal::Reply {
                number,
                comment_id,
                body,
            } => (
                format!("forge.reply on #{number} to comment {comment_id}"),
                Capability::ForgeReply,
                vec![("body", body.len())],
            ),
            Proposal::Status {
                number,
                context,
                state,
                description,
            } => (
                format!("forge.status {context} = {state} on #{number}"),
                Capability::ForgeStatus,
                vec![
                    ("description", description.len()),
                    ("context", context.len()),
                ],
            ),
            Proposal::Report { number, body, .. } => (
                format!("forge.report on #{number}"),
                Capability::ForgeReport,
                vec![("body", body.len())],
            ),
        };
        self.propose(&what, cap, &texts, proposal).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::local::LocalForge;
    use crate::forge::{NewPullRequest, RepoRef};

    #[test]
    fn a_hold_carries_the_findings_and_a_failed_detector_holds_what_was_allowed() {
        let finding = crate::detect::Finding {
            category: crate::detect::Category::MaliciousPatch,
            scanner: "hooks",
            reason: "the patch adds a postinstall script".into(),
            file: "package.json".into(),
            line: Some(7),
        };
        let flagged = Verdict {
            findings: vec![finding],
            errors: vec![],
        };
        let held = with_findings(
            Decision::Hold {
                reason: "held by default.hold-detection-findings".into(),
            },
            &flagged,
        );
        assert!(
            held.is_hold()
                && held
                    .reason()
                    .contains("malicious_patch at package.json:7: the patch adds a postinstall"),
            "{held:?}"
        );
        let failed = Verdict {
            findings: vec![],
            errors: vec!["the patch could not be read".into()],
        };
        let allow = Decision::Allow {
            reason: "allowed".into(),
        };
        let d = with_findings(allow.clone(), &failed);
        assert!(
            d.is_hold() && d.reason().contains("failing closed"),
            "{d:?}"
        );
        assert_eq!(with_findings(allow.clone(), &Verdict::default()), allow);
        let deny = Decision::Deny {
            reason: "no".into(),
            blame: crate::policy::Blame::Policy,
        };
        assert_eq!(with_findings(deny.clone(), &failed), deny);
    }

    fn git(dir: &std::path::Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(work: &std::path::Path, file: &str, text: &str) -> String {
        std::fs::write(work.join(file), text).expect("write");
        git(work, &["add", file]);
        git(work, &["commit", "--quiet", "-m", file]);
        git(work, &["rev-parse", "HEAD"])
    }

    // The forge force-pushes (a run owns its branch), so an update checks
    // first that its commit builds on the head it read: a commit that does
    // not (someone pushed meanwhile) is refused and the branch is left as it
    // was; one that does is pushed, and only the Verification section of
    // the body changes.
    #[tokio::test]
    async fn an_update_is_pushed_only_on_top_of_the_head_it_read() {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("a.txt"), "a\n").expect("write");
        let forge = LocalForge::create(
            &root.path().join("forge"),
            RepoRef::parse("local/update").expect("repo"),
            "alice",
            Some(&src),
        )
        .await
        .expect("create");
        let bare = forge.bare_repo();
        git(
            root.path(),
            &["clone", "--quiet", bare.to_str().expect("utf-8"), "work"],
        );
        let work = root.path().join("work");
        git(&work, &["checkout", "--quiet", "-b", "kiln/x"]);
        let head = commit(&work, "b.txt", "b\n");
        forge.push(&work, &head, "kiln/x").await.expect("push");
        let pr = forge
            .create_draft_pull_request(NewPullRequest {
                title: "x".into(),
                body: "Closes #9\n\n## Verification\n\nold\n\n---\nfoot".into(),
                head: "kiln/x".into(),
                base: "main".into(),
            })
            .await
            .expect("pr");
        let on_top = commit(&work, "c.txt", "c\n");
        git(&work, &["checkout", "--quiet", "main"]);
        let elsewhere = commit(&work, "d.txt", "d\n");
        let target = ForgeTarget {
            forge: Arc::new(forge.clone()),
            head_branch: "kiln/x".into(),
            base_branch: "main".into(),
            journal: None,
        };
        let gate = Gate::new(&crate::policy::GateConfig::default()).expect("gate");
        let update = Proposal::PullRequestUpdate {
            number: pr,
            commit_message: "m".into(),
            verification: Some("## Verification\n\nnew".into()),
        };
        let git_dir = work.join(".git");
        let refused = apply(
            &target,
            CommitSource::Frozen {
                git_dir: &git_dir,
                commit: &elsewhere,
            },
            &gate,
            &update,
        )
        .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("moved since the run read it")),
            "{refused:?}"
        );
        assert_eq!(git(&bare, &["rev-parse", "kiln/x"]), head, "nothing pushed");
        let landed = apply(
            &target,
            CommitSource::Frozen {
                git_dir: &git_dir,
                commit: &on_top,
            },
            &gate,
            &update,
        )
        .await
        .expect("applied");
        assert_eq!(landed, Some(format!("#{pr} at {}", &on_top[..12])));
        assert_eq!(git(&bare, &["rev-parse", "kiln/x"]), on_top);
        let body = forge.get_pull_request(pr).await.expect("pr").issue.body;
        assert_eq!(body, "Closes #9\n\n## Verification\n\nnew\n\n---\nfoot");
        let prs = forge
            .list_pull_requests(crate::forge::StateFilter::All)
            .await
            .expect("prs");
        assert_eq!(prs.len(), 1, "no new pull request");
    }

    // A turned model posting comment after comment gets its cap's worth on
    // the forge, then denials naming the cap; the count lives in the host.
    #[tokio::test]
    async fn past_the_comment_cap_a_comment_is_denied_naming_the_cap() {
        use crate::config::Role;
        use crate::imports::{RunContext, gate::PolicyBinding, gate::default_gate};
        use crate::plugin::capability::builtin_role_grants;
        use crate::plugin::limits::PluginLimits;
        use crate::policy::Trust;
        use crate::session::MemoryEvents;

        let root = tempfile::tempdir().expect("tempdir");
        let forge = LocalForge::create(
            &root.path().join("forge"),
            RepoRef::parse("local/caps").expect("repo"),
            "alice",
            None,
        )
        .await
        .expect("create");
        let issue = forge
            .create_issue(domain::NewIssue {
                title: "t".into(),
                body: "b".into(),
                labels: vec![],
            })
            .await
            .expect("issue");
        let events = MemoryEvents::new();
        let mut ctx = RunContext::new(Arc::new(events.clone()));
        ctx.budget.effects.comments = Some(2);
        ctx.policy = Some(PolicyBinding {
            gate: default_gate().expect("gate"),
            run: Arc::new(crate::policy::RunContext::new(
                "r1",
                Role::Triage,
                "local/caps",
                Trust::Trusted,
                "kiln/run",
            )),
        });
        ctx.forge_target = Some(ForgeTarget {
            forge: Arc::new(forge.clone()),
            head_branch: "kiln/run".into(),
            base_branch: "main".into(),
            journal: None,
        });
        let grants = builtin_role_grants("triage").expect("role");
        let mut state = RunState::new("test", "triage", grants, PluginLimits::default(), ctx);
        let comment = |i: u32| Proposal::Comment {
            number: issue,
            body: format!("spam {i}"),
        };
        for i in 0..2 {
            let receipt = state
                .propose_effect(comment(i))
                .await
                .expect("under the cap");
            assert!(!receipt.held, "comment {i} should be applied");
        }
        for i in 2..5 {
            match state.propose_effect(comment(i)).await {
                Err(RoleError::Denied(why)) => assert!(
                    why.contains("2 of its 2 comments") && why.contains("max_comments"),
                    "the reason names the cap: {why}"
                ),
                other => panic!("comment {i} should be denied past the cap, got {other:?}"),
            }
        }
        let posted = forge.get_issue(issue).await.expect("issue").comments;
        assert_eq!(posted.len(), 2, "only the cap's worth reached the forge");
        let denials = events
            .snapshot()
            .into_iter()
            .filter(|e| e.message.contains("effect cap reached"))
            .count();
        assert_eq!(denials, 3, "each denial is a run event");
    }
}
