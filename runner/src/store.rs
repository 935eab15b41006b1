//! The run store: runs and their state machine, the append-only event log
//! with live fan-out, webhook deliveries (replay protection), effects held
//! for approval, and API tokens.
//!
//! Everything goes through the object-safe [`RunStore`] trait so the API,
//! intake and the worker hold an `Arc<dyn RunStore>` and a Postgres store can
//! come later. [`SqliteStore`] is the embedded implementation: one writer
//! thread that commits whatever is queued in one transaction (group commit),
//! and a small pool of read connections used from `spawn_blocking`, so no
//! tokio worker thread ever waits on SQLite.
//!
//! A run moves through [`RunState`]s; [`RunState::may_become`] is the one
//! place the legal transitions are written down:
//! ```text
//! queued ─► preparing ─► running ⇄ awaiting-approval
//!   │           │           │            │
//!   └───────────┴───────────┴────────────┴─► succeeded* | failed | cancelled | blocked
//! ```
//! (*`succeeded` only from `running`.) A terminal state is final; only
//! [`RunStore::recover_after_restart`] puts an interrupted run back in the
//! queue.

mod codec;
pub mod config;
#[cfg(test)]
mod contract;
mod fanout;
mod postgres;
mod schema;
mod sink;
mod sqlite;
#[doc(hidden)]
pub mod testing;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::forge::RepoRef;
use crate::policy::Trust;
use crate::session::EventKind;

pub use postgres::{PG_SCHEMA_VERSION, PgOptions, PgStore};
pub use schema::SCHEMA_VERSION;
pub use sink::StoreEvents;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

/// A run's id; shown as `r12`, parsed from `r12` or `12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

impl FromStr for RunId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('r').unwrap_or(s);
        match digits.parse::<u64>() {
            Ok(n) if n > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(RunId(n)),
            _ => Err(StoreError::Invalid(format!(
                "run id {s:?} is not r<number> (e.g. r12)"
            ))),
        }
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Waiting for a worker.
    Queued,
    /// Claimed: workspace and container being prepared.
    Preparing,
    /// The role plugin is running.
    Running,
    /// Stopped until a held effect is approved or denied.
    AwaitingApproval,
    /// Finished and its effects went through.
    Succeeded,
    /// Ended by an error (the reason says which).
    Failed,
    /// Stopped by an operator.
    Cancelled,
    /// Refused before or while running (policy, budget, re-run cap); the reason says why.
    Blocked,
}

impl RunState {
    /// Every state, in life order.
    pub const ALL: [RunState; 8] = [
        RunState::Queued,
        RunState::Preparing,
        RunState::Running,
        RunState::AwaitingApproval,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Blocked,
    ];

