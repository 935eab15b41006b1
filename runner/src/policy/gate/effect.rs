//! What the gate decides on: an [`Effect`] of a run ([`EffectRequest`]) and
//! the [`Decision`] it gets.

use std::sync::Arc;

use super::{RunContext, StatusState};

/// Trust of the actor whose input started the run (by author association).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trust {
    /// Write, maintain or admin permission on the repository.
    Trusted,
    /// Anyone else; also the answer when the check failed.
    Untrusted,
}

impl Trust {
    /// The name used in policies (`principal.trust`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Untrusted => "untrusted",
        }
    }
}

/// The verdict of a pull request review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewEvent {
    /// Comments only.
    Comment,
    /// Asks for changes.
    RequestChanges,
    /// Approves; never allowed to an agent.
    Approve,
}

impl ReviewEvent {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Comment => "comment",
            Self::RequestChanges => "request-changes",
            Self::Approve => "approve",
        }
    }
}

/// One line comment of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewComment {
    /// File the comment is on.
    pub path: String,
    /// Line in the new version of the file.
    pub line: u32,
    /// Whether that line is part of the pull request's diff (host-computed).
    pub in_diff: bool,
    /// The comment text.
    pub body: String,
}

/// An effect a plugin proposes; one variant per gated import function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `workspace.read`: read a file.
    WorkspaceRead {
        /// Path relative to the workspace root.
        path: String,
    },
    /// `workspace.write`: write a file.
    WorkspaceWrite {
        /// Path relative to the workspace root.
        path: String,
        /// The bytes to write (scanned for secrets once Cedar allows the write).
        content: Vec<u8>,
    },
    /// `workspace.exec`: run a command in the sandbox.
    WorkspaceExec {
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// `model.complete`: one model call.
    ModelComplete {
        /// The model asked for.
        model: String,
    },
    /// `forge.comment`: comment on an issue or pull request.
    Comment {
        /// Issue or pull request number.
        number: u64,
        /// The comment text.
        body: String,
    },
    /// `forge.set-labels`: add labels to an issue or pull request.
    SetLabels {
        /// Issue or pull request number.
        number: u64,
        /// Label names.
        labels: Vec<String>,
    },
    /// `forge.propose-pull-request`: open a pull request.
    ProposePullRequest {
        /// Head branch.
        head: String,
        /// Base branch.
        base: String,
        /// Title.
        title: String,
        /// Body.
        body: String,
        /// Whether it is a draft.
        draft: bool,
    },
    /// `forge.update-pull-request`: push new commits to an open pull
    /// request's head branch (with a [`Effect::Push`] decided beside it) and
    /// replace its Verification section; no new pull request.
    UpdatePullRequest {
        /// Pull request number.
        number: u64,
        /// Its head branch, where the commits go.
        head: String,
        /// The new Verification section, if it changes.
        verification: Option<String>,
    },
    /// `forge.review`: review a pull request.
    Review {
        /// Pull request number.
        number: u64,
        /// The verdict.
        event: ReviewEvent,
        /// The summary.
        body: String,
        /// Line comments.
        comments: Vec<ReviewComment>,
    },
    /// `forge.reply`: reply in the thread of a review line comment.
    Reply {
        /// Pull request number.
        number: u64,
        /// The line comment answered.
        comment_id: u64,
        /// The reply text.
        body: String,
    },
    /// `forge.status`: set a commit status on a pull request's head.
    Status {
        /// Pull request number.
        number: u64,
        /// The status context; only `kiln/...` (an invariant).
        context: String,
        /// Its state.
        state: StatusState,
        /// One line for humans.
        description: String,
    },
    /// `forge.report`: post the role's report comment, or update it in place.
    Report {
        /// Issue or pull request number.
        number: u64,
        /// The report text.
        body: String,
    },
    /// `forge.merge`: merge a pull request; never allowed, here so that a
    /// request for it is logged as a denial rather than missing.
    Merge {
        /// Pull request number.
        number: u64,
    },
    /// `forge.push`: the host pushes the run's commits to a branch.
    Push {
        /// Branch pushed to.
        branch: String,
        /// Every path the pushed commits change.
        paths: Vec<String>,
    },
}

impl Effect {
    /// The Cedar action id (`Kiln::Action::"<this>"`).
    pub fn action(&self) -> &'static str {
        match self {
            Self::WorkspaceRead { .. } => "workspace.read",
            Self::WorkspaceWrite { .. } => "workspace.write",
            Self::WorkspaceExec { .. } => "workspace.exec",
            Self::ModelComplete { .. } => "model.complete",
            Self::Comment { .. } => "forge.comment",
            Self::SetLabels { .. } => "forge.set-labels",
            Self::ProposePullRequest { .. } => "forge.propose-pull-request",
            Self::UpdatePullRequest { .. } => "forge.update-pull-request",
            Self::Review { .. } => "forge.review",
            Self::Reply { .. } => "forge.reply",
            Self::Status { .. } => "forge.status",
            Self::Report { .. } => "forge.report",
            Self::Merge { .. } => "forge.merge",
            Self::Push { .. } => "forge.push",
        }
    }
}

/// One effect of one run, as the gate sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectRequest {
    /// The run (shared by all its requests).
    pub run: Arc<RunContext>,
    /// What it asks for.
    pub effect: Effect,
}

/// Who is at fault when an effect does not go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    /// The plugin asked for something malformed or never allowed.
    Guest,
    /// The policies (default or repo) did not allow it, or hold it.
    Policy,
    /// The host could not decide (fails closed).
    Host,
}

impl Blame {
    /// Name for the event log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::Policy => "policy",
            Self::Host => "host",
        }
    }
}

/// The gate's answer, with a reason fit for the run's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The effect may proceed.
    Allow {
        /// Names the effect and the policies that permitted it.
        reason: String,
    },
    /// The effect is refused.
    Deny {
        /// Names the effect and the policy ids or invariant that refused it.
        reason: String,
        /// Who is at fault.
        blame: Blame,
    },
    /// The effect waits for a human to approve it.
    Hold {
        /// Names the effect, the `@hold` policies and their reasons.
        reason: String,
    },
}

impl Decision {
    /// The reason, whatever the verdict.
    pub fn reason(&self) -> &str {
        match self {
            Self::Allow { reason } | Self::Deny { reason, .. } | Self::Hold { reason } => reason,
        }
    }

    /// Who decided or is at fault: policy for allow and hold.
    pub fn blame(&self) -> Blame {
        match self {
            Self::Deny { blame, .. } => *blame,
            Self::Allow { .. } | Self::Hold { .. } => Blame::Policy,
        }
    }

    /// Whether the effect may proceed now.
    pub fn is_allow(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }

    /// Whether the effect is refused.
    pub fn is_deny(&self) -> bool {
        matches!(self, Self::Deny { .. })
    }

    /// Whether the effect waits for approval.
    pub fn is_hold(&self) -> bool {
        matches!(self, Self::Hold { .. })
    }

    /// `allow`, `deny` or `hold`, for the event log.
    pub fn verdict(&self) -> &'static str {
        match self {
            Self::Allow { .. } => "allow",
            Self::Deny { .. } => "deny",
            Self::Hold { .. } => "hold",
        }
    }
}
