//! Tests of the PostgreSQL store against a real server (the test process's
//! throwaway cluster, `store::testing`): the contract suite, and what only
//! a store shared by several runners has: its migrations, claims by two
//! runners, leases and fencing, and events and decisions across runners.

use std::collections::HashSet;

use futures_util::StreamExt;

use super::*;
use crate::session::EventSink;
use crate::store::contract::{Fixture, contract_tests, new_run};

contract_tests!(postgres);

#[tokio::test]
async fn migrates_an_empty_database_and_refuses_a_newer_one() {
    let mut f = Fixture::postgres().await;
    let id = f
        .store
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("enqueue");
    // Another runner opening the same database migrates nothing and sees the run.
    let other = f.open("runner-b").await;
    assert_eq!(other.get_run(id).await.map(|r| r.number), Ok(1));
    drop(other);
    f.raw(&format!(
        "UPDATE kiln_schema SET version = {}",
        PG_SCHEMA_VERSION + 1
    ))
    .await;
    let crate::store::contract::Backend::Postgres(config) = f.backend() else {
        unreachable!("a postgres fixture")
    };
    let err = PgStore::open((**config).clone(), &f.key_dir, PgOptions::new("runner-c"))
        .await
        .expect_err("a newer schema should be refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported, .. }
            if found == PG_SCHEMA_VERSION + 1 && supported == PG_SCHEMA_VERSION),
        "got {err:?}"
    );
    assert!(
        err.to_string().contains("newer than this kiln supports"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_on_one_database_never_claim_the_same_run() {
    let f = Fixture::postgres().await;
    let a = f.store.clone();
    let b = f.open("runner-b").await;
    const RUNS: u64 = 150;
    for n in 1..=RUNS {
        a.enqueue_run(new_run(n, Role::Triage))
            .await
            .expect("enqueue");
    }
    let mut workers = Vec::new();
    for store in [a.clone(), b.clone(), a.clone(), b.clone(), a, b] {
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(run) = store.claim_next_run().await.expect("claim") {
                let lease = store.lease(run.id).await.expect("lease").expect("held");
                mine.push((run.id, lease.runner));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for w in workers {
        for (id, runner) in w.await.expect("worker") {
            assert!(seen.insert(id), "run {id} was claimed twice");
            assert!(runner == "runner-a" || runner == "runner-b", "{runner}");
        }
    }
    assert_eq!(seen.len() as u64, RUNS, "every run should be claimed once");
}

#[tokio::test]
async fn an_expired_lease_hands_the_run_over_and_fences_the_old_holder() {
    let mut f = Fixture::postgres().await;
    let a = f.store.clone();
    let b = f.open("runner-b").await;
    let id = a.enqueue_run(new_run(3, Role::Triage)).await.expect("run");
    a.claim_next_run().await.expect("claim").expect("a run");
    a.transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    a.append_event(id, &EventKind::Note, "a works")
        .await
        .expect("append");
    let lease = a.lease(id).await.expect("lease").expect("held");
    assert_eq!((lease.runner.as_str(), lease.epoch), ("runner-a", 1));
    assert_eq!(a.renew_leases().await, Ok(vec![]), "a still holds its run");
    let policy = RecoveryPolicy {
        requeue: true,
        max_attempts: 3,
    };
    assert_eq!(
        b.recover_expired(policy).await,
        Ok(vec![]),
        "a live lease is not b's to recover"
    );

    // a stops renewing and its lease runs out.
    f.raw("UPDATE runs SET lease_expires_ms = 0").await;
    assert_eq!(
        b.recover_expired(policy).await,
        Ok(vec![Recovered {
            id,
            was: RunState::Running,
            now: RunState::Queued
        }])
    );
    let claimed = b.claim_next_run().await.expect("claim").expect("the run");
    assert_eq!((claimed.id, claimed.attempts), (id, 2));
    let lease = b.lease(id).await.expect("lease").expect("held");
    assert_eq!(lease.runner, "runner-b");
    assert_eq!(
        lease.epoch, 3,
        "the recovery and the new claim each bump it"
    );

    // a comes back: every write it makes to the run is refused.
    assert_eq!(a.renew_leases().await, Ok(vec![id]));
    let refused = a.append_event(id, &EventKind::Note, "a is late").await;
    assert!(
        matches!(&refused, Err(StoreError::LeaseLost { run, held: 1, now: 3, .. }) if *run == id),
        "{refused:?}"
    );
    let message = refused.expect_err("refused").to_string();
    assert!(message.contains("runner-a lost its lease"), "{message}");
    assert!(matches!(
        a.set_container(id, Some("stale".into())).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        a.hold_effect(id, "e1", serde_json::json!({})).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert!(matches!(
        a.transition(
            id,
            RunState::Preparing,
            RunState::Failed,
            Some("late".into())
        )
        .await,
        Err(StoreError::LeaseLost { .. })
    ));
    a.event_sink(id)
        .record(EventKind::Note, "a's sink is late".into());
    a.flush().await.expect("flush");

    // b carries on, and the log holds nothing a wrote after losing the run.
    b.transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("b runs it");
    assert_eq!(b.append_event(id, &EventKind::Note, "b works").await, Ok(3));
    let log: Vec<String> = b
        .events_after(id, 0, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(log[0], "a works");
    assert!(
        log[1].contains("runner runner-a lost while running; re-queued"),
        "{log:?}"
    );
    assert_eq!(log[2], "b works");
    assert_eq!(
        b.get_run(id).await.map(|r| r.container_id),
        Ok(None),
        "a's late container was not recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_one_runner_follows_a_run_written_by_another() {
    let f = Fixture::postgres().await;
    let writer = f.store.clone();
    let watcher = f.open("runner-b").await;
    let id = writer
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("run");
    const N: u64 = 3000;
    let sink = writer.event_sink(id);
    for i in 0..50 {
        sink.record(EventKind::Progress, format!("{i}"));
    }
    writer.flush().await.expect("flush");
    let early = watcher.subscribe(id, 0).await.expect("subscribe");
    let collect = |s: EventStream| {
        tokio::spawn(async move {
            s.take(N as usize)
                .map(|e| e.expect("event").seq)
                .collect::<Vec<u64>>()
                .await
        })
    };
    let early = collect(early);
    for i in 50..N {
        sink.record(EventKind::Progress, format!("{i}"));
        if i == N / 2 {
            writer.flush().await.expect("flush");
        }
    }
    let late = collect(watcher.subscribe(id, 0).await.expect("subscribe late"));
    writer.flush().await.expect("flush");
    let want: Vec<u64> = (1..=N).collect();
    for (name, got) in [
        ("early", early.await.expect("early")),
        ("late", late.await.expect("late")),
    ] {
        assert!(
            got == want,
            "{name} watcher on the other runner saw a gap, a duplicate or disorder"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_made_on_one_runner_wakes_the_run_waiting_on_another() {
    let f = Fixture::postgres().await;
    let a = f.store.clone();
    let b = f.open("runner-b").await;
    let id = a
        .enqueue_run(new_run(1, Role::Implementation))
        .await
        .expect("run");
    a.hold_effect(id, "e1", serde_json::json!({"kind": "comment"}))
        .await
        .expect("hold");
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.wait_for_decision(id, "e1").await })
    };
    b.decide_effect(id, "e1", Verdict::Approve, "alice", None)
        .await
        .expect("decide");
    let woke = waiter.await.expect("waiter").expect("decision");
    assert_eq!(
        (woke.state, woke.decided_by.as_deref()),
        (ApprovalState::Approved, Some("alice"))
    );
}

#[tokio::test]
async fn a_store_section_opens_the_server_with_the_password_from_its_secret() {
    let cluster = crate::store::testing::PgCluster::shared().expect("cluster");
    let db = cluster.database().await.expect("database");
    let dir = tempfile::tempdir().expect("temp dir");
    let pw = dir.path().join("db-password");
    std::fs::write(&pw, format!("{}\n", cluster.password)).expect("password file");
    let toml = format!(
        "[[secrets]]\nname = \"db\"\nkind = \"database-password\"\nsource = {{ file = {:?} }}\n\
         [store]\nurl = {:?}\npassword_secret = \"db\"\n",
        pw.display().to_string(),
        cluster.url(&db)
    );
    let config = crate::config::KilnConfig::from_toml(&toml).expect("config");
    let store = crate::store::open(&config, dir.path(), "runner-a")
        .await
        .expect("open from [store]");
    let id = store
        .enqueue_run(new_run(2, Role::Triage))
        .await
        .expect("enqueue");
    assert_eq!(store.get_run(id).await.map(|r| r.number), Ok(2));

    // A wrong password is refused by the server, and the error says where.
    std::fs::write(&pw, "not-the-password-x9").expect("password file");
    let Err(err) = crate::store::open(&config, dir.path(), "runner-a").await else {
        panic!("a wrong password should be refused");
    };
    let err = err.to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{}/{db}", cluster.port))
            && err.contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.contains("x9"), "the password leaked: {err}");
}