    /// The name stored and shown (`awaiting-approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Preparing => "preparing",
            RunState::Running => "running",
            RunState::AwaitingApproval => "awaiting-approval",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Blocked => "blocked",
        }
    }

    /// True once the run can no longer change.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Blocked
        )
    }

    /// True while a runner process owns the run (what a restart interrupts).
    /// A run awaiting approval is not owned: its worker has ended and its
    /// sandbox is gone, and its held effects are decided from the store alone,
    /// so a restart must leave it waiting for the human.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Preparing | RunState::Running)
    }

    /// Whether `self → to` is a legal transition.
    pub fn may_become(self, to: RunState) -> bool {
        use RunState::*;
        match (self, to) {
            (Queued, Preparing) => true,
            (Preparing, Running) => true,
            (Running, AwaitingApproval) | (AwaitingApproval, Running) => true,
            // A run whose plugin finished ends once its held effects are decided.
            (Running | AwaitingApproval, Succeeded) => true,
            (from, Failed | Cancelled | Blocked) => !from.is_terminal(),
            _ => false,
        }
    }

    /// Whether a transition into this state must say why.
    pub fn needs_reason(self) -> bool {
        matches!(self, RunState::Failed | RunState::Blocked)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown run state {s:?}")))
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum TriggerKind {
    /// An issue was opened.
    IssueOpened,
    /// A label was added to an issue or pull request.
    Label {
        /// The label.
        label: String,
    },
    /// `plan-approved` was added to the spec pull request of the run's issue.
    PlanApproved {
        /// The spec pull request.
        pull_request: u64,
    },
    /// Kiln opened (or reopened) a pull request on one of its branches.
    PullRequestOpened,
    /// A trusted actor asked for the run in a comment (`@kiln …`, `/kiln …`).
    Comment {
        /// The comment's forge id.
        comment_id: u64,
    },
    /// An operator started it through the API or CLI.
    Manual,
    /// New commits arrived on the head of a Kiln pull request.
    PullRequestSynchronized,
    /// Kiln's own review of a Kiln pull request was submitted (verification
    /// follows review).
    Reviewed {
        /// The review's forge id.
        review_id: u64,
    },
    /// A maintainer requested changes on a Kiln pull request: an answering
    /// implementation run on that pull request's branch.
    ChangesRequested {
        /// The review's forge id.
        review_id: u64,
    },
    /// `/kiln fix [note]` on a Kiln pull request: an answering run, like
    /// [`TriggerKind::ChangesRequested`], with the note as instructions.
    Fix {
        /// The command comment's forge id.
        comment_id: u64,
    },
    /// The reporter answered on an issue labelled `needs-info`.
    ReporterReplied {
        /// The reply's forge id.
        comment_id: u64,
    },
    /// A `[[schedules]]` entry of `kiln.toml` fired.
    Schedule {
        /// The schedule's name.
        name: String,
        /// Its `args`, handed to the run as `task.args`.
        #[serde(default)]
        args: Vec<(String, String)>,
    },
    /// `/kiln retry`: the last run of the target, again.
    Retry {
        /// The run retried.
        of: RunId,
        /// The command comment's forge id.
        comment_id: u64,
    },
}

impl TriggerKind {
    /// True when the trigger is something a person did on the forge, so
    /// the trigger's actor is a forge login; false for a run an operator
    /// queued (its actor is a token's name) or a schedule fired.
    pub fn from_forge(&self) -> bool {
        !matches!(self, TriggerKind::Manual | TriggerKind::Schedule { .. })
    }

    /// True for the triggers whose implementation run answers a review on
    /// the pull request's own branch instead of opening a new one.
    pub fn answers_review(&self) -> bool {
        matches!(
            self,
            TriggerKind::ChangesRequested { .. } | TriggerKind::Fix { .. }
        )
    }
}

/// Who and what started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// What happened.
    #[serde(flatten)]
    pub kind: TriggerKind,
    /// The forge login that caused it.
    pub actor: String,
    /// The actor's trust at trigger time.
    #[serde(with = "codec::trust")]
    pub actor_trust: Trust,
    /// The webhook delivery id, when it came from one.
    pub delivery: Option<String>,
    /// Sanitized instructions from the triggering comment of a trusted actor.
    pub instructions: Option<String>,
}

/// A run to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    /// Repository.
    pub repo: RepoRef,
    /// Role to run.
    pub role: Role,
    /// Issue or pull request number.
    pub number: u64,
    /// What started it.
    pub trigger: Trigger,
    /// A model script (JSON, as `--script` reads it) replayed for this run
    /// instead of the runner's model; `None`: the runner's model.
    pub script: Option<String>,
}

/// What [`RunStore::enqueue_run_capped`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The run was queued.
    Queued(RunId),
    /// The cap was reached; nothing was queued.
    CapReached {
        /// Runs of the role that already exist for the target.
        existing: u64,
    },
    /// The actor's runs in the window reached [`ActorLimit::max`]; nothing was queued.
    ActorLimited {
        /// The actor's runs on the repository within the window.
        runs: u64,
        /// When the oldest of them leaves the window (a run may be queued
        /// again), milliseconds since the Unix epoch.
        retry_at_ms: i64,
    },
}

/// A limit on runs one actor triggers on one repository within a window
/// (`[intake] runs_per_actor_per_hour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActorLimit {
    /// Most runs in the window.
    pub max: u64,
    /// The window, in milliseconds.
    pub window_ms: i64,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Id.
    pub id: RunId,
    /// Repository.
    pub repo: RepoRef,
    /// Role.
    #[serde(with = "codec::role")]
    pub role: Role,
    /// Issue or pull request number.
    pub number: u64,
    /// What started it.
    pub trigger: Trigger,
    /// Current state.
    pub state: RunState,
    /// Why it is in this state (set by the last transition that gave one).
    pub reason: Option<String>,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Last change, milliseconds since the Unix epoch.
    pub updated_ms: i64,
    /// The sandbox container, while one exists.
    pub container_id: Option<String>,
    /// The run's `kiln/*` branch, once chosen.
    pub branch: Option<String>,
    /// The model script it was queued with ([`NewRun::script`]). Not
    /// served: only the worker replays it.
    #[serde(skip)]
    pub script: Option<String>,
}

