//! Forges (GitHub, Kiln's local forge): the [`Forge`] trait every backend
//! implements with the same semantics, and the host-side types of what a
//! role reads from a forge and what it proposes to it.
//!
//! A run reads from a [`ForgeSnapshot`] the host prepares before the run
//! (so a plugin never waits on, or learns the shape of, the forge's API);
//! its proposals pass the policy gate and only then become [`Forge`] calls
//! made by the host with the host's credentials.
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub mod diff;
pub mod github;
pub mod local;

/// A comment on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The head commit (what statuses are set on).
    #[serde(default)]
    pub head_sha: String,
    /// Conversations on lines of the diff, oldest first (empty in lists).
    #[serde(default)]
    pub review_threads: Vec<ReviewThread>,
    /// Whether the head branch lives in another repository (a fork, or a
    /// deleted one): Kiln never pushes there.
    #[serde(default)]
    pub head_from_fork: bool,
}

/// The issues a pull request body links with `Closes #N`, `Fixes #N` or
/// `Resolves #N` (any case, also `close`/`fixed`/…), in order, without
/// repeats: what the host puts in the forge snapshot of a run on the pull
/// request.
pub fn linked_issues(body: &str) -> Vec<u64> {
    const VERBS: [&str; 9] = [
        "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
    ];
    let lower = body.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let mut found = Vec::new();
    for pair in words.windows(2) {
        let verb = pair[0].trim_end_matches(':');
        if !VERBS.contains(&verb) {
            continue;
        }
        let Some(rest) = pair[1].strip_prefix('#') else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<u64>()
            && n > 0
            && !found.contains(&n)
        {
            found.push(n);
        }
    }
    found
}

/// The hidden marker on Kiln's own progress comment of run `run_id`: the
/// host leaves comments carrying a progress marker out of what a model
/// reads, and finds the comment by it after a crash.
pub fn progress_marker(run_id: &str) -> String {
    format!("<!-- {PROGRESS_MARKER} {run_id} -->")
}

/// What every progress marker starts with (see [`progress_marker`]).
pub const PROGRESS_MARKER: &str = "kiln:progress";

/// Whether a comment body is Kiln's bookkeeping (a progress comment).
/// Anyone could write the marker, but all it does is hide that comment from
/// the model, which grants nothing.
pub fn is_bookkeeping(body: &str) -> bool {
    body.contains(&format!("<!-- {PROGRESS_MARKER} "))
}

/// `body` with its `## Verification` section replaced by `section` (which
/// should start with its own `## Verification` heading). The section runs to
/// the next heading of level 1 or 2, or to a `---` rule, or to the end; when
/// the body has none, the new section goes before a trailing `---` footer or
/// at the end. Only that section changes: the rest of the body (the
/// `Closes #N` line above all) is kept as it was.
pub fn replace_verification(body: &str, section: &str) -> String {
    let section = section.trim_end();
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let is_heading = |l: &str| {
        let t = l.trim_start();
        t.starts_with("# ") || t.starts_with("## ")
    };
    let is_rule = |l: &str| l.trim() == "---";
    let start = lines.iter().position(|l| {
        l.trim_start()
            .strip_prefix("## ")
            .is_some_and(|h| h.trim().eq_ignore_ascii_case("verification"))
    });
    let (before, after) = match start {
        Some(i) => {
            let end = lines[i + 1..]
                .iter()
                .position(|l| is_heading(l) || is_rule(l))
                .map_or(lines.len(), |j| i + 1 + j);
            (lines[..i].concat(), lines[end..].concat())
        }
        None => match lines.iter().rposition(|l| is_rule(l)) {
            Some(i) => (lines[..i].concat(), lines[i..].concat()),
            None => (body.to_string(), String::new()),
        },
    };
    let mut out = before.trim_end().to_string();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(section);
    out.push('\n');
    if !after.is_empty() {
        out.push('\n');
        out.push_str(after.trim_start_matches('\n'));
    }
    out
}

