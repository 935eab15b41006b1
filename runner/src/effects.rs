//! Forge writes exactly once, across a crash of the runner.
//!
//! Every write a run makes on the forge (an allowed proposal, or a held one
//! a human approved) gets an **idempotency key** — `r12.e3.<digest>`: the
//! run, the effect id, and a digest of what is written — and its intent
//! (the write as it will be sent, with where it goes) is committed to the
//! store's effect log *before* the request leaves ([`crate::store::RunStore::begin_effect`]).
//! The key also travels with the write wherever the forge keeps text: a
//! hidden marker `<!-- kiln:effect KEY -->` at the end of a comment, a
//! review's summary, a reply or a pull request's body. Once the forge
//! answers, the outcome is recorded: applied (where), or failed (why).
//!
//! A write whose record is still `sending` is in doubt: the runner died
//! between sending and recording (or before sending). The restarted runner
//! looks for each such write on the forge ([`find_on_forge`]): by its
//! marker among Kiln's own comments, reviews and replies; a pull request by
//! its head branch; labels and statuses by the state they leave. Found, the
//! write is recorded as applied and never sent again; not found, it is
//! recorded as not applied. A re-queued run that proposes the same write
//! again (same position, same content: the same key) gets the recorded
//! result instead of a second write, and one whose earlier attempt was
//! not applied sends it once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::forge::{Forge, ForgeError, ForgeResolver, Proposal, StateFilter};
use crate::session::EventKind;
use crate::store::{EffectLogEntry, EffectLogState, EffectOutcome, RunId, RunStore};

/// What every effect marker starts with (see [`marker`]).
pub const EFFECT_MARKER: &str = "kiln:effect";

/// How long recovery waits for the forge to answer about one write.
const LOOKUP_LIMIT: Duration = Duration::from_secs(20);

/// Where a run's forge writes are journaled: the run store, and the run.
#[derive(Clone)]
pub struct EffectJournal {
    /// The store holding the effect log.
    pub store: Arc<dyn RunStore>,
    /// The run whose writes these are.
    pub run: RunId,
}

impl std::fmt::Debug for EffectJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EffectJournal")
            .field("run", &self.run)
            .finish()
    }
}

/// What is committed before a write is sent: the write as sent (its texts
/// carrying the marker), and what finding it again needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The proposal exactly as sent.
    pub proposal: Proposal,
    /// The run's branch: a pull request's head.
    pub head_branch: String,
    /// The branch a pull request targets.
    pub base_branch: String,
    /// For a pull request update: the head commit the run read, so a moved
    /// head shows the push landed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_head: Option<String>,
}

/// The idempotency key of effect `effect_id` of `run` writing `proposal`:
/// `r12.e3.` and 16 hex digits of the SHA-256 of the proposal's JSON. A
/// re-run proposing the same thing at the same position gets the same key.
pub fn effect_key(run: RunId, effect_id: &str, proposal: &Proposal) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(proposal).unwrap_or_default();
    let digest = hex::encode(sha2::Sha256::digest(&json));
    format!("{run}.{effect_id}.{}", &digest[..16])
}

/// The hidden line that carries `key` in the text of a write.
pub fn marker(key: &str) -> String {
    format!("<!-- {EFFECT_MARKER} {key} -->")
}

/// `proposal` with [`marker`] at the end of the text the forge keeps
/// (comment, report, reply, review summary, pull request body); labels,
/// statuses and pull request updates carry none (they are found by the
/// state they leave).
pub fn with_marker(proposal: &Proposal, key: &str) -> Proposal {
    let mark = |text: &str| format!("{text}\n\n{}", marker(key));
    let mut p = proposal.clone();
    match &mut p {
        Proposal::Comment { body, .. }
        | Proposal::Report { body, .. }
        | Proposal::Reply { body, .. }
        | Proposal::PullRequest { body, .. } => *body = mark(body),
        Proposal::Review { summary, .. } => *summary = mark(summary),
        Proposal::Labels { .. } | Proposal::Status { .. } | Proposal::PullRequestUpdate { .. } => {}
    }
    p
}

