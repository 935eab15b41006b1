//! The forge contract: one suite stating what every [`Forge`] does, run
//! against each backend, plus GitHub-specific tests (App tokens, pagination,
//! retries, precise errors, credential hygiene) against a GitHub API test
//! server on loopback that speaks GitHub's recorded wire format.
//!
//! A backend joins the contract by implementing [`ContractEnv`] (grant a
//! login a permission, hand over a local repository whose `main` is the
//! forge's default branch, read a branch back) and calling [`contract`].

use crate::support::github_api;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Method;
use github_api::{Fault, GitHubApi, git};
use kiln::forge::github::{Credentials, GitHub, GitHubForge, Options, RetryPolicy};
use kiln::forge::{
    CommitStatus, Forge, ForgeError, LineComment, MAX_STATUS_DESCRIPTION_CHARS, NewIssue,
    NewPullRequest, NewReview, Permission, RepoRef, Severity, StateFilter, StatusState,
};

// ---------------------------------------------------------------------------
// The contract.

/// What a backend provides so the contract can check it.
#[async_trait::async_trait]
pub trait ContractEnv: Send + Sync {
    /// Makes `login` a collaborator with `permission`.
    async fn grant(&self, login: &str, permission: Permission);
    /// A local work tree whose `main` is the forge's default-branch commit.
    fn work_repo(&self) -> &Path;
    /// The commit `branch` points to on the forge, if the branch exists.
    async fn branch_head(&self, branch: &str) -> Option<String>;
}

/// Commits `content` to `file` on top of `parent` in `repo`; returns the commit.
fn commit_on(repo: &Path, parent: &str, file: &str, content: &str, message: &str) -> String {
    git(repo, &["checkout", "--quiet", "--detach", parent]);
    let path = repo.join(file);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    std::fs::write(&path, content).expect("write");
    git(repo, &["add", file]);
    git(repo, &["commit", "--quiet", "-m", message]);
    git(repo, &["rev-parse", "HEAD"])
}

