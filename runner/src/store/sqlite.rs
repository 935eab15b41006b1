//! [`SqliteStore`]: the embedded [`RunStore`] on one SQLite file.
//!
//! - One writer thread owns the only write connection. Calls hand it a job
//!   over a channel; it runs every job waiting in the channel inside one
//!   `BEGIN IMMEDIATE … COMMIT` (group commit), then answers each caller and
//!   publishes the committed events. One fsync covers a whole batch, which
//!   is what makes thousands of events per second cheap.
//! - Each job except an event append runs under its own savepoint, so one
//!   job's error (an illegal transition) never undoes its batch neighbours.
//! - Reads use a small pool of read-only connections on `spawn_blocking`
//!   threads; WAL lets them run beside the writer.
//! - `synchronous = FULL` by default: a commit the store has acknowledged
//!   (a delivery marked seen, an approval, a run queued) survives power loss,
//!   not just a crash of the process. Group commit pays one fsync per batch,
//!   not per call. [`Synchronous::Normal`] trades that for latency.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use tokio::sync::{oneshot, watch};

use super::codec;
use super::fanout::{self, Backlog, Hub, Pages};
use super::schema;
use super::sink::{EventQueue, StoreEvents};
use super::{
    AcceptedDelivery, ActorLimit, ApiToken, Approval, ApprovalState, Delivery, DeliveryClaim,
    DeliveryRecord, DeliveryStatus, Enqueued, EventStream, NewRun, NewToken, Recovered,
    RecoveryPolicy, RepoRef, Role, Run, RunFilter, RunId, RunState, RunStore, ScheduleRecord,
    StoreError, StoredEvent, TokenScope, Trigger, Verdict,
};
use crate::ledger::transcript::{self, RunHeader, Seal, Transcript, TranscriptEvent};
use crate::ledger::{HostKey, chain};
use crate::session::EventKind;

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL on every commit: survives power loss. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: survives a crash of the process, and may
    /// lose the last commits on power loss.
    Normal,
}

/// Tuning for [`SqliteStore::open`].
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Durability of commits (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// Idle read connections kept (default 8).
    pub read_pool: usize,
    /// Most jobs committed in one transaction (default 4096).
    pub max_batch: usize,
    /// How long to wait for another process's lock (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            read_pool: 8,
            max_batch: 4096,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

const RUN_COLUMNS: &str = "id, repo_owner, repo_name, role, number, trigger, state, reason, \
                           attempts, created_ms, updated_ms, container_id, branch, script";
const APPROVAL_COLUMNS: &str =
    "run_id, effect_id, proposal, state, decided_by, reason, created_ms, decided_ms";
const TOKEN_COLUMNS: &str = "id, name, scope, sha256, created_ms, revoked_ms";
const DELIVERY_COLUMNS: &str = "id, event, body_sha256, status, reason, received_ms, finished_ms";

/// The end of a run's chain as the writer last wrote it.
#[derive(Debug, Clone, Copy)]
struct Head {
    /// The `seq` the next event gets.
    next_seq: u64,
    /// The hash of the last event ([`chain::GENESIS`] before the first).
    hash: chain::EventHash,
}

/// What the writer thread keeps between jobs.
struct WriterState {
    /// Each run's chain head, so an append needs no read: loaded once per
    /// run (after a start, or after a rollback forgot it).
    heads: HashMap<RunId, Head>,
    /// Events appended in the open transaction, published after commit.
    appended: Vec<StoredEvent>,
    /// Runs whose log or state changed in the open transaction: a finished
    /// one is (re)signed before the commit.
    touched: HashSet<RunId>,
    /// Signs finished runs' heads.
    key: Arc<HostKey>,
}

/// What a job is given: the open transaction, or the reason there is none.
enum Ctx<'a> {
    Ready(&'a Connection, &'a mut WriterState),
    Failed(&'a StoreError),
}

/// Runs after the batch's commit (with its error, if it failed).
type Completion = Box<dyn FnOnce(Option<&StoreError>) + Send>;
type Job = Box<dyn for<'a> FnOnce(Ctx<'a>) -> Option<Completion> + Send>;

/// The writer's inbox; also the queue behind every [`StoreEvents`].
struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs.send(job).map_err(|_| StoreError::Closed)
    }
}

impl EventQueue for Writer {
    fn enqueue(&self, run: RunId, kind: serde_json::Value, message: String) {
        let job: Job = Box::new(move |ctx| match ctx {
            Ctx::Ready(conn, st) => match append(conn, st, run, &kind, message) {
                Ok(_) => Some(Box::new(move |commit: Option<&StoreError>| {
                    if let Some(e) = commit {
                        tracing::error!(%run, error = %e, "run event lost: commit failed");
                    }
                })),
                Err(e) => {
                    tracing::error!(%run, error = %e, "run event not stored");
                    None
                }
            },
            Ctx::Failed(e) => {
                tracing::error!(%run, error = %e, "run event lost: no transaction");
                None
            }
        });
        if self.send(job).is_err() {
            tracing::error!(%run, "run event lost: the store is closed");
        }
    }
}

struct Inner {
    path: PathBuf,
    writer: Arc<Writer>,
    readers: Mutex<Vec<Connection>>,
    read_pool: usize,
    busy_timeout: Duration,
    hub: Arc<Hub>,
    /// Backlog pages shared by watchers catching up.
    pages: Arc<Pages>,
    /// Bumped after every committed decision; waiters re-check on change.
    decisions: watch::Sender<u64>,
}

/// The SQLite [`RunStore`]. Cheap to clone; the writer thread ends when the
/// last clone and the last [`StoreEvents`] are dropped, after committing
/// what was queued.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn to_i64(what: &str, n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Invalid(format!("{what} {n} is too large")))
}

