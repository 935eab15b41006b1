//! Benchmark: webhook intake over real HTTP, driven by `wrk` in a second
//! process on loopback.
//!
//! The measured route is the real one: body limit, HMAC-SHA256 signature
//! check, JSON parse, delivery dedup (a committed SQLite write), hand-off to
//! the processor, 202. The baseline, in the same server and the same run, is
//! an unsigned no-op route answering 202 to the same requests: the ratio is
//! what intake costs over plain HTTP. Every request carries a fresh delivery
//! id (a Lua script numbers them per wrk thread) and one of 256 signed
//! `issues.labeled` bodies built from GitHub's fixture, so every accepted
//! delivery also queues a spec run (trust looked up on the local forge,
//! re-run cap checked); how fast those are processed is reported too.
//!
//! Run with `scripts/bench-intake.sh` (installs Debian's `wrk` if missing),
//! or `cargo bench -p kiln --bench intake` when `wrk` is on the PATH.

use std::error::Error;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use hmac::{Hmac, Mac};
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, Permission, RepoRef};
use kiln::intake::{self, ForgeResolver, Intake};
use kiln::store::{RunFilter, RunStore, SqliteOptions, SqliteStore, Synchronous};
use serde_json::{Value, json};
use sha2::Sha256;

type Res<T> = Result<T, Box<dyn Error>>;

const SECRET: &[u8] = b"kiln intake bench secret";
const BODIES: usize = 256;
const DURATION: &str = "5s";
/// One load shape of wrk.
struct Scenario {
    name: &'static str,
    threads: &'static str,
    connections: &'static str,
    /// Milliseconds each connection waits after a response before its next
    /// request (wrk's `delay()`): paces the load below saturation.
    delay_ms: Option<u32>,
}

/// Saturation (latency there is mostly queueing), light closed-loop load,
/// and the issue's operating point: 10 connections each sending one request
/// every 2 ms plus the response time, at most 5,000 requests/s in all.
const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "throughput",
        threads: "2",
        connections: "32",
        delay_ms: None,
    },
    Scenario {
        name: "latency",
        threads: "1",
        connections: "4",
        delay_ms: None,
    },
    Scenario {
        name: "paced, at most 5k/s",
        threads: "2",
        connections: "10",
        delay_ms: Some(2),
    },
];
const ROUNDS: usize = 2;

/// What wrk reported for one scenario.
#[derive(Debug, Default)]
struct WrkResult {
    requests: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn to_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_ms = to_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => r.p99_ms = to_ms(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(f64::NAN),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    r
}

fn sign(body: &[u8]) -> Res<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET)?;
    mac.update(body);
    Ok(format!(
        "sha256={}",
        hex::encode(mac.finalize().into_bytes())
    ))
}

