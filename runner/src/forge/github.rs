//! The GitHub forge: [`Forge`] over GitHub's REST API (octocrab's transport)
//! and `git` over HTTPS for pushes.
//!
//! One [`GitHub`] client holds the credentials and the installation-token
//! cache and is shared by every repository's [`GitHubForge`]:
//!
//! ```no_run
//! # async fn f(config: &kiln::config::KilnConfig) -> Result<(), kiln::forge::ForgeError> {
//! use kiln::forge::{Forge, RepoRef, github::GitHub};
//! let github = GitHub::from_config(config.github.as_ref().expect("[github]"), &config.secrets)?;
//! let forge = github.forge(RepoRef::parse("octo/repo")?);
//! let branch = forge.default_branch().await?;
//! # Ok(()) }
//! ```
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use octocrab::secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{
    Comment, CommitStatus, Forge, ForgeError, GitRemote, Issue, LabelEvent, LineComment, NewIssue,
    NewPullRequest, NewReview, Permission, PullRequest, RepoRef, Review, ReviewThread, Severity,
    StateChange, StateEvent, StateFilter, StatusState, status_description,
};
use crate::config::SecretConfig;

pub mod app;
mod auth;
mod config;
mod http;
mod push;

pub use auth::Credentials;
pub use config::{DEFAULT_API_URL, GitHubConfig, GitHubConfigError};
pub use http::RetryPolicy;
pub use push::{BRANCH_PREFIX, check_branch};

use http::{ACCEPT_DIFF, ACCEPT_JSON, Api, Request, Unsure};

/// Tuning for a [`GitHub`] client; `Default` is production's.
#[derive(Debug, Clone)]
pub struct Options {
    /// Retries and rate-limit waits.
    pub retry: RetryPolicy,
    /// How long before expiry an installation token is replaced.
    pub token_refresh_margin: Duration,
    /// Base URL repositories are fetched from as `{git_url}/{owner}/{name}.git`;
    /// `None` uses the `clone_url` GitHub reports.
    pub git_url: Option<String>,
    /// The `git` program pushes run.
    pub git: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            token_refresh_margin: Duration::from_secs(300),
            git_url: None,
            git: PathBuf::from("git"),
        }
    }
}

impl Options {
    /// The options `[github]` sets.
    pub fn from_config(config: &GitHubConfig) -> Self {
        Self {
            retry: RetryPolicy {
                max_attempts: config.max_attempts.max(1),
                backoff: Duration::from_millis(config.backoff_ms),
                max_rate_limit_wait: Duration::from_secs(config.max_rate_limit_wait_secs),
            },
            token_refresh_margin: Duration::from_secs(config.token_refresh_margin_secs),
            git_url: config.git_url.clone(),
            ..Self::default()
        }
    }
}

/// A GitHub API client with its credentials; hands out one [`GitHubForge`] per repository.
pub struct GitHub {
    api: Api,
    auth: auth::Authenticator,
    git_url: Option<String>,
    git: PathBuf,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("api", &self.api.base())
            .field("credentials", &"<redacted>")
            .finish()
    }
}

impl GitHub {
    /// A client for the API at `api_url` authenticating with `credentials`.
    pub fn new(
        api_url: &str,
        credentials: Credentials,
        options: Options,
    ) -> Result<Arc<Self>, ForgeError> {
        Ok(Arc::new(Self {
            api: Api::new(api_url, options.retry)?,
            auth: auth::Authenticator::new(credentials, options.token_refresh_margin),
            git_url: options.git_url.map(|u| u.trim_end_matches('/').to_string()),
            git: options.git,
        }))
    }

    /// The client `[github]` describes, its secrets read from their sources.
    pub fn from_config(
        config: &GitHubConfig,
        secrets: &[SecretConfig],
    ) -> Result<Arc<Self>, ForgeError> {
        config
            .validate(secrets)
            .map_err(|e| ForgeError::Invalid(e.to_string()))?;
        let credentials = Credentials::from_config(config, secrets)?;
        Self::new(&config.api_url, credentials, Options::from_config(config))
    }

    /// The forge for one repository.
    pub fn forge(self: &Arc<Self>, repo: RepoRef) -> GitHubForge {
        GitHubForge {
            github: Arc::clone(self),
            repo,
        }
    }
}

/// One GitHub repository as a [`Forge`].
#[derive(Debug, Clone)]
pub struct GitHubForge {
    github: Arc<GitHub>,
    repo: RepoRef,
}

impl GitHubForge {
    /// True when pull request `number` was opened by the login Kiln acts as.
    async fn authored_by_self(&self, number: u64) -> Result<bool, ForgeError> {
        let author = login(self.pull(number).await?.user);
        Ok(author.eq_ignore_ascii_case(&self.own_login().await?))
    }

    /// Sends `req` with the repository's token. If GitHub refuses a
    /// renewable token (revoked, installation changed), drops it and tries
    /// once more with a fresh one.
    async fn send_req(&self, req: &Request<'_>) -> Result<http::Reply, ForgeError> {
        self.send_req_with(req, Unsure::Retry).await
    }

    async fn send_req_with(
        &self,
        req: &Request<'_>,
        unsure: Unsure,
    ) -> Result<http::Reply, ForgeError> {
        let token = self.installation_token().await?;
        let api = &self.github.api;
        match api.send_with(req, &auth::bearer(&token), unsure).await {
            Err(e) if self.renewed(&e).await => {
                let token = self.installation_token().await?;
                api.send_with(req, &auth::bearer(&token), unsure).await
            }
            other => other,
        }
    }

