//! The Docker backend: one hardened container per run, over bollard.
//!
//! The container's first process is a tiny bash loop that only sleeps and
//! reaps orphans (bash reaps any child on SIGCHLD, so a killed fork bomb
//! leaves no zombies eating the pids limit). On `SIGUSR1` it kills every
//! other process with `kill -KILL -1`, a shell builtin: this is how the host
//! empties the sandbox even when the pids limit leaves no room to `exec`
//! anything, and how the setup phase's processes are ended before the agent
//! phase. A process inside the sandbox can send the same signal, but only to
//! end its own processes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountType, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

use super::exec::{CappedOutput, LimitCounters, READ_COUNTERS, classify};
use super::network::{EgressRoute, is_not_found};
use super::{
    ExecEvent, ExecEvents, ExecOutcome, ExecRequest, LABEL_MANAGED, LABEL_RUN_ID, LABEL_RUNNER_ID,
    Phase, SANDBOX_USER, Sandbox, SandboxBackend, SandboxError, SandboxSpec, Shell, ShellControl,
    ShellSpec, WORKSPACE_MOUNT,
};

/// PID 1 of every sandbox (see the module docs).
const PID1: &str =
    "trap 'exit 0' TERM; trap 'kill -KILL -1' USR1; while :; do sleep 3600 & wait $!; done";

/// Wraps every agent command: the command runs in a process group of its
/// own (`set -m`), whose id goes to the pidfile for a timeout or cancel
/// kill, and when the command ends, however it ends, everything left in
/// that group is killed, so a daemonised child or a fork bomb cannot outlive
/// it and starve the run's next commands of processes. The wrapper's own
/// stderr goes to /dev/null (job-control notices such as `Done` or `Killed`
/// are not the command's output); the command keeps the real one on fd 2.
/// Only builtins run after the command ends: the pids limit may leave no
/// room to fork.
const EXEC_WRAPPER: &str = concat!(
    "f=$KILN_PIDFILE; unset KILN_PIDFILE; exec 3>&2 2>/dev/null; set -m; ",
    "\"$@\" 2>&3 3>&- & c=$!; exec 3>&-; echo $c > \"$f\"; wait $c; s=$?; ",
    "n=0; while [ $n -lt 100 ] && kill -KILL -- -$c; do n=$((n+1)); done; exit $s"
);

/// Wraps an operator's shell: it stays the exec's own process (its stdin is
/// the human's keyboard), a session leader like every `docker exec`; the
/// session id goes to the pidfile so ending the shell ends its jobs too,
/// which an interactive bash puts in process groups of their own.
const SHELL_WRAPPER: &str =
    "echo $$ > \"$KILN_PIDFILE\" 2>/dev/null; unset KILN_PIDFILE; exec \"$@\"";

/// How long a killed command's output stream may take to close before the
/// whole sandbox is emptied instead.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// The Docker implementation of [`SandboxBackend`].
#[derive(Debug, Clone)]
pub struct DockerBackend {
    docker: Docker,
    runner_id: String,
    proxy_image: Option<String>,
}

