//! The verification role end to end: a pull request whose head has a
//! `.kiln/verify.toml`, the real built-in plugin, the default gate, a real
//! Docker sandbox at the pull request's head and the local forge (then the
//! loopback GitHub API). What a maintainer sees: one report comment,
//! updated in place on every run, and a `kiln/verification` status (on
//! GitHub a check run, created with the App's installation token); a
//! malformed file is reported with its line; the checks cannot change the
//! files they check.
use std::path::Path;
use std::sync::Arc;

use kiln::config::Role;
use kiln::forge::local::KILN_LOGIN;
use kiln::forge::{Comment, EffectState, Forge, NewPullRequest, StatusState};
use kiln::policy::Trust;
use kiln::session::MemoryEvents;
use kiln::worker::{LiveRun, RunEnd, RunRequest, RunSummary, RunTrigger, Services, execute};

use crate::support::github_api::{BOT_LOGIN, GitHubApi, git};
use crate::support::{images, service};

/// A verify file with a passing check, a check that tries to overwrite a
/// tracked file (and must fail), one that tries every other way to change
/// the checkout (and checks none worked), one writing a build output, and
/// one that outlives its time limit.
const VERIFY: &str = r#"
[[check]]
name = "greets"
run = ["bash", "-c", "echo hello from the sandbox"]

[[check]]
name = "tamper"
run = ["bash", "-c", "echo hacked > README.md"]

[[check]]
name = "intact"
run = ["bash", "-c", """
changed=0
for try in 'rm -f README.md' 'mv README.md moved' 'chmod 666 README.md' \
           'ln -sf /etc/passwd README.md' 'touch .git/kiln-was-here' \
           'mv .kiln gone' 'rm -rf .kiln' 'echo x >> .kiln/verify.toml'; do
  if bash -c "$try" 2>/dev/null; then echo "CHANGED: $try"; changed=1; fi
done
grep -q '^# Sample' README.md || { echo "README.md changed"; changed=1; }
echo "checkout intact: $((1 - changed))"
exit $changed
"""]

[[check]]
name = "outputs"
run = ["bash", "-c", "mkdir -p target && echo built > target/out && cat target/out"]

[[check]]
name = "slow"
run = ["sleep", "30"]
timeout_secs = 1
"#;

/// Pushes `files` on top of `main` to branch `branch` of `forge` and opens
/// a draft pull request from it; returns its number.
async fn open_pull_request(
    forge: &dyn Forge,
    work: &Path,
    branch: &str,
    files: &[(&str, &str)],
) -> u64 {
    let remote = forge.git_remote().await.expect("remote");
    if !work.join(".git").exists() {
        let mut clone = std::process::Command::new("git");
        clone.args(["clone", "--quiet", &remote.url]).arg(work);
        if let Some(auth) = &remote.authorization {
            clone
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env("GIT_CONFIG_VALUE_0", format!("Authorization: {auth}"));
        }
        let status = tokio::task::spawn_blocking(move || clone.status())
            .await
            .expect("join")
            .expect("git clone");
        assert!(status.success(), "clone the forge's repository");
    }
    git(work, &["checkout", "--quiet", "-B", branch, "origin/main"]);
    for (path, text) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        git(work, &["add", path]);
    }
    git(
        work,
        &[
            "-c",
            "user.name=alice",
            "-c",
            "user.email=alice@example.com",
            "commit",
            "--quiet",
            "-m",
            "add checks",
        ],
    );
    let head = git(work, &["rev-parse", "HEAD"]);
    forge.push(work, &head, branch).await.expect("push");
    forge
        .create_draft_pull_request(NewPullRequest {
            title: "Add checks".into(),
            body: "Adds `.kiln/verify.toml`.".into(),
            head: branch.into(),
            base: "main".into(),
        })
        .await
        .expect("open a pull request")
}

