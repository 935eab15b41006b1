//! What a crash of `kiln serve` may not lose, with a real `kill -9` of the
//! built binary: the GitHub App forge is the loopback GitHub server, and
//! webhooks are GitHub's recorded payloads, signed and posted as GitHub
//! posts them.
//!
//! - A delivery answered 202 is in the store before the answer: killed
//!   before processing it, the runner's successor processes it, and it
//!   queues its run exactly once (a redelivery is refused as a replay).

use std::ffi::OsString;
use std::path::Path;

use kiln::api::client::Client;
use kiln::config::Role;
use kiln::store::{DeliveryStatus, Run, RunStore, SqliteOptions, SqliteStore};

use crate::support::github_api::{GitHubApi, git};
use crate::support::images;
use crate::support::serve::{Containers, Env, Serve, wait_for};
use crate::support::webhooks::{NAME, OWNER, delivery_id, issues_event, post};

/// Someone with no permission on the repository: their issues are triaged.
const STRANGER: &str = "drive-by";

/// A triage that only reports (the runs' work is not what is tested here).
const TRIAGE: &str = r#"{ "description": "reports and stops",
  "turns": [ { "tool_calls": [ { "name": "submit_triage", "arguments": {
    "labels": [], "questions": [], "summary": "Nothing to add.", "duplicate_of": null } } ] } ] }"#;

