//! The store's contract: one suite every [`RunStore`] backend passes.
//!
//! Each test is a function over a [`Fixture`] (a fresh, empty store of one
//! backend); [`contract_tests!`] turns the list into `#[tokio::test]`s for
//! a backend, so `store::sqlite::tests` and `store::postgres::tests` run
//! the same assertions against a SQLite file and a real PostgreSQL server.
//! What only one backend has (its migrations, its leases) is tested beside it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;

use super::*;
use crate::policy::Trust;
use crate::session::{EventKind, EventSink};

/// A fresh store of one backend, and what tests need to reach under it.
pub(crate) struct Fixture {
    /// The store under test.
    pub store: Arc<dyn RunStore>,
    /// Where its ledger host key lives.
    pub key_dir: PathBuf,
    backend: Backend,
    _dir: tempfile::TempDir,
}

/// Where a fixture's store keeps its data.
pub(crate) enum Backend {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(Box<tokio_postgres::Config>),
}

impl Fixture {
    /// A store on a new SQLite file.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kiln.db");
        let store = SqliteStore::open(&path, SqliteOptions::default())
            .await
            .expect("open store");
        Fixture {
            store: Arc::new(store),
            key_dir: dir.path().to_path_buf(),
            backend: Backend::Sqlite(path),
            _dir: dir,
        }
    }

    /// A store on a new database of the test process's PostgreSQL cluster.
    pub async fn postgres() -> Self {
        let cluster = testing::PgCluster::shared().expect("a PostgreSQL cluster for the tests");
        let db = cluster.database().await.expect("a test database");
        let config = cluster.config(&db);
        let dir = tempfile::tempdir().expect("temp dir");
        let store = PgStore::open(config.clone(), dir.path(), PgOptions::new("runner-a"))
            .await
            .expect("open store");
        Fixture {
            store: Arc::new(store),
            key_dir: dir.path().to_path_buf(),
            backend: Backend::Postgres(Box::new(config)),
            _dir: dir,
        }
    }

    /// Where the store keeps its data.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The ledger's public key.
    pub fn key(&self) -> crate::ledger::PublicKey {
        crate::ledger::HostKey::load_or_create(&self.key_dir)
            .expect("key")
            .public()
    }

    /// Another store on the same database, as a runner `runner` would open it.
    pub async fn open(&self, runner: &str) -> Arc<dyn RunStore> {
        match &self.backend {
            Backend::Sqlite(path) => Arc::new(
                SqliteStore::open(path, SqliteOptions::default())
                    .await
                    .expect("open store"),
            ),
            Backend::Postgres(config) => Arc::new(
                PgStore::open((**config).clone(), &self.key_dir, PgOptions::new(runner))
                    .await
                    .expect("open store"),
            ),
        }
    }

    /// Closes the store and opens it again (a runner restart); returns the new one.
    pub async fn reopen(&mut self) -> Arc<dyn RunStore> {
        // The old store's writer commits what it was given before it ends.
        self.store.flush().await.expect("flush");
        self.store = self.open("runner-a").await;
        self.store.clone()
    }

    /// Runs `sql` behind the store's back, as someone with the database would.
    pub async fn raw(&mut self, sql: &str) {
        match &self.backend {
            Backend::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("raw open");
                conn.execute_batch(sql).expect("raw sql");
            }
            Backend::Postgres(config) => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .expect("raw connect");
                let conn = tokio::spawn(connection);
                client.batch_execute(sql).await.expect("raw sql");
                drop(client);
                let _ = conn.await;
            }
        }
    }
}

/// The repository the contract's runs are on.
pub(crate) fn repo() -> RepoRef {
    RepoRef::parse("octo/widgets").expect("repo")
}

/// A run with a delivery id of its own (runs of one delivery are queued once).
pub(crate) fn new_run(number: u64, role: Role) -> NewRun {
    static DELIVERY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let delivery = DELIVERY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    NewRun {
        script: None,
        repo: repo(),
        role,
        number,
        trigger: Trigger {
            kind: TriggerKind::Label {
                label: "ready-to-spec".into(),
            },
            actor: "alice".into(),
            actor_trust: Trust::Trusted,
            delivery: Some(format!("d-{delivery}")),
            instructions: None,
        },
    }
}

async fn events_of(store: &dyn RunStore, run: RunId) -> Vec<StoredEvent> {
    store
        .events_after(run, 0, usize::MAX)
        .await
        .expect("events")
}

/// Takes a run through to `succeeded` with `n` notes on the way.
async fn finished_run(store: &dyn RunStore, n: u64) -> RunId {
    let id = store
        .enqueue_run(new_run(9, Role::Triage))
        .await
        .expect("enqueue");
    store.claim_next_run().await.expect("claim");
    store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    for i in 0..n {
        store
            .append_event(id, &EventKind::Note, &format!("note {i}"))
            .await
            .expect("append");
    }
    store
        .transition(id, RunState::Running, RunState::Succeeded, None)
        .await
        .expect("succeeded");
    id
}

/// Contract: `a_delivery_queues_a_role_on_a_target_once_however_often_it_is_processed`.
pub(crate) async fn a_delivery_queues_a_role_on_a_target_once_however_often_it_is_processed(
    f: Fixture,
) {
    let store = f.store.clone();
    let run = new_run(7, Role::Spec);
    let first = store
        .enqueue_run_capped(run.clone(), 5)
        .await
        .expect("enqueue");
    let again = store
        .enqueue_run_capped(run.clone(), 5)
        .await
        .expect("again");
    assert_eq!(first, again, "the second processing finds the first run");
    assert_eq!(store.count_runs(&repo(), 7, Role::Spec).await, Ok(1));
    // The same delivery may ask for another role, or the same role elsewhere.
    let review = NewRun {
        script: None,
        role: Role::Review,
        ..run.clone()
    };
    let other = store.enqueue_run_capped(review, 5).await.expect("review");
    assert_ne!(other, first);
    // A run without a delivery (queued by hand) is never merged with another.
    let manual = NewRun {
        script: None,
        trigger: Trigger {
            delivery: None,
            ..run.trigger.clone()
        },
        ..run
    };
    let a = store
        .enqueue_run_capped(manual.clone(), 5)
        .await
        .expect("manual");
    let b = store
        .enqueue_run_capped(manual, 5)
        .await
        .expect("manual again");
    assert_ne!(a, b);
}