async fn verify(services: &Services, forge: &Arc<dyn Forge>, run_id: &str, pr: u64) -> RunSummary {
    let req = RunRequest {
        script: None,
        run_id: run_id.into(),
        repo: forge.repo().clone(),
        role: Role::Verification,
        number: pr,
        trigger: RunTrigger::Command("/kiln verify".into()),
        trust: Trust::Trusted,
        actor: None,
        instructions: None,
        continue_from: Vec::new(),
    };
    execute(
        services,
        forge.clone(),
        &req,
        Arc::new(MemoryEvents::new()),
        &LiveRun::new(),
    )
    .await
}

/// The services `kiln serve` builds, with a model that would only say it
/// should not have been asked (a verify file means the model is not).
async fn services(root: &Path, runner: &str) -> Services {
    services_with_model(
        root,
        runner,
        r#"{"turns": [{"text": "NOT ASKED: a verify file exists"}]}"#,
    )
    .await
}

/// The services `kiln serve` builds, with the scripted model `script`.
async fn services_with_model(root: &Path, runner: &str, script: &str) -> Services {
    let (image, _proxy) = images::images().await;
    let backend = service::sandboxes(images::docker().await, runner).await;
    service::role_services(root, backend, image, service::scripted("verify", script))
}

/// Kiln's report comments among `comments` (the run's progress comment is
/// Kiln's too, but says nothing about checks).
fn reports<'a>(comments: &'a [Comment], own: &str) -> Vec<&'a Comment> {
    comments
        .iter()
        .filter(|c| c.author == own && c.body.contains("**Kiln verification: "))
        .collect()
}

/// The visible report: the body after the hidden marker line.
fn visible(c: &Comment) -> &str {
    let (marker, rest) = c.body.split_once('\n').expect("marker line");
    assert_eq!(marker, "<!-- kiln:report:verification -->");
    rest
}

fn report_effect_url(summary: &RunSummary) -> String {
    let report = summary.report.as_ref().expect("the plugin ran");
    report
        .effects
        .iter()
        .find_map(|e| match (&e.proposal, &e.state) {
            (kiln::forge::Proposal::Report { .. }, EffectState::Applied { url }) => url.clone(),
            _ => None,
        })
        .expect("the report was applied")
}

#[tokio::test]
async fn checks_run_at_the_head_and_report_once_updated_in_place_and_cannot_change_the_checkout() {
    let root = tempfile::tempdir().expect("tempdir");
    let local = service::sample_repo(root.path(), "# Sample\n").await;
    let work = root.path().join("work");
    let pr = open_pull_request(
        &local,
        &work,
        "kiln/add-checks",
        &[(".kiln/verify.toml", VERIFY)],
    )
    .await;
    let forge: Arc<dyn Forge> = Arc::new(local.clone());
    let services = services(root.path(), "test-verification-local").await;

    let first = verify(&services, &forge, "r-verify-1", pr).await;
    assert_eq!(first.state, RunEnd::Succeeded, "{}", first.reason);
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let found = reports(&comments, KILN_LOGIN);
    assert_eq!(found.len(), 1, "one report: {comments:#?}");
    let text = visible(found[0]);
    assert!(
        text.starts_with("**Kiln verification: failed** — 2 of 5 check(s) failed at `"),
        "the status line comes first: {text}"
    );
    for row in [
        "| greets | passed | 0 |",
        "| tamper | failed | 1 |",
        "| intact | passed | 0 |",
        "| outputs | passed | 0 |",
        "| slow | failed | killed (timeout) |",
    ] {
        assert!(text.contains(row), "a row {row:?} in:\n{text}");
    }
    assert!(
        text.contains("Permission denied"),
        "the tail shows why the tampering check failed:\n{text}"
    );
    assert!(text.contains("checkout intact: 1"), "{text}");
    assert!(
        !text.lines().any(|l| l.starts_with("CHANGED:")),
        "nothing changed the checkout:\n{text}"
    );
    assert!(text.contains("hello from the sandbox"), "{text}");
    let statuses = forge.list_statuses(pr).await.expect("statuses");
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    assert_eq!(statuses[0].context, "kiln/verification");
    assert_eq!(statuses[0].state, StatusState::Failure);
    assert_eq!(statuses[0].description, "2 of 5 check(s) failed");

    // A second run edits the same comment: still one report.
    let second = verify(&services, &forge, "r-verify-2", pr).await;
    assert_eq!(second.state, RunEnd::Succeeded, "{}", second.reason);
    let url = report_effect_url(&second);
    assert!(
        url.ends_with(&format!("comment {} (updated)", found[0].id)),
        "the earlier report was updated: {url}"
    );
    let again = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let found_again = reports(&again, KILN_LOGIN);
    assert_eq!(found_again.len(), 1, "still one report: {again:#?}");
    assert_eq!(found_again[0].id, found[0].id);

    // Someone else's comment carrying the marker is never edited, nor taken
    // for the report.
    let stranger = local
        .acting_as("mallory")
        .comment(
            pr,
            "<!-- kiln:report:verification -->\n**Kiln verification: passed** (not really)",
        )
        .await
        .expect("a stranger comments");
    let third = verify(&services, &forge, "r-verify-3", pr).await;
    assert_eq!(third.state, RunEnd::Succeeded, "{}", third.reason);
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let theirs = comments.iter().find(|c| c.id == stranger).expect("theirs");
    assert!(
        theirs.body.contains("(not really)"),
        "untouched: {theirs:?}"
    );
    assert_eq!(reports(&comments, KILN_LOGIN).len(), 1);
    assert!(report_effect_url(&third).ends_with("(updated)"));
    assert_eq!(
        services.sandboxes.remove_orphans().await.expect("cleanup"),
        0,
        "no container was left behind"
    );
}