/// A conversation on one line of a pull request's diff: a review line
/// comment and the replies to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewThread {
    /// Id of the thread's first line comment: what a reply answers.
    pub id: u64,
    /// File path.
    pub path: String,
    /// Line on the current diff; `None` when GitHub marks the comment
    /// outdated (its line no longer exists in the diff).
    pub line: Option<u32>,
    /// `true` for the new side of the diff.
    pub new_side: bool,
    /// Whether a human resolved the conversation. GitHub's REST API does
    /// not report it (only GraphQL does), so it is always `false` there.
    pub resolved: bool,
    /// The line comment and its replies, oldest first; trust is left
    /// `false` by the forge (the caller decides, as for issue comments).
    pub comments: Vec<Comment>,
}

/// Longest commit status description a forge keeps (GitHub's limit);
/// longer ones are cut on a character boundary.
pub const MAX_STATUS_DESCRIPTION_CHARS: usize = 140;

/// The state of a commit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusState {
    /// Checks are running.
    Pending,
    /// Checks passed.
    Success,
    /// Checks failed.
    Failure,
    /// Checks could not run.
    Error,
}

impl StatusState {
    /// The state as GitHub and policies spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusState::Pending => "pending",
            StatusState::Success => "success",
            StatusState::Failure => "failure",
            StatusState::Error => "error",
        }
    }

    /// The state named `s` (`pending`, `success`, `failure`, `error`).
    pub fn parse(s: &str) -> Option<Self> {
        [
            StatusState::Pending,
            StatusState::Success,
            StatusState::Failure,
            StatusState::Error,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for StatusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A commit status on a pull request's head commit (a check's verdict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    /// What reports it, e.g. `kiln/verification`; one status per context.
    pub context: String,
    /// Its state.
    pub state: StatusState,
    /// One line for humans (cut to [`MAX_STATUS_DESCRIPTION_CHARS`]).
    pub description: String,
}

/// `description` cut to [`MAX_STATUS_DESCRIPTION_CHARS`] characters. The
/// gate has redacted the whole text before this, so a cut cannot leave half
/// a secret unredacted.
pub fn status_description(description: &str) -> &str {
    match description.char_indices().nth(MAX_STATUS_DESCRIPTION_CHARS) {
        Some((i, _)) => &description[..i],
        None => description,
    }
}

/// The forge data a run may read, prepared by the host before the run.
#[derive(Debug, Clone, Default)]
pub struct ForgeSnapshot {
    /// Issues by number.
    pub issues: HashMap<u64, Issue>,
    /// Pull requests by number.
    pub pull_requests: HashMap<u64, PullRequest>,
}

/// Check that `number` on `forge` is what a run of `role` works on: a pull
/// request for a role that reads one (review, verification), else an issue.
/// The error says which it is instead, or that it does not exist.
pub async fn check_run_target(
    forge: &dyn Forge,
    role: crate::config::Role,
    number: u64,
) -> Result<(), ForgeError> {
    let wants_pr = role.reads_pull_request();
    let found = if wants_pr {
        forge.get_pull_request(number).await.map(drop)
    } else {
        forge.get_issue(number).await.map(drop)
    };
    match found {
        Err(ForgeError::NotFound(_)) => {}
        other => return other,
    }
    // Not the kind asked for: say whether it is the other kind or nothing.
    let other = if wants_pr {
        forge.get_issue(number).await.map(drop)
    } else {
        forge.get_pull_request(number).await.map(drop)
    };
    let (want, is) = if wants_pr {
        ("a pull request", "an issue")
    } else {
        ("an issue", "a pull request")
    };
    match other {
        Ok(()) => Err(ForgeError::Invalid(format!(
            "#{number} in {} is {is}; role {role} runs on {want}",
            forge.repo()
        ))),
        Err(ForgeError::NotFound(_)) => Err(ForgeError::NotFound(format!(
            "#{number} in {}: no issue or pull request has that number",
            forge.repo()
        ))),
        Err(e) => Err(e),
    }
}

impl ForgeSnapshot {
    /// The untrusted authors whose words the run reads (an issue's or pull
    /// request's title and body, a comment, a review-thread comment), sorted
    /// and without repeats. Call after the authors' trust is looked up. Kiln's
    /// own pull requests (a `kiln/*` branch of the repository itself) and
    /// what their author (Kiln's login) wrote on them are Kiln's gated
    /// output, not a stranger's words; a fork's pull request is not Kiln's.
    pub fn untrusted_authors(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut issue_words = |issue: &Issue, kiln: Option<&str>| {
            if !issue.trusted && Some(issue.author.as_str()) != kiln {
                out.insert(issue.author.clone());
            }
            for c in &issue.comments {
                if !c.trusted && Some(c.author.as_str()) != kiln {
                    out.insert(c.author.clone());
                }
            }
        };
        for issue in self.issues.values() {
            issue_words(issue, None);
        }
        let mut thread_authors = Vec::new();
        for pr in self.pull_requests.values() {
            let own = !pr.head_from_fork && check_kiln_branch(&pr.head_branch).is_ok();
            let kiln = own.then_some(pr.issue.author.as_str());
            issue_words(&pr.issue, kiln);
            for c in pr.review_threads.iter().flat_map(|t| &t.comments) {
                if !c.trusted && Some(c.author.as_str()) != kiln {
                    thread_authors.push(c.author.clone());
                }
            }
        }
        out.extend(thread_authors);
        out.into_iter().collect()
    }
}

/// The text of a review that requests changes on a pull request its own
/// author reviews (Kiln reviewing the pull request it opened): GitHub refuses
/// that event (422), so both forges post a comment review saying so first.
pub fn changes_requested_in_text(body: &str) -> String {
    format!("**Changes requested.**\n\n{body}")
}

/// A severity tag on a review comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::fmt::Display for Severity {
    /// As reviews write it: `CRITICAL`, `IMPORTANT`, `SUGGESTION`, `NIT`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Critical => "CRITICAL",
            Severity::Important => "IMPORTANT",
            Severity::Suggestion => "SUGGESTION",
            Severity::Nit => "NIT",
        })
    }
}