/// `git ls-remote` of `remote` with its authorization, the way the host
/// fetches (async: the forge's server may share this test's runtime).
async fn ls_remote(remote: &kiln::forge::GitRemote) -> String {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(["ls-remote", &remote.url])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0");
    if let Some(auth) = &remote.authorization {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: {auth}"));
    }
    let out = cmd.output().await.expect("run git ls-remote");
    assert!(
        out.status.success(),
        "ls-remote {}: {}",
        remote.url,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Everything a [`Forge`] promises, checked against one backend.
pub async fn contract(forge: &dyn Forge, env: &dyn ContractEnv) {
    assert_eq!(
        forge.default_branch().await.expect("default branch"),
        "main"
    );

    // Issues: create, read back, list newest first.
    let first = forge
        .create_issue(NewIssue {
            title: "First".into(),
            body: "body one".into(),
            labels: vec!["bug".into()],
        })
        .await
        .expect("create issue");
    let second = forge
        .create_issue(NewIssue {
            title: "Second".into(),
            body: String::new(),
            labels: Vec::new(),
        })
        .await
        .expect("create issue");
    assert_ne!(first, second);
    let issue = forge.get_issue(first).await.expect("get issue");
    assert_eq!(
        (issue.number, issue.title.as_str(), issue.body.as_str()),
        (first, "First", "body one")
    );
    assert_eq!(issue.labels, vec!["bug".to_string()]);
    assert!(issue.open && issue.comments.is_empty() && !issue.author.is_empty());
    assert!(!issue.trusted, "trust is the caller's decision");
    let open: Vec<u64> = forge
        .list_issues(StateFilter::Open)
        .await
        .expect("list issues")
        .iter()
        .map(|i| i.number)
        .collect();
    let (pos_first, pos_second) = (
        open.iter().position(|n| *n == first),
        open.iter().position(|n| *n == second),
    );
    assert!(
        matches!((pos_first, pos_second), (Some(f), Some(s)) if s < f),
        "both listed, newest first: {open:?}"
    );
    assert!(
        forge
            .list_issues(StateFilter::Closed)
            .await
            .expect("list closed")
            .iter()
            .all(|i| i.number != first),
        "an open issue is not listed as closed"
    );

    // Comments: the progress comment is edited in place; order is oldest first.
    let progress = forge
        .comment(first, "progress: started")
        .await
        .expect("comment");
    forge
        .edit_comment(progress, "progress: done")
        .await
        .expect("edit comment");
    let later = forge
        .comment(first, "second comment")
        .await
        .expect("comment");
    let comments = forge.get_issue(first).await.expect("get issue").comments;
    let seen: Vec<(u64, &str)> = comments.iter().map(|c| (c.id, c.body.as_str())).collect();
    assert_eq!(
        seen,
        vec![(progress, "progress: done"), (later, "second comment")]
    );
    // Kiln recognises its own comments (a role's earlier report) by author.
    let own = forge.own_login().await.expect("own login");
    assert!(
        comments.iter().all(|c| c.author == own),
        "the forge's own login {own:?} is the author of what it wrote: {comments:?}"
    );

    // Labels: adding is idempotent, removing an absent label is fine.
    forge
        .add_labels(first, &["triaged".into(), "bug".into()])
        .await
        .expect("add labels");
    let labels: BTreeSet<String> = forge
        .get_issue(first)
        .await
        .expect("get")
        .labels
        .into_iter()
        .collect();
    assert_eq!(labels, BTreeSet::from(["bug".into(), "triaged".into()]));
    forge
        .remove_label(first, "bug")
        .await
        .expect("remove label");
    forge
        .remove_label(first, "never-there")
        .await
        .expect("removing an absent label is not an error");
    assert_eq!(
        forge.get_issue(first).await.expect("get").labels,
        vec!["triaged".to_string()]
    );
    // The label history (the outer loop's evidence): who changed which
    // label, oldest first; a label already there or already gone is no event.
    let history: Vec<(String, bool, String)> = forge
        .label_events(first)
        .await
        .expect("label events")
        .into_iter()
        .map(|e| (e.label, e.added, e.actor))
        .collect();
    assert!(
        history.ends_with(&[
            ("triaged".into(), true, own.clone()),
            ("bug".into(), false, own.clone()),
        ]),
        "{history:?}"
    );
    assert!(
        matches!(
            forge.label_events(999_999).await,
            Err(ForgeError::NotFound(_))
        ),
        "the history of a missing issue is NotFound"
    );

    // Missing things are NotFound.
    for (what, result) in [
        ("issue", forge.get_issue(999_999).await.map(|_| ())),
        ("comment", forge.comment(999_999, "x").await.map(|_| ())),
        ("edit", forge.edit_comment(999_999_999, "x").await),
        (
            "pull request",
            forge.get_pull_request(first).await.map(|_| ()),
        ),
    ] {
        assert!(
            matches!(result, Err(ForgeError::NotFound(_))),
            "{what}: expected NotFound, got {result:?}"
        );
    }

    // Push: force-pushes to kiln/*, refuses anything else.
    let work = env.work_repo();
    let main = git(work, &["rev-parse", "main"]);
    let one = commit_on(work, &main, "src/lib.rs", "fn one() {}\n", "one");
    forge
        .push(work, &one, "kiln/contract")
        .await
        .expect("push to kiln/contract");
    assert_eq!(
        env.branch_head("kiln/contract").await.as_deref(),
        Some(one.as_str())
    );
    let two = commit_on(
        work,
        &main,
        "src/lib.rs",
        "fn two() {}\nfn three() {}\n",
        "two, not on top of one",
    );
    forge
        .push(work, &two, "kiln/contract")
        .await
        .expect("force push");
    assert_eq!(
        env.branch_head("kiln/contract").await.as_deref(),
        Some(two.as_str())
    );
    for (commit, branch) in [
        (two.as_str(), "main"),
        (two.as_str(), "refs/heads/kiln/x"),
        (two.as_str(), "kiln/../main"),
        ("HEAD", "kiln/x"),
        ("--upload-pack=touch /tmp/x", "kiln/x"),
    ] {
        let result = forge.push(work, commit, branch).await;
        assert!(
            matches!(result, Err(ForgeError::Invalid(_))),
            "push {commit} to {branch}: expected Invalid, got {result:?}"
        );
    }
    assert_eq!(
        env.branch_head("main").await.as_deref(),
        Some(main.as_str())
    );
    let remote = forge.git_remote().await.expect("git remote");
    let refs = ls_remote(&remote).await;
    assert!(
        refs.contains(&format!("{two}\trefs/heads/kiln/contract")),
        "the remote serves the pushed branch: {refs}"
    );

    // Draft pull requests.
    let pr = forge
        .create_draft_pull_request(NewPullRequest {
            title: "Add two".into(),
            body: "Fixes #1".into(),
            head: "kiln/contract".into(),
            base: "main".into(),
        })
        .await
        .expect("open pull request");
    let got = forge.get_pull_request(pr).await.expect("get pull request");
    assert!(got.draft, "Kiln's pull requests are drafts");
    assert_eq!(
        (got.head_branch.as_str(), got.base_branch.as_str()),
        ("kiln/contract", "main")
    );
    assert_eq!(
        (
            got.issue.number,
            got.issue.title.as_str(),
            got.issue.body.as_str()
        ),
        (pr, "Add two", "Fixes #1")
    );
    assert!(got.issue.open);
    assert!(!got.head_from_fork, "a branch of the repository itself");
    // Answering a review rewrites the body (its Verification section).
    forge
        .edit_pull_request_body(pr, "Fixes #1\n\n## Verification\n\nran")
        .await
        .expect("edit the body");
    assert_eq!(
        forge.get_pull_request(pr).await.expect("get").issue.body,
        "Fixes #1\n\n## Verification\n\nran"
    );
    forge
        .edit_pull_request_body(pr, "Fixes #1")
        .await
        .expect("edit the body back");
    let missing = forge.edit_pull_request_body(999_999, "x").await;
    assert!(
        matches!(missing, Err(ForgeError::NotFound(_))),
        "editing a missing pull request: {missing:?}"
    );
    assert!(
        got.diff.contains("src/lib.rs") && got.diff.contains("+fn two() {}"),
        "the diff is against the base: {}",
        got.diff
    );
    let prs = forge
        .list_pull_requests(StateFilter::Open)
        .await
        .expect("list pull requests");
    assert!(prs.iter().any(|p| p.issue.number == pr && p.draft));
    assert!(
        forge
            .list_issues(StateFilter::All)
            .await
            .expect("list issues")
            .iter()
            .all(|i| i.number != pr),
        "pull requests are not issues"
    );
    let on_pr = forge
        .comment(pr, "run log: ...")
        .await
        .expect("comment on PR");
    forge
        .add_labels(pr, &["kiln".into()])
        .await
        .expect("label PR");
    let got = forge.get_pull_request(pr).await.expect("get pull request");
    assert_eq!(got.issue.labels, vec!["kiln".to_string()]);
    assert!(got.issue.comments.iter().any(|c| c.id == on_pr));

    // Reviews: request changes with a line comment, then a neutral one.
    let line = LineComment {
        path: "src/lib.rs".into(),
        line: 1,
        new_side: true,
        severity: Severity::Critical,
        body: "two() is never called".into(),
    };
    let r1 = forge
        .create_review(
            pr,
            NewReview {
                request_changes: true,
                body: "Needs work".into(),
                comments: vec![line.clone()],
            },
        )
        .await
        .expect("review");
    let r2 = forge
        .create_review(
            pr,
            NewReview {
                request_changes: false,
                body: "One more note".into(),
                comments: Vec::new(),
            },
        )
        .await
        .expect("review");
    let reviews = forge.list_reviews(pr).await.expect("list reviews");
    let summary: Vec<(u64, &str, &str)> = reviews
        .iter()
        .map(|r| (r.id, r.state.as_str(), r.body.as_str()))
        .collect();
    // The pull request is the forge login's own: as GitHub requires, its
    // author's request for changes is a comment review saying so.
    assert_eq!(
        summary,
        vec![
            (r1, "COMMENTED", "**Changes requested.**\n\nNeeds work"),
            (r2, "COMMENTED", "One more note")
        ]
    );
    assert_eq!(reviews[0].comments, vec![line]);
    assert!(reviews[1].comments.is_empty());

    // Review threads: the line comment opens a thread; a reply lands in it.
    let got = forge.get_pull_request(pr).await.expect("get pull request");
    assert_eq!(got.head_sha, two, "the head commit is the pushed one");
    assert_eq!(got.review_threads.len(), 1, "{:?}", got.review_threads);
    let thread = &got.review_threads[0];
    assert_eq!(
        (
            thread.path.as_str(),
            thread.line,
            thread.new_side,
            thread.resolved
        ),
        ("src/lib.rs", Some(1), true, false)
    );
    let opening: Vec<(u64, &str)> = thread
        .comments
        .iter()
        .map(|c| (c.id, c.body.as_str()))
        .collect();
    assert_eq!(opening, vec![(thread.id, "two() is never called")]);
    let reply = forge
        .reply_to_review_comment(pr, thread.id, "Removed two(); see the next commit.")
        .await
        .expect("reply to the line comment");
    let got = forge.get_pull_request(pr).await.expect("get pull request");
    assert_eq!(got.review_threads.len(), 1, "a reply opens no new thread");
    let comments = &got.review_threads[0].comments;
    assert_eq!(
        comments
            .iter()
            .map(|c| (c.id, c.body.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (thread.id, "two() is never called"),
            (reply, "Removed two(); see the next commit.")
        ],
        "the reply follows the comment it answers"
    );
    assert!(
        comments.iter().all(|c| !c.author.is_empty() && !c.trusted),
        "authors are named and trust is the caller's decision: {comments:?}"
    );
    for (what, result) in [
        (
            "unknown comment",
            forge.reply_to_review_comment(pr, 999_999_999, "x").await,
        ),
        (
            "comment on another number",
            forge.reply_to_review_comment(first, thread.id, "x").await,
        ),
        (
            "unknown pull request",
            forge.reply_to_review_comment(999_999, thread.id, "x").await,
        ),
    ] {
        assert!(
            matches!(result, Err(ForgeError::NotFound(_))),
            "reply to {what}: expected NotFound, got {result:?}"
        );
    }
    // GitHub documents "replies to replies are not supported": a reply
    // answers the thread's id.
    let nested = forge.reply_to_review_comment(pr, reply, "x").await;
    assert!(
        matches!(nested, Err(ForgeError::Rejected(_))),
        "a reply to a reply: expected Rejected, got {nested:?}"
    );

    // Commit statuses on the head: one per context, the latest wins.
    let status = |context: &str, state, description: &str| CommitStatus {
        context: context.into(),
        state,
        description: description.into(),
    };
    for s in [
        status(
            "kiln/verification",
            StatusState::Pending,
            "running 3 checks",
        ),
        status("kiln/lint", StatusState::Failure, "2 warnings"),
        status("kiln/verification", StatusState::Success, "3 checks passed"),
    ] {
        forge.set_status(pr, &s).await.expect("set status");
    }
    assert_eq!(
        forge.list_statuses(pr).await.expect("list statuses"),
        vec![
            status("kiln/lint", StatusState::Failure, "2 warnings"),
            status("kiln/verification", StatusState::Success, "3 checks passed"),
        ],
        "the latest status of each context, by context"
    );
    let long = "é".repeat(MAX_STATUS_DESCRIPTION_CHARS + 10);
    forge
        .set_status(pr, &status("kiln/lint", StatusState::Error, &long))
        .await
        .expect("a long description is cut, not refused");
    let lint = forge.list_statuses(pr).await.expect("list statuses");
    assert_eq!(
        lint[0].description,
        "é".repeat(MAX_STATUS_DESCRIPTION_CHARS),
        "cut on a character boundary"
    );
    for (what, result) in [
        (
            "set on an unknown pull request",
            forge
                .set_status(999_999, &status("kiln/x", StatusState::Success, ""))
                .await,
        ),
        (
            "set on an issue",
            forge
                .set_status(first, &status("kiln/x", StatusState::Success, ""))
                .await,
        ),
        (
            "list on an unknown pull request",
            forge.list_statuses(999_999).await.map(drop),
        ),
    ] {
        assert!(
            matches!(result, Err(ForgeError::NotFound(_))),
            "status {what}: expected NotFound, got {result:?}"
        );
    }
    // A status belongs to its commit: a new head starts with none.
    let three = commit_on(work, &two, "src/lib.rs", "fn three() {}\n", "three");
    forge
        .push(work, &three, "kiln/contract")
        .await
        .expect("push a new head");
    assert_eq!(
        forge.get_pull_request(pr).await.expect("get").head_sha,
        three
    );
    assert!(
        forge
            .list_statuses(pr)
            .await
            .expect("list statuses")
            .is_empty(),
        "statuses of the old head do not carry over"
    );

    // Permissions: granted levels read back; strangers have none.
    env.grant("alice", Permission::Write).await;
    env.grant("tracy", Permission::Triage).await;
    env.grant("mona", Permission::Maintain).await;
    for (login, expected) in [
        ("alice", Permission::Write),
        ("tracy", Permission::Triage),
        ("mona", Permission::Maintain),
        ("stranger", Permission::None),
    ] {
        assert_eq!(
            forge.permission(login).await.expect("permission"),
            expected,
            "{login}"
        );
    }
}

// ---------------------------------------------------------------------------
// GitHub: the contract and GitHub's own behaviour.

const OWNER: &str = "octo";
const NAME: &str = "widgets";

/// The test server plus a local clone of its repository.
struct GitHubEnv {
    api: GitHubApi,
    work: tempfile::TempDir,
}

impl GitHubEnv {
    async fn start() -> Self {
        let api = GitHubApi::start(OWNER, NAME).await;
        let work = tempfile::tempdir().expect("tempdir");
        git(work.path(), &["init", "--quiet", "--initial-branch=main"]);
        std::fs::write(work.path().join("README.md"), "# widgets\n").expect("write");
        git(work.path(), &["add", "README.md"]);
        git(work.path(), &["commit", "--quiet", "-m", "initial"]);
        let bare = api.bare_repo().to_string_lossy().into_owned();
        git(
            work.path(),
            &["push", "--quiet", &bare, "main:refs/heads/main"],
        );
        Self { api, work }
    }

    fn options(&self) -> Options {
        Options {
            retry: RetryPolicy {
                max_attempts: 4,
                backoff: Duration::from_millis(20),
                max_rate_limit_wait: Duration::from_secs(5),
            },
            ..Options::default()
        }
    }

    fn app_forge(&self) -> GitHubForge {
        self.forge_with(
            Credentials::app(self.api.app().app_id, self.api.app().private_pem.as_bytes())
                .expect("app key"),
            self.options(),
        )
    }

    fn forge_with(&self, credentials: Credentials, options: Options) -> GitHubForge {
        GitHub::new(&self.api.url(), credentials, options)
            .expect("client")
            .forge(RepoRef::parse(&format!("{OWNER}/{NAME}")).expect("repo"))
    }

    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{OWNER}/{NAME}{rest}")
    }
}

#[async_trait::async_trait]
impl ContractEnv for GitHubEnv {
    async fn grant(&self, login: &str, permission: Permission) {
        let role = match permission {
            Permission::None => return,
            Permission::Read => "read",
            Permission::Triage => "triage",
            Permission::Write => "write",
            Permission::Maintain => "maintain",
            Permission::Admin => "admin",
        };
        self.api.grant(login, role);
    }

    fn work_repo(&self) -> &Path {
        self.work.path()
    }

    async fn branch_head(&self, branch: &str) -> Option<String> {
        self.api.branch_head(branch)
    }
}

#[tokio::test]
async fn the_contract_holds_for_github() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    contract(&forge, &env).await;

    // What GitHub saw, checked against what Kiln must and must never send.
    let requests = env.api.requests();
    for r in &requests {
        let auth = r.authorization.as_deref().unwrap_or("");
        if r.path == "/app" || r.path.starts_with("/app/") || r.path.ends_with("/installation") {
            assert!(
                auth.starts_with("Bearer ey"),
                "{} needs the App JWT",
                r.path
            );
        } else if r.path.starts_with("/git/") {
            assert!(
                auth.starts_with("Basic "),
                "git sends the token as Basic: {}",
                r.path
            );
        } else {
            assert!(
                auth.starts_with("Bearer ghs_"),
                "{} needs an installation token",
                r.path
            );
        }
    }
    let git_posts = requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/git-receive-pack"))
        .count();
    assert_eq!(
        git_posts, 3,
        "three pushes went over smart HTTP with the token"
    );
    // As an App, Kiln's statuses are check runs (Checks API), created with
    // the installation token; classic statuses are the token's fallback.
    assert!(
        !requests
            .iter()
            .any(|r| r.method == Method::POST && r.path.contains("/statuses/")),
        "an App creates check runs, not classic statuses"
    );
    let runs: Vec<_> = requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/check-runs"))
        .filter_map(|r| r.body.clone())
        .collect();
    assert_eq!(runs.len(), 4, "every status was posted: {runs:?}");
    assert_eq!(runs[0]["name"], "kiln/verification");
    assert_eq!(runs[0]["status"], "in_progress");
    assert_eq!(runs[0]["output"]["title"], "running 3 checks");
    assert!(runs[0].get("conclusion").is_none(), "{:?}", runs[0]);
    assert_eq!(
        runs[3]["conclusion"], "action_required",
        "error needs a person"
    );
    let stored = env.api.check_runs();
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|r| r.head_sha.len() == 40));
    let replies = requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/replies"))
        .count();
    assert_eq!(replies, 5, "one reply and four refused ones were sent");
    let pulls = env.api.requests_to(Method::POST, &env.repo_path("/pulls"));
    assert!(
        pulls
            .iter()
            .all(|r| r.body.as_ref().and_then(|b| b["draft"].as_bool()) == Some(true)),
        "every pull request is opened as a draft"
    );
    let reviews: Vec<_> = requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/reviews"))
        .filter_map(|r| r.body.clone())
        .collect();
    assert_eq!(reviews.len(), 2);
    assert!(
        reviews.iter().all(|b| b["event"] != "APPROVE"),
        "never approve"
    );
    // GitHub refuses REQUEST_CHANGES from the pull request's own author (the
    // App opened it): the verdict is in the comment review's text.
    assert_eq!(reviews[0]["event"], "COMMENT");
    assert_eq!(reviews[0]["body"], "**Changes requested.**\n\nNeeds work");
    assert_eq!(reviews[1]["event"], "COMMENT");
    assert_eq!(
        reviews[0]["comments"][0],
        serde_json::json!({"path": "src/lib.rs", "line": 1, "side": "RIGHT",
                           "body": "**CRITICAL** two() is never called"})
    );
    let diffs = requests
        .iter()
        .filter(|r| r.accept.as_deref() == Some("application/vnd.github.v3.diff"))
        .count();
    assert!(
        diffs >= 1,
        "the diff is asked for with GitHub's diff media type"
    );
}

