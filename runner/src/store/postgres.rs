//! [`PgStore`]: the [`RunStore`] on PostgreSQL, shared by several runners.
//!
//! The semantics are the SQLite store's (the contract suite runs against
//! both); what differs is how they hold with several processes:
//! - **Claims** take the oldest queued run with `FOR UPDATE SKIP LOCKED`:
//!   concurrent claimers, in any process, never wait for or share a run.
//! - **Leases**: a claim records the claiming runner, an expiry and a new
//!   epoch. [`RunStore::renew_leases`] (the heartbeat) extends the expiry;
//!   [`RunStore::recover_expired`] lets another runner recover a run whose
//!   lease ran out, bumping the epoch. The store remembers the epoch of each
//!   run it claimed and refuses its own later writes to a run whose epoch
//!   moved on ([`StoreError::LeaseLost`]): that is the fence that stops a
//!   runner that was presumed dead from writing over its successor.
//! - **Events**: each run row keeps its chain head (`last_seq`,
//!   `head_hash`); an append locks the row (`FOR NO KEY UPDATE`), so seqs
//!   stay gap-free across processes. One writer task per store batches the
//!   events queued by [`StoreEvents`] into one transaction (group commit).
//!   Each commit sends `NOTIFY kiln_events, 'e:<run>:<last seq>'`; every
//!   store LISTENs on that channel and reads the new events of the runs it
//!   has watchers for, so `subscribe` follows runs written by any runner.
//!   Decisions on held effects send `d:<run>`, waking `wait_for_decision`.
//! - Counts that must be atomic with an insert (the re-run cap, the actor
//!   limit, a delivery's run) hold a transaction-scoped advisory lock on
//!   the repository.

mod schema;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::codec;
use super::fanout::{self, Backlog, Hub, Pages};
use super::sink::{EventQueue, StoreEvents};
use super::{
    AcceptedDelivery, ActorLimit, ApiToken, Approval, ApprovalState, Delivery, DeliveryClaim,
    DeliveryRecord, DeliveryStatus, EffectLogEntry, EffectLogState, EffectOutcome, Enqueued,
    EventStream, Lease, NewRun, NewToken, Recovered, RecoveryPolicy, RepoRef, Role, Run, RunFilter,
    RunId, RunState, RunStore, ScheduleRecord, StoreError, StoredEvent, TokenScope, Trigger,
    Verdict,
};
use crate::ledger::transcript::{self, RunHeader, Seal, Transcript, TranscriptEvent};
use crate::ledger::{HostKey, chain};
use crate::session::EventKind;

pub use schema::SCHEMA_VERSION as PG_SCHEMA_VERSION;

/// The one channel every store LISTENs on.
const CHANNEL: &str = "kiln_events";

const RUN_COLUMNS: &str = "id, repo_owner, repo_name, role, number, trigger, state, reason, \
                           attempts, created_ms, updated_ms, container_id, branch, script";
const APPROVAL_COLUMNS: &str =
    "run_id, effect_id, proposal, state, decided_by, reason, created_ms, decided_ms";
const TOKEN_COLUMNS: &str = "id, name, scope, sha256, created_ms, revoked_ms";
const DELIVERY_COLUMNS: &str = "id, event, body_sha256, status, reason, received_ms, finished_ms";
const SCHEDULE_COLUMNS: &str = "name, since_ms, last_due_ms, last_fired_ms";
const EFFECT_LOG_COLUMNS: &str =
    "key, run_id, effect_id, intent, state, outcome, attempts, created_ms, updated_ms";

/// Settings of [`PgStore::open`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// This runner's id: leases name it, and a restart recovers its runs.
    pub runner_id: String,
    /// Pooled connections (default 16), besides the one that LISTENs.
    pub pool_size: usize,
    /// How long a lease lasts without renewal (default 90 s).
    pub lease: Duration,
    /// Most events committed in one transaction (default 4096).
    pub max_batch: usize,
}

impl PgOptions {
    /// Defaults for the runner `runner_id`.
    pub fn new(runner_id: impl Into<String>) -> Self {
        PgOptions {
            runner_id: runner_id.into(),
            pool_size: 16,
            lease: Duration::from_secs(90),
            max_batch: 4096,
        }
    }
}

/// A PostgreSQL error as a [`StoreError`], with the server's message.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{}: {}", db.severity(), db.message())),
        None => StoreError::Database(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        e => StoreError::Database(format!("connection pool: {e}")),
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

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Every row of `sql` (a statement prepared once per connection).
async fn query<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&st, params).await.map_err(pg)
}

/// The first row of `sql`, if any.
async fn query_opt<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    Ok(query(c, sql, params).await?.into_iter().next())
}

/// Rows `sql` changed.
async fn execute<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, StoreError> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&st, params).await.map_err(pg)
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(pg)
}

fn run_from_row(row: &Row) -> Result<Run, StoreError> {
    let role: String = get(row, 3)?;
    let state: String = get(row, 6)?;
    let trigger: String = get(row, 5)?;
    Ok(Run {
        id: RunId(to_u64("run id", get(row, 0)?)?),
        repo: RepoRef {
            owner: get(row, 1)?,
            name: get(row, 2)?,
        },
        role: codec::role::parse(&role)
            .ok_or_else(|| StoreError::Invalid(format!("stored role {role:?} is unknown")))?,
        number: to_u64("number", get(row, 4)?)?,
        trigger: json::<Trigger>("trigger", &trigger)?,
        state: state.parse()?,
        reason: get(row, 7)?,
        attempts: u32::try_from(get::<i32>(row, 8)?)
            .map_err(|_| StoreError::Invalid("stored attempts out of range".into()))?,
        created_ms: get(row, 9)?,
        updated_ms: get(row, 10)?,
        container_id: get(row, 11)?,
        branch: get(row, 12)?,
        script: get(row, 13)?,
    })
}

fn effect_log_from_row(row: &Row) -> Result<EffectLogEntry, StoreError> {
    let intent: String = get(row, 3)?;
    let state: String = get(row, 4)?;
    Ok(EffectLogEntry {
        key: get(row, 0)?,
        run: RunId(to_u64("run id", get(row, 1)?)?),
        effect_id: get(row, 2)?,
        intent: json("effect intent", &intent)?,
        state: state.parse()?,
        outcome: get(row, 5)?,
        attempts: u32::try_from(get::<i32>(row, 6)?).unwrap_or(u32::MAX),
        created_ms: get(row, 7)?,
        updated_ms: get(row, 8)?,
    })
}

/// The write under `key`, if it was ever begun.
async fn get_effect_log<C: GenericClient + Sync>(
    c: &C,
    key: &str,
) -> Result<Option<EffectLogEntry>, StoreError> {
    query_opt(
        c,
        &format!("SELECT {EFFECT_LOG_COLUMNS} FROM effect_log WHERE key = $1"),
        &[&key],
    )
    .await?
    .map(|row| effect_log_from_row(&row))
    .transpose()
}

fn approval_from_row(row: &Row) -> Result<Approval, StoreError> {
    let proposal: String = get(row, 2)?;
    let state: String = get(row, 3)?;
    Ok(Approval {
        run: RunId(to_u64("run id", get(row, 0)?)?),
        effect_id: get(row, 1)?,
        proposal: json("proposal", &proposal)?,
        state: state.parse()?,
        decided_by: get(row, 4)?,
        reason: get(row, 5)?,
        created_ms: get(row, 6)?,
        decided_ms: get(row, 7)?,
    })
}

