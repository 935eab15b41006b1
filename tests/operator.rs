//! Runs through the runner service as operators and outsiders see them,
//! with the real `kiln` binary: an operator attaches a shell to a live
//! run's sandbox (the agent waits meanwhile), takes the finished work home
//! with `kiln handback`, commits on it and `kiln resume`s the run with a
//! note; cancels a run mid-command; and no secret the agent handles leaves
//! through command output or a pull request. Real Docker, real role
//! plugin, real HTTP and WebSocket on loopback; the model is a script.
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use kiln::api::{self, ApiState};
use kiln::forge::{Forge, NewIssue};
use kiln::store::{RunId, RunState, RunStore, SqliteStore, StoredEvent, TokenScope};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{images, service};

/// Secret shapes the gate redacts without configuration.
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const GITHUB_TOKEN: &str = "ghp_abcdefghijklmnopqrstuvwxyz0123456789";

/// Run 1 waits in the sandbox until a human shows up (the attach shell
/// creates /tmp/attached), then reads what the human left in the
/// workspace; run 2 (the resume) reads the human's committed file and
/// run 1's work. Both stop `blocked`, which still leaves a handback.
const SCRIPT: &str = r#"{
  "description": "operator test: wait for a human, read their note; after resume, read their commit",
  "turns": [
    { "text": "waiting for the operator",
      "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["bash", "-c", "until [ -e /tmp/attached ]; do sleep 0.1; done; echo operator-arrived"] } } ] },
    { "text": "what did they leave?",
      "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["cat", "NOTE.txt"] } } ] },
    { "tool_calls": [ { "name": "submit_implementation", "arguments": { "status": "blocked", "title": "t", "summary": "s", "commit_message": "c", "blocked_reason": "pausing for the operator" } } ] },
    { "text": "resumed: reading the operator's commit and my earlier work",
      "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["cat", "HUMAN.md", "NOTE.txt"] } } ] },
    { "tool_calls": [ { "name": "submit_implementation", "arguments": { "status": "blocked", "title": "t", "summary": "s", "commit_message": "c", "blocked_reason": "done for the test" } } ] }
  ]
}"#;

struct Setup {
    root: tempfile::TempDir,
    store: Arc<SqliteStore>,
    forge: Arc<dyn Forge>,
    runner: Arc<kiln::service::Runner>,
    url: String,
    token: String,
    _workers: Vec<tokio::task::JoinHandle<()>>,
}

async fn setup(runner_id: &str, script: &str) -> Setup {
    setup_with(runner_id, script, kiln::config::SandboxConfig::default()).await
}

async fn setup_with(runner_id: &str, script: &str, sandbox: kiln::config::SandboxConfig) -> Setup {
    let root = tempfile::tempdir().expect("tempdir");
    let forge = service::sample_repo(
        root.path(),
        &format!("# Sample\nStaging deploy key: {AWS_KEY}\n"),
    )
    .await;
    let number = forge
        .acting_as("alice")
        .create_issue(NewIssue {
            title: "Tidy the README".into(),
            body: "Small change.".into(),
            labels: vec![],
        })
        .await
        .expect("issue");
    assert_eq!(number, 1);
    let store = service::store(root.path()).await;
    let (image, _) = images::images().await;
    let mut services = service::role_services(
        root.path(),
        service::sandboxes(images::docker().await, runner_id).await,
        image,
        service::scripted("operator.json", script),
    );
    services.sandbox_config = sandbox;
    let gate = services.gate.clone();
    let forge: Arc<dyn Forge> = Arc::new(forge);
    let runner = service::runner(store.clone(), services, forge.clone());
    let workers = service::start(&runner, 1).await;
    let state = ApiState::new(
        store.clone(),
        runner.clone(),
        Arc::new(gate.redactor().clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, api::router(state)).await });
    let token = store
        .create_token("ops", TokenScope::Operator)
        .await
        .expect("token")
        .plaintext;
    Setup {
        root,
        store,
        forge,
        runner,
        url,
        token,
        _workers: workers,
    }
}

/// Queue an implementation run of issue #1, started by a maintainer's
/// `ready-to-implement` label (no spec needed), and wake the workers.
async fn queue_implementation(s: &Setup) -> RunId {
    service::queue_implementation(&*s.store, &s.runner, s.forge.repo(), 1).await
}

/// Wait until an event whose message contains `needle` is in the log.
async fn wait_for_event(store: &dyn RunStore, id: RunId, needle: &str) -> Vec<StoredEvent> {
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let events = store.events_after(id, 0, 10_000).await.expect("events");
            if events.iter().any(|e| e.message.contains(needle)) {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    match found {
        Ok(events) => events,
        Err(_) => {
            let events = store.events_after(id, 0, 10_000).await.expect("events");
            let run = store.get_run(id).await.expect("run");
            panic!(
                "no event mentioning {needle:?}; run {:?} ({:?}); events: {:#?}",
                run.state,
                run.reason,
                events.iter().map(|e| &e.message).collect::<Vec<_>>()
            )
        }
    }
}

fn seq_of(events: &[StoredEvent], needle: &str) -> u64 {
    events
        .iter()
        .find(|e| e.message.contains(needle))
        .unwrap_or_else(|| panic!("no event mentioning {needle:?}"))
        .seq
}

/// Read the attach socket until its text (output and control frames
/// together) contains `needle`; returns what was read.
async fn read_until(socket: &mut kiln::api::client::AttachSocket, needle: &str) -> String {
    let mut seen = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !seen.contains(needle) {
            match socket.next().await {
                Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
                Some(Ok(Message::Text(t))) => seen.push_str(&t),
                Some(Ok(_)) => {}
                other => panic!("socket ended before {needle:?}: {other:?}; read {seen:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} from the shell; read {seen:?}"));
    seen
}

/// A 100x30 `xterm` attached to run `id` over the API's WebSocket.
async fn attach_terminal(s: &Setup, id: RunId) -> kiln::api::client::AttachSocket {
    let client = kiln::api::client::Client::new(&s.url, Some(s.token.clone())).expect("client");
    client
        .attach(id.0, Some((100, 30)), Some("xterm"))
        .await
        .expect("attach with a terminal")
}

/// The `kiln` binary talking to the test's API.
fn kiln(s: &Setup, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.current_dir(dir)
        .env("KILN_URL", &s.url)
        .env("KILN_TOKEN", &s.token)
        .env_remove("KILN_DATA_DIR");
    cmd
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ana Operator")
        .env("GIT_AUTHOR_EMAIL", "ana@example.com")
        .env("GIT_COMMITTER_NAME", "Ana Operator")
        .env("GIT_COMMITTER_EMAIL", "ana@example.com")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// Multi-threaded: the test calls the `kiln` binary synchronously while the
// API it talks to is served from this runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_attaches_to_a_live_run_then_resumes_it_with_their_commit() {
    let s = setup("test-operator", SCRIPT).await;
    let id = queue_implementation(&s).await;
    let here = s.root.path();

    // Once the plugin started, the sandbox is up; the agent's first command
    // waits in it until /tmp/attached exists.
    wait_for_event(&*s.store, id, "started").await;

    // --- attach with a terminal, over the API's WebSocket directly ---
    let mut socket = attach_terminal(&s, id).await;
    socket
        .send(Message::Binary(
            b"stty size; echo \"$TERM\"\n".to_vec().into(),
        ))
        .await
        .expect("type");
    let seen = read_until(&mut socket, "30 100").await;
    // bash prompts before it reads the command, so the prompt is already here.
    assert!(
        seen.contains("kiln:/"),
        "the terminal shell shows Kiln's prompt, not bash's default one: {seen:?}"
    );
    socket
        .send(Message::Text(r#"{"resize":[120,40]}"#.into()))
        .await
        .expect("resize");
    socket
        .send(Message::Binary(b"stty size\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, "40 120").await;
    socket
        .send(Message::Binary(b"exit 0\n".to_vec().into()))
        .await
        .expect("type");
    read_until(&mut socket, r#"{"exit":0}"#).await;

    // --- attach: piped stdin, so the shell runs on plain pipes ---
    let mut attach = kiln(&s, here)
        .args(["attach", &id.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln attach");
    attach
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            // The pause holds while the human works: the agent's command
            // finishes at once, but its next model turn must wait.
            b"touch /tmp/attached\nsleep 2\necho from-the-operator > NOTE.txt\nid -u\nprintenv | grep -ci token\ncat README.md\nexit 3\n",
        )
        .expect("write keys");
    let out = tokio::task::spawn_blocking(move || attach.wait_with_output())
        .await
        .expect("join")
        .expect("kiln attach output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "kiln attach exits with the shell's code; stdout {stdout} stderr {stderr}"
    );
    assert!(
        !stdout.contains("job control") && !stdout.contains("bash-"),
        "a shell on pipes prints no prompt or terminal warning between outputs: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "1000"),
        "the shell runs as the sandbox user: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "0"),
        "no token-like variable in the operator's shell: {stdout}"
    );
    assert!(stderr.contains("the agent is paused"), "{stderr}");
    // What the operator's shell prints leaves through the API redacted too.
    assert!(
        stdout.contains("Staging deploy key:") && !stdout.contains(AWS_KEY),
        "the README's key is redacted in the shell's output: {stdout}"
    );

    let run = service::wait_for(&*s.store, id, RunState::is_terminal).await;
    assert_eq!(run.state, RunState::Blocked, "{:?}", run.reason);
    let events = s.store.events_after(id, 0, 10_000).await.expect("events");
    let attached = seq_of(&events, "attached a shell");
    let detached = seq_of(&events, "detached; the agent resumes");
    assert!(attached < detached);
    let turns_while_attached: Vec<_> = events
        .iter()
        .filter(|e| e.seq > attached && e.seq < detached && e.type_name() == "model-turn")
        .collect();
    assert!(
        turns_while_attached.is_empty(),
        "the agent took model turns while the operator was attached: {turns_while_attached:?}"
    );
    let read_note = events
        .iter()
        .find(|e| e.message.contains("from-the-operator"))
        .expect("the agent read what the operator left");
    assert!(
        read_note.seq > detached,
        "the agent read the note only after the operator detached"
    );

    // --- attaching to a finished run is refused, precisely ---
    let refused = kiln(&s, here)
        .args(["attach", &id.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("kiln attach");
    assert_eq!(refused.status.code(), Some(2));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("409") && why.contains("blocked"),
        "the refusal says the run is finished: {why}"
    );

    // --- handback into a fresh clone, commit, resume with a note ---
    let remote = s.forge.git_remote().await.expect("remote").url;
    let clone = here.join("clone");
    git(
        here,
        &["clone", "--quiet", &remote, clone.to_str().expect("utf-8")],
    );
    let handback = kiln(&s, &clone)
        .args(["handback", &id.to_string()])
        .output()
        .expect("kiln handback");
    assert!(
        handback.status.success(),
        "{}",
        String::from_utf8_lossy(&handback.stderr)
    );
    let branch = format!("kiln/run-{}", id.0);
    git(&clone, &["checkout", "--quiet", &branch]);
    assert_eq!(
        std::fs::read_to_string(clone.join("NOTE.txt")).expect("the run's work came back"),
        "from-the-operator\n"
    );
    std::fs::write(clone.join("HUMAN.md"), "written at home\n").expect("write");
    git(&clone, &["add", "HUMAN.md"]);
    git(&clone, &["commit", "--quiet", "-m", "Operator's change"]);

    let resumed = kiln(&s, &clone)
        .args(["resume", &id.to_string(), "-m", "use HUMAN.md"])
        .output()
        .expect("kiln resume");
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("1 commit(s)"));
    wait_for_event(&*s.store, id, "resumed by ops").await;
    let events = wait_for_event(&*s.store, id, "written at home").await;
    let run = service::wait_for(&*s.store, id, RunState::is_terminal).await;
    assert_eq!(run.trigger.instructions.as_deref(), Some("use HUMAN.md"));
    let both = events
        .iter()
        .find(|e| e.message.contains("written at home"))
        .expect("exec event");
    assert!(
        both.message.contains("from-the-operator"),
        "the resumed run has its own earlier work too: {}",
        both.message
    );
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("continuing from resume.bundle")),
        "the run says where it continued from"
    );

    // --- commits that do not build on the run's work are refused ---
    let stranger = here.join("stranger");
    std::fs::create_dir_all(&stranger).expect("mkdir");
    git(&stranger, &["init", "--quiet", "-b", "main"]);
    std::fs::write(stranger.join("x"), "x").expect("write");
    git(&stranger, &["add", "x"]);
    git(&stranger, &["commit", "--quiet", "-m", "unrelated"]);
    let bundle = stranger.join("x.bundle");
    git(
        &stranger,
        &[
            "bundle",
            "create",
            "--quiet",
            bundle.to_str().expect("utf-8"),
            "main",
        ],
    );
    // A bundle of only HEAD~0 with a missing prerequisite: make one that
    // needs a commit the run never had.
    std::fs::write(stranger.join("y"), "y").expect("write");
    git(&stranger, &["add", "y"]);
    git(&stranger, &["commit", "--quiet", "-m", "second"]);
    git(
        &stranger,
        &[
            "bundle",
            "create",
            "--quiet",
            bundle.to_str().expect("utf-8"),
            "main",
            "^main~1",
        ],
    );
    let client = kiln::api::client::Client::new(&s.url, Some(s.token.clone())).expect("client");
    let err = client
        .resume(id.0, None, Some(&std::fs::read(&bundle).expect("bundle")))
        .await
        .expect_err("an unrelated bundle is refused");
    let msg = err.to_string();
    assert!(
        msg.contains("400") && msg.contains("builds on commits the run does not have"),
        "{msg}"
    );
    let err = client
        .resume(id.0, None, Some(b"not a bundle"))
        .await
        .expect_err("garbage is refused");
    assert!(err.to_string().contains("is not a git bundle"), "{err}");
}

/// The containers of run `id` of runner `runner`, found by the labels Kiln
/// puts on them.
async fn containers_of(runner: &str, id: RunId) -> usize {
    service::containers(&images::docker().await, runner, Some(id))
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_attach_is_closed_with_its_jobs_and_the_agent_resumes() {
    // The agent waits for the human, then looks for what the human's
    // shell left running in the background.
    let script = r#"{ "description": "wait for a human, then look for their background job",
      "turns": [
        { "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["bash", "-c", "until [ -e /tmp/attached ]; do sleep 0.1; done; echo operator-arrived"] } } ] },
        { "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["bash", "-c", "n=0; for f in /proc/[0-9]*/cmdline; do [ \"$(tr '\\0' ' ' < $f 2>/dev/null)\" = 'sleep 400 ' ] && n=$((n+1)); done; echo leftover-sleeps=$n"] } } ] },
        { "tool_calls": [ { "name": "submit_implementation", "arguments": { "status": "blocked", "title": "t", "summary": "s", "commit_message": "c", "blocked_reason": "done for the test" } } ] }
      ] }"#;
    let sandbox = kiln::config::SandboxConfig {
        attach_idle_secs: 3,
        ..Default::default()
    };
    let s = setup_with("test-operator-idle", script, sandbox).await;
    let id = queue_implementation(&s).await;
    wait_for_event(&*s.store, id, "started").await;
    // The first command returns once the file exists, which the shell
    // creates: the agent is paused by then.
    let mut socket = attach_terminal(&s, id).await;
    socket
        .send(Message::Binary(
            b"sleep 400 & touch /tmp/attached; echo job-started\n"
                .to_vec()
                .into(),
        ))
        .await
        .expect("type");
    read_until(&mut socket, "job-started").await;
    // Then nothing: the session closes itself and says why.
    let closing = read_until(&mut socket, "no input for 3 s").await;
    assert!(closing.contains("the agent resumes"), "{closing}");
    let events = wait_for_event(&*s.store, id, "leftover-sleeps=").await;
    let idle = seq_of(&events, "attach: the shell had no input for 3 s");
    let detached = seq_of(&events, "detached; the agent resumes");
    assert!(idle < detached, "the reason comes before the detach");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("leftover-sleeps=0")),
        "the job the shell left in the background ended with it: {:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    let run = service::wait_for(&*s.store, id, RunState::is_terminal).await;
    assert_eq!(run.state, RunState::Blocked, "{:?}", run.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_long_command_kills_it_and_removes_the_sandbox() {
    let script = r#"{ "description": "a command that would run for five minutes",
      "turns": [ { "tool_calls": [ { "name": "run_command", "arguments": { "argv": ["bash", "-c", "echo started-long-work; sleep 300"] } } ] } ] }"#;
    let runner = "test-operator-cancel";
    let s = setup(runner, script).await;
    let id = queue_implementation(&s).await;
    // The gate allowed the command; give it a moment to be running (the
    // cancel is right either way, this makes "mid-command" the usual case).
    wait_for_event(&*s.store, id, "sleep 300").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        containers_of(runner, id).await,
        1,
        "the run's sandbox is up"
    );
    let cancel = kiln(&s, s.root.path())
        .args(["cancel", &id.to_string()])
        .output()
        .expect("kiln cancel");
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    // Well before the command's five minutes.
    let run = service::wait_for(&*s.store, id, RunState::is_terminal).await;
    assert_eq!(run.state, RunState::Cancelled, "{:?}", run.reason);
    let events = s.store.events_after(id, 0, 10_000).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("cancelled by ops")),
        "the log says who cancelled: {events:?}"
    );
    assert_eq!(containers_of(runner, id).await, 0, "the sandbox is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_command_output_and_a_pull_request_never_leave_the_run() {
    // The agent prints the README (which holds a key) in the sandbox and
    // writes a token into its pull request's title and description.
    let script = format!(
        r#"{{ "description": "canary: exec output and a PR body carry secrets",
      "turns": [
        {{ "tool_calls": [ {{ "name": "run_command", "arguments": {{ "argv": ["cat", "README.md"] }} }} ] }},
        {{ "tool_calls": [ {{ "name": "write_file", "arguments": {{ "path": "CHANGELOG.md", "contents": "Tidied the README.\n" }} }} ] }},
        {{ "tool_calls": [ {{ "name": "submit_implementation", "arguments": {{ "status": "done", "title": "Tidy {GITHUB_TOKEN}", "summary": "The key is {AWS_KEY} and the token {GITHUB_TOKEN}.", "commit_message": "Tidy" }} }} ] }}
      ] }}"#
    );
    let s = setup("test-operator-canary", &script).await;
    let id = queue_implementation(&s).await;
    // The detection step sees the secrets in the pull request's text and
    // holds it for a human; approved, it is opened redacted.
    let run = service::wait_for(&*s.store, id, |st| {
        st.is_terminal() || st == RunState::AwaitingApproval
    })
    .await;
    assert_eq!(run.state, RunState::AwaitingApproval, "{:?}", run.reason);
    let pending = s.store.pending_effects(id).await.expect("pending");
    assert_eq!(pending.len(), 1, "the pull request is held");
    {
        use kiln::control::{EffectDecision, RunControl as _};
        s.runner
            .decide(
                id.0,
                &pending[0].effect_id,
                EffectDecision {
                    approve: true,
                    by: "ops".into(),
                    reason: None,
                },
            )
            .await
            .expect("approve");
    }
    let run = service::wait_for(&*s.store, id, RunState::is_terminal).await;
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.reason);
    let leaked = |what: &str, text: &str| {
        for secret in [AWS_KEY, GITHUB_TOKEN] {
            assert!(!text.contains(secret), "{what} leaks {secret}: {text}");
        }
    };
    let events = s.store.events_after(id, 0, 10_000).await.expect("events");
    let exec = events
        .iter()
        .find(|e| e.message.contains("$ cat README.md"))
        .expect("the command's output is in the log");
    assert!(
        exec.message.contains("Staging deploy key:"),
        "the output is there, redacted: {}",
        exec.message
    );
    for e in &events {
        leaked("the event log", &e.message);
    }
    let prs = s
        .forge
        .list_pull_requests(kiln::forge::StateFilter::All)
        .await
        .expect("pull requests");
    assert_eq!(prs.len(), 1, "the pull request was opened");
    let pr = s
        .forge
        .get_pull_request(prs[0].issue.number)
        .await
        .expect("pull request");
    assert!(pr.issue.body.contains("The key is"), "{}", pr.issue.body);
    leaked("the pull request's title", &pr.issue.title);
    leaked("the pull request's body", &pr.issue.body);
    let issue = s.forge.get_issue(1).await.expect("issue");
    for c in &issue.comments {
        leaked("a comment", &c.body);
    }
}
