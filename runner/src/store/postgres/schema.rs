//! The PostgreSQL schema as numbered migrations, tracked in `kiln_schema`.
//!
//! As for SQLite (`store/schema.rs`): migration `n` takes the database from
//! version `n - 1` to `n` in one transaction with the version bump, a
//! released migration is never edited, and a database newer than this
//! binary is refused. Runners starting together migrate one at a time
//! (a transaction-scoped advisory lock), each re-reading the version under it.

use deadpool_postgres::GenericClient;

use super::pg;
use crate::store::StoreError;

/// One step per schema version, oldest first.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite store holds at its version 8, plus what
    // several runners need: each run's chain head (so an append reads one
    // row it locks), its lease, and the trigger fields queries filter on.
    "CREATE TABLE runs (
        id               BIGSERIAL PRIMARY KEY,
        repo_owner       TEXT    NOT NULL,
        repo_name        TEXT    NOT NULL,
        role             TEXT    NOT NULL,
        number           BIGINT  NOT NULL,
        trigger          TEXT    NOT NULL,
        delivery         TEXT,
        actor            TEXT    NOT NULL,
        state            TEXT    NOT NULL CHECK (state IN ('queued', 'preparing', 'running',
                             'awaiting-approval', 'succeeded', 'failed', 'cancelled', 'blocked')),
        reason           TEXT,
        attempts         INTEGER NOT NULL DEFAULT 0,
        created_ms       BIGINT  NOT NULL,
        updated_ms       BIGINT  NOT NULL,
        container_id     TEXT,
        branch           TEXT,
        script           TEXT,
        last_seq         BIGINT  NOT NULL DEFAULT 0,
        head_hash        BYTEA,
        lease_owner      TEXT,
        lease_epoch      BIGINT  NOT NULL DEFAULT 0,
        lease_expires_ms BIGINT
     );
     CREATE INDEX runs_queue     ON runs (id) WHERE state = 'queued';
     CREATE INDEX runs_by_state  ON runs (state, id);
     CREATE INDEX runs_by_target ON runs (repo_owner, repo_name, number, role);
     CREATE INDEX runs_by_actor  ON runs (repo_owner, repo_name, actor, created_ms);
     CREATE TABLE events (
        run_id  BIGINT NOT NULL REFERENCES runs (id),
        seq     BIGINT NOT NULL CHECK (seq > 0),
        at_ms   BIGINT NOT NULL,
        kind    TEXT   NOT NULL,
        message TEXT   NOT NULL,
        hash    BYTEA  NOT NULL,
        PRIMARY KEY (run_id, seq)
     );
     CREATE TABLE deliveries (
        id          TEXT   PRIMARY KEY,
        event       TEXT   NOT NULL,
        body_sha256 TEXT   NOT NULL,
        status      TEXT   NOT NULL,
        reason      TEXT,
        received_ms BIGINT NOT NULL,
        finished_ms BIGINT
     );
     CREATE TABLE approvals (
        run_id     BIGINT NOT NULL REFERENCES runs (id),
        effect_id  TEXT   NOT NULL,
        proposal   TEXT   NOT NULL,
        state      TEXT   NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
        decided_by TEXT,
        reason     TEXT,
        created_ms BIGINT NOT NULL,
        decided_ms BIGINT,
        PRIMARY KEY (run_id, effect_id)
     );
     CREATE TABLE api_tokens (
        id         BIGSERIAL PRIMARY KEY,
        name       TEXT   NOT NULL,
        scope      TEXT   NOT NULL CHECK (scope IN ('viewer', 'operator', 'admin')),
        sha256     TEXT   NOT NULL UNIQUE,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
     );
     CREATE TABLE run_seals (
        run_id     BIGINT PRIMARY KEY REFERENCES runs (id),
        seq        BIGINT NOT NULL,
        hash       BYTEA  NOT NULL,
        state      TEXT   NOT NULL,
        signature  BYTEA  NOT NULL,
        public_key TEXT   NOT NULL,
        signed_ms  BIGINT NOT NULL
     );
     CREATE TABLE schedules (
        name          TEXT   PRIMARY KEY,
        since_ms      BIGINT NOT NULL,
        last_due_ms   BIGINT,
        last_fired_ms BIGINT
     );",
    // 2: durable intake (SQLite's 9): a webhook delivery's body is committed
    // before it is acknowledged and kept until it is processed; a runner
    // claims it for processing, taken over once its lease expired.
    "ALTER TABLE deliveries ADD COLUMN body BYTEA;
     ALTER TABLE deliveries ADD COLUMN claimed_by TEXT;
     ALTER TABLE deliveries ADD COLUMN claimed_ms BIGINT;
     CREATE INDEX deliveries_pending ON deliveries (received_ms, id) WHERE status = 'received';",
    // 3: the effect log (SQLite's 10): each forge write's idempotency key
    // and intent, committed before the write is sent, and its outcome.
    "CREATE TABLE effect_log (
        key        TEXT    PRIMARY KEY,
        run_id     BIGINT  NOT NULL REFERENCES runs (id),
        effect_id  TEXT    NOT NULL,
        intent     TEXT    NOT NULL,
        state      TEXT    NOT NULL CHECK (state IN ('sending', 'applied', 'not-applied', 'failed')),
        outcome    TEXT,
        attempts   INTEGER NOT NULL,
        created_ms BIGINT  NOT NULL,
        updated_ms BIGINT  NOT NULL
     );
     CREATE INDEX effect_log_by_run ON effect_log (run_id, created_ms);
     CREATE INDEX effect_log_in_doubt ON effect_log (run_id) WHERE state = 'sending';",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key migrations hold ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// Brings the database to [`SCHEMA_VERSION`], or refuses a newer one.
/// `name` (the server and database) is only for messages.
pub async fn migrate(client: &mut deadpool_postgres::Client, name: &str) -> Result<(), StoreError> {
    migrate_to(client, name, SCHEMA_VERSION).await
}

/// Applies migrations up to `target`.
pub async fn migrate_to(
    client: &mut deadpool_postgres::Client,
    name: &str,
    target: i64,
) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kiln_schema (
                 one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                 version BIGINT  NOT NULL
             );
             INSERT INTO kiln_schema (one, version) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;",
        )
        .await
        .or_else(|e| {
            // Two runners creating the table at once: one loses the race on
            // the catalog; the table is there either way.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(pg(e))
            }
        })?;
    loop {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let found: i64 = tx
            .query_one("SELECT version FROM kiln_schema", &[])
            .await
            .map_err(pg)?
            .get(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: name.to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found >= target {
            return Ok(());
        }
        let version = found + 1;
        let Some(sql) = usize::try_from(found).ok().and_then(|i| MIGRATIONS.get(i)) else {
            return Ok(());
        };
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Database(format!(
                "{name}: migration to schema version {version} failed: {}",
                pg(e)
            ))
        })?;
        tx.execute("UPDATE kiln_schema SET version = $1", &[&version])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        tracing::info!(name, version, "store schema migrated");
    }
}

/// The database's schema version.
pub async fn version(client: &deadpool_postgres::Client) -> Result<i64, StoreError> {
    Ok(client
        .query_one("SELECT version FROM kiln_schema", &[])
        .await
        .map_err(pg)?
        .get(0))
}