fn token_from_row(row: &Row) -> Result<ApiToken, StoreError> {
    let scope: String = get(row, 2)?;
    Ok(ApiToken {
        id: to_u64("token id", get(row, 0)?)?,
        name: get(row, 1)?,
        scope: scope.parse()?,
        sha256: get(row, 3)?,
        created_ms: get(row, 4)?,
        revoked_ms: get(row, 5)?,
    })
}

fn delivery_from_row(row: &Row) -> Result<Delivery, StoreError> {
    let status: String = get(row, 3)?;
    Ok(Delivery {
        id: get(row, 0)?,
        event: get(row, 1)?,
        body_sha256: get(row, 2)?,
        status: status.parse()?,
        reason: get(row, 4)?,
        received_ms: get(row, 5)?,
        finished_ms: get(row, 6)?,
    })
}

fn schedule_from_row(row: &Row) -> Result<ScheduleRecord, StoreError> {
    Ok(ScheduleRecord {
        name: get(row, 0)?,
        since_ms: get(row, 1)?,
        last_due_ms: get(row, 2)?,
        last_fired_ms: get(row, 3)?,
    })
}

/// What the store's tasks share: the pool, this runner's identity and
/// the leases it holds.
struct Shared {
    pool: Pool,
    runner: String,
    lease_ms: i64,
    /// The epoch of each run this store claimed and has not let go of.
    held: Mutex<HashMap<RunId, i64>>,
    key: Arc<HostKey>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses a write to `run` if this store claimed it and the run's
    /// epoch has moved on since (another runner recovered it).
    fn fence(&self, run: RunId, epoch_now: i64) -> Result<(), StoreError> {
        match self.held().get(&run) {
            Some(&held) if held != epoch_now => Err(StoreError::LeaseLost {
                run,
                runner: self.runner.clone(),
                held: u64::try_from(held).unwrap_or_default(),
                now: u64::try_from(epoch_now).unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }
}

/// A run row locked for a write: its state and lease epoch.
struct Locked {
    state: RunState,
    epoch: i64,
}

/// Locks `run`'s row for the transaction; `NoSuchRun` if there is none.
async fn lock_run<C: GenericClient + Sync>(c: &C, run: RunId) -> Result<Locked, StoreError> {
    let row = query_opt(
        c,
        "SELECT state, lease_epoch FROM runs WHERE id = $1 FOR NO KEY UPDATE",
        &[&to_i64("run id", run.0)?],
    )
    .await?
    .ok_or(StoreError::NoSuchRun(run))?;
    let state: String = get(&row, 0)?;
    Ok(Locked {
        state: state.parse()?,
        epoch: get(&row, 1)?,
    })
}

/// One event to append.
struct Append<'a> {
    run: RunId,
    kind: &'a serde_json::Value,
    message: &'a str,
}

/// Appends `events` in order inside `tx`: each gets the next seq of its
/// run and its chain hash; runs that end up finished are (re)sealed and
/// every touched run is announced on the channel. The outer error fails
/// the transaction; an inner one refuses that event alone (no such run, a
/// lost lease).
async fn append_events<C: GenericClient + Sync>(
    tx: &C,
    sh: &Shared,
    events: &[Append<'_>],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let mut ids: Vec<i64> = Vec::new();
    for e in events {
        ids.push(to_i64("run id", e.run.0)?);
    }
    ids.sort_unstable();
    ids.dedup();
    // Locked in id order, so two batches never wait for each other in a cycle.
    let rows = query(
        tx,
        "SELECT id, last_seq, head_hash, state, lease_epoch FROM runs \
         WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        &[&ids],
    )
    .await?;
    struct Head {
        next_seq: u64,
        hash: chain::EventHash,
        state: RunState,
        epoch: i64,
        changed: bool,
    }
    let mut heads: BTreeMap<RunId, Head> = BTreeMap::new();
    for row in &rows {
        let id = RunId(to_u64("run id", get(row, 0)?)?);
        let hash: Option<Vec<u8>> = get(row, 2)?;
        let state: String = get(row, 3)?;
        heads.insert(
            id,
            Head {
                next_seq: to_u64("seq", get(row, 1)?)? + 1,
                hash: match hash {
                    None => chain::GENESIS,
                    Some(h) => h.try_into().map_err(|_| {
                        StoreError::Invalid(format!("stored chain head of {id} is malformed"))
                    })?,
                },
                state: state.parse()?,
                epoch: get(row, 4)?,
                changed: false,
            },
        );
    }
    let (mut run_ids, mut seqs, mut ats, mut kinds, mut messages, mut hashes) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let Some(head) = heads.get_mut(&e.run) else {
            out.push(Err(StoreError::NoSuchRun(e.run)));
            continue;
        };
        if let Err(refused) = sh.fence(e.run, head.epoch) {
            out.push(Err(refused));
            continue;
        }
        let seq = head.next_seq;
        let at_ms = now_ms();
        let kind_text = chain::canonical_json(e.kind);
        let hash = chain::event_hash(e.run.0, seq, at_ms, &kind_text, e.message, &head.hash);
        head.next_seq += 1;
        head.hash = hash;
        head.changed = true;
        run_ids.push(to_i64("run id", e.run.0)?);
        seqs.push(to_i64("seq", seq)?);
        ats.push(at_ms);
        kinds.push(kind_text);
        messages.push(e.message.to_string());
        hashes.push(hash.to_vec());
        out.push(Ok(seq));
    }
    if run_ids.is_empty() {
        return Ok(out);
    }
    execute(
        tx,
        "INSERT INTO events (run_id, seq, at_ms, kind, message, hash) \
         SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[], \
         $6::bytea[])",
        &[&run_ids, &seqs, &ats, &kinds, &messages, &hashes],
    )
    .await?;
    let (mut ids, mut lasts, mut heads_out, mut notes) = (vec![], vec![], vec![], vec![]);
    let mut finished = Vec::new();
    for (run, head) in heads.iter().filter(|(_, h)| h.changed) {
        let last = head.next_seq - 1;
        ids.push(to_i64("run id", run.0)?);
        lasts.push(to_i64("seq", last)?);
        heads_out.push(head.hash.to_vec());
        notes.push(format!("e:{}:{last}", run.0));
        if head.state.is_terminal() {
            finished.push(*run);
        }
    }
    execute(
        tx,
        "UPDATE runs SET last_seq = u.seq, head_hash = u.hash \
         FROM UNNEST($1::int8[], $2::int8[], $3::bytea[]) AS u(id, seq, hash) \
         WHERE runs.id = u.id",
        &[&ids, &lasts, &heads_out],
    )
    .await?;
    for run in finished {
        seal(tx, sh, run).await?;
    }
    query(
        tx,
        "SELECT pg_notify($1, n) FROM UNNEST($2::text[]) AS n",
        &[&CHANNEL, &notes],
    )
    .await?;
    Ok(out)
}

/// Appends one event inside `tx`; its error fails the caller's transaction.
async fn append_one<C: GenericClient + Sync>(
    tx: &C,
    sh: &Shared,
    run: RunId,
    kind: &serde_json::Value,
    message: &str,
) -> Result<u64, StoreError> {
    append_events(tx, sh, &[Append { run, kind, message }])
        .await?
        .pop()
        .unwrap_or(Err(StoreError::NoSuchRun(run)))
}

/// Signs the head of `run` if it is finished, so a seal always covers the
/// run's last event.
async fn seal<C: GenericClient + Sync>(tx: &C, sh: &Shared, run: RunId) -> Result<(), StoreError> {
    let Some(row) = query_opt(
        tx,
        "SELECT repo_owner, repo_name, role, number, state, last_seq, head_hash \
         FROM runs WHERE id = $1",
        &[&to_i64("run id", run.0)?],
    )
    .await?
    else {
        return Ok(());
    };
    let state: String = get(&row, 4)?;
    if !state.parse::<RunState>()?.is_terminal() {
        return Ok(());
    }
    let (owner, name, role): (String, String, String) =
        (get(&row, 0)?, get(&row, 1)?, get(&row, 2)?);
    let seq: i64 = get(&row, 5)?;
    let head: chain::EventHash = match get::<Option<Vec<u8>>>(&row, 6)? {
        None => chain::GENESIS,
        Some(h) => h
            .try_into()
            .map_err(|_| StoreError::Invalid(format!("stored chain head of {run} is malformed")))?,
    };
    let message = transcript::seal_message(
        run.0,
        &format!("{owner}/{name}"),
        &role,
        to_u64("number", get(&row, 3)?)?,
        &state,
        to_u64("seq", seq)?,
        &head,
    );
    let signature = sh.key.sign(&message);
    execute(
        tx,
        "INSERT INTO run_seals (run_id, seq, hash, state, signature, public_key, signed_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO UPDATE SET \
         seq = excluded.seq, hash = excluded.hash, state = excluded.state, \
         signature = excluded.signature, public_key = excluded.public_key, \
         signed_ms = excluded.signed_ms",
        &[
            &to_i64("run id", run.0)?,
            &seq,
            &head.to_vec(),
            &state,
            &signature.to_vec(),
            &sh.key.public().to_string(),
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

/// A job for the event writer.
enum Job {
    /// Append an event; answer with its seq once committed, if asked.
    Event {
        run: RunId,
        kind: serde_json::Value,
        message: String,
        reply: Option<oneshot::Sender<Result<u64, StoreError>>>,
    },
    /// Answer once everything queued before is committed.
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// The writer's inbox; also the queue behind every [`StoreEvents`].
struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
}

impl EventQueue for Writer {
    fn enqueue(&self, run: RunId, kind: serde_json::Value, message: String) {
        let job = Job::Event {
            run,
            kind,
            message,
            reply: None,
        };
        if self.jobs.send(job).is_err() {
            tracing::error!(%run, "run event lost: the store is closed");
        }
    }
}

/// Commits queued events in batches, one transaction per batch, in the
/// order they were queued.
async fn writer_loop(sh: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let results = commit_batch(&sh, &batch).await;
        let mut results = match results {
            Ok(r) => r.into_iter(),
            Err(e) => {
                tracing::error!(error = %e, "store: event batch not committed");
                vec![Err(e); batch.len()].into_iter()
            }
        };
        for job in batch {
            let result = results.next().unwrap_or(Err(StoreError::Closed));
            match job {
                Job::Event {
                    run, reply: None, ..
                } => {
                    if let Err(e) = result {
                        tracing::error!(%run, error = %e, "run event not stored");
                    }
                }
                Job::Event {
                    reply: Some(tx), ..
                } => {
                    let _ = tx.send(result);
                }
                Job::Flush(tx) => {
                    let _ = tx.send(result.map(|_| ()));
                }
            }
        }
    }
}

/// One transaction for the batch's events; one result per job.
async fn commit_batch(
    sh: &Shared,
    batch: &[Job],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let appends: Vec<Append<'_>> = batch
        .iter()
        .filter_map(|j| match j {
            Job::Event {
                run, kind, message, ..
            } => Some(Append {
                run: *run,
                kind,
                message,
            }),
            Job::Flush(_) => None,
        })
        .collect();
    let mut appended = Vec::new().into_iter();
    if !appends.is_empty() {
        let mut client = sh.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let r = append_events(&tx, sh, &appends).await?;
        tx.commit().await.map_err(pg)?;
        appended = r.into_iter();
    }
    Ok(batch
        .iter()
        .map(|j| match j {
            Job::Event { .. } => appended.next().unwrap_or(Err(StoreError::Closed)),
            Job::Flush(_) => Ok(0),
        })
        .collect())
}

/// Follows the channel: reads the new events of watched runs and hands
/// them to the hub; wakes decision waiters. Reconnects if the connection
/// drops, catching watched runs up from the table.
async fn listener_loop(
    config: tokio_postgres::Config,
    pool: Pool,
    hub: Arc<Hub>,
    decisions: watch::Sender<u64>,
    mut first: Option<Listening>,
) {
    let mut marks: HashMap<RunId, u64> = HashMap::new();
    loop {
        let listening = match first.take() {
            Some(l) => l,
            None => match listen(&config).await {
                Ok(l) => {
                    // Notifications sent while disconnected are gone: the
                    // table has the events, and decisions may have changed.
                    decisions.send_modify(|n| *n = n.wrapping_add(1));
                    let runs: Vec<(RunId, u64)> = marks.iter().map(|(r, s)| (*r, *s)).collect();
                    for (run, after) in runs {
                        publish_new(&pool, &hub, &mut marks, run, after, u64::MAX).await;
                    }
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store: cannot LISTEN; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Listening {
            client: _client,
            mut notes,
        } = listening;
        while let Some(note) = notes.recv().await {
            let mut latest: BTreeMap<RunId, u64> = BTreeMap::new();
            let mut decided = false;
            let mut take = |payload: &str| {
                let mut parts = payload.split(':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("e"), Some(run), Some(seq)) => {
                        if let (Ok(run), Ok(seq)) = (run.parse::<u64>(), seq.parse::<u64>()) {
                            let e = latest.entry(RunId(run)).or_insert(0);
                            *e = (*e).max(seq);
                        }
                    }
                    (Some("d"), _, _) => decided = true,
                    _ => {}
                }
            };
            take(&note);
            while let Ok(more) = notes.try_recv() {
                take(&more);
            }
            if decided {
                decisions.send_modify(|n| *n = n.wrapping_add(1));
            }
            for (run, last) in latest {
                if !hub.is_watched(run) {
                    marks.remove(&run);
                    continue;
                }
                // A run first seen now: its earlier events are the
                // watchers' backlog (they see a hole and read the table).
                let after = marks.get(&run).copied().unwrap_or(last.saturating_sub(1));
                if after < last {
                    publish_new(&pool, &hub, &mut marks, run, after, last).await;
                }
            }
        }
        tracing::warn!("store: the LISTEN connection closed; reconnecting");
    }
}

/// Reads `run`'s events after `after` (up to `last`) and publishes them.
async fn publish_new(
    pool: &Pool,
    hub: &Hub,
    marks: &mut HashMap<RunId, u64>,
    run: RunId,
    after: u64,
    last: u64,
) {
    let limit = usize::try_from(last.saturating_sub(after)).unwrap_or(usize::MAX);
    let read = async {
        let client = pool.get().await.map_err(pool_err)?;
        events_after(&client, run, after, limit.min(100_000)).await
    };
    match read.await {
        Ok(events) => {
            if let Some(e) = events.last() {
                marks.insert(run, e.seq);
            }
            hub.publish(events);
        }
        // The watchers find the hole at the next event and read the table.
        Err(e) => tracing::warn!(%run, error = %e, "store: cannot read new events"),
    }
}

/// A connection LISTENing on the channel, and its notifications.
struct Listening {
    client: tokio_postgres::Client,
    notes: mpsc::UnboundedReceiver<String>,
}

async fn listen(config: &tokio_postgres::Config) -> Result<Listening, StoreError> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.map_err(pg)?;
    let (tx, notes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "store: LISTEN connection failed");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg)?;
    Ok(Listening { client, notes })
}

async fn events_after<C: GenericClient + Sync>(
    c: &C,
    run: RunId,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = query(
        c,
        "SELECT seq, at_ms, kind, message FROM events \
         WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[
            &to_i64("run id", run.0)?,
            &to_i64("seq", after)?,
            &i64::try_from(limit).unwrap_or(i64::MAX),
        ],
    )
    .await?;
    rows.iter()
        .map(|row| {
            let kind: String = get(row, 2)?;
            Ok(StoredEvent {
                run,
                seq: to_u64("seq", get(row, 0)?)?,
                at_ms: get(row, 1)?,
                kind: json("event kind", &kind)?,
                message: get(row, 3)?,
            })
        })
        .collect()
}

async fn get_run<C: GenericClient + Sync>(c: &C, id: RunId) -> Result<Run, StoreError> {
    let row = query_opt(
        c,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"),
        &[&to_i64("run id", id.0)?],
    )
    .await?
    .ok_or(StoreError::NoSuchRun(id))?;
    run_from_row(&row)
}

async fn get_effect<C: GenericClient + Sync>(
    c: &C,
    run: RunId,
    effect: &str,
) -> Result<Approval, StoreError> {
    let row = query_opt(
        c,
        &format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE run_id = $1 AND effect_id = $2"),
        &[&to_i64("run id", run.0)?, &effect],
    )
    .await?
    .ok_or_else(|| StoreError::NoSuchEffect {
        run,
        effect: effect.to_string(),
    })?;
    approval_from_row(&row)
}

async fn count_runs<C: GenericClient + Sync>(
    c: &C,
    repo: &RepoRef,
    number: i64,
    role: Role,
) -> Result<u64, StoreError> {
    let row = query_opt(
        c,
        "SELECT COUNT(*) FROM runs WHERE repo_owner = $1 AND repo_name = $2 \
         AND number = $3 AND role = $4",
        &[&repo.owner, &repo.name, &number, &role.as_str()],
    )
    .await?
    .ok_or_else(|| StoreError::Database("COUNT returned no row".into()))?;
    to_u64("count", get(&row, 0)?)
}

/// Inserts a delivery (`received`) unless its id was seen: `New`, or what
/// the first one became.
async fn insert_delivery<C: GenericClient + Sync>(
    c: &C,
    id: &str,
    event: &str,
    sha: &str,
    body: Option<&[u8]>,
) -> Result<DeliveryRecord, StoreError> {
    let inserted = execute(
        c,
        "INSERT INTO deliveries (id, event, body_sha256, status, received_ms, body) \
         VALUES ($1, $2, $3, 'received', $4, $5) ON CONFLICT (id) DO NOTHING",
        &[&id, &event, &sha, &now_ms(), &body],
    )
    .await?;
    if inserted == 1 {
        return Ok(DeliveryRecord::New);
    }
    let row = query_opt(
        c,
        "SELECT received_ms, status FROM deliveries WHERE id = $1",
        &[&id],
    )
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("delivery {id}")))?;
    Ok(DeliveryRecord::Duplicate {
        first_seen_ms: get(&row, 0)?,
        status: get::<String>(&row, 1)?.parse()?,
    })
}

/// A delivery id as GitHub sends them (a GUID); anything else is refused.
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

fn require_reason(to: RunState, reason: &Option<String>) -> Result<(), StoreError> {
    if to.needs_reason() && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(StoreError::Invalid(format!(
            "a transition to {to} must give a reason"
        )));
    }
    Ok(())
}