/// Which runs [`RunStore::list_runs`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this repository.
    pub repo: Option<RepoRef>,
    /// Only this issue or pull request number.
    pub number: Option<u64>,
    /// Only this role.
    pub role: Option<Role>,
    /// Only these states (empty: any).
    pub states: Vec<RunState>,
    /// Only runs older than this id (paging).
    pub before: Option<RunId>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// What [`RunStore::recover_after_restart`] does with interrupted runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// Put interrupted runs back in the queue instead of failing them.
    pub requeue: bool,
    /// Fail instead of re-queueing once a run has been claimed this often.
    pub max_attempts: u32,
}

impl Default for RecoveryPolicy {
    /// Fail interrupted runs (nothing re-queued): a half-done run may have
    /// made effects, so running it again is an operator's decision.
    fn default() -> Self {
        RecoveryPolicy {
            requeue: false,
            max_attempts: 3,
        }
    }
}

/// One run a restart interrupted, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The run.
    pub id: RunId,
    /// The state it was left in.
    pub was: RunState,
    /// `Queued` or `Failed`.
    pub now: RunState,
}

/// One committed event of a run's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The run.
    pub run: RunId,
    /// Position in the run's log, from 1, without gaps.
    pub seq: u64,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The [`EventKind`] as JSON (`{"type":"denied","blame":"guest"}`).
    pub kind: serde_json::Value,
    /// Text for people.
    pub message: String,
}

impl StoredEvent {
    /// The event's type (`model-turn`, `policy`, ...), `event` if unknown.
    pub fn type_name(&self) -> &str {
        self.kind
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("event")
    }

    /// The kind's other fields as `name`, `value` text pairs, for display
    /// (the CLI, the dashboard and the Markdown transcript).
    pub fn kind_fields(&self, separator: &str) -> Vec<String> {
        self.kind
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "type")
            .map(|(k, v)| match v.as_str() {
                Some(s) => format!("{k}{separator}{s}"),
                None => format!("{k}{separator}{v}"),
            })
            .collect()
    }
}

/// A run's events: the backlog, then live events, each exactly once in `seq`
/// order. Shared (`Arc`): one committed event goes to every watcher uncopied.
pub type EventStream = BoxStream<'static, Result<Arc<StoredEvent>, StoreError>>;

/// Whether a webhook delivery id was seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryRecord {
    /// First time: process it.
    New,
    /// Seen before: a replay (or GitHub's redelivery), do not process it again.
    Duplicate {
        /// When it was first received, milliseconds since the Unix epoch.
        first_seen_ms: i64,
        /// What became of it.
        status: DeliveryStatus,
    },
}

/// What became of a webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryStatus {
    /// Accepted, not processed yet.
    Received,
    /// Processed; runs were queued.
    Queued,
    /// Processed; nothing to do (the reason says why).
    Ignored,
    /// Refused (untrusted actor, re-run cap); the reason says why.
    Refused,
    /// Processing failed.
    Failed,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 5] = [
        DeliveryStatus::Received,
        DeliveryStatus::Queued,
        DeliveryStatus::Ignored,
        DeliveryStatus::Refused,
        DeliveryStatus::Failed,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Received => "received",
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Ignored => "ignored",
            DeliveryStatus::Refused => "refused",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown delivery status {s:?}")))
    }
}

/// A webhook delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// GitHub's `X-GitHub-Delivery`.
    pub id: String,
    /// GitHub's `X-GitHub-Event`.
    pub event: String,
    /// SHA-256 of the body, hex.
    pub body_sha256: String,
    /// What became of it.
    pub status: DeliveryStatus,
    /// Why, for ignored, refused and failed deliveries.
    pub reason: Option<String>,
    /// When it arrived, milliseconds since the Unix epoch.
    pub received_ms: i64,
    /// When processing finished.
    pub finished_ms: Option<i64>,
}