#[tokio::test]
async fn app_tokens_are_cached_per_installation_and_refreshed_before_expiry() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    for _ in 0..3 {
        forge.default_branch().await.expect("call");
    }
    assert_eq!(
        env.api.issued_token_count(),
        1,
        "one token serves many calls"
    );
    let lookups = env
        .api
        .requests_to(Method::GET, &env.repo_path("/installation"))
        .len();
    assert_eq!(lookups, 1, "the installation is looked up once");

    // A token that lives less than the refresh margin (300 s) is replaced
    // at every use: the refresh happens before expiry, not after a 401.
    env.api.set_token_lifetime(200);
    forge.default_branch().await.expect("call"); // still the hour-long token
    env.api.revoke_tokens();
    forge.default_branch().await.expect("renewed after a 401");
    assert_eq!(
        env.api.issued_token_count(),
        2,
        "a refused token is renewed once"
    );
    forge.default_branch().await.expect("call");
    forge.default_branch().await.expect("call");
    assert_eq!(
        env.api.issued_token_count(),
        4,
        "a token inside the refresh margin is replaced before use"
    );
    let repo_calls = env
        .api
        .requests()
        .iter()
        .filter(|r| r.path == env.repo_path(""))
        .count();
    assert_eq!(repo_calls, 8, "seven successful calls and one refused one");
}

