//! Typed webhook events: the fields Kiln routes on, parsed from GitHub's
//! payloads. Unknown actions and fields are tolerated (GitHub adds them);
//! unknown event names are reported as such, not as errors.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::forge::RepoRef;

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Actor {
    /// Login.
    pub login: String,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl Actor {
    /// True for GitHub Apps and other bots: they never trigger runs.
    pub fn is_bot(&self) -> bool {
        self.kind.eq_ignore_ascii_case("bot") || self.login.ends_with("[bot]")
    }
}

/// A repository, as named in a payload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// `owner/name`.
    pub full_name: String,
}

impl Repository {
    /// The repository as Kiln names it.
    pub fn repo(&self) -> Result<RepoRef, String> {
        RepoRef::parse(&self.full_name).map_err(|e| e.to_string())
    }
}

/// A label.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Label {
    /// Its name.
    pub name: String,
}

/// The issue part of `issues` and `issue_comment` payloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Issue {
    /// Number.
    pub number: u64,
    /// Author.
    pub user: Actor,
    /// Present when the issue is a pull request (its contents are not used).
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
    /// `open` or `closed` (absent in some payloads).
    #[serde(default)]
    pub state: Option<String>,
    /// Its labels when the event happened.
    #[serde(default)]
    pub labels: Vec<Label>,
}

impl Issue {
    /// True when the "issue" is a pull request (comments on PRs arrive as issue comments).
    pub fn is_pull_request(&self) -> bool {
        self.pull_request.as_ref().is_some_and(|v| !v.is_null())
    }

    /// True when the payload says the issue is closed.
    pub fn is_closed(&self) -> bool {
        self.state.as_deref() == Some("closed")
    }

    /// True when the issue carried `label` when the event happened.
    pub fn has_label(&self, label: &str) -> bool {
        self.labels.iter().any(|l| l.name == label)
    }
}

/// A comment (issue comment or pull request review comment).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Comment {
    /// Forge id.
    pub id: u64,
    /// Text as written (sanitized before use).
    #[serde(default)]
    pub body: Option<String>,
    /// Author.
    pub user: Actor,
}

/// One end of a pull request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Branch {
    /// Branch name.
    #[serde(rename = "ref")]
    pub name: String,
    /// The repository holding it; `null` when a fork was deleted.
    #[serde(default)]
    pub repo: Option<Repository>,
}

/// The pull request part of `pull_request*` payloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequest {
    /// Number.
    pub number: u64,
    /// Source branch.
    pub head: Branch,
    /// Target branch.
    pub base: Branch,
    /// Author.
    pub user: Actor,
}

/// `issues`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssuesEvent {
    /// `opened`, `labeled`, … (any string).
    pub action: String,
    /// The issue.
    pub issue: Issue,
    /// The label, for `labeled` and `unlabeled`.
    #[serde(default)]
    pub label: Option<Label>,
    /// Repository.
    pub repository: Repository,
    /// Who caused it.
    pub sender: Actor,
}

/// `issue_comment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssueCommentEvent {
    /// `created`, `edited`, `deleted`.
    pub action: String,
    /// The issue or pull request commented on.
    pub issue: Issue,
    /// The comment.
    pub comment: Comment,
    /// Repository.
    pub repository: Repository,
    /// Who caused it.
    pub sender: Actor,
}

/// `pull_request`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestEvent {
    /// `opened`, `labeled`, … (any string).
    pub action: String,
    /// The pull request.
    pub pull_request: PullRequest,
    /// The label, for `labeled` and `unlabeled`.
    #[serde(default)]
    pub label: Option<Label>,
    /// Repository.
    pub repository: Repository,
    /// Who caused it.
    pub sender: Actor,
}

/// The review part of `pull_request_review` payloads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Review {
    /// Forge id.
    pub id: u64,
    /// `approved`, `changes_requested`, `commented`, `dismissed` (any case).
    #[serde(default)]
    pub state: String,
    /// Author.
    pub user: Actor,
}

impl Review {
    /// True when the reviewer requested changes.
    pub fn requests_changes(&self) -> bool {
        self.state.eq_ignore_ascii_case("changes_requested")
    }
}

/// `pull_request_review`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestReviewEvent {
    /// `submitted`, `edited`, `dismissed`.
    pub action: String,
    /// The review.
    pub review: Review,
    /// The pull request.
    pub pull_request: PullRequest,
    /// Repository.
    pub repository: Repository,
    /// Who caused it.
    pub sender: Actor,
}

