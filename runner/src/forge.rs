//! Forges (GitHub, Kiln's local forge): the host-side types of what a role
//! reads from a forge and what it proposes to it.
//!
//! Until a forge backend is attached, a run reads from a [`ForgeSnapshot`]
//! prepared by the host and its proposals are recorded, not sent.
use std::collections::HashMap;

use serde::Serialize;

/// A comment on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comment {
    /// Forge id.
    pub id: u64,
    /// Author login.
    pub author: String,
    /// Whether the author has write access (trusted) or not.
    pub trusted: bool,
    /// Body text as written (sanitized when handed to a plugin).
    pub body: String,
}

/// An issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// Number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Author login.
    pub author: String,
    /// Whether the author is trusted.
    pub trusted: bool,
    /// Labels.
    pub labels: Vec<String>,
    /// Open or closed.
    pub open: bool,
    /// Comments, oldest first.
    pub comments: Vec<Comment>,
}

/// A pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// The issue-like part (number, title, body, author, labels, comments).
    pub issue: Issue,
    /// Head branch.
    pub head_branch: String,
    /// Base branch.
    pub base_branch: String,
    /// Draft or not.
    pub draft: bool,
    /// Unified diff against the base.
    pub diff: String,
}

/// The forge data a run may read, prepared by the host before the run.
#[derive(Debug, Clone, Default)]
pub struct ForgeSnapshot {
    /// Issues by number.
    pub issues: HashMap<u64, Issue>,
    /// Pull requests by number.
    pub pull_requests: HashMap<u64, PullRequest>,
}

/// A severity tag on a review comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Must fix.
    Critical,
    /// Should fix.
    Important,
    /// Consider.
    Suggestion,
    /// Style.
    Nit,
}

/// A line comment in a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineComment {
    /// File path.
    pub path: String,
    /// Line number.
    pub line: u32,
    /// `true` for the new side of the diff.
    pub new_side: bool,
    /// Severity tag.
    pub severity: Severity,
    /// Body.
    pub body: String,
}

/// An effect a role asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Proposal {
    /// Comment on an issue or pull request.
    Comment {
        /// Target number.
        number: u64,
        /// Body.
        body: String,
    },
    /// Add and remove labels.
    Labels {
        /// Target number.
        number: u64,
        /// Labels to add.
        add: Vec<String>,
        /// Labels to remove.
        remove: Vec<String>,
    },
    /// Open a draft pull request from the run's branch.
    PullRequest {
        /// Title.
        title: String,
        /// Body.
        body: String,
        /// Commit message.
        commit_message: String,
    },
    /// Review a pull request.
    Review {
        /// Pull request number.
        number: u64,
        /// `true` to request changes, `false` for a neutral review.
        request_changes: bool,
        /// Summary.
        summary: String,
        /// Line comments.
        comments: Vec<LineComment>,
    },
}