/// A line comment in a review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Reply in the thread of a review line comment.
    Reply {
        /// Pull request number.
        number: u64,
        /// The thread answered: the id of its first line comment.
        comment_id: u64,
        /// Body.
        body: String,
    },
    /// Push new commits to the run's own pull request (the one whose review
    /// it answers), and refresh that pull request's `## Verification`
    /// section; no new pull request is opened.
    PullRequestUpdate {
        /// The pull request.
        number: u64,
        /// Commit message for the workspace changes.
        commit_message: String,
        /// The new `## Verification` section, if it is to change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verification: Option<String>,
    },
    /// Set a commit status on a pull request's head commit.
    Status {
        /// Pull request number.
        number: u64,
        /// The status context (`kiln/...`).
        context: String,
        /// Its state.
        state: StatusState,
        /// One line for humans.
        description: String,
    },
    /// Post the role's report comment, or update the one it posted before.
    Report {
        /// Issue or pull request number.
        number: u64,
        /// The role whose report it is, set by the host (never the plugin):
        /// the hidden marker that finds the earlier report names it.
        role: String,
        /// Body, without the marker.
        body: String,
    },
}

/// The hidden first line of a role's report comment, by which the host finds
/// the report again to update it in place.
pub fn report_marker(role: &str) -> String {
    format!("<!-- kiln:report:{role} -->")
}