    /// POSTs `body` to `path` to create one thing, at most once. A 5xx or a
    /// dropped connection leaves open whether GitHub created it; sending the
    /// request again blindly could post it twice, so `landed` first looks
    /// for it (its id, when found) and only if it is not there is the
    /// request sent again. `id` reads the created thing's id from the answer.
    async fn create_once<L, Fut>(
        &self,
        call: &str,
        path: String,
        body: serde_json::Value,
        id: fn(&http::Reply, &str) -> Result<u64, ForgeError>,
        landed: L,
    ) -> Result<u64, ForgeError>
    where
        L: Fn() -> Fut,
        Fut: Future<Output = Result<Option<u64>, ForgeError>>,
    {
        let req = Request {
            call,
            method: Method::POST,
            target: path,
            body: Some(body),
            accept: ACCEPT_JSON,
        };
        let attempts = self.github.api.policy().max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let reason = match self.send_req_with(&req, Unsure::Return).await {
                Ok(reply) => return id(&reply, call),
                Err(ForgeError::Unavailable(reason)) => reason,
                Err(e) => return Err(e),
            };
            // The lookup is a read, retried like any read.
            if let Some(found) = landed().await? {
                tracing::info!(
                    call,
                    id = found,
                    "the unanswered attempt had landed; not sent again"
                );
                return Ok(found);
            }
            if attempt >= attempts {
                return Err(ForgeError::Unavailable(format!(
                    "{reason}; gave up after {attempt} attempts (none landed)"
                )));
            }
            tracing::warn!(call, attempt, "not applied; sending again");
            tokio::time::sleep(self.github.api.backoff(attempt)).await;
        }
    }

    /// The id of the newest comment on `number` that is Kiln's own and says
    /// exactly `body`, if that is the newest of Kiln's comments there.
    async fn own_newest_comment(&self, number: u64, body: &str) -> Result<Option<u64>, ForgeError> {
        let me = self.own_login().await?;
        let comments = self.comments(number).await?;
        Ok(comments
            .iter()
            .rev()
            .find(|c| c.author.eq_ignore_ascii_case(&me))
            .filter(|c| c.body == body)
            .map(|c| c.id))
    }

    async fn send(
        &self,
        call: &str,
        method: Method,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<http::Reply, ForgeError> {
        self.send_req(&Request {
            call,
            method,
            target: path,
            body,
            accept: ACCEPT_JSON,
        })
        .await
    }

    /// Every event of issue or pull request `number`, oldest first.
    async fn issue_events(&self, number: u64) -> Result<Vec<IssueEvent>, ForgeError> {
        let call = format!("list the events of #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}/events?per_page=100", self.base());
        self.get_all(&call, path).await
    }

    async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        call: &str,
        path: String,
    ) -> Result<Vec<T>, ForgeError> {
        let token = self.installation_token().await?;
        let api = &self.github.api;
        match api.get_all(call, path.clone(), &auth::bearer(&token)).await {
            Err(e) if self.renewed(&e).await => {
                let token = self.installation_token().await?;
                api.get_all(call, path, &auth::bearer(&token)).await
            }
            other => other,
        }
    }

    /// True (and the cached token dropped) when `e` is GitHub refusing a
    /// token that can be renewed.
    async fn renewed(&self, e: &ForgeError) -> bool {
        let refused = matches!(e, ForgeError::Unauthorized(m) if http::is_401(m));
        if refused && self.github.auth.renewable() {
            tracing::warn!(repo = %self.repo, "token refused, renewing");
            self.github.auth.invalidate(&self.repo).await;
            true
        } else {
            false
        }
    }

    /// Statuses are check runs (Checks API) when Kiln is a GitHub App: only
    /// an App may create them, and they show as Kiln's own checks on the pull
    /// request. A token falls back to classic commit statuses.
    fn uses_checks(&self) -> bool {
        self.github.auth.renewable()
    }

    /// `/repos/{owner}/{name}`.
    fn base(&self) -> String {
        format!("/repos/{}/{}", seg(&self.repo.owner), seg(&self.repo.name))
    }

    async fn comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError> {
        let call = format!("list comments on #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}/comments?per_page=100", self.base());
        let wire: Vec<WireComment> = self.get_all(&call, path).await?;
        Ok(wire.into_iter().map(WireComment::into_comment).collect())
    }

    /// Every review line comment on pull request `number`, oldest first.
    async fn review_comments(&self, number: u64) -> Result<Vec<WireReviewComment>, ForgeError> {
        let call = format!("list review comments on #{number} in {}", self.repo);
        let path = format!("{}/pulls/{number}/comments?per_page=100", self.base());
        self.get_all(&call, path).await
    }

    /// Pull request `number` as GitHub returns it (without its diff).
    async fn pull(&self, number: u64) -> Result<WirePull, ForgeError> {
        let call = format!("get pull request #{number} in {}", self.repo);
        let path = format!("{}/pulls/{number}", self.base());
        self.send(&call, Method::GET, path, None).await?.json(&call)
    }

    /// The head commit of pull request `number`, checked to be an object
    /// id before it goes into a URL.
    async fn head_sha(&self, number: u64) -> Result<String, ForgeError> {
        let sha = self.pull(number).await?.head.sha;
        if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ForgeError::Invalid(format!(
                "GitHub reported head commit {sha:?} for pull request #{number} in {}",
                self.repo
            )));
        }
        Ok(sha)
    }

    async fn repository(&self) -> Result<WireRepo, ForgeError> {
        let call = format!("get repository {}", self.repo);
        self.send(&call, Method::GET, self.base(), None)
            .await?
            .json(&call)
    }

    async fn installation_token(&self) -> Result<SecretString, ForgeError> {
        self.github.auth.token(&self.github.api, &self.repo).await
    }
}

