//! The chain from webhooks: the real `kiln serve` with a GitHub App forge
//! against the loopback GitHub server, driven by signed deliveries built
//! from GitHub's recorded webhook payloads, as GitHub would send them after
//! each change. Triage (untrusted), spec, implementation, review and
//! verification run in real sandboxes; every write goes through the API
//! with the App's installation token, and no token, App key or webhook
//! secret ever reaches a sandbox or a run's record.

use std::path::Path;

use kiln::config::Role;
use kiln::policy::Trust;
use kiln::store::{Run, RunState};
use serde_json::{Value, json};

use crate::support::github_api::{BOT_LOGIN, GitHubApi, git};
use crate::support::images;
use crate::support::serve::{Containers, Env, Serve, wait_for};
use crate::support::webhooks::{
    NAME, OWNER, REPO, at_repo, deliver, fixture, issues_event, person,
};

/// The maintainer: write permission on the loopback server.
const MAINTAINER: &str = "maya";
/// The reporter: no permission at all.
const STRANGER: &str = "drive-by";

/// A verification check that fails if a forge credential is visible in the
/// sandbox: an installation token or a PEM key in the environment or on
/// disk, or an auth header in git's config. The patterns are split so this
/// file itself does not match them.
const NO_CREDENTIALS_CHECK: &str = r#"
[[check]]
name = "no-forge-credentials"
run = ["bash", "-c", """
pat='gh''s_[A-Za-z0-9]{20,}|BEGIN ''RSA|BEGIN ''PRIVATE'
found=0
if env | grep -Eq "$pat"; then echo "a credential in the environment"; found=1; fi
if grep -rEqs "$pat" . /tmp /root /home /etc 2>/dev/null; then echo "a credential on disk"; found=1; fi
if git config --list 2>/dev/null | grep -iq extraheader; then echo "an auth header in git config"; found=1; fi
echo "forge credentials visible: $found"
exit $found
"""]
timeout_secs = 60
"#;

/// `pull_request.opened` for pull request `number` from `head`, opened by `sender`.
fn pull_request_opened(number: u64, head: &str, head_sha: &str, sender: &str) -> Value {
    let mut v = fixture("pull_request/opened.payload.json");
    at_repo(&mut v);
    v["number"] = json!(number);
    v["pull_request"]["number"] = json!(number);
    v["pull_request"]["head"]["ref"] = json!(head);
    v["pull_request"]["head"]["sha"] = json!(head_sha);
    v["pull_request"]["base"]["ref"] = json!("main");
    v["pull_request"]["user"] = person(&v["pull_request"]["user"], sender);
    v["sender"] = person(&v["sender"], sender);
    v
}

/// `pull_request_review.submitted` for review `id` (`state` as GitHub's
/// webhooks spell it) on pull request `number` from `head`.
fn review_submitted(number: u64, head: &str, id: u64, state: &str, by: &str) -> Value {
    let mut v = fixture("pull_request_review/submitted.with-organization.payload.json");
    at_repo(&mut v);
    v["pull_request"]["number"] = json!(number);
    v["pull_request"]["head"]["ref"] = json!(head);
    v["pull_request"]["user"] = person(&v["pull_request"]["user"], BOT_LOGIN);
    v["review"]["id"] = json!(id);
    v["review"]["state"] = json!(state);
    v["review"]["user"] = person(&v["review"]["user"], by);
    v["sender"] = person(&v["sender"], by);
    v
}

/// Waits until `kiln serve` has `n` runs and all have ended (or one failed).
async fn settled_runs(
    serve: &mut Serve,
    client: &kiln::api::client::Client,
    n: usize,
    what: &str,
) -> Vec<Run> {
    wait_for(serve, what, 900, || async move {
        let mut runs = client.runs("").await.ok()?;
        runs.sort_by_key(|r| r.id);
        let broken = runs
            .iter()
            .any(|r| r.state.is_terminal() && r.state != RunState::Succeeded);
        ((runs.len() >= n || broken) && runs.iter().all(|r| r.state.is_terminal())).then_some(runs)
    })
    .await
}

