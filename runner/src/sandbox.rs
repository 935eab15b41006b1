//! The per-run sandbox: one hardened container per agent run.
//!
//! This module owns the [`SandboxBackend`] trait (so a Kubernetes backend can
//! sit beside Docker later), the [`SandboxSpec`] that says what a run gets,
//! and the submodules that build everything a sandbox needs:
//!
//! - [`docker`]: the Docker backend over bollard (containers, phases, orphans)
//! - [`image`]: sandbox images built from `sandbox-images/` with no registry
//! - [`workspace`]: host-side repo mirrors and per-run workspaces (cap-std access)
//! - [`network`]: the setup phase's egress allowlist (internal network + proxy)
//! - [`exec`]: commands run in a sandbox: requests, streamed events, outcomes
//! - [`secrets`]: secret values resolved for one role and phase
//!
//! A run goes through two phases. The *setup* phase runs the repository's
//! setup commands with the egress allowlist and setup-scoped secrets; the
//! *agent* phase has no network at all, none of the setup secrets, and no
//! process left over from setup.

pub mod docker;
pub mod exec;
pub mod image;
pub mod network;
pub mod secrets;
pub mod workspace;

use std::path::PathBuf;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::config::SandboxConfig;
pub use crate::config::{Phase, Role};
pub use exec::{ExecEvent, ExecOutcome, ExecRequest, ExitReason};
pub use network::EgressPolicy;
pub use secrets::SecretValue;

/// Label put on every container and network Kiln creates.
pub const LABEL_MANAGED: &str = "dev.kiln.managed";
/// Label carrying the run id.
pub const LABEL_RUN_ID: &str = "dev.kiln.run-id";
/// Label carrying the id of the runner that owns the object.
pub const LABEL_RUNNER_ID: &str = "dev.kiln.runner-id";
/// Where the workspace is mounted inside the sandbox.
pub const WORKSPACE_MOUNT: &str = "/workspace";
/// The non-root user every sandbox command runs as (`agent` in the base image).
pub const SANDBOX_USER: &str = "1000:1000";

/// Errors from creating, using or removing a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The container engine refused or failed a request.
    #[error("{action}: {source}")]
    Engine {
        /// What the runner was doing.
        action: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// A spec or request was invalid before anything was sent to the engine.
    #[error("invalid sandbox request: {0}")]
    Invalid(String),
    /// The operation is not allowed in the sandbox's current phase.
    #[error("run {run_id}: {what} is not allowed in the {phase} phase")]
    WrongPhase {
        /// The run.
        run_id: String,
        /// The refused operation.
        what: &'static str,
        /// The phase the sandbox is in.
        phase: Phase,
    },
    /// A setup-scoped secret was found in a file when the agent phase was due
    /// to start; the run must not continue.
    #[error(
        "run {run_id}: setup secret(s) {secrets:?} persisted into files {paths:?}; refusing to start the agent phase"
    )]
    SecretPersisted {
        /// The run.
        run_id: String,
        /// Names of the secrets found (never values).
        secrets: Vec<String>,
        /// Files inside the container that hold them.
        paths: Vec<String>,
    },
    /// The setup phase's egress proxy could not be set up.
    #[error("egress proxy: {0}")]
    Egress(String),
    /// A check of the sandbox's isolation failed; the run must not continue.
    #[error("run {run_id}: isolation check failed: {what}")]
    Isolation {
        /// The run.
        run_id: String,
        /// What was found.
        what: String,
    },
    /// The engine answered in a way the runner cannot use.
    #[error("unexpected engine response: {0}")]
    Unexpected(String),
    /// Setup-phase processes survived the kill before the agent phase.
    #[error("run {run_id}: setup processes still alive after kill: {left}")]
    ProcessesSurvived {
        /// The run.
        run_id: String,
        /// What was left (pid and command line).
        left: String,
    },
    /// Building or finding an image failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// Preparing the workspace failed.
    #[error(transparent)]
    Workspace(#[from] workspace::WorkspaceError),
}

impl SandboxError {
    pub(crate) fn engine(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |source| SandboxError::Engine { action, source }
    }
}