/// A webhook delivery accepted and not processed yet, as
/// [`RunStore::claim_delivery`] hands it to the runner that processes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedDelivery {
    /// GitHub's `X-GitHub-Delivery`.
    pub id: String,
    /// GitHub's `X-GitHub-Event`.
    pub event: String,
    /// The body exactly as received (its signature was checked before it was stored).
    pub body: Vec<u8>,
    /// When it arrived, milliseconds since the Unix epoch.
    pub received_ms: i64,
}

/// In whose name, and for how long, a runner claims accepted deliveries
/// ([`RunStore::claim_delivery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryClaim {
    /// The runner's id (stable across its restarts).
    pub runner: String,
    /// When this runner process started, milliseconds since the Unix epoch:
    /// a claim in its name made before then is a dead predecessor's, and is
    /// taken over at once.
    pub since_ms: i64,
    /// How long a claim holds; after that any runner may take the delivery
    /// over. Longer than processing may take.
    pub lease_ms: i64,
}

/// Where a forge write stands in the effect log ([`crate::effects`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EffectLogState {
    /// Its intent is committed and it is being (or was being) sent: in
    /// doubt until the forge's answer, or a look at the forge, settles it.
    Sending,
    /// The forge has it (the outcome says where).
    Applied,
    /// It never reached the forge (the outcome says why): safe to send again.
    NotApplied,
    /// The forge refused it (the outcome is the error).
    Failed,
}

impl EffectLogState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            EffectLogState::Sending => "sending",
            EffectLogState::Applied => "applied",
            EffectLogState::NotApplied => "not-applied",
            EffectLogState::Failed => "failed",
        }
    }
}

impl FromStr for EffectLogState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            EffectLogState::Sending,
            EffectLogState::Applied,
            EffectLogState::NotApplied,
            EffectLogState::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| StoreError::Invalid(format!("unknown effect log state {s:?}")))
    }
}

impl fmt::Display for EffectLogState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One forge write in the effect log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectLogEntry {
    /// Its idempotency key (`r12.e3.<digest>`).
    pub key: String,
    /// The run that made it.
    pub run: RunId,
    /// The run's effect id.
    pub effect_id: String,
    /// What is sent and where ([`crate::effects::Intent`], as JSON).
    pub intent: serde_json::Value,
    /// Where it stands.
    pub state: EffectLogState,
    /// Where it landed (applied), why not (not applied), or the error (failed).
    pub outcome: Option<String>,
    /// How many times it was armed for sending.
    pub attempts: u32,
    /// When its intent was first committed, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Its last change.
    pub updated_ms: i64,
}

/// How a forge write ended ([`RunStore::finish_effect`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectOutcome {
    /// The forge has it.
    Applied {
        /// Where (`#12 comment 5012`), when known.
        at: Option<String>,
    },
    /// It never reached the forge.
    NotApplied {
        /// Why.
        why: String,
    },
    /// The forge refused it.
    Failed {
        /// The error.
        error: String,
    },
}

/// The state of a held effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// Approved: the effect may go through.
    Approved,
    /// Denied: the effect is dropped.
    Denied,
}

impl ApprovalState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
        }
    }
}

impl FromStr for ApprovalState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Denied,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| StoreError::Invalid(format!("unknown approval state {s:?}")))
    }
}

impl fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A human's decision on a held effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let it through.
    Approve,
    /// Drop it.
    Deny,
}

/// An effect held for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The run that proposed it.
    pub run: RunId,
    /// The effect id the run gave it.
    pub effect_id: String,
    /// The proposal, as JSON.
    pub proposal: serde_json::Value,
    /// Pending, approved or denied.
    pub state: ApprovalState,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Why they decided so.
    pub reason: Option<String>,
    /// When it was held, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// When it was decided.
    pub decided_ms: Option<i64>,
}

/// What an API token may do; ordered, a higher scope includes the lower ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Read runs and events.
    Viewer,
    /// Also steer, approve, deny, cancel.
    Operator,
    /// Also manage tokens.
    Admin,
}

impl TokenScope {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Viewer => "viewer",
            TokenScope::Operator => "operator",
            TokenScope::Admin => "admin",
        }
    }
}