fn to_u64(what: &str, n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Invalid(format!("stored {what} {n} is negative")))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Invalid(format!("stored {what} is malformed: {e}")))
}

fn open_writer(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path)
        .map_err(|e| StoreError::Database(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(options.busy_timeout)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Database(format!(
            "{}: cannot switch to WAL (journal mode is {mode})",
            path.display()
        )));
    }
    let sync = match options.synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    schema::migrate(&mut conn, &path.display().to_string())?;
    Ok(conn)
}

fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Job>,
    hub: Arc<Hub>,
    max_batch: usize,
    key: Arc<HostKey>,
) {
    let mut state = WriterState {
        heads: HashMap::new(),
        appended: Vec::new(),
        touched: HashSet::new(),
        key,
    };
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let e = StoreError::from(e);
            tracing::error!(error = %e, "store: cannot begin a transaction");
            for job in batch {
                if let Some(done) = job(Ctx::Failed(&e)) {
                    done(Some(&e));
                }
            }
            continue;
        }
        let done: Vec<Completion> = batch
            .into_iter()
            .filter_map(|job| job(Ctx::Ready(&conn, &mut state)))
            .collect();
        seal_finished(&conn, &mut state);
        let commit = conn.execute_batch("COMMIT").map_err(StoreError::from).err();
        if let Some(e) = &commit {
            tracing::error!(error = %e, "store: commit failed; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            state.heads.clear();
            state.appended.clear();
        }
        hub.publish(state.appended.drain(..));
        for d in done {
            d(commit.as_ref());
        }
    }
}

/// Runs `f` under a savepoint, undoing its writes (and its appended events)
/// if it fails.
fn in_savepoint<T>(
    conn: &Connection,
    st: &mut WriterState,
    f: impl FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job")?;
    let mark = st.appended.len();
    let result = f(conn, st);
    if result.is_err() {
        conn.execute_batch("ROLLBACK TO job")?;
        for undone in st.appended.drain(mark..) {
            st.heads.remove(&undone.run);
        }
    }
    conn.execute_batch("RELEASE job")?;
    result
}

/// Appends one event inside the writer's transaction.
fn append(
    conn: &Connection,
    st: &mut WriterState,
    run: RunId,
    kind: &serde_json::Value,
    message: String,
) -> Result<u64, StoreError> {
    let head = head(conn, st, run)?;
    let seq = head.next_seq;
    let at_ms = now_ms();
    // Stored exactly as hashed: the canonical text.
    let kind_text = chain::canonical_json(kind);
    let hash = chain::event_hash(run.0, seq, at_ms, &kind_text, &message, &head.hash);
    let inserted = conn
        .prepare_cached(
            "INSERT INTO events (run_id, seq, at_ms, kind, message, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            to_i64("run id", run.0)?,
            to_i64("seq", seq)?,
            at_ms,
            kind_text,
            message,
            &hash[..]
        ]);
    match inserted {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            return Err(StoreError::NoSuchRun(run));
        }
        Err(e) => return Err(e.into()),
    }
    st.heads.insert(
        run,
        Head {
            next_seq: seq + 1,
            hash,
        },
    );
    st.touched.insert(run);
    st.appended.push(StoredEvent {
        run,
        seq,
        at_ms,
        kind: kind.clone(),
        message,
    });
    Ok(seq)
}

