//! What a crash of `kiln serve` may not lose, with a real `kill -9` of the
//! built binary: the GitHub App forge is the loopback GitHub server, and
//! webhooks are GitHub's recorded payloads, signed and posted as GitHub
//! posts them.
//!
//! - A delivery answered 202 is in the store before the answer: killed
//!   before processing it, the runner's successor processes it, and it
//!   queues its run exactly once (a redelivery is refused as a replay).
//! - A forge write's intent is in the store before the write is sent:
//!   killed before the forge applied it or after (its answer lost), the
//!   restarted runner looks for it on the forge, records what it finds, and
//!   the re-queued run writes it exactly once; an approved effect whose
//!   application was cut short is applied once by the restarted runner.

use std::ffi::OsString;
use std::path::Path;

use axum::http::Method;
use kiln::api::client::Client;
use kiln::config::Role;
use kiln::store::{
    DeliveryStatus, EffectLogState, Run, RunState, RunStore, SqliteOptions, SqliteStore,
};

use crate::support::github_api::{BOT_LOGIN, Fault, GitHubApi, git};
use crate::support::images;
use crate::support::serve::{Containers, Env, Serve, wait_for};
use crate::support::webhooks::{NAME, OWNER, REPO, delivery_id, issues_event, post};

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

/// A triage that labels the issue and asks one question: two forge writes,
/// the labels (`e1`) and the comment with the question (`e2`).
const TRIAGE_ASKS: &str = r#"{ "description": "labels and asks",
  "turns": [ { "tool_calls": [ { "name": "submit_triage", "arguments": {
    "labels": ["bug"],
    "questions": [ { "question": "Which version shows it?", "reason": "The fix depends on it." } ],
    "summary": "A bug; one question.", "duplicate_of": null } } ] } ] }"#;

/// Where the runner is killed in the life of the comment write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    /// The write's intent is committed and its request is out, but the
    /// forge never applies it: as if the runner died before sending.
    BeforeTheForgeApplies,
    /// The forge applied the write; its answer never came, so the runner
    /// never recorded it.
    AfterTheForgeApplied,
}