struct Inner {
    shared: Arc<Shared>,
    name: String,
    writer: Arc<Writer>,
    hub: Arc<Hub>,
    pages: Arc<Pages>,
    decisions: watch::Sender<u64>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The PostgreSQL [`RunStore`]. Cheap to clone; its tasks end when the
/// last clone and the last [`StoreEvents`] are dropped, after committing
/// what was queued.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("database", &self.inner.name)
            .field("runner", &self.inner.shared.runner)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database `config` names, migrates it, and starts
    /// LISTENing. The ledger's host key is loaded from (or made in) `key_dir`.
    pub async fn open(
        config: tokio_postgres::Config,
        key_dir: &Path,
        options: PgOptions,
    ) -> Result<Self, StoreError> {
        let name = describe(&config);
        let key_dir = key_dir.to_path_buf();
        let key = tokio::task::spawn_blocking(move || HostKey::load_or_create(&key_dir))
            .await
            .map_err(|e| StoreError::HostKey(format!("host key task failed: {e}")))?
            .map_err(|e| StoreError::HostKey(e.to_string()))?;
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .build()
            .map_err(|e| StoreError::Database(format!("{name}: connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Database(format!("cannot connect to {name}: {}", pool_err(e)))
        })?;
        schema::migrate(&mut client, &name).await?;
        drop(client);
        let listening = listen(&config).await?;
        let hub = Arc::new(Hub::default());
        let decisions = watch::Sender::new(0);
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            runner: options.runner_id.clone(),
            lease_ms: i64::try_from(options.lease.as_millis()).unwrap_or(i64::MAX),
            held: Mutex::new(HashMap::new()),
            key: Arc::new(key),
        });
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer_loop(shared.clone(), rx, options.max_batch.max(1)));
        let listener = tokio::spawn(listener_loop(
            config,
            pool,
            hub.clone(),
            decisions.clone(),
            Some(listening),
        ));
        Ok(PgStore {
            inner: Arc::new(Inner {
                shared,
                name,
                writer: Arc::new(Writer { jobs }),
                hub,
                pages: Arc::default(),
                decisions,
                listener,
            }),
        })
    }

    /// This store's runner id.
    pub fn runner_id(&self) -> &str {
        &self.inner.shared.runner
    }

    /// The database's schema version (always the newest once open).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        schema::version(&client).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.shared.client().await
    }

    /// Runs `f` in a transaction and commits it.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(
            &'t deadpool_postgres::Transaction<'t>,
            &'t Shared,
        ) -> futures_util::future::BoxFuture<'t, Result<T, StoreError>>,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let out = f(&tx, &self.inner.shared).await?;
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    async fn enqueue_job(&self, job: Job) -> Result<(), StoreError> {
        self.inner
            .writer
            .jobs
            .send(job)
            .map_err(|_| StoreError::Closed)
    }

    /// Recovers active runs matching `which` (an SQL condition on `runs`):
    /// this runner's after a restart, or other runners' whose lease expired.
    async fn recover(
        &self,
        policy: RecoveryPolicy,
        which: &'static str,
    ) -> Result<Vec<Recovered>, StoreError> {
        let active: Vec<String> = RunState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(|s| s.as_str().to_string())
            .collect();
        let me = self.inner.shared.runner.clone();
        let warning = serde_json::to_value(EventKind::Warning)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let recovered = self
            .write(move |tx, sh| {
                async move {
                    let rows = query(
                        tx,
                        &format!(
                            "SELECT id, state, attempts, lease_owner FROM runs \
                             WHERE state = ANY($1) AND ({which}) ORDER BY id \
                             FOR NO KEY UPDATE SKIP LOCKED"
                        ),
                        &[&active, &me, &now_ms()],
                    )
                    .await?;
                    let mut out = Vec::with_capacity(rows.len());
                    for row in rows {
                        let id = RunId(to_u64("run id", get(&row, 0)?)?);
                        let was: RunState = get::<String>(&row, 1)?.parse()?;
                        let attempts = u32::try_from(get::<i32>(&row, 2)?).unwrap_or(u32::MAX);
                        let owner: Option<String> = get(&row, 3)?;
                        let cause = match owner.as_deref() {
                            Some(o) if o != me => format!("runner {o} lost"),
                            _ => "runner restarted".to_string(),
                        };
                        let requeue = policy.requeue && attempts < policy.max_attempts;
                        let (now, reason, message) = if requeue {
                            let r = format!(
                                "{cause} while {was}; re-queued (attempt {} of {})",
                                attempts + 1,
                                policy.max_attempts
                            );
                            (RunState::Queued, r.clone(), r)
                        } else {
                            (
                                RunState::Failed,
                                cause.clone(),
                                format!("{cause} while {was}; the run failed"),
                            )
                        };
                        execute(
                            tx,
                            "UPDATE runs SET state = $1, reason = $2, updated_ms = $3, \
                             lease_owner = NULL, lease_expires_ms = NULL, \
                             lease_epoch = lease_epoch + 1 WHERE id = $4",
                            &[&now.as_str(), &reason, &now_ms(), &to_i64("run id", id.0)?],
                        )
                        .await?;
                        // This store's own claim ends here: its note is not a stale write.
                        sh.held().remove(&id);
                        append_one(tx, sh, id, &warning, &message).await?;
                        if now.is_terminal() {
                            seal(tx, sh, id).await?;
                        }
                        out.push(Recovered { id, was, now });
                    }
                    Ok(out)
                }
                .boxed()
            })
            .await?;
        Ok(recovered)
    }

    /// Sets a column of a run (`set_container`, `set_branch`), fenced.
    async fn set_column(
        &self,
        id: RunId,
        column: &'static str,
        value: Option<String>,
    ) -> Result<(), StoreError> {
        self.write(move |tx, sh| {
            async move {
                let locked = lock_run(tx, id).await?;
                sh.fence(id, locked.epoch)?;
                execute(
                    tx,
                    &format!("UPDATE runs SET {column} = $1, updated_ms = $2 WHERE id = $3"),
                    &[&value, &now_ms(), &to_i64("run id", id.0)?],
                )
                .await?;
                Ok(())
            }
            .boxed()
        })
        .await
    }
}