/// The comments of issue or pull request `number` (the local forge keeps
/// pull requests apart from issues).
async fn comments_on(
    forge: &dyn Forge,
    number: u64,
) -> Result<Vec<crate::forge::Comment>, ForgeError> {
    match forge.get_issue(number).await {
        Ok(issue) => Ok(issue.comments),
        Err(ForgeError::NotFound(_)) => Ok(forge.get_pull_request(number).await?.issue.comments),
        Err(e) => Err(e),
    }
}

/// Whether the write `intent` describes (key `key`) is on the forge, and
/// where (`#12 comment 5012`, as [`crate::imports::forge::apply`] says it).
/// Only Kiln's own comments, reviews, replies and pull requests count: a
/// marker quoted by someone else proves nothing.
pub async fn find_on_forge(
    forge: &dyn Forge,
    intent: &Intent,
    key: &str,
) -> Result<Option<String>, ForgeError> {
    let mark = marker(key);
    let me = || forge.own_login();
    Ok(match &intent.proposal {
        Proposal::Comment { number, .. } | Proposal::Report { number, .. } => {
            let me = me().await?;
            comments_on(forge, *number)
                .await?
                .into_iter()
                .find(|c| c.author.eq_ignore_ascii_case(&me) && c.body.contains(&mark))
                .map(|c| format!("#{number} comment {}", c.id))
        }
        Proposal::Reply {
            number, comment_id, ..
        } => {
            let me = me().await?;
            forge
                .get_pull_request(*number)
                .await?
                .review_threads
                .into_iter()
                .filter(|t| t.id == *comment_id)
                .flat_map(|t| t.comments)
                .find(|c| c.author.eq_ignore_ascii_case(&me) && c.body.contains(&mark))
                .map(|c| format!("#{number} reply {}", c.id))
        }
        Proposal::Review { number, .. } => {
            let me = me().await?;
            forge
                .list_reviews(*number)
                .await?
                .into_iter()
                .find(|r| r.author.eq_ignore_ascii_case(&me) && r.body.contains(&mark))
                .map(|r| format!("#{number} review {}", r.id))
        }
        Proposal::PullRequest { .. } => {
            // One open pull request per head: Kiln's, from the run's branch.
            let me = me().await?;
            forge
                .list_pull_requests(StateFilter::Open)
                .await?
                .into_iter()
                .find(|p| {
                    p.head_branch == intent.head_branch
                        && p.base_branch == intent.base_branch
                        && p.issue.author.eq_ignore_ascii_case(&me)
                })
                .map(|p| format!("#{}", p.issue.number))
        }
        Proposal::Labels {
            number,
            add,
            remove,
        } => {
            let labels = match forge.get_issue(*number).await {
                Ok(issue) => issue.labels,
                Err(ForgeError::NotFound(_)) => forge.get_pull_request(*number).await?.issue.labels,
                Err(e) => return Err(e),
            };
            let done = add.iter().all(|l| labels.contains(l))
                && remove.iter().all(|l| !labels.contains(l));
            done.then(|| format!("#{number}"))
        }
        Proposal::Status {
            number,
            context,
            state,
            ..
        } => forge
            .list_statuses(*number)
            .await?
            .into_iter()
            .find(|s| &s.context == context && &s.state == state)
            .map(|_| format!("#{number} status {context}")),
        Proposal::PullRequestUpdate {
            number,
            verification,
            ..
        } => {
            let pr = forge.get_pull_request(*number).await?;
            let body_done = verification
                .as_deref()
                .is_none_or(|v| pr.issue.body.contains(v.trim()));
            let head_moved = intent
                .read_head
                .as_deref()
                .is_some_and(|read| read != pr.head_sha);
            let landed = match verification {
                Some(_) => body_done,
                None => head_moved,
            };
            landed.then(|| format!("#{number}"))
        }
    })
}

/// What recovery made of one write in doubt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The write's record before.
    pub entry: EffectLogEntry,
    /// `Applied` or `NotApplied`; `None` when the forge could not be asked
    /// (the write stays in doubt, and is looked for again before any resend).
    pub now: Option<EffectLogState>,
}

