//! What operators can do to a live run, as one trait: the runner service
//! implements it over its worker pool, and the runner API (and through it
//! the CLI and the dashboard) calls it. Reading runs and events goes to the
//! store directly; this trait is only for actions that reach a running run.
use std::path::PathBuf;

/// Why an operator action could not be carried out. Each variant maps to
/// one HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such run, or no such effect of the run (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// The run is not in a state that allows this (409), e.g. steering a
    /// finished run or deciding an effect twice.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The request itself is malformed (400).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The runner failed carrying it out (500).
    #[error("{0}")]
    Internal(String),
}

/// An operator's decision on a held effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectDecision {
    /// Approve (apply it) or deny (record the denial).
    pub approve: bool,
    /// Who decided (the API token's name).
    pub by: String,
    /// Optional reason, shown in the run's events.
    pub reason: Option<String>,
}

/// What `kiln handback` needs: the run's work as a git bundle and its
/// transcript.
#[derive(Debug, Clone)]
pub struct Handback {
    /// A git bundle holding the run's branch (`refs/heads/kiln/...`).
    pub bundle: PathBuf,
    /// The branch name inside the bundle.
    pub branch: String,
}

/// What `kiln resume` sends back to a finished run.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// Who resumed it (the API token's name).
    pub by: String,
    /// A note for the agent; it becomes the run's instructions.
    pub note: Option<String>,
    /// A git bundle of the operator's commits on top of the run's branch.
    pub bundle: Option<Vec<u8>>,
}

/// A human attached to a run's sandbox (`kiln attach`): their shell, and
/// the run's agent held paused for as long as this value lives. Dropping
/// it records that the operator left and lets the agent go on.
pub struct Attached {
    /// The interactive shell in the run's sandbox.
    pub shell: crate::sandbox::Shell,
    /// Released (and the detach recorded) when this is dropped.
    pub session: Box<dyn Send + Sync>,
    /// The run's event log, for what happens to the session.
    pub events: std::sync::Arc<dyn crate::session::EventSink>,
    /// How long the shell may go without input before it is closed and the
    /// agent resumes (`[sandbox] attach_idle_secs`).
    pub idle_after: std::time::Duration,
}

/// A run an operator queues through the API (`kiln run --queue`).
#[derive(Debug, Clone)]
pub struct QueueRun {
    /// The repository.
    pub repo: crate::forge::RepoRef,
    /// The role to run.
    pub role: crate::config::Role,
    /// The issue (or, for a role that reads pull requests, the pull request).
    pub number: u64,
    /// Who queued it (the API token's name).
    pub by: String,
    /// A model script (JSON) replayed for this run instead of the runner's model.
    pub script: Option<String>,
    /// Named arguments (an `improve` run's `target` and `since`).
    pub args: Vec<(String, String)>,
}

/// Actions on live runs. Run ids are the store's (`r12` displayed).
#[async_trait::async_trait]
pub trait RunControl: Send + Sync {
    /// Queue a steering message from `by` (the API token's name); the
    /// plugin receives it through `session.next-instruction` before its
    /// next model turn.
    async fn steer(&self, run: u64, message: String, by: String) -> Result<(), ControlError>;
    /// Stop a run: trap the plugin, kill its container, state `cancelled`.
    async fn cancel(&self, run: u64, by: String) -> Result<(), ControlError>;
    /// Approve or deny a held effect; an approved effect is applied to the
    /// forge (and its result recorded as an event).
    async fn decide(
        &self,
        run: u64,
        effect: &str,
        decision: EffectDecision,
    ) -> Result<(), ControlError>;
    /// Open a shell in the running run's sandbox and pause its agent until
    /// the returned [`Attached`] is dropped.
    async fn attach(
        &self,
        run: u64,
        by: String,
        spec: crate::sandbox::ShellSpec,
    ) -> Result<Attached, ControlError>;
    /// Continue a finished run: its workspace starts from its last work
    /// plus the operator's commits, and the note reaches the agent.
    async fn resume(&self, run: u64, resume: Resume) -> Result<(), ControlError>;
    /// The run's work as a git bundle (written when the run ended).
    async fn handback(&self, run: u64) -> Result<Handback, ControlError>;
    /// Queue a run after checking its target exists and is of the kind its
    /// role works on, and its script parses; nothing is queued otherwise.
    /// Returns the run's id.
    async fn queue(&self, run: QueueRun) -> Result<u64, ControlError> {
        Err(ControlError::Conflict(format!(
            "this runner does not queue runs (asked for {} on {}#{})",
            run.role, run.repo, run.number
        )))
    }
}