#[async_trait::async_trait]
impl Forge for GitHubForge {
    fn repo(&self) -> &RepoRef {
        &self.repo
    }

    async fn default_branch(&self) -> Result<String, ForgeError> {
        Ok(self.repository().await?.default_branch)
    }

    async fn git_remote(&self) -> Result<GitRemote, ForgeError> {
        let url = match &self.github.git_url {
            Some(base) => format!("{base}/{}/{}.git", self.repo.owner, self.repo.name),
            None => self.repository().await?.clone_url,
        };
        let token = self.installation_token().await?;
        Ok(GitRemote {
            url,
            authorization: Some(auth::git_basic(&token)),
        })
    }

    async fn push(&self, local: &Path, commit: &str, branch: &str) -> Result<(), ForgeError> {
        // Refused before any request: the policy gate checks this too.
        push::check_branch(branch)?;
        push::check_commit(commit)?;
        let remote = self.git_remote().await?;
        let token = self.installation_token().await?;
        let header = remote.authorization.clone().unwrap_or_default();
        push::push(
            &self.github.git,
            local,
            &remote.url,
            remote.authorization.as_deref(),
            commit,
            branch,
            &[token.expose_secret(), header.as_str()],
        )
        .await
    }

    async fn get_issue(&self, number: u64) -> Result<Issue, ForgeError> {
        let call = format!("get issue #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}", self.base());
        let wire: WireIssue = self
            .send(&call, Method::GET, path, None)
            .await?
            .json(&call)?;
        if wire.pull_request.is_some() {
            return Err(ForgeError::NotFound(format!(
                "{call}: #{number} is a pull request, not an issue"
            )));
        }
        let mut issue = wire.into_issue();
        issue.comments = self.comments(number).await?;
        Ok(issue)
    }

    async fn list_issues(&self, state: StateFilter) -> Result<Vec<Issue>, ForgeError> {
        let call = format!("list issues in {}", self.repo);
        let path = format!(
            "{}/issues?state={}&sort=created&direction=desc&per_page=100",
            self.base(),
            state_param(state)
        );
        let wire: Vec<WireIssue> = self.get_all(&call, path).await?;
        // GitHub's issue list includes pull requests; they are not issues here.
        Ok(wire
            .into_iter()
            .filter(|i| i.pull_request.is_none())
            .map(WireIssue::into_issue)
            .collect())
    }

    async fn create_issue(&self, issue: NewIssue) -> Result<u64, ForgeError> {
        check_labels(&issue.labels)?;
        let call = format!("create an issue in {}", self.repo);
        let body = json!({"title": issue.title, "body": issue.body, "labels": issue.labels});
        let path = format!("{}/issues", self.base());
        let created: Numbered = self
            .send(&call, Method::POST, path, Some(body))
            .await?
            .json(&call)?;
        Ok(created.number)
    }

    async fn comment(&self, number: u64, body: &str) -> Result<u64, ForgeError> {
        let call = format!("comment on #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}/comments", self.base());
        self.create_once(&call, path, json!({"body": body}), identified, || {
            self.own_newest_comment(number, body)
        })
        .await
    }

    async fn edit_comment(&self, comment_id: u64, body: &str) -> Result<(), ForgeError> {
        let call = format!("edit comment {comment_id} in {}", self.repo);
        let path = format!("{}/issues/comments/{comment_id}", self.base());
        self.send(&call, Method::PATCH, path, Some(json!({"body": body})))
            .await?;
        Ok(())
    }

