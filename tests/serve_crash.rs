//! Crash recovery of a whole `kiln serve`, with a real `kill -9`: the built
//! `kiln` binary serves a temp data directory on a free loopback port, an
//! implementation run on the local forge is parked in a `sleep` inside its
//! real Docker sandbox, the service is SIGKILLed, and a second `kiln serve`
//! on the same data directory must find the run's container by its labels
//! and remove it, remove its workspace, keep every event the API served before the kill, in order,
//! and fail the run with "runner restarted" — or, with `--requeue`, run it
//! again to its end. No run may be left `running`.
//!
//! The two tests run at once on one Docker host, each with its own data
//! directory and so its own runner id: each service's start-up orphan
//! removal must leave the other's sandbox alone, and both runs are `r1`.

use crate::support::images;
use crate::support::serve::{Containers, Env, Serve, wait_for};

use std::path::PathBuf;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use kiln::api::client::Client;
use kiln::sandbox::{LABEL_RUN_ID, LABEL_RUNNER_ID};
use kiln::store::{RunState, StoredEvent};

/// The command the first run is parked in: distinctive, so `docker top` can
/// tell it from the sandbox's own `sleep 3600`, and shorter than the default
/// 600 s exec timeout, so it is still running when the service is killed.
const PARKED: &str = "sleep 577";

/// The first service's model: one turn that runs the long command.
const LONG_SCRIPT: &str = r#"{ "description": "parks the run in a long command",
  "turns": [ { "text": "Running the slow test suite first.",
    "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["sleep", "577"] } } ] } ] }"#;

/// The re-queued run's model: a short command, then it stops for a human.
const FINISH_SCRIPT: &str = r#"{ "description": "runs a short command and stops",
  "turns": [
    { "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["true"] } } ] },
    { "tool_calls": [ { "name": "submit_implementation", "arguments": {
        "status": "blocked", "title": "Nothing changed", "summary": "The crash test stops here.",
        "commit_message": "none", "blocked_reason": "the crash test stops here" } } ] } ] }"#;

/// A data directory with a local-forge repository and issue #1, which has
/// an approved spec. Its kiln.toml names no triggers: these runs are queued
/// by hand, and the forge's events must not queue more.
fn crash_env() -> Env {
    let env = Env::new();
    let src = env.root.join("src");
    std::fs::create_dir_all(src.join("specs/issue-1")).expect("mkdir");
    std::fs::write(src.join("README.md"), "# Widgets\n").expect("write");
    std::fs::write(
        src.join("specs/issue-1/PRODUCT.md"),
        "# Faster tests\nThe suite runs in under a minute.\n",
    )
    .expect("write");
    std::fs::write(
        src.join("specs/issue-1/TECH.md"),
        "# Approach\nRun the slow suite once to measure it.\n",
    )
    .expect("write");
    std::fs::write(env.root.join("kiln.toml"), NO_TRIGGERS).expect("write kiln.toml");
    env.ok(&["repo", "create", "local/crash", "--from"], &[&src]);
    env.ok(
        &[
            "issue",
            "new",
            "-R",
            "local/crash",
            "-t",
            "Make the tests faster",
            "-b",
            "They take ten minutes.",
            "-l",
            "plan-approved",
        ],
        &[],
    );
    env
}

/// A kiln.toml under which no forge event starts a run.
const NO_TRIGGERS: &str = "triggers = []\n";

/// Every event of run r1 the API serves, in order.
async fn events(client: &Client) -> Vec<StoredEvent> {
    let mut all: Vec<StoredEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.seq);
        let (page, _) = client.events_page(1, after).await.expect("events page");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Ids of the containers labelled with `runner` and run `r1`.
async fn r1_containers(docker: &Docker, runner: &str) -> Vec<String> {
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_RUNNER_ID}={runner}"),
            format!("{LABEL_RUN_ID}=r1"),
        ],
    )]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// True if `PARKED` is running in container `id`.
async fn parked_in(docker: &Docker, id: &str) -> bool {
    docker
        .top_processes(id, None)
        .await
        .ok()
        .and_then(|t| t.processes)
        .is_some_and(|ps| ps.iter().any(|p| p.join(" ").contains(PARKED)))
}

/// True if container `id` exists (running or not).
async fn exists(docker: &Docker, id: &str) -> bool {
    match docker.inspect_container(id, None).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(e) => panic!("inspect container {id}: {e}"),
    }
}

