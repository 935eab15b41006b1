//! End-to-end tests of the plugin host with real components built from
//! `tests/plugins/`: every misbehaving plugin is contained with a clear
//! error, and the host goes on serving the next run.
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::forge::{ForgeSnapshot, Issue, Proposal};
use kiln::imports::RunContext;
use kiln::imports::workspace::WorkspaceMount;
use kiln::model::{
    self, BoxFuture, Completion, CompletionRequest, ContentPart, ModelError, ModelProvider,
};
use kiln::plugin::{
    LoadError, OutcomeStatus, PluginHost, PluginLimits, RunError, Task, Trigger, builtin,
};
use kiln::session::{EventKind, MemoryEvents};

/// Every test plugin, each with the test below that covers it. A plugin
/// added to `tests/plugins/` without a test here fails
/// `every_test_plugin_has_a_test`.
const COVERED: &[&str] = &[
    "agent",
    // tests/outer_loop.rs: an improve role skipping every rule is refused by the host.
    "careless-improve",
    "frozen-0-1-0",
    "huge-string",
    "loop",
    // tests/worker.rs: a prompt injection its model obeys is stopped by the gate.
    "obedient",
    "oom",
    "panic",
    "ping",
    "reply",
    "undeclared-import",
];

fn bytes(name: &str) -> Vec<u8> {
    let path = builtin::test_plugin_path(name)
        .unwrap_or_else(|| panic!("test plugin {name} was not built"));
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Limits small enough that runaway plugins are stopped in well under a second.
fn test_limits() -> PluginLimits {
    PluginLimits {
        fuel: 500_000_000,
        memory_bytes: 128 << 20,
        ..PluginLimits::default()
    }
}

fn host() -> PluginHost {
    PluginHost::new(test_limits()).expect("plugin host")
}

fn task(run: &str) -> Task {
    Task {
        run_id: run.to_string(),
        role: "triage".into(),
        repo: "acme/widgets".into(),
        issue: Some(7),
        pull_request: None,
        branch: "kiln/triage-issue-7".into(),
        base_branch: "main".into(),
        trigger: Trigger::Manual,
        instructions: None,
        args: Vec::new(),
    }
}

fn ctx() -> (RunContext, MemoryEvents) {
    let events = MemoryEvents::new();
    (RunContext::new(Arc::new(events.clone())), events)
}

/// After a misbehaving run, the same host must still run a healthy plugin.
async fn assert_host_still_serves(host: &PluginHost) {
    let ping = host.load(&bytes("ping")).expect("ping loads");
    let mut t = task("after");
    t.instructions = Some("3".into());
    let report = host.run(&ping, t, ctx().0).await;
    let outcome = report
        .result
        .expect("a healthy run after a contained failure should succeed");
    assert_eq!(outcome.summary, "3 calls, 0 turns seen");
}

#[test]
fn every_test_plugin_has_a_test() {
    let built: BTreeSet<_> = builtin::TEST_PLUGINS.iter().map(|(n, _)| *n).collect();
    let covered: BTreeSet<_> = COVERED.iter().copied().collect();
    assert_eq!(
        built, covered,
        "each plugin in tests/plugins/ needs a test in tests/plugin_host.rs (and vice versa)"
    );
}

#[test]
fn every_built_plugin_is_a_pure_component_importing_only_kiln_role() {
    let host = host();
    let all = builtin::TEST_PLUGINS
        .iter()
        .map(|(n, _)| (n.to_string(), bytes(n)))
        .chain(
            builtin::ROLE_PLUGINS
                .iter()
                .map(|(n, b)| (n.to_string(), b.to_vec())),
        );
    for (name, bytes) in all {
        let (info, _) = host
            .check(&bytes)
            .unwrap_or_else(|e| panic!("{name} should parse: {e}"));
        assert!(
            !info.imports.is_empty(),
            "{name} should import at least the session interface"
        );
        let version = format!("@{}", info.manifest.wit);
        for import in &info.imports {
            assert!(
                import.name.starts_with("kiln:role/") && import.name.ends_with(&version),
                "{name} imports {} — plugins must import nothing but kiln:role{version}, the version their manifest names (no WASI)",
                import.name
            );
        }
        assert_eq!(
            info.exports,
            vec!["run".to_string()],
            "{name} should export only `run`"
        );
    }
}

#[tokio::test]
async fn a_plugin_that_loops_forever_is_stopped_by_its_cpu_limit() {
    let host = host();
    let plugin = host.load(&bytes("loop")).expect("loop loads");
    let report = host.run(&plugin, task("r-loop"), ctx().0).await;
    match report.result {
        Err(RunError::CpuLimit { ref plugin, fuel }) => {
            assert_eq!((plugin.as_str(), fuel), ("loop", 500_000_000));
            let msg = report.result.unwrap_err().to_string();
            assert_eq!(
                msg,
                "plugin loop exceeded its CPU limit (500000000 units of fuel) and was stopped"
            );
        }
        other => panic!("an endless loop should hit the CPU limit, got: {other:?}"),
    }
    assert_host_still_serves(&host).await;
}

#[tokio::test]
async fn a_plugin_that_allocates_without_bound_is_stopped_by_its_memory_limit() {
    let host = host();
    let plugin = host.load(&bytes("oom")).expect("oom loads");
    let report = host.run(&plugin, task("r-oom"), ctx().0).await;
    match &report.result {
        Err(RunError::MemoryLimit { plugin, message }) => {
            assert_eq!(plugin, "oom");
            assert!(
                message.contains("the limit is 128 MiB"),
                "message should name the limit, got: {message}"
            );
        }
        other => panic!("unbounded allocation should hit the memory limit, got: {other:?}"),
    }
    assert_host_still_serves(&host).await;
}

#[tokio::test]
async fn a_panicking_plugin_fails_its_run_with_the_panic_message() {
    let host = host();
    let plugin = host.load(&bytes("panic")).expect("panic loads");
    let (ctx, events) = ctx();
    let report = host.run(&plugin, task("r-42"), ctx).await;
    match &report.result {
        Err(RunError::Panicked { plugin, message }) => {
            assert_eq!(plugin, "panic");
            assert!(
                message.starts_with("the panic plugin gave up on run r-42"),
                "the panic message should survive the trap, got: {message}"
            );
        }
        other => panic!("a panic should be reported as such, got: {other:?}"),
    }
    let kinds: Vec<_> = events.snapshot().into_iter().map(|e| e.kind).collect();
    assert!(
        kinds.contains(&EventKind::Panic),
        "the panic should be an event of the run, got: {kinds:?}"
    );
    let last = events.snapshot().pop().expect("events");
    assert!(
        last.kind == EventKind::Progress && last.message.contains("gave up on run r-42"),
        "the plugin's end should still be in its log, got: {last:?}"
    );
    assert_host_still_serves(&host).await;
}

#[tokio::test]
async fn a_plugin_importing_an_undeclared_capability_is_refused_at_load() {
    let host = host();
    let err = host
        .load(&bytes("undeclared-import"))
        .err()
        .expect("loading should be refused");
    assert!(
        matches!(err, LoadError::UndeclaredImport { .. }),
        "got: {err:?}"
    );
    assert_eq!(
        err.to_string(),
        "plugin undeclared-import imports `kiln:role/forge@0.2.0#propose-comment`, which needs capability \
         forge.comment, but its manifest does not declare it"
    );
    assert!(
        host.plugin("undeclared-import").is_none(),
        "a refused plugin must not be registered"
    );
    assert_host_still_serves(&host).await;
}

#[tokio::test]
async fn a_plugin_sending_a_100_mb_string_is_stopped_with_the_limit_named() {
    // Default memory (256 MiB), so the guest can build the string and the
    // import's own size check is what stops it.
    let host = PluginHost::new(PluginLimits {
        memory_bytes: PluginLimits::default().memory_bytes,
        ..test_limits()
    })
    .expect("plugin host");
    let plugin = host.load(&bytes("huge-string")).expect("huge-string loads");
    let (ctx, events) = ctx();
    let report = host.run(&plugin, task("r-huge"), ctx).await;
    match &report.result {
        Err(RunError::GuestLimit { plugin, message }) => {
            assert_eq!(plugin, "huge-string");
            assert_eq!(
                message,
                "session.emit: event message is 100000000 bytes, the limit is 65536 bytes"
            );
        }
        other => panic!("a 100 MB event should be refused, got: {other:?}"),
    }
    let logged: usize = events.snapshot().iter().map(|e| e.message.len()).sum();
    assert!(
        logged < 10_000,
        "the 100 MB string must not reach the event log ({logged} bytes logged)"
    );
    assert_host_still_serves(&host).await;
}

/// Manifests the host must refuse, each on an otherwise healthy component.
#[test]
fn manifests_asking_for_too_much_or_the_wrong_thing_are_refused() {
    let host = host();
    let base = bytes("ping");
    let manifest = |caps: &str, role: &str, wit: &str| {
        format!(
            "name = \"ping\"\nversion = \"0.1.0\"\nwit = \"{wit}\"\nrole = \"{role}\"\ncapabilities = [{caps}]\n"
        )
    };
    let cases = [
        // triage may not review pull requests
        (
            manifest("\"forge.review\"", "triage", "0.2.0"),
            "plugin ping asks for capability forge.review, which role triage does not grant",
        ),
        // no built-in role may write code and review it
        (
            manifest("\"workspace.write\"", "review", "0.2.0"),
            "which role review does not grant",
        ),
        // there is no merge capability
        (
            manifest("\"forge.merge\"", "triage", "0.2.0"),
            "unknown capability `forge.merge`",
        ),
        // roles must exist
        (
            manifest("", "deployer", "0.2.0"),
            "plays role `deployer`, which is neither built in nor configured",
        ),
        // a future contract version is not silently accepted
        (
            manifest("", "triage", "9.0.0"),
            "targets kiln:role@9.0.0, this host supports 0.2.0, 0.1.0",
        ),
    ];
    for (text, expected) in cases {
        let component = with_manifest(&base, &text);
        let err = host
            .load(&component)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(expected),
            "manifest {text:?} should be refused with {expected:?}, got: {err:?}"
        );
    }
    let no_manifest = strip_manifest(&base);
    let err = host
        .load(&no_manifest)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("has no `kiln:manifest` section"), "got: {err}");
    let err = host
        .load(b"\0asm\x01\0\0\0")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("core module, not a component"), "got: {err}");
}