/// The run's chain head: from memory, else from its last stored event.
fn head(conn: &Connection, st: &mut WriterState, run: RunId) -> Result<Head, StoreError> {
    if let Some(h) = st.heads.get(&run) {
        return Ok(*h);
    }
    let last: Option<(i64, Option<Vec<u8>>)> = conn
        .prepare_cached("SELECT seq, hash FROM events WHERE run_id = ?1 ORDER BY seq DESC LIMIT 1")?
        .query_row([to_i64("run id", run.0)?], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let head = match last {
        None => Head {
            next_seq: 1,
            hash: chain::GENESIS,
        },
        Some((seq, hash)) => Head {
            next_seq: to_u64("seq", seq)? + 1,
            hash: hash.and_then(|h| h.try_into().ok()).ok_or_else(|| {
                StoreError::Invalid(format!("stored event {run}#{seq} has no chain hash"))
            })?,
        },
    };
    st.heads.insert(run, head);
    Ok(head)
}

/// Signs the head of every run touched in the open transaction that is
/// now finished, so a run's seal always covers its last event. A failure
/// is logged and leaves the old seal (verify then reports the unsigned
/// tail); it never fails the batch.
fn seal_finished(conn: &Connection, st: &mut WriterState) {
    let touched: Vec<RunId> = st.touched.drain().collect();
    for run in touched {
        if let Err(e) = seal(conn, st, run) {
            tracing::error!(%run, error = %e, "ledger: cannot sign the run's head");
        }
    }
}

fn seal(conn: &Connection, st: &mut WriterState, run: RunId) -> Result<(), StoreError> {
    let Some((owner, name, role, number, state)): Option<(String, String, String, i64, String)> =
        conn.prepare_cached(
            "SELECT repo_owner, repo_name, role, number, state FROM runs WHERE id = ?1",
        )?
        .query_row([to_i64("run id", run.0)?], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?
    else {
        return Ok(());
    };
    if !state.parse::<RunState>()?.is_terminal() {
        return Ok(());
    }
    let head = head(conn, st, run)?;
    let seq = head.next_seq - 1;
    let message = transcript::seal_message(
        run.0,
        &format!("{owner}/{name}"),
        &role,
        to_u64("number", number)?,
        &state,
        seq,
        &head.hash,
    );
    let signature = st.key.sign(&message);
    conn.prepare_cached(
        "INSERT INTO run_seals (run_id, seq, hash, state, signature, public_key, signed_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (run_id) DO UPDATE SET \
         seq = excluded.seq, hash = excluded.hash, state = excluded.state, \
         signature = excluded.signature, public_key = excluded.public_key, \
         signed_ms = excluded.signed_ms",
    )?
    .execute(params![
        to_i64("run id", run.0)?,
        to_i64("seq", seq)?,
        &head.hash[..],
        state,
        &signature[..],
        st.key.public().to_string(),
        now_ms()
    ])?;
    Ok(())
}

/// A run's events with their chain, and its seal.
fn read_transcript(conn: &Connection, run: RunId) -> Result<Transcript, StoreError> {
    let r = get_run(conn, run)?;
    let events = query_all(
        conn,
        "SELECT seq, at_ms, kind, message, hash FROM events WHERE run_id = ?1 ORDER BY seq",
        [to_i64("run id", run.0)?],
        |row| {
            let kind: String = row.get(2)?;
            let hash: Option<Vec<u8>> = row.get(4)?;
            Ok(TranscriptEvent {
                seq: to_u64("seq", row.get(0)?)?,
                at_ms: row.get(1)?,
                // A kind edited into something that is not JSON is kept as
                // its text, so verification names the event instead of failing.
                kind: serde_json::from_str(&kind).unwrap_or(serde_json::Value::String(kind)),
                message: row.get(3)?,
                prev: String::new(),
                hash: hash.map(hex::encode).unwrap_or_default(),
            })
        },
    )?;
    let mut events = events;
    let mut prev = hex::encode(chain::GENESIS);
    for e in &mut events {
        e.prev = std::mem::replace(&mut prev, e.hash.clone());
    }
    let seal = query_one(
        conn,
        "SELECT seq, hash, state, signature, public_key, signed_ms FROM run_seals \
         WHERE run_id = ?1",
        [to_i64("run id", run.0)?],
        |row| {
            Ok(Seal {
                seq: to_u64("seq", row.get(0)?)?,
                hash: hex::encode(row.get::<_, Vec<u8>>(1)?),
                state: row.get(2)?,
                signature: hex::encode(row.get::<_, Vec<u8>>(3)?),
                public_key: row.get(4)?,
                signed_ms: row.get(5)?,
            })
        },
    )?;
    Ok(Transcript {
        format: transcript::FORMAT.into(),
        run: RunHeader {
            id: r.id.0,
            repo: r.repo.to_string(),
            role: r.role.as_str().to_string(),
            number: r.number,
            state: r.state.as_str().to_string(),
            finished: r.state.is_terminal(),
        },
        events,
        seal,
    })
}

fn run_from_row(row: &Row<'_>) -> Result<Run, StoreError> {
    let role: String = row.get(3)?;
    let state: String = row.get(6)?;
    let trigger: String = row.get(5)?;
    Ok(Run {
        id: RunId(to_u64("run id", row.get(0)?)?),
        repo: RepoRef {
            owner: row.get(1)?,
            name: row.get(2)?,
        },
        role: codec::role::parse(&role)
            .ok_or_else(|| StoreError::Invalid(format!("stored role {role:?} is unknown")))?,
        number: to_u64("number", row.get(4)?)?,
        trigger: json::<Trigger>("trigger", &trigger)?,
        state: state.parse()?,
        reason: row.get(7)?,
        attempts: u32::try_from(row.get::<_, i64>(8)?)
            .map_err(|_| StoreError::Invalid("stored attempts out of range".into()))?,
        created_ms: row.get(9)?,
        updated_ms: row.get(10)?,
        container_id: row.get(11)?,
        branch: row.get(12)?,
        script: row.get(13)?,
    })
}

fn approval_from_row(row: &Row<'_>) -> Result<Approval, StoreError> {
    let proposal: String = row.get(2)?;
    let state: String = row.get(3)?;
    Ok(Approval {
        run: RunId(to_u64("run id", row.get(0)?)?),
        effect_id: row.get(1)?,
        proposal: json("proposal", &proposal)?,
        state: state.parse()?,
        decided_by: row.get(4)?,
        reason: row.get(5)?,
        created_ms: row.get(6)?,
        decided_ms: row.get(7)?,
    })
}

fn token_from_row(row: &Row<'_>) -> Result<ApiToken, StoreError> {
    let scope: String = row.get(2)?;
    Ok(ApiToken {
        id: to_u64("token id", row.get(0)?)?,
        name: row.get(1)?,
        scope: scope.parse()?,
        sha256: row.get(3)?,
        created_ms: row.get(4)?,
        revoked_ms: row.get(5)?,
    })
}

fn delivery_from_row(row: &Row<'_>) -> Result<Delivery, StoreError> {
    let status: String = row.get(3)?;
    Ok(Delivery {
        id: row.get(0)?,
        event: row.get(1)?,
        body_sha256: row.get(2)?,
        status: status.parse()?,
        reason: row.get(4)?,
        received_ms: row.get(5)?,
        finished_ms: row.get(6)?,
    })
}

/// Collects every row of `sql` through `f`.
fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// The first row of `sql` through `f`, if any.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(f(row)?)),
        None => Ok(None),
    }
}

fn get_run(conn: &Connection, id: RunId) -> Result<Run, StoreError> {
    query_one(
        conn,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
        [to_i64("run id", id.0)?],
        run_from_row,
    )?
    .ok_or(StoreError::NoSuchRun(id))
}