/// The id of `role`'s earlier report among `comments`: the newest comment
/// written by `own_login` (Kiln itself) that starts with the role's marker.
/// A marker in anyone else's comment is ignored, so nobody can make Kiln
/// edit (or stop updating) a comment of theirs by quoting it.
pub fn find_report(comments: &[Comment], own_login: &str, role: &str) -> Option<u64> {
    let marker = report_marker(role);
    comments
        .iter()
        .rev()
        .find(|c| c.author == own_login && c.body.starts_with(&marker))
        .map(|c| c.id)
}

/// What became of a proposal after the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum EffectState {
    /// Allowed, and recorded only: the run has no forge attached.
    Recorded,
    /// Allowed and applied to the forge.
    Applied {
        /// Where it landed (`#12`, a URL), when the forge says.
        url: Option<String>,
    },
    /// Held for a human to approve; the reason is the gate's.
    Held {
        /// Why it is held.
        reason: String,
        /// For a pull request: the commit made when it was proposed, so
        /// the human approves exactly what was proposed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        /// What the human should look at before approving: each concern
        /// with the diff of the files it is about.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        concerns: Vec<HoldConcern>,
    },
}

/// One reason a held effect needs a human's eyes, with the diff of the files
/// concerned (a protected path, a detector's finding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldConcern {
    /// What raised it (`protected-paths`, a detector's name).
    pub source: String,
    /// Why, for people.
    pub reason: String,
    /// The files concerned.
    pub paths: Vec<String>,
    /// Their diff against the run's base commit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

/// One proposal of a run that the gate let through (applied, recorded or
/// held). Denied proposals are only in the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectRecord {
    /// The effect id the plugin's receipt, the events and approvals use.
    pub effect_id: String,
    /// What was proposed, with its texts redacted.
    pub proposal: Proposal,
    /// What became of it.
    pub state: EffectState,
}

/// Finds the forge of a repository (`None`: Kiln does not serve it). The
/// intake checks trust through it and the runner service runs through it.
pub type ForgeResolver =
    std::sync::Arc<dyn Fn(&RepoRef) -> Option<std::sync::Arc<dyn Forge>> + Send + Sync>;

/// A label added to or removed from an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelEvent {
    /// The label.
    pub label: String,
    /// Added (true) or removed (false).
    pub added: bool,
    /// Who did it.
    pub actor: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
}

/// How an issue's or pull request's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateChange {
    /// Closed (a merged pull request is closed too; GitHub says both).
    Closed,
    /// A pull request was merged.
    Merged,
    /// Opened again after being closed.
    Reopened,
}

/// An issue or pull request closed, merged or reopened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateEvent {
    /// What happened.
    pub change: StateChange,
    /// Who did it.
    pub actor: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
}

/// Whether `events` (oldest first) end with the item closed without a
/// merge: a close after the last reopening, and no merge ever.
pub fn closed_unmerged(events: &[StateEvent]) -> Option<&StateEvent> {
    if events.iter().any(|e| e.change == StateChange::Merged) {
        return None;
    }
    events
        .iter()
        .rev()
        .find(|e| e.change != StateChange::Merged)
        .filter(|e| e.change == StateChange::Closed)
}

/// A repository on a forge, `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepoRef {
    /// Owner (user or organisation; `local` on the local forge).
    pub owner: String,
    /// Repository name.
    pub name: String,
}

impl RepoRef {
    /// `owner/name` parsed, with a message naming what is wrong otherwise.
    pub fn parse(s: &str) -> Result<Self, ForgeError> {
        let valid = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match s.split_once('/') {
            Some((o, n)) if valid(o) && valid(n) => Ok(RepoRef {
                owner: o.to_string(),
                name: n.to_string(),
            }),
            _ => Err(ForgeError::Invalid(format!(
                "repository {s:?} is not OWNER/NAME (letters, digits, '-', '_', '.')"
            ))),
        }
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// An actor's permission on a repository, as GitHub names the levels.
/// Ordered: a higher level includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// No access (or not a collaborator).
    None,
    /// Read.
    Read,
    /// Triage (labels, no push).
    Triage,
    /// Write (push).
    Write,
    /// Maintain.
    Maintain,
    /// Admin.
    Admin,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::None => "no",
            Permission::Read => "read",
            Permission::Triage => "triage",
            Permission::Write => "write",
            Permission::Maintain => "maintain",
            Permission::Admin => "admin",
        })
    }
}

