//! The runner-service harness: a repository on the local forge, the
//! services a run needs (built-in role plugins, the default gate, a Docker
//! sandbox backend, a model), a `service::Runner` over a SQLite store
//! serving that one forge, and the helpers to queue runs, wait for them and
//! find their containers.
//!
//! Used by `tests/operator.rs`, `tests/worker.rs` and
//! `runner/benches/concurrent.rs`; the bench includes this file by path, so
//! it uses nothing else from `tests/support/` (sandbox images are passed in).
#![allow(
    dead_code,
    reason = "the concurrent bench includes this file and uses a part"
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptionsBuilder;
use kiln::config::{Role, SandboxConfig};
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, RepoRef};
use kiln::model::{self, Completion, ContentPart, ModelProvider};
use kiln::plugin::PluginLimits;
use kiln::policy::Trust;
use kiln::sandbox::SandboxBackend as _;
use kiln::sandbox::docker::DockerBackend;
use kiln::sandbox::{LABEL_RUN_ID, LABEL_RUNNER_ID};
use kiln::service::Runner;
use kiln::store::{
    NewRun, RecoveryPolicy, Run, RunId, RunState, RunStore, SqliteOptions, SqliteStore, Trigger,
    TriggerKind,
};
use kiln::worker::Services;

/// The demo's sample repository (`runner/demo/sample-repo`: a shell
/// `slugify` with a bug and its tests), created as `repo` on a local forge
/// under `root`, as `kiln demo` creates it.
pub async fn demo_repo(root: &Path, repo: &str) -> LocalForge {
    let src = root.join("sample");
    std::fs::create_dir_all(src.join("tests")).expect("mkdir");
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/sample-repo");
    for f in ["README.md", "slugify.sh", "tests/run.sh"] {
        std::fs::copy(demo.join(f), src.join(f)).expect("copy sample");
    }
    LocalForge::create(
        &root.join("forge"),
        RepoRef::parse(repo).expect("repo"),
        "alice",
        Some(&src),
    )
    .await
    .expect("create the sample repository")
}

/// `local/sample` on a local forge under `root`, owned by `alice`, holding
/// only a `README.md` with `readme` in it.
pub async fn sample_repo(root: &Path, readme: &str) -> LocalForge {
    let src = root.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("README.md"), readme).expect("write");
    LocalForge::create(
        &root.join("forge"),
        RepoRef::parse("local/sample").expect("repo"),
        "alice",
        Some(&src),
    )
    .await
    .expect("create the sample repository")
}

/// A model turn that calls tool `name` with `arguments` (JSON text).
pub fn tool_call(name: &str, arguments: &str) -> Completion {
    Completion {
        message: model::Message {
            role: model::Role::Assistant,
            content: vec![ContentPart::ToolCall(model::ToolCall {
                id: format!("call-{name}"),
                name: name.into(),
                arguments: arguments.into(),
            })],
        },
        stop_reason: model::StopReason::ToolUse,
        usage: model::Usage::default(),
        model: "canned".into(),
    }
}

/// A Docker sandbox backend with its own runner id, cleared of containers an
/// earlier, interrupted run of the same test left behind.
pub async fn sandboxes(docker: Docker, runner_id: &str) -> DockerBackend {
    let backend = DockerBackend::new(docker, runner_id).expect("backend");
    backend.remove_orphans().await.expect("orphan cleanup");
    backend
}

/// The services `kiln serve` assembles, with the built-in role plugins and
/// the default gate, running sandboxes of `image` on `sandboxes`, and
/// `model` answering; mirrors and run directories go under `root`.
pub fn role_services(
    root: &Path,
    sandboxes: DockerBackend,
    image: String,
    model: Arc<dyn ModelProvider>,
) -> Services {
    let (host, plugins) = kiln::app::role_plugins(
        PluginLimits::default(),
        &kiln::config::KilnConfig::default(),
    )
    .expect("plugins");
    Services {
        host: Arc::new(host),
        plugins,
        sandboxes: Arc::new(sandboxes),
        image,
        sandbox_config: SandboxConfig::default(),
        gate: Arc::new(kiln::app::gate(&Default::default()).expect("gate")),
        model: Some(model),
        role_models: HashMap::new(),
        budgets: HashMap::new(),
        history: None,
        mirrors: root.join("mirrors"),
        detection: Default::default(),
        runs_dir: Some(root.join("runs")),
    }
}

