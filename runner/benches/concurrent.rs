//! Host-side memory of concurrent runs: 50 implementation runs started at
//! once through the service's own path (`service::Runner` with 50 workers
//! over a `SqliteStore` in a temp dir, the local forge, real Docker
//! sandboxes, the built-in plugin), each parked in a `sleep` inside its
//! sandbox so all 50 are alive together. The process's resident memory
//! (`VmRSS`, and the peak `VmHWM` reset after the baseline) is read from
//! `/proc/self/status`: once after the services are assembled and one
//! warm-up run ended (baseline), and when all 50 commands are confirmed
//! running (containers counted by label, each `docker top`'d). Containers'
//! own memory is not in this process and is not counted. The runs are then
//! cancelled (the operator's path) so the containers live no longer than
//! needed. Also timed: starting the 50 runs until all are parked, against
//! 50 raw `docker run --rm IMAGE true` started at once (measured in the same
//! run, after the runs are gone). Run with:
//!
//! ```text
//! cargo bench -p kiln --bench concurrent                  # KILN_BENCH_RUNS=50 by default
//! cargo bench -p kiln --bench concurrent --profile dev    # without a release build
//! ```
use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
#[path = "../../tests/support/service.rs"]
mod service;

use kiln::app::{self, AppOptions};
use kiln::config::KilnConfig;
use kiln::control::RunControl as _;
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, NewIssue};
use kiln::model::{self, BoxFuture, Completion, CompletionRequest, ModelError, ModelProvider};
use kiln::sandbox::LABEL_RUNNER_ID;
use kiln::service::Runner;
use kiln::store::{RunId, RunStore, SqliteStore};

const RUNNER_ID: &str = "bench-concurrent";
/// What each run is parked in; longer than starting 50 runs can take on a
/// slow machine, and ended early by cancelling.
const PARKED: &str = "sleep 300";
/// Host memory per run the runner aims at.
const TARGET_MB: f64 = 5.0;

/// A model that needs no state across runs (one provider serves them all):
/// its first turn in a conversation runs the parking command, any later one
/// stops the run.
struct Parker;

impl ModelProvider for Parker {
    fn name(&self) -> String {
        "scripted:parker".into()
    }

    fn complete(&self, r: CompletionRequest) -> BoxFuture<'_, Result<Completion, ModelError>> {
        let answered = r.messages.iter().any(|m| m.role == model::Role::Assistant);
        Box::pin(async move {
            Ok(if answered {
                service::tool_call(
                    "submit_implementation",
                    r#"{"status":"blocked","title":"-","summary":"-","commit_message":"-","blocked_reason":"bench"}"#,
                )
            } else {
                service::tool_call("run_command", r#"{"argv":["sleep","300"]}"#)
            })
        })
    }
}

/// A field of `/proc/self/status` given in kB (`VmRSS:`), in bytes.
fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn memory() -> (u64, u64) {
    (status_field("VmRSS:"), status_field("VmHWM:"))
}

/// Where resident memory is: anonymous (heap, stacks, written wasm pages),
/// file-backed, shared memory (wasm memory images), in bytes.
fn breakdown() -> [u64; 3] {
    ["RssAnon:", "RssFile:", "RssShmem:"].map(status_field)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Removes this bench's containers when dropped, also when it fails.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_RUNNER_ID}={RUNNER_ID}");
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .status();
            }
        }
    }
}

/// Ids of this bench's containers.
async fn containers(docker: &Docker) -> anyhow::Result<Vec<String>> {
    Ok(service::containers(docker, RUNNER_ID, None).await)
}