#[tokio::test]
async fn a_fine_grained_token_is_used_as_is() {
    let env = GitHubEnv::start().await;
    env.api.accept_personal_token("github_pat_test_0001");
    let forge = env.forge_with(Credentials::token("github_pat_test_0001"), env.options());
    assert_eq!(forge.default_branch().await.expect("call"), "main");
    let requests = env.api.requests();
    assert_eq!(requests.len(), 1, "no App round trips");
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer github_pat_test_0001")
    );
    let wrong = env.forge_with(Credentials::token("github_pat_wrong"), env.options());
    let err = wrong.default_branch().await.expect_err("bad token");
    assert!(
        matches!(&err, ForgeError::Unauthorized(m) if m.contains("Bad credentials") && m.contains("get repository octo/widgets")),
        "{err}"
    );
}

#[tokio::test]
async fn the_client_is_built_from_kiln_toml() {
    let env = GitHubEnv::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("app.pem");
    std::fs::write(&key, &env.api.app().private_pem).expect("write key");
    let toml = format!(
        "[[secrets]]\nname = \"github-app\"\nkind = \"github-app-key\"\nsource = {{ file = {:?} }}\n\n\
         [github]\napi_url = {:?}\napp_id = {}\nprivate_key_secret = \"github-app\"\n",
        key.display().to_string(),
        env.api.url(),
        env.api.app().app_id
    );
    let config = kiln::config::KilnConfig::from_toml(&toml).expect("valid config");
    let github = GitHub::from_config(config.github.as_ref().expect("[github]"), &config.secrets)
        .expect("client");
    let forge = github.forge(RepoRef::parse("octo/widgets").expect("repo"));
    assert_eq!(forge.default_branch().await.expect("call"), "main");
}