/// A label change for people: `+bug +needs-info -question`.
pub fn describe_labels(add: &[String], remove: &[String]) -> String {
    let added = add.iter().map(|l| format!("+{l}"));
    let removed = remove.iter().map(|l| format!("-{l}"));
    let all: Vec<String> = added.chain(removed).collect();
    if all.is_empty() {
        "no change".into()
    } else {
        all.join(" ")
    }
}

impl Permission {
    /// Whether this level may trigger runs: write, maintain or admin.
    pub fn may_trigger(self) -> bool {
        self >= Permission::Write
    }
}

/// Which issues or pull requests to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateFilter {
    /// Open ones only.
    #[default]
    Open,
    /// Closed ones only.
    Closed,
    /// Both.
    All,
}

/// A new issue (the local forge's `kiln issue new`; GitHub for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIssue {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Labels to apply at creation.
    pub labels: Vec<String>,
}

/// A new pull request; Kiln only ever opens drafts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPullRequest {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// Branch with the changes (always `kiln/*` for Kiln's own PRs).
    pub head: String,
    /// Branch to merge into.
    pub base: String,
}

/// A review as sent to the forge. There is no approve: Kiln never approves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReview {
    /// `true` requests changes, `false` is a neutral comment review.
    pub request_changes: bool,
    /// The summary body.
    pub body: String,
    /// Line comments, each on a line of the pull request's diff.
    pub comments: Vec<LineComment>,
}

/// A review as read back from the forge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Forge id.
    pub id: u64,
    /// Author login.
    pub author: String,
    /// `COMMENTED`, `CHANGES_REQUESTED`, `APPROVED` (never by Kiln), `DISMISSED`.
    pub state: String,
    /// Summary body.
    pub body: String,
    /// Line comments.
    pub comments: Vec<LineComment>,
}

/// Why a forge call failed. Messages name the call and the forge's reason.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The issue, pull request, comment or repository does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The credentials were refused (401) or lack a permission (403).
    #[error("refused by the forge: {0}")]
    Unauthorized(String),
    /// The forge rejected the request's content (GitHub's 422).
    #[error("rejected by the forge: {0}")]
    Rejected(String),
    /// Rate limited, and retries with back-off did not get through.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// The forge failed (5xx), and retries did not get through.
    #[error("forge unavailable: {0}")]
    Unavailable(String),
    /// A malformed argument, refused before any request was made.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Git (push, fetch) failed.
    #[error("git: {0}")]
    Git(String),
    /// The local forge's store failed.
    #[error("local forge store: {0}")]
    Store(String),
}

/// One forge repository, as the host uses it. GitHub and the local forge
/// implement it with the same semantics (checked by one shared test suite,
/// `tests/forge.rs`). The host makes these calls with its own credentials,
/// after the policy gate; nothing here is reachable from a sandbox.
#[async_trait::async_trait]
pub trait Forge: Send + Sync {
    /// Which repository this is.
    fn repo(&self) -> &RepoRef;
    /// The repository's default branch.
    async fn default_branch(&self) -> Result<String, ForgeError>;
    /// A URL `git fetch` can clone the repository from, and the HTTP
    /// `Authorization` header value to send with it (host-side only).
    async fn git_remote(&self) -> Result<GitRemote, ForgeError>;
    /// Push `commit` of the local repository at `local` to `branch`.
    /// Force-pushes: a run owns its `kiln/*` branch.
    async fn push(&self, local: &Path, commit: &str, branch: &str) -> Result<(), ForgeError>;