/// A wrk script posting the signed bodies round-robin to `path`, each
/// request with a delivery id unique across threads and scenarios.
fn lua_script(
    path: &str,
    scenario: &str,
    bodies: &[(String, String)],
    delay_ms: Option<u32>,
) -> Res<String> {
    let mut s = String::new();
    if let Some(ms) = delay_ms {
        writeln!(s, "function delay()\n  return {ms}\nend")?;
    }
    writeln!(s, "local bodies = {{")?;
    for (body, _) in bodies {
        if body.contains("]==]") {
            return Err("a body contains the Lua long-string terminator".into());
        }
        writeln!(s, "[==[{body}]==],")?;
    }
    writeln!(s, "}}\nlocal sigs = {{")?;
    for (_, sig) in bodies {
        writeln!(s, "\"{sig}\",")?;
    }
    writeln!(
        s,
        r#"}}
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local n = 0
function request()
  n = n + 1
  local i = (n % #bodies) + 1
  local headers = {{}}
  headers["Content-Type"] = "application/json"
  headers["X-GitHub-Event"] = "issues"
  headers["X-GitHub-Delivery"] = "{scenario}-" .. tid .. "-" .. n
  headers["X-Hub-Signature-256"] = sigs[i]
  return wrk.format("POST", "{path}", headers, bodies[i])
end"#
    )?;
    Ok(s)
}

fn run_wrk(base: &str, script: &Path, scenario: &Scenario) -> Res<WrkResult> {
    let out = Command::new("wrk")
        .args([
            "-t",
            scenario.threads,
            "-c",
            scenario.connections,
            "-d",
            DURATION,
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(base)
        .output()?;
    if !out.status.success() {
        return Err(format!("wrk failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(parse_wrk(&String::from_utf8_lossy(&out.stdout)))
}

fn main() -> Res<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!(
            "intake bench SKIPPED: `wrk` is not installed (scripts/bench-intake.sh installs it)"
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let repo = RepoRef::parse("octo/bench")?;

    let (store, forge) = rt.block_on(async {
        // KILN_BENCH_SYNC=normal measures the store without an fsync per commit.
        let synchronous = match std::env::var("KILN_BENCH_SYNC").as_deref() {
            Ok("normal") => Synchronous::Normal,
            _ => Synchronous::Full,
        };
        println!("intake bench: store synchronous={synchronous:?}");
        let options = SqliteOptions {
            synchronous,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(dir.path().join("kiln.db"), options).await?;
        let forge =
            LocalForge::create(&dir.path().join("forge"), repo.clone(), "octo", None).await?;
        forge.set_permission("writer", Permission::Write).await?;
        Res::Ok((store, forge))
    })?;
    let forge: Arc<dyn Forge> = Arc::new(forge);
    let forges: ForgeResolver = {
        let repo = repo.clone();
        Arc::new(move |r: &RepoRef| (r == &repo).then(|| forge.clone()))
    };
    let config = kiln::config::KilnConfig::from_toml(
        "[intake]\nmax_runs_per_target = 1000000\nqueue_capacity = 1000000\n",
    )?
    .intake;

    let processed = Arc::new(AtomicU64::new(0));
    let (base, intake) = rt.block_on(async {
        let intake = Intake::start(Arc::new(store.clone()), forges, &config, SECRET)?;
        let mut outcomes = intake.outcomes();
        let counter = processed.clone();
        tokio::spawn(async move {
            loop {
                match outcomes.recv().await {
                    Ok(_) => counter.fetch_add(1, Ordering::Relaxed),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        counter.fetch_add(n, Ordering::Relaxed)
                    }
                    Err(_) => break,
                };
            }
        });
        let app = intake::router(intake.clone()).merge(Router::new().route(
            "/noop",
            post(|| async { (StatusCode::ACCEPTED, Json(json!({ "status": "accepted" }))) }),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Res::Ok((format!("http://{addr}"), intake))
    })?;

    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/fixtures/github/webhooks/issues/labeled.payload.json"
    );
    let template: Value = serde_json::from_slice(&std::fs::read(fixture)?)?;
    let mut bodies = Vec::with_capacity(BODIES);
    for i in 0..BODIES {
        let mut v = template.clone();
        v["issue"]["number"] = json!(i + 1);
        v["label"]["name"] = json!("ready-to-spec");
        v["sender"]["login"] = json!("writer");
        v["repository"]["full_name"] = json!("octo/bench");
        let body = serde_json::to_string(&v)?;
        let sig = sign(body.as_bytes())?;
        bodies.push((body, sig));
    }
    println!(
        "intake bench: wrk -d{DURATION} (throughput: -t2 -c32; latency: -t1 -c4; paced: -t2 -c10, 2 ms between a response and the next request), {} byte bodies, {ROUNDS} rounds",
        bodies[0].0.len()
    );

    let mut accepted_total = 0u64;
    let scenarios = (0..ROUNDS).flat_map(|r| SCENARIOS.iter().map(move |s| (r, s)));
    for (round, (rep, scenario)) in scenarios.enumerate() {
        println!("  [{}, round {}]", scenario.name, rep + 1);
        let noop = dir.path().join(format!("noop-{round}.lua"));
        std::fs::write(
            &noop,
            lua_script("/noop", &format!("noop{round}"), &bodies, scenario.delay_ms)?,
        )?;
        let b = run_wrk(&base, &noop, scenario)?;
        println!(
            "  baseline (unsigned no-op):      {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  non-2xx {}",
            b.rps, b.p50_ms, b.p99_ms, b.non_2xx
        );

        let hook = dir.path().join(format!("hook-{round}.lua"));
        std::fs::write(
            &hook,
            lua_script(
                intake::WEBHOOK_PATH,
                &format!("hook{round}"),
                &bodies,
                scenario.delay_ms,
            )?,
        )?;
        let before = processed.load(Ordering::Relaxed);
        let start = Instant::now();
        let w = run_wrk(&base, &hook, scenario)?;
        let accepted = w.requests.saturating_sub(w.non_2xx);
        // Wait for the processor to finish what was accepted.
        while processed.load(Ordering::Relaxed) < before + accepted {
            std::thread::sleep(Duration::from_millis(5));
        }
        let drained = start.elapsed().as_secs_f64();
        println!(
            "  webhook (sig + dedup + queue):  {:>8.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  non-2xx {}  \
             | {accepted} runs queued at {:.0}/s end to end",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.non_2xx,
            accepted as f64 / drained
        );
        println!(
            "  ratio webhook/baseline: throughput {:.2}x, p50 {:.2}x, p99 {:.2}x",
            w.rps / b.rps,
            w.p50_ms / b.p50_ms,
            w.p99_ms / b.p99_ms
        );
        if scenario.delay_ms.is_some() {
            println!(
                "  target p99 < 5 ms at {:.0} webhooks/s (issue: at 5k/s): {}",
                w.rps,
                if w.p99_ms < 5.0 { "met" } else { "MISSED" }
            );
        }
        accepted_total += accepted;
    }
    let runs = rt.block_on(async {
        store
            .list_runs(RunFilter {
                limit: Some(1),
                ..RunFilter::default()
            })
            .await
    })?;
    let last_id = runs.first().map(|r| r.id.0).unwrap_or(0);
    // wrk does not count requests still in flight when it stops, so the
    // store may hold a few more runs than wrk saw accepted.
    println!("  runs in the store: {last_id} (wrk counted {accepted_total} accepted)");
    drop(intake);
    Ok(())
}