#[tokio::test]
async fn issue_lists_follow_link_headers_and_leave_out_pull_requests() {
    let env = GitHubEnv::start().await;
    env.api.seed_issues(230);
    let forge = env.app_forge();
    let main = git(env.work.path(), &["rev-parse", "main"]);
    let c = commit_on(env.work.path(), &main, "a.txt", "a\n", "a");
    forge
        .push(env.work.path(), &c, "kiln/a")
        .await
        .expect("push");
    forge
        .create_draft_pull_request(NewPullRequest {
            title: "pr".into(),
            body: String::new(),
            head: "kiln/a".into(),
            base: "main".into(),
        })
        .await
        .expect("pr");
    let issues = forge.list_issues(StateFilter::Open).await.expect("list");
    assert_eq!(issues.len(), 230, "every page, and no pull request");
    assert_eq!(issues[0].title, "seeded 229", "newest first");
    let followed = env
        .api
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/repositories/1000/issues?"))
        .count();
    assert_eq!(followed, 2, "pages 2 and 3 came from the Link header");
}

#[tokio::test]
async fn a_link_outside_the_api_is_not_followed() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    forge.default_branch().await.expect("warm the token cache");
    env.api.inject(
        Fault::new(Method::GET, &env.repo_path("/issues"), 200)
            .body(serde_json::json!([]))
            .header("link", "<http://127.0.0.2:9/steal?page=2>; rel=\"next\""),
    );
    let err = forge
        .list_issues(StateFilter::Open)
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ForgeError::Unavailable(m) if m.contains("outside the API")),
        "{err}"
    );
}

#[tokio::test]
async fn rate_limits_are_waited_out_then_retried() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    forge.default_branch().await.expect("warm the token cache");
    let repo = env.repo_path("");
    env.api
        .inject(Fault::new(Method::GET, &repo, 429).header("retry-after", "1"));
    assert_eq!(forge.default_branch().await.expect("after waiting"), "main");
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 1;
    env.api.inject(
        Fault::new(Method::GET, &repo, 403)
            .header("x-ratelimit-remaining", "0")
            .header("x-ratelimit-reset", &reset.to_string())
            .body(serde_json::json!({"message": "API rate limit exceeded"})),
    );
    assert_eq!(
        forge.default_branch().await.expect("after the reset"),
        "main"
    );
    assert_eq!(
        env.api.requests_to(Method::GET, &repo).len(),
        5,
        "warm-up, 429 + retry, 403 + retry"
    );
}

#[tokio::test]
async fn a_rate_limit_longer_than_the_cap_fails_at_once() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    forge.default_branch().await.expect("warm the token cache");
    let repo = env.repo_path("");
    env.api.inject(
        Fault::new(Method::GET, &repo, 429)
            .header("retry-after", "3600")
            .forever(),
    );
    let err = forge.default_branch().await.expect_err("capped");
    assert!(
        matches!(&err, ForgeError::RateLimited(m) if m.contains("3600 s") && m.contains("get repository octo/widgets")),
        "{err}"
    );
    assert_eq!(env.api.requests_to(Method::GET, &repo).len(), 2, "no retry");
}

#[tokio::test]
async fn server_errors_are_retried_with_back_off_then_reported() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    forge.default_branch().await.expect("warm the token cache");
    let repo = env.repo_path("");
    env.api.inject(Fault::new(Method::GET, &repo, 502).times(2));
    assert_eq!(forge.default_branch().await.expect("third time"), "main");
    assert_eq!(env.api.requests_to(Method::GET, &repo).len(), 1 + 3);

    env.api
        .inject(Fault::new(Method::GET, &repo, 500).forever());
    let err = forge.default_branch().await.expect_err("gives up");
    assert!(
        matches!(&err, ForgeError::Unavailable(m)
            if m.contains("get repository octo/widgets") && m.contains("HTTP 500") && m.contains("4 attempts")),
        "{err}"
    );
    assert_eq!(
        env.api.requests_to(Method::GET, &repo).len(),
        4 + 4,
        "max_attempts requests, no more"
    );
}

