//! The host's own types for the role contract, independent of any WIT
//! version: what a run is asked to do ([`Task`]), how it ended
//! ([`Outcome`]), why an import failed ([`RoleError`]), and the records the
//! imports exchange. The imports (`crate::imports`) are written once against
//! these; each supported WIT version (`plugin::wit::v0_*`) only converts its
//! generated types to and from them. Forge reads and proposals use the
//! forge's domain types (`crate::forge`), model turns the model's
//! (`crate::model`).
use std::fmt;

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A label was added; the label's name.
    Label(String),
    /// A trusted actor's comment addressed Kiln (`/kiln ...`).
    Command(String),
    /// A pull request opened by Kiln is ready for review.
    PullRequestOpened,
    /// An operator started the run by hand.
    Manual,
    /// A maintainer requested changes in a review; the review's id.
    Review(u64),
    /// A schedule fired; the schedule's name.
    Schedule(String),
}

/// Everything a role needs to know to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The run's id.
    pub run_id: String,
    /// The role played.
    pub role: String,
    /// The repository, `owner/name`.
    pub repo: String,
    /// The issue the run is about, if any.
    pub issue: Option<u64>,
    /// The pull request the run is about, if any.
    pub pull_request: Option<u64>,
    /// The run's branch (under `kiln/`).
    pub branch: String,
    /// The branch pull requests target.
    pub base_branch: String,
    /// What started the run.
    pub trigger: Trigger,
    /// Instructions from the trusted actor who triggered the run.
    pub instructions: Option<String>,
    /// Named arguments from the trigger, in order.
    pub args: Vec<(String, String)>,
}

/// How a run ended, from the role's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// The role did its job.
    Completed,
    /// The role needs a human.
    Blocked,
    /// There was nothing to do.
    Skipped,
}

impl fmt::Display for OutcomeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutcomeStatus::Completed => "completed",
            OutcomeStatus::Blocked => "blocked",
            OutcomeStatus::Skipped => "skipped",
        })
    }
}

/// The result a role returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How the run ended.
    pub status: OutcomeStatus,
    /// A short account for people.
    pub summary: String,
    /// Structured output as JSON, if the role has any.
    pub output: Option<String>,
}

/// Why an import call failed, as the plugin sees it. The variant is what a
/// program matches on; the text is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The policy gate refused the effect.
    #[error("denied: {0}")]
    Denied(String),
    /// The effect waits for a human; the effect id.
    #[error("held for approval as effect {0}")]
    HeldForApproval(String),
    /// What was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An argument is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The run's budget is spent.
    #[error("budget exhausted: {0}")]
    BudgetExhausted(String),
    /// A size or count limit was exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The call took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A service the call needs is not available.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The capability is not asked for or not granted.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The host failed; not the plugin's fault.
    #[error("host error: {0}")]
    Internal(String),
}

/// What kind of entry a directory listing shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else.
    Other,
}

/// One entry of a workspace directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Kind.
    pub kind: EntryKind,
    /// Size in bytes (files only).
    pub size: u64,
}

/// A command a plugin asks to run in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory relative to the workspace.
    pub workdir: Option<String>,
    /// Time limit in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Cap on each of stdout and stderr.
    pub max_output_bytes: Option<u64>,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Why it was killed, if it was (`timeout`, `oom-killed`, `pids-limit`).
    pub killed_by: Option<String>,
    /// Standard output (redacted).
    pub stdout: String,
    /// Standard error (redacted).
    pub stderr: String,
    /// Whether output was cut.
    pub truncated: bool,
    /// How long it ran.
    pub duration_ms: u64,
}

/// The answer to a proposal the gate did not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The effect id, as in the run's events.
    pub effect_id: String,
    /// `true` if it waits for a human, `false` if applied (or recorded).
    pub held: bool,
    /// Where the result is, once applied.
    pub url: Option<String>,
}

/// What a plugin reports to the run's transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginEventKind {
    /// What the role is doing now.
    Progress,
    /// A decision and its reason.
    Note,
    /// Something went wrong but the role carries on.
    Warning,
}

/// What the run has spent and may still spend, as the plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetReport {
    /// Model turns taken.
    pub turns_used: u32,
    /// Model turns allowed.
    pub turns_max: Option<u32>,
    /// Tokens used.
    pub tokens_used: u64,
    /// Tokens allowed.
    pub tokens_max: Option<u64>,
    /// Cost so far, millionths of a US dollar.
    pub cost_used_micro_usd: u64,
    /// Cost allowed.
    pub cost_max_micro_usd: Option<u64>,
    /// Wall-clock milliseconds left.
    pub time_left_ms: u64,
}

/// A skill as served to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skill {
    /// Skill name.
    pub name: String,
    /// Merged text (core skill with the repository's overrides).
    pub text: String,
    /// Whether the repository overrode any section.
    pub overridden: bool,
}

/// Which part of a repository's history a `signals` call reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalQuery {
    /// The role whose history to read.
    pub role: String,
    /// How far back, in hours.
    pub since_hours: u32,
    /// At most this many items.
    pub limit: u32,
}

/// One earlier run of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Run id.
    pub run_id: String,
    /// Role played.
    pub role: String,
    /// Issue or pull request number.
    pub number: Option<u64>,
    /// State name (`succeeded`, `failed`, ...).
    pub state: String,
    /// Outcome summary or failure reason.
    pub summary: String,
    /// When it was queued, RFC 3339 UTC.
    pub queued_at: String,
}

/// What a signal says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// Labels changed by a maintainer after triage.
    LabelCorrected,
    /// A `needs-info` issue moved on without the reporter.
    NeedsInfoBypassed,
    /// Closed as a duplicate.
    ClosedAsDuplicate,
    /// A Kiln pull request closed unmerged.
    PullRequestClosedUnmerged,
    /// A human changed a Kiln pull request.
    ChangedByHuman,
    /// An operator steered a run.
    SteeringMessage,
    /// The gate denied an effect.
    EffectDenied,
    /// The gate held an effect and a human decided it.
    EffectHeld,
    /// A run ended blocked.
    RunBlocked,
    /// A run ran out of budget.
    BudgetExhausted,
    /// A maintainer replied to a Kiln review comment.
    ReviewReply,
    /// A human opened a review thread Kiln had not.
    ReviewThreadByHuman,
}

/// One piece of evidence about how a role did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// What happened.
    pub kind: SignalKind,
    /// The run it is about.
    pub run_id: Option<String>,
    /// The issue or pull request it is about.
    pub number: Option<u64>,
    /// Who acted.
    pub author: String,
    /// Whether that actor is trusted.
    pub trusted: bool,
    /// The evidence (redacted).
    pub evidence: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}