#[tokio::test]
async fn a_malformed_verify_file_is_reported_with_its_line_and_nothing_runs() {
    let root = tempfile::tempdir().expect("tempdir");
    let local = service::sample_repo(root.path(), "# Sample\n").await;
    let pr = open_pull_request(
        &local,
        &root.path().join("work"),
        "kiln/bad-checks",
        &[(
            ".kiln/verify.toml",
            "[[check]]\nname = \"unit\"\nrun = [\"make\", \"test\"]\ntimeout_secs = 0\n",
        )],
    )
    .await;
    let forge: Arc<dyn Forge> = Arc::new(local);
    let services = services(root.path(), "test-verification-malformed").await;
    let summary = verify(&services, &forge, "r-verify-bad", pr).await;
    assert_eq!(summary.state, RunEnd::Succeeded, "{}", summary.reason);
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let found = reports(&comments, KILN_LOGIN);
    assert_eq!(found.len(), 1, "{comments:#?}");
    let text = visible(found[0]);
    assert!(
        text.starts_with("**Kiln verification: errored**"),
        "status line: {text}"
    );
    assert!(
        text.contains(
            ".kiln/verify.toml line 4: `timeout_secs` is 0, it must be from 1 to 3600 seconds"
        ),
        "the report names the line and what is wrong:\n{text}"
    );
    assert!(text.contains("No check was run"), "{text}");
    let statuses = forge.list_statuses(pr).await.expect("statuses");
    assert_eq!(statuses[0].state, StatusState::Error, "{statuses:?}");
}

#[tokio::test]
async fn without_a_verify_file_the_models_guess_runs_and_the_report_says_it_was_guessed() {
    let root = tempfile::tempdir().expect("tempdir");
    let local = service::sample_repo(root.path(), "# Sample\n").await;
    let pr = open_pull_request(
        &local,
        &root.path().join("work"),
        "kiln/no-checks",
        &[("Makefile", "test:\n\t@echo tests pass\n")],
    )
    .await;
    let forge: Arc<dyn Forge> = Arc::new(local);
    // The model first proposes a check the limits refuse (the plugin sends
    // the refusal back), then a good one.
    let script = r#"{"turns": [
      {"tool_calls": [{"name": "read_file", "arguments": {"path": "Makefile"}}]},
      {"tool_calls": [{"name": "submit_checks", "arguments":
        {"checks": [{"name": "tests", "run": []}], "found_in": "Makefile"}}]},
      {"tool_calls": [{"name": "submit_checks", "arguments":
        {"checks": [{"name": "tests", "run": ["bash", "-c", "grep -q 'tests pass' Makefile && echo tests pass"]}],
         "found_in": "Makefile target `test`"}}]}
    ]}"#;
    let services = services_with_model(root.path(), "test-verification-guess", script).await;
    let summary = verify(&services, &forge, "r-verify-guess", pr).await;
    assert_eq!(summary.state, RunEnd::Succeeded, "{}", summary.reason);
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let found = reports(&comments, KILN_LOGIN);
    assert_eq!(found.len(), 1, "{comments:#?}");
    let text = visible(found[0]);
    assert!(text.starts_with("**Kiln verification: passed**"), "{text}");
    assert!(text.contains("| tests | passed | 0 |"), "{text}");
    assert!(
        text.contains("**These checks were guessed**") && text.contains("Makefile target `test`"),
        "the report says it guessed, and from what:\n{text}"
    );
    let statuses = forge.list_statuses(pr).await.expect("statuses");
    assert_eq!(statuses[0].state, StatusState::Success, "{statuses:?}");
}