/// At start-up, after the store's restart recovery: every write still in
/// doubt whose run no worker is executing is looked for on its forge and
/// recorded as applied or not applied, with an event on its run saying so.
pub async fn resolve_in_doubt(store: &Arc<dyn RunStore>, forges: &ForgeResolver) -> Vec<Resolved> {
    let in_doubt = match store.effects_in_doubt().await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the forge writes in doubt");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in in_doubt {
        let run = match store.get_run(entry.run).await {
            // A live run's worker (another runner's) resolves its own.
            Ok(r) if r.state.is_active() => continue,
            Ok(r) => r,
            Err(e) => {
                tracing::error!(key = %entry.key, error = %e, "write in doubt: cannot read its run");
                continue;
            }
        };
        let now = resolve_one(store, forges, &run.repo, &entry).await;
        out.push(Resolved { entry, now });
    }
    out
}

async fn resolve_one(
    store: &Arc<dyn RunStore>,
    forges: &ForgeResolver,
    repo: &crate::forge::RepoRef,
    entry: &EffectLogEntry,
) -> Option<EffectLogState> {
    let note = |message: String| async move {
        if let Err(e) = store
            .append_event(
                entry.run,
                &EventKind::Proposal {
                    effect: entry.effect_id.clone(),
                },
                &message,
            )
            .await
        {
            tracing::error!(run = %entry.run, error = %e, "cannot record a write's recovery");
        }
    };
    let intent: Intent = match serde_json::from_value(entry.intent.clone()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(key = %entry.key, error = %e, "write in doubt: its stored intent is unreadable");
            return None;
        }
    };
    let Some(forge) = forges(repo) else {
        tracing::warn!(key = %entry.key, %repo, "write in doubt: no forge is configured for it");
        return None;
    };
    let found = match tokio::time::timeout(
        LOOKUP_LIMIT,
        find_on_forge(forge.as_ref(), &intent, &entry.key),
    )
    .await
    {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            let why = format!(
                "{}: the runner stopped while sending it and the forge cannot be asked now ({e}); \
                     it is looked for again before it is ever sent again",
                entry.effect_id
            );
            note(why).await;
            return None;
        }
        Err(_) => {
            note(format!(
                "{}: the runner stopped while sending it and the forge did not answer within {} s; \
                     it is looked for again before it is ever sent again",
                entry.effect_id,
                LOOKUP_LIMIT.as_secs()
            ))
            .await;
            return None;
        }
    };
    let (outcome, message, state) = match found {
        Some(at) => (
            EffectOutcome::Applied {
                at: Some(at.clone()),
            },
            format!(
                "{}: the runner stopped before recording it; the forge has it at {at} (key {}): \
                 recorded as applied, not sent again",
                entry.effect_id, entry.key
            ),
            EffectLogState::Applied,
        ),
        None => (
            EffectOutcome::NotApplied {
                why: "the runner stopped before the forge applied it".into(),
            },
            format!(
                "{}: the runner stopped before the forge applied it (key {} is not on the forge): \
                 recorded as not applied",
                entry.effect_id, entry.key
            ),
            EffectLogState::NotApplied,
        ),
    };
    if let Err(e) = store.finish_effect(&entry.key, outcome).await {
        tracing::error!(key = %entry.key, error = %e, "cannot record a resolved write");
        return None;
    }
    note(message).await;
    Some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_write_and_markers_ride_on_its_text() {
        let comment = |body: &str| Proposal::Comment {
            number: 3,
            body: body.into(),
        };
        let k = effect_key(RunId(12), "e3", &comment("hello"));
        assert!(k.starts_with("r12.e3."), "{k}");
        assert_eq!(k.len(), "r12.e3.".len() + 16);
        assert_eq!(k, effect_key(RunId(12), "e3", &comment("hello")));
        assert_ne!(k, effect_key(RunId(12), "e3", &comment("other")));
        assert_ne!(k, effect_key(RunId(12), "e4", &comment("hello")));
        assert_ne!(k, effect_key(RunId(13), "e3", &comment("hello")));
        match with_marker(&comment("hello"), &k) {
            Proposal::Comment { body, .. } => {
                assert!(body.starts_with("hello\n\n"), "{body}");
                assert!(body.ends_with(&marker(&k)), "{body}");
                // The marker is an HTML comment: the sanitizer hides it from models.
                assert_eq!(
                    crate::policy::sanitize::sanitize(&body).text.trim(),
                    "hello"
                );
            }
            other => panic!("{other:?}"),
        }
        let labels = Proposal::Labels {
            number: 3,
            add: vec!["bug".into()],
            remove: vec![],
        };
        assert_eq!(with_marker(&labels, &k), labels);
    }
}
