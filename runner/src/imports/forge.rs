//! `kiln:role/forge`: forge reads tagged with trust, and proposals.
//!
//! | WIT function            | capability                   | gate |
//! |-------------------------|------------------------------|------|
//! | `get-issue`             | `forge.read`                 | — |
//! | `get-pull-request`      | `forge.read`                 | — |
//! | `get-pull-request-diff` | `forge.read`                 | — |
//! | `propose-comment`       | `forge.comment`              | text size cap |
//! | `propose-labels`        | `forge.set-labels`           | — |
//! | `propose-pull-request`  | `forge.propose-pull-request` | text size cap; always a draft |
//! | `propose-review`        | `forge.review`               | text size cap; no approve verdict exists |
//!
//! Proposals are recorded in order; each gets an effect id that the run's
//! events and the operator's approvals refer to.
use wasmtime::component::HasSelf;

use super::RunState;
use crate::forge::{self as domain, ForgeSnapshot, Proposal};
use crate::plugin::capability::Capability;
use crate::plugin::wit::latest::kiln::role::forge::{
    self as wit, CommentProposal, DiffSide, Issue, LabelProposal, ProposalReceipt, ProposalState,
    PullRequest, PullRequestProposal, ReviewProposal, ReviewVerdict, Severity,
};
use crate::plugin::wit::latest::kiln::role::types::{RoleError, Trust};
use crate::session::EventKind;

/// Per-run state of the forge interface.
pub struct ForgeCtx {
    /// What the run may read.
    pub snapshot: ForgeSnapshot,
    /// What the run proposed, in order.
    pub proposals: Vec<Proposal>,
}

fn trust(trusted: bool) -> Trust {
    if trusted {
        Trust::Trusted
    } else {
        Trust::Untrusted
    }
}

fn to_wit_comments(comments: &[domain::Comment]) -> Vec<wit::Comment> {
    comments
        .iter()
        .map(|c| wit::Comment {
            id: c.id,
            author: c.author.clone(),
            trust: trust(c.trusted),
            body: c.body.clone(),
        })
        .collect()
}

impl RunState {
    fn propose(
        &mut self,
        what: &str,
        cap: Capability,
        texts: &[(&str, usize)],
        proposal: Proposal,
    ) -> Result<ProposalReceipt, RoleError> {
        self.require(cap, format_args!("{what}"))?;
        for (field, len) in texts {
            if *len > self.limits.max_forge_text_bytes {
                return Err(RoleError::LimitExceeded(format!(
                    "{what}: {field} is {len} bytes, the limit is {}",
                    self.limits.max_forge_text_bytes
                )));
            }
        }
        let effect_id = format!("e{}", self.forge.proposals.len() + 1);
        self.events.record(
            EventKind::Proposal {
                effect: effect_id.clone(),
            },
            format!("{what} recorded"),
        );
        self.forge.proposals.push(proposal);
        Ok(ProposalReceipt {
            effect_id,
            state: ProposalState::Applied,
            url: None,
        })
    }
}

impl wit::Host for RunState {
    async fn get_issue(&mut self, number: u64) -> wasmtime::Result<Result<Issue, RoleError>> {
        if let Err(e) = self.require(
            Capability::ForgeRead,
            format_args!("forge.get-issue #{number}"),
        ) {
            return Ok(Err(e));
        }
        let Some(i) = self.forge.snapshot.issues.get(&number) else {
            return Ok(Err(RoleError::NotFound(format!("issue #{number}"))));
        };
        Ok(Ok(Issue {
            number: i.number,
            title: i.title.clone(),
            body: i.body.clone(),
            author: i.author.clone(),
            trust: trust(i.trusted),
            labels: i.labels.clone(),
            open: i.open,
            comments: to_wit_comments(&i.comments),
        }))
    }

