//! A runner API on loopback over a real SQLite store in a temp dir, with
//! tokens of each scope, and `TestControl`: **test plumbing** standing in
//! for the runner service's `RunControl`. It acts on the real store (a
//! steering message becomes an event, a decision is recorded with
//! `decide_effect`, a cancel moves the run to `cancelled`, a handback is a
//! real git bundle) and remembers every call so tests can see what reached
//! it. End-to-end tests through the real runner live with the runner.
//! Boards read a real local forge in the same temp dir (`forge_root`).
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use kiln::api::board::{BoardSource, RepoLister};
use kiln::api::{self, ApiState};
use kiln::config::Role;
use kiln::control::{ControlError, EffectDecision, Handback, RunControl};
use kiln::forge::local::{self, LocalForge};
use kiln::forge::{Forge, ForgeResolver, RepoRef};
use kiln::policy::{Redactor, Trust};
use kiln::session::EventKind;
use kiln::store::{
    NewRun, RunId, RunState, RunStore, SqliteOptions, SqliteStore, TokenScope, Trigger,
    TriggerKind, Verdict,
};
use tokio::sync::watch;

/// What reached the control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `steer(run, message)`.
    Steer(u64, String),
    /// `cancel(run, by)`.
    Cancel(u64, String),
    /// `decide(run, effect, decision)`.
    Decide(u64, String, EffectDecision),
    /// `handback(run)`.
    Handback(u64),
    /// `resume(run, by, note, bundle bytes)`.
    Resume(u64, String, Option<String>, Option<usize>),
    /// `attach(run, by)`.
    Attach(u64, String),
}

/// Test plumbing: a `RunControl` acting directly on the store.
pub struct TestControl {
    store: Arc<SqliteStore>,
    calls: Mutex<Vec<Call>>,
    count: watch::Sender<usize>,
    bundles: PathBuf,
}

impl TestControl {
    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Wait until at least `n` calls arrived (no timing: it waits for the call).
    pub async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        let mut rx = self.count.subscribe();
        rx.wait_for(|c| *c >= n).await.expect("control alive");
        self.calls()
    }

    fn record(&self, call: Call) {
        let n = {
            let mut calls = self.calls.lock().expect("calls lock");
            calls.push(call);
            calls.len()
        };
        self.count.send_replace(n);
    }
}

fn control_err(e: kiln::store::StoreError) -> ControlError {
    ControlError::Internal(e.to_string())
}

#[async_trait::async_trait]
impl RunControl for TestControl {
    async fn steer(&self, run: u64, message: String, _by: String) -> Result<(), ControlError> {
        self.store
            .append_event(
                RunId(run),
                &EventKind::Note,
                &format!("steering: {message}"),
            )
            .await
            .map_err(control_err)?;
        self.record(Call::Steer(run, message));
        Ok(())
    }

    async fn cancel(&self, run: u64, by: String) -> Result<(), ControlError> {
        let current = self.store.get_run(RunId(run)).await.map_err(control_err)?;
        self.store
            .transition(
                RunId(run),
                current.state,
                RunState::Cancelled,
                Some(format!("cancelled by {by}")),
            )
            .await
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        self.record(Call::Cancel(run, by));
        Ok(())
    }

    async fn decide(
        &self,
        run: u64,
        effect: &str,
        decision: EffectDecision,
    ) -> Result<(), ControlError> {
        let verdict = if decision.approve {
            Verdict::Approve
        } else {
            Verdict::Deny
        };
        self.store
            .decide_effect(
                RunId(run),
                effect,
                verdict,
                &decision.by,
                decision.reason.clone(),
            )
            .await
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        self.store
            .append_event(
                RunId(run),
                &EventKind::Note,
                &format!(
                    "effect {effect} {} by {}",
                    if decision.approve {
                        "approved"
                    } else {
                        "denied"
                    },
                    decision.by
                ),
            )
            .await
            .map_err(control_err)?;
        self.record(Call::Decide(run, effect.to_owned(), decision));
        Ok(())
    }

    async fn attach(
        &self,
        run: u64,
        by: String,
        _spec: kiln::sandbox::ShellSpec,
    ) -> Result<kiln::control::Attached, ControlError> {
        self.record(Call::Attach(run, by));
        Err(ControlError::Conflict(format!(
            "run r{run}: the test control has no sandboxes (attach is tested through the runner)"
        )))
    }

    async fn resume(&self, run: u64, resume: kiln::control::Resume) -> Result<(), ControlError> {
        self.store
            .resume(RunId(run), &resume.by, resume.note.clone())
            .await
            .map_err(|e| ControlError::Conflict(e.to_string()))?;
        self.record(Call::Resume(
            run,
            resume.by,
            resume.note,
            resume.bundle.map(|b| b.len()),
        ));
        Ok(())
    }

    async fn handback(&self, run: u64) -> Result<Handback, ControlError> {
        self.record(Call::Handback(run));
        let bundle = self.bundles.join(format!("run-{run}.bundle"));
        if !bundle.exists() {
            return Err(ControlError::NotFound(format!("run r{run} left no bundle")));
        }
        Ok(Handback {
            bundle,
            branch: format!("kiln/issue-{run}"),
        })
    }
}