/// `host:port/database`, for messages (never the password).
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{host}:{port}/{}",
        config.get_dbname().unwrap_or_default()
    )
}

#[async_trait::async_trait]
impl RunStore for PgStore {
    async fn enqueue_run(&self, run: NewRun) -> Result<RunId, StoreError> {
        match self.enqueue_run_capped(run, u64::MAX).await? {
            Enqueued::Queued(id) => Ok(id),
            Enqueued::CapReached { existing } => Err(StoreError::Invalid(format!(
                "{existing} runs exist for this target already"
            ))),
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
        if run.number == 0 && run.role != Role::Improve {
            return Err(StoreError::Invalid("issue or pull request number 0".into()));
        }
        let number = to_i64("number", run.number)?;
        let trigger = serde_json::to_string(&run.trigger)
            .map_err(|e| StoreError::Invalid(format!("trigger: {e}")))?;
        self.write(move |tx, _| {
            async move {
                // Every count below is of this repository's runs: one lock
                // per repository makes count and insert one step for all runners.
                execute(
                    tx,
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&format!("kiln-repo:{}/{}", run.repo.owner, run.repo.name)],
                )
                .await?;
                let role = run.role.as_str();
                if let Some(delivery) = &run.trigger.delivery
                    && let Some(row) = query_opt(
                        tx,
                        "SELECT id FROM runs WHERE repo_owner = $1 AND repo_name = $2 \
                         AND role = $3 AND number = $4 AND delivery = $5 LIMIT 1",
                        &[&run.repo.owner, &run.repo.name, &role, &number, delivery],
                    )
                    .await?
                {
                    return Ok(Enqueued::Queued(RunId(to_u64("run id", get(&row, 0)?)?)));
                }
                if max_per_target < u64::MAX {
                    let existing = count_runs(tx, &run.repo, number, run.role).await?;
                    if existing >= max_per_target {
                        return Ok(Enqueued::CapReached { existing });
                    }
                }
                let now = now_ms();
                if let Some(limit) = per_actor {
                    let row = query_opt(
                        tx,
                        "SELECT COUNT(*), MIN(created_ms) FROM runs \
                         WHERE repo_owner = $1 AND repo_name = $2 AND created_ms > $3 \
                         AND actor = $4",
                        &[
                            &run.repo.owner,
                            &run.repo.name,
                            &now.saturating_sub(limit.window_ms),
                            &run.trigger.actor,
                        ],
                    )
                    .await?
                    .ok_or_else(|| StoreError::Database("COUNT returned no row".into()))?;
                    let runs = to_u64("count", get(&row, 0)?)?;
                    let oldest: Option<i64> = get(&row, 1)?;
                    if runs >= limit.max {
                        return Ok(Enqueued::ActorLimited {
                            runs,
                            retry_at_ms: oldest.unwrap_or(now).saturating_add(limit.window_ms),
                        });
                    }
                }
                let row = query_opt(
                    tx,
                    "INSERT INTO runs (repo_owner, repo_name, role, number, trigger, delivery, \
                     actor, state, attempts, created_ms, updated_ms, script) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $8, $9) RETURNING id",
                    &[
                        &run.repo.owner,
                        &run.repo.name,
                        &role,
                        &number,
                        &trigger,
                        &run.trigger.delivery,
                        &run.trigger.actor,
                        &now,
                        &run.script,
                    ],
                )
                .await?
                .ok_or_else(|| StoreError::Database("run insert returned nothing".into()))?;
                Ok(Enqueued::Queued(RunId(to_u64("run id", get(&row, 0)?)?)))
            }
            .boxed()
        })
        .await
    }