/// Resource limits applied to the whole container.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes; swap is set equal so the container cannot swap.
    pub memory_bytes: i64,
    /// Maximum processes and threads (guards against fork bombs).
    pub pids: i64,
    /// CPU quota in billionths of a CPU.
    pub nano_cpus: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::from_config(&SandboxConfig::default())
    }
}

impl Limits {
    /// Limits from `[sandbox]` in `kiln.toml`.
    pub fn from_config(config: &SandboxConfig) -> Self {
        let memory_mb = i64::try_from(config.memory_mb).unwrap_or(i64::MAX / (1 << 20));
        Self {
            memory_bytes: memory_mb.saturating_mul(1 << 20),
            pids: config.pids,
            // Validated to 0.01..=1024, so the product fits comfortably.
            nano_cpus: (config.cpus * 1e9) as i64,
        }
    }
}

/// Everything a run's sandbox is made of.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The run this sandbox belongs to (a label, and part of object names).
    pub run_id: String,
    /// The role; decides whether `/workspace` is writable.
    pub role: Role,
    /// Image reference (a tag produced by [`image::ImageBuilder`]).
    pub image: String,
    /// Host directory mounted at `/workspace`.
    pub workspace: PathBuf,
    /// Container-wide resource limits.
    pub limits: Limits,
    /// OCI runtime (e.g. `runsc`); `None` keeps the engine's default.
    pub runtime: Option<String>,
    /// Egress for the setup phase; `None` means the setup phase has no network either.
    pub egress: Option<EgressPolicy>,
    /// Secrets present (as exec environment only) during the setup phase.
    pub setup_secrets: Vec<SecretValue>,
    /// Secrets present (as exec environment only) during the agent phase.
    pub agent_secrets: Vec<SecretValue>,
    /// Default timeout of one command.
    pub exec_timeout: Duration,
    /// Bytes of stdout and of stderr kept per command.
    pub output_cap: usize,
    /// Mount `/workspace` read-write for build outputs although the role
    /// does not write: the caller has made the checkout's own files
    /// unchangeable by the sandbox user first
    /// ([`workspace::Workspace::protect_checkout`]).
    pub build_outputs: bool,
}

impl SandboxSpec {
    /// A spec with Kiln's security defaults:
    ///
    /// - **network none** (no egress policy: even the setup phase is offline);
    /// - **all capabilities dropped**, `no-new-privileges`, not privileged;
    /// - Docker's **default seccomp profile** (never `unconfined`);
    /// - **read-only root filesystem**, with tmpfs `/tmp` and `/home/agent`;
    /// - **non-root** user `agent` (uid 1000);
    /// - no Docker socket, no host PID/IPC/network namespace, no devices;
    /// - limits from `SandboxConfig::default()` (2 GiB memory without swap, 512 pids, 2 CPUs);
    /// - `/workspace` **read-only** unless the role writes (spec, implementation);
    /// - **no secrets** in either phase;
    /// - 10-minute command timeout, 1 MiB of output kept per stream.
    pub fn new(
        run_id: impl Into<String>,
        role: Role,
        image: impl Into<String>,
        workspace: impl Into<PathBuf>,
    ) -> Self {
        let defaults = SandboxConfig::default();
        Self {
            run_id: run_id.into(),
            role,
            image: image.into(),
            workspace: workspace.into(),
            limits: Limits::from_config(&defaults),
            runtime: None,
            egress: None,
            setup_secrets: Vec::new(),
            agent_secrets: Vec::new(),
            exec_timeout: Duration::from_secs(defaults.exec_timeout_secs),
            output_cap: defaults.output_cap_bytes,
            build_outputs: false,
        }
    }

    /// Mounts `/workspace` read-write so checks can write build outputs; only
    /// for a workspace whose checkout [`workspace::Workspace::protect_checkout`]
    /// made unchangeable (tracked files stay read-only for the sandbox).
    pub fn with_build_outputs(mut self) -> Self {
        self.build_outputs = true;
        self
    }