impl FromStr for TokenScope {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [TokenScope::Viewer, TokenScope::Operator, TokenScope::Admin]
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "unknown token scope {s:?} (viewer, operator or admin)"
                ))
            })
    }
}

/// An API token as stored (the plaintext is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Id.
    pub id: u64,
    /// A name for people.
    pub name: String,
    /// What it may do.
    pub scope: TokenScope,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Revocation time, once revoked.
    pub revoked_ms: Option<i64>,
}

/// A token just created: the only time its plaintext exists.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    /// The stored record.
    pub token: ApiToken,
    /// The plaintext (`kiln_…`), to hand to the user once.
    pub plaintext: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &self.token)
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// Why a store call failed. Cloneable: one commit failure answers every
/// call that was batched into it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database file is from a newer Kiln.
    #[error(
        "database {path} has schema version {found}, newer than this kiln supports ({supported}); \
         use a newer kiln or restore a backup"
    )]
    SchemaTooNew {
        /// The database file.
        path: String,
        /// Its `user_version`.
        found: i64,
        /// The newest version this binary knows.
        supported: i64,
    },
    /// The run does not exist.
    #[error("no run {0}")]
    NoSuchRun(RunId),
    /// A transition the state machine does not allow, or whose `from` is stale.
    #[error("run {run}: cannot go from {from} to {to}: {why}")]
    IllegalTransition {
        /// The run.
        run: RunId,
        /// The state the caller expected to leave.
        from: RunState,
        /// The state asked for.
        to: RunState,
        /// Why not.
        why: String,
    },
    /// No such held effect.
    #[error("run {run} has no held effect {effect:?}")]
    NoSuchEffect {
        /// The run.
        run: RunId,
        /// The effect id.
        effect: String,
    },
    /// The effect was held already (effect ids are unique per run).
    #[error("run {run}: effect {effect:?} is already held")]
    EffectAlreadyHeld {
        /// The run.
        run: RunId,
        /// The effect id.
        effect: String,
    },
    /// The effect was decided already; a decision is final.
    #[error("run {run}: effect {effect:?} was already {state} by {by}")]
    AlreadyDecided {
        /// The run.
        run: RunId,
        /// The effect id.
        effect: String,
        /// The earlier decision.
        state: ApprovalState,
        /// Who made it.
        by: String,
    },
    /// No such delivery or token.
    #[error("not found: {0}")]
    NotFound(String),
    /// A malformed argument or a malformed stored value.
    #[error("invalid: {0}")]
    Invalid(String),
    /// SQLite failed (I/O, corruption, constraint).
    #[error("database: {0}")]
    Database(String),
    /// The ledger's host key could not be loaded or made.
    #[error("{0}")]
    HostKey(String),
    /// The store was closed (its writer is gone).
    #[error("the store is closed")]
    Closed,
    /// This runner's lease on the run was taken over (it expired and
    /// another runner recovered the run): its writes are refused.
    #[error(
        "run {run}: runner {runner} lost its lease (epoch {held}, the run is now at epoch \
         {now}); its write is refused"
    )]
    LeaseLost {
        /// The run.
        run: RunId,
        /// The runner whose lease is stale.
        runner: String,
        /// The lease epoch it held.
        held: u64,
        /// The run's lease epoch now.
        now: u64,
    },
}

/// Who holds an active run: the runner that claimed it, until when, and
/// the claim's epoch (bumped by every claim and recovery, so a stale
/// holder's writes can be told apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The runner id.
    pub runner: String,
    /// The claim's epoch.
    pub epoch: u64,
    /// When it expires unless renewed, milliseconds since the Unix epoch.
    pub expires_ms: i64,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