    async fn claim_next_run(&self) -> Result<Option<Run>, StoreError> {
        let sh = &self.inner.shared;
        let client = self.client().await?;
        let now = now_ms();
        // One statement: the pick (skipping rows another claimer holds) and
        // the claim with its new lease.
        let row = query_opt(
            &client,
            &format!(
                "UPDATE runs SET state = 'preparing', attempts = attempts + 1, reason = NULL, \
                 updated_ms = $1, lease_owner = $2, lease_expires_ms = $3, \
                 lease_epoch = lease_epoch + 1 \
                 WHERE id = (SELECT id FROM runs WHERE state = 'queued' ORDER BY id LIMIT 1 \
                             FOR UPDATE SKIP LOCKED) \
                 RETURNING {RUN_COLUMNS}, lease_epoch"
            ),
            &[&now, &sh.runner, &now.saturating_add(sh.lease_ms)],
        )
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let run = run_from_row(&row)?;
        let epoch: i64 = get(&row, 14)?;
        sh.held().insert(run.id, epoch);
        Ok(Some(run))
    }

    async fn get_run(&self, id: RunId) -> Result<Run, StoreError> {
        let client = self.client().await?;
        get_run(&client, id).await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<Run>, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if let Some(repo) = &filter.repo {
            args.push(Box::new(repo.owner.clone()));
            clauses.push(format!("repo_owner = ${}", args.len()));
            args.push(Box::new(repo.name.clone()));
            clauses.push(format!("repo_name = ${}", args.len()));
        }
        if let Some(number) = filter.number {
            args.push(Box::new(to_i64("number", number)?));
            clauses.push(format!("number = ${}", args.len()));
        }
        if let Some(role) = filter.role {
            args.push(Box::new(role.as_str().to_string()));
            clauses.push(format!("role = ${}", args.len()));
        }
        if !filter.states.is_empty() {
            let states: Vec<String> = filter.states.iter().map(|s| s.as_str().into()).collect();
            args.push(Box::new(states));
            clauses.push(format!("state = ANY(${})", args.len()));
        }
        if let Some(before) = filter.before {
            args.push(Box::new(to_i64("run id", before.0)?));
            clauses.push(format!("id < ${}", args.len()));
        }
        let limit = filter.limit.unwrap_or(100).min(1000);
        args.push(Box::new(i64::try_from(limit).unwrap_or(1000)));
        let limit_mark = args.len();
        let wher = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM runs {wher} ORDER BY id DESC LIMIT ${limit_mark}");
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let client = self.client().await?;
        query(&client, &sql, &params)
            .await?
            .iter()
            .map(run_from_row)
            .collect()
    }