/// `(role, number, state)` of each run, oldest first.
fn roles(runs: &[Run]) -> Vec<(Role, u64, RunState)> {
    runs.iter().map(|r| (r.role, r.number, r.state)).collect()
}

/// Every event and the JSONL transcript of run `id`, as the API serves them.
async fn run_record(client: &kiln::api::client::Client, id: u64) -> String {
    let mut out = String::new();
    let mut after = 0;
    loop {
        let (events, _) = client.events_page(id, after).await.expect("events");
        let Some(last) = events.last() else { break };
        after = last.seq;
        out.push_str(&serde_json::to_string(&events).expect("json"));
    }
    out.push_str(&client.transcript(id, "jsonl").await.expect("transcript"));
    out
}

/// Every file under `dir`, recursively, as bytes.
fn all_files(dir: &Path, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            all_files(&path, out);
        } else if kind.is_file()
            && let Ok(bytes) = std::fs::read(&path)
        {
            out.push((path, bytes));
        }
    }
}

/// Seeds `main` of the loopback repository with the demo sample repository
/// plus the credentials check in its `.kiln/verify.toml`.
fn seed_main(api: &GitHubApi, demo: &Path, work: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(demo.join("sample-repo"))
        .arg(work)
        .status()
        .expect("cp");
    assert!(status.success());
    let verify = work.join(".kiln/verify.toml");
    let mut text = std::fs::read_to_string(&verify).expect("verify.toml");
    text.push_str(NO_CREDENTIALS_CHECK);
    std::fs::write(&verify, text).expect("write verify.toml");
    git(work, &["init", "--quiet", "--initial-branch=main"]);
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "-m", "sample repository"]);
    let bare = api.bare_repo().to_string_lossy().into_owned();
    git(
        work,
        &["push", "--quiet", "--force", &bare, "main:refs/heads/main"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_runs_itself_from_github_webhooks_under_kiln_serve() {
    images::images().await;
    let api = GitHubApi::start(OWNER, NAME).await;
    api.grant(MAINTAINER, "write");
    let env = Env::new();
    let _cleanup = Containers(kiln::app::serve_runner_id(&env.data));
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    seed_main(&api, &demo, &env.root.join("sample"));

    // Host-only secrets, from files outside the data directory.
    let secrets = env.root.join("secrets");
    let github = api.kiln_toml(&secrets);
    let webhook_secret = format!("whsec-{}", rand::random::<u64>());
    let secret_file = secrets.join("webhook");
    std::fs::write(&secret_file, &webhook_secret).expect("write secret");
    let toml = format!(
        "{github}\n[intake]\nwebhook_secret = \"github-webhook\"\nkiln_logins = [{BOT_LOGIN:?}]\n\n\
         [[secrets]]\nname = \"github-webhook\"\nsource = {{ file = {hook:?} }}\n",
        hook = secret_file.display().to_string(),
    );
    std::fs::write(env.root.join("kiln.toml"), toml).expect("kiln.toml");

    let mut serve = Serve::start_with(
        &env,
        "webhook-chain",
        &["--scripts".into(), demo.clone().into_os_string()],
    );
    serve.ready().await;
    let client =
        kiln::api::client::Client::new(&serve.url, Some(env.token.clone())).expect("client");
    let client = &client;
    let url = serve.url.clone();
    let mut n = 0;

    // 1. A stranger opens the issue on github.com: triage runs, untrusted,
    // and labels and comments through the API.
    let issue_md = std::fs::read_to_string(demo.join("issue.md")).expect("issue.md");
    let (title, body) = issue_md.split_once('\n').expect("title line");
    let issue = api.open_issue(STRANGER, title.trim_start_matches("# "), body);
    let opened = issues_event("opened", issue, STRANGER, STRANGER, &[], None);
    deliver(&url, &webhook_secret, &mut n, "issues", &opened).await;
    let runs = settled_runs(&mut serve, client, 1, "the triage run").await;
    assert_eq!(
        roles(&runs),
        vec![(Role::Triage, issue, RunState::Succeeded)],
        "{runs:#?}"
    );
    assert_eq!(runs[0].repo.to_string(), REPO);
    assert_eq!(
        (runs[0].trigger.actor.as_str(), runs[0].trigger.actor_trust),
        (STRANGER, Trust::Untrusted)
    );
    assert!(
        api.labels(issue).iter().any(|l| l == "bug"),
        "triage labelled the issue: {:?}",
        api.labels(issue)
    );
    let comments = api.comments(issue);
    assert!(
        comments.iter().any(|(author, _)| author == BOT_LOGIN),
        "triage commented as the App: {comments:?}"
    );
    // GitHub then reports the App's own label: a bot triggers nothing.
    let bot_label = issues_event(
        "labeled",
        issue,
        STRANGER,
        BOT_LOGIN,
        &api.labels(issue),
        Some("bug"),
    );
    deliver(&url, &webhook_secret, &mut n, "issues", &bot_label).await;

    // 2. The maintainer labels it ready-to-spec: the spec PR, through the API.
    api.add_label(issue, "ready-to-spec");
    let labeled = issues_event(
        "labeled",
        issue,
        STRANGER,
        MAINTAINER,
        &api.labels(issue),
        Some("ready-to-spec"),
    );
    deliver(&url, &webhook_secret, &mut n, "issues", &labeled).await;
    let runs = settled_runs(&mut serve, client, 2, "the spec run").await;
    assert_eq!(
        roles(&runs[1..]),
        vec![(Role::Spec, issue, RunState::Succeeded)],
        "{runs:#?}"
    );
    assert_eq!(
        (runs[1].trigger.actor.as_str(), runs[1].trigger.actor_trust),
        (MAINTAINER, Trust::Trusted)
    );
    let pulls = api.pulls();
    let spec_branch = format!("kiln/spec-issue-{issue}");
    let spec_pr = pulls
        .iter()
        .find(|p| p.1 == spec_branch)
        .unwrap_or_else(|| panic!("a spec pull request from {spec_branch}: {pulls:?}"))
        .0;
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(
        (pulls[0].2.as_str(), pulls[0].3.as_str()),
        ("main", BOT_LOGIN)
    );
    // GitHub sends `pull_request.opened` for it: a spec PR is not reviewed.
    let spec_head = api.branch_head(&spec_branch).expect("spec branch");
    let spec_opened = pull_request_opened(spec_pr, &spec_branch, &spec_head, BOT_LOGIN);
    deliver(&url, &webhook_secret, &mut n, "pull_request", &spec_opened).await;

    // 3. The maintainer merges the spec (a human action on github.com) and
    // approves the plan: implementation opens a PR.
    api.merge(spec_pr);
    api.add_label(issue, "plan-approved");
    let approved = issues_event(
        "labeled",
        issue,
        STRANGER,
        MAINTAINER,
        &api.labels(issue),
        Some("plan-approved"),
    );
    deliver(&url, &webhook_secret, &mut n, "issues", &approved).await;
    let runs = settled_runs(&mut serve, client, 3, "the implementation run").await;
    assert_eq!(
        roles(&runs[2..]),
        vec![(Role::Implementation, issue, RunState::Succeeded)],
        "only the maintainer's label ran anything since the spec: {runs:#?}"
    );
    let pulls = api.pulls();
    let (pr, head_branch) = pulls
        .iter()
        .find(|p| p.4 && p.1.starts_with("kiln/") && !p.1.starts_with("kiln/spec-"))
        .map(|p| (p.0, p.1.clone()))
        .unwrap_or_else(|| panic!("an implementation pull request: {pulls:?}"));
    let head = api
        .branch_head(&head_branch)
        .expect("implementation branch");
    assert!(
        git(api.bare_repo(), &["show", &format!("{head}:slugify.sh")]).contains("tr -cs"),
        "the fix is on the PR's head"
    );

    // 4. GitHub reports Kiln's PR as opened by the App: review.
    let pr_opened = pull_request_opened(pr, &head_branch, &head, BOT_LOGIN);
    deliver(&url, &webhook_secret, &mut n, "pull_request", &pr_opened).await;
    let runs = settled_runs(&mut serve, client, 4, "the review run").await;
    assert_eq!(
        roles(&runs[3..]),
        vec![(Role::Review, pr, RunState::Succeeded)],
        "{runs:#?}"
    );
    let reviews = api.reviews(pr);
    assert_eq!(reviews.len(), 1, "one review by the App: {reviews:?}");
    let (review_id, reviewer, state) = reviews[0].clone();
    assert_eq!(reviewer, BOT_LOGIN);

    // 5. GitHub reports the App's review: verification, whose status is a
    // check run created with the installation token.
    let submitted = review_submitted(
        pr,
        &head_branch,
        review_id,
        &state.to_lowercase(),
        BOT_LOGIN,
    );
    deliver(
        &url,
        &webhook_secret,
        &mut n,
        "pull_request_review",
        &submitted,
    )
    .await;
    let runs = settled_runs(&mut serve, client, 5, "the verification run").await;
    assert_eq!(
        roles(&runs),
        vec![
            (Role::Triage, issue, RunState::Succeeded),
            (Role::Spec, issue, RunState::Succeeded),
            (Role::Implementation, issue, RunState::Succeeded),
            (Role::Review, pr, RunState::Succeeded),
            (Role::Verification, pr, RunState::Succeeded),
        ],
        "one run per change; the bot's label and the spec PR ran nothing: {runs:#?}"
    );
    let checks = api.check_runs();
    let last = checks.last().expect("a check run");
    assert_eq!(
        (
            last.name.as_str(),
            last.head_sha.as_str(),
            last.status.as_str()
        ),
        ("kiln/verification", head.as_str(), "completed"),
        "{checks:?}"
    );
    assert_eq!(last.conclusion.as_deref(), Some("success"), "{checks:?}");
    let posts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/check-runs") && r.method == axum::http::Method::POST)
        .collect();
    assert!(!posts.is_empty());
    assert!(
        posts.iter().all(|r| r
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer ghs_"))),
        "check runs are created with the installation token"
    );
    let unscoped: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/repos/") || r.path.starts_with("/repositories/"))
        .filter(|r| !r.path.ends_with("/installation"))
        .filter(|r| {
            !r.authorization
                .as_deref()
                .is_some_and(|a| a.starts_with("Bearer ghs_"))
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        unscoped.is_empty(),
        "every repository call uses an installation token: {unscoped:?}"
    );
    let report = api
        .comments(pr)
        .into_iter()
        .filter(|(author, body)| author == BOT_LOGIN && body.contains("Kiln verification"))
        .count();
    assert_eq!(report, 1, "one verification report on the PR");

    // No installation token, App key or webhook secret in any run's record
    // or anywhere in the data directory (the sandbox check above looked
    // inside the sandbox itself).
    let tokens = api.issued_tokens();
    assert!(
        !tokens.is_empty(),
        "the App's installation tokens were used"
    );
    let pem_line = api
        .app()
        .private_pem
        .lines()
        .nth(1)
        .expect("a PEM body line")
        .to_string();
    let mut needles: Vec<String> = tokens;
    needles.push(pem_line);
    needles.push(webhook_secret.clone());
    let mut record = String::new();
    for run in &runs {
        record.push_str(&run_record(client, run.id.0).await);
    }
    assert!(
        record.contains("forge credentials visible: 0"),
        "the sandbox check ran and found nothing"
    );
    assert!(
        !record.contains("ghs_"),
        "no installation token, issued or not, in a run's record"
    );
    for needle in &needles {
        assert!(
            !record.contains(needle.as_str()),
            "a credential in a run's record"
        );
    }
    let mut files = Vec::new();
    all_files(&env.data, &mut files);
    for (path, bytes) in &files {
        for needle in &needles {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "a credential in {}",
                path.display()
            );
        }
    }
}