/// Contract: `transitions_are_enforced`.
pub(crate) async fn transitions_are_enforced(f: Fixture) {
    let store = f.store.clone();
    let queued = new_run(3, Role::Implementation);
    let id = store.enqueue_run(queued.clone()).await.expect("enqueue");
    assert_eq!(id, RunId(1));
    let run = store.get_run(id).await.expect("get");
    assert_eq!((run.state, run.attempts), (RunState::Queued, 0));
    assert_eq!(run.trigger, queued.trigger);

    // Skipping preparing is illegal.
    let err = store
        .transition(id, RunState::Queued, RunState::Running, None)
        .await
        .expect_err("queued -> running should be refused");
    assert!(
        matches!(err, StoreError::IllegalTransition { .. }),
        "got {err:?}"
    );

    let claimed = store.claim_next_run().await.expect("claim").expect("a run");
    assert_eq!(
        (claimed.id, claimed.state, claimed.attempts),
        (id, RunState::Preparing, 1)
    );

    // A stale `from` is refused and names the actual state.
    let err = store
        .transition(id, RunState::Queued, RunState::Cancelled, None)
        .await
        .expect_err("stale from should be refused");
    assert!(
        err.to_string().contains("the run is preparing"),
        "got {err}"
    );

    let run = store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("preparing -> running");
    assert_eq!(run.state, RunState::Running);

    // Blocked and failed need a reason.
    for to in [RunState::Blocked, RunState::Failed] {
        for reason in [None, Some("  ".to_string())] {
            let err = store
                .transition(id, RunState::Running, to, reason)
                .await
                .expect_err("a reasonless block or failure should be refused");
            assert!(err.to_string().contains("must give a reason"), "got {err}");
        }
    }
    let run = store
        .transition(
            id,
            RunState::Running,
            RunState::Blocked,
            Some("re-run cap".into()),
        )
        .await
        .expect("running -> blocked");
    assert_eq!(
        (run.state, run.reason.as_deref()),
        (RunState::Blocked, Some("re-run cap"))
    );

    // Terminal is final.
    for to in RunState::ALL {
        let err = store
            .transition(id, RunState::Blocked, to, Some("r".into()))
            .await
            .expect_err("a terminal run should never move");
        assert!(
            matches!(err, StoreError::IllegalTransition { .. }),
            "got {err:?}"
        );
    }
    let err = store
        .transition(RunId(99), RunState::Queued, RunState::Preparing, None)
        .await
        .expect_err("unknown run");
    assert_eq!(err, StoreError::NoSuchRun(RunId(99)));

    store
        .set_container(id, Some("c0ffee".into()))
        .await
        .expect("container");
    store
        .set_branch(id, "kiln/issue-3".into())
        .await
        .expect("branch");
    let run = store.get_run(id).await.expect("get");
    assert_eq!(run.container_id.as_deref(), Some("c0ffee"));
    assert_eq!(run.branch.as_deref(), Some("kiln/issue-3"));
    assert_eq!(
        store.set_branch(RunId(42), "x".into()).await,
        Err(StoreError::NoSuchRun(RunId(42)))
    );
}