    async fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        check_labels(labels)?;
        if labels.is_empty() {
            return Ok(());
        }
        let call = format!("add labels to #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}/labels", self.base());
        self.send(&call, Method::POST, path, Some(json!({"labels": labels})))
            .await?;
        Ok(())
    }

    async fn remove_label(&self, number: u64, label: &str) -> Result<(), ForgeError> {
        check_labels(std::slice::from_ref(&label.to_string()))?;
        let call = format!("remove label {label:?} from #{number} in {}", self.repo);
        let path = format!("{}/issues/{number}/labels/{}", self.base(), seg(label));
        match self.send(&call, Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            // GitHub's 404 for a label the issue does not carry; a missing
            // issue is still an error.
            Err(ForgeError::NotFound(m)) if m.contains("Label does not exist") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get_pull_request(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let path = format!("{}/pulls/{number}", self.base());
        let wire = self.pull(number).await?;
        let diff_call = format!("get the diff of pull request #{number} in {}", self.repo);
        let req = Request {
            call: &diff_call,
            method: Method::GET,
            target: path,
            body: None,
            accept: ACCEPT_DIFF,
        };
        let diff = self.send_req(&req).await?;
        let mut pr = wire.into_pull_request();
        pr.diff = String::from_utf8_lossy(&diff.body).into_owned();
        pr.issue.comments = self.comments(number).await?;
        pr.review_threads = threads(self.review_comments(number).await?);
        Ok(pr)
    }

    async fn list_pull_requests(&self, state: StateFilter) -> Result<Vec<PullRequest>, ForgeError> {
        let call = format!("list pull requests in {}", self.repo);
        let path = format!(
            "{}/pulls?state={}&sort=created&direction=desc&per_page=100",
            self.base(),
            state_param(state)
        );
        let wire: Vec<WirePull> = self.get_all(&call, path).await?;
        Ok(wire.into_iter().map(WirePull::into_pull_request).collect())
    }

    async fn edit_pull_request_body(&self, number: u64, body: &str) -> Result<(), ForgeError> {
        let call = format!("edit the body of pull request #{number} in {}", self.repo);
        let path = format!("{}/pulls/{number}", self.base());
        self.send(&call, Method::PATCH, path, Some(json!({"body": body})))
            .await?;
        Ok(())
    }

    async fn create_draft_pull_request(&self, pr: NewPullRequest) -> Result<u64, ForgeError> {
        if pr.head.is_empty() || pr.base.is_empty() {
            return Err(ForgeError::Invalid(
                "a pull request needs a head and a base branch".into(),
            ));
        }
        let call = format!(
            "open a draft pull request {} -> {} in {}",
            pr.head, pr.base, self.repo
        );
        // Always a draft: Kiln's pull requests wait for a human.
        let body = json!({
            "title": pr.title, "body": pr.body, "head": pr.head, "base": pr.base, "draft": true,
        });
        let path = format!("{}/pulls", self.base());
        // GitHub keeps one open pull request per head and base: if it is
        // there, the unanswered attempt opened it.
        self.create_once(&call, path, body, numbered, || async {
            let open = self.list_pull_requests(StateFilter::Open).await?;
            Ok(open
                .iter()
                .find(|p| p.head_branch == pr.head && p.base_branch == pr.base)
                .map(|p| p.issue.number))
        })
        .await
    }

    async fn create_review(&self, number: u64, review: NewReview) -> Result<u64, ForgeError> {
        let mut comments = Vec::with_capacity(review.comments.len());
        for c in &review.comments {
            if c.path.is_empty() || c.line == 0 {
                return Err(ForgeError::Invalid(format!(
                    "a review line comment needs a path and a line >= 1 (got {:?}:{})",
                    c.path, c.line
                )));
            }
            comments.push(json!({
                "path": c.path,
                "line": c.line,
                "side": if c.new_side { "RIGHT" } else { "LEFT" },
                "body": format!("{} {}", severity_tag(c.severity), c.body),
            }));
        }
        // Never APPROVE: the type has no way to ask for it, and the event is
        // chosen here, not taken from the caller.
        let mut text = review.body;
        let event = if review.request_changes && !self.authored_by_self(number).await? {
            "REQUEST_CHANGES"
        } else {
            // GitHub refuses (422) to let a pull request's author request
            // changes on it, and Kiln reviews the pull requests it opened:
            // the verdict goes into the text of a comment review instead.
            if review.request_changes {
                text = super::changes_requested_in_text(&text);
            }
            "COMMENT"
        };
        let call = format!("review pull request #{number} in {}", self.repo);
        let path = format!("{}/pulls/{number}/reviews", self.base());
        let body = json!({"body": text, "event": event, "comments": comments});
        self.create_once(&call, path, body, identified, || async {
            let me = self.own_login().await?;
            let list = format!("list reviews on #{number} in {}", self.repo);
            let path = format!("{}/pulls/{number}/reviews?per_page=100", self.base());
            let reviews: Vec<WireReview> = self.get_all(&list, path).await?;
            Ok(reviews
                .into_iter()
                .rev()
                .find(|r| is_login(&r.user, &me))
                .filter(|r| r.body.as_deref().unwrap_or_default() == text)
                .map(|r| r.id))
        })
        .await
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, ForgeError> {
        let call = format!("list reviews on #{number} in {}", self.repo);
        let path = format!("{}/pulls/{number}/reviews?per_page=100", self.base());
        let reviews: Vec<WireReview> = self.get_all(&call, path).await?;
        // One listing of the pull request's line comments, grouped by review,
        // instead of one request per review.
        let line_comments = self.review_comments(number).await?;
        Ok(reviews
            .into_iter()
            .map(|r| Review {
                id: r.id,
                author: login(r.user),
                state: r.state,
                body: r.body.unwrap_or_default(),
                comments: line_comments
                    .iter()
                    .filter(|c| c.pull_request_review_id == Some(r.id))
                    // Replies belong to their thread (GitHub files each under
                    // a review of its own), not to a review's line comments.
                    .filter(|c| c.in_reply_to_id.is_none())
                    .filter_map(WireReviewComment::to_line_comment)
                    .collect(),
            })
            .collect())
    }

    async fn reply_to_review_comment(
        &self,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<u64, ForgeError> {
        let call = format!(
            "reply to review comment {comment_id} on #{number} in {}",
            self.repo
        );
        let path = format!(
            "{}/pulls/{number}/comments/{comment_id}/replies",
            self.base()
        );
        self.create_once(&call, path, json!({"body": body}), identified, || async {
            let me = self.own_login().await?;
            Ok(self
                .review_comments(number)
                .await?
                .into_iter()
                .rev()
                .filter(|c| c.in_reply_to_id == Some(comment_id))
                .find(|c| is_login(&c.user, &me))
                .filter(|c| c.body == body)
                .map(|c| c.id))
        })
        .await
    }

    async fn set_status(&self, number: u64, status: &CommitStatus) -> Result<(), ForgeError> {
        let sha = self.head_sha(number).await?;
        if self.uses_checks() {
            let call = format!(
                "create check run {:?} on the head of #{number} in {}",
                status.context, self.repo
            );
            let path = format!("{}/check-runs", self.base());
            self.send(
                &call,
                Method::POST,
                path,
                Some(check_run_body(&sha, status)),
            )
            .await?;
            return Ok(());
        }
        let call = format!(
            "set status {:?} on the head of #{number} in {}",
            status.context, self.repo
        );
        let path = format!("{}/statuses/{sha}", self.base());
        let body = json!({
            "state": status.state.as_str(),
            "context": status.context,
            "description": status_description(&status.description),
        });
        self.send(&call, Method::POST, path, Some(body)).await?;
        Ok(())
    }

    async fn list_statuses(&self, number: u64) -> Result<Vec<CommitStatus>, ForgeError> {
        let sha = self.head_sha(number).await?;
        if self.uses_checks() {
            let call = format!("list check runs on the head of #{number} in {}", self.repo);
            let path = format!("{}/commits/{sha}/check-runs?per_page=100", self.base());
            let page: WireCheckRuns = self
                .send(&call, Method::GET, path, None)
                .await?
                .json(&call)?;
            return Ok(latest_check_runs(page.check_runs));
        }
        let call = format!("list statuses on the head of #{number} in {}", self.repo);
        let path = format!("{}/commits/{sha}/statuses?per_page=100", self.base());
        let wire: Vec<WireStatus> = self.get_all(&call, path).await?;
        Ok(latest_statuses(wire))
    }

    async fn label_events(&self, number: u64) -> Result<Vec<LabelEvent>, ForgeError> {
        Ok(self
            .issue_events(number)
            .await?
            .into_iter()
            .filter_map(|e| {
                let added = match e.event.as_str() {
                    "labeled" => true,
                    "unlabeled" => false,
                    _ => return None,
                };
                Some(LabelEvent {
                    label: e.label?.name,
                    added,
                    actor: login(e.actor),
                    at_ms: event_ms(&e.created_at),
                })
            })
            .collect())
    }

    async fn state_events(&self, number: u64) -> Result<Vec<StateEvent>, ForgeError> {
        Ok(state_events(self.issue_events(number).await?))
    }

    async fn own_login(&self) -> Result<String, ForgeError> {
        self.github.auth.own_login(&self.github.api).await
    }

    async fn permission(&self, login: &str) -> Result<Permission, ForgeError> {
        let valid = !login.is_empty()
            && login.len() <= 100
            && login
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '[' | ']'));
        if !valid {
            return Err(ForgeError::Invalid(format!(
                "{login:?} is not a GitHub login"
            )));
        }
        let call = format!("get {login}'s permission on {}", self.repo);
        let path = format!("{}/collaborators/{}/permission", self.base(), seg(login));
        let wire: WirePermission = match self.send(&call, Method::GET, path, None).await {
            Ok(reply) => reply.json(&call)?,
            // Not a collaborator (or no such user): no permission.
            Err(ForgeError::NotFound(_)) => return Ok(Permission::None),
            Err(e) => return Err(e),
        };
        Ok(wire.permission())
    }
}

fn state_param(state: StateFilter) -> &'static str {
    match state {
        StateFilter::Open => "open",
        StateFilter::Closed => "closed",
        StateFilter::All => "all",
    }
}