fn strip_manifest(component: &[u8]) -> Vec<u8> {
    // The builder appends the manifest as the last section.
    let mut last_custom = None;
    let mut depth = 0;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload.expect("valid component") {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::CustomSection(c) if depth == 0 && c.name() == "kiln:manifest" => {
                last_custom = Some(c.range())
            }
            _ => {}
        }
    }
    let range = last_custom.expect("manifest section");
    // `range` covers the section's contents; before them sit the section id
    // (one byte) and the contents' size as unsigned LEB128.
    let mut size = range.end - range.start;
    let mut leb_len = 1;
    while size >= 0x80 {
        size >>= 7;
        leb_len += 1;
    }
    let mut out = component[..range.start - 1 - leb_len].to_vec();
    out.extend_from_slice(&component[range.end..]);
    out
}

fn with_manifest(component: &[u8], manifest: &str) -> Vec<u8> {
    let mut out = strip_manifest(component);
    kiln_plugin_build::append_manifest(&mut out, manifest);
    out
}

/// A model that replays canned turns, optionally waiting for a signal first.
struct Replay {
    turns: Mutex<VecDeque<Completion>>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    waiting: Arc<AtomicUsize>,
}

/// A model that replays canned turns and keeps every request it was sent.
struct Recording {
    replay: Replay,
    requests: Mutex<Vec<CompletionRequest>>,
}

