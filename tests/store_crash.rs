//! Crash safety of the SQLite store with a real `kill -9`: a child process
//! (this test binary, re-run with `KILN_CRASH_CHILD_DB` set) appends events
//! from several tasks and prints each seq once its commit is acknowledged;
//! the parent SIGKILLs it mid-stream, reopens the database and checks every
//! acknowledged event is there, in order, with no gap.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::support::test_name;
use kiln::config::Role;
use kiln::forge::RepoRef;
use kiln::policy::Trust;
use kiln::session::EventKind;
use kiln::store::{
    NewRun, RunId, RunStore, SqliteOptions, SqliteStore, Synchronous, Trigger, TriggerKind,
};

const CHILD_DB: &str = "KILN_CRASH_CHILD_DB";
const CHILD_SYNC: &str = "KILN_CRASH_CHILD_SYNC";
/// Acknowledged events the parent waits for before it kills the child.
const KILL_AFTER: usize = 3000;

fn options(sync: &str) -> SqliteOptions {
    SqliteOptions {
        synchronous: if sync == "normal" {
            Synchronous::Normal
        } else {
            Synchronous::Full
        },
        ..SqliteOptions::default()
    }
}

/// The child's part: a normal test that returns at once unless the parent
/// started this process as the writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(db) = std::env::var(CHILD_DB) else {
        return;
    };
    let sync = std::env::var(CHILD_SYNC).unwrap_or_default();
    let store = SqliteStore::open(&db, options(&sync))
        .await
        .expect("child open");
    let run = RunId(1);
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u64.. {
                let seq = store
                    .append_event(run, &EventKind::Progress, &format!("w{writer}:{i}"))
                    .await
                    .expect("append");
                let mut out = std::io::stdout().lock();
                writeln!(out, "committed {seq}").expect("stdout");
                out.flush().expect("flush");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

async fn crash_once(sync: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("kiln.db");
    {
        let store = SqliteStore::open(&db, options(sync)).await.expect("open");
        let run = store
            .enqueue_run(NewRun {
                script: None,
                repo: RepoRef::parse("octo/widgets").expect("repo"),
                role: Role::Implementation,
                number: 1,
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
        assert_eq!(run, RunId(1));
    }

    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args(["--exact", &test_name(module_path!(), "crash_child")])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .env(CHILD_SYNC, sync)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the writer child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acknowledged = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read child stdout");
        if let Some(seq) = line.strip_prefix("committed ") {
            acknowledged.push(seq.parse::<u64>().expect("seq"));
            if acknowledged.len() == KILL_AFTER {
                // Child::kill is SIGKILL on Unix: no destructor, no flush.
                child.kill().expect("kill -9 the child");
                break;
            }
        }
    }
    let status = child.wait().expect("wait for the child");
    assert!(
        !status.success(),
        "the child should have died from SIGKILL, got {status:?}"
    );
    assert_eq!(
        acknowledged.len(),
        KILL_AFTER,
        "the child ended before it acknowledged enough events"
    );

    let store = SqliteStore::open(&db, options(sync))
        .await
        .expect("the database should reopen after a kill -9");
    let stored: Vec<u64> = store
        .events_after(RunId(1), 0, usize::MAX)
        .await
        .expect("events")
        .iter()
        .map(|e| e.seq)
        .collect();
    let want: Vec<u64> = (1..=stored.len() as u64).collect();
    assert!(
        stored == want,
        "stored seqs must be 1..=n without gaps ({sync})"
    );
    let max_ack = acknowledged.iter().copied().max().unwrap_or(0);
    assert!(
        stored.len() as u64 >= max_ack,
        "acknowledged seq {max_ack} is missing after kill -9 ({sync}): only {} stored",
        stored.len()
    );
    // Appending carries on from the last committed seq.
    let next = store
        .append_event(RunId(1), &EventKind::Note, "after the crash")
        .await
        .expect("append after reopen");
    assert_eq!(next, stored.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_with_synchronous_full() {
    if std::env::var(CHILD_DB).is_ok() {
        return;
    }
    crash_once("full").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_with_synchronous_normal() {
    if std::env::var(CHILD_DB).is_ok() {
        return;
    }
    crash_once("normal").await;
}
