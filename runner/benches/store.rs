//! Benchmark: run events persisted by the SQLite store and fanned out live
//! to 100 watchers, against the in-memory event log the store replaces,
//! measured in the same run.
//!
//! A plain thread records events through `StoreEvents` (what import calls
//! do: `record` returns at once), 100 subscribers each read the whole log
//! through `subscribe` (backlog, then live). Reported: events per second
//! until everything is committed (`flush` returned), and until the slowest
//! watcher has seen the last event. Run with `cargo bench --bench store`.

use std::error::Error;
use std::time::Instant;

use futures_util::StreamExt;
use kiln::config::Role;
use kiln::forge::RepoRef;
use kiln::policy::Trust;
use kiln::session::{EventKind, EventSink, MemoryEvents};
use kiln::store::{
    NewRun, RunStore, SqliteOptions, SqliteStore, Synchronous, Trigger, TriggerKind,
};

type Res<T> = Result<T, Box<dyn Error>>;

const EVENTS: u64 = 100_000;
const WATCHERS: usize = 100;

fn message(i: u64) -> String {
    format!("model turn {i}: read src/lib.rs, 2 tool calls, 1834 tokens in, 212 out")
}

fn memory_baseline() -> f64 {
    let events = MemoryEvents::new();
    let start = Instant::now();
    for i in 0..EVENTS {
        events.record(EventKind::Progress, message(i));
    }
    EVENTS as f64 / start.elapsed().as_secs_f64()
}

/// The ledger's share of an append: canonical JSON of the kind and the
/// SHA-256 link, what the writer adds to each event (issue 19).
fn chain_only() -> f64 {
    use kiln::ledger::chain;
    let kind = serde_json::to_value(EventKind::Progress).unwrap_or_default();
    let mut prev = chain::GENESIS;
    let start = Instant::now();
    for i in 0..EVENTS {
        let text = chain::canonical_json(&kind);
        prev = chain::event_hash(1, i + 1, 0, &text, &message(i), &prev);
    }
    std::hint::black_box(prev);
    EVENTS as f64 / start.elapsed().as_secs_f64()
}

async fn store_run(sync: Synchronous) -> Res<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(
        dir.path().join("kiln.db"),
        SqliteOptions {
            synchronous: sync,
            ..SqliteOptions::default()
        },
    )
    .await?;
    let run = store
        .enqueue_run(NewRun {
            script: None,
            repo: RepoRef::parse("octo/bench")?,
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
        .await?;
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut events = store.subscribe(run, 0).await?;
        watchers.push(tokio::spawn(async move {
            let mut last = 0;
            while let Some(e) = events.next().await {
                match e {
                    Ok(e) => {
                        last = e.seq;
                        if last == EVENTS {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            (last, Instant::now())
        }));
    }
    let sink = store.event_sink(run);
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        for i in 0..EVENTS {
            sink.record(EventKind::Progress, message(i));
        }
    });
    writer.join().map_err(|_| "writer thread panicked")?;
    store.flush().await?;
    let persisted = start.elapsed().as_secs_f64();
    let mut slowest = start;
    for w in watchers {
        let (last, at) = w.await?;
        if last != EVENTS {
            return Err(format!("a watcher stopped at seq {last} of {EVENTS}").into());
        }
        slowest = slowest.max(at);
    }
    let fanned = (slowest - start).as_secs_f64();
    Ok((EVENTS as f64 / persisted, EVENTS as f64 / fanned))
}

fn main() -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("store events: {EVENTS} events of ~75 bytes, {WATCHERS} live watchers");
    for round in 1..=2 {
        let memory = memory_baseline();
        let chain = chain_only();
        let (full_p, full_f) = rt.block_on(store_run(Synchronous::Full))?;
        let (norm_p, norm_f) = rt.block_on(store_run(Synchronous::Normal))?;
        println!("round {round}");
        println!("  baseline MemoryEvents::record        {memory:>10.0} events/s");
        println!(
            "  ledger chain hash alone              {chain:>10.0} events/s ({:.1}% of a FULL append's time)",
            100.0 * full_p / chain
        );
        println!(
            "  store, synchronous=FULL:   persisted {full_p:>10.0} events/s, fanned out to all {full_f:>10.0} events/s ({:.1}% of baseline)",
            100.0 * full_f / memory
        );
        println!(
            "  store, synchronous=NORMAL: persisted {norm_p:>10.0} events/s, fanned out to all {norm_f:>10.0} events/s ({:.1}% of baseline)",
            100.0 * norm_f / memory
        );
    }
    Ok(())
}