impl ModelProvider for Recording {
    fn name(&self) -> String {
        "recording".into()
    }
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ModelError>> {
        if let Ok(mut requests) = self.requests.lock() {
            requests.push(request.clone());
        }
        self.replay.complete(request)
    }
}

impl ModelProvider for Replay {
    fn name(&self) -> String {
        "replay".into()
    }
    fn complete(
        &self,
        _request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, ModelError>> {
        Box::pin(async move {
            if let Some(gate) = &self.gate {
                self.waiting.fetch_add(1, Ordering::SeqCst);
                let _permit = gate
                    .acquire()
                    .await
                    .map_err(|e| ModelError::Unavailable(e.to_string()))?;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            self.turns
                .lock()
                .map_err(|_| ModelError::Unavailable("poisoned".into()))?
                .pop_front()
                .ok_or_else(|| ModelError::InvalidAnswer("script exhausted".into()))
        })
    }
}

fn tool_turn(id: &str, name: &str, args: &str) -> Completion {
    Completion {
        message: model::Message {
            role: model::Role::Assistant,
            content: vec![ContentPart::ToolCall(model::ToolCall {
                id: id.into(),
                name: name.into(),
                arguments: args.into(),
            })],
        },
        stop_reason: model::StopReason::ToolUse,
        usage: model::Usage {
            input_tokens: 100,
            output_tokens: 10,
            cost_micro_usd: 5,
        },
        model: "replay".into(),
    }
}

fn agent_script() -> VecDeque<Completion> {
    VecDeque::from(vec![
        tool_turn("c1", "list_dir", r#"{"path":""}"#),
        tool_turn("c2", "read_file", r#"{"path":"src/answer.txt"}"#),
        tool_turn(
            "c3",
            "answer",
            r#"{"text":"The answer is in src/answer.txt"}"#,
        ),
    ])
}

fn agent_ctx(
    provider: Arc<dyn ModelProvider>,
    workspace: &std::path::Path,
) -> (RunContext, MemoryEvents) {
    let (mut ctx, events) = ctx();
    ctx.model = Some(provider);
    ctx.workspace = Some(WorkspaceMount::open(workspace, false).expect("workspace"));
    let mut forge = ForgeSnapshot::default();
    forge.issues.insert(
        7,
        Issue {
            number: 7,
            title: "Where is the answer?".into(),
            body: "Please find it.".into(),
            author: "octocat".into(),
            trusted: false,
            labels: vec![],
            open: true,
            comments: vec![],
        },
    );
    ctx.forge = forge;
    (ctx, events)
}

fn sample_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("src")).expect("mkdir");
    std::fs::write(dir.path().join("src/answer.txt"), "42").expect("write");
    dir
}

#[tokio::test]
async fn the_sdk_agent_loop_drives_tools_and_proposes_its_answer() {
    let host = host();
    let plugin = host.load(&bytes("agent")).expect("agent loads");
    let ws = sample_workspace();
    let provider = Arc::new(Replay {
        turns: Mutex::new(agent_script()),
        gate: None,
        waiting: Arc::default(),
    });
    let (ctx, events) = agent_ctx(provider, ws.path());
    let report = host.run(&plugin, task("r-agent"), ctx).await;
    let outcome = report.result.expect("the agent run should succeed");
    assert_eq!(outcome.status, OutcomeStatus::Completed);
    assert_eq!(
        outcome.output.as_deref(),
        Some(r#"{"text":"The answer is in src/answer.txt"}"#)
    );
    assert_eq!(
        report.proposals,
        vec![Proposal::Comment {
            number: 7,
            body: "The answer is in src/answer.txt".into()
        }],
        "the agent's answer should be proposed as a comment on the issue"
    );
    assert_eq!(
        (
            report.budget.turns,
            report.budget.tokens,
            report.budget.cost_micro_usd
        ),
        (3, 330, 15)
    );
    let turns = events
        .snapshot()
        .iter()
        .filter(|e| e.kind == EventKind::ModelTurn)
        .count();
    assert_eq!(turns, 3, "each model turn should be an event");
}

#[tokio::test]
async fn without_a_provider_the_model_import_says_none_is_configured() {
    let host = host();
    let plugin = host.load(&bytes("agent")).expect("agent loads");
    let ws = sample_workspace();
    let (mut ctx, _) = agent_ctx(
        Arc::new(Replay {
            turns: Mutex::default(),
            gate: None,
            waiting: Arc::default(),
        }),
        ws.path(),
    );
    ctx.model = None;
    let report = host.run(&plugin, task("r-nomodel"), ctx).await;
    let err = report
        .result
        .expect_err("no provider means no answer")
        .to_string();
    assert_eq!(
        err,
        "plugin agent failed: unavailable: no model provider is configured (set one in kiln.toml, or use the scripted provider)"
    );
}

#[tokio::test]
async fn a_run_over_its_turn_budget_stops_with_that_reason() {
    let host = host();
    let plugin = host.load(&bytes("agent")).expect("agent loads");
    let ws = sample_workspace();
    let provider = Arc::new(Replay {
        turns: Mutex::new(agent_script()),
        gate: None,
        waiting: Arc::default(),
    });
    let (mut ctx, _) = agent_ctx(provider, ws.path());
    ctx.budget.max_turns = Some(2);
    let report = host.run(&plugin, task("r-budget"), ctx).await;
    let outcome = report
        .result
        .expect("the role handles budget exhaustion itself");
    assert_eq!(
        outcome.status,
        OutcomeStatus::Blocked,
        "a run may never report success past its budget"
    );
    assert_eq!(
        outcome.summary,
        "budget exhausted: turn budget spent: 2 of 2 turns"
    );
    assert!(
        report.proposals.is_empty(),
        "nothing should be proposed once the budget is spent"
    );
}

/// Twenty runs parked inside a slow import must not occupy the runtime's
/// threads: on a two-thread runtime, another run still completes while all
/// twenty are waiting, and the twenty finish once released.
#[test]
fn twenty_runs_blocked_in_a_slow_import_leave_the_runner_responsive() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let host = Arc::new(host());
        let agent = host.load(&bytes("agent")).expect("agent loads");
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let waiting = Arc::new(AtomicUsize::new(0));
        let ws = sample_workspace();
        let mut runs = Vec::new();
        for i in 0..20 {
            let provider = Arc::new(Replay {
                turns: Mutex::new(agent_script()),
                gate: Some(gate.clone()),
                waiting: waiting.clone(),
            });
            let (ctx, _) = agent_ctx(provider, ws.path());
            let (host, agent) = (host.clone(), agent.clone());
            runs.push(tokio::spawn(async move {
                host.run(&agent, task(&format!("r-{i}")), ctx).await
            }));
        }
        // Bounded wait for all twenty to park in the model import; a hang here is a failure, not a timing claim.
        tokio::time::timeout(Duration::from_secs(60), async {
            while waiting.load(Ordering::SeqCst) < 20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("all 20 runs should reach the slow import");

        let ping = host.load(&bytes("ping")).expect("ping loads");
        let mut t = task("r-ping");
        t.instructions = Some("1000".into());
        let report = tokio::time::timeout(Duration::from_secs(60), host.run(&ping, t, ctx().0))
            .await
            .expect("a run must complete while 20 others wait in an import");
        assert!(
            report.result.is_ok(),
            "the extra run should succeed: {:?}",
            report.result.err()
        );
        assert_eq!(
            waiting.load(Ordering::SeqCst),
            20,
            "the 20 runs should still be parked in the import"
        );
        assert!(
            runs.iter().all(|r| !r.is_finished()),
            "no parked run should have finished yet"
        );

        gate.add_permits(1000);
        for run in runs {
            let report = run.await.expect("run task");
            assert!(
                report.result.is_ok(),
                "released runs should complete: {:?}",
                report.result.err()
            );
        }
    });
}

/// Runs beyond the host's instance pool fail to start with a clear error;
/// the runs already going are unaffected.
#[tokio::test]
async fn a_run_beyond_the_concurrency_limit_fails_to_start_and_says_why() {
    let host = Arc::new(
        PluginHost::new(PluginLimits {
            max_concurrent_runs: 1,
            ..test_limits()
        })
        .expect("plugin host"),
    );
    let agent = host.load(&bytes("agent")).expect("agent loads");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let ws = sample_workspace();
    let provider = Arc::new(Replay {
        turns: Mutex::new(agent_script()),
        gate: Some(gate.clone()),
        waiting: waiting.clone(),
    });
    let (ctx1, _) = agent_ctx(provider, ws.path());
    let first = {
        let (host, agent) = (host.clone(), agent.clone());
        tokio::spawn(async move { host.run(&agent, task("r-first"), ctx1).await })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while waiting.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first run should reach the model import");
    let ping = host.load(&bytes("ping")).expect("ping loads");
    let report = host.run(&ping, task("r-second"), ctx().0).await;
    match &report.result {
        Err(RunError::Instantiate { plugin, message }) => {
            assert_eq!(plugin, "ping");
            assert!(
                message.contains("limit of 1"),
                "the error should name the limit, got: {message}"
            );
        }
        other => panic!("a run beyond the pool should fail to instantiate, got: {other:?}"),
    }
    gate.add_permits(10);
    let first = first.await.expect("first run");
    assert!(
        first.result.is_ok(),
        "the run already going should finish: {:?}",
        first.result.err()
    );
    assert_host_still_serves(&host).await;
}

#[tokio::test]
async fn a_steering_message_reaches_the_model_before_the_next_turn() {
    let host = host();
    let plugin = host.load(&bytes("agent")).expect("agent loads");
    let ws = sample_workspace();
    let provider = Arc::new(Recording {
        replay: Replay {
            turns: Mutex::new(agent_script()),
            gate: None,
            waiting: Arc::default(),
        },
        requests: Mutex::default(),
    });
    let (ctx, events) = agent_ctx(provider.clone(), ws.path());
    ctx.steering.send("look in src/ first");
    let report = host.run(&plugin, task("r-steer"), ctx).await;
    assert!(
        report.result.is_ok(),
        "the steered run should succeed: {:?}",
        report.result.err()
    );
    let requests = provider.requests.lock().expect("requests");
    let first = &requests[0];
    let steering = first.messages.iter().flat_map(|m| &m.content).any(|p| {
        matches!(p, ContentPart::Text { text } if text == "Instruction from the operator: look in src/ first")
    });
    assert!(
        steering,
        "the operator's message should be in the first model request: {:?}",
        first.messages
    );
    assert!(
        events
            .snapshot()
            .iter()
            .any(|e| e.message == "steering received before turn 1"),
        "the plugin should note that it was steered"
    );
}

fn text_turn(text: &str) -> Completion {
    Completion {
        message: model::Message {
            role: model::Role::Assistant,
            content: vec![ContentPart::Text { text: text.into() }],
        },
        stop_reason: model::StopReason::EndTurn,
        usage: model::Usage::default(),
        model: "replay".into(),
    }
}

fn replay(turns: Vec<Completion>) -> Arc<Replay> {
    Arc::new(Replay {
        turns: Mutex::new(VecDeque::from(turns)),
        gate: None,
        waiting: Arc::default(),
    })
}

/// A host granting the custom roles the version tests' plugins play.
fn versions_host() -> PluginHost {
    let mut host = host();
    let grant = |caps: &[&str]| kiln::plugin::CapabilitySet::parse(caps).expect("capabilities");
    host.grant_role(
        "frozen",
        grant(&["model.complete", "forge.read", "forge.comment"]),
    );
    host.grant_role(
        "answer",
        grant(&["forge.read", "forge.reply", "forge.status", "signals.read"]),
    );
    host
}

#[tokio::test]
async fn a_frozen_0_1_0_plugin_runs_a_whole_run_beside_0_2_0_plugins() {
    let host = versions_host();
    let frozen = host
        .load(&bytes("frozen-0-1-0"))
        .expect("a plugin built against 0.1.0 loads on this host");
    assert_eq!(frozen.info.manifest.wit, "0.1.0");
    assert!(
        frozen
            .info
            .imports
            .iter()
            .all(|i| i.name.ends_with("@0.1.0")),
        "the frozen plugin must still be a 0.1.0 component: {:?}",
        frozen.info.imports
    );
    let (mut ctx, events) = ctx();
    ctx.model = Some(replay(vec![text_turn("Thanks, we will look into it.")]));
    ctx.forge.issues.insert(
        7,
        Issue {
            number: 7,
            title: "Crash on start".into(),
            body: "It crashes.".into(),
            author: "stranger".into(),
            trusted: false,
            labels: vec![],
            open: true,
            comments: vec![],
        },
    );
    let mut t = task("frozen");
    t.role = "frozen".into();
    // A trigger 0.1.0 does not know reaches it as `manual`.
    t.trigger = Trigger::Schedule("nightly".into());
    let report = host.run(&frozen, t, ctx).await;
    let outcome = report.result.expect("the 0.1.0 run succeeds");
    assert_eq!(outcome.summary, "commented on #7 as effect e1");
    assert_eq!(
        report.proposals,
        vec![Proposal::Comment {
            number: 7,
            body: "Thanks, we will look into it.\n\n(from a plugin built against kiln:role@0.1.0)"
                .into()
        }]
    );
    assert!(
        events
            .snapshot()
            .iter()
            .any(|e| e.message == "frozen 0.1.0 plugin reading issue #7"),
        "the 0.1.0 plugin's own events reach the log"
    );
    // The same host, right after, runs 0.2.0 plugins (built-in and test).
    assert_host_still_serves(&host).await;
    for (name, bytes) in builtin::ROLE_PLUGINS {
        let loaded = host.load(bytes).expect("built-in loads");
        assert_eq!(
            loaded.info.manifest.wit, "0.2.0",
            "{name} is built against 0.2.0"
        );
    }
}

#[tokio::test]
async fn a_0_2_0_plugin_reads_review_threads_replies_and_sets_a_status() {
    use kiln::forge::{Comment, PullRequest, ReviewThread, StatusState};
    let host = versions_host();
    let plugin = host.load(&bytes("reply")).expect("reply loads");
    let (mut ctx, _events) = ctx();
    let thread = |id: u64, body: &str| ReviewThread {
        id,
        path: "src/lib.rs".into(),
        line: Some(3),
        new_side: true,
        resolved: false,
        comments: vec![Comment {
            id,
            author: "maintainer".into(),
            trusted: true,
            body: body.into(),
        }],
    };
    ctx.forge.pull_requests.insert(
        5,
        PullRequest {
            issue: Issue {
                number: 5,
                title: "Fix the crash".into(),
                body: String::new(),
                author: "kiln[bot]".into(),
                trusted: true,
                labels: vec![],
                open: true,
                comments: vec![],
            },
            head_branch: "kiln/implementation-issue-4".into(),
            base_branch: "main".into(),
            draft: true,
            diff: String::new(),
            head_sha: "0123abcd".into(),
            review_threads: vec![
                thread(11, "Handle the empty case"),
                // A secret pasted by a reviewer never leaves in the reply.
                thread(12, "use token ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"),
            ],
            head_from_fork: false,
        },
    );
    let mut t = task("answer");
    t.role = "answer".into();
    t.issue = None;
    t.pull_request = Some(5);
    let report = host.run(&plugin, t, ctx).await;
    let outcome = report.result.expect("the 0.2.0 run succeeds");
    assert_eq!(
        outcome.summary,
        "replied to 2 threads on #5 at 0123abcd; no history (unavailable: signals.recent-runs: this run has no history attached)"
    );
    assert_eq!(report.proposals.len(), 3, "{:?}", report.proposals);
    assert_eq!(
        report.proposals[0],
        Proposal::Reply {
            number: 5,
            comment_id: 11,
            body: "Addressed: Handle the empty case".into()
        }
    );
    match &report.proposals[1] {
        Proposal::Reply { body, .. } => assert!(
            !body.contains("ghp_0123456789") && body.starts_with("Addressed: use token"),
            "the reply must be redacted: {body}"
        ),
        other => panic!("expected a reply, got {other:?}"),
    }
    assert_eq!(
        report.proposals[2],
        Proposal::Status {
            number: 5,
            context: "kiln/answer".into(),
            state: StatusState::Success,
            description: "every thread answered".into()
        }
    );
}

#[test]
fn a_plugin_whose_imports_belong_to_another_version_than_its_manifest_is_refused() {
    let host = versions_host();
    let manifest = |wit: &str, role: &str, caps: &str| {
        format!(
            "name = \"relabelled\"\nversion = \"0.1.0\"\nwit = \"{wit}\"\nrole = \"{role}\"\ncapabilities = [{caps}]\n"
        )
    };
    // A plugin that calls 0.2.0's reply, declaring 0.1.0.
    let reply = with_manifest(
        &bytes("reply"),
        &manifest(
            "0.1.0",
            "answer",
            "\"forge.read\", \"forge.reply\", \"forge.status\", \"signals.read\"",
        ),
    );
    let err = host
        .load(&reply)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("declares wit = \"0.1.0\" in kiln-plugin.toml but imports `kiln:role/")
            && err.contains("@0.2.0`"),
        "got: {err}"
    );
    // And the other way round: a 0.1.0 component claiming 0.2.0.
    let frozen = with_manifest(
        &bytes("frozen-0-1-0"),
        &manifest(
            "0.2.0",
            "frozen",
            "\"model.complete\", \"forge.read\", \"forge.comment\"",
        ),
    );
    let err = host
        .load(&frozen)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("declares wit = \"0.2.0\"") && err.contains("@0.1.0`"),
        "got: {err}"
    );
    // An unknown version is refused with the list of supported ones.
    let future = with_manifest(&bytes("reply"), &manifest("0.3.0", "answer", ""));
    let err = host
        .load(&future)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("targets kiln:role@0.3.0, this host supports 0.2.0, 0.1.0"),
        "got: {err}"
    );
}