#[tokio::test]
async fn a_write_answered_502_after_it_landed_is_not_sent_twice() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    let main = git(env.work.path(), &["rev-parse", "main"]);
    let c = commit_on(env.work.path(), &main, "a.txt", "a\n", "a");
    forge
        .push(env.work.path(), &c, "kiln/once")
        .await
        .expect("push");

    // A pull request whose creation GitHub applied but answered 502.
    let pulls = env.repo_path("/pulls");
    env.api
        .inject(Fault::new(Method::POST, &pulls, 502).after_applying());
    let pr = forge
        .create_draft_pull_request(NewPullRequest {
            title: "Once".into(),
            body: String::new(),
            head: "kiln/once".into(),
            base: "main".into(),
        })
        .await
        .expect("the landed pull request is found, not opened again");
    assert_eq!(env.api.requests_to(Method::POST, &pulls).len(), 1);
    let opened: Vec<u64> = env.api.pulls().iter().map(|p| p.0).collect();
    assert_eq!(opened, vec![pr], "one pull request, the one reported");

    // A comment, a review and a reply, each applied and answered 502.
    let comments = env.repo_path(&format!("/issues/{pr}/comments"));
    env.api
        .inject(Fault::new(Method::POST, &comments, 502).after_applying());
    let id = forge.comment(pr, "Posted once.").await.expect("comment");
    assert_eq!(env.api.requests_to(Method::POST, &comments).len(), 1);
    let posted = env.api.comments(pr);
    assert_eq!(posted.len(), 1, "{posted:?}");
    let got = forge.get_pull_request(pr).await.expect("pull request");
    assert_eq!(got.issue.comments.last().map(|c| c.id), Some(id));

    let reviews = env.repo_path(&format!("/pulls/{pr}/reviews"));
    env.api
        .inject(Fault::new(Method::POST, &reviews, 502).after_applying());
    let line = LineComment {
        path: "a.txt".into(),
        line: 1,
        new_side: true,
        severity: Severity::Suggestion,
        body: "one line".into(),
    };
    let review = forge
        .create_review(
            pr,
            NewReview {
                request_changes: false,
                body: "Reviewed once.".into(),
                comments: vec![line],
            },
        )
        .await
        .expect("review");
    assert_eq!(env.api.requests_to(Method::POST, &reviews).len(), 1);
    let listed = forge.list_reviews(pr).await.expect("reviews");
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![review]
    );
    let thread = forge
        .get_pull_request(pr)
        .await
        .expect("pull request")
        .review_threads[0]
        .id;
    let replies = env.repo_path(&format!("/pulls/{pr}/comments/{thread}/replies"));
    env.api
        .inject(Fault::new(Method::POST, &replies, 502).after_applying());
    let reply = forge
        .reply_to_review_comment(pr, thread, "Answered once.")
        .await
        .expect("reply");
    assert_eq!(env.api.requests_to(Method::POST, &replies).len(), 1);
    let threads = forge
        .get_pull_request(pr)
        .await
        .expect("pull request")
        .review_threads;
    let bodies: Vec<(u64, &str)> = threads[0]
        .comments
        .iter()
        .map(|c| (c.id, c.body.as_str()))
        .collect();
    assert_eq!(bodies[1..], [(reply, "Answered once.")]);

    // A 502 that did not apply: looked for, not found, sent again, once.
    env.api.inject(Fault::new(Method::POST, &comments, 502));
    forge.comment(pr, "Second.").await.expect("comment");
    assert_eq!(env.api.requests_to(Method::POST, &comments).len(), 1 + 2);
    assert_eq!(env.api.comments(pr).len(), 2);
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported() {
    // A listener that accepts and hangs up at once: a connection error on
    // every attempt, counted here.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            // Counted before the hang-up: the client cannot see its error
            // (and the test cannot read the count) before the count is made.
            *counter.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            drop(stream);
        }
    });
    let options = Options {
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(10),
            max_rate_limit_wait: Duration::from_secs(1),
        },
        ..Options::default()
    };
    let forge = GitHub::new(&format!("http://{addr}"), Credentials::token("t"), options)
        .expect("client")
        .forge(RepoRef::parse("octo/widgets").expect("repo"));
    let err = forge.default_branch().await.expect_err("unreachable");
    assert!(
        matches!(&err, ForgeError::Unavailable(m) if m.contains("cannot reach GitHub")),
        "{err}"
    );
    assert_eq!(*accepted.lock().unwrap_or_else(|e| e.into_inner()), 3);
}

#[tokio::test]
async fn client_errors_name_the_call_and_githubs_reason() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    let number = forge
        .create_issue(NewIssue {
            title: "t".into(),
            body: String::new(),
            labels: Vec::new(),
        })
        .await
        .expect("issue");
    let labels = env.repo_path(&format!("/issues/{number}/labels"));
    let recorded_422 = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/github/rest/errors/normalized-fixture.json"
        ))
        .expect("fixture"),
    )
    .expect("json")[0]["response"]
        .clone();
    env.api
        .inject(Fault::new(Method::POST, &labels, 422).body(recorded_422));
    let err = forge
        .add_labels(number, &["x".into()])
        .await
        .expect_err("422");
    assert_eq!(
        err.to_string(),
        format!(
            "rejected by the forge: add labels to #{number} in octo/widgets: \
             Validation Failed: Label.color: invalid (HTTP 422)"
        )
    );
    assert_eq!(
        env.api.requests_to(Method::POST, &labels).len(),
        1,
        "no retry"
    );

    let repo = env.repo_path("");
    env.api.inject(
        Fault::new(Method::GET, &repo, 403)
            .body(serde_json::json!({"message": "Resource not accessible by integration"})),
    );
    let err = forge.default_branch().await.expect_err("403");
    assert!(
        matches!(&err, ForgeError::Unauthorized(m) if m.contains("Resource not accessible by integration")),
        "{err}"
    );
    let err = forge.get_issue(4040).await.expect_err("404");
    assert!(
        matches!(&err, ForgeError::NotFound(m) if m.contains("get issue #4040 in octo/widgets")),
        "{err}"
    );
    let err = forge
        .create_draft_pull_request(NewPullRequest {
            title: "t".into(),
            body: String::new(),
            head: "kiln/does-not-exist".into(),
            base: "main".into(),
        })
        .await
        .expect_err("422 from the server's own validation");
    assert!(
        matches!(&err, ForgeError::Rejected(m) if m.contains("PullRequest.head: invalid")),
        "{err}"
    );
    for (what, result) in [
        (
            "empty label",
            forge.add_labels(number, &[String::new()]).await,
        ),
        ("bad login", forge.permission("a b").await.map(|_| ())),
        (
            "line 0",
            forge
                .create_review(
                    number,
                    NewReview {
                        request_changes: false,
                        body: "b".into(),
                        comments: vec![LineComment {
                            path: "a".into(),
                            line: 0,
                            new_side: true,
                            severity: Severity::Nit,
                            body: "x".into(),
                        }],
                    },
                )
                .await
                .map(|_| ()),
        ),
    ] {
        assert!(
            matches!(result, Err(ForgeError::Invalid(_))),
            "{what}: expected Invalid, got {result:?}"
        );
    }
}

