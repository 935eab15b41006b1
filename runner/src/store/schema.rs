//! The SQLite schema as numbered migrations, tracked in `PRAGMA user_version`.
//!
//! Migration `n` (1-based) takes a database from version `n - 1` to `n`;
//! each runs in its own transaction together with the version bump, so a
//! crash mid-upgrade leaves the previous version intact. A released
//! migration is never edited: changes are new steps at the end. A database
//! newer than [`SCHEMA_VERSION`] is refused rather than guessed at.

use rusqlite::Connection;

use super::StoreError;

/// One step per schema version, oldest first.
const MIGRATIONS: &[&str] = &[
    // 1: runs and their queue.
    "CREATE TABLE runs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        repo_owner   TEXT    NOT NULL,
        repo_name    TEXT    NOT NULL,
        role         TEXT    NOT NULL,
        number       INTEGER NOT NULL,
        trigger      TEXT    NOT NULL,
        state        TEXT    NOT NULL CHECK (state IN ('queued', 'preparing', 'running',
                         'awaiting-approval', 'succeeded', 'failed', 'cancelled', 'blocked')),
        reason       TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_ms   INTEGER NOT NULL,
        updated_ms   INTEGER NOT NULL,
        container_id TEXT,
        branch       TEXT
     );
     CREATE INDEX runs_by_state  ON runs (state, id);
     CREATE INDEX runs_by_target ON runs (repo_owner, repo_name, number, role);",
    // 2: the append-only event log, clustered by (run, seq).
    "CREATE TABLE events (
        run_id  INTEGER NOT NULL REFERENCES runs (id),
        seq     INTEGER NOT NULL CHECK (seq > 0),
        at_ms   INTEGER NOT NULL,
        kind    TEXT    NOT NULL,
        message TEXT    NOT NULL,
        PRIMARY KEY (run_id, seq)
     ) WITHOUT ROWID;",
    // 3: webhook deliveries, for replay protection.
    "CREATE TABLE deliveries (
        id          TEXT    PRIMARY KEY,
        event       TEXT    NOT NULL,
        body_sha256 TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        reason      TEXT,
        received_ms INTEGER NOT NULL,
        finished_ms INTEGER
     );",
    // 4: effects held for approval.
    "CREATE TABLE approvals (
        run_id     INTEGER NOT NULL REFERENCES runs (id),
        effect_id  TEXT    NOT NULL,
        proposal   TEXT    NOT NULL,
        state      TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
        decided_by TEXT,
        reason     TEXT,
        created_ms INTEGER NOT NULL,
        decided_ms INTEGER,
        PRIMARY KEY (run_id, effect_id)
     );",
    // 5: API tokens (hashes only).
    "CREATE TABLE api_tokens (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT    NOT NULL,
        scope      TEXT    NOT NULL CHECK (scope IN ('viewer', 'operator', 'admin')),
        sha256     TEXT    NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER
     );",
    // 6: the model script a run was queued with (`kiln run --queue --script`),
    // replayed instead of the runner's model.
    "ALTER TABLE runs ADD COLUMN script TEXT;",
    // 7: the ledger (see `crate::ledger`); its rows are backfilled by `backfill`.
    LEDGER,
    // 8: `[[schedules]]`: when each was first seen and the due time it last
    // fired for, so a restart never fires a due time twice.
    "CREATE TABLE schedules (
        name          TEXT    PRIMARY KEY,
        since_ms      INTEGER NOT NULL,
        last_due_ms   INTEGER,
        last_fired_ms INTEGER
     );",
    // 9: durable intake: a webhook delivery's body is committed before it is
    // acknowledged and kept until it is processed; a runner claims it for
    // processing (one claim at a time, taken over once its lease expired).
    "ALTER TABLE deliveries ADD COLUMN body BLOB;
     ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
     ALTER TABLE deliveries ADD COLUMN claimed_ms INTEGER;
     CREATE INDEX deliveries_pending ON deliveries (received_ms, id) WHERE status = 'received';",
];

/// The ledger's migration: each event's chain hash, and each finished run's
/// signed head. Found by content, not number, so renumbering at a merge
/// keeps its backfill.
const LEDGER: &str = "ALTER TABLE events ADD COLUMN hash BLOB;
     CREATE TABLE run_seals (
        run_id     INTEGER PRIMARY KEY REFERENCES runs (id),
        seq        INTEGER NOT NULL,
        hash       BLOB    NOT NULL,
        state      TEXT    NOT NULL,
        signature  BLOB    NOT NULL,
        public_key TEXT    NOT NULL,
        signed_ms  INTEGER NOT NULL
     );";

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database at `conn` to [`SCHEMA_VERSION`], or refuses a newer one.
/// `path` is only for the error message.
pub fn migrate(conn: &mut Connection, path: &str) -> Result<(), StoreError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Applies migrations up to `target` (tests stop early to build old databases).
pub(super) fn migrate_to(conn: &mut Connection, path: &str, target: i64) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for version in (found + 1)..=target {
        let Some(sql) = usize::try_from(version - 1)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
        else {
            break;
        };
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Re-check inside the write lock: another process may have migrated meanwhile.
        let now: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if now >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(|e| {
            StoreError::Database(format!(
                "{path}: migration to schema version {version} failed: {e}"
            ))
        })?;
        backfill(&tx, sql).map_err(|e| {
            StoreError::Database(format!(
                "{path}: migration to schema version {version} failed: {e}"
            ))
        })?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(path, version, "store schema migrated");
    }
    Ok(())
}

/// The data a migration's SQL cannot compute, in the same transaction.
fn backfill(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    if sql == LEDGER {
        chain_existing_events(conn)?;
    }
    Ok(())
}

/// Chains the events written before the ledger existed, run by run, as
/// the writer would have. They get no seal: no key signed them when they
/// were written, and signing now would vouch for whatever the file held at
/// upgrade time. `kiln runs verify` says so for a finished run that has none.
fn chain_existing_events(conn: &Connection) -> Result<(), StoreError> {
    use crate::ledger::chain;
    // Run by run, each read whole before it is written: no update under an open scan.
    let runs: Vec<i64> = conn
        .prepare("SELECT DISTINCT run_id FROM events ORDER BY run_id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut read = conn
        .prepare("SELECT seq, at_ms, kind, message FROM events WHERE run_id = ?1 ORDER BY seq")?;
    let mut update = conn.prepare("UPDATE events SET hash = ?1 WHERE run_id = ?2 AND seq = ?3")?;
    for run in runs {
        let events: Vec<(i64, i64, String, String)> = read
            .query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut prev = chain::GENESIS;
        for (seq, at_ms, kind, message) in events {
            let kind: serde_json::Value = serde_json::from_str(&kind).map_err(|e| {
                StoreError::Invalid(format!("stored event r{run}#{seq} kind is malformed: {e}"))
            })?;
            prev = chain::event_hash(
                u64::try_from(run).unwrap_or_default(),
                u64::try_from(seq).unwrap_or_default(),
                at_ms,
                &chain::canonical_json(&kind),
                &message,
                &prev,
            );
            update.execute(rusqlite::params![&prev[..], run, seq])?;
        }
    }
    Ok(())
}

/// The database's schema version.
pub(super) fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}