fn check_labels(labels: &[String]) -> Result<(), ForgeError> {
    match labels
        .iter()
        .find(|l| l.trim().is_empty() || l.len() > 100 || l.contains(','))
    {
        Some(bad) => Err(ForgeError::Invalid(format!(
            "label {bad:?} is empty, longer than 100 characters or contains ','"
        ))),
        None => Ok(()),
    }
}

/// Percent-encodes one URL path segment.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

const SEVERITY_TAGS: [(Severity, &str); 4] = [
    (Severity::Critical, "**CRITICAL**"),
    (Severity::Important, "**IMPORTANT**"),
    (Severity::Suggestion, "**SUGGESTION**"),
    (Severity::Nit, "**NIT**"),
];

fn severity_tag(severity: Severity) -> &'static str {
    SEVERITY_TAGS
        .iter()
        .find(|(s, _)| *s == severity)
        .map(|(_, t)| *t)
        .unwrap_or("**SUGGESTION**")
}

/// The severity tag at the start of a body and the rest; an untagged
/// comment (a human's) reads as a suggestion.
fn split_severity(body: &str) -> (Severity, String) {
    for (severity, tag) in SEVERITY_TAGS {
        if let Some(rest) = body.strip_prefix(tag) {
            return (severity, rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
    }
    (Severity::Suggestion, body.to_string())
}

// The fields Kiln reads from GitHub's objects; everything else is ignored.

#[derive(Deserialize)]
struct User {
    login: String,
}

/// True when `user` is `login` (GitHub logins are case-insensitive).
fn is_login(user: &Option<User>, login: &str) -> bool {
    user.as_ref()
        .is_some_and(|u| u.login.eq_ignore_ascii_case(login))
}

fn login(user: Option<User>) -> String {
    // GitHub reports deleted accounts as `ghost` (or null in some payloads).
    user.map(|u| u.login).unwrap_or_else(|| "ghost".into())
}

#[derive(Deserialize)]
struct Label {
    name: String,
}

/// One entry of an issue's timeline of events (`GET .../issues/N/events`).
#[derive(Deserialize)]
struct IssueEvent {
    event: String,
    actor: Option<User>,
    label: Option<Label>,
    created_at: String,
}

/// An issue event's `created_at` in milliseconds since the epoch (0 if
/// GitHub sent something else).
fn event_ms(created_at: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(created_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0)
}

/// The closes, merges and reopenings among an issue's events (GitHub
/// records a merge as `merged` and `closed` at once).
fn state_events(wire: Vec<IssueEvent>) -> Vec<StateEvent> {
    wire.into_iter()
        .filter_map(|e| {
            let change = match e.event.as_str() {
                "closed" => StateChange::Closed,
                "merged" => StateChange::Merged,
                "reopened" => StateChange::Reopened,
                _ => return None,
            };
            Some(StateEvent {
                change,
                actor: login(e.actor),
                at_ms: event_ms(&e.created_at),
            })
        })
        .collect()
}

#[derive(Deserialize)]
struct Numbered {
    number: u64,
}

#[derive(Deserialize)]
struct Identified {
    id: u64,
}

/// The `id` of what a POST created.
fn identified(reply: &http::Reply, call: &str) -> Result<u64, ForgeError> {
    Ok(reply.json::<Identified>(call)?.id)
}

/// The `number` of the issue or pull request a POST created.
fn numbered(reply: &http::Reply, call: &str) -> Result<u64, ForgeError> {
    Ok(reply.json::<Numbered>(call)?.number)
}

#[derive(Deserialize)]
struct WireRepo {
    default_branch: String,
    clone_url: String,
}

#[derive(Deserialize)]
struct WireIssue {
    number: u64,
    title: String,
    body: Option<String>,
    user: Option<User>,
    #[serde(default)]
    labels: Vec<Label>,
    state: String,
    pull_request: Option<serde_json::Value>,
}

impl WireIssue {
    fn into_issue(self) -> Issue {
        Issue {
            number: self.number,
            title: self.title,
            body: self.body.unwrap_or_default(),
            author: login(self.user),
            trusted: false,
            labels: self.labels.into_iter().map(|l| l.name).collect(),
            open: self.state == "open",
            comments: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct WireComment {
    id: u64,
    body: Option<String>,
    user: Option<User>,
}

impl WireComment {
    fn into_comment(self) -> Comment {
        Comment {
            id: self.id,
            author: login(self.user),
            trusted: false,
            body: self.body.unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    name: String,
    #[serde(default)]
    sha: String,
    /// The repository the branch is in; `null` when a fork was deleted.
    #[serde(default)]
    repo: Option<BranchRepo>,
}

#[derive(Deserialize)]
struct BranchRepo {
    full_name: String,
}

#[derive(Deserialize)]
struct WirePull {
    number: u64,
    title: String,
    body: Option<String>,
    user: Option<User>,
    #[serde(default)]
    labels: Vec<Label>,
    state: String,
    #[serde(default)]
    draft: bool,
    head: Branch,
    base: Branch,
}

impl WirePull {
    fn into_pull_request(self) -> PullRequest {
        // Fail closed: a head whose repository is unknown counts as a fork.
        let head_from_fork = match (&self.head.repo, &self.base.repo) {
            (Some(h), Some(b)) => !h.full_name.eq_ignore_ascii_case(&b.full_name),
            _ => true,
        };
        PullRequest {
            issue: Issue {
                number: self.number,
                title: self.title,
                body: self.body.unwrap_or_default(),
                author: login(self.user),
                trusted: false,
                labels: self.labels.into_iter().map(|l| l.name).collect(),
                open: self.state == "open",
                comments: Vec::new(),
            },
            head_branch: self.head.name,
            base_branch: self.base.name,
            draft: self.draft,
            diff: String::new(),
            head_sha: self.head.sha,
            review_threads: Vec::new(),
            head_from_fork,
        }
    }
}

#[derive(Deserialize)]
struct WireReview {
    id: u64,
    user: Option<User>,
    state: String,
    body: Option<String>,
}

#[derive(Deserialize)]
struct WireReviewComment {
    id: u64,
    pull_request_review_id: Option<u64>,
    /// Set on replies: the thread's first comment.
    in_reply_to_id: Option<u64>,
    user: Option<User>,
    path: String,
    line: Option<u32>,
    original_line: Option<u32>,
    side: Option<String>,
    body: String,
}

/// Review comments grouped into threads by `in_reply_to_id`, oldest first.
/// A reply whose first comment is not listed (deleted) starts its own
/// thread rather than being dropped.
fn threads(comments: Vec<WireReviewComment>) -> Vec<ReviewThread> {
    let mut out: Vec<ReviewThread> = Vec::new();
    for c in comments {
        let (_, body) = split_severity(&c.body);
        let comment = Comment {
            id: c.id,
            author: login(c.user),
            trusted: false,
            body,
        };
        match c
            .in_reply_to_id
            .and_then(|root| out.iter_mut().find(|t| t.id == root))
        {
            Some(thread) => thread.comments.push(comment),
            None => out.push(ReviewThread {
                id: c.id,
                path: c.path,
                line: c.line,
                new_side: c.side.as_deref() != Some("LEFT"),
                // Not in REST (GraphQL's `isResolved` only).
                resolved: false,
                comments: vec![comment],
            }),
        }
    }
    out
}

#[derive(Deserialize)]
struct WireStatus {
    state: String,
    context: String,
    description: Option<String>,
}

/// `POST /check-runs` for a status: a pending status is a check run in
/// progress, any other a completed one. `error` (the check could not run)
/// becomes `action_required`, which blocks a merge like a failure but tells
/// a person that the check itself needs them, not the code.
fn check_run_body(sha: &str, status: &CommitStatus) -> serde_json::Value {
    let description = status_description(&status.description);
    let output = json!({
        "title": if description.is_empty() { status.state.as_str() } else { description },
        "summary": format!("{}: {description}", status.state),
    });
    let conclusion = match status.state {
        StatusState::Pending => None,
        StatusState::Success => Some("success"),
        StatusState::Failure => Some("failure"),
        StatusState::Error => Some("action_required"),
    };
    match conclusion {
        None => json!({
            "name": status.context, "head_sha": sha, "status": "in_progress", "output": output,
        }),
        Some(c) => json!({
            "name": status.context, "head_sha": sha, "status": "completed",
            "conclusion": c, "output": output,
        }),
    }
}

#[derive(Deserialize)]
struct WireCheckRuns {
    check_runs: Vec<WireCheckRun>,
}

#[derive(Deserialize, Clone)]
struct WireCheckRun {
    id: u64,
    name: String,
    status: String,
    conclusion: Option<String>,
    output: Option<WireCheckOutput>,
}

#[derive(Deserialize, Clone)]
struct WireCheckOutput {
    title: Option<String>,
}

/// The newest check run of each name (the highest id), as statuses sorted
/// by context; the reverse of [`check_run_body`].
fn latest_check_runs(mut wire: Vec<WireCheckRun>) -> Vec<CommitStatus> {
    wire.sort_by_key(|r| std::cmp::Reverse(r.id));
    let mut out: Vec<CommitStatus> = Vec::new();
    for r in wire {
        if out.iter().any(|o| o.context == r.name) {
            continue;
        }
        let state = match (r.status.as_str(), r.conclusion.as_deref()) {
            ("completed", Some("success")) => StatusState::Success,
            ("completed", Some("failure")) => StatusState::Failure,
            ("completed", _) => StatusState::Error,
            _ => StatusState::Pending,
        };
        let title = r.output.and_then(|o| o.title).unwrap_or_default();
        out.push(CommitStatus {
            context: r.name,
            // A title that only names the state stands for no description.
            description: if title == state.as_str() {
                String::new()
            } else {
                title
            },
            state,
        });
    }
    out.sort_by(|a, b| a.context.cmp(&b.context));
    out
}

/// The newest status of each context (GitHub lists newest first), sorted
/// by context. A state Kiln does not know reads as `error`.
fn latest_statuses(wire: Vec<WireStatus>) -> Vec<CommitStatus> {
    let mut out: Vec<CommitStatus> = Vec::new();
    for s in wire {
        if out.iter().any(|o| o.context == s.context) {
            continue;
        }
        out.push(CommitStatus {
            state: StatusState::parse(&s.state).unwrap_or(StatusState::Error),
            context: s.context,
            description: s.description.unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.context.cmp(&b.context));
    out
}

impl WireReviewComment {
    fn to_line_comment(&self) -> Option<LineComment> {
        // An outdated comment has no current line; its original one stands.
        let line = self.line.or(self.original_line)?;
        let (severity, body) = split_severity(&self.body);
        Some(LineComment {
            path: self.path.clone(),
            line,
            new_side: self.side.as_deref() != Some("LEFT"),
            severity,
            body,
        })
    }
}

#[derive(Deserialize)]
struct WirePermission {
    permission: String,
    role_name: Option<String>,
}

impl WirePermission {
    /// `role_name` is the precise level (maintain, triage); `permission`
    /// folds those into write and read and is the fallback for custom roles.
    fn permission(&self) -> Permission {
        let parse = |s: &str| match s {
            "admin" => Some(Permission::Admin),
            "maintain" => Some(Permission::Maintain),
            "write" | "push" => Some(Permission::Write),
            "triage" => Some(Permission::Triage),
            "read" | "pull" => Some(Permission::Read),
            "none" => Some(Permission::None),
            _ => None,
        };
        self.role_name
            .as_deref()
            .and_then(parse)
            .or_else(|| parse(&self.permission))
            .unwrap_or(Permission::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Kiln never pushes to a fork: a head in another repository, or one
    // whose repository GitHub no longer reports (a deleted fork), is one.
    #[test]
    fn a_head_outside_the_base_repository_is_a_fork() {
        let pull = |head_repo: serde_json::Value| -> PullRequest {
            serde_json::from_value::<WirePull>(json!({
                "number": 5, "title": "t", "body": null, "user": null, "state": "open",
                "head": {"ref": "kiln/implement-issue-1", "sha": "ab", "repo": head_repo},
                "base": {"ref": "main", "sha": "cd", "repo": {"full_name": "acme/widgets"}},
            }))
            .expect("a pull request")
            .into_pull_request()
        };
        assert!(!pull(json!({"full_name": "Acme/Widgets"})).head_from_fork);
        assert!(pull(json!({"full_name": "mallory/widgets"})).head_from_fork);
        assert!(pull(serde_json::Value::Null).head_from_fork);
    }

    // GitHub's documented issue events: a merge is `merged` then `closed`;
    // labels and other events are not state changes.
    #[test]
    fn closes_merges_and_reopenings_are_read_from_the_issue_events() {
        let wire: Vec<IssueEvent> = serde_json::from_value(json!([
            {"event": "labeled", "actor": {"login": "kiln[bot]"}, "label": {"name": "bug"}, "created_at": "2026-01-02T03:04:05Z"},
            {"event": "closed", "actor": {"login": "alice"}, "created_at": "2026-01-02T03:05:00Z"},
            {"event": "reopened", "actor": {"login": "bob"}, "created_at": "2026-01-02T03:06:00Z"},
            {"event": "merged", "actor": {"login": "carol"}, "created_at": "2026-01-02T03:07:00Z"},
            {"event": "closed", "actor": {"login": "carol"}, "created_at": "2026-01-02T03:07:00Z"}
        ]))
        .expect("events");
        let events = state_events(wire);
        let changes: Vec<_> = events
            .iter()
            .map(|e| (e.change, e.actor.as_str()))
            .collect();
        assert_eq!(
            changes,
            [
                (StateChange::Closed, "alice"),
                (StateChange::Reopened, "bob"),
                (StateChange::Merged, "carol"),
                (StateChange::Closed, "carol"),
            ]
        );
        assert_eq!(events[0].at_ms, 1_767_323_100_000);
        assert_eq!(
            crate::forge::closed_unmerged(&events),
            None,
            "it was merged"
        );
        assert_eq!(
            crate::forge::closed_unmerged(&events[..1]).map(|e| e.actor.as_str()),
            Some("alice")
        );
        assert_eq!(
            crate::forge::closed_unmerged(&events[..2]),
            None,
            "reopened"
        );
    }

    #[test]
    fn severity_tags_round_trip_and_untagged_reads_as_suggestion() {
        for (severity, _) in SEVERITY_TAGS {
            let body = format!("{} fix this", severity_tag(severity));
            assert_eq!(split_severity(&body), (severity, "fix this".to_string()));
        }
        assert_eq!(
            split_severity("looks odd"),
            (Severity::Suggestion, "looks odd".to_string())
        );
    }

    fn wire_comment(id: u64, in_reply_to_id: Option<u64>, body: &str) -> WireReviewComment {
        WireReviewComment {
            id,
            pull_request_review_id: Some(1),
            in_reply_to_id,
            user: Some(User {
                login: format!("user{id}"),
            }),
            path: "src/lib.rs".into(),
            line: None,
            original_line: Some(4),
            side: Some("RIGHT".into()),
            body: body.into(),
        }
    }

    #[test]
    fn review_comments_group_into_threads_by_the_comment_they_answer() {
        let threads = threads(vec![
            wire_comment(10, None, "**CRITICAL** leaks"),
            wire_comment(11, None, "typo"),
            wire_comment(12, Some(10), "fixed"),
            // Its first comment was deleted: kept as a thread of its own.
            wire_comment(13, Some(9), "orphan"),
        ]);
        let shape: Vec<(u64, Vec<(u64, &str)>)> = threads
            .iter()
            .map(|t| {
                (
                    t.id,
                    t.comments.iter().map(|c| (c.id, c.body.as_str())).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (10, vec![(10, "leaks"), (12, "fixed")]),
                (11, vec![(11, "typo")]),
                (13, vec![(13, "orphan")]),
            ]
        );
        assert_eq!(
            threads[0].line, None,
            "an outdated comment has no current line"
        );
        assert!(threads.iter().all(|t| !t.resolved && t.new_side));
        assert_eq!(threads[0].comments[1].author, "user12");
    }

    #[test]
    fn the_newest_status_of_each_context_is_kept() {
        let wire = |state: &str, context: &str, description: Option<&str>| WireStatus {
            state: state.into(),
            context: context.into(),
            description: description.map(Into::into),
        };
        let latest = latest_statuses(vec![
            wire("success", "kiln/verification", Some("passed")),
            wire("failure", "ci/build", None),
            wire("pending", "kiln/verification", Some("running")),
            wire("weird", "kiln/other", Some("?")),
        ]);
        let seen: Vec<(&str, StatusState, &str)> = latest
            .iter()
            .map(|s| (s.context.as_str(), s.state, s.description.as_str()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("ci/build", StatusState::Failure, ""),
                ("kiln/other", StatusState::Error, "?"),
                ("kiln/verification", StatusState::Success, "passed"),
            ]
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(seg("good first issue"), "good%20first%20issue");
        assert_eq!(seg("a/b?c#d"), "a%2Fb%3Fc%23d");
        assert_eq!(seg("kiln[bot]"), "kiln%5Bbot%5D");
        assert_eq!(seg("ünï"), "%C3%BCn%C3%AF");
    }

    #[test]
    fn role_name_is_preferred_over_the_folded_permission() {
        let p = |permission: &str, role: Option<&str>| {
            WirePermission {
                permission: permission.into(),
                role_name: role.map(Into::into),
            }
            .permission()
        };
        assert_eq!(p("write", Some("maintain")), Permission::Maintain);
        assert_eq!(p("read", Some("triage")), Permission::Triage);
        assert_eq!(p("write", Some("custom-deployer")), Permission::Write);
        assert_eq!(p("weird", None), Permission::None);
    }

    #[test]
    fn statuses_round_trip_through_check_runs() {
        let sha = "a".repeat(40);
        let states = [
            (StatusState::Pending, "running 2 checks"),
            (StatusState::Success, "2 checks passed"),
            (StatusState::Failure, "1 of 2 checks failed"),
            (StatusState::Error, ""),
        ];
        let mut wire = Vec::new();
        for (i, (state, description)) in states.iter().enumerate() {
            let status = CommitStatus {
                context: format!("kiln/c{i}"),
                state: *state,
                description: description.to_string(),
            };
            let body = check_run_body(&sha, &status);
            assert_eq!(body["head_sha"], sha.as_str());
            assert_eq!(body["name"], status.context.as_str());
            wire.push(WireCheckRun {
                id: i as u64,
                name: status.context.clone(),
                status: body["status"].as_str().expect("status").into(),
                conclusion: body["conclusion"].as_str().map(String::from),
                output: Some(WireCheckOutput {
                    title: body["output"]["title"].as_str().map(String::from),
                }),
            });
        }
        let back = latest_check_runs(wire);
        for (i, (state, description)) in states.iter().enumerate() {
            assert_eq!(back[i].state, *state, "{:?}", back[i]);
            assert_eq!(back[i].description, *description);
        }
        // The newest run of a name wins.
        let older = WireCheckRun {
            id: 1,
            name: "kiln/verification".into(),
            status: "completed".into(),
            conclusion: Some("failure".into()),
            output: None,
        };
        let newer = WireCheckRun {
            id: 9,
            conclusion: Some("success".into()),
            ..older.clone()
        };
        let back = latest_check_runs(vec![older, newer]);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].state, StatusState::Success);
    }
}