fn count_runs(
    conn: &Connection,
    repo: &RepoRef,
    number: i64,
    role: Role,
) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM runs WHERE repo_owner = ?1 AND repo_name = ?2 \
             AND number = ?3 AND role = ?4",
        )?
        .query_row(params![repo.owner, repo.name, number, role.as_str()], |r| {
            r.get(0)
        })?)
}

fn get_effect(conn: &Connection, run: RunId, effect: &str) -> Result<Approval, StoreError> {
    query_one(
        conn,
        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = ?1 AND effect_id = ?2"),
        params![to_i64("run id", run.0)?, effect],
        approval_from_row,
    )?
    .ok_or_else(|| StoreError::NoSuchEffect {
        run,
        effect: effect.to_string(),
    })
}

fn events_after(
    conn: &Connection,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    query_all(
        conn,
        "SELECT seq, at_ms, kind, message FROM events \
         WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        params![
            to_i64("run id", run.0)?,
            to_i64("seq", after)?,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |row| {
            let kind: String = row.get(2)?;
            Ok(StoredEvent {
                run,
                seq: to_u64("seq", row.get(0)?)?,
                at_ms: row.get(1)?,
                kind: json("event kind", &kind)?,
                message: row.get(3)?,
            })
        },
    )
}

/// Inserts a delivery (`received`) unless its id was seen: `New`, or what
/// the first one became.
fn insert_delivery(
    conn: &Connection,
    id: &str,
    event: &str,
    sha: &str,
    body: Option<&[u8]>,
) -> Result<DeliveryRecord, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO deliveries (id, event, body_sha256, status, received_ms, body) \
             VALUES (?1, ?2, ?3, 'received', ?4, ?5) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![id, event, sha, now_ms(), body])?;
    if inserted == 1 {
        return Ok(DeliveryRecord::New);
    }
    let (first_seen_ms, status): (i64, String) = conn
        .prepare_cached("SELECT received_ms, status FROM deliveries WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(DeliveryRecord::Duplicate {
        first_seen_ms,
        status: status.parse()?,
    })
}

/// A delivery id as GitHub sends them (a GUID); anything else is refused
/// before it reaches the database or a log line.
fn check_delivery_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "delivery id must be 1-128 letters, digits, '-', '_' or '.'".into(),
        ))
    }
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store at `path`.
    /// Refuses a database whose schema is newer than this binary's.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, options))
            .await
            .map_err(|e| StoreError::Database(format!("open task failed: {e}")))?
    }

    /// [`SqliteStore::open`] for callers outside an async runtime (blocks).
    pub fn open_blocking(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let key =
            Arc::new(HostKey::load_or_create(dir).map_err(|e| StoreError::HostKey(e.to_string()))?);
        let conn = open_writer(path, &options)?;
        let hub = Arc::new(Hub::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_hub = hub.clone();
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("kiln-store-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_hub, max_batch, key))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Arc::new(Writer { jobs: tx }),
                readers: Mutex::new(Vec::new()),
                read_pool: options.read_pool,
                busy_timeout: options.busy_timeout,
                hub,
                pages: Arc::default(),
                decisions: watch::Sender::new(0),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The database's schema version (always [`super::SCHEMA_VERSION`] once open).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(schema::version).await
    }

    /// Runs `f` in the writer's transaction under a savepoint; answers once committed.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.submit(move |conn, st| in_savepoint(conn, st, f)).await
    }

    /// Runs `f` in the writer's transaction as it is (the caller decides
    /// whether it needs a savepoint); answers once committed.
    async fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut WriterState) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |ctx| match ctx {
            Ctx::Ready(conn, st) => {
                let result = f(conn, st);
                Some(Box::new(move |commit: Option<&StoreError>| {
                    let _ = tx.send(match commit {
                        Some(e) => Err(e.clone()),
                        None => result,
                    });
                }))
            }
            Ctx::Failed(e) => {
                let _ = tx.send(Err(e.clone()));
                None
            }
        });
        self.inner.writer.send(job)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let result = f(&conn);
            inner.put_reader(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        Ok(conn)
    }

    fn put_reader(&self, conn: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.read_pool {
            pool.push(conn);
        }
    }
}

fn require_reason(to: RunState, reason: &Option<String>) -> Result<(), StoreError> {
    if to.needs_reason() && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(StoreError::Invalid(format!(
            "a transition to {to} must give a reason"
        )));
    }
    Ok(())
}

const SCHEDULE_SELECT: &str = "SELECT name, since_ms, last_due_ms, last_fired_ms FROM schedules";

fn schedule_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        name: r.get(0)?,
        since_ms: r.get(1)?,
        last_due_ms: r.get(2)?,
        last_fired_ms: r.get(3)?,
    })
}

#[async_trait::async_trait]
impl RunStore for SqliteStore {
    async fn enqueue_run(&self, run: NewRun) -> Result<RunId, StoreError> {
        match self.enqueue_run_capped(run, u64::MAX).await? {
            Enqueued::Queued(id) => Ok(id),
            Enqueued::CapReached { existing } => Err(StoreError::Invalid(format!(
                "{existing} runs exist for this target already"
            ))),
            // No actor limit was asked for.
            Enqueued::ActorLimited { runs, .. } => Err(StoreError::Invalid(format!(
                "{runs} runs of this actor in the window already"
            ))),
        }
    }