#[tokio::test]
async fn pushes_outside_kiln_are_refused_before_any_request() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    let main = git(env.work.path(), &["rev-parse", "main"]);
    let c = commit_on(env.work.path(), &main, "x", "x\n", "x");
    for branch in [
        "main",
        "release",
        "kiln",
        "kiln/",
        "feature/kiln/x",
        "kiln/a..b",
    ] {
        let result = forge.push(env.work.path(), &c, branch).await;
        assert!(
            matches!(&result, Err(ForgeError::Invalid(_))),
            "{branch}: {result:?}"
        );
    }
    assert!(env.api.requests().is_empty(), "refused before any request");
    assert_eq!(env.api.branch_head("main"), Some(main));
}

#[tokio::test]
async fn the_push_ignores_the_workspace_repository_config_and_hooks() {
    let env = GitHubEnv::start().await;
    let forge = env.app_forge();
    let work = env.work.path();
    let main = git(work, &["rev-parse", "main"]);
    let c = commit_on(work, &main, "y", "y\n", "y");
    // What a sandbox could leave behind in its workspace's .git.
    let marker = work.join("hook-ran");
    let hook = work.join(".git/hooks/pre-push");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).expect("hook");
    let mut perms = std::fs::metadata(&hook).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&hook, perms).expect("chmod");
    git(
        work,
        &[
            "config",
            "url.http://127.0.0.2:9/.insteadOf",
            &env.api.url(),
        ],
    );
    git(work, &["config", "http.proxy", "http://127.0.0.2:9"]);
    forge.push(work, &c, "kiln/hermetic").await.expect("push");
    assert_eq!(env.api.branch_head("kiln/hermetic"), Some(c));
    assert!(
        !marker.exists(),
        "the workspace's pre-push hook must not run"
    );
}