/// A scripted model (the format of `runner/demo/*.json`) named `name`.
pub fn scripted(name: &str, script: &str) -> Arc<dyn ModelProvider> {
    Arc::new(kiln::model::ScriptedProvider::from_json(name, script).expect("script"))
}

/// A fresh run store in `root`.
pub async fn store(root: &Path) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(root.join("kiln.db"), SqliteOptions::default())
            .await
            .expect("store"),
    )
}

/// A runner executing `services`' runs from `store` against `forge` (every
/// repository resolves to it); not started.
pub fn runner(store: Arc<dyn RunStore>, services: Services, forge: Arc<dyn Forge>) -> Arc<Runner> {
    Runner::new(
        store,
        services,
        Arc::new(move |_repo: &RepoRef| Some(forge.clone())),
    )
}

/// Start `workers` workers of `runner`; their handles stop them when aborted.
pub async fn start(runner: &Arc<Runner>, workers: usize) -> Vec<tokio::task::JoinHandle<()>> {
    runner
        .start(workers, RecoveryPolicy::default())
        .await
        .expect("start")
}

/// Queue an implementation run of issue `number` of `repo`, started by the
/// maintainer alice's `ready-to-implement` label (the label that waives the
/// spec), and wake the runner's workers.
pub async fn queue_implementation(
    store: &dyn RunStore,
    runner: &Runner,
    repo: &RepoRef,
    number: u64,
) -> RunId {
    let id = store
        .enqueue_run(NewRun {
            script: None,
            repo: repo.clone(),
            role: Role::Implementation,
            number,
            trigger: Trigger {
                kind: TriggerKind::Label {
                    label: "ready-to-implement".into(),
                },
                actor: "alice".into(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await
        .expect("enqueue");
    runner.notify_queued();
    id
}

/// Wait (bounded, without timing assertions) until the run's state
/// satisfies `done`.
pub async fn wait_for(store: &dyn RunStore, id: RunId, done: impl Fn(RunState) -> bool) -> Run {
    tokio::time::timeout(Duration::from_secs(180), async {
        loop {
            let run = store.get_run(id).await.expect("run");
            if done(run.state) {
                return run;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("run {id} should reach the expected state within 3 minutes"))
}

/// Ids of the containers of runner `runner` (of its run `run` only, if
/// given), found by the labels Kiln puts on them.
pub async fn containers(docker: &Docker, runner: &str, run: Option<RunId>) -> Vec<String> {
    let mut labels = vec![format!("{LABEL_RUNNER_ID}={runner}")];
    if let Some(id) = run {
        labels.push(format!("{LABEL_RUN_ID}={id}"));
    }
    let filters = HashMap::from([("label".to_string(), labels)]);
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

/// A model that passes each request on to `inner` and keeps it (as JSON):
/// what a test checks the model was, or was not, shown.
pub struct Recording {
    inner: Arc<dyn ModelProvider>,
    sent: std::sync::Mutex<Vec<String>>,
}

impl Recording {
    /// Record the requests `inner` answers.
    pub fn new(inner: Arc<dyn ModelProvider>) -> Arc<Self> {
        Arc::new(Recording {
            inner,
            sent: std::sync::Mutex::default(),
        })
    }

    /// Every request sent so far, as JSON text.
    pub fn sent(&self) -> Vec<String> {
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ModelProvider for Recording {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn complete(
        &self,
        request: model::CompletionRequest,
    ) -> model::BoxFuture<'_, Result<Completion, model::ModelError>> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.push(serde_json::to_string(&request).unwrap_or_default());
        }
        self.inner.complete(request)
    }
}
