//! Latency from a label change on the local forge to its run's sandbox
//! being ready, through the path `kiln serve` takes (the forge's outbox, the
//! event pump polling every `IDLE_POLL`, the router, the store's queue, a worker
//! woken by the dispatcher), next to the same run started the way `kiln run`
//! starts it (the worker called directly), measured in the same process and
//! interleaved. Both exclude process and service start-up. Run with:
//!
//! ```text
//! cargo bench -p kiln --bench trigger          # KILN_BENCH_ITERS=7 by default
//! ```
mod common;
use common::{median, ms};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kiln::app::{self, AppOptions};
use kiln::config::{KilnConfig, Role};
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, ForgeResolver, NewIssue, RepoRef};
use kiln::intake::local::PumpOptions;
use kiln::intake::{Dispatcher, RunnerHooks};
use kiln::model::{ModelProvider, ScriptedProvider};
use kiln::policy::Trust;
use kiln::service::Runner;
use kiln::session::{EventKind, EventSink};
use kiln::store::{RecoveryPolicy, RunFilter, RunStore, SqliteOptions, SqliteStore};
use kiln::worker::{LiveRun, RunEnd, RunRequest, RunTrigger, execute};

const SCRIPT: &str = include_str!("../demo/triage.json");

/// Only a label starts a run, so opening the benchmark's issues does not.
const CONFIG: &str = "[[triggers]]\non = \"label\"\nlabel = \"go\"\nrole = \"triage\"\n";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// True for the worker's "sandbox <id> ready" progress event.
fn sandbox_ready(message: &str) -> bool {
    message.starts_with("sandbox ") && message.ends_with(" ready")
}

/// Notes when the direct run's sandbox became ready.
struct ReadyAt(Mutex<Option<Instant>>);

impl EventSink for ReadyAt {
    fn record(&self, _kind: EventKind, message: String) {
        if sandbox_ready(&message)
            && let Ok(mut at) = self.0.lock()
        {
            at.get_or_insert_with(Instant::now);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iters = common::iterations(7);
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("sample");
    common::sample_repo(&src)?;
    let root = dir.path().join("forge");
    let forge =
        LocalForge::create(&root, RepoRef::parse("local/bench")?, "alice", Some(&src)).await?;
    let alice = forge.acting_as("alice");
    let config = KilnConfig::from_toml(CONFIG)?;
    let store: Arc<dyn RunStore> =
        Arc::new(SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default()).await?);
    let model: Arc<dyn ModelProvider> =
        Arc::new(ScriptedProvider::from_json("triage.json", SCRIPT)?.per_conversation());
    let services = app::services(
        AppOptions {
            config: config.clone(),
            data_dir: dir.path().to_path_buf(),
            recipes: app::recipes_dir(),
            runner_id: "bench-trigger".into(),
            model: Some(model),
            role_models: HashMap::new(),
            budgets: HashMap::new(),
            history: None,
        },
        &|_| {},
    )
    .await?;
    // Resolved as `kiln serve` resolves `local/*` repositories.
    let forges: ForgeResolver = kiln::forge::local::LocalForges::new(&root).resolver();
    let runner = Runner::new(store.clone(), services.clone(), forges.clone());
    runner.start(1, RecoveryPolicy::default()).await?;
    let wake = runner.clone();
    let dispatcher = Dispatcher::start(
        store.clone(),
        forges,
        &config.intake,
        RunnerHooks {
            control: None,
            wake: Some(Arc::new(move || wake.notify_queued())),
        },
    );
    kiln::intake::local::start(
        dispatcher,
        PumpOptions {
            forge_root: root,
            consumer: "bench".into(),
            idle_poll: kiln::intake::local::IDLE_POLL,
            only_repo: None,
        },
    )?;
    let shared: Arc<dyn Forge> = Arc::new(forge.clone());

    let (mut evented, mut direct) = (Vec::new(), Vec::new());
    // Where the evented path's time goes: label → queued → worker's first event.
    let (mut to_queued, mut to_started) = (Vec::new(), Vec::new());
    for i in 0..iters {
        let new_issue = || {
            alice.create_issue(NewIssue {
                title: "slugify leaves runs of dashes".into(),
                body: include_str!("../demo/issue.md").into(),
                labels: vec![],
            })
        };
        // Through the forge's events, as under `kiln serve`.
        let number = new_issue().await?;
        let before = store.list_runs(RunFilter::default()).await?.len();
        let t0 = now_ms();
        alice.add_labels(number, &["go".into()]).await?;
        let run = loop {
            let runs = store.list_runs(RunFilter::default()).await?;
            if runs.len() > before
                && let Some(r) = runs.into_iter().max_by_key(|r| r.id)
                && r.state.is_terminal()
            {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        anyhow::ensure!(
            run.state == kiln::store::RunState::Succeeded,
            "the evented run ended {}: {:?}",
            run.state.as_str(),
            run.reason
        );
        let events = store.events_after(run.id, 0, 1000).await?;
        let ready = events
            .iter()
            .find(|e| sandbox_ready(&e.message))
            .ok_or_else(|| anyhow::anyhow!("no sandbox-ready event in {}", run.id))?;
        evented.push(Duration::from_millis((ready.at_ms - t0).max(0) as u64));
        to_queued.push(Duration::from_millis((run.created_ms - t0).max(0) as u64));
        let started = events.first().map_or(ready.at_ms, |e| e.at_ms);
        to_started.push(Duration::from_millis((started - t0).max(0) as u64));

        // Directly, as `kiln run` does.
        let number = new_issue().await?;
        let sink = Arc::new(ReadyAt(Mutex::new(None)));
        let req = RunRequest {
            script: None,
            run_id: format!("bench-direct-{i}"),
            repo: shared.repo().clone(),
            role: Role::Triage,
            number,
            trigger: RunTrigger::Manual,
            trust: Trust::Trusted,
            instructions: None,
            continue_from: Vec::new(),
            actor: None,
        };
        let t = Instant::now();
        let s = execute(
            &services,
            shared.clone(),
            &req,
            sink.clone(),
            &LiveRun::new(),
        )
        .await;
        anyhow::ensure!(
            s.state == RunEnd::Succeeded,
            "direct run failed: {}",
            s.reason
        );
        let at = sink
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .ok_or_else(|| anyhow::anyhow!("no sandbox-ready event in the direct run"))?;
        direct.push(at - t);
    }
    let (e, d) = (median(&mut evented), median(&mut direct));
    println!(
        "  evented path: label → run queued median {:.0} ms; label → worker's first event \
         median {:.0} ms",
        ms(median(&mut to_queued)),
        ms(median(&mut to_started))
    );
    println!(
        "label change → sandbox ready, through forge events: median {:.0} ms; the same run \
         started directly (kiln run): median {:.0} ms; ratio {:.2}x (target ≤ 1.10x; {iters} \
         iterations, interleaved)",
        ms(e),
        ms(d),
        e.as_secs_f64() / d.as_secs_f64()
    );
    Ok(())
}