#[tokio::test]
async fn the_token_never_appears_in_logs_argv_or_debug_output() {
    let env = GitHubEnv::start().await;
    // A `git` that records its argv and environment, then runs the real git.
    let bin = tempfile::tempdir().expect("tempdir");
    let record = bin.path().join("record");
    let real_git = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("which git")
            .stdout,
    )
    .expect("utf-8");
    let wrapper = bin.path().join("git");
    let mut f = std::fs::File::create(&wrapper).expect("wrapper");
    write!(
        f,
        "#!/bin/sh\nprintf 'ARGV %s\\n' \"$*\" >> {rec}\nenv >> {rec}\nexec {git} \"$@\"\n",
        rec = record.display(),
        git = real_git.trim()
    )
    .expect("write wrapper");
    drop(f);
    let mut perms = std::fs::metadata(&wrapper).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod");

    // Capture every log line, at every level, from every crate.
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = Arc::clone(&logs);
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogSink(Arc::clone(&sink)))
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this binary register and drop their own subscribers on
    // other threads; make every callsite ask again whether it is enabled.
    tracing::callsite::rebuild_interest_cache();

    let credentials =
        Credentials::app(env.api.app().app_id, env.api.app().private_pem.as_bytes()).expect("key");
    let credentials_debug = format!("{credentials:?}");
    let options = Options {
        git: wrapper.clone(),
        ..env.options()
    };
    let github = GitHub::new(&env.api.url(), credentials, options).expect("client");
    let forge = github.forge(RepoRef::parse("octo/widgets").expect("repo"));
    let main = git(env.work.path(), &["rev-parse", "main"]);
    let c = commit_on(env.work.path(), &main, "z", "z\n", "z");
    forge
        .push(env.work.path(), &c, "kiln/secret")
        .await
        .expect("push");
    let remote = forge.git_remote().await.expect("remote");
    env.api.revoke_tokens();
    forge.default_branch().await.expect("renewed");
    env.api
        .inject(Fault::new(Method::GET, &env.repo_path(""), 500).forever());
    let err = forge.default_branch().await.expect_err("500");
    // The new forge calls fail through the same path: their errors too.
    let reply_err = forge
        .reply_to_review_comment(404, 1, "x")
        .await
        .expect_err("no such pull request");
    let status_err = forge
        .set_status(
            404,
            &CommitStatus {
                context: "kiln/verification".into(),
                state: StatusState::Success,
                description: String::new(),
            },
        )
        .await
        .expect_err("no such pull request");

    let tokens = env.api.issued_tokens();
    assert!(!tokens.is_empty());
    let logs =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    assert!(logs.contains("GitHub answered"), "logs were captured");
    let record = std::fs::read_to_string(&record).expect("git ran through the wrapper");
    let argv: String = record
        .lines()
        .filter(|l| l.starts_with("ARGV "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(argv.contains("push --force"), "{argv}");
    assert!(
        record.contains("GIT_CONFIG_VALUE_") && record.contains("Authorization: Basic "),
        "the credential travels in the environment"
    );
    let key_line = env
        .api
        .app()
        .private_pem
        .lines()
        .nth(1)
        .expect("key body")
        .to_string();
    let outputs = [
        ("logs", logs.clone()),
        ("argv", argv),
        ("forge Debug", format!("{forge:?}")),
        ("client Debug", format!("{github:?}")),
        ("credentials Debug", credentials_debug),
        ("remote Debug", format!("{remote:?}")),
        ("error", err.to_string()),
        ("reply error", reply_err.to_string()),
        ("status error", status_err.to_string()),
    ];
    let basic = remote.authorization.clone().expect("authorization");
    for token in &tokens {
        for (what, text) in &outputs {
            assert!(!text.contains(token.as_str()), "token in {what}");
            assert!(!text.contains(&basic), "git header in {what}");
            assert!(!text.contains(&key_line), "private key in {what}");
        }
    }
}

/// A `tracing` writer into a shared buffer.
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The local forge under a temporary root, and a clone of its repository.
struct LocalEnv {
    _root: tempfile::TempDir,
    forge: kiln::forge::local::LocalForge,
    work: tempfile::TempDir,
}

#[async_trait::async_trait]
impl ContractEnv for LocalEnv {
    async fn grant(&self, login: &str, permission: Permission) {
        self.forge
            .set_permission(login, permission)
            .await
            .expect("grant");
    }

    fn work_repo(&self) -> &Path {
        self.work.path()
    }

    async fn branch_head(&self, branch: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(self.forge.bare_repo())
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[tokio::test]
async fn the_contract_holds_for_the_local_forge() {
    let root = tempfile::tempdir().expect("tempdir");
    let src = root.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("README.md"), "hello\n").expect("write");
    let forge = kiln::forge::local::LocalForge::create(
        &root.path().join("forge"),
        kiln::forge::RepoRef::parse("local/contract").expect("repo"),
        "owner",
        Some(&src),
    )
    .await
    .expect("create");
    let work = tempfile::tempdir().expect("tempdir");
    let bare = forge.bare_repo();
    let status = std::process::Command::new("git")
        .args(["clone", "--quiet"])
        .arg(&bare)
        .arg(work.path())
        .status()
        .expect("clone");
    assert!(status.success());
    git(work.path(), &["config", "user.name", "t"]);
    git(work.path(), &["config", "user.email", "t@t"]);
    let env = LocalEnv {
        _root: root,
        forge: forge.clone(),
        work,
    };
    contract(&forge, &env).await;
}

// A token cannot create check runs (GitHub refuses it): with one, Kiln's
// statuses stay classic commit statuses; an App's are check runs. Both know
// the login their comments appear under.
#[tokio::test]
async fn with_a_token_statuses_are_classic_commit_statuses() {
    let env = GitHubEnv::start().await;
    let app = env.app_forge();
    let head = commit_on(env.work.path(), "main", "src/x.rs", "x\n", "x");
    app.push(env.work.path(), &head, "kiln/token-status")
        .await
        .expect("push");
    let pr = app
        .create_draft_pull_request(NewPullRequest {
            title: "t".into(),
            body: "b".into(),
            head: "kiln/token-status".into(),
            base: "main".into(),
        })
        .await
        .expect("open a pull request");
    env.api.accept_personal_token("github_pat_test_0002");
    let token = env.forge_with(Credentials::token("github_pat_test_0002"), env.options());
    let failed = CommitStatus {
        context: "kiln/verification".into(),
        state: StatusState::Failure,
        description: "1 of 2 check(s) failed".into(),
    };
    token.set_status(pr, &failed).await.expect("set status");
    assert_eq!(token.list_statuses(pr).await.expect("list"), vec![failed]);
    assert!(env.api.check_runs().is_empty(), "no check run with a token");
    let posted = env
        .api
        .requests_to(Method::POST, &env.repo_path(&format!("/statuses/{head}")));
    assert_eq!(posted.len(), 1);
    assert_eq!(
        token.own_login().await.expect("GET /user"),
        github_api::BOT_LOGIN
    );
    assert_eq!(
        app.own_login().await.expect("GET /app"),
        "kiln-test[bot]",
        "an App writes as <slug>[bot]"
    );
}

/// The outer loop's triage evidence read from GitHub: a maintainer who
/// relabelled an issue after Kiln's triage is a signal naming the run, the
/// issue, the maintainer, their trust and what changed; a stranger's
/// relabelling is a signal too, marked untrusted.
#[tokio::test]
async fn relabelling_after_triage_on_github_is_a_signal_with_its_evidence() {
    use kiln::config::Role;
    use kiln::plugin::types::SignalKind;
    use kiln::policy::Trust;
    use kiln::store::{
        NewRun, RunState, RunStore, SqliteOptions, SqliteStore, Trigger, TriggerKind,
    };

    let env = GitHubEnv::start().await;
    env.api.grant("maintainer", "write");
    let forge = env.app_forge();
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
            .await
            .expect("store"),
    );
    let repo = RepoRef::parse(&format!("{OWNER}/{NAME}")).expect("repo");
    let number = env
        .api
        .open_issue("reporter", "Crash on start", "it crashes");
    let run = store
        .enqueue_run(NewRun {
            script: None,
            repo: repo.clone(),
            role: Role::Triage,
            number,
            trigger: Trigger {
                kind: TriggerKind::IssueOpened,
                actor: "reporter".into(),
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
        store.transition(run, from, to, None).await.expect("state");
    }
    forge
        .add_labels(number, &["question".into()])
        .await
        .expect("kiln labels");
    store
        .transition(run, RunState::Running, RunState::Succeeded, None)
        .await
        .expect("done");
    env.api
        .relabel("maintainer", number, &["bug"], &["question"]);
    env.api.relabel("reporter", number, &["urgent"], &[]);

    let signals = kiln::signals::forge::ForgeSignals::new(store, Arc::new(forge), repo)
        .signals(Role::Triage, 0)
        .await
        .expect("signals");
    let mut found: Vec<_> = signals
        .iter()
        .map(|s| {
            (
                s.kind,
                s.number,
                s.author.as_str(),
                s.trusted,
                s.run_id.clone(),
            )
        })
        .collect();
    found.sort_by_key(|f| f.2.to_string());
    assert_eq!(
        found,
        vec![
            (
                SignalKind::LabelCorrected,
                Some(number),
                "maintainer",
                true,
                Some(run.to_string())
            ),
            (
                SignalKind::LabelCorrected,
                Some(number),
                "reporter",
                false,
                Some(run.to_string())
            ),
        ],
        "{signals:#?}"
    );
    let evidence = &signals
        .iter()
        .find(|s| s.author == "maintainer")
        .expect("maintainer")
        .evidence;
    assert!(
        evidence.ends_with(&format!(
            "labelled #{number} `question`; afterwards maintainer added `bug` and removed `question`"
        )),
        "{evidence}"
    );
}