#[tokio::test]
async fn on_github_the_status_is_a_check_run_created_with_the_installation_token() {
    use kiln::forge::github::{Credentials, GitHub, Options};
    let api = GitHubApi::start("octo", "widgets").await;
    let seed = tempfile::tempdir().expect("tempdir");
    git(seed.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(seed.path().join("README.md"), "# Sample\n").expect("write");
    git(seed.path(), &["add", "README.md"]);
    git(
        seed.path(),
        &[
            "-c",
            "user.name=a",
            "-c",
            "user.email=a@example.com",
            "commit",
            "--quiet",
            "-m",
            "initial",
        ],
    );
    let bare = api.bare_repo().to_string_lossy().into_owned();
    git(
        seed.path(),
        &["push", "--quiet", &bare, "main:refs/heads/main"],
    );
    let github = GitHub::new(
        &api.url(),
        Credentials::app(api.app().app_id, api.app().private_pem.as_bytes()).expect("app key"),
        Options::default(),
    )
    .expect("client");
    let gh = github.forge(kiln::forge::RepoRef::parse("octo/widgets").expect("repo"));
    let root = tempfile::tempdir().expect("tempdir");
    let pr = open_pull_request(
        &gh,
        &root.path().join("work"),
        "kiln/add-checks",
        &[(
            ".kiln/verify.toml",
            "[[check]]\nname = \"greets\"\nrun = [\"echo\", \"hello\"]\n",
        )],
    )
    .await;
    let forge: Arc<dyn Forge> = Arc::new(gh);
    let services = services(root.path(), "test-verification-github").await;
    for run in ["r-gh-1", "r-gh-2"] {
        let summary = verify(&services, &forge, run, pr).await;
        assert_eq!(summary.state, RunEnd::Succeeded, "{}", summary.reason);
    }
    let runs = api.check_runs();
    assert_eq!(
        runs.len(),
        4,
        "in progress, then the verdict, per verification: {runs:?}"
    );
    let head = forge.get_pull_request(pr).await.expect("pr").head_sha;
    for r in runs.iter().step_by(2) {
        assert_eq!(
            (r.name.as_str(), r.head_sha.as_str()),
            ("kiln/verification", head.as_str())
        );
        assert_eq!(r.status, "in_progress");
        assert_eq!(r.title.as_deref(), Some("running 1 check(s)"));
    }
    for r in runs.iter().skip(1).step_by(2) {
        assert_eq!(r.name, "kiln/verification");
        assert_eq!(r.head_sha, head);
        assert_eq!(r.status, "completed");
        assert_eq!(r.conclusion.as_deref(), Some("success"));
        assert_eq!(r.title.as_deref(), Some("1 check(s) passed"));
    }
    let posts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/check-runs"))
        .collect();
    assert_eq!(posts.len(), 4);
    assert!(
        posts.iter().all(|r| r
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer ghs_"))),
        "check runs are created with the installation token"
    );
    assert!(
        !api.requests().iter().any(|r| r.path.contains("/statuses/")),
        "an App sets no classic status"
    );
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    let found = reports(&comments, BOT_LOGIN);
    assert_eq!(
        found.len(),
        1,
        "one report, edited by the second run: {comments:#?}"
    );
    assert!(visible(found[0]).starts_with("**Kiln verification: passed**"));
}