    async fn enqueue_run_limited(
        &self,
        run: NewRun,
        max_per_target: u64,
        per_actor: Option<ActorLimit>,
    ) -> Result<Enqueued, StoreError> {
        // Number 0 is the repository as a whole: only the outer loop works there.
        if run.number == 0 && run.role != Role::Improve {
            return Err(StoreError::Invalid("issue or pull request number 0".into()));
        }
        let number = to_i64("number", run.number)?;
        let trigger = serde_json::to_string(&run.trigger)
            .map_err(|e| StoreError::Invalid(format!("trigger: {e}")))?;
        self.write(move |conn, _| {
            // A delivery processed again (its processing was interrupted
            // before its outcome was recorded) finds the run it queued the
            // first time: each delivery queues a run at most once.
            if let Some(delivery) = &run.trigger.delivery {
                let existing: Option<i64> = conn
                    .prepare_cached(
                        "SELECT id FROM runs WHERE repo_owner = ?1 AND repo_name = ?2 \
                         AND role = ?3 AND number = ?4 \
                         AND json_extract(trigger, '$.delivery') = ?5",
                    )?
                    .query_row(
                        params![
                            run.repo.owner,
                            run.repo.name,
                            run.role.as_str(),
                            number,
                            delivery
                        ],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(id) = existing {
                    return Ok(Enqueued::Queued(RunId(to_u64("run id", id)?)));
                }
            }
            // Counted inside the writer's transaction: no other enqueue can
            // land between the count and the insert.
            if max_per_target < u64::MAX {
                let existing = to_u64("count", count_runs(conn, &run.repo, number, run.role)?)?;
                if existing >= max_per_target {
                    return Ok(Enqueued::CapReached { existing });
                }
            }
            let now = now_ms();
            if let Some(limit) = per_actor {
                let (runs, oldest): (i64, Option<i64>) = conn
                    .prepare_cached(
                        "SELECT COUNT(*), MIN(created_ms) FROM runs \
                         WHERE repo_owner = ?1 AND repo_name = ?2 AND created_ms > ?3 \
                         AND json_extract(trigger, '$.actor') = ?4",
                    )?
                    .query_row(
                        params![
                            run.repo.owner,
                            run.repo.name,
                            now.saturating_sub(limit.window_ms),
                            run.trigger.actor
                        ],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                let runs = to_u64("count", runs)?;
                if runs >= limit.max {
                    return Ok(Enqueued::ActorLimited {
                        runs,
                        retry_at_ms: oldest.unwrap_or(now).saturating_add(limit.window_ms),
                    });
                }
            }
            let id: i64 = conn
                .prepare_cached(
                    "INSERT INTO runs (repo_owner, repo_name, role, number, trigger, state, \
                     attempts, created_ms, updated_ms, script) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'queued', 0, ?6, ?6, ?7) RETURNING id",
                )?
                .query_row(
                    params![
                        run.repo.owner,
                        run.repo.name,
                        run.role.as_str(),
                        number,
                        trigger,
                        now,
                        run.script
                    ],
                    |r| r.get(0),
                )?;
            Ok(Enqueued::Queued(RunId(to_u64("run id", id)?)))
        })
        .await
    }

    async fn claim_next_run(&self) -> Result<Option<Run>, StoreError> {
        self.write(|conn, _| {
            // One statement: the pick and the claim cannot be split by another writer,
            // even one in another process.
            query_one(
                conn,
                &format!(
                    "UPDATE runs SET state = 'preparing', attempts = attempts + 1, \
                     reason = NULL, updated_ms = ?1 \
                     WHERE id = (SELECT id FROM runs WHERE state = 'queued' ORDER BY id LIMIT 1) \
                     RETURNING {RUN_COLUMNS}"
                ),
                [now_ms()],
                run_from_row,
            )
        })
        .await
    }

    async fn get_run(&self, id: RunId) -> Result<Run, StoreError> {
        self.read(move |conn| get_run(conn, id)).await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<Run>, StoreError> {
        let mut clauses = Vec::new();
        let mut args: Vec<Value> = Vec::new();
        if let Some(repo) = &filter.repo {
            args.push(Value::Text(repo.owner.clone()));
            clauses.push(format!("repo_owner = ?{}", args.len()));
            args.push(Value::Text(repo.name.clone()));
            clauses.push(format!("repo_name = ?{}", args.len()));
        }
        if let Some(number) = filter.number {
            args.push(Value::Integer(to_i64("number", number)?));
            clauses.push(format!("number = ?{}", args.len()));
        }
        if let Some(role) = filter.role {
            args.push(Value::Text(role.as_str().into()));
            clauses.push(format!("role = ?{}", args.len()));
        }
        if !filter.states.is_empty() {
            let mut marks = Vec::new();
            for st in &filter.states {
                args.push(Value::Text(st.as_str().into()));
                marks.push(format!("?{}", args.len()));
            }
            clauses.push(format!("state IN ({})", marks.join(", ")));
        }
        if let Some(before) = filter.before {
            args.push(Value::Integer(to_i64("run id", before.0)?));
            clauses.push(format!("id < ?{}", args.len()));
        }
        let limit = filter.limit.unwrap_or(100).min(1000);
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(1000)));
        let limit_mark = args.len();
        let wher = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM runs {wher} ORDER BY id DESC LIMIT ?{limit_mark}");
        self.read(move |conn| {
            query_all(
                conn,
                &sql,
                rusqlite::params_from_iter(args.iter()),
                run_from_row,
            )
        })
        .await
    }

    async fn count_runs(&self, repo: &RepoRef, number: u64, role: Role) -> Result<u64, StoreError> {
        let repo = repo.clone();
        let number = to_i64("number", number)?;
        self.read(move |conn| to_u64("count", count_runs(conn, &repo, number, role)?))
            .await
    }

    async fn run_counts(&self) -> Result<Vec<(Role, RunState, u64)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT role, state, COUNT(*) FROM runs GROUP BY role, state")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (role, state, n) = row?;
                let role = codec::role::parse(&role).ok_or_else(|| {
                    StoreError::Invalid(format!("stored role {role:?} is unknown"))
                })?;
                out.push((role, state.parse()?, to_u64("count", n)?));
            }
            Ok(out)
        })
        .await
    }

    async fn transition(
        &self,
        id: RunId,
        from: RunState,
        to: RunState,
        reason: Option<String>,
    ) -> Result<Run, StoreError> {
        require_reason(to, &reason)?;
        if !from.may_become(to) {
            return Err(StoreError::IllegalTransition {
                run: id,
                from,
                to,
                why: "the state machine does not allow it".into(),
            });
        }
        self.write(move |conn, st| {
            st.touched.insert(id);
            let run = get_run(conn, id)?;
            if run.state != from {
                return Err(StoreError::IllegalTransition {
                    run: id,
                    from,
                    to,
                    why: format!("the run is {}", run.state),
                });
            }
            query_one(
                conn,
                &format!(
                    "UPDATE runs SET state = ?1, reason = ?2, updated_ms = ?3 \
                     WHERE id = ?4 AND state = ?5 RETURNING {RUN_COLUMNS}"
                ),
                params![
                    to.as_str(),
                    reason,
                    now_ms(),
                    to_i64("run id", id.0)?,
                    from.as_str()
                ],
                run_from_row,
            )?
            .ok_or(StoreError::NoSuchRun(id))
        })
        .await
    }

    async fn set_container(
        &self,
        id: RunId,
        container_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |conn, _| {
            let n = conn
                .prepare_cached("UPDATE runs SET container_id = ?1, updated_ms = ?2 WHERE id = ?3")?
                .execute(params![container_id, now_ms(), to_i64("run id", id.0)?])?;
            if n == 0 {
                return Err(StoreError::NoSuchRun(id));
            }
            Ok(())
        })
        .await
    }

    async fn set_branch(&self, id: RunId, branch: String) -> Result<(), StoreError> {
        self.write(move |conn, _| {
            let n = conn
                .prepare_cached("UPDATE runs SET branch = ?1, updated_ms = ?2 WHERE id = ?3")?
                .execute(params![branch, now_ms(), to_i64("run id", id.0)?])?;
            if n == 0 {
                return Err(StoreError::NoSuchRun(id));
            }
            Ok(())
        })
        .await
    }

    async fn resume(&self, id: RunId, by: &str, note: Option<String>) -> Result<Run, StoreError> {
        let by = by.to_string();
        let note_kind = serde_json::to_value(EventKind::Note)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write(move |conn, st| {
            let run = get_run(conn, id)?;
            if !run.state.is_terminal() {
                return Err(StoreError::IllegalTransition {
                    run: id,
                    from: run.state,
                    to: RunState::Queued,
                    why: "only a finished run can be resumed".into(),
                });
            }
            let mut trigger = run.trigger.clone();
            if note.is_some() {
                trigger.instructions = note.clone();
            }
            let trigger_json = serde_json::to_string(&trigger)
                .map_err(|e| StoreError::Invalid(format!("trigger: {e}")))?;
            let reason = format!("resumed by {by} after it was {}", run.state);
            let resumed = query_one(
                conn,
                &format!(
                    "UPDATE runs SET state = 'queued', reason = ?1, trigger = ?2, updated_ms = ?3 \
                     WHERE id = ?4 AND state = ?5 RETURNING {RUN_COLUMNS}"
                ),
                params![
                    reason,
                    trigger_json,
                    now_ms(),
                    to_i64("run id", id.0)?,
                    run.state.as_str()
                ],
                run_from_row,
            )?
            .ok_or(StoreError::NoSuchRun(id))?;
            let message = match &note {
                Some(n) => format!("{reason}: {n}"),
                None => reason,
            };
            append(conn, st, id, &note_kind, message)?;
            Ok(resumed)
        })
        .await
    }

    async fn recover_after_restart(
        &self,
        policy: RecoveryPolicy,
    ) -> Result<Vec<Recovered>, StoreError> {
        // The states a restart interrupts, named in one place (is_active).
        let active = RunState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        self.write(move |conn, st| {
            let left: Vec<(RunId, RunState, u32)> = query_all(
                conn,
                &format!(
                    "SELECT id, state, attempts FROM runs WHERE state IN ({active}) ORDER BY id"
                ),
                [],
                |row| {
                    let state: String = row.get(1)?;
                    Ok((
                        RunId(to_u64("run id", row.get(0)?)?),
                        state.parse()?,
                        u32::try_from(row.get::<_, i64>(2)?).unwrap_or(u32::MAX),
                    ))
                },
            )?;
            let warning = serde_json::to_value(EventKind::Warning)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let mut out = Vec::with_capacity(left.len());
            for (id, was, attempts) in left {
                let requeue = policy.requeue && attempts < policy.max_attempts;
                let (now, reason) = if requeue {
                    (
                        RunState::Queued,
                        format!(
                            "runner restarted while {was}; re-queued (attempt {} of {})",
                            attempts + 1,
                            policy.max_attempts
                        ),
                    )
                } else {
                    (RunState::Failed, "runner restarted".to_string())
                };
                conn.prepare_cached(
                    "UPDATE runs SET state = ?1, reason = ?2, updated_ms = ?3 WHERE id = ?4",
                )?
                .execute(params![
                    now.as_str(),
                    reason,
                    now_ms(),
                    to_i64("run id", id.0)?
                ])?;
                let message = if requeue {
                    reason
                } else {
                    format!("runner restarted while {was}; the run failed")
                };
                append(conn, st, id, &warning, message)?;
                out.push(Recovered { id, was, now });
            }
            Ok(out)
        })
        .await
    }

    async fn append_event(
        &self,
        run: RunId,
        kind: &EventKind,
        message: &str,
    ) -> Result<u64, StoreError> {
        let kind = serde_json::to_value(kind)
            .map_err(|e| StoreError::Invalid(format!("event kind: {e}")))?;
        let message = message.to_string();
        // No savepoint: one INSERT either happens or not.
        self.submit(move |conn, st| append(conn, st, run, &kind, message))
            .await
    }

    async fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn| events_after(conn, run, after_seq, limit))
            .await
    }

    async fn transcript(&self, run: RunId) -> Result<Transcript, StoreError> {
        // Through the writer, so what is read is everything queued before
        // the call (a read connection could trail the last batch).
        self.flush().await?;
        self.read(move |conn| {
            // One read transaction: the run, its events and its seal from
            // one snapshot, even while the writer commits a batch.
            conn.execute_batch("BEGIN")?;
            let t = read_transcript(conn, run);
            conn.execute_batch("COMMIT")?;
            t
        })
        .await
    }

    async fn subscribe(&self, run: RunId, after_seq: u64) -> Result<EventStream, StoreError> {
        self.get_run(run).await?;
        let live = self.inner.hub.subscribe(run);
        let store = self.clone();
        let backlog: Backlog = Arc::new(move |run, after, limit| {
            let store = store.clone();
            async move { store.events_after(run, after, limit).await }.boxed()
        });
        Ok(fanout::subscription(
            run,
            after_seq,
            live,
            backlog,
            self.inner.pages.clone(),
        ))
    }

    fn event_sink(&self, run: RunId) -> StoreEvents {
        StoreEvents::new(run, self.inner.writer.clone())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.write(|_, _| Ok(())).await
    }

    async fn record_delivery(
        &self,
        id: &str,
        event: &str,
        body_sha256: &str,
    ) -> Result<DeliveryRecord, StoreError> {
        check_delivery_id(id)?;
        let (id, event, sha) = (id.to_string(), event.to_string(), body_sha256.to_string());
        self.write(move |conn, _| insert_delivery(conn, &id, &event, &sha, None))
            .await
    }

    async fn accept_delivery(
        &self,
        id: &str,
        event: &str,
        body: &[u8],
    ) -> Result<DeliveryRecord, StoreError> {
        use sha2::Digest;
        check_delivery_id(id)?;
        let sha = hex::encode(sha2::Sha256::digest(body));
        let (id, event, body) = (id.to_string(), event.to_string(), body.to_vec());
        self.write(move |conn, _| insert_delivery(conn, &id, &event, &sha, Some(&body)))
            .await
    }

    async fn claim_delivery(
        &self,
        claim: &DeliveryClaim,
    ) -> Result<Option<AcceptedDelivery>, StoreError> {
        let claim = claim.clone();
        if claim.runner.is_empty() || claim.lease_ms <= 0 {
            return Err(StoreError::Invalid(
                "a delivery claim needs a runner id and a positive lease".into(),
            ));
        }
        self.write(move |conn, _| {
            let now = now_ms();
            // One statement: the pick and the claim cannot be split by
            // another writer, even one in another process.
            query_one(
                conn,
                "UPDATE deliveries SET claimed_by = ?1, claimed_ms = ?2 \
                 WHERE id = (SELECT id FROM deliveries \
                     WHERE status = 'received' AND body IS NOT NULL \
                     AND (claimed_by IS NULL OR claimed_ms <= ?3 \
                          OR (claimed_by = ?1 AND claimed_ms < ?4)) \
                     ORDER BY received_ms, id LIMIT 1) \
                 RETURNING id, event, body, received_ms",
                params![
                    claim.runner,
                    now,
                    now.saturating_sub(claim.lease_ms),
                    claim.since_ms
                ],
                |row| {
                    Ok(AcceptedDelivery {
                        id: row.get(0)?,
                        event: row.get(1)?,
                        body: row.get(2)?,
                        received_ms: row.get(3)?,
                    })
                },
            )
        })
        .await
    }

    async fn finish_delivery(
        &self,
        id: &str,
        status: DeliveryStatus,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        check_delivery_id(id)?;
        let id = id.to_string();
        self.write(move |conn, _| {
            let n = conn
                .prepare_cached(
                    "UPDATE deliveries SET status = ?1, reason = ?2, finished_ms = ?3, body = NULL \
                     WHERE id = ?4",
                )?
                .execute(params![status.as_str(), reason, now_ms(), id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("delivery {id}")));
            }
            Ok(())
        })
        .await
    }

    async fn get_delivery(&self, id: &str) -> Result<Delivery, StoreError> {
        check_delivery_id(id)?;
        let id = id.to_string();
        self.read(move |conn| {
            query_one(
                conn,
                &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"),
                [&id],
                delivery_from_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("delivery {id}")))
        })
        .await
    }

    async fn hold_effect(
        &self,
        run: RunId,
        effect_id: &str,
        proposal: serde_json::Value,
    ) -> Result<Approval, StoreError> {
        if effect_id.is_empty() || effect_id.len() > 200 {
            return Err(StoreError::Invalid("effect id must be 1-200 bytes".into()));
        }
        let effect = effect_id.to_string();
        self.write(move |conn, _| {
            get_run(conn, run)?;
            if get_effect(conn, run, &effect).is_ok() {
                return Err(StoreError::EffectAlreadyHeld { run, effect });
            }
            conn.prepare_cached(
                "INSERT INTO approvals (run_id, effect_id, proposal, state, created_ms) \
                 VALUES (?1, ?2, ?3, 'pending', ?4)",
            )?
            .execute(params![
                to_i64("run id", run.0)?,
                effect,
                proposal.to_string(),
                now_ms()
            ])?;
            get_effect(conn, run, &effect)
        })
        .await
    }

    async fn decide_effect(
        &self,
        run: RunId,
        effect_id: &str,
        verdict: Verdict,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<Approval, StoreError> {
        if decided_by.trim().is_empty() {
            return Err(StoreError::Invalid(
                "a decision must name who made it".into(),
            ));
        }
        let (effect, by) = (effect_id.to_string(), decided_by.to_string());
        let state = match verdict {
            Verdict::Approve => ApprovalState::Approved,
            Verdict::Deny => ApprovalState::Denied,
        };
        let decided = self
            .write(move |conn, _| {
                let held = get_effect(conn, run, &effect)?;
                if held.state != ApprovalState::Pending {
                    return Err(StoreError::AlreadyDecided {
                        run,
                        effect,
                        state: held.state,
                        by: held.decided_by.unwrap_or_default(),
                    });
                }
                conn.prepare_cached(
                    "UPDATE approvals SET state = ?1, decided_by = ?2, reason = ?3, decided_ms = ?4 \
                     WHERE run_id = ?5 AND effect_id = ?6 AND state = 'pending'",
                )?
                .execute(params![
                    state.as_str(),
                    by,
                    reason,
                    now_ms(),
                    to_i64("run id", run.0)?,
                    effect
                ])?;
                get_effect(conn, run, &effect)
            })
            .await?;
        self.inner.decisions.send_modify(|n| *n = n.wrapping_add(1));
        Ok(decided)
    }

    async fn get_effect(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError> {
        let effect = effect_id.to_string();
        self.read(move |conn| get_effect(conn, run, &effect)).await
    }

    async fn pending_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError> {
        self.read(move |conn| {
            query_all(
                conn,
                &format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals \
                     WHERE run_id = ?1 AND state = 'pending' ORDER BY created_ms, effect_id"
                ),
                [to_i64("run id", run.0)?],
                approval_from_row,
            )
        })
        .await
    }

    async fn held_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError> {
        self.read(move |conn| {
            query_all(
                conn,
                &format!(
                    "SELECT {APPROVAL_COLUMNS} FROM approvals \
                     WHERE run_id = ?1 ORDER BY created_ms, effect_id"
                ),
                [to_i64("run id", run.0)?],
                approval_from_row,
            )
        })
        .await
    }

    async fn wait_for_decision(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError> {
        // Subscribe before looking, so a decision between the look and the
        // wait still wakes us.
        let mut changed = self.inner.decisions.subscribe();
        loop {
            let held = self.get_effect(run, effect_id).await?;
            if held.state != ApprovalState::Pending {
                return Ok(held);
            }
            changed.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }

    async fn create_token(&self, name: &str, scope: TokenScope) -> Result<NewToken, StoreError> {
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(
                "token name must be 1-100 printable characters".into(),
            ));
        }
        use base64::Engine as _;
        let secret: [u8; 32] = rand::random();
        let plaintext = format!(
            "kiln_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let sha = super::token_hash(&plaintext);
        let token = self
            .write(move |conn, _| {
                query_one(
                    conn,
                    &format!(
                        "INSERT INTO api_tokens (name, scope, sha256, created_ms) \
                         VALUES (?1, ?2, ?3, ?4) RETURNING {TOKEN_COLUMNS}"
                    ),
                    params![name, scope.as_str(), sha, now_ms()],
                    token_from_row,
                )?
                .ok_or_else(|| StoreError::Database("token insert returned nothing".into()))
            })
            .await?;
        Ok(NewToken { token, plaintext })
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<ApiToken>, StoreError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(
                "token hash must be 64 hex digits".into(),
            ));
        }
        let sha = sha256.to_ascii_lowercase();
        self.read(move |conn| {
            query_one(
                conn,
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = ?1"),
                [&sha],
                token_from_row,
            )
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        self.read(|conn| {
            query_all(
                conn,
                &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"),
                [],
                token_from_row,
            )
        })
        .await
    }

    async fn revoke_token(&self, id: u64) -> Result<ApiToken, StoreError> {
        let sql_id = to_i64("token id", id)?;
        self.write(move |conn, _| {
            query_one(
                conn,
                &format!(
                    "UPDATE api_tokens SET revoked_ms = COALESCE(revoked_ms, ?1) WHERE id = ?2 \
                     RETURNING {TOKEN_COLUMNS}"
                ),
                params![now_ms(), sql_id],
                token_from_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
        })
        .await
    }

    async fn watch_schedule(&self, name: &str, now_ms: i64) -> Result<ScheduleRecord, StoreError> {
        let name = name.to_string();
        self.write(move |conn, _| {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO schedules (name, since_ms) VALUES (?1, ?2)",
            )?
            .execute(params![name, now_ms])?;
            Ok(conn
                .prepare_cached(&format!("{SCHEDULE_SELECT} WHERE name = ?1"))?
                .query_row(params![name], schedule_from_row)?)
        })
        .await
    }

    async fn claim_schedule(
        &self,
        name: &str,
        due_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.write(move |conn, _| {
            let n = conn
                .prepare_cached(
                    "UPDATE schedules SET last_due_ms = ?2, last_fired_ms = ?3 \
                     WHERE name = ?1 AND MAX(COALESCE(last_due_ms, since_ms), since_ms) < ?2",
                )?
                .execute(params![name, due_ms, now_ms])?;
            Ok(n == 1)
        })
        .await
    }

    async fn schedule_records(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.read(|conn| {
            query_all(conn, &format!("{SCHEDULE_SELECT} ORDER BY name"), [], |r| {
                Ok(schedule_from_row(r)?)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests;