    async fn count_runs(&self, repo: &RepoRef, number: u64, role: Role) -> Result<u64, StoreError> {
        let client = self.client().await?;
        count_runs(&client, repo, to_i64("number", number)?, role).await
    }

    async fn run_counts(&self) -> Result<Vec<(Role, RunState, u64)>, StoreError> {
        let client = self.client().await?;
        let rows = query(
            &client,
            "SELECT role, state, COUNT(*) FROM runs GROUP BY role, state",
            &[],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let role: String = get(r, 0)?;
                let state: String = get(r, 1)?;
                let role = codec::role::parse(&role).ok_or_else(|| {
                    StoreError::Invalid(format!("stored role {role:?} is unknown"))
                })?;
                Ok((role, state.parse()?, to_u64("count", get(r, 2)?)?))
            })
            .collect()
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
        let (run, epoch) = self
            .write(move |tx, sh| {
                async move {
                    let locked = lock_run(tx, id).await?;
                    if locked.state != from {
                        return Err(StoreError::IllegalTransition {
                            run: id,
                            from,
                            to,
                            why: format!("the run is {}", locked.state),
                        });
                    }
                    sh.fence(id, locked.epoch)?;
                    let now = now_ms();
                    // Taking up a run again (after an approval) is a claim;
                    // leaving the active states lets go of the lease.
                    let (owner, expires, epoch) = if to.is_active() && !from.is_active() {
                        (
                            Some(sh.runner.clone()),
                            Some(now.saturating_add(sh.lease_ms)),
                            locked.epoch + 1,
                        )
                    } else if !to.is_active() {
                        (None, None, locked.epoch)
                    } else {
                        (
                            Some(sh.runner.clone()),
                            Some(now.saturating_add(sh.lease_ms)),
                            locked.epoch,
                        )
                    };
                    let row = query_opt(
                        tx,
                        &format!(
                            "UPDATE runs SET state = $1, reason = $2, updated_ms = $3, \
                             lease_owner = CASE WHEN $4::text IS NULL THEN NULL \
                                 ELSE COALESCE(lease_owner, $4) END, \
                             lease_expires_ms = $5, lease_epoch = $6 \
                             WHERE id = $7 RETURNING {RUN_COLUMNS}"
                        ),
                        &[
                            &to.as_str(),
                            &reason,
                            &now,
                            &owner,
                            &expires,
                            &epoch,
                            &to_i64("run id", id.0)?,
                        ],
                    )
                    .await?
                    .ok_or(StoreError::NoSuchRun(id))?;
                    let run = run_from_row(&row)?;
                    if to.is_terminal() {
                        seal(tx, sh, id).await?;
                    }
                    Ok((run, epoch))
                }
                .boxed()
            })
            .await?;
        let mut held = self.inner.shared.held();
        if !to.is_active() {
            held.remove(&id);
        } else if !from.is_active() {
            held.insert(id, epoch);
        }
        Ok(run)
    }

    async fn set_container(
        &self,
        id: RunId,
        container_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.set_column(id, "container_id", container_id).await
    }

    async fn set_branch(&self, id: RunId, branch: String) -> Result<(), StoreError> {
        self.set_column(id, "branch", Some(branch)).await
    }

    async fn resume(&self, id: RunId, by: &str, note: Option<String>) -> Result<Run, StoreError> {
        let by = by.to_string();
        let note_kind = serde_json::to_value(EventKind::Note)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.write(move |tx, sh| {
            async move {
                lock_run(tx, id).await?;
                let run = get_run(tx, id).await?;
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
                let row = query_opt(
                    tx,
                    &format!(
                        "UPDATE runs SET state = 'queued', reason = $1, trigger = $2, \
                         updated_ms = $3 WHERE id = $4 RETURNING {RUN_COLUMNS}"
                    ),
                    &[&reason, &trigger_json, &now_ms(), &to_i64("run id", id.0)?],
                )
                .await?
                .ok_or(StoreError::NoSuchRun(id))?;
                let resumed = run_from_row(&row)?;
                let message = match &note {
                    Some(n) => format!("{reason}: {n}"),
                    None => reason,
                };
                append_one(tx, sh, id, &note_kind, &message).await?;
                Ok(resumed)
            }
            .boxed()
        })
        .await
    }

    async fn recover_after_restart(
        &self,
        policy: RecoveryPolicy,
    ) -> Result<Vec<Recovered>, StoreError> {
        // This runner's runs (its previous process died), runs nobody
        // holds, and runs whose holder's lease ran out.
        self.recover(
            policy,
            "lease_owner = $2 OR lease_owner IS NULL OR lease_expires_ms < $3",
        )
        .await
    }

    async fn recover_expired(&self, policy: RecoveryPolicy) -> Result<Vec<Recovered>, StoreError> {
        self.recover(policy, "lease_owner <> $2 AND lease_expires_ms < $3")
            .await
    }

    async fn renew_leases(&self) -> Result<Vec<RunId>, StoreError> {
        let sh = &self.inner.shared;
        let held: Vec<(RunId, i64)> = sh.held().iter().map(|(r, e)| (*r, *e)).collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = held
            .iter()
            .map(|(r, _)| to_i64("run id", r.0))
            .collect::<Result<_, _>>()?;
        let epochs: Vec<i64> = held.iter().map(|(_, e)| *e).collect();
        let client = self.client().await?;
        let now = now_ms();
        // Renewed only where this runner still holds the claim it made.
        let renewed = query(
            &client,
            "UPDATE runs SET lease_expires_ms = $1 \
             FROM UNNEST($2::int8[], $3::int8[]) AS h(id, epoch) \
             WHERE runs.id = h.id AND runs.lease_epoch = h.epoch AND runs.lease_owner = $4 \
             RETURNING runs.id",
            &[&now.saturating_add(sh.lease_ms), &ids, &epochs, &sh.runner],
        )
        .await?;
        let renewed: std::collections::HashSet<i64> = renewed
            .iter()
            .map(|r| get::<i64>(r, 0))
            .collect::<Result<_, _>>()?;
        let now_epochs = query(
            &client,
            "SELECT id, lease_epoch FROM runs WHERE id = ANY($1)",
            &[&ids],
        )
        .await?;
        let now_epochs: HashMap<i64, i64> = now_epochs
            .iter()
            .map(|r| Ok((get::<i64>(r, 0)?, get::<i64>(r, 1)?)))
            .collect::<Result<_, StoreError>>()?;
        let mut lost = Vec::new();
        let mut held = sh.held();
        for (run, epoch) in ids.iter().zip(&epochs) {
            if renewed.contains(run) {
                continue;
            }
            let id = RunId(to_u64("run id", *run)?);
            if now_epochs.get(run) != Some(epoch) {
                // Taken over: keep the stale epoch so the fence holds.
                lost.push(id);
            } else {
                // Let go of without a takeover (cancelled elsewhere): nothing to fence.
                held.remove(&id);
            }
        }
        Ok(lost)
    }

    async fn lease(&self, run: RunId) -> Result<Option<Lease>, StoreError> {
        let client = self.client().await?;
        let row = query_opt(
            &client,
            "SELECT lease_owner, lease_epoch, lease_expires_ms FROM runs WHERE id = $1",
            &[&to_i64("run id", run.0)?],
        )
        .await?
        .ok_or(StoreError::NoSuchRun(run))?;
        let owner: Option<String> = get(&row, 0)?;
        let expires: Option<i64> = get(&row, 2)?;
        Ok(match (owner, expires) {
            (Some(runner), Some(expires_ms)) => Some(Lease {
                runner,
                epoch: to_u64("lease epoch", get(&row, 1)?)?,
                expires_ms,
            }),
            _ => None,
        })
    }

    async fn append_event(
        &self,
        run: RunId,
        kind: &EventKind,
        message: &str,
    ) -> Result<u64, StoreError> {
        let kind = serde_json::to_value(kind)
            .map_err(|e| StoreError::Invalid(format!("event kind: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.enqueue_job(Job::Event {
            run,
            kind,
            message: message.to_string(),
            reply: Some(tx),
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.client().await?;
        events_after(&client, run, after_seq, limit).await
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

    async fn transcript(&self, run: RunId) -> Result<Transcript, StoreError> {
        self.flush().await?;
        let mut client = self.client().await?;
        // One snapshot: the run, its events and its seal agree.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let r = get_run(&tx, run).await?;
        let rows = query(
            &tx,
            "SELECT seq, at_ms, kind, message, hash FROM events WHERE run_id = $1 ORDER BY seq",
            &[&to_i64("run id", run.0)?],
        )
        .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut prev = hex::encode(chain::GENESIS);
        for row in &rows {
            let kind: String = get(row, 2)?;
            let hash = hex::encode(get::<Vec<u8>>(row, 4)?);
            events.push(TranscriptEvent {
                seq: to_u64("seq", get(row, 0)?)?,
                at_ms: get(row, 1)?,
                kind: serde_json::from_str(&kind).unwrap_or(serde_json::Value::String(kind)),
                message: get(row, 3)?,
                prev: std::mem::replace(&mut prev, hash.clone()),
                hash,
            });
        }
        let seal = match query_opt(
            &tx,
            "SELECT seq, hash, state, signature, public_key, signed_ms FROM run_seals \
             WHERE run_id = $1",
            &[&to_i64("run id", run.0)?],
        )
        .await?
        {
            Some(row) => Some(Seal {
                seq: to_u64("seq", get(&row, 0)?)?,
                hash: hex::encode(get::<Vec<u8>>(&row, 1)?),
                state: get(&row, 2)?,
                signature: hex::encode(get::<Vec<u8>>(&row, 3)?),
                public_key: get(&row, 4)?,
                signed_ms: get(&row, 5)?,
            }),
            None => None,
        };
        tx.commit().await.map_err(pg)?;
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

    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue_job(Job::Flush(tx)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn record_delivery(
        &self,
        id: &str,
        event: &str,
        body_sha256: &str,
    ) -> Result<DeliveryRecord, StoreError> {
        check_delivery_id(id)?;
        let client = self.client().await?;
        insert_delivery(&client, id, event, body_sha256, None).await
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
        let client = self.client().await?;
        insert_delivery(&client, id, event, &sha, Some(body)).await
    }

    async fn claim_delivery(
        &self,
        claim: &DeliveryClaim,
    ) -> Result<Option<AcceptedDelivery>, StoreError> {
        if claim.runner.is_empty() || claim.lease_ms <= 0 {
            return Err(StoreError::Invalid(
                "a delivery claim needs a runner id and a positive lease".into(),
            ));
        }
        let client = self.client().await?;
        let now = now_ms();
        // One statement: the pick (skipping rows another claimant holds)
        // and the claim.
        let row = query_opt(
            &client,
            "UPDATE deliveries SET claimed_by = $1, claimed_ms = $2 \
             WHERE id = (SELECT id FROM deliveries \
                 WHERE status = 'received' AND body IS NOT NULL \
                 AND (claimed_by IS NULL OR claimed_ms <= $3 \
                      OR (claimed_by = $1 AND claimed_ms < $4)) \
                 ORDER BY received_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, event, body, received_ms",
            &[
                &claim.runner,
                &now,
                &now.saturating_sub(claim.lease_ms),
                &claim.since_ms,
            ],
        )
        .await?;
        row.map(|row| {
            Ok(AcceptedDelivery {
                id: get(&row, 0)?,
                event: get(&row, 1)?,
                body: get(&row, 2)?,
                received_ms: get(&row, 3)?,
            })
        })
        .transpose()
    }

    async fn finish_delivery(
        &self,
        id: &str,
        status: DeliveryStatus,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        check_delivery_id(id)?;
        let client = self.client().await?;
        let n = execute(
            &client,
            "UPDATE deliveries SET status = $1, reason = $2, finished_ms = $3, body = NULL \
             WHERE id = $4",
            &[&status.as_str(), &reason, &now_ms(), &id],
        )
        .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("delivery {id}")));
        }
        Ok(())
    }

    async fn get_delivery(&self, id: &str) -> Result<Delivery, StoreError> {
        check_delivery_id(id)?;
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("delivery {id}")))?;
        delivery_from_row(&row)
    }

    async fn begin_effect(
        &self,
        run: RunId,
        effect_id: &str,
        key: &str,
        intent: serde_json::Value,
    ) -> Result<Option<EffectLogEntry>, StoreError> {
        if key.is_empty() || key.len() > 200 || effect_id.is_empty() || effect_id.len() > 200 {
            return Err(StoreError::Invalid(
                "an effect's key and id must be 1-200 bytes".into(),
            ));
        }
        let (effect, key, intent) = (effect_id.to_string(), key.to_string(), intent.to_string());
        self.write(move |tx, sh| {
            async move {
                // The run's row lock orders this against a takeover, and
                // a runner whose lease moved on is refused here.
                let locked = lock_run(tx, run).await?;
                sh.fence(run, locked.epoch)?;
                // The key's row lock (if any) makes two begins of one key
                // take turns.
                let earlier = match query_opt(
                    tx,
                    &format!("SELECT {EFFECT_LOG_COLUMNS} FROM effect_log WHERE key = $1 FOR UPDATE"),
                    &[&key],
                )
                .await?
                {
                    Some(row) => Some(effect_log_from_row(&row)?),
                    None => None,
                };
                let now = now_ms();
                let run_id = to_i64("run id", run.0)?;
                match &earlier {
                    None => {
                        execute(
                            tx,
                            "INSERT INTO effect_log (key, run_id, effect_id, intent, state, attempts, \
                             created_ms, updated_ms) VALUES ($1, $2, $3, $4, 'sending', 1, $5, $5)",
                            &[&key, &run_id, &effect, &intent, &now],
                        )
                        .await?;
                    }
                    Some(e) if e.run != run => {
                        return Err(StoreError::Invalid(format!(
                            "effect key {key} belongs to run {}, not {run}",
                            e.run
                        )));
                    }
                    Some(e)
                        if matches!(
                            e.state,
                            EffectLogState::NotApplied | EffectLogState::Failed
                        ) =>
                    {
                        execute(
                            tx,
                            "UPDATE effect_log SET state = 'sending', intent = $1, \
                             attempts = attempts + 1, updated_ms = $2 WHERE key = $3",
                            &[&intent, &now, &key],
                        )
                        .await?;
                    }
                    // Applied: never again. Sending: in doubt, the caller looks first.
                    Some(_) => {}
                }
                Ok(earlier)
            }
            .boxed()
        })
        .await
    }

    async fn finish_effect(
        &self,
        key: &str,
        outcome: EffectOutcome,
    ) -> Result<EffectLogEntry, StoreError> {
        let key = key.to_string();
        let (state, text) = match outcome {
            EffectOutcome::Applied { at } => (EffectLogState::Applied, at),
            EffectOutcome::NotApplied { why } => (EffectLogState::NotApplied, Some(why)),
            EffectOutcome::Failed { error } => (EffectLogState::Failed, Some(error)),
        };
        self.write(move |tx, _| {
            async move {
                let n = execute(
                    tx,
                    "UPDATE effect_log SET state = $1, outcome = $2, updated_ms = $3 WHERE key = $4",
                    &[&state.as_str(), &text, &now_ms(), &key],
                )
                .await?;
                if n == 0 {
                    return Err(StoreError::NotFound(format!("effect {key}")));
                }
                get_effect_log(tx, &key)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("effect {key}")))
            }
            .boxed()
        })
        .await
    }

    async fn effects_in_doubt(&self) -> Result<Vec<EffectLogEntry>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!(
                "SELECT {EFFECT_LOG_COLUMNS} FROM effect_log WHERE state = 'sending' \
                 ORDER BY created_ms, key"
            ),
            &[],
        )
        .await?
        .iter()
        .map(effect_log_from_row)
        .collect()
    }

    async fn effect_log(&self, run: RunId) -> Result<Vec<EffectLogEntry>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!(
                "SELECT {EFFECT_LOG_COLUMNS} FROM effect_log WHERE run_id = $1 \
                 ORDER BY created_ms, key"
            ),
            &[&to_i64("run id", run.0)?],
        )
        .await?
        .iter()
        .map(effect_log_from_row)
        .collect()
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
        self.write(move |tx, sh| {
            async move {
                let locked = lock_run(tx, run).await?;
                sh.fence(run, locked.epoch)?;
                let n = execute(
                    tx,
                    "INSERT INTO approvals (run_id, effect_id, proposal, state, created_ms) \
                     VALUES ($1, $2, $3, 'pending', $4) ON CONFLICT DO NOTHING",
                    &[
                        &to_i64("run id", run.0)?,
                        &effect,
                        &proposal.to_string(),
                        &now_ms(),
                    ],
                )
                .await?;
                if n == 0 {
                    return Err(StoreError::EffectAlreadyHeld { run, effect });
                }
                get_effect(tx, run, &effect).await
            }
            .boxed()
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
            .write(move |tx, _| {
                async move {
                    let row = query_opt(
                        tx,
                        &format!(
                            "UPDATE approvals SET state = $1, decided_by = $2, reason = $3, \
                             decided_ms = $4 WHERE run_id = $5 AND effect_id = $6 \
                             AND state = 'pending' RETURNING {APPROVAL_COLUMNS}"
                        ),
                        &[
                            &state.as_str(),
                            &by,
                            &reason,
                            &now_ms(),
                            &to_i64("run id", run.0)?,
                            &effect,
                        ],
                    )
                    .await?;
                    let Some(row) = row else {
                        let held = get_effect(tx, run, &effect).await?;
                        return Err(StoreError::AlreadyDecided {
                            run,
                            effect,
                            state: held.state,
                            by: held.decided_by.unwrap_or_default(),
                        });
                    };
                    execute(
                        tx,
                        "SELECT pg_notify($1, $2)",
                        &[&CHANNEL, &format!("d:{}", run.0)],
                    )
                    .await?;
                    approval_from_row(&row)
                }
                .boxed()
            })
            .await?;
        self.inner.decisions.send_modify(|n| *n = n.wrapping_add(1));
        Ok(decided)
    }

    async fn get_effect(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError> {
        let client = self.client().await?;
        get_effect(&client, run, effect_id).await
    }

    async fn pending_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals \
                 WHERE run_id = $1 AND state = 'pending' ORDER BY created_ms, effect_id"
            ),
            &[&to_i64("run id", run.0)?],
        )
        .await?
        .iter()
        .map(approval_from_row)
        .collect()
    }

    async fn held_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!(
                "SELECT {APPROVAL_COLUMNS} FROM approvals \
                 WHERE run_id = $1 ORDER BY created_ms, effect_id"
            ),
            &[&to_i64("run id", run.0)?],
        )
        .await?
        .iter()
        .map(approval_from_row)
        .collect()
    }

    async fn wait_for_decision(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError> {
        // Subscribe before looking, so a decision between the look and the
        // wait still wakes us. Decisions made by other runners arrive on the
        // channel; the periodic look covers a LISTEN connection being re-made.
        let mut changed = self.inner.decisions.subscribe();
        loop {
            let held = self.get_effect(run, effect_id).await?;
            if held.state != ApprovalState::Pending {
                return Ok(held);
            }
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_secs(5), changed.changed()).await
            {
                return Err(StoreError::Closed);
            }
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
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!(
                "INSERT INTO api_tokens (name, scope, sha256, created_ms) \
                 VALUES ($1, $2, $3, $4) RETURNING {TOKEN_COLUMNS}"
            ),
            &[&name, &scope.as_str(), &sha, &now_ms()],
        )
        .await?
        .ok_or_else(|| StoreError::Database("token insert returned nothing".into()))?;
        Ok(NewToken {
            token: token_from_row(&row)?,
            plaintext,
        })
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<ApiToken>, StoreError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(
                "token hash must be 64 hex digits".into(),
            ));
        }
        let sha = sha256.to_ascii_lowercase();
        let client = self.client().await?;
        query_opt(
            &client,
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = $1"),
            &[&sha],
        )
        .await?
        .as_ref()
        .map(token_from_row)
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    async fn revoke_token(&self, id: u64) -> Result<ApiToken, StoreError> {
        let sql_id = to_i64("token id", id)?;
        let client = self.client().await?;
        let row = query_opt(
            &client,
            &format!(
                "UPDATE api_tokens SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2 \
                 RETURNING {TOKEN_COLUMNS}"
            ),
            &[&now_ms(), &sql_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("token {id}")))?;
        token_from_row(&row)
    }

    async fn watch_schedule(&self, name: &str, now_ms: i64) -> Result<ScheduleRecord, StoreError> {
        let client = self.client().await?;
        execute(
            &client,
            "INSERT INTO schedules (name, since_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &now_ms],
        )
        .await?;
        let row = query_opt(
            &client,
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE name = $1"),
            &[&name],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("schedule {name}")))?;
        schedule_from_row(&row)
    }

    async fn claim_schedule(
        &self,
        name: &str,
        due_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = execute(
            &client,
            "UPDATE schedules SET last_due_ms = $2, last_fired_ms = $3 \
             WHERE name = $1 AND GREATEST(COALESCE(last_due_ms, since_ms), since_ms) < $2",
            &[&name, &due_ms, &now_ms],
        )
        .await?;
        Ok(n == 1)
    }

    async fn schedule_records(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let client = self.client().await?;
        query(
            &client,
            &format!("SELECT {SCHEDULE_COLUMNS} FROM schedules ORDER BY name"),
            &[],
        )
        .await?
        .iter()
        .map(schedule_from_row)
        .collect()
    }
}

#[cfg(test)]
mod tests;