/// Kiln's persistent state. Object-safe: hold it as `Arc<dyn RunStore>`.
#[async_trait::async_trait]
pub trait RunStore: Send + Sync {
    /// Queue a run; returns its id.
    async fn enqueue_run(&self, run: NewRun) -> Result<RunId, StoreError>;
    /// Queue a run unless `max_per_target` runs of its role already exist
    /// for its issue or pull request; the count and the insert are one
    /// atomic step, so concurrent callers cannot both slip under the cap.
    /// A run whose trigger names a delivery that already queued the same
    /// role on the same target is not queued again: the existing run's id
    /// is returned, so a delivery processed twice queues once.
    async fn enqueue_run_capped(
        &self,
        run: NewRun,
        max_per_target: u64,
    ) -> Result<Enqueued, StoreError> {
        self.enqueue_run_limited(run, max_per_target, None).await
    }
    /// [`RunStore::enqueue_run_capped`], and also not past `per_actor`: the
    /// runs the trigger's actor started on the repository within the window
    /// are counted in the same atomic step as the insert.
    async fn enqueue_run_limited(
        &self,
        run: NewRun,
        max_per_target: u64,
        per_actor: Option<ActorLimit>,
    ) -> Result<Enqueued, StoreError>;
    /// Atomically take the oldest queued run (it becomes `preparing`, its
    /// `attempts` grows by one). Two workers never get the same run.
    async fn claim_next_run(&self) -> Result<Option<Run>, StoreError>;
    /// One run.
    async fn get_run(&self, id: RunId) -> Result<Run, StoreError>;
    /// Runs matching `filter`, newest first.
    async fn list_runs(&self, filter: RunFilter) -> Result<Vec<Run>, StoreError>;
    /// How many runs of `role` exist for this issue or pull request (the re-run cap).
    async fn count_runs(&self, repo: &RepoRef, number: u64, role: Role) -> Result<u64, StoreError>;
    /// How many runs there are of each role in each state (`GET /metrics`).
    async fn run_counts(&self) -> Result<Vec<(Role, RunState, u64)>, StoreError>;
    /// Move a run from `from` to `to`. Fails if the run is not in `from`,
    /// the transition is illegal, or `to` needs a reason and none is given.
    async fn transition(
        &self,
        id: RunId,
        from: RunState,
        to: RunState,
        reason: Option<String>,
    ) -> Result<Run, StoreError>;
    /// Record (or clear) the run's sandbox container.
    async fn set_container(
        &self,
        id: RunId,
        container_id: Option<String>,
    ) -> Result<(), StoreError>;
    /// Record the run's branch.
    async fn set_branch(&self, id: RunId, branch: String) -> Result<(), StoreError>;
    /// Put a finished run back in the queue to continue its work (`kiln
    /// resume`): `note` becomes the run's instructions, and an event says
    /// who resumed it. Only a run in a final state can be resumed.
    async fn resume(&self, id: RunId, by: &str, note: Option<String>) -> Result<Run, StoreError>;
    /// At startup: runs left active ([`RunState::is_active`]: preparing or
    /// running) by a dead runner are failed with reason "runner restarted",
    /// or re-queued if `policy` says so and attempts remain. Runs awaiting
    /// approval keep waiting. Each recovered run gets an event saying what
    /// happened.
    async fn recover_after_restart(
        &self,
        policy: RecoveryPolicy,
    ) -> Result<Vec<Recovered>, StoreError>;

