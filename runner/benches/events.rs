//! Events persisted and fanned out per second with 100 SSE watchers over
//! loopback: a producer records N events into a run's log through the
//! store's non-blocking sink (the path import calls use); each of 100
//! watchers follows `GET /runs/{id}/events` as SSE over real HTTP. The clock
//! stops when the last watcher has received event N (so every event was
//! committed to SQLite, published, serialized, redacted and parsed by all
//! 100 clients).
//!
//! Baseline, measured in the same run: the same N events (as `Arc`s) through
//! a bare tokio broadcast channel to 100 receiving tasks: the cost of
//! in-process fan-out with no persistence, HTTP or serialization.
//!
//! `cargo bench -p kiln --bench events` (release); `-- N` picks N (default 20000).
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use kiln::api::client::SseParser;
use kiln::api::{ApiState, router};
use kiln::config::Role;
use kiln::control::{ControlError, EffectDecision, Handback, RunControl};
use kiln::forge::RepoRef;
use kiln::policy::{Redactor, Trust};
use kiln::session::{EventKind, EventSink as _};
use kiln::store::{
    NewRun, RunState, RunStore, SqliteOptions, SqliteStore, StoredEvent, TokenScope, Trigger,
    TriggerKind,
};

const WATCHERS: usize = 100;

/// The benchmark only reads; no action reaches a run.
struct ReadOnly;

#[async_trait::async_trait]
impl RunControl for ReadOnly {
    async fn steer(&self, _: u64, _: String, _: String) -> Result<(), ControlError> {
        Err(ControlError::Conflict("benchmark: read only".into()))
    }
    async fn cancel(&self, _: u64, _: String) -> Result<(), ControlError> {
        Err(ControlError::Conflict("benchmark: read only".into()))
    }
    async fn decide(&self, _: u64, _: &str, _: EffectDecision) -> Result<(), ControlError> {
        Err(ControlError::Conflict("benchmark: read only".into()))
    }
    async fn handback(&self, _: u64) -> Result<Handback, ControlError> {
        Err(ControlError::NotFound("benchmark: read only".into()))
    }
    async fn attach(
        &self,
        _: u64,
        _: String,
        _: kiln::sandbox::ShellSpec,
    ) -> Result<kiln::control::Attached, ControlError> {
        Err(ControlError::Conflict("benchmark: read only".into()))
    }
    async fn resume(&self, _: u64, _: kiln::control::Resume) -> Result<(), ControlError> {
        Err(ControlError::Conflict("benchmark: read only".into()))
    }
}

async fn kiln_fanout(n: u64) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
            .await
            .expect("store"),
    );
    let token = store
        .create_token("bench", TokenScope::Viewer)
        .await
        .expect("token")
        .plaintext;
    let run = store
        .enqueue_run(NewRun {
            script: None,
            repo: RepoRef {
                owner: "local".into(),
                name: "bench".into(),
            },
            role: Role::Implementation,
            number: 1,
            trigger: Trigger {
                kind: TriggerKind::Manual,
                actor: "bench".into(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await
        .expect("run");
    store
        .transition(run, RunState::Queued, RunState::Preparing, None)
        .await
        .expect("preparing");
    store
        .transition(run, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    let redactor = Arc::new(Redactor::new(&[]).expect("redactor"));
    let state = ApiState::new(store.clone(), Arc::new(ReadOnly), redactor);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let mut watchers = Vec::new();
    let http = reqwest::Client::new();
    for _ in 0..WATCHERS {
        // A lean watcher: SSE framing and ids only, so the clients sharing
        // this machine's cores with the server take as little as they can.
        let response = http
            .get(format!("{url}/runs/{}/events", run.0))
            .bearer_auth(&token)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("feed");
        assert!(
            response.status().is_success(),
            "feed: {}",
            response.status()
        );
        let mut bytes = response.bytes_stream();
        watchers.push(tokio::spawn(async move {
            let mut parser = SseParser::default();
            let mut last = 0;
            while let Some(chunk) = bytes.next().await {
                for msg in parser.push(&chunk.expect("chunk")) {
                    let seq: u64 = msg.id.as_deref().and_then(|i| i.parse().ok()).expect("id");
                    assert_eq!(seq, last + 1, "events arrive in order, once");
                    last = seq;
                    if last == n {
                        return Instant::now();
                    }
                }
            }
            panic!("feed ended at {last} of {n}");
        }));
    }
    let sink = store.event_sink(run);
    let message = "exec: cargo test -- 42 passed; 0 failed (a typical line of output)";
    let start = Instant::now();
    for _ in 0..n {
        sink.record(EventKind::Progress, message.to_owned());
    }
    store.flush().await.expect("flush");
    let persisted = start.elapsed();
    let mut last = start;
    for w in watchers {
        last = last.max(w.await.expect("watcher"));
    }
    server.abort();
    (persisted, last - start)
}

async fn broadcast_baseline(n: u64) -> Duration {
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<StoredEvent>>(n as usize);
    let receivers: Vec<_> = (0..WATCHERS)
        .map(|_| {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                while let Ok(e) = rx.recv().await {
                    if e.seq == n {
                        break;
                    }
                }
                Instant::now()
            })
        })
        .collect();
    let start = Instant::now();
    for seq in 1..=n {
        let _ = tx.send(Arc::new(StoredEvent {
            run: kiln::store::RunId(1),
            seq,
            at_ms: 0,
            kind: serde_json::json!({"type": "progress"}),
            message: "exec: cargo test -- 42 passed; 0 failed (a typical line of output)".into(),
        }));
    }
    let mut last = start;
    for r in receivers {
        last = last.max(r.await.expect("receiver"));
    }
    last - start
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let base = broadcast_baseline(n).await;
        let (persisted, fanned) = kiln_fanout(n).await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!("events: {n}, SSE watchers: {WATCHERS}");
        println!(
            "baseline  broadcast channel, {WATCHERS} receivers: {:>10.0} events/s ({:?})",
            rate(base),
            base
        );
        println!(
            "kiln      persisted (committed to SQLite):        {:>10.0} events/s ({:?})",
            rate(persisted),
            persisted
        );
        println!(
            "kiln      persisted + fanned out to {WATCHERS} SSE:      {:>10.0} events/s ({:?})",
            rate(fanned),
            fanned
        );
        println!(
            "ratio     kiln SSE / baseline time: {:.1}x; target >= 20000 events/s: {}",
            fanned.as_secs_f64() / base.as_secs_f64(),
            if rate(fanned) >= 20_000.0 {
                "met"
            } else {
                "missed"
            }
        );
    });
}