/// Directories a run's workspace and shadow repository are kept in while it
/// runs, under `<data>/runs/r1/scratch/`.
fn r1_scratch(env: &Env) -> Vec<PathBuf> {
    std::fs::read_dir(env.data.join("runs/r1/scratch"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Everything up to the kill, shared by both tests: returns the events the
/// API served before it and the id of the run's container.
async fn kill_mid_run(env: &Env, docker: &Docker, runner: &str) -> (Vec<StoredEvent>, String) {
    let long = env.script("long.json", LONG_SCRIPT);
    let mut serve = Serve::start(env, "serve-1", &long, false);
    serve.ready().await;
    let queued = env.ok(
        &[
            "run",
            "--role",
            "implementation",
            "--issue",
            "1",
            "--queue",
            "-R",
            "local/crash",
        ],
        &[],
    );
    assert!(
        queued.contains("queued run r1"),
        "kiln run --queue: {queued}"
    );
    let client = Client::new(&serve.url, Some(env.token.clone())).expect("client");
    let client = &client;

    // Mid-run: r1 is running and its sandbox is executing the long command.
    let container = wait_for(
        &mut serve,
        "r1 to be running with its command in the sandbox",
        300,
        move || async move {
            let run = client.run(1).await.ok()?;
            assert!(
                !run.state.is_terminal(),
                "r1 ended before it was killed: {run:?}"
            );
            if run.state != RunState::Running {
                return None;
            }
            let ids = r1_containers(docker, runner).await;
            let [id] = ids.as_slice() else { return None };
            parked_in(docker, id).await.then(|| id.clone())
        },
    )
    .await;
    let before = events(client).await;
    assert!(
        before.iter().any(|e| e.kind["type"] == "policy"
            && e.kind["action"] == "workspace.exec"
            && e.kind["verdict"] == "allow"),
        "the exec should have been allowed and logged before the kill: {before:#?}"
    );

    serve.kill_9();
    assert!(
        exists(docker, &container).await && parked_in(docker, &container).await,
        "the run's container should outlive the killed runner, still running {PARKED}"
    );
    assert!(
        !r1_scratch(env).is_empty(),
        "the killed runner should have left r1's workspace behind"
    );
    (before, container)
}

/// After a restart: the events served before the kill are all there, in
/// order, and the next one says the runner restarted. Returns what follows.
fn assert_kept(before: &[StoredEvent], after: &[StoredEvent]) -> Vec<StoredEvent> {
    assert!(
        after.len() > before.len(),
        "the restart should have added an event to the {} kept",
        before.len()
    );
    assert_eq!(
        &after[..before.len()],
        before,
        "every event served before the kill should be kept, unchanged and in order"
    );
    let seqs: Vec<u64> = after.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(seqs, want, "the log should have no gaps");
    let next = &after[before.len()];
    assert!(
        next.kind["type"] == "warning" && next.message.contains("runner restarted while running"),
        "the first event after the kill should say the runner restarted, got {next:?}"
    );
    after[before.len()..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_fails_the_run_and_removes_its_container() {
    images::images().await;
    let docker = images::docker().await;
    let env = crash_env();
    let runner = kiln::app::serve_runner_id(&env.data);
    let _cleanup = Containers(runner.clone());
    let (before, container) = kill_mid_run(&env, &docker, &runner).await;

    let long = env.root.join("long.json");
    let mut serve = Serve::start(&env, "serve-2", &long, false);
    serve.ready().await;
    assert!(
        !exists(&docker, &container).await,
        "the restarted service should have removed the orphaned container {container}"
    );
    assert_eq!(
        r1_containers(&docker, &runner).await,
        Vec::<String>::new(),
        "no container of r1 should be left"
    );
    assert_eq!(
        r1_scratch(&env),
        Vec::<PathBuf>::new(),
        "the restarted service should have removed r1's workspace"
    );
    let client = Client::new(&serve.url, Some(env.token.clone())).expect("client");
    let run = client.run(1).await.expect("r1");
    assert_eq!(
        run.state,
        RunState::Failed,
        "r1 should have failed: {run:?}"
    );
    assert_eq!(run.reason.as_deref(), Some("runner restarted"));
    assert_kept(&before, &events(&client).await);
    let stuck = client
        .runs("state=queued,preparing,running")
        .await
        .expect("runs");
    assert!(stuck.is_empty(), "no run should be left active: {stuck:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_with_requeue_runs_it_again_to_its_end() {
    images::images().await;
    let docker = images::docker().await;
    let env = crash_env();
    let runner = kiln::app::serve_runner_id(&env.data);
    let _cleanup = Containers(runner.clone());
    let (before, container) = kill_mid_run(&env, &docker, &runner).await;

    let finish = env.script("finish.json", FINISH_SCRIPT);
    let mut serve = Serve::start(&env, "serve-2", &finish, true);
    serve.ready().await;
    assert!(
        !exists(&docker, &container).await,
        "the restarted service should have removed the orphaned container {container}"
    );
    let client = Client::new(&serve.url, Some(env.token.clone())).expect("client");
    let client = &client;
    let run = wait_for(
        &mut serve,
        "the re-queued r1 to end",
        300,
        move || async move {
            let run = client.run(1).await.ok()?;
            run.state.is_terminal().then_some(run)
        },
    )
    .await;
    assert_eq!(
        (run.state, run.reason.as_deref(), run.attempts),
        (RunState::Blocked, Some("the crash test stops here"), 2),
        "r1 should have run a second time, to the end its script gives: {run:?}"
    );
    let rest = assert_kept(&before, &events(client).await);
    assert!(
        rest[0].message.contains("re-queued (attempt 2 of 3)"),
        "the restart should say the run was re-queued: {:?}",
        rest[0]
    );
    assert!(
        rest.iter()
            .any(|e| e.kind["type"] == "policy" && e.kind["action"] == "workspace.exec"),
        "the second attempt should have run its command in a new sandbox: {rest:#?}"
    );
    let (docker, runner) = (&docker, runner.as_str());
    wait_for(
        &mut serve,
        "r1's second sandbox to be removed",
        60,
        move || async move { r1_containers(docker, runner).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(
        r1_scratch(&env),
        Vec::<PathBuf>::new(),
        "neither attempt should have left a workspace behind"
    );

    // The recovered service goes on working: a new run replays the script
    // from its start too (it used to find it used up by r1).
    let queued = env.ok(
        &[
            "run",
            "--role",
            "implementation",
            "--issue",
            "1",
            "--queue",
            "-R",
            "local/crash",
        ],
        &[],
    );
    assert!(
        queued.contains("queued run r2"),
        "kiln run --queue: {queued}"
    );
    let r2 = wait_for(&mut serve, "r2 to end", 300, move || async move {
        let run = client.run(2).await.ok()?;
        run.state.is_terminal().then_some(run)
    })
    .await;
    assert_eq!(
        (r2.state, r2.reason.as_deref()),
        (RunState::Blocked, Some("the crash test stops here")),
        "r2 should have run its whole script: {r2:?}"
    );
    let stuck = client
        .runs("state=queued,preparing,running")
        .await
        .expect("runs");
    assert!(stuck.is_empty(), "no run should be left active: {stuck:?}");
}

/// One script both roles can play: triage finishes with its tool call, the
/// frozen 0.1.0 plugin comments the turn's text.
const BOTH_SCRIPT: &str = r#"{ "description": "one turn for a triage run and a 0.1.0 commenter",
  "turns": [ { "text": "Nothing to ask here.",
    "tool_calls": [ { "name": "submit_triage", "arguments": {
      "labels": [], "questions": [], "summary": "Clear enough to spec." } } ] } ] }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_0_1_0_plugin_and_the_0_2_0_built_ins_run_in_the_same_serve() {
    images::images().await;
    let env = crash_env();
    let runner = kiln::app::serve_runner_id(&env.data);
    let _cleanup = Containers(runner);
    let plugin = kiln::plugin::builtin::test_plugin_path("frozen-0-1-0").expect("built");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(plugin).expect("read plugin"),
        ))
    };
    // `kiln` reads ./kiln.toml: the queueing CLI and the service alike.
    std::fs::write(
        env.root.join("kiln.toml"),
        format!(
            "{NO_TRIGGERS}[[roles]]\nname = \"frozen\"\nplugin = \"{plugin}\"\nsha256 = \"{sha}\"\n\
             capabilities = [\"model.complete\", \"forge.read\", \"forge.comment\"]\n"
        ),
    )
    .expect("write kiln.toml");
    for role in ["frozen", "triage"] {
        env.ok(
            &[
                "run",
                "--queue",
                "--role",
                role,
                "--issue",
                "1",
                "-R",
                "local/crash",
            ],
            &[],
        );
    }
    let script = env.script("both.json", BOTH_SCRIPT);
    let mut serve = Serve::start(&env, "versions", &script, false);
    serve.ready().await;
    let client = Client::new(&serve.url, Some(env.token.clone())).expect("client");
    let client = &client;
    let runs = wait_for(&mut serve, "both runs to finish", 600, || async move {
        let runs = client.runs("").await.ok()?;
        (runs.len() == 2 && runs.iter().all(|r| r.state.is_terminal())).then_some(runs)
    })
    .await;
    for run in &runs {
        assert_eq!(
            run.state,
            RunState::Succeeded,
            "the {} run should succeed beside the other version: {run:?}",
            run.role
        );
    }
    let shown = env.ok(&["issue", "show", "1", "-R", "local/crash"], &[]);
    assert!(
        shown.contains("Nothing to ask here.\n\n(from a plugin built against kiln:role@0.1.0)")
            || shown.contains("(from a plugin built against kiln:role@0.1.0)"),
        "the 0.1.0 plugin's comment should be on the issue:\n{shown}"
    );
}
