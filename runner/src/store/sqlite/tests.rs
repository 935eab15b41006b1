//! Tests of the SQLite store: the contract suite (`store::contract`) on a
//! real database file in a temp dir, and what only SQLite has (its
//! migrations from older files).

use super::*;
use crate::store::SCHEMA_VERSION;
use crate::store::contract::{contract_tests, new_run};

contract_tests!(sqlite);

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("kiln.db"), SqliteOptions::default())
        .await
        .expect("open store");
    (dir, store)
}

fn host_key(dir: &tempfile::TempDir) -> crate::ledger::PublicKey {
    crate::ledger::HostKey::load_or_create(dir.path())
        .expect("key")
        .public()
}

#[tokio::test]
async fn migrates_an_empty_database_and_refuses_a_newer_one() {
    let (dir, store) = store().await;
    assert_eq!(store.schema_version().await, Ok(SCHEMA_VERSION));
    let id = store
        .enqueue_run(new_run(1, Role::Spec))
        .await
        .expect("enqueue");
    drop(store);

    // Reopening a current database changes nothing.
    let path = dir.path().join("kiln.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("reopen");
    assert_eq!(store.get_run(id).await.map(|r| r.number), Ok(1));
    drop(store);

    let conn = Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .expect("bump version");
    drop(conn);
    let err = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect_err("a newer schema should be refused");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "got {err:?}"
    );
    assert!(
        err.to_string().contains("newer than this kiln supports"),
        "the message should say what is wrong: {err}"
    );
}

#[tokio::test]
async fn upgrades_an_old_database_step_by_step_keeping_its_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kiln.db");
    let mut conn = Connection::open(&path).expect("raw open");
    schema::migrate_to(&mut conn, "test", 1).expect("version 1");
    conn.execute(
        "INSERT INTO runs (repo_owner, repo_name, role, number, trigger, state, created_ms, updated_ms) \
         VALUES ('octo', 'widgets', 'triage', 7, ?1, 'queued', 1, 1)",
        [serde_json::to_string(&new_run(7, Role::Triage).trigger).expect("json")],
    )
    .expect("insert a v1 row");
    assert_eq!(schema::version(&conn), Ok(1));
    drop(conn);
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("upgrade");
    assert_eq!(store.schema_version().await, Ok(SCHEMA_VERSION));
    let run = store.get_run(RunId(1)).await.expect("the v1 run survives");
    assert_eq!((run.number, run.role), (7, Role::Triage));
    assert_eq!(
        store.append_event(run.id, &EventKind::Note, "x").await,
        Ok(1)
    );
}

#[tokio::test]
async fn the_ledger_migration_chains_old_events_and_leaves_them_unsigned() {
    use crate::ledger::Verdict;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kiln.db");
    let mut conn = Connection::open(&path).expect("raw open");
    schema::migrate_to(&mut conn, "test", 6).expect("version 6");
    for (id, state) in [(1, "succeeded"), (2, "running")] {
        conn.execute(
            "INSERT INTO runs (id, repo_owner, repo_name, role, number, trigger, state, \
             created_ms, updated_ms) VALUES (?1, 'octo', 'widgets', 'triage', 7, ?2, ?3, 1, 1)",
            params![
                id,
                serde_json::to_string(&new_run(7, Role::Triage).trigger).expect("json"),
                state
            ],
        )
        .expect("run");
        for seq in 1..=3 {
            conn.execute(
                "INSERT INTO events (run_id, seq, at_ms, kind, message) VALUES (?1, ?2, 5, ?3, 'm')",
                params![id, seq, r#"{"type":"note","z":1,"a":2}"#],
            )
            .expect("event");
        }
    }
    drop(conn);
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .expect("upgrade");
    let key = host_key(&dir);
    let old = store
        .transcript(RunId(1))
        .await
        .expect("transcript")
        .verify(&key);
    assert_eq!(old.events, 3, "{old}");
    assert!(
        matches!(old.verdict, Verdict::BadSeal { ref why } if why.contains("before the ledger")),
        "a finished run from before the ledger is chained but unsigned: {old}"
    );
    store
        .append_event(RunId(2), &EventKind::Note, "new")
        .await
        .expect("append continues the backfilled chain");
    let live = store
        .transcript(RunId(2))
        .await
        .expect("transcript")
        .verify(&key);
    assert_eq!(live.events, 4, "{live}");
    assert!(live.ok(), "{live}");
}