/// A data directory whose kiln.toml makes the loopback server GitHub and
/// takes its webhooks signed with the returned secret; `main` of the
/// loopback repository holds a README.
fn github_env(api: &GitHubApi) -> (Env, String) {
    let env = Env::new();
    let work = env.root.join("seed");
    std::fs::create_dir_all(&work).expect("mkdir");
    std::fs::write(work.join("README.md"), "# Widgets\n").expect("write");
    git(&work, &["init", "--quiet", "--initial-branch=main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "--quiet", "-m", "widgets"]);
    let bare = api.bare_repo().to_string_lossy().into_owned();
    git(&work, &["push", "--quiet", &bare, "main:refs/heads/main"]);
    let secrets = env.root.join("secrets");
    let github = api.kiln_toml(&secrets);
    let secret = format!("whsec-{}", rand::random::<u64>());
    let file = secrets.join("webhook");
    std::fs::write(&file, &secret).expect("write secret");
    let toml = format!(
        "{github}\n[intake]\nwebhook_secret = \"github-webhook\"\n\n\
         [[secrets]]\nname = \"github-webhook\"\nsource = {{ file = {file:?} }}\n",
        file = file.display().to_string(),
    );
    std::fs::write(env.root.join("kiln.toml"), toml).expect("kiln.toml");
    (env, secret)
}

/// `kiln serve` on `env` replaying `script`, with more arguments.
fn serve(env: &Env, name: &str, script: &Path, more: &[&str]) -> Serve {
    let mut args: Vec<OsString> = vec!["--script".into(), script.into()];
    args.extend(more.iter().map(OsString::from));
    Serve::start_with(env, name, &args)
}

/// Opens the data directory's store (the service is dead or alive: SQLite
/// in WAL mode takes several processes).
async fn open_store(env: &Env) -> SqliteStore {
    SqliteStore::open(env.data.join("kiln.db"), SqliteOptions::default())
        .await
        .expect("open the service's store")
}

/// Every run, oldest first.
async fn runs(client: &Client) -> Vec<Run> {
    let mut runs = client.runs("").await.expect("runs");
    runs.sort_by_key(|r| r.id);
    runs
}

/// How many runs delivery `id` queued.
fn runs_of(runs: &[Run], id: &str) -> usize {
    runs.iter()
        .filter(|r| r.trigger.delivery.as_deref() == Some(id))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_acknowledged_before_a_kill_queues_its_run_once_after_the_restart() {
    images::images().await;
    let api = GitHubApi::start(OWNER, NAME).await;
    let (env, secret) = github_env(&api);
    let _cleanup = Containers(kiln::app::serve_runner_id(&env.data));
    let script = env.script("triage.json", TRIAGE);

    // 1. A runner that accepts but does not process: the window between the
    // 202 and the processing stays open as long as the test needs.
    let mut held = serve(&env, "held", &script, &["--hold-deliveries"]);
    held.ready().await;
    let first = delivery_id(1);
    let issue = api.open_issue(STRANGER, "The widget is slow", "It takes a minute.");
    let opened = issues_event("opened", issue, STRANGER, STRANGER, &[], None);
    let (status, text) = post(&held.url, &secret, &first, "issues", &opened).await;
    assert_eq!(status, 202, "the delivery should be accepted: {text}");
    let client = Client::new(&held.url, Some(env.token.clone())).expect("client");
    assert!(
        runs(&client).await.is_empty(),
        "a held delivery queues nothing"
    );
    held.kill_9();
    {
        let store = open_store(&env).await;
        let d = store
            .get_delivery(&first)
            .await
            .expect("the delivery is stored");
        assert_eq!(
            (d.status, d.event.as_str()),
            (DeliveryStatus::Received, "issues"),
            "accepted, not processed, when the runner died"
        );
    }

    // 2. Its successor processes it at start, once; GitHub's redelivery of
    // it is a replay.
    let mut next = serve(&env, "next", &script, &[]);
    next.ready().await;
    let client = Client::new(&next.url, Some(env.token.clone())).expect("client");
    let client = &client;
    let after = wait_for(&mut next, "the held delivery's run", 120, || async move {
        let runs = runs(client).await;
        (!runs.is_empty()).then_some(runs)
    })
    .await;
    assert_eq!(runs_of(&after, &first), 1, "{after:#?}");
    assert_eq!(
        (after[0].role, after[0].number, after.len()),
        (Role::Triage, issue, 1)
    );
    let (status, text) = post(&next.url, &secret, &first, "issues", &opened).await;
    assert_eq!(status, 409, "a redelivery is a replay: {text}");

    // 3. Deliveries in flight at a kill that lands right after the last
    // 202: whatever was or was not processed, each queues one run.
    let more: Vec<(String, u64)> = (2..=6)
        .map(|n| {
            let issue = api.open_issue(STRANGER, &format!("Bug {n}"), "Details.");
            (delivery_id(n), issue)
        })
        .collect();
    for (id, issue) in &more {
        let opened = issues_event("opened", *issue, STRANGER, STRANGER, &[], None);
        let (status, text) = post(&next.url, &secret, id, "issues", &opened).await;
        assert_eq!(status, 202, "delivery {id} should be accepted: {text}");
    }
    next.kill_9();
    let mut last = serve(&env, "last", &script, &[]);
    last.ready().await;
    let store = open_store(&env).await;
    let (store_ref, wanted) = (&store, &more);
    wait_for(&mut last, "every delivery processed", 120, || async move {
        for (id, _) in wanted {
            let d = store_ref.get_delivery(id).await.expect("delivery");
            if d.status == DeliveryStatus::Received {
                return None;
            }
        }
        Some(())
    })
    .await;
    last.kill_9();
    let all = store
        .list_runs(kiln::store::RunFilter::default())
        .await
        .expect("runs");
    assert_eq!(all.len(), 6, "one run per delivery: {all:#?}");
    for (id, issue) in std::iter::once((first.clone(), issue)).chain(more) {
        assert_eq!(runs_of(&all, &id), 1, "delivery {id}: {all:#?}");
        assert!(
            all.iter()
                .any(|r| r.trigger.delivery.as_deref() == Some(id.as_str()) && r.number == issue),
            "delivery {id} queued triage on #{issue}"
        );
        let d = store.get_delivery(&id).await.expect("delivery");
        assert_eq!(d.status, DeliveryStatus::Queued, "delivery {id}: {d:?}");
    }
}