/// Contract: `concurrent_claimers_never_share_a_run`.
pub(crate) async fn concurrent_claimers_never_share_a_run(f: Fixture) {
    let store = f.store.clone();
    const RUNS: u64 = 200;
    for n in 1..=RUNS {
        store
            .enqueue_run(new_run(n, Role::Triage))
            .await
            .expect("enqueue");
    }
    let mut workers = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(run) = store.claim_next_run().await.expect("claim") {
                mine.push(run.id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for w in workers {
        for id in w.await.expect("worker") {
            assert!(seen.insert(id), "run {id} was claimed twice");
        }
    }
    assert_eq!(seen.len() as u64, RUNS, "every run should be claimed once");
    assert_eq!(store.claim_next_run().await, Ok(None));
}

/// Contract: `concurrent_appenders_get_gapless_ordered_seqs`.
pub(crate) async fn concurrent_appenders_get_gapless_ordered_seqs(f: Fixture) {
    let store = f.store.clone();
    let a = store
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("run a");
    let b = store
        .enqueue_run(new_run(2, Role::Spec))
        .await
        .expect("run b");
    const PER: usize = 300;
    let mut tasks = Vec::new();
    for writer in 0..4 {
        for run in [a, b] {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let sink = store.event_sink(run);
                for i in 0..PER {
                    let msg = format!("w{writer}:{i}");
                    if i % 2 == 0 {
                        sink.record(EventKind::Progress, msg);
                    } else {
                        store
                            .append_event(run, &EventKind::Note, &msg)
                            .await
                            .expect("append");
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("appender");
    }
    store.flush().await.expect("flush");
    for run in [a, b] {
        let events = store.events_after(run, 0, 100_000).await.expect("events");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=(4 * PER) as u64).collect::<Vec<_>>(),
            "seqs of {run}"
        );
        // Each appender's events keep its own order.
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for e in &events {
            let (w, i) = e.message.split_once(':').expect("w:i");
            let i: usize = i.parse().expect("i");
            if let Some(prev) = last.insert(w.to_string(), i) {
                assert!(
                    prev < i,
                    "{w} appended {prev} before {i} but they are out of order"
                );
            }
        }
    }
    let page = store.events_after(a, 10, 5).await.expect("page");
    assert_eq!(
        page.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    for e in &events_of(&*store, a).await {
        let note = e
            .message
            .split_once(':')
            .and_then(|(_, i)| i.parse::<usize>().ok())
            .map(|i| i % 2 == 1);
        let want = if note == Some(true) {
            "note"
        } else {
            "progress"
        };
        assert_eq!(
            e.kind,
            serde_json::json!({"type": want}),
            "kind of {}",
            e.message
        );
    }
}

/// Contract: `subscribers_see_every_event_once_while_appending`.
pub(crate) async fn subscribers_see_every_event_once_while_appending(f: Fixture) {
    let store = f.store.clone();
    let run = store
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("run");
    const N: u64 = 10_000;
    let sink = store.event_sink(run);
    // A few events before anyone watches: the backlog.
    for i in 0..100 {
        sink.record(EventKind::Progress, format!("{i}"));
    }
    let early = store.subscribe(run, 0).await.expect("subscribe early");
    let appender = {
        let sink = sink.clone();
        let store = store.clone();
        tokio::spawn(async move {
            for i in 100..N {
                sink.record(EventKind::Progress, format!("{i}"));
                if i == N / 2 {
                    // Let watchers join while the log grows.
                    store.flush().await.expect("flush");
                }
            }
        })
    };
    let mid = store.subscribe(run, 0).await.expect("subscribe mid");
    // A watcher that does not read while everything is appended falls
    // behind the channel and must catch up from the database.
    let lagging = store.subscribe(run, 0).await.expect("subscribe lagging");
    let collect = |s: EventStream| {
        tokio::spawn(async move {
            s.take(N as usize)
                .map(|e| e.expect("event").seq)
                .collect::<Vec<u64>>()
                .await
        })
    };
    let early = collect(early);
    let mid = collect(mid);
    appender.await.expect("appender");
    store.flush().await.expect("flush");
    let late = collect(store.subscribe(run, 0).await.expect("subscribe late"));
    let from_half = store
        .subscribe(run, N / 2)
        .await
        .expect("subscribe from half");
    let lagging = collect(lagging);
    let want: Vec<u64> = (1..=N).collect();
    for (name, got) in [
        ("early", early.await.expect("early")),
        ("mid", mid.await.expect("mid")),
        ("late", late.await.expect("late")),
        ("lagging", lagging.await.expect("lagging")),
    ] {
        assert_eq!(got.len(), want.len(), "{name} watcher count");
        assert!(
            got == want,
            "{name} watcher saw a gap, a duplicate or disorder"
        );
    }
    let half: Vec<u64> = from_half
        .take((N / 2) as usize)
        .map(|e| e.expect("e").seq)
        .collect()
        .await;
    assert_eq!(half, ((N / 2 + 1)..=N).collect::<Vec<_>>());
    assert_eq!(
        store.subscribe(RunId(77), 0).await.err(),
        Some(StoreError::NoSuchRun(RunId(77)))
    );
}

/// Contract: `events_for_a_missing_run_are_refused_not_panicked_on`.
pub(crate) async fn events_for_a_missing_run_are_refused_not_panicked_on(f: Fixture) {
    let store = f.store.clone();
    assert_eq!(
        store.append_event(RunId(5), &EventKind::Note, "x").await,
        Err(StoreError::NoSuchRun(RunId(5)))
    );
    store
        .event_sink(RunId(5))
        .record(EventKind::Note, "lost".into());
    // The failed append must not poison its batch neighbours.
    let run = store
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("run");
    let (bad, good) = tokio::join!(
        store.append_event(RunId(5), &EventKind::Note, "x"),
        store.append_event(run, &EventKind::Note, "y")
    );
    assert!(bad.is_err());
    assert_eq!(good, Ok(1));
    store.flush().await.expect("flush");
    assert_eq!(store.events_after(RunId(5), 0, 10).await, Ok(vec![]));
}

/// Contract: `deliveries_are_deduplicated`.
pub(crate) async fn deliveries_are_deduplicated(f: Fixture) {
    let store = f.store.clone();
    let id = "72d3162e-cc78-11e3-81ab-4c9367dc0958";
    assert_eq!(
        store.record_delivery(id, "issues", "ab").await,
        Ok(DeliveryRecord::New)
    );
    let again = store
        .record_delivery(id, "issues", "ab")
        .await
        .expect("again");
    assert!(
        matches!(
            again,
            DeliveryRecord::Duplicate {
                status: DeliveryStatus::Received,
                ..
            }
        ),
        "got {again:?}"
    );
    store
        .finish_delivery(id, DeliveryStatus::Ignored, Some("no trigger".into()))
        .await
        .expect("finish");
    let again = store
        .record_delivery(id, "push", "cd")
        .await
        .expect("replay");
    assert!(
        matches!(
            again,
            DeliveryRecord::Duplicate {
                status: DeliveryStatus::Ignored,
                ..
            }
        ),
        "got {again:?}"
    );
    let d = store.get_delivery(id).await.expect("get");
    assert_eq!(
        (d.event.as_str(), d.body_sha256.as_str()),
        ("issues", "ab"),
        "first write wins"
    );
    assert_eq!(d.reason.as_deref(), Some("no trigger"));
    for bad in ["", "a b", "x'; DROP TABLE runs; --", &"a".repeat(129)] {
        assert!(
            matches!(
                store.record_delivery(bad, "issues", "ab").await,
                Err(StoreError::Invalid(_))
            ),
            "{bad:?} should be refused"
        );
    }
    assert!(matches!(
        store
            .finish_delivery("unknown", DeliveryStatus::Queued, None)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Contract: `held_effects_are_decided_once_and_wake_the_run`.
pub(crate) async fn held_effects_are_decided_once_and_wake_the_run(f: Fixture) {
    let store = f.store.clone();
    let run = store
        .enqueue_run(new_run(1, Role::Implementation))
        .await
        .expect("run");
    let proposal = serde_json::json!({"kind": "comment", "number": 1, "body": "hi"});
    let held = store
        .hold_effect(run, "e1", proposal.clone())
        .await
        .expect("hold");
    assert_eq!(
        (held.state, &held.proposal),
        (ApprovalState::Pending, &proposal)
    );
    store
        .hold_effect(run, "e2", serde_json::json!({}))
        .await
        .expect("hold e2");
    assert_eq!(
        store.hold_effect(run, "e1", serde_json::json!({})).await,
        Err(StoreError::EffectAlreadyHeld {
            run,
            effect: "e1".into()
        })
    );
    assert_eq!(
        store
            .hold_effect(RunId(9), "e1", serde_json::json!({}))
            .await,
        Err(StoreError::NoSuchRun(RunId(9)))
    );
    let pending: Vec<String> = store
        .pending_effects(run)
        .await
        .expect("pending")
        .into_iter()
        .map(|a| a.effect_id)
        .collect();
    assert_eq!(pending, vec!["e1", "e2"]);

    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_decision(run, "e1").await })
    };
    let decided = store
        .decide_effect(run, "e1", Verdict::Approve, "alice", Some("fine".into()))
        .await
        .expect("decide");
    assert_eq!(decided.state, ApprovalState::Approved);
    let woke = waiter.await.expect("waiter").expect("decision");
    assert_eq!(
        (woke.state, woke.decided_by.as_deref()),
        (ApprovalState::Approved, Some("alice"))
    );

    let err = store
        .decide_effect(run, "e1", Verdict::Deny, "mallory", None)
        .await
        .expect_err("a second decision should be refused");
    assert!(
        err.to_string().contains("already approved by alice"),
        "the error should name the first decision: {err}"
    );
    assert_eq!(
        store.get_effect(run, "e1").await.map(|a| a.state),
        Ok(ApprovalState::Approved)
    );
    assert!(matches!(
        store
            .decide_effect(run, "nope", Verdict::Deny, "bob", None)
            .await,
        Err(StoreError::NoSuchEffect { .. })
    ));
    assert!(matches!(
        store
            .decide_effect(run, "e2", Verdict::Deny, " ", None)
            .await,
        Err(StoreError::Invalid(_))
    ));
    // A decision already made is returned at once.
    store
        .decide_effect(run, "e2", Verdict::Deny, "bob", None)
        .await
        .expect("deny");
    assert_eq!(
        store.wait_for_decision(run, "e2").await.map(|a| a.state),
        Ok(ApprovalState::Denied)
    );
    assert_eq!(store.pending_effects(run).await, Ok(vec![]));
}

/// Contract: `tokens_are_stored_as_hashes_and_revocable`.
pub(crate) async fn tokens_are_stored_as_hashes_and_revocable(f: Fixture) {
    let store = f.store.clone();
    let new = store
        .create_token("ci", TokenScope::Operator)
        .await
        .expect("create");
    assert!(new.plaintext.starts_with("kiln_") && new.plaintext.len() > 40);
    assert!(
        !format!("{new:?}").contains(&new.plaintext),
        "Debug must not show the plaintext"
    );
    let other = store
        .create_token("viewer", TokenScope::Viewer)
        .await
        .expect("create");
    assert_ne!(new.plaintext, other.plaintext);

    let found = store
        .token_by_hash(&crate::store::token_hash(&new.plaintext))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(
        (found.name.as_str(), found.scope, found.revoked_ms),
        ("ci", TokenScope::Operator, None)
    );
    assert_eq!(
        store
            .token_by_hash(&crate::store::token_hash("kiln_guess"))
            .await,
        Ok(None)
    );
    assert!(matches!(
        store.token_by_hash("zz").await,
        Err(StoreError::Invalid(_))
    ));

    let revoked = store.revoke_token(found.id).await.expect("revoke");
    let at = revoked.revoked_ms.expect("revoked");
    assert_eq!(
        store.revoke_token(found.id).await.map(|t| t.revoked_ms),
        Ok(Some(at))
    );
    assert!(matches!(
        store.revoke_token(999).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_tokens().await.map(|t| t.len()), Ok(2));
    assert!(TokenScope::Admin > TokenScope::Operator && TokenScope::Operator > TokenScope::Viewer);
    assert!(matches!(
        store.create_token(" ", TokenScope::Admin).await,
        Err(StoreError::Invalid(_))
    ));
}

/// Contract: `restart_recovery_fails_or_requeues_interrupted_runs`.
pub(crate) async fn restart_recovery_fails_or_requeues_interrupted_runs(f: Fixture) {
    let store = f.store.clone();
    let mut ids = Vec::new();
    for n in 1..=5 {
        ids.push(
            store
                .enqueue_run(new_run(n, Role::Implementation))
                .await
                .expect("run"),
        );
    }
    // r1 preparing, r2 running, r3 awaiting approval, r4 succeeded, r5 queued.
    for _ in 0..4 {
        store.claim_next_run().await.expect("claim");
    }
    for id in &ids[1..4] {
        store
            .transition(*id, RunState::Preparing, RunState::Running, None)
            .await
            .expect("run");
    }
    store
        .transition(ids[2], RunState::Running, RunState::AwaitingApproval, None)
        .await
        .expect("await");
    store
        .hold_effect(ids[2], "e1", serde_json::json!({"held": "a pull request"}))
        .await
        .expect("hold");
    store
        .transition(ids[3], RunState::Running, RunState::Succeeded, None)
        .await
        .expect("done");

    let recovered = store
        .recover_after_restart(RecoveryPolicy {
            requeue: true,
            max_attempts: 2,
        })
        .await
        .expect("recover");
    assert_eq!(
        recovered,
        vec![
            Recovered {
                id: ids[0],
                was: RunState::Preparing,
                now: RunState::Queued
            },
            Recovered {
                id: ids[1],
                was: RunState::Running,
                now: RunState::Queued
            },
        ]
    );
    // r3's worker had ended before the restart: it still waits for a human,
    // with its held effect, and its log has nothing about a restart.
    assert_eq!(
        store.get_run(ids[2]).await.map(|r| r.state),
        Ok(RunState::AwaitingApproval),
        "a run awaiting approval should survive a restart"
    );
    assert_eq!(
        store.pending_effects(ids[2]).await.map(|p| p.len()),
        Ok(1),
        "its held effect should still be pending"
    );
    assert_eq!(
        store.events_after(ids[2], 0, 10).await.map(|e| e.len()),
        Ok(0)
    );
    let ev = store.events_after(ids[1], 0, 10).await.expect("events");
    assert_eq!(ev.len(), 1);
    assert!(
        ev[0]
            .message
            .contains("runner restarted while running; re-queued"),
        "{}",
        ev[0].message
    );

    // Claimed a second time, interrupted again: attempts are used up, it fails.
    let again = store
        .claim_next_run()
        .await
        .expect("claim")
        .expect("r1 again");
    assert_eq!((again.id, again.attempts), (ids[0], 2));
    let recovered = store
        .recover_after_restart(RecoveryPolicy {
            requeue: true,
            max_attempts: 2,
        })
        .await
        .expect("recover");
    assert_eq!(
        recovered,
        vec![Recovered {
            id: ids[0],
            was: RunState::Preparing,
            now: RunState::Failed
        }]
    );
    let run = store.get_run(ids[0]).await.expect("get");
    assert_eq!(
        (run.state, run.reason.as_deref()),
        (RunState::Failed, Some("runner restarted"))
    );
    assert_eq!(
        store.get_run(ids[3]).await.map(|r| r.state),
        Ok(RunState::Succeeded)
    );
    assert_eq!(
        store.recover_after_restart(RecoveryPolicy::default()).await,
        Ok(vec![])
    );
}

/// Contract: `runs_are_listed_and_counted_by_target`.
pub(crate) async fn runs_are_listed_and_counted_by_target(f: Fixture) {
    let store = f.store.clone();
    for (n, role) in [
        (1, Role::Spec),
        (1, Role::Spec),
        (1, Role::Implementation),
        (2, Role::Spec),
    ] {
        store.enqueue_run(new_run(n, role)).await.expect("run");
    }
    let mut other = new_run(1, Role::Spec);
    other.repo = RepoRef::parse("octo/other").expect("repo");
    store.enqueue_run(other).await.expect("other repo");
    assert_eq!(store.count_runs(&repo(), 1, Role::Spec).await, Ok(2));
    assert_eq!(store.count_runs(&repo(), 1, Role::Review).await, Ok(0));

    let all = store.list_runs(RunFilter::default()).await.expect("list");
    assert_eq!(
        all.iter().map(|r| r.id.0).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    let spec_on_1 = store
        .list_runs(RunFilter {
            repo: Some(repo()),
            number: Some(1),
            role: Some(Role::Spec),
            ..RunFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        spec_on_1.iter().map(|r| r.id.0).collect::<Vec<_>>(),
        vec![2, 1]
    );
    store.claim_next_run().await.expect("claim");
    let page = store
        .list_runs(RunFilter {
            states: vec![RunState::Queued],
            before: Some(RunId(5)),
            limit: Some(2),
            ..RunFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(page.iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![4, 3]);
}

/// Contract: `the_rerun_cap_holds_under_concurrent_enqueues`.
pub(crate) async fn the_rerun_cap_holds_under_concurrent_enqueues(f: Fixture) {
    let store = f.store.clone();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.enqueue_run_capped(new_run(4, Role::Spec), 5).await
        }));
    }
    let mut queued = 0;
    for t in tasks {
        match t.await.expect("task").expect("enqueue") {
            Enqueued::Queued(_) => queued += 1,
            Enqueued::CapReached { existing } => assert_eq!(existing, 5),
            other => panic!("no actor limit was asked for: {other:?}"),
        }
    }
    assert_eq!(queued, 5, "exactly the cap should be queued");
    assert_eq!(store.count_runs(&repo(), 4, Role::Spec).await, Ok(5));
    // Another role or target is not affected.
    assert!(matches!(
        store.enqueue_run_capped(new_run(4, Role::Review), 5).await,
        Ok(Enqueued::Queued(_))
    ));
}

/// Contract: `only_a_finished_run_can_be_resumed_and_the_note_becomes_its_instructions`.
pub(crate) async fn only_a_finished_run_can_be_resumed_and_the_note_becomes_its_instructions(
    f: Fixture,
) {
    let store = f.store.clone();
    let id = store
        .enqueue_run(new_run(7, Role::Implementation))
        .await
        .expect("run");
    let refused = store.resume(id, "ana", Some("go on".into())).await;
    assert!(
        matches!(refused, Err(StoreError::IllegalTransition { .. })),
        "a queued run is not finished: {refused:?}"
    );
    store.claim_next_run().await.expect("claim");
    store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    store
        .transition(id, RunState::Running, RunState::Succeeded, None)
        .await
        .expect("done");
    let run = store
        .resume(id, "ana", Some("use the new helper".into()))
        .await
        .expect("resume");
    assert_eq!(run.state, RunState::Queued);
    assert_eq!(
        run.trigger.instructions.as_deref(),
        Some("use the new helper")
    );
    assert!(
        run.reason
            .as_deref()
            .unwrap_or("")
            .contains("resumed by ana")
    );
    let claimed = store
        .claim_next_run()
        .await
        .expect("claim")
        .expect("queued");
    assert_eq!(claimed.id, id, "a resumed run is claimed again");
    let events = store.events_after(id, 0, 10).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("resumed by ana")
                && e.message.contains("use the new helper")),
        "the resume is in the run's log: {events:?}"
    );
}

/// Contract: `a_finished_run_is_chained_and_signed_and_an_edit_names_its_event`.
pub(crate) async fn a_finished_run_is_chained_and_signed_and_an_edit_names_its_event(
    mut f: Fixture,
) {
    use crate::ledger::Verdict;
    let store = f.store.clone();
    let id = finished_run(&*store, 5).await;
    let key = f.key();
    let v = store.transcript(id).await.expect("transcript").verify(&key);
    assert_eq!(v.verdict, Verdict::Signed { seq: 5 }, "{v}");

    // An UPDATE behind the store's back, as someone with the file would.
    f.raw(&format!(
        "UPDATE events SET message = 'nothing to see' WHERE run_id = {} AND seq = 3",
        id.0
    ))
    .await;
    let v = store.transcript(id).await.expect("transcript").verify(&key);
    assert!(
        matches!(v.verdict, Verdict::Broken { seq: 3, .. }),
        "the edited event should be named: {v}"
    );
    // Deleting the seal of a finished run is noticed too.
    f.raw(&format!(
        "UPDATE events SET message = 'note 2' WHERE run_id = {} AND seq = 3",
        id.0
    ))
    .await;
    f.raw("DELETE FROM run_seals").await;
    let v = store.transcript(id).await.expect("transcript").verify(&key);
    assert!(matches!(v.verdict, Verdict::BadSeal { .. }), "{v}");
}

/// Contract: `a_run_in_progress_verifies_so_far_and_a_resumed_run_keeps_its_old_seal`.
pub(crate) async fn a_run_in_progress_verifies_so_far_and_a_resumed_run_keeps_its_old_seal(
    mut f: Fixture,
) {
    use crate::ledger::Verdict;
    let store = f.store.clone();
    let key = f.key();
    let id = finished_run(&*store, 2).await;
    store.resume(id, "alice", None).await.expect("resume");
    store
        .append_event(id, &EventKind::Note, "more")
        .await
        .expect("append");
    let v = store.transcript(id).await.expect("transcript").verify(&key);
    assert_eq!(
        v.verdict,
        Verdict::InProgress {
            signed_through: Some(2)
        },
        "{v}"
    );
    // Events through the sink (the hot path) chain the same way, and a
    // store opened again picks the chain up where it was.
    let sink = store.event_sink(id);
    sink.record(EventKind::Note, "through the sink".into());
    store.flush().await.expect("flush");
    drop(sink);
    drop(store);
    let store = f.reopen().await;
    store.claim_next_run().await.expect("claim");
    store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    store
        .append_event(id, &EventKind::Note, "after a restart")
        .await
        .expect("append");
    store
        .transition(id, RunState::Running, RunState::Failed, Some("boom".into()))
        .await
        .expect("failed");
    let t = store.transcript(id).await.expect("transcript");
    let v = t.verify(&key);
    assert_eq!(v.verdict, Verdict::Signed { seq: 6 }, "{v}");
    assert_eq!(t.seal.expect("sealed").state, "failed");
}

/// Contract: `the_actor_limit_counts_the_actors_runs_on_the_repository_atomically`.
pub(crate) async fn the_actor_limit_counts_the_actors_runs_on_the_repository_atomically(
    f: Fixture,
) {
    let store = f.store.clone();
    let limit = Some(crate::store::ActorLimit {
        max: 3,
        window_ms: 3_600_000,
    });
    let mut tasks = Vec::new();
    for n in 1..=8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue_run_limited(new_run(n, Role::Triage), 5, limit)
                .await
        }));
    }
    let (mut queued, mut limited) = (0, 0);
    for t in tasks {
        match t.await.expect("task").expect("enqueue") {
            Enqueued::Queued(_) => queued += 1,
            Enqueued::ActorLimited { runs, retry_at_ms } => {
                assert_eq!(runs, 3);
                assert!(retry_at_ms > now_ms() + 3_500_000, "about an hour from now");
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((queued, limited), (3, 5), "exactly the limit is queued");
    // Another actor is counted apart.
    let mut bob = new_run(9, Role::Triage);
    bob.trigger.actor = "bob".into();
    assert!(matches!(
        store.enqueue_run_limited(bob, 5, limit).await,
        Ok(Enqueued::Queued(_))
    ));
}

fn claim(runner: &str, since_ms: i64, lease_ms: i64) -> DeliveryClaim {
    DeliveryClaim {
        runner: runner.into(),
        since_ms,
        lease_ms,
    }
}

/// Contract: `accepted_deliveries_survive_a_reopen_and_are_claimed_once_until_finished`.
pub(crate) async fn accepted_deliveries_survive_a_reopen_and_are_claimed_once_until_finished(
    mut f: Fixture,
) {
    let store = f.store.clone();
    let hour = 3_600_000;
    let a = claim("runner-a", 0, hour);
    assert_eq!(
        store.claim_delivery(&a).await,
        Ok(None),
        "nothing accepted yet"
    );
    // A local-forge style record (no body) is never handed out.
    store
        .record_delivery("local-1", "issues", "ab")
        .await
        .expect("record");
    for (id, body) in [("d-1", b"{\"n\":1}".as_slice()), ("d-2", b"{\"n\":2}")] {
        assert_eq!(
            store.accept_delivery(id, "issues", body).await,
            Ok(DeliveryRecord::New)
        );
    }
    // A redelivery is a duplicate and changes nothing.
    assert!(matches!(
        store.accept_delivery("d-1", "push", b"other").await,
        Ok(DeliveryRecord::Duplicate {
            status: DeliveryStatus::Received,
            ..
        })
    ));
    let sha = store.get_delivery("d-1").await.expect("d-1").body_sha256;
    assert_eq!(
        sha,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"{\"n\":1}"))
    );

    // The process dies: what was accepted is still there after a reopen.
    drop(store);
    let store = f.reopen().await;
    let first = store.claim_delivery(&a).await.expect("claim").expect("d-1");
    assert_eq!(
        (
            first.id.as_str(),
            first.event.as_str(),
            first.body.as_slice()
        ),
        ("d-1", "issues", b"{\"n\":1}".as_slice()),
        "oldest first, body as received"
    );
    let second = store.claim_delivery(&a).await.expect("claim").expect("d-2");
    assert_eq!(second.id, "d-2");
    assert_eq!(store.claim_delivery(&a).await, Ok(None), "both are claimed");
    // Another runner cannot take them while the lease holds.
    let b = claim("runner-b", 0, hour);
    assert_eq!(store.claim_delivery(&b).await, Ok(None));
    // A restarted runner-a (claims made before it started are its dead
    // predecessor's) takes them over at once.
    let restarted = claim("runner-a", i64::MAX, hour);
    let again = store.claim_delivery(&restarted).await.expect("claim");
    assert_eq!(again.map(|d| d.id).as_deref(), Some("d-1"));
    // Once processed, a delivery is never handed out again and its body is gone.
    store
        .finish_delivery("d-1", DeliveryStatus::Queued, None)
        .await
        .expect("finish");
    store
        .finish_delivery("d-2", DeliveryStatus::Ignored, Some("no trigger".into()))
        .await
        .expect("finish");
    assert_eq!(store.claim_delivery(&restarted).await, Ok(None));
    let stale = claim("runner-b", 0, 1);
    assert_eq!(store.claim_delivery(&stale).await, Ok(None));
    assert_eq!(
        store.get_delivery("d-1").await.expect("d-1").status,
        DeliveryStatus::Queued
    );
    assert!(matches!(
        store.claim_delivery(&claim("", 0, hour)).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.claim_delivery(&claim("x", 0, 0)).await,
        Err(StoreError::Invalid(_))
    ));
}