/// A running API server.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store behind it.
    pub store: Arc<SqliteStore>,
    /// The test control behind it.
    pub control: Arc<TestControl>,
    /// Plaintext tokens by scope.
    pub viewer: String,
    /// Operator token.
    pub operator: String,
    /// Admin token.
    pub admin: String,
    /// Where bundles for `handback` are looked up (`run-<id>.bundle`).
    pub bundles: PathBuf,
    /// The local forge the boards read (empty until a test creates a repository).
    pub forge_root: PathBuf,
    /// The temp dir (store, bundles); removed on drop.
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Start one on an ephemeral loopback port.
    pub async fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(
            SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store opens"),
        );
        let bundles = dir.path().join("bundles");
        std::fs::create_dir_all(&bundles).expect("bundles dir");
        let control = Arc::new(TestControl {
            store: store.clone(),
            calls: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            bundles: bundles.clone(),
        });
        let token = |name: &'static str, scope| {
            let store = store.clone();
            async move {
                store
                    .create_token(name, scope)
                    .await
                    .expect("token")
                    .plaintext
            }
        };
        let viewer = token("vera-viewer", TokenScope::Viewer).await;
        let operator = token("otto-operator", TokenScope::Operator).await;
        let admin = token("ada-admin", TokenScope::Admin).await;
        let redactor = Arc::new(Redactor::new(&[]).expect("redactor"));
        let forge_root = dir.path().join("forge");
        let root = forge_root.clone();
        let forges: ForgeResolver = Arc::new(move |repo: &RepoRef| -> Option<Arc<dyn Forge>> {
            LocalForge::open(&root, repo.clone())
                .ok()
                .map(|f| Arc::new(f) as Arc<dyn Forge>)
        });
        let root = forge_root.clone();
        let repos: RepoLister = Arc::new(move || local::list_repos(&root));
        // The key the store signs with (beside its database).
        let ledger_key = kiln::ledger::HostKey::load_or_create(dir.path())
            .expect("host key")
            .public();
        let state = ApiState::new(store.clone(), control.clone(), redactor)
            .with_board(BoardSource::new(forges, repos))
            .with_ledger_key(ledger_key);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = api::router(state);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Server {
            url,
            store,
            control,
            viewer,
            operator,
            admin,
            bundles,
            forge_root,
            dir,
            task,
        }
    }

    /// A dashboard session for `token`, as a `Cookie` header value: a
    /// one-time login link, opened. Also returns the `Set-Cookie` header.
    pub async fn session_cookie(&self, token: &str) -> (String, String) {
        let (link, _) = self
            .client(token)
            .login_link(None)
            .await
            .expect("login link");
        let r = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
            .get(&link)
            .send()
            .await
            .expect("open the link");
        assert_eq!(r.status().as_u16(), 303, "the link logs in");
        let set = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        let pair = set.split(';').next().unwrap_or_default().trim().to_owned();
        (pair, set)
    }

    /// A client with `token`.
    pub fn client(&self, token: &str) -> api::client::Client {
        api::client::Client::new(&self.url, Some(token.to_owned())).expect("client")
    }

    /// A run on `local/demo#number`, moved to `state` through legal transitions.
    pub async fn run_in(&self, number: u64, state: RunState) -> RunId {
        let demo = RepoRef {
            owner: "local".into(),
            name: "demo".into(),
        };
        self.run_on(&demo, Role::Implementation, number, state)
            .await
    }

    /// A run of `role` on `repo#number`, moved to `state` through legal transitions.
    pub async fn run_on(&self, repo: &RepoRef, role: Role, number: u64, state: RunState) -> RunId {
        let id = self
            .store
            .enqueue_run(NewRun {
                script: None,
                repo: repo.clone(),
                role,
                number,
                trigger: Trigger {
                    kind: TriggerKind::Manual,
                    actor: "alice".into(),
                    actor_trust: Trust::Trusted,
                    delivery: None,
                    instructions: None,
                },
            })
            .await
            .expect("enqueue");
        let path: &[RunState] = match state {
            RunState::Queued => &[],
            RunState::Preparing => &[RunState::Preparing],
            RunState::Running => &[RunState::Preparing, RunState::Running],
            RunState::AwaitingApproval => &[
                RunState::Preparing,
                RunState::Running,
                RunState::AwaitingApproval,
            ],
            RunState::Succeeded => &[RunState::Preparing, RunState::Running, RunState::Succeeded],
            other => &[RunState::Preparing, other],
        };
        let mut from = RunState::Queued;
        for to in path {
            let reason = to.needs_reason().then(|| "test".to_owned());
            self.store
                .transition(id, from, *to, reason)
                .await
                .expect("transition");
            from = *to;
        }
        id
    }

    /// `local/<name>` on the server's local forge, holding a README on
    /// `main`, owned by `alice`.
    pub async fn local_repo(&self, name: &str) -> LocalForge {
        let src = self.dir.path().join(format!("src-{name}"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("README.md"), format!("{name}\n")).expect("write");
        LocalForge::create(
            &self.forge_root,
            RepoRef::parse(&format!("local/{name}")).expect("repo"),
            "alice",
            Some(&src),
        )
        .await
        .expect("create the repository")
    }

    /// Append an event and wait for its commit.
    pub async fn event(&self, run: RunId, kind: EventKind, message: &str) -> u64 {
        self.store
            .append_event(run, &kind, message)
            .await
            .expect("append")
    }

    /// Move a run to a final state.
    pub async fn finish(&self, run: RunId, to: RunState) {
        let current = self.store.get_run(run).await.expect("run");
        let reason = to.needs_reason().then(|| "test".to_owned());
        self.store
            .transition(run, current.state, to, reason)
            .await
            .expect("finish");
    }
}

/// Run git in `dir`, panicking with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Kiln Test",
            "-c",
            "user.email=test@kiln.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Branch `branch` of `forge` with a commit of its own on top of `main`
/// (its own head, so a status set on it belongs to it alone).
pub fn branch(forge: &LocalForge, branch: &str) {
    let bare = forge.bare_repo();
    let commit = git(
        &bare,
        &["commit-tree", "main^{tree}", "-p", "main", "-m", branch],
    );
    git(
        &bare,
        &["update-ref", &format!("refs/heads/{branch}"), &commit],
    );
}