    /// One issue with its comments (trust left `false`: the caller decides).
    async fn get_issue(&self, number: u64) -> Result<Issue, ForgeError>;
    /// Issues (not pull requests), newest first.
    async fn list_issues(&self, state: StateFilter) -> Result<Vec<Issue>, ForgeError>;
    /// Open an issue; returns its number.
    async fn create_issue(&self, issue: NewIssue) -> Result<u64, ForgeError>;
    /// Comment on an issue or pull request; returns the comment id.
    async fn comment(&self, number: u64, body: &str) -> Result<u64, ForgeError>;
    /// Replace a comment's body (the per-run progress comment).
    async fn edit_comment(&self, comment_id: u64, body: &str) -> Result<(), ForgeError>;
    /// Add labels to an issue or pull request.
    async fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError>;
    /// Remove one label; removing an absent label is not an error.
    async fn remove_label(&self, number: u64, label: &str) -> Result<(), ForgeError>;

    /// One pull request with its comments and diff.
    async fn get_pull_request(&self, number: u64) -> Result<PullRequest, ForgeError>;
    /// Pull requests, newest first (diffs left empty).
    async fn list_pull_requests(&self, state: StateFilter) -> Result<Vec<PullRequest>, ForgeError>;
    /// Replace a pull request's body (answering a review refreshes its
    /// Verification section).
    async fn edit_pull_request_body(&self, number: u64, body: &str) -> Result<(), ForgeError>;
    /// Open a draft pull request; returns its number.
    async fn create_draft_pull_request(&self, pr: NewPullRequest) -> Result<u64, ForgeError>;
    /// Post a review; returns its id.
    async fn create_review(&self, number: u64, review: NewReview) -> Result<u64, ForgeError>;
    /// Reviews on a pull request, oldest first.
    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, ForgeError>;
    /// Reply in the thread of line comment `comment_id` (a thread's id: its
    /// first comment; GitHub does not take replies to replies) on pull
    /// request `number`; returns the new comment's id. NotFound when the
    /// pull request or the comment does not exist, or the comment is not on it.
    async fn reply_to_review_comment(
        &self,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<u64, ForgeError>;
    /// Set a commit status on the pull request's current head commit; a
    /// later status with the same context replaces it.
    async fn set_status(&self, number: u64, status: &CommitStatus) -> Result<(), ForgeError>;
    /// The latest status of each context on the pull request's head
    /// commit, sorted by context.
    async fn list_statuses(&self, number: u64) -> Result<Vec<CommitStatus>, ForgeError>;
    /// Who added and removed which labels on issue or pull request
    /// `number`, oldest first: the outer loop's evidence of maintainers
    /// correcting a triage.
    async fn label_events(&self, number: u64) -> Result<Vec<LabelEvent>, ForgeError>;
    /// Who closed, merged or reopened issue or pull request `number`, and
    /// when, oldest first: the outer loop's evidence of Kiln's pull
    /// requests closed without a merge.
    async fn state_events(&self, number: u64) -> Result<Vec<StateEvent>, ForgeError>;

    /// The login Kiln's own comments are written as (the App's bot, the
    /// token's user, the local forge's actor): how the host recognises its
    /// own comments, e.g. a role's earlier report.
    async fn own_login(&self) -> Result<String, ForgeError>;

    /// `login`'s permission on the repository. Errors must not be read as a
    /// permission: callers fail closed.
    async fn permission(&self, login: &str) -> Result<Permission, ForgeError>;
}

/// Where and how the host fetches a repository.
#[derive(Clone)]
pub struct GitRemote {
    /// `https://…` or a local path.
    pub url: String,
    /// `Authorization` header value for HTTP remotes; never logged.
    pub authorization: Option<String>,
}

impl fmt::Debug for GitRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GitRemote")
            .field("url", &self.url)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Refuse a branch Kiln may not push to: only `kiln/<name>` with a plain
/// name (no `..`, no control characters, nothing git would reinterpret).
/// Both forges call it before pushing; the policy gate checks it too.
pub fn check_kiln_branch(branch: &str) -> Result<(), ForgeError> {
    let rest = branch.strip_prefix("kiln/").unwrap_or("");
    let plain = !rest.is_empty()
        && rest.len() <= 200
        && !rest.contains("..")
        && !rest.ends_with('/')
        && !rest.ends_with(".lock")
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if plain {
        Ok(())
    } else {
        Err(ForgeError::Invalid(format!(
            "branch {branch:?}: Kiln only pushes to kiln/<name> branches"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_description_is_cut_on_a_character_boundary() {
        let long = "ü".repeat(MAX_STATUS_DESCRIPTION_CHARS + 1);
        let cut = status_description(&long);
        assert_eq!(cut.chars().count(), MAX_STATUS_DESCRIPTION_CHARS);
        assert_eq!(status_description("3 checks passed"), "3 checks passed");
    }

    // Proposals are stored (effect records) and shown: the wire names are
    // part of the store's format.
    #[test]
    fn reply_and_status_proposals_serialize_like_the_others() {
        let status = Proposal::Status {
            number: 7,
            context: "kiln/verification".into(),
            state: StatusState::Success,
            description: "passed".into(),
        };
        let json = serde_json::to_value(&status).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"kind": "status", "number": 7, "context": "kiln/verification",
                               "state": "success", "description": "passed"})
        );
        let reply = Proposal::Reply {
            number: 7,
            comment_id: 42,
            body: "done".into(),
        };
        let json = serde_json::to_value(&reply).expect("serialize");
        assert_eq!(json["kind"], "reply");
        for p in [status, reply] {
            let back: Proposal =
                serde_json::from_value(serde_json::to_value(&p).expect("serialize"))
                    .expect("deserialize");
            assert_eq!(back, p);
        }
        assert_eq!(StatusState::Failure.to_string(), "failure");
    }

    #[test]
    fn linked_issues_are_read_from_closing_keywords_only() {
        assert_eq!(
            linked_issues("Closes #4\n\nAlso fixes #9, see #12. Resolves: #4\nFIXED #7."),
            vec![4, 9, 7]
        );
        assert_eq!(linked_issues("See #3 and issue #5"), Vec::<u64>::new());
        assert_eq!(linked_issues("closes #0 closes #x"), Vec::<u64>::new());
    }

    #[test]
    fn only_the_verification_section_is_replaced() {
        let body = "Closes #4\n\nSummary.\n\n## Verification\n\nold\n- `x` — exit code 1\n\n## Notes\n\nkeep\n---\nfooter";
        let new = replace_verification(body, "## Verification\n\nnew\n");
        assert_eq!(
            new,
            "Closes #4\n\nSummary.\n\n## Verification\n\nnew\n\n## Notes\n\nkeep\n---\nfooter"
        );
        // Kiln's own body: the section runs to the footer rule.
        let body = "Closes #4\n\n## Verification\n\nold\n\n---\nWritten by Kiln.";
        assert_eq!(
            replace_verification(body, "## Verification\n\nnew"),
            "Closes #4\n\n## Verification\n\nnew\n\n---\nWritten by Kiln."
        );
        // No section yet: before the footer, or at the end.
        assert_eq!(
            replace_verification("Closes #4\n---\nfoot", "## Verification\n\nnew"),
            "Closes #4\n\n## Verification\n\nnew\n\n---\nfoot"
        );
        assert_eq!(
            replace_verification("Closes #4", "## Verification\n\nnew"),
            "Closes #4\n\n## Verification\n\nnew\n"
        );
    }

    #[test]
    fn progress_comments_are_recognised_by_their_marker() {
        let body = format!("Kiln run `r3` started.\n{}", progress_marker("r3"));
        assert!(is_bookkeeping(&body));
        assert!(!is_bookkeeping("Kiln run `r3` started."));
    }
}