    async fn get_pull_request(
        &mut self,
        number: u64,
    ) -> wasmtime::Result<Result<PullRequest, RoleError>> {
        if let Err(e) = self.require(
            Capability::ForgeRead,
            format_args!("forge.get-pull-request #{number}"),
        ) {
            return Ok(Err(e));
        }
        let Some(p) = self.forge.snapshot.pull_requests.get(&number) else {
            return Ok(Err(RoleError::NotFound(format!("pull request #{number}"))));
        };
        Ok(Ok(PullRequest {
            number: p.issue.number,
            title: p.issue.title.clone(),
            body: p.issue.body.clone(),
            author: p.issue.author.clone(),
            trust: trust(p.issue.trusted),
            head_branch: p.head_branch.clone(),
            base_branch: p.base_branch.clone(),
            draft: p.draft,
            labels: p.issue.labels.clone(),
            comments: to_wit_comments(&p.issue.comments),
        }))
    }

    async fn get_pull_request_diff(
        &mut self,
        number: u64,
    ) -> wasmtime::Result<Result<String, RoleError>> {
        if let Err(e) = self.require(
            Capability::ForgeRead,
            format_args!("forge.get-pull-request-diff #{number}"),
        ) {
            return Ok(Err(e));
        }
        Ok(self
            .forge
            .snapshot
            .pull_requests
            .get(&number)
            .map(|p| p.diff.clone())
            .ok_or_else(|| RoleError::NotFound(format!("pull request #{number}"))))
    }

    async fn propose_comment(
        &mut self,
        p: CommentProposal,
    ) -> wasmtime::Result<Result<ProposalReceipt, RoleError>> {
        let what = format!("forge.comment on #{}", p.number);
        let len = p.body.len();
        Ok(self.propose(
            &what,
            Capability::ForgeComment,
            &[("body", len)],
            Proposal::Comment {
                number: p.number,
                body: p.body,
            },
        ))
    }

    async fn propose_labels(
        &mut self,
        p: LabelProposal,
    ) -> wasmtime::Result<Result<ProposalReceipt, RoleError>> {
        let what = format!(
            "forge.set-labels on #{} (+{:?} -{:?})",
            p.number, p.add, p.remove
        );
        Ok(self.propose(
            &what,
            Capability::ForgeSetLabels,
            &[],
            Proposal::Labels {
                number: p.number,
                add: p.add,
                remove: p.remove,
            },
        ))
    }

    async fn propose_pull_request(
        &mut self,
        p: PullRequestProposal,
    ) -> wasmtime::Result<Result<ProposalReceipt, RoleError>> {
        let texts = [
            ("title", p.title.len()),
            ("body", p.body.len()),
            ("commit message", p.commit_message.len()),
        ];
        Ok(self.propose(
            "forge.propose-pull-request",
            Capability::ForgeProposePullRequest,
            &texts,
            Proposal::PullRequest {
                title: p.title,
                body: p.body,
                commit_message: p.commit_message,
            },
        ))
    }

    async fn propose_review(
        &mut self,
        p: ReviewProposal,
    ) -> wasmtime::Result<Result<ProposalReceipt, RoleError>> {
        let total: usize = p.summary.len()
            + p.comments
                .iter()
                .map(|c| c.body.len() + c.path.len())
                .sum::<usize>();
        let what = format!("forge.review on #{}", p.number);
        let comments = p
            .comments
            .into_iter()
            .map(|c| domain::LineComment {
                path: c.path,
                line: c.line,
                new_side: c.side == DiffSide::Right,
                severity: match c.severity {
                    Severity::Critical => domain::Severity::Critical,
                    Severity::Important => domain::Severity::Important,
                    Severity::Suggestion => domain::Severity::Suggestion,
                    Severity::Nit => domain::Severity::Nit,
                },
                body: c.body,
            })
            .collect();
        Ok(self.propose(
            &what,
            Capability::ForgeReview,
            &[("review text", total)],
            Proposal::Review {
                number: p.number,
                request_changes: p.verdict == ReviewVerdict::RequestChanges,
                summary: p.summary,
                comments,
            },
        ))
    }
}

/// Link the `forge` interface.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<RunState>) -> wasmtime::Result<()> {
    wit::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)
}