/// The comment effect's life, cut by a `kill -9` at `point`; then a
/// restart with `--requeue` runs the triage again. The forge must end with
/// the comment exactly once, the run must succeed, and the store must say
/// truthfully what happened to each write.
async fn kill_a_write_at(point: KillPoint) {
    images::images().await;
    let api = GitHubApi::start(OWNER, NAME).await;
    let (env, _secret) = github_env(&api);
    let _cleanup = Containers(kiln::app::serve_runner_id(&env.data));
    let script = env.script("triage.json", TRIAGE_ASKS);
    let operator = env
        .ok(&["token", "create", "op", "--scope", "operator"], &[])
        .trim()
        .to_string();
    let issue = api.open_issue(STRANGER, "The widget is slow", "It takes a minute.");
    let comments = comments_path(issue);
    let fault = marked_comment_fault(&comments);
    api.inject(match point {
        KillPoint::BeforeTheForgeApplies => fault,
        KillPoint::AfterTheForgeApplied => fault.after_applying(),
    });
    let mut first = serve(&env, "first", &script, &["--requeue"]);
    first.ready().await;
    let client = Client::new(&first.url, Some(operator.clone())).expect("client");
    let run = client
        .queue(REPO, "triage", issue, None)
        .await
        .expect("queue the triage");
    let (api_ref, comments_ref) = (&api, &comments);
    wait_for(
        &mut first,
        "the comment write to reach the forge",
        300,
        || async move {
            let reached = match point {
                KillPoint::BeforeTheForgeApplies => marked_sends(api_ref, comments_ref) > 0,
                KillPoint::AfterTheForgeApplied => !marked_comments(api_ref, issue).is_empty(),
            };
            reached.then_some(())
        },
    )
    .await;
    first.kill_9();
    {
        let store = open_store(&env).await;
        let log = store.effect_log(run.id).await.expect("effect log");
        let states: Vec<_> = log
            .iter()
            .map(|e| (e.effect_id.as_str(), e.state))
            .collect();
        assert_eq!(
            states,
            [
                ("e1", EffectLogState::Applied),
                ("e2", EffectLogState::Sending)
            ],
            "the labels were recorded, the comment's intent was committed before it was sent: {log:#?}"
        );
    }

    // The restart looks for the write on the forge, records what it finds,
    // and runs the triage again: the same writes, by the same keys.
    let mut second = serve(&env, "second", &script, &["--requeue"]);
    second.ready().await;
    let client = Client::new(&second.url, Some(operator)).expect("client");
    let client = &client;
    let ended = wait_for(&mut second, "the re-run to end", 600, || async move {
        let r = client.run(run.id.0).await.ok()?;
        (r.state.is_terminal() && r.attempts >= 2).then_some(r)
    })
    .await;
    assert_eq!(ended.state, RunState::Succeeded, "{ended:#?}");
    assert_eq!(
        marked_comments(&api, issue).len(),
        1,
        "the comment is on the forge once: {:?}",
        api.comments(issue)
    );
    let expected_sends = match point {
        // Sent once into the void, once for real.
        KillPoint::BeforeTheForgeApplies => 2,
        // Applied by the first request: never sent again.
        KillPoint::AfterTheForgeApplied => 1,
    };
    assert_eq!(
        marked_sends(&api, &comments),
        expected_sends,
        "{:#?}",
        api.requests_to(Method::POST, &comments)
    );
    assert!(api.labels(issue).iter().any(|l| l == "bug"));

    let store = open_store(&env).await;
    let log = store.effect_log(run.id).await.expect("effect log");
    let summary: Vec<_> = log
        .iter()
        .map(|e| (e.effect_id.as_str(), e.state, e.attempts))
        .collect();
    let comment_attempts = match point {
        KillPoint::BeforeTheForgeApplies => 2,
        KillPoint::AfterTheForgeApplied => 1,
    };
    assert_eq!(
        summary,
        [
            ("e1", EffectLogState::Applied, 1),
            ("e2", EffectLogState::Applied, comment_attempts)
        ],
        "{log:#?}"
    );
    assert!(
        log[1]
            .outcome
            .as_deref()
            .is_some_and(|o| o.contains("comment")),
        "the comment's record says where it is: {log:#?}"
    );
    let events = all_events(client, run.id.0).await;
    let recovery = match point {
        KillPoint::BeforeTheForgeApplies => "recorded as not applied",
        KillPoint::AfterTheForgeApplied => "recorded as applied, not sent again",
    };
    assert!(
        events.iter().any(|e| e.message.contains(recovery)),
        "the run's log says what the restart found ({recovery}): {events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_killed_before_the_forge_applied_it_is_sent_once_by_the_rerun() {
    kill_a_write_at(KillPoint::BeforeTheForgeApplies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_forge_applied_before_the_kill_is_recorded_not_repeated() {
    kill_a_write_at(KillPoint::AfterTheForgeApplied).await;
}

/// The path comments on `issue` are posted to.
fn comments_path(issue: u64) -> String {
    format!("/repos/{OWNER}/{NAME}/issues/{issue}/comments")
}

/// A request to post a comment carrying an effect marker that is never
/// answered (the run's progress comment carries none: it is bookkeeping).
fn marked_comment_fault(comments: &str) -> Fault {
    Fault::new(Method::POST, comments, 502)
        .when_body_contains(kiln::effects::EFFECT_MARKER)
        .hang()
}

/// The bodies of Kiln's comments on `issue` that carry an effect marker.
fn marked_comments(api: &GitHubApi, issue: u64) -> Vec<String> {
    api.comments(issue)
        .into_iter()
        .filter(|(author, body)| author == BOT_LOGIN && body.contains(kiln::effects::EFFECT_MARKER))
        .map(|(_, body)| body)
        .collect()
}

/// How many comment requests carrying an effect marker reached the forge.
fn marked_sends(api: &GitHubApi, comments: &str) -> usize {
    api.requests_to(Method::POST, comments)
        .iter()
        .filter(|r| {
            r.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(kiln::effects::EFFECT_MARKER))
        })
        .count()
}

/// Holds every comment for a human: the triage's question waits for approval.
const HOLD_COMMENTS: &str = r#"
[policy]
policies = """
@id("hold-comments")
@hold("a maintainer reads Kiln's questions first")
permit (principal, action == Kiln::Action::"forge.comment", resource);
"""
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_effect_killed_while_being_applied_is_applied_once_after_the_restart() {
    images::images().await;
    let api = GitHubApi::start(OWNER, NAME).await;
    let (env, _secret) = github_env(&api);
    let toml = env.root.join("kiln.toml");
    let mut text = std::fs::read_to_string(&toml).expect("kiln.toml");
    text.push_str(HOLD_COMMENTS);
    std::fs::write(&toml, text).expect("kiln.toml");
    let _cleanup = Containers(kiln::app::serve_runner_id(&env.data));
    let script = env.script("triage.json", TRIAGE_ASKS);
    let operator = env
        .ok(&["token", "create", "op", "--scope", "operator"], &[])
        .trim()
        .to_string();
    let issue = api.open_issue(STRANGER, "The widget is slow", "It takes a minute.");
    let comments = comments_path(issue);

    let mut first = serve(&env, "first", &script, &[]);
    first.ready().await;
    let client = Client::new(&first.url, Some(operator.clone())).expect("client");
    let client_ref = &client;
    let run = client
        .queue(REPO, "triage", issue, None)
        .await
        .expect("queue the triage");
    let waiting = wait_for(&mut first, "the question to be held", 300, || async move {
        let r = client_ref.run(run.id.0).await.ok()?;
        (r.state == RunState::AwaitingApproval).then_some(r)
    })
    .await;
    let held = client.approvals(run.id.0).await.expect("approvals");
    assert_eq!(
        held.iter()
            .map(|a| a.effect_id.as_str())
            .collect::<Vec<_>>(),
        ["e2"],
        "{waiting:#?}"
    );
    // The approval is recorded; applying it hangs on the forge; the runner dies.
    api.inject(marked_comment_fault(&comments));
    let deciding = tokio::spawn({
        let client = Client::new(&first.url, Some(operator.clone())).expect("client");
        async move { client.decide(run.id.0, "e2", true, None).await }
    });
    let api_ref = &api;
    let comments_ref = &comments;
    wait_for(
        &mut first,
        "the approved comment to be sent",
        120,
        || async move { (marked_sends(api_ref, comments_ref) > 0).then_some(()) },
    )
    .await;
    first.kill_9();
    deciding.abort();
    {
        let store = open_store(&env).await;
        let approval = store.get_effect(run.id, "e2").await.expect("approval");
        assert_eq!(approval.state, kiln::store::ApprovalState::Approved);
        let log = store.effect_log(run.id).await.expect("effect log");
        assert_eq!(
            log.iter()
                .map(|e| (e.effect_id.as_str(), e.state))
                .collect::<Vec<_>>(),
            [
                ("e1", EffectLogState::Applied),
                ("e2", EffectLogState::Sending)
            ],
            "{log:#?}"
        );
    }

    // The restart finds the comment is not on the forge, applies the
    // approved effect once, and the run ends as the decision said.
    let mut second = serve(&env, "second", &script, &[]);
    second.ready().await;
    let client = Client::new(&second.url, Some(operator)).expect("client");
    let client = &client;
    let ended = wait_for(&mut second, "the run to end", 120, || async move {
        let r = client.run(run.id.0).await.ok()?;
        r.state.is_terminal().then_some(r)
    })
    .await;
    assert_eq!(ended.state, RunState::Succeeded, "{ended:#?}");
    assert!(
        ended
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("1 approved, 0 denied")),
        "{ended:#?}"
    );
    assert_eq!(
        marked_comments(&api, issue).len(),
        1,
        "{:?}",
        api.comments(issue)
    );
    assert_eq!(marked_sends(&api, &comments), 2, "one lost, one applied");
    let store = open_store(&env).await;
    let log = store.effect_log(run.id).await.expect("effect log");
    assert_eq!(
        log.iter()
            .map(|e| (e.effect_id.as_str(), e.state, e.attempts))
            .collect::<Vec<_>>(),
        [
            ("e1", EffectLogState::Applied, 1),
            ("e2", EffectLogState::Applied, 2)
        ],
        "{log:#?}"
    );
    let events = all_events(client, run.id.0).await;
    for said in [
        "recorded as not applied",
        "approved before the runner stopped",
    ] {
        assert!(
            events.iter().any(|e| e.message.contains(said)),
            "the run's log says {said:?}: {events:#?}"
        );
    }
}

/// Every event of run `id` the API serves, in order.
async fn all_events(client: &Client, id: u64) -> Vec<kiln::store::StoredEvent> {
    let mut all: Vec<kiln::store::StoredEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.seq);
        let (page, _) = client.events_page(id, after).await.expect("events page");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}