impl DockerBackend {
    /// Connects to the local engine (`DOCKER_HOST` or the default socket)
    /// and agrees on an API version (Docker 20.10 speaks 1.41).
    pub async fn connect(runner_id: impl Into<String>) -> Result<Self, SandboxError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(SandboxError::engine("connect to the Docker engine"))?
            .negotiate_version()
            .await
            .map_err(SandboxError::engine("negotiate the Docker API version"))?;
        Self::new(docker, runner_id)
    }

    /// A backend over an existing client. `runner_id` labels everything this
    /// runner creates, so its orphans can be found after a crash.
    pub fn new(docker: Docker, runner_id: impl Into<String>) -> Result<Self, SandboxError> {
        let runner_id = runner_id.into();
        if runner_id.is_empty()
            || !runner_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(SandboxError::Invalid(format!(
                "runner id `{runner_id}` must be [A-Za-z0-9._-]+"
            )));
        }
        Ok(Self {
            docker,
            runner_id,
            proxy_image: None,
        })
    }

    /// Sets the egress proxy image (from [`super::image::PROXY`]); needed
    /// for specs with an egress policy.
    pub fn with_proxy_image(mut self, tag: impl Into<String>) -> Self {
        self.proxy_image = Some(tag.into());
        self
    }

    /// The engine client.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// This runner's id.
    pub fn runner_id(&self) -> &str {
        &self.runner_id
    }

    /// The container's name. Run ids are only unique per runner (every
    /// `kiln serve` numbers its runs from r1), so the runner id is part of it:
    /// two services on one Docker host must not collide on `kiln-r1`.
    fn container_name(&self, run_id: &str) -> String {
        format!("kiln-{}-{run_id}", self.runner_id)
    }

    fn labels(&self, run_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_RUN_ID.to_string(), run_id.to_string()),
            (LABEL_RUNNER_ID.to_string(), self.runner_id.clone()),
        ])
    }

    /// The container configuration for `spec`; every hardening choice is here.
    fn container_body(&self, spec: &SandboxSpec, network_mode: String) -> ContainerCreateBody {
        let tmpfs = HashMap::from([
            (
                "/tmp".to_string(),
                "rw,nosuid,nodev,size=512m,mode=1777".to_string(),
            ),
            (
                "/home/agent".to_string(),
                "rw,nosuid,nodev,size=512m,uid=1000,gid=1000,mode=0700".to_string(),
            ),
        ]);
        let host_config = HostConfig {
            // No capabilities at all, and no way to regain any (setuid binaries
            // are inert under no-new-privileges).
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            privileged: Some(false),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            mounts: Some(vec![Mount {
                target: Some(WORKSPACE_MOUNT.into()),
                source: Some(spec.workspace.to_string_lossy().into_owned()),
                typ: Some(MountType::BIND),
                read_only: Some(!spec.workspace_writable()),
                bind_options: Some(MountBindOptions {
                    propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            network_mode: Some(network_mode),
            // Private namespaces; spelled out so a daemon default cannot change them.
            ipc_mode: Some("private".into()),
            pid_mode: Some(String::new()),
            userns_mode: Some(String::new()),
            memory: Some(spec.limits.memory_bytes),
            memory_swap: Some(spec.limits.memory_bytes),
            pids_limit: Some(spec.limits.pids),
            nano_cpus: Some(spec.limits.nano_cpus),
            runtime: spec.runtime.clone(),
            init: Some(false),
            auto_remove: Some(false),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: Some(SANDBOX_USER.into()),
            hostname: Some("kiln-sandbox".into()),
            cmd: Some(vec!["bash".into(), "-c".into(), PID1.into()]),
            entrypoint: Some(vec![]),
            working_dir: Some(WORKSPACE_MOUNT.into()),
            env: Some(vec![
                "HOME=/home/agent".into(),
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "LANG=C.UTF-8".into(),
                // The workspace may be owned by another uid when the runner is not root.
                "GIT_CONFIG_COUNT=1".into(),
                "GIT_CONFIG_KEY_0=safe.directory".into(),
                format!("GIT_CONFIG_VALUE_0={WORKSPACE_MOUNT}"),
            ]),
            labels: Some(self.labels(&spec.run_id)),
            network_disabled: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    async fn create_impl(&self, spec: SandboxSpec) -> Result<Sandbox, SandboxError> {
        spec.validate()?;
        let egress = match &spec.egress {
            Some(policy) => {
                let proxy_image = self.proxy_image.as_deref().ok_or_else(|| {
                    SandboxError::Invalid(
                        "spec has an egress policy but the backend has no proxy image".into(),
                    )
                })?;
                Some(
                    EgressRoute::create(
                        &self.docker,
                        &self.runner_id,
                        &spec.run_id,
                        proxy_image,
                        policy,
                    )
                    .await?,
                )
            }
            None => None,
        };
        let network_mode = egress
            .as_ref()
            .map_or_else(|| "none".to_string(), |r| r.internal_network.clone());
        let name = self.container_name(&spec.run_id);
        let body = self.container_body(&spec, network_mode);
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .map_err(SandboxError::engine(format!("create container {name}")));
        let id = match created {
            Ok(c) => c.id,
            Err(e) => {
                if let Some(route) = &egress {
                    route.remove(&self.docker).await;
                }
                return Err(e);
            }
        };
        let phase = if spec.has_setup_phase() {
            Phase::Setup
        } else {
            Phase::Agent
        };
        let sandbox = Sandbox {
            run_id: spec.run_id.clone(),
            id,
            phase,
            spec,
            egress,
            counters: tokio::sync::Mutex::new(LimitCounters::default()),
            exec_seq: std::sync::atomic::AtomicU64::new(0),
        };
        if let Err(e) = self.docker.start_container(&sandbox.id, None).await {
            let err = SandboxError::engine(format!("start container {name}"))(e);
            self.destroy_impl(sandbox).await.ok();
            return Err(err);
        }
        tracing::info!(run_id = %sandbox.run_id, container = %sandbox.id, ?phase, "sandbox started");
        Ok(sandbox)
    }

    /// Runs a helper command (not a user command) and returns (status, stdout).
    async fn run_internal(
        &self,
        container: &str,
        argv: Vec<String>,
        env: Vec<String>,
    ) -> Result<(i64, String), SandboxError> {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(argv),
                    env: Some(env),
                    user: Some(SANDBOX_USER.to_string()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::engine("create helper exec"))?;
        let mut stdout = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(SandboxError::engine("start helper exec"))?
        {
            while let Some(Ok(chunk)) = output.next().await {
                if let LogOutput::StdOut { message } = chunk
                    && stdout.len() < 1 << 20
                {
                    stdout.extend_from_slice(&message);
                }
            }
        }
        let status = self.exit_code(&exec.id).await?;
        Ok((status, String::from_utf8_lossy(&stdout).into_owned()))
    }

    async fn exit_code(&self, exec_id: &str) -> Result<i64, SandboxError> {
        // The stream can close a moment before the engine records the exit.
        for _ in 0..200 {
            let inspect = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(SandboxError::engine("inspect exec"))?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(-1)
    }

    async fn read_counters(&self, container: &str) -> LimitCounters {
        match self
            .run_internal(
                container,
                vec!["bash".into(), "-c".into(), READ_COUNTERS.into()],
                vec![],
            )
            .await
        {
            Ok((_, out)) => LimitCounters::parse(&out),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read cgroup counters");
                LimitCounters::default()
            }
        }
    }

    /// Kills every process in the sandbox but PID 1 (see the module docs).
    async fn kill_all(&self, container: &str) -> Result<(), SandboxError> {
        self.docker
            .kill_container(
                container,
                Some(
                    KillContainerOptionsBuilder::default()
                        .signal("SIGUSR1")
                        .build(),
                ),
            )
            .await
            .map_err(SandboxError::engine("signal sandbox init"))
    }

    /// Kills the process group of one wrapped command.
    async fn kill_command(&self, container: &str, pidfile: &str) {
        let script = format!(
            "read -r p < '{pidfile}' && [[ $p =~ ^[0-9]+$ ]] && [ \"$p\" -gt 1 ] && kill -KILL -- -\"$p\""
        );
        self.kill_or_empty(container, script, "process-group kill")
            .await;
    }

    /// Runs the kill `script` in the sandbox; if even that helper cannot
    /// start or fails, empties the whole sandbox instead.
    async fn kill_or_empty(&self, container: &str, script: String, what: &str) {
        let killed = tokio::time::timeout(
            Duration::from_secs(5),
            self.run_internal(container, vec!["bash".into(), "-c".into(), script], vec![]),
        )
        .await;
        if !matches!(killed, Ok(Ok((0, _)))) {
            tracing::warn!(container, "{what} failed; emptying the sandbox");
            if let Err(e) = self.kill_all(container).await {
                tracing::warn!(container, error = %e, "cannot empty the sandbox");
            }
        }
    }

    /// Kills every process of the session whose leader's pid is in
    /// `pidfile` (an operator's shell and the jobs it started).
    async fn kill_session(&self, container: &str, pidfile: &str) {
        // Builtins only. The fields after the last `) ` of /proc/PID/stat are
        // state, ppid, pgrp, session: a process name cannot shift them.
        let script = format!(
            "read -r p < '{pidfile}' && [[ $p =~ ^[0-9]+$ ]] && [ \"$p\" -gt 1 ] || exit 1; \
             for d in /proc/[0-9]*; do read -r st < \"$d/stat\" 2>/dev/null || continue; \
             set -- ${{st##*) }}; [ \"$4\" = \"$p\" ] && kill -KILL \"${{d#/proc/}}\" 2>/dev/null; done; true"
        );
        self.kill_or_empty(container, script, "session kill").await;
    }

    fn exec_env(&self, sandbox: &Sandbox, request: &ExecRequest, pidfile: &str) -> Vec<String> {
        let mut fixed: Vec<(String, String)> = vec![("KILN_PIDFILE".into(), pidfile.into())];
        let secrets = match sandbox.phase {
            Phase::Setup => &sandbox.spec.setup_secrets,
            Phase::Agent => &sandbox.spec.agent_secrets,
        };
        fixed.extend(
            secrets
                .iter()
                .map(|s| (s.var.clone(), s.expose().to_string())),
        );
        if let Some(url) = sandbox.proxy_url() {
            for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                fixed.push((var.into(), url.clone()));
            }
        }
        // The runner's own variables win over the request's.
        request
            .env
            .iter()
            .filter(|(name, _)| !fixed.iter().any(|(f, _)| f == name))
            .chain(fixed.iter())
            .map(|(name, value)| format!("{name}={value}"))
            .collect()
    }

    async fn exec_impl(
        &self,
        sandbox: &Sandbox,
        request: ExecRequest,
        events: Option<ExecEvents>,
    ) -> Result<ExecOutcome, SandboxError> {
        request.validate().map_err(SandboxError::Invalid)?;
        let started = Instant::now();
        let timeout = request.timeout.unwrap_or(sandbox.spec.exec_timeout);
        let seq = sandbox.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pidfile = format!("/tmp/.kiln-exec-{seq}.pid");
        let mut argv = vec![
            "bash".to_string(),
            "-c".into(),
            EXEC_WRAPPER.into(),
            "kiln-exec".into(),
        ];
        argv.extend(request.argv.iter().cloned());
        let exec = self
            .docker
            .create_exec(
                &sandbox.id,
                CreateExecOptions {
                    cmd: Some(argv),
                    env: Some(self.exec_env(sandbox, &request, &pidfile)),
                    user: Some(SANDBOX_USER.to_string()),
                    working_dir: Some(
                        request
                            .workdir
                            .clone()
                            .unwrap_or_else(|| WORKSPACE_MOUNT.into()),
                    ),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    privileged: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::engine(format!(
                "create exec of {:?}",
                request.argv.first()
            )))?;
        let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(SandboxError::engine("start exec"))?
        else {
            return Err(SandboxError::Unexpected("exec started detached".into()));
        };
        let cap = sandbox.spec.output_cap;
        let (mut stdout, mut stderr) = (CappedOutput::default(), CappedOutput::default());
        let mut deadline = tokio::time::Instant::now() + timeout;
        let mut timed_out = None;
        let mut emptied = false;
        loop {
            match tokio::time::timeout_at(deadline, output.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let event = match chunk {
                        LogOutput::StdOut { message } => {
                            let kept = stdout.push(&message, cap);
                            (!kept.is_empty()).then(|| ExecEvent::Stdout(kept.to_vec()))
                        }
                        LogOutput::StdErr { message } => {
                            let kept = stderr.push(&message, cap);
                            (!kept.is_empty()).then(|| ExecEvent::Stderr(kept.to_vec()))
                        }
                        _ => None,
                    };
                    if let (Some(tx), Some(event)) = (&events, event) {
                        // A consumer that went away must not stop the command's accounting.
                        let _ = tx.send(event).await;
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(run_id = %sandbox.run_id, error = %e, "exec output stream failed");
                    break;
                }
                Ok(None) => break,
                Err(_) if timed_out.is_none() => {
                    tracing::info!(run_id = %sandbox.run_id, ?timeout, "command timed out; killing it");
                    timed_out = Some(timeout);
                    self.kill_command(&sandbox.id, &pidfile).await;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                }
                Err(_) if !emptied => {
                    // Something kept the output open (a daemonised child): empty the sandbox.
                    emptied = true;
                    self.kill_all(&sandbox.id).await?;
                    deadline = tokio::time::Instant::now() + KILL_GRACE;
                }
                Err(_) => break,
            }
        }
        let status = self.exit_code(&exec.id).await?;
        let mut counters = sandbox.counters.lock().await;
        let before = *counters;
        let after = if status != 0 || timed_out.is_some() {
            let now = self.read_counters(&sandbox.id).await;
            *counters = now;
            now
        } else {
            before
        };
        drop(counters);
        let reason = classify(status, timed_out, before, after);
        if !reason.success() {
            tracing::info!(run_id = %sandbox.run_id, %reason, "command did not succeed");
        }
        Ok(ExecOutcome {
            reason,
            stdout: stdout.kept,
            stderr: stderr.kept,
            stdout_dropped: stdout.dropped,
            stderr_dropped: stderr.dropped,
            duration: started.elapsed(),
        })
    }

    /// Lists processes other than PID 1, the checker itself and PID 1's
    /// idle `sleep`; empty means the sandbox holds nothing from before.
    async fn leftover_processes(&self, container: &str) -> Result<String, SandboxError> {
        // Builtins only: `read` from /proc, no subshells.
        let script = "for d in /proc/[0-9]*; do p=${d#/proc/}; [ \"$p\" = 1 ] && continue; [ \"$p\" = \"$$\" ] && continue; \
             read -r -a f < \"$d/stat\" 2>/dev/null || continue; c=; read -r -d '' c < \"$d/cmdline\" 2>/dev/null; \
             [ \"${f[3]}\" = 1 ] && [ \"$c\" = sleep ] && continue; echo \"$p:$c\"; done; true";
        let (_, out) = self
            .run_internal(
                container,
                vec!["bash".into(), "-c".into(), script.into()],
                vec![],
            )
            .await?;
        Ok(out.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    async fn enter_agent_phase_impl(&self, sandbox: &mut Sandbox) -> Result<(), SandboxError> {
        if sandbox.phase == Phase::Agent {
            return Ok(());
        }
        // 1. End every setup process, so none carries a secret or a socket over.
        let mut left = String::new();
        for _ in 0..20 {
            self.kill_all(&sandbox.id).await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = self.leftover_processes(&sandbox.id).await?;
            if left.is_empty() {
                break;
            }
        }
        if !left.is_empty() {
            return Err(SandboxError::ProcessesSurvived {
                run_id: sandbox.run_id.clone(),
                left,
            });
        }
        // 2. Look for setup secrets written to the writable places.
        let persisted = self.scan_for_secrets(sandbox).await?;
        // 3. Cut the network, then drop the proxy and the networks.
        if let Some(route) = sandbox.egress.take() {
            let disconnected = self
                .docker
                .disconnect_network(
                    &route.internal_network,
                    NetworkDisconnectRequest {
                        container: sandbox.id.clone(),
                        force: Some(true),
                    },
                )
                .await;
            route.remove(&self.docker).await;
            disconnected.map_err(SandboxError::engine(
                "disconnect the sandbox from its network",
            ))?;
        }
        let (_, interfaces) = self
            .run_internal(
                &sandbox.id,
                vec!["bash".into(), "-c".into(), "echo /sys/class/net/*".into()],
                vec![],
            )
            .await?;
        if interfaces.trim() != "/sys/class/net/lo" {
            return Err(SandboxError::Isolation {
                run_id: sandbox.run_id.clone(),
                what: format!(
                    "network interfaces left after disconnect: {}",
                    interfaces.trim()
                ),
            });
        }
        if let Some((secrets, paths)) = persisted {
            return Err(SandboxError::SecretPersisted {
                run_id: sandbox.run_id.clone(),
                secrets,
                paths,
            });
        }
        sandbox.phase = Phase::Agent;
        tracing::info!(run_id = %sandbox.run_id, "sandbox entered the agent phase");
        Ok(())
    }

    async fn scan_for_secrets(
        &self,
        sandbox: &Sandbox,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, SandboxError> {
        let secrets = &sandbox.spec.setup_secrets;
        if secrets.is_empty() {
            return Ok(None);
        }
        let mut env = Vec::new();
        let mut args = String::new();
        for (i, s) in secrets.iter().enumerate() {
            env.push(format!("KILN_SCAN_{i}={}", s.expose()));
            args.push_str(&format!(" -e \"$KILN_SCAN_{i}\""));
        }
        let dirs = if sandbox.spec.workspace_writable() {
            "/tmp /home/agent /dev/shm /workspace"
        } else {
            "/tmp /home/agent /dev/shm"
        };
        let script = format!("grep -rlsF{args} {dirs}; true");
        let (_, out) = self
            .run_internal(&sandbox.id, vec!["bash".into(), "-c".into(), script], env)
            .await?;
        let paths: Vec<String> = out.lines().map(str::to_owned).collect();
        if paths.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            secrets.iter().map(|s| s.name.clone()).collect(),
            paths,
        )))
    }

    async fn destroy_impl(&self, mut sandbox: Sandbox) -> Result<(), SandboxError> {
        let result = self
            .docker
            .remove_container(
                &sandbox.id,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await;
        if let Some(route) = sandbox.egress.take() {
            route.remove(&self.docker).await;
        }
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(SandboxError::engine(format!(
                "remove container {}",
                sandbox.id
            ))(e)),
        }
    }

    async fn shell_impl(&self, sandbox: &Sandbox, spec: ShellSpec) -> Result<Shell, SandboxError> {
        if sandbox.phase != Phase::Agent {
            // The setup phase has egress and setup secrets: no human shell there.
            return Err(SandboxError::WrongPhase {
                run_id: sandbox.run_id.clone(),
                what: "an interactive shell",
                phase: sandbox.phase,
            });
        }
        let term = spec
            .term
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= 64
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
            })
            .unwrap_or_else(|| "xterm-256color".into());
        // A fixed environment: the human's shell gets no secret, even the
        // agent phase's, and nothing from the runner's own environment.
        let seq = sandbox.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pidfile = format!("/tmp/.kiln-shell-{seq}.pid");
        let env = vec![
            format!("KILN_PIDFILE={pidfile}"),
            format!("TERM={term}"),
            "HOME=/home/agent".into(),
        ];
        let tty = spec.tty.is_some();
        // The wrapper's own non-interactive bash unsets PS1, so the prompt
        // goes in through `env` on the inner shell. Without a terminal the
        // shell reads a script from a pipe: no prompt or job-control warning
        // to interleave with the commands' output.
        let mut cmd: Vec<String> = ["bash", "-c", SHELL_WRAPPER, "kiln-shell"]
            .map(String::from)
            .to_vec();
        if tty {
            cmd.extend(
                [
                    "env",
                    "PS1=kiln:\\w\\$ ",
                    "bash",
                    "--noprofile",
                    "--norc",
                    "-i",
                ]
                .map(String::from),
            );
        } else {
            cmd.extend(["bash", "--noprofile", "--norc"].map(String::from));
        }
        let exec = self
            .docker
            .create_exec(
                &sandbox.id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(env),
                    user: Some(SANDBOX_USER.to_string()),
                    working_dir: Some(WORKSPACE_MOUNT.into()),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    privileged: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(SandboxError::engine("create the shell exec"))?;
        let StartExecResults::Attached { output, input } = self
            .docker
            .start_exec(
                &exec.id,
                Some(bollard::exec::StartExecOptions {
                    detach: false,
                    tty,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(SandboxError::engine("start the shell"))?
        else {
            return Err(SandboxError::Unexpected(
                "the shell started detached".into(),
            ));
        };
        let control = DockerShell {
            backend: self.clone(),
            container: sandbox.id.clone(),
            pidfile,
            exec: exec.id,
        };
        if let Some((cols, rows)) = spec.tty {
            control.resize(cols, rows).await?;
        }
        let output = output
            .map(|chunk| match chunk {
                Ok(out) => Ok(out.into_bytes().to_vec()),
                Err(e) => Err(SandboxError::engine("read the shell's output")(e)),
            })
            .boxed();
        Ok(Shell {
            input,
            output,
            control: Box::new(control),
        })
    }

    /// Removes sandboxes left by earlier processes of this host whose
    /// runner id is `<prefix><pid>` (one-shot CLI runs) and whose process is
    /// gone: a `kiln run` killed mid-run leaves its container, and the next
    /// CLI run cleans it. Live processes' sandboxes are never touched.
    pub async fn remove_orphans_of_dead_processes(
        &self,
        prefix: &str,
    ) -> Result<usize, SandboxError> {
        let containers = self
            .containers_labelled(&format!("{LABEL_MANAGED}=true"))
            .await?;
        let mut dead: Vec<String> = containers
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get(LABEL_RUNNER_ID).cloned())
            .filter(|runner| {
                runner
                    .strip_prefix(prefix)
                    .and_then(|pid| pid.parse::<u32>().ok())
                    .is_some_and(|pid| {
                        pid != std::process::id()
                            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
                    })
            })
            .collect();
        dead.sort();
        dead.dedup();
        let mut removed = 0;
        for runner_id in dead {
            let other = DockerBackend {
                runner_id,
                ..self.clone()
            };
            removed += other.remove_orphans_impl().await?;
        }
        Ok(removed)
    }

    /// Every container (running or not) with the label `key=value`.
    async fn containers_labelled(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, SandboxError> {
        let filter = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(SandboxError::engine(format!(
                "list containers labelled {label}"
            )))
    }

    async fn remove_orphans_impl(&self) -> Result<usize, SandboxError> {
        let label = format!("{LABEL_RUNNER_ID}={}", self.runner_id);
        let containers = self.containers_labelled(&label).await?;
        let filter = HashMap::from([("label".to_string(), vec![label])]);
        let mut removed = 0;
        for c in containers {
            let Some(id) = c.id else { continue };
            match self
                .docker
                .remove_container(
                    &id,
                    Some(RemoveContainerOptionsBuilder::default().force(true).build()),
                )
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(SandboxError::engine(format!(
                        "remove orphan container {id}"
                    ))(e));
                }
            }
            tracing::info!(container = %id, "removed orphan sandbox container");
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filter)
                    .build(),
            ))
            .await
            .map_err(SandboxError::engine("list orphan networks"))?;
        for n in networks {
            let Some(id) = n.id else { continue };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(SandboxError::engine(format!("remove orphan network {id}"))(
                        e,
                    ));
                }
            }
        }
        Ok(removed)
    }
}

/// A shell exec in a Docker container.
struct DockerShell {
    backend: DockerBackend,
    container: String,
    pidfile: String,
    exec: String,
}

impl ShellControl for DockerShell {
    fn resize(&self, cols: u16, rows: u16) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(async move {
            self.backend
                .docker
                .resize_exec(
                    &self.exec,
                    bollard::exec::ResizeExecOptions {
                        width: cols.max(1),
                        height: rows.max(1),
                    },
                )
                .await
                .map_err(SandboxError::engine("resize the shell"))
        })
    }

    fn exit_code(&self) -> BoxFuture<'_, Result<Option<i64>, SandboxError>> {
        Box::pin(async move {
            let info = self
                .backend
                .docker
                .inspect_exec(&self.exec)
                .await
                .map_err(SandboxError::engine("inspect the shell"))?;
            Ok(info.exit_code)
        })
    }

    fn end(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.backend.kill_session(&self.container, &self.pidfile))
    }
}