/// Wait until `n` containers of this bench run `PARKED`.
async fn wait_parked(docker: &Docker, n: usize, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut parked = HashSet::new();
    while parked.len() < n {
        anyhow::ensure!(
            start.elapsed() < timeout,
            "only {} of {n} runs reached their sandbox command",
            parked.len()
        );
        for id in containers(docker).await? {
            if parked.contains(&id) {
                continue;
            }
            let top = docker.top_processes(&id, None).await.ok();
            if top
                .and_then(|t| t.processes)
                .is_some_and(|ps| ps.iter().any(|p| p.join(" ").contains(PARKED)))
            {
                parked.insert(id);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Cancel `runs` and wait until every one has ended and its sandbox is gone.
async fn release(
    runner: &Runner,
    store: &SqliteStore,
    docker: &Docker,
    runs: &[RunId],
) -> anyhow::Result<()> {
    for id in runs {
        runner
            .cancel(id.0, "bench".into())
            .await
            .map_err(|e| anyhow::anyhow!("cancel {id}: {e}"))?;
    }
    let start = Instant::now();
    loop {
        let mut ended = 0;
        for id in runs {
            if store.get_run(*id).await?.state.is_terminal() {
                ended += 1;
            }
        }
        if ended == runs.len() && containers(docker).await?.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "{ended} of {} runs ended after cancel",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn enqueue(
    store: &SqliteStore,
    runner: &Runner,
    forge: &LocalForge,
    n: usize,
) -> anyhow::Result<Vec<RunId>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let number = forge
            .create_issue(NewIssue {
                title: "slugify leaves runs of dashes".into(),
                body: include_str!("../demo/issue.md").into(),
                labels: vec![],
            })
            .await?;
        ids.push(service::queue_implementation(store, runner, forge.repo(), number).await);
    }
    Ok(ids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = if quick {
        2
    } else {
        std::env::var("KILN_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50)
            .max(1)
    };
    let profile = if cfg!(debug_assertions) {
        "dev (debug assertions on)"
    } else {
        "release"
    };
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir()?;
    let forge = service::demo_repo(dir.path(), "local/bench").await;
    let services = app::services(
        AppOptions {
            config: KilnConfig::default(),
            data_dir: dir.path().to_path_buf(),
            recipes: app::recipes_dir(),
            runner_id: RUNNER_ID.into(),
            model: Some(Arc::new(Parker)),
            role_models: Default::default(),
            budgets: HashMap::new(),
            history: None,
        },
        &|_| {},
    )
    .await?;
    let image = services.image.clone();
    let docker = Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await?;
    let store = service::store(dir.path()).await;
    let runner = service::runner(store.clone(), services, Arc::new(forge.clone()));
    service::start(&runner, n).await;

    // Warm-up: one run through the same path (engine, plugin, mirror, image).
    let warm = enqueue(&store, &runner, &forge, 1).await?;
    wait_parked(&docker, 1, Duration::from_secs(300)).await?;
    release(&runner, &store, &docker, &warm).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (baseline, _) = memory();
    let base_parts = breakdown();
    // Reset VmHWM to the current RSS, so the peak is this phase's.
    std::fs::write("/proc/self/clear_refs", "5")?;

    // Sample RSS while the runs start: the peak may come before all are parked.
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(memory().0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let t = Instant::now();
    let runs = enqueue(&store, &runner, &forge, n).await?;
    wait_parked(&docker, n, Duration::from_secs(600)).await?;
    let started = t.elapsed();
    let (at_all_alive, hwm) = memory();
    let parts = breakdown();
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(at_all_alive).max(hwm);
    let t = Instant::now();
    release(&runner, &store, &docker, &runs).await?;
    let released = t.elapsed();

    // Baseline: n raw containers started at once, after the runs are gone.
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new("docker")
                .args(["run", "--rm", "--network", "none", &image, "true"])
                .stdout(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut c in children {
        anyhow::ensure!(c.wait()?.success(), "docker run failed");
    }
    let raw = t.elapsed();

    let per_run = |rss: u64| mb(rss.saturating_sub(baseline)) / n as f64;
    println!(
        "{n} concurrent runs ({profile} profile): host RSS baseline {:.1} MB, with all {n} parked {:.1} MB, \
         peak {:.1} MB; per run {:.2} MB at all-parked, {:.2} MB at peak (target < {TARGET_MB} MB: ratio {:.2}); \
         containers' memory excluded",
        mb(baseline),
        mb(at_all_alive),
        mb(peak),
        per_run(at_all_alive),
        per_run(peak),
        per_run(peak) / TARGET_MB,
    );
    let growth = |i: usize| mb(parts[i].saturating_sub(base_parts[i])) / n as f64;
    println!(
        "per run at all-parked, by kind: anonymous {:.2} MB, file-backed {:.2} MB, shared {:.2} MB",
        growth(0),
        growth(1),
        growth(2),
    );
    println!(
        "wall time: {n} runs started until all parked in their sandbox command {:.1} s; \
         {n} raw `docker run --rm IMAGE true` at once {:.1} s (ratio {:.2}); cancelling the {n} runs \
         until every sandbox was removed {:.1} s",
        started.as_secs_f64(),
        raw.as_secs_f64(),
        started.as_secs_f64() / raw.as_secs_f64(),
        released.as_secs_f64(),
    );
    Ok(())
}
