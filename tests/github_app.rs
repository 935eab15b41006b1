//! `kiln github manifest` and `kiln github check`, run as the binary a user
//! runs, against the loopback GitHub server (`support::github_api`): the
//! App's JWT is verified with its public key, installations are GitHub's
//! recorded installation object. Each test breaks one thing a real setup
//! gets wrong and checks the check names it.

use std::path::Path;
use std::process::Output;

use axum::http::Method;
use serde_json::{Value, json};

use crate::support::github_api::{AppKey, GitHubApi, INSTALLATION_ID};
use crate::support::serve::KILN;

const OWNER: &str = "acme";
const NAME: &str = "widgets";

/// Writes a kiln.toml for the server's App with `pem` as its key; returns its path.
pub(crate) fn app_config(dir: &Path, api: &GitHubApi, pem: &str) -> std::path::PathBuf {
    let key = dir.join("github-app.pem");
    std::fs::write(&key, pem).expect("write key");
    let config = dir.join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[[secrets]]\nname = \"github-app\"\nkind = \"github-app-key\"\n\
             source = {{ file = {key:?} }}\n\n\
             [github]\napp_id = {}\nprivate_key_secret = \"github-app\"\n\
             api_url = \"{}\"\nmax_attempts = 1\n",
            api.app().app_id,
            api.url()
        ),
    )
    .expect("write kiln.toml");
    config
}

/// `kiln <args>` with its own data directory, stdin closed.
pub(crate) async fn kiln(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(KILN);
    cmd.args(args)
        .env("KILN_DATA_DIR", dir.join("data"))
        .env_remove("KILN_LOG")
        .env_remove("KILN_LOG_FORMAT")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run kiln")
}

async fn check(api: &GitHubApi, pem: &str, repo: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = app_config(dir.path(), api, pem);
    let out = kiln(
        dir.path(),
        &[
            "github",
            "check",
            "-c",
            config.to_str().expect("utf-8"),
            "-R",
            repo,
        ],
        &[],
    )
    .await;
    // stdout is the report; stderr (an error that stopped the command) is
    // shown with it when an assertion fails.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_manifest_is_json_for_githubs_manifest_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kiln(
        dir.path(),
        &[
            "github",
            "manifest",
            "--url",
            "https://kiln.example.com/",
            "--name",
            "kiln-acme",
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).expect("the manifest is JSON");
    assert_eq!(m["name"], "kiln-acme");
    assert_eq!(m["url"], "https://kiln.example.com");
    assert_eq!(
        m["hook_attributes"],
        json!({"url": "https://kiln.example.com/webhooks/github", "active": true})
    );
    assert_eq!(m["redirect_url"], "https://kiln.example.com/");
    assert_eq!(m["public"], false);
    assert_eq!(
        m["default_permissions"],
        json!({"contents": "write", "issues": "write", "pull_requests": "write",
               "checks": "write", "metadata": "read"})
    );
    assert_eq!(
        m["default_events"],
        json!([
            "issues",
            "issue_comment",
            "pull_request",
            "pull_request_review",
            "pull_request_review_comment"
        ])
    );

    let bad = kiln(
        dir.path(),
        &["github", "manifest", "--url", "not a url"],
        &[],
    )
    .await;
    assert!(!bad.status.success(), "a URL that is none is refused");
}

#[tokio::test]
async fn a_complete_app_passes_the_check_through_every_call_a_run_makes() {
    let api = GitHubApi::start(OWNER, NAME).await;
    let (code, out) = check(&api, &api.app().private_pem, &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("MISSING"), "{out}");
    assert!(out.contains("GitHub knows App 77 `kiln-test`"), "{out}");
    assert!(
        out.contains(&format!(
            "installation {INSTALLATION_ID} covers {OWNER}/{NAME}"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("GitHub App ready for {OWNER}/{NAME}")),
        "{out}"
    );
    // It asked GitHub, with the App's JWT, the calls a run makes.
    for (method, path) in [
        (Method::GET, "/app".to_string()),
        (Method::GET, "/app/installations".to_string()),
        (Method::GET, format!("/repos/{OWNER}/{NAME}/installation")),
        (
            Method::POST,
            format!("/app/installations/{INSTALLATION_ID}/access_tokens"),
        ),
    ] {
        assert_eq!(
            api.requests_to(method.clone(), &path).len(),
            1,
            "{method} {path}"
        );
    }
    assert_eq!(api.issued_token_count(), 1);
}

#[tokio::test]
async fn missing_permissions_and_events_of_the_app_are_named() {
    let api = GitHubApi::start(OWNER, NAME).await;
    api.set_app_grants(
        json!({"contents": "write", "issues": "write", "pull_requests": "read",
               "metadata": "read"}),
        &["issues", "issue_comment", "pull_request"],
    );
    let (code, out) = check(&api, &api.app().private_pem, &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(1), "{out}");
    for expect in [
        "MISSING the App: permission `checks: write` (has none)",
        "MISSING the App: permission `pull_requests: write` (has read)",
        "MISSING the App: webhook event `pull_request_review` is not subscribed",
        "MISSING the App: webhook event `pull_request_review_comment` is not subscribed",
        "https://github.com/settings/apps/kiln-test",
    ] {
        assert!(out.contains(expect), "expected {expect:?} in:\n{out}");
    }
    assert!(
        !out.contains("permission `issues"),
        "issues is granted:\n{out}"
    );
}

#[tokio::test]
async fn an_installation_that_has_not_accepted_new_permissions_is_named() {
    let api = GitHubApi::start(OWNER, NAME).await;
    api.set_installation_grants(
        json!({"contents": "write", "issues": "write", "pull_requests": "write",
               "metadata": "read"}),
        &[
            "issues",
            "issue_comment",
            "pull_request",
            "pull_request_review",
            "pull_request_review_comment",
        ],
    );
    let (code, out) = check(&api, &api.app().private_pem, &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "MISSING installation {INSTALLATION_ID} on {OWNER} (selected repositories): \
             permission `checks: write` (has none)"
        )),
        "{out}"
    );
    assert!(
        out.contains("ok      the App: every permission and webhook event Kiln needs"),
        "{out}"
    );
}

#[tokio::test]
async fn an_app_installed_nowhere_or_not_on_the_repository_is_named() {
    let api = GitHubApi::start(OWNER, NAME).await;
    let (code, out) = check(&api, &api.app().private_pem, &format!("{OWNER}/elsewhere")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "MISSING no installation of the App covers {OWNER}/elsewhere"
        )),
        "{out}"
    );
    assert_eq!(api.issued_token_count(), 0, "no token is bought for it");

    api.uninstall();
    let (code, out) = check(&api, &api.app().private_pem, &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "MISSING the App is installed nowhere: install it on the repositories Kiln serves \
             (https://github.com/apps/kiln-test/installations/new)"
        ),
        "{out}"
    );
}

#[tokio::test]
async fn a_wrong_or_unreadable_key_is_named() {
    let api = GitHubApi::start(OWNER, NAME).await;
    // A real RSA key, but not the App's: GitHub refuses its JWT.
    let other = AppKey::generate(77);
    let (code, out) = check(&api, &other.private_pem, &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("MISSING GitHub refused the App's credentials")
            && out.contains("app_id = 77 must be the App's id"),
        "{out}"
    );
    assert!(
        api.requests_to(Method::GET, "/app/installations")
            .is_empty()
    );

    let (code, out) = check(&api, "not a key\n", &format!("{OWNER}/{NAME}")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("MISSING GitHub App 77: the private key is not a PEM-encoded RSA key"),
        "{out}"
    );
}