/// Contract: `an_expired_claim_is_taken_over_by_another_runner`.
pub(crate) async fn an_expired_claim_is_taken_over_by_another_runner(f: Fixture) {
    let store = f.store.clone();
    store
        .accept_delivery("d-1", "issues", b"{}")
        .await
        .expect("accept");
    let short = claim("runner-a", 0, 1);
    assert!(store.claim_delivery(&short).await.expect("claim").is_some());
    // Wait until the 1 ms lease has certainly passed (a precondition, not
    // a measurement).
    let claimed_at = now_ms();
    while now_ms() <= claimed_at + 1 {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let other = claim("runner-b", 0, 1);
    let taken = store.claim_delivery(&other).await.expect("claim");
    assert_eq!(taken.map(|d| d.id).as_deref(), Some("d-1"));
}

/// Contract: `runners_sharing_a_store_each_get_different_deliveries`.
pub(crate) async fn runners_sharing_a_store_each_get_different_deliveries(f: Fixture) {
    let one = f.store.clone();
    // A second runner process: its own store handle (writer, readers) on the same file.
    let two = f.open("runner-b").await;
    const DELIVERIES: usize = 200;
    for n in 0..DELIVERIES {
        one.accept_delivery(&format!("d-{n}"), "issues", b"{}")
            .await
            .expect("accept");
    }
    let mut claimers = Vec::new();
    for (i, store) in [one.clone(), two.clone()]
        .into_iter()
        .cycle()
        .take(8)
        .enumerate()
    {
        claimers.push(tokio::spawn(async move {
            let me = claim(&format!("runner-{}", i % 2), 0, 3_600_000);
            let mut mine = Vec::new();
            while let Some(d) = store.claim_delivery(&me).await.expect("claim") {
                store
                    .finish_delivery(&d.id, DeliveryStatus::Ignored, Some("test".into()))
                    .await
                    .expect("finish");
                mine.push(d.id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for c in claimers {
        for id in c.await.expect("claimer") {
            assert!(seen.insert(id.clone()), "delivery {id} was processed twice");
        }
    }
    assert_eq!(
        seen.len(),
        DELIVERIES,
        "every delivery should be processed once"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A forge write is armed once per key, never again once applied, and a
/// key belongs to one run.
pub(crate) async fn a_write_is_armed_once_and_an_applied_one_never_again(f: Fixture) {
    let store = &f.store;
    let run = store
        .enqueue_run(new_run(1, Role::Triage))
        .await
        .expect("enqueue");
    let intent = serde_json::json!({"proposal": {"kind": "comment"}});
    // Fresh: armed for sending, nothing earlier.
    assert_eq!(
        store
            .begin_effect(run, "e1", "r1.e1.aa", intent.clone())
            .await,
        Ok(None)
    );
    let in_doubt = store.effects_in_doubt().await.expect("in doubt");
    assert_eq!(
        in_doubt.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["r1.e1.aa"]
    );
    assert_eq!(in_doubt[0].state, EffectLogState::Sending);
    // The same key again while it is in doubt: unchanged, the caller looks first.
    let again = store
        .begin_effect(run, "e1", "r1.e1.aa", intent.clone())
        .await
        .expect("again")
        .expect("earlier");
    assert_eq!((again.state, again.attempts), (EffectLogState::Sending, 1));
    // Not applied: armed again, one more attempt.
    store
        .finish_effect(
            "r1.e1.aa",
            EffectOutcome::NotApplied {
                why: "the runner stopped".into(),
            },
        )
        .await
        .expect("finish");
    assert!(store.effects_in_doubt().await.expect("none").is_empty());
    let earlier = store
        .begin_effect(run, "e1", "r1.e1.aa", intent.clone())
        .await
        .expect("re-arm")
        .expect("earlier");
    assert_eq!(earlier.state, EffectLogState::NotApplied);
    // Applied: never armed again.
    let done = store
        .finish_effect(
            "r1.e1.aa",
            EffectOutcome::Applied {
                at: Some("#1 comment 7".into()),
            },
        )
        .await
        .expect("applied");
    assert_eq!(
        (done.state, done.attempts, done.outcome.as_deref()),
        (EffectLogState::Applied, 2, Some("#1 comment 7"))
    );
    let applied = store
        .begin_effect(run, "e1", "r1.e1.aa", intent.clone())
        .await
        .expect("begin")
        .expect("earlier");
    assert_eq!(applied.state, EffectLogState::Applied);
    assert_eq!(
        store.effect_log(run).await.expect("log")[0].state,
        EffectLogState::Applied,
        "an applied write stays applied"
    );
    // A failure is recorded with its error, and may be tried again.
    store
        .begin_effect(run, "e2", "r1.e2.bb", intent.clone())
        .await
        .expect("e2");
    let failed = store
        .finish_effect(
            "r1.e2.bb",
            EffectOutcome::Failed {
                error: "422 Validation Failed".into(),
            },
        )
        .await
        .expect("failed");
    assert_eq!(failed.outcome.as_deref(), Some("422 Validation Failed"));
    assert_eq!(
        store
            .effect_log(run)
            .await
            .expect("log")
            .iter()
            .map(|e| (e.effect_id.as_str(), e.state))
            .collect::<Vec<_>>(),
        [
            ("e1", EffectLogState::Applied),
            ("e2", EffectLogState::Failed)
        ]
    );
    // Keys belong to one run; unknown runs and keys are refused.
    let other = store
        .enqueue_run(new_run(2, Role::Triage))
        .await
        .expect("enqueue");
    assert!(matches!(
        store
            .begin_effect(other, "e1", "r1.e1.aa", intent.clone())
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        store
            .begin_effect(RunId(99), "e1", "r99.e1", intent.clone())
            .await,
        Err(StoreError::NoSuchRun(RunId(99)))
    );
    assert!(matches!(
        store
            .finish_effect("nope", EffectOutcome::Applied { at: None })
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Generates the contract's `#[tokio::test]`s for a backend: `$backend` is
/// the [`Fixture`] constructor (`sqlite`, `postgres`).
macro_rules! contract_tests {
    ($backend:ident) => {
        #[tokio::test]
        async fn a_delivery_queues_a_role_on_a_target_once_however_often_it_is_processed() {
            $crate::store::contract::a_delivery_queues_a_role_on_a_target_once_however_often_it_is_processed($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn transitions_are_enforced() {
            $crate::store::contract::transitions_are_enforced($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_claimers_never_share_a_run() {
            $crate::store::contract::concurrent_claimers_never_share_a_run($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_appenders_get_gapless_ordered_seqs() {
            $crate::store::contract::concurrent_appenders_get_gapless_ordered_seqs($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn subscribers_see_every_event_once_while_appending() {
            $crate::store::contract::subscribers_see_every_event_once_while_appending($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn events_for_a_missing_run_are_refused_not_panicked_on() {
            $crate::store::contract::events_for_a_missing_run_are_refused_not_panicked_on($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn deliveries_are_deduplicated() {
            $crate::store::contract::deliveries_are_deduplicated($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn held_effects_are_decided_once_and_wake_the_run() {
            $crate::store::contract::held_effects_are_decided_once_and_wake_the_run($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn tokens_are_stored_as_hashes_and_revocable() {
            $crate::store::contract::tokens_are_stored_as_hashes_and_revocable($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn restart_recovery_fails_or_requeues_interrupted_runs() {
            $crate::store::contract::restart_recovery_fails_or_requeues_interrupted_runs($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn runs_are_listed_and_counted_by_target() {
            $crate::store::contract::runs_are_listed_and_counted_by_target($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn the_rerun_cap_holds_under_concurrent_enqueues() {
            $crate::store::contract::the_rerun_cap_holds_under_concurrent_enqueues($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn only_a_finished_run_can_be_resumed_and_the_note_becomes_its_instructions() {
            $crate::store::contract::only_a_finished_run_can_be_resumed_and_the_note_becomes_its_instructions($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn a_finished_run_is_chained_and_signed_and_an_edit_names_its_event() {
            $crate::store::contract::a_finished_run_is_chained_and_signed_and_an_edit_names_its_event($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn a_run_in_progress_verifies_so_far_and_a_resumed_run_keeps_its_old_seal() {
            $crate::store::contract::a_run_in_progress_verifies_so_far_and_a_resumed_run_keeps_its_old_seal($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn the_actor_limit_counts_the_actors_runs_on_the_repository_atomically() {
            $crate::store::contract::the_actor_limit_counts_the_actors_runs_on_the_repository_atomically($crate::store::contract::Fixture::$backend().await).await
        }
        #[tokio::test]
        async fn accepted_deliveries_survive_a_reopen_and_are_claimed_once_until_finished() {
            $crate::store::contract::accepted_deliveries_survive_a_reopen_and_are_claimed_once_until_finished($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn an_expired_claim_is_taken_over_by_another_runner() {
            $crate::store::contract::an_expired_claim_is_taken_over_by_another_runner($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn runners_sharing_a_store_each_get_different_deliveries() {
            $crate::store::contract::runners_sharing_a_store_each_get_different_deliveries($crate::store::contract::Fixture::$backend().await).await
        }

        #[tokio::test]
        async fn a_write_is_armed_once_and_an_applied_one_never_again() {
            $crate::store::contract::a_write_is_armed_once_and_an_applied_one_never_again($crate::store::contract::Fixture::$backend().await).await
        }
    };
}
pub(crate) use contract_tests;