    /// Append an event to a run's log; returns its `seq` once committed.
    async fn append_event(
        &self,
        run: RunId,
        kind: &EventKind,
        message: &str,
    ) -> Result<u64, StoreError>;
    /// Committed events with `seq > after_seq`, at most `limit`, in order.
    async fn events_after(
        &self,
        run: RunId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// The run's events after `after_seq` (0: all), then live ones as they
    /// are committed: no gap, no duplicate. The stream does not end by itself.
    async fn subscribe(&self, run: RunId, after_seq: u64) -> Result<EventStream, StoreError>;
    /// A non-blocking [`crate::session::EventSink`] writing to this run's log.
    fn event_sink(&self, run: RunId) -> StoreEvents;
    /// The run's events with their hash chain and its signed head, for
    /// `kiln runs verify` and `kiln runs export` ([`crate::ledger`]).
    async fn transcript(&self, run: RunId) -> Result<crate::ledger::Transcript, StoreError>;
    /// Wait until everything handed to the store before this call is committed.
    async fn flush(&self) -> Result<(), StoreError>;

    /// Note a delivery by id and body hash only (the local forge's events,
    /// whose bodies stay in the forge's outbox); `Duplicate` if its id was
    /// seen before.
    async fn record_delivery(
        &self,
        id: &str,
        event: &str,
        body_sha256: &str,
    ) -> Result<DeliveryRecord, StoreError>;
    /// Store a verified webhook delivery, its body included, before it is
    /// acknowledged: once this returns `New` the delivery survives a crash
    /// and is handed out by [`RunStore::claim_delivery`] until it is
    /// finished. `Duplicate` (nothing stored) if its id was seen before.
    async fn accept_delivery(
        &self,
        id: &str,
        event: &str,
        body: &[u8],
    ) -> Result<DeliveryRecord, StoreError>;
    /// Atomically claim the oldest accepted delivery that is neither
    /// finished nor claimed under a live lease (see [`DeliveryClaim`]), for
    /// `claim.runner` to process. Two claimants never get the same delivery
    /// while its lease holds. Deliveries recorded without a body
    /// ([`RunStore::record_delivery`]) are never handed out.
    async fn claim_delivery(
        &self,
        claim: &DeliveryClaim,
    ) -> Result<Option<AcceptedDelivery>, StoreError>;
    /// Record what became of a delivery; its stored body is dropped.
    async fn finish_delivery(
        &self,
        id: &str,
        status: DeliveryStatus,
        reason: Option<String>,
    ) -> Result<(), StoreError>;
    /// One delivery.
    async fn get_delivery(&self, id: &str) -> Result<Delivery, StoreError>;

    /// Commit a forge write's intent under its idempotency key before it
    /// is sent. `None`: the key is new and the write is now `sending`.
    /// `Some(earlier)`: the key was seen (a re-run proposing the same
    /// write): if `earlier` was applied, nothing changes and the write must
    /// not be sent again; if it is `sending`, it is in doubt and must be
    /// looked for on the forge first; if it was not applied or failed, it
    /// is armed again (`sending`, one more attempt) and may be sent.
    async fn begin_effect(
        &self,
        run: RunId,
        effect_id: &str,
        key: &str,
        intent: serde_json::Value,
    ) -> Result<Option<EffectLogEntry>, StoreError>;
    /// Record how the write under `key` ended; returns its record.
    async fn finish_effect(
        &self,
        key: &str,
        outcome: EffectOutcome,
    ) -> Result<EffectLogEntry, StoreError>;
    /// Every write still `sending`, oldest first: what restart recovery
    /// looks for on the forge.
    async fn effects_in_doubt(&self) -> Result<Vec<EffectLogEntry>, StoreError>;
    /// The run's forge writes, oldest first.
    async fn effect_log(&self, run: RunId) -> Result<Vec<EffectLogEntry>, StoreError>;

    /// Hold an effect for a human's decision.
    async fn hold_effect(
        &self,
        run: RunId,
        effect_id: &str,
        proposal: serde_json::Value,
    ) -> Result<Approval, StoreError>;
    /// Decide a pending effect; a second decision is an error.
    async fn decide_effect(
        &self,
        run: RunId,
        effect_id: &str,
        verdict: Verdict,
        decided_by: &str,
        reason: Option<String>,
    ) -> Result<Approval, StoreError>;
    /// One held effect, whatever its state.
    async fn get_effect(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError>;
    /// The run's effects still waiting for a decision, oldest first.
    async fn pending_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError>;
    /// Every effect of the run that was held, decided or not, oldest first.
    async fn held_effects(&self, run: RunId) -> Result<Vec<Approval>, StoreError>;
    /// Wait until the effect is decided; returns the decided approval.
    async fn wait_for_decision(&self, run: RunId, effect_id: &str) -> Result<Approval, StoreError>;

    /// Create an API token; the plaintext is returned this once.
    async fn create_token(&self, name: &str, scope: TokenScope) -> Result<NewToken, StoreError>;
    /// The token whose plaintext hashes to `sha256` (hex), revoked or not.
    async fn token_by_hash(&self, sha256: &str) -> Result<Option<ApiToken>, StoreError>;
    /// Every token, revoked ones included.
    async fn list_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;
    /// Revoke a token; revoking twice is not an error.
    async fn revoke_token(&self, id: u64) -> Result<ApiToken, StoreError>;

    /// The schedule's record, created (counting from `now_ms`) the first
    /// time the schedule is seen.
    async fn watch_schedule(&self, name: &str, now_ms: i64) -> Result<ScheduleRecord, StoreError>;
    /// Record that the schedule fires for `due_ms`, unless it already
    /// covered that due time: true if this call claimed it. The check and
    /// the write are one step, so a due time is claimed once.
    async fn claim_schedule(
        &self,
        name: &str,
        due_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Every schedule's record.
    async fn schedule_records(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    /// The heartbeat: renew the lease of every run this store claimed and
    /// still holds; returns the runs whose lease another runner took over
    /// (their workers must stop: the store refuses their writes). A store
    /// only one runner uses (SQLite) has no leases to renew.
    async fn renew_leases(&self) -> Result<Vec<RunId>, StoreError> {
        Ok(Vec::new())
    }
    /// Recover the active runs of other runners whose lease expired, as
    /// [`RunStore::recover_after_restart`] does ("runner lost"): failed, or
    /// re-queued if `policy` says so. A single-runner store has none.
    async fn recover_expired(&self, policy: RecoveryPolicy) -> Result<Vec<Recovered>, StoreError> {
        let _ = policy;
        Ok(Vec::new())
    }
    /// The run's lease, while a runner holds it (a single-runner store keeps none).
    async fn lease(&self, run: RunId) -> Result<Option<Lease>, StoreError> {
        self.get_run(run).await.map(|_| None)
    }
}

/// What the store keeps of a `[[schedules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// The schedule's name.
    pub name: String,
    /// When the runner first saw it: due times before are not its to fire.
    pub since_ms: i64,
    /// The due time it last fired for.
    pub last_due_ms: Option<i64>,
    /// When it fired for it.
    pub last_fired_ms: Option<i64>,
}

impl ScheduleRecord {
    /// Due times up to this one are done (fired, or before it existed).
    pub fn covered_ms(&self) -> i64 {
        self.last_due_ms.unwrap_or(self.since_ms).max(self.since_ms)
    }
}

/// The store `config` selects: PostgreSQL if it has a `[store]` section
/// (this runner named `runner_id` in leases), else the SQLite file
/// [`STORE_FILE`] in `data_dir`. The ledger's host key lives in `data_dir`.
pub async fn open(
    config: &crate::config::KilnConfig,
    data_dir: &std::path::Path,
    runner_id: &str,
) -> Result<Arc<dyn RunStore>, StoreError> {
    match &config.store {
        None => Ok(Arc::new(
            SqliteStore::open(data_dir.join(STORE_FILE), SqliteOptions::default()).await?,
        )),
        Some(pg) => {
            let connect = pg
                .pg_config(&config.secrets)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            let options = PgOptions {
                pool_size: pg.pool_size,
                lease: pg.lease(),
                ..PgOptions::new(runner_id)
            };
            Ok(Arc::new(PgStore::open(connect, data_dir, options).await?))
        }
    }
}

/// The SQLite store's file name in the data directory.
pub const STORE_FILE: &str = "kiln.db";

/// The SHA-256 of a token's plaintext, hex: what [`RunStore::token_by_hash`] takes.
pub fn token_hash(plaintext: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(plaintext.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_print_and_parse() {
        assert_eq!(RunId(12).to_string(), "r12");
        assert_eq!("r12".parse::<RunId>(), Ok(RunId(12)));
        assert_eq!("12".parse::<RunId>(), Ok(RunId(12)));
        for bad in ["", "r", "r0", "r-1", "r+1", "x12", "r12x", "r 1"] {
            assert!(bad.parse::<RunId>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn transitions_follow_the_state_machine() {
        use RunState::*;
        let legal = [
            (Queued, Preparing),
            (Preparing, Running),
            (Running, AwaitingApproval),
            (AwaitingApproval, Running),
            (Running, Succeeded),
            (Queued, Cancelled),
            (Preparing, Failed),
            (AwaitingApproval, Blocked),
            (AwaitingApproval, Succeeded),
        ];
        for (a, b) in legal {
            assert!(a.may_become(b), "{a} -> {b} should be legal");
        }
        let illegal = [
            (Queued, Running),
            (Queued, Succeeded),
            (Preparing, Succeeded),
            (Succeeded, Failed),
            (Failed, Queued),
            (Cancelled, Running),
            (Blocked, Cancelled),
            (Running, Queued),
            (Running, Running),
        ];
        for (a, b) in illegal {
            assert!(!a.may_become(b), "{a} -> {b} should be illegal");
        }
        for st in RunState::ALL {
            assert_eq!(st.as_str().parse::<RunState>(), Ok(st));
        }
    }
}