impl SandboxBackend for DockerBackend {
    fn create(&self, spec: SandboxSpec) -> BoxFuture<'_, Result<Sandbox, SandboxError>> {
        Box::pin(self.create_impl(spec))
    }

    fn exec<'a>(
        &'a self,
        sandbox: &'a Sandbox,
        request: ExecRequest,
        events: Option<ExecEvents>,
    ) -> BoxFuture<'a, Result<ExecOutcome, SandboxError>> {
        Box::pin(self.exec_impl(sandbox, request, events))
    }

    fn shell<'a>(
        &'a self,
        sandbox: &'a Sandbox,
        spec: ShellSpec,
    ) -> BoxFuture<'a, Result<Shell, SandboxError>> {
        Box::pin(self.shell_impl(sandbox, spec))
    }

    fn enter_agent_phase<'a>(
        &'a self,
        sandbox: &'a mut Sandbox,
    ) -> BoxFuture<'a, Result<(), SandboxError>> {
        Box::pin(self.enter_agent_phase_impl(sandbox))
    }

    fn destroy(&self, sandbox: Sandbox) -> BoxFuture<'_, Result<(), SandboxError>> {
        Box::pin(self.destroy_impl(sandbox))
    }

    fn remove_orphans(&self) -> BoxFuture<'_, Result<usize, SandboxError>> {
        Box::pin(self.remove_orphans_impl())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    fn backend() -> DockerBackend {
        // Building the body needs no engine; connect_with_local_defaults only parses.
        let docker = Docker::connect_with_local_defaults().expect("client");
        DockerBackend::new(docker, "unit").expect("valid id")
    }

    #[test]
    fn container_body_is_hardened() {
        let spec = SandboxSpec::new("r1", Role::Triage, "img:1", "/ws");
        let body = backend().container_body(&spec, "none".into());
        let hc = body.host_config.expect("host config");
        assert_eq!(
            hc.cap_drop,
            Some(vec!["ALL".to_string()]),
            "all capabilities should be dropped"
        );
        assert_eq!(hc.cap_add, None, "no capability should be added back");
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(
            hc.readonly_rootfs,
            Some(true),
            "root filesystem should be read-only"
        );
        let sec = hc.security_opt.expect("security options");
        assert!(sec.contains(&"no-new-privileges:true".to_string()));
        assert!(
            !sec.iter().any(|s| s.contains("unconfined")),
            "seccomp must stay on: {sec:?}"
        );
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(
            body.user.as_deref(),
            Some(SANDBOX_USER),
            "must not run as root"
        );
        let mounts = hc.mounts.expect("mounts");
        assert_eq!(
            mounts.len(),
            1,
            "only the workspace is mounted (no docker socket): {mounts:?}"
        );
        assert_eq!(
            mounts[0].read_only,
            Some(true),
            "triage gets a read-only workspace"
        );
        assert!(hc.binds.is_none() && hc.devices.is_none() && hc.volumes_from.is_none());
        assert_eq!(hc.memory, hc.memory_swap, "no swap beyond the memory limit");
        assert!(hc.pids_limit.is_some_and(|p| p > 0));
    }

    #[test]
    fn implementation_gets_a_writable_workspace_and_the_runtime() {
        let mut spec = SandboxSpec::new("r1", Role::Implementation, "img:1", "/ws");
        spec.runtime = Some("runsc".into());
        let hc = backend()
            .container_body(&spec, "none".into())
            .host_config
            .expect("host config");
        assert_eq!(hc.mounts.expect("mounts")[0].read_only, Some(false));
        assert_eq!(hc.runtime.as_deref(), Some("runsc"));
    }

    #[test]
    fn container_names_differ_between_runners_for_the_same_run_id() {
        let docker = Docker::connect_with_local_defaults().expect("client");
        let a = DockerBackend::new(docker.clone(), "serve-aaaa").expect("backend a");
        let b = DockerBackend::new(docker, "serve-bbbb").expect("backend b");
        assert_ne!(
            a.container_name("r1"),
            b.container_name("r1"),
            "two runners' r1 containers should have different names"
        );
    }

    #[test]
    fn bad_runner_ids_are_refused() {
        let docker = Docker::connect_with_local_defaults().expect("client");
        assert!(DockerBackend::new(docker, "a b").is_err());
    }
}