/// A kiln.toml with one `[[roles]]` entry, in `dir`, loaded as `kiln run` would.
fn custom_role_config(
    dir: &std::path::Path,
    role: &str,
) -> Result<kiln::config::KilnConfig, String> {
    std::fs::write(dir.join("kiln.toml"), role).map_err(|e| e.to_string())?;
    kiln::config::KilnConfig::load(&dir.join("kiln.toml")).map_err(|e| e.to_string())
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn custom_roles_that_cannot_be_trusted_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reply = bytes("reply");
    std::fs::write(dir.path().join("answer.wasm"), &reply).expect("write plugin");
    std::fs::write(dir.path().join("not-a-component.wasm"), b"\0asm\x01\0\0\0").expect("write");
    let entry = |name: &str, file: &str, sha: &str, caps: &str| {
        format!(
            "[[roles]]\nname = \"{name}\"\nplugin = \"{file}\"\nsha256 = \"{sha}\"\ncapabilities = [{caps}]\n"
        )
    };
    let all_caps = "\"forge.read\", \"forge.reply\", \"forge.status\", \"signals.read\"";
    let load = |text: String| -> String {
        match custom_role_config(dir.path(), &text) {
            Err(e) => e,
            Ok(config) => match kiln::app::role_plugins(test_limits(), &config) {
                Ok((_, plugins)) => format!("loaded {} plugins", plugins.len()),
                Err(e) => e.to_string(),
            },
        }
    };
    // The honest entry loads, beside the six built-in roles.
    assert_eq!(
        load(entry("answer", "answer.wasm", &sha256(&reply), all_caps)),
        "loaded 7 plugins"
    );
    let cases = [
        (
            entry("answer", "answer.wasm", &"0".repeat(64), all_caps),
            "but kiln.toml pins 0000",
        ),
        (
            entry(
                "answer",
                "answer.wasm",
                &sha256(&reply),
                "\"forge.read\", \"forge.reply\"",
            ),
            "asks for capability forge.status, which role answer does not grant",
        ),
        (
            entry("review", "answer.wasm", &sha256(&reply), all_caps),
            "[[roles]] \"review\": `name` is a built-in role's name",
        ),
        (
            entry("answer", "answer.wasm", "not-hex", all_caps),
            "`sha256` must be the plugin file's SHA-256 as 64 hex digits",
        ),
        (
            entry(
                "answer",
                "not-a-component.wasm",
                &sha256(b"\0asm\x01\0\0\0"),
                all_caps,
            ),
            "core module, not a component",
        ),
        (
            entry("changelog", "answer.wasm", &sha256(&reply), all_caps),
            "plays role `answer` (its kiln-plugin.toml), not `changelog`",
        ),
        (
            format!(
                "{}\n[[triggers]]\non = \"label\"\nlabel = \"x\"\nrole = \"deployer\"\n",
                entry("answer", "answer.wasm", &sha256(&reply), all_caps)
            ),
            "[[triggers]] #1 names role `deployer`, which is neither built in",
        ),
    ];
    for (text, expected) in cases {
        let got = load(text.clone());
        assert!(
            got.contains(expected),
            "config\n{text}\nshould be refused with {expected:?}, got: {got:?}"
        );
    }
}