    /// Applies `[sandbox]` limits, runtime, timeout, output cap and egress allowlist.
    pub fn with_config(mut self, config: &SandboxConfig) -> Self {
        self.limits = Limits::from_config(config);
        self.runtime = config.runtime.clone();
        self.exec_timeout = Duration::from_secs(config.exec_timeout_secs);
        self.output_cap = config.output_cap_bytes;
        self.egress = (!config.egress_allow.is_empty())
            .then(|| EgressPolicy::new(config.egress_allow.clone()));
        self
    }

    /// True if `/workspace` is mounted read-write.
    pub fn workspace_writable(&self) -> bool {
        self.role.writes_workspace() || self.build_outputs
    }

    /// True if the sandbox starts in the setup phase (it has egress or setup secrets).
    pub fn has_setup_phase(&self) -> bool {
        self.egress.is_some() || !self.setup_secrets.is_empty()
    }

    /// Checks the spec before anything is created.
    pub fn validate(&self) -> Result<(), SandboxError> {
        if self.run_id.is_empty()
            || self.run_id.len() > 64
            || !self
                .run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SandboxError::Invalid(format!(
                "run id `{}` must be 1-64 characters of [A-Za-z0-9_-]",
                self.run_id
            )));
        }
        if !self.workspace.is_absolute() {
            return Err(SandboxError::Invalid(format!(
                "workspace {} must be an absolute path",
                self.workspace.display()
            )));
        }
        if self.limits.memory_bytes < 16 << 20
            || self.limits.pids < 8
            || self.limits.nano_cpus < 10_000_000
        {
            return Err(SandboxError::Invalid(format!(
                "limits too small: {} MiB of memory, {} processes, {} CPUs \
                 (at least 16 MiB, 8 processes, 0.01 CPUs)",
                self.limits.memory_bytes >> 20,
                self.limits.pids,
                self.limits.nano_cpus as f64 / 1e9
            )));
        }
        Ok(())
    }
}

/// A running sandbox, as handed out by a [`SandboxBackend`]. Pass it to
/// [`SandboxBackend::destroy`] when the run ends: dropping it leaves the
/// container for the next start-up's orphan cleanup.
#[derive(Debug)]
pub struct Sandbox {
    /// The run this sandbox belongs to.
    pub run_id: String,
    /// The backend's id for the sandbox (a container id for Docker).
    pub id: String,
    /// The phase the sandbox is in.
    pub phase: Phase,
    pub(crate) spec: SandboxSpec,
    pub(crate) egress: Option<network::EgressRoute>,
    pub(crate) counters: tokio::sync::Mutex<exec::LimitCounters>,
    pub(crate) exec_seq: std::sync::atomic::AtomicU64,
}

impl Sandbox {
    /// The spec the sandbox was created from.
    pub fn spec(&self) -> &SandboxSpec {
        &self.spec
    }

    /// The proxy URL setup commands use (`None` in the agent phase or without egress).
    pub fn proxy_url(&self) -> Option<String> {
        match (self.phase, &self.egress) {
            (Phase::Setup, Some(route)) => Some(route.proxy_url()),
            _ => None,
        }
    }
}

/// How a human's shell in a sandbox is set up (`kiln attach`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShellSpec {
    /// Terminal size (columns, rows) when the human has a terminal; `None`
    /// runs the shell on plain pipes (scripts, tests).
    pub tty: Option<(u16, u16)>,
    /// The human's `TERM`, when it is a plain terminal name.
    pub term: Option<String>,
}

/// A human's interactive shell in a sandbox: bytes in, bytes out. It runs
/// as the sandbox user in `/workspace`, with no secret in its environment.
pub struct Shell {
    /// What the human types.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    /// What the shell prints (stdout and stderr, merged with a terminal).
    pub output: futures_util::stream::BoxStream<'static, Result<Vec<u8>, SandboxError>>,
    /// Resize the terminal; read the exit code once the output ended.
    pub control: Box<dyn ShellControl>,
}