/// `pull_request_review_comment`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullRequestReviewCommentEvent {
    /// `created`, `edited`, `deleted`.
    pub action: String,
    /// The pull request.
    pub pull_request: PullRequest,
    /// The comment.
    pub comment: Comment,
    /// Repository.
    pub repository: Repository,
    /// Who caused it.
    pub sender: Actor,
}

/// `push`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PushEvent {
    /// The full ref pushed (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Repository.
    pub repository: Repository,
}

/// `installation` and `installation_repositories`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationEvent {
    /// `created`, `deleted`, `added`, … (any string).
    pub action: String,
    /// Who caused it.
    pub sender: Actor,
}

/// `ping`, sent when a webhook is created.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PingEvent {
    /// GitHub's zen line.
    #[serde(default)]
    pub zen: Option<String>,
    /// The webhook's id.
    #[serde(default)]
    pub hook_id: Option<u64>,
}

/// A webhook event Kiln understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// `ping`.
    Ping(PingEvent),
    /// `issues`.
    Issues(IssuesEvent),
    /// `issue_comment`.
    IssueComment(IssueCommentEvent),
    /// `pull_request`.
    PullRequest(PullRequestEvent),
    /// `pull_request_review`.
    PullRequestReview(PullRequestReviewEvent),
    /// `pull_request_review_comment`.
    PullRequestReviewComment(PullRequestReviewCommentEvent),
    /// `push`.
    Push(PushEvent),
    /// `installation`.
    Installation(InstallationEvent),
    /// `installation_repositories`.
    InstallationRepositories(InstallationEvent),
}

/// A parsed delivery body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per webhook; boxing buys nothing"
)]
pub enum Parsed {
    /// One of the events Kiln handles (boxed: payload structs are large).
    Known(Box<WebhookEvent>),
    /// Valid JSON for an event Kiln does not handle (its name).
    Unknown(String),
}

/// The events [`parse`] turns into [`WebhookEvent`]s.
pub const KNOWN_EVENTS: [&str; 9] = [
    "ping",
    "issues",
    "issue_comment",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "push",
    "installation",
    "installation_repositories",
];

/// Parses a delivery body for the event named by `X-GitHub-Event`. The
/// error names the event and serde's reason with its position.
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, String> {
    fn typed<'a, T: Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T, String> {
        serde_json::from_slice(body).map_err(|e| format!("{event} payload: {e}"))
    }
    let known = match event {
        "ping" => WebhookEvent::Ping(typed(event, body)?),
        "issues" => WebhookEvent::Issues(typed(event, body)?),
        "issue_comment" => WebhookEvent::IssueComment(typed(event, body)?),
        "pull_request" => WebhookEvent::PullRequest(typed(event, body)?),
        "pull_request_review" => WebhookEvent::PullRequestReview(typed(event, body)?),
        "pull_request_review_comment" => {
            WebhookEvent::PullRequestReviewComment(typed(event, body)?)
        }
        "push" => WebhookEvent::Push(typed(event, body)?),
        "installation" => WebhookEvent::Installation(typed(event, body)?),
        "installation_repositories" => WebhookEvent::InstallationRepositories(typed(event, body)?),
        other => {
            typed::<IgnoredAny>(other, body)?;
            return Ok(Parsed::Unknown(other.to_string()));
        }
    };
    Ok(Parsed::Known(Box::new(known)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bots_are_recognised_by_type_or_suffix() {
        let a = |login: &str, kind: &str| Actor {
            login: login.into(),
            kind: kind.into(),
        };
        assert!(a("dependabot[bot]", "Bot").is_bot());
        assert!(a("kiln[bot]", "").is_bot());
        assert!(a("robot", "Bot").is_bot());
        assert!(!a("alice", "User").is_bot());
        assert!(!a("bot-alice", "User").is_bot());
    }

    #[test]
    fn malformed_bodies_are_errors_naming_the_event() {
        let err =
            parse("issues", br#"{"action":"opened","issue":{"number":1"#).expect_err("truncated");
        assert!(err.starts_with("issues payload: EOF"), "{err}");
        let err = parse("issues", br#"{"action":"opened"}"#).expect_err("missing issue");
        assert!(err.contains("missing field `issue`"), "{err}");
        let err =
            parse("issues", br#"{"action":"opened","issue":{"number":-1}}"#).expect_err("negative");
        assert!(err.starts_with("issues payload"), "{err}");
        assert_eq!(
            parse("star", br#"{"action":"created"}"#),
            Ok(Parsed::Unknown("star".into()))
        );
        assert!(
            parse("star", b"{").is_err(),
            "unknown events still need valid JSON"
        );
    }
}
