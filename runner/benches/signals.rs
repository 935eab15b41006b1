//! Benchmark: collecting the outer loop's signals from the store for a
//! repository with 1,000 past runs and 5,000 events (issue 14, target < 1 s),
//! against a raw SELECT of the same rows measured in the same run.
//!
//! The runs are triage runs of one repository (the role one improvement run
//! reads), five events each, one in five a gate denial; a tenth of the runs
//! ended blocked. Timed: `StoreSignals::signals` for the last day (what
//! `signals.list-signals` costs the host), and, as the baseline, one
//! connection reading the same runs and all their events with two plain
//! SELECTs (no decoding into signals). Run with
//! `cargo bench -p kiln --bench signals`.

mod common;

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::config::Role;
use kiln::forge::RepoRef;
use kiln::imports::signals::SignalSource;
use kiln::plugin::types::SignalQuery;
use kiln::policy::Trust;
use kiln::session::EventKind;
use kiln::signals::StoreSignals;
use kiln::store::{NewRun, RunState, RunStore, SqliteOptions, SqliteStore, Trigger, TriggerKind};

type Res<T> = Result<T, Box<dyn Error>>;

const RUNS: u64 = 1_000;
const EVENTS_PER_RUN: u64 = 5;

async fn seed(store: &SqliteStore, repo: &RepoRef) -> Res<()> {
    for n in 1..=RUNS {
        let id = store
            .enqueue_run(NewRun {
                script: None,
                repo: repo.clone(),
                role: Role::Triage,
                number: n,
                trigger: Trigger {
                    kind: TriggerKind::IssueOpened,
                    actor: "reporter".into(),
                    actor_trust: Trust::Untrusted,
                    delivery: None,
                    instructions: None,
                },
            })
            .await?;
        store
            .transition(id, RunState::Queued, RunState::Preparing, None)
            .await?;
        store
            .transition(id, RunState::Preparing, RunState::Running, None)
            .await?;
        for e in 0..EVENTS_PER_RUN {
            if e == 0 {
                store
                    .append_event(
                        id,
                        &EventKind::Policy {
                            action: "forge.set-labels".into(),
                            verdict: "deny".into(),
                        },
                        "ready-to-spec is a human-only label",
                    )
                    .await?;
            } else {
                store
                    .append_event(
                        id,
                        &EventKind::Progress,
                        &format!("model turn {e}: read the issue, 1 tool call"),
                    )
                    .await?;
            }
        }
        let (end, reason) = if n % 10 == 0 {
            (RunState::Blocked, "the issue names no version")
        } else {
            (RunState::Succeeded, "labelled")
        };
        store
            .transition(id, RunState::Running, end, Some(reason.into()))
            .await?;
    }
    store.flush().await?;
    Ok(())
}

/// The same rows with two plain SELECTs on one connection.
fn raw_select(path: &std::path::Path) -> Res<usize> {
    let conn = rusqlite::Connection::open(path)?;
    let mut runs = conn.prepare(
        "SELECT id, state, reason, updated_ms FROM runs
         WHERE repo_owner = 'octo' AND repo_name = 'bench' AND role = 'triage'
         ORDER BY id DESC LIMIT 1000",
    )?;
    let ids: Vec<i64> = runs
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut events = conn
        .prepare("SELECT seq, at_ms, kind, message FROM events WHERE run_id = ?1 ORDER BY seq")?;
    let mut rows = 0;
    for id in ids {
        rows += events.query_map([id], |r| r.get::<_, String>(3))?.count();
    }
    Ok(rows)
}

fn main() -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kiln.db");
    let repo = RepoRef::parse("octo/bench")?;
    let store = rt.block_on(SqliteStore::open(&path, SqliteOptions::default()))?;
    rt.block_on(seed(&store, &repo))?;
    let store: Arc<dyn RunStore> = Arc::new(store);
    let signals = StoreSignals::new(store, repo);
    let query = SignalQuery {
        role: "triage".into(),
        since_hours: 24,
        limit: 1000,
    };
    let iters = common::iterations(21);
    let (mut collect, mut raw) = (Vec::<Duration>::new(), Vec::<Duration>::new());
    let mut found = 0;
    let mut rows = 0;
    for _ in 0..iters {
        let t = Instant::now();
        found = rt
            .block_on(signals.signals(&query))
            .map_err(|e| format!("signals: {e}"))?
            .len();
        collect.push(t.elapsed());
        let t = Instant::now();
        rows = raw_select(&path)?;
        raw.push(t.elapsed());
    }
    let (c, r) = (common::median(&mut collect), common::median(&mut raw));
    println!(
        "signals: {RUNS} runs, {} events; {found} signals collected, {rows} event rows selected; median of {iters}",
        RUNS * EVENTS_PER_RUN
    );
    println!(
        "  StoreSignals::signals {:>9.1} ms   raw SELECT {:>8.1} ms   ratio {:>5.1}x   target < 1000 ms: {}",
        common::ms(c),
        common::ms(r),
        c.as_secs_f64() / r.as_secs_f64(),
        if c < Duration::from_secs(1) {
            "met"
        } else {
            "missed"
        }
    );
    assert!(found > 0 && rows as u64 == RUNS * EVENTS_PER_RUN);
    Ok(())
}