/// What can be done to a running [`Shell`] besides typing into it.
pub trait ShellControl: Send + Sync {
    /// The human's terminal changed size.
    fn resize(&self, cols: u16, rows: u16) -> BoxFuture<'_, Result<(), SandboxError>>;
    /// The shell's exit code, once its output has ended (`None` if unknown).
    fn exit_code(&self) -> BoxFuture<'_, Result<Option<i64>, SandboxError>>;
    /// Kill the shell and what it started (the human went away).
    fn end(&self) -> BoxFuture<'_, ()>;
}

/// Where streamed exec events go: a bounded channel, so a slow consumer
/// slows the reader instead of growing memory.
pub type ExecEvents = mpsc::Sender<ExecEvent>;

/// A place runs get sandboxes from. Docker today; the trait keeps the worker
/// independent of it so a Kubernetes backend can be added.
pub trait SandboxBackend: Send + Sync {
    /// Creates and starts a sandbox for `spec`. It starts in the setup phase
    /// if the spec has egress or setup secrets, otherwise in the agent phase.
    fn create(&self, spec: SandboxSpec) -> BoxFuture<'_, Result<Sandbox, SandboxError>>;

    /// Runs one command, streaming its output to `events` if given.
    fn exec<'a>(
        &'a self,
        sandbox: &'a Sandbox,
        request: ExecRequest,
        events: Option<ExecEvents>,
    ) -> BoxFuture<'a, Result<ExecOutcome, SandboxError>>;

    /// Starts an interactive shell for a human in an agent-phase sandbox.
    fn shell<'a>(
        &'a self,
        sandbox: &'a Sandbox,
        spec: ShellSpec,
    ) -> BoxFuture<'a, Result<Shell, SandboxError>>;

    /// Ends the setup phase: no network, no setup process, no setup secret.
    fn enter_agent_phase<'a>(
        &'a self,
        sandbox: &'a mut Sandbox,
    ) -> BoxFuture<'a, Result<(), SandboxError>>;

    /// Removes the sandbox and everything created for it.
    fn destroy(&self, sandbox: Sandbox) -> BoxFuture<'_, Result<(), SandboxError>>;

    /// Removes sandboxes left behind by an earlier process of this runner
    /// (found by label); returns how many objects were removed. Call it once
    /// at start-up, before creating sandboxes: it removes *every* container
    /// and network labelled with this runner's id.
    fn remove_orphans(&self) -> BoxFuture<'_, Result<usize, SandboxError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_spec_is_locked_down() {
        let spec = SandboxSpec::new("r1", Role::Triage, "img", "/tmp/ws");
        assert!(spec.egress.is_none(), "default spec should have no network");
        assert!(
            spec.setup_secrets.is_empty() && spec.agent_secrets.is_empty(),
            "default spec should carry no secrets"
        );
        assert!(
            !spec.workspace_writable(),
            "triage should get a read-only workspace"
        );
        assert!(
            !spec.has_setup_phase(),
            "no egress and no secrets means straight to the agent phase"
        );
        assert!(spec.runtime.is_none());
    }

    #[test]
    fn writing_roles_get_a_writable_workspace() {
        for (role, writable) in [
            (Role::Triage, false),
            (Role::Review, false),
            (Role::Verification, false),
            (Role::Spec, true),
            (Role::Implementation, true),
        ] {
            let spec = SandboxSpec::new("r", role, "i", "/w");
            assert_eq!(
                spec.workspace_writable(),
                writable,
                "{role} workspace writability"
            );
        }
    }

    #[test]
    fn bad_run_ids_are_refused() {
        for id in ["", "a/b", "../x", "a b", &"x".repeat(65)] {
            let spec = SandboxSpec::new(id, Role::Spec, "i", "/w");
            assert!(spec.validate().is_err(), "run id {id:?} should be refused");
        }
        assert!(
            SandboxSpec::new("ok-1_2", Role::Spec, "i", "/w")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn config_limits_convert() {
        let config = SandboxConfig {
            memory_mb: 256,
            pids: 64,
            cpus: 0.5,
            ..SandboxConfig::default()
        };
        let l = Limits::from_config(&config);
        assert_eq!(
            l,
            Limits {
                memory_bytes: 256 << 20,
                pids: 64,
                nano_cpus: 500_000_000
            }
        );
    }
}
