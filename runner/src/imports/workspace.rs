//! `kiln:role/workspace`: the run's checkout, read and written on the host
//! through cap-std only, so a symlink planted by the sandbox (`ln -s
//! /etc/shadow x`) cannot make the host read or write outside it.
//!
//! | WIT function   | capability        | policy effect | other checks |
//! |----------------|-------------------|---------------|--------------|
//! | `read-file`    | `workspace.read`  | `workspace.read` | size cap `max_file_bytes` |
//! | `list-dir`     | `workspace.read`  | `workspace.read` | — |
//! | `diff`         | `workspace.read`  | `workspace.read` | host git through the shadow repository ([`crate::publish`]); output redacted |
//! | `write-file`   | `workspace.write` | `workspace.write` (path, contents: secrets refused) | read-only mounts refuse; size cap |
//! | `remove-file`  | `workspace.write` | `workspace.write` (path) | read-only mounts refuse |
//! | `exec`         | `workspace.exec`  | `workspace.exec` (argv) | needs a sandbox; timeout and output capped; output redacted |
use std::sync::Arc;

use cap_std::fs::Dir;

use super::{RunState, check_size};
use crate::plugin::capability::Capability;
use crate::plugin::types::{DirEntry, EntryKind, ExecOutput, ExecRequest, RoleError};
use crate::policy::Effect;
use crate::publish::Publisher;
use crate::sandbox::{Sandbox, SandboxBackend, exec::ExitReason};
use crate::session::EventKind;

/// A workspace directory handed to a run.
#[derive(Clone)]
pub struct WorkspaceMount {
    /// The directory, opened with cap-std (every access stays inside it).
    pub dir: Arc<Dir>,
    /// Whether the role may write (spec, implementation) or not (triage, review).
    pub writable: bool,
}

impl WorkspaceMount {
    /// Open `path` as a workspace.
    pub fn open(path: &std::path::Path, writable: bool) -> std::io::Result<Self> {
        let dir = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(WorkspaceMount {
            dir: Arc::new(dir),
            writable,
        })
    }
}

/// Per-run state of the workspace interface.
pub struct WorkspaceCtx {
    /// The mounted workspace, if the run has one.
    pub mount: Option<WorkspaceMount>,
    /// The sandbox commands run in, if the run has one.
    pub sandbox: Option<SandboxHandle>,
    /// Diffs the workspace against its base without trusting its `.git`.
    pub publisher: Option<Arc<Publisher>>,
}

/// A run's sandbox and the backend that runs commands in it.
#[derive(Clone)]
pub struct SandboxHandle {
    /// The backend (Docker today).
    pub backend: Arc<dyn SandboxBackend>,
    /// The run's sandbox.
    pub sandbox: Arc<Sandbox>,
}

/// Longest command time a plugin may ask for; the sandbox's own default
/// applies when it asks for none.
const MAX_EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Turn an I/O error on `path` into the error a plugin can act on.
fn io_error(op: &str, path: &str, e: std::io::Error) -> RoleError {
    use std::io::ErrorKind::*;
    match e.kind() {
        NotFound => RoleError::NotFound(format!("{op} {path}: no such file or directory")),
        // cap-std reports paths that escape the directory (via `..`, an
        // absolute path or a symlink) as PermissionDenied.
        PermissionDenied => RoleError::Denied(format!(
            "{op} {path}: path leads outside the workspace or is not accessible"
        )),
        InvalidInput | InvalidFilename | NotADirectory | IsADirectory => {
            RoleError::InvalidArgument(format!("{op} {path}: {e}"))
        }
        _ => RoleError::Internal(format!("{op} {path}: {e}")),
    }
}

impl RunState {
    fn workspace_dir(&self, op: &str) -> Result<&WorkspaceMount, RoleError> {
        self.workspace
            .mount
            .as_ref()
            .ok_or_else(|| RoleError::Unavailable(format!("{op}: this run has no workspace")))
    }

    fn writable_dir(&self, op: &str, path: &str) -> Result<&WorkspaceMount, RoleError> {
        self.require(Capability::WorkspaceWrite, format_args!("{op} {path}"))?;
        let mount = self.workspace_dir(op)?;
        if !mount.writable {
            return Err(RoleError::Denied(format!(
                "{op} {path}: the workspace is read-only for role {}",
                self.role
            )));
        }
        Ok(mount)
    }
}

fn relative(path: &str) -> &str {
    let p = path.trim_start_matches("./");
    if p.is_empty() { "." } else { p }
}

impl RunState {
    /// `workspace.read-file`.
    pub(crate) async fn read_file(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<Vec<u8>, RoleError>> {
        let op = "workspace.read-file";
        let result = (|| {
            self.require(Capability::WorkspaceRead, format_args!("{op} {path}"))?;
            let dir = &self.workspace_dir(op)?.dir;
            // One open: the size is checked on the handle that is read, and
            // the read is bounded, so a file growing in between changes nothing.
            let file = dir
                .open(relative(&path))
                .map_err(|e| io_error(op, &path, e))?;
            let len = file.metadata().map_err(|e| io_error(op, &path, e))?.len();
            let max = self.limits.max_file_bytes as u64;
            if len > max {
                return Err(RoleError::LimitExceeded(format!(
                    "{op} {path}: file is {len} bytes, the limit is {max}"
                )));
            }
            let mut contents = Vec::with_capacity(len as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(file, max), &mut contents)
                .map_err(|e| io_error(op, &path, e))?;
            Ok(contents)
        })();
        Ok(result)
    }

    /// `workspace.write-file`: traps past the size limit.
    pub(crate) async fn write_file(
        &mut self,
        path: String,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), RoleError>> {
        self.unless_paused().await;
        let op = "workspace.write-file";
        check_size(
            &format!("{op} {path}: contents"),
            contents.len(),
            self.limits.max_file_bytes,
        )?;
        let result = (|| {
            let dir = &self.writable_dir(op, &path)?.dir;
            let contents = match self.gate_now(Effect::WorkspaceWrite {
                path: path.clone(),
                content: contents,
            })? {
                Effect::WorkspaceWrite { content, .. } => content,
                _ => {
                    return Err(RoleError::Internal(format!(
                        "{op}: the gate changed the effect"
                    )));
                }
            };
            let rel = relative(&path);
            if let Some(parent) = std::path::Path::new(rel)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                dir.create_dir_all(parent)
                    .map_err(|e| io_error(op, &path, e))?;
            }
            dir.write(rel, &contents)
                .map_err(|e| io_error(op, &path, e))
        })();
        Ok(result)
    }

    /// `workspace.remove-file`.
    pub(crate) async fn remove_file(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<(), RoleError>> {
        self.unless_paused().await;
        let op = "workspace.remove-file";
        let result = (|| {
            let dir = &self.writable_dir(op, &path)?.dir;
            self.gate_now(Effect::WorkspaceWrite {
                path: path.clone(),
                content: Vec::new(),
            })?;
            dir.remove_file(relative(&path))
                .map_err(|e| io_error(op, &path, e))
        })();
        Ok(result)
    }

    /// `workspace.list-dir`.
    pub(crate) async fn list_dir(
        &mut self,
        path: String,
    ) -> wasmtime::Result<Result<Vec<DirEntry>, RoleError>> {
        let op = "workspace.list-dir";
        let result = (|| {
            self.require(Capability::WorkspaceRead, format_args!("{op} {path}"))?;
            let dir = &self.workspace_dir(op)?.dir;
            self.gate_now(Effect::WorkspaceRead {
                path: relative(&path).to_string(),
            })?;
            let sub = dir
                .open_dir(relative(&path))
                .map_err(|e| io_error(op, &path, e))?;
            let mut entries = Vec::new();
            for entry in sub.entries().map_err(|e| io_error(op, &path, e))? {
                let entry = entry.map_err(|e| io_error(op, &path, e))?;
                let ft = entry.file_type().map_err(|e| io_error(op, &path, e))?;
                let kind = if ft.is_symlink() {
                    EntryKind::Symlink
                } else if ft.is_dir() {
                    EntryKind::Directory
                } else if ft.is_file() {
                    EntryKind::File
                } else {
                    EntryKind::Other
                };
                let size = if kind == EntryKind::File {
                    entry.metadata().map(|m| m.len()).unwrap_or(0)
                } else {
                    0
                };
                entries.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    kind,
                    size,
                });
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        })();
        Ok(result)
    }

    /// `workspace.exec`: a command in the run's sandbox.
    pub(crate) async fn exec(&mut self, request: ExecRequest) -> Result<ExecOutput, RoleError> {
        self.unless_paused().await;
        let argv0 = request.argv.first().cloned().unwrap_or_default();
        self.exec_gated(request, &argv0).await
    }

    /// `workspace.diff`: the workspace's changes against the run's start.
    pub(crate) async fn diff(&mut self) -> Result<String, RoleError> {
        self.require(Capability::WorkspaceRead, format_args!("workspace.diff"))?;
        self.gate_now(Effect::WorkspaceRead { path: ".".into() })?;
        let Some(publisher) = self.workspace.publisher.clone() else {
            return Err(RoleError::Unavailable(
                "workspace.diff: this run has no repository to diff against".into(),
            ));
        };
        match publisher.diff().await {
            Ok(d) => Ok(self.redact(d)),
            Err(e) => Err(RoleError::Internal(format!("workspace.diff: {e}"))),
        }
    }

    async fn exec_gated(
        &mut self,
        request: ExecRequest,
        argv0: &str,
    ) -> Result<ExecOutput, RoleError> {
        let op = "workspace.exec";
        self.require(Capability::WorkspaceExec, format_args!("{op} {argv0}"))?;
        let Some(handle) = self.workspace.sandbox.clone() else {
            return Err(RoleError::Unavailable(format!(
                "{op} {argv0}: this run has no sandbox attached"
            )));
        };
        if request.argv.is_empty() {
            return Err(RoleError::InvalidArgument(format!("{op}: argv is empty")));
        }
        let argv = match self.gate_now(Effect::WorkspaceExec { argv: request.argv })? {
            Effect::WorkspaceExec { argv } => argv,
            _ => {
                return Err(RoleError::Internal(format!(
                    "{op}: the gate changed the effect"
                )));
            }
        };
        let workdir = match request.workdir.as_deref().map(relative) {
            None | Some(".") => None,
            Some(w) if w.starts_with('/') || w.split('/').any(|c| c == "..") => {
                return Err(RoleError::InvalidArgument(format!(
                    "{op}: workdir {w:?} must be relative to the workspace, without '..'"
                )));
            }
            Some(w) => Some(format!("/workspace/{w}")),
        };
        let timeout = request
            .timeout_ms
            .map(|ms| std::time::Duration::from_millis(ms).min(MAX_EXEC_TIMEOUT));
        let req = crate::sandbox::exec::ExecRequest {
            argv: argv.clone(),
            env: request.env,
            workdir,
            timeout,
        };
        let outcome = handle
            .backend
            .exec(&handle.sandbox, req, None)
            .await
            .map_err(|e| RoleError::Unavailable(format!("{op} {argv0}: {e}")))?;
        let cap = request
            .max_output_bytes
            .map(|m| m as usize)
            .unwrap_or(usize::MAX);
        let mut truncated = outcome.stdout_dropped > 0 || outcome.stderr_dropped > 0;
        let mut cut = |bytes: &[u8]| {
            if bytes.len() > cap {
                truncated = true;
                String::from_utf8_lossy(&bytes[..cap]).into_owned()
            } else {
                String::from_utf8_lossy(bytes).into_owned()
            }
        };
        let stdout = cut(&outcome.stdout);
        let stderr = cut(&outcome.stderr);
        // Commands see the workspace, which may hold secrets; nothing they
        // print leaves the host (to the plugin, the model, the log) unredacted.
        let (stdout, stderr) = (self.redact(stdout), self.redact(stderr));
        let (exit_code, killed_by) = match &outcome.reason {
            ExitReason::Exited(code) => (Some(*code as i32), None),
            ExitReason::TimedOut(_) => (None, Some("timeout".to_string())),
            ExitReason::OomKilled => (None, Some("oom-killed".to_string())),
            ExitReason::PidsLimit { status } => {
                (Some(*status as i32), Some("pids-limit".to_string()))
            }
        };
        self.events.record(
            EventKind::Exec,
            format!(
                "$ {}\n{} ({} ms)\n{}{}",
                argv.join(" "),
                outcome.reason,
                outcome.duration.as_millis(),
                tail(&stdout, 4096),
                tail(&stderr, 4096)
            ),
        );
        Ok(ExecOutput {
            exit_code,
            killed_by,
            stdout,
            stderr,
            truncated,
            duration_ms: outcome.duration.as_millis() as u64,
        })
    }
}

/// The last `max` bytes of `s` (on a character boundary), for the log.
fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::imports::RunContext;
    use crate::plugin::capability::builtin_role_grants;
    use crate::plugin::limits::PluginLimits;
    use crate::session::MemoryEvents;

    fn state(ws: &std::path::Path, role: &str, writable: bool) -> RunState {
        let mut ctx = RunContext::new(Arc::new(MemoryEvents::new()));
        ctx.workspace = Some(WorkspaceMount::open(ws, writable).expect("open workspace"));
        let caps = builtin_role_grants(role).expect("role");
        RunState::new("test", role, caps, PluginLimits::default(), ctx)
    }

    /// A workspace next to a secret file, with symlinks a hostile sandbox
    /// could have planted pointing at it.
    fn hostile_workspace() -> (tempfile::TempDir, std::path::PathBuf) {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("secret.txt"), "TOP-SECRET").expect("secret");
        let ws = root.path().join("ws");
        std::fs::create_dir(&ws).expect("ws");
        std::fs::write(ws.join("ok.txt"), "fine").expect("ok");
        std::os::unix::fs::symlink(root.path().join("secret.txt"), ws.join("link-abs"))
            .expect("symlink");
        std::os::unix::fs::symlink("../secret.txt", ws.join("link-rel")).expect("symlink");
        std::os::unix::fs::symlink(root.path(), ws.join("link-dir")).expect("symlink");
        std::os::unix::fs::symlink("/etc", ws.join("etc")).expect("symlink");
        (root, ws)
    }

    #[tokio::test]
    async fn reads_that_try_to_leave_the_workspace_are_refused() {
        let (_root, ws) = hostile_workspace();
        let mut s = state(&ws, "implementation", true);
        assert_eq!(
            s.read_file("ok.txt".into()).await.expect("no trap"),
            Ok(b"fine".to_vec())
        );
        for path in [
            "../secret.txt",       // parent directory
            "/etc/passwd",         // absolute path
            "link-abs",            // symlink to an absolute path outside
            "link-rel",            // symlink to a relative path outside
            "link-dir/secret.txt", // through a symlinked directory
            "etc/passwd",          // symlink to /etc
            "ok.txt/../../secret.txt",
        ] {
            let result = s.read_file(path.into()).await.expect("no trap");
            assert!(
                matches!(
                    result,
                    Err(RoleError::Denied(_))
                        | Err(RoleError::NotFound(_))
                        | Err(RoleError::InvalidArgument(_))
                ),
                "reading {path:?} should be refused, got: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn writes_that_try_to_leave_the_workspace_are_refused_and_touch_nothing() {
        let (root, ws) = hostile_workspace();
        let mut s = state(&ws, "implementation", true);
        for path in [
            "../secret.txt",
            "/tmp/kiln-escape",
            "link-abs",
            "link-rel",
            "link-dir/secret.txt",
            "etc/kiln-escape",
        ] {
            let result = s
                .write_file(path.into(), b"pwned".to_vec())
                .await
                .expect("no trap");
            assert!(
                result.is_err(),
                "writing {path:?} should be refused, got: {result:?}"
            );
        }
        assert_eq!(
            std::fs::read_to_string(root.path().join("secret.txt")).expect("read"),
            "TOP-SECRET"
        );
        assert!(
            !std::path::Path::new("/tmp/kiln-escape").exists()
                && !std::path::Path::new("/etc/kiln-escape").exists()
        );
        assert_eq!(
            s.write_file("new/dir/file.txt".into(), b"hi".to_vec())
                .await
                .expect("no trap"),
            Ok(())
        );
        assert_eq!(
            std::fs::read_to_string(ws.join("new/dir/file.txt")).expect("read"),
            "hi"
        );
    }

    #[tokio::test]
    async fn read_only_roles_cannot_write_even_inside_the_workspace() {
        let (_root, ws) = hostile_workspace();
        // triage has no workspace.write capability at all
        let mut triage = state(&ws, "triage", false);
        let result = triage
            .write_file("ok.txt".into(), b"x".to_vec())
            .await
            .expect("no trap");
        assert!(
            matches!(result, Err(RoleError::NotPermitted(ref m)) if m.contains("workspace.write")),
            "got: {result:?}"
        );
        // an implementation run on a read-only mount is refused by the mount
        let mut ro = state(&ws, "implementation", false);
        let result = ro.remove_file("ok.txt".into()).await.expect("no trap");
        assert!(
            matches!(result, Err(RoleError::Denied(ref m)) if m.contains("read-only")),
            "got: {result:?}"
        );
        assert!(ws.join("ok.txt").exists());
    }

    #[tokio::test]
    async fn oversized_writes_trap_and_listing_shows_symlinks_without_following_them() {
        let (_root, ws) = hostile_workspace();
        let mut s = state(&ws, "implementation", true);
        let err = s
            .write_file("big".into(), vec![0; (8 << 20) + 1])
            .await
            .expect_err("should trap");
        assert!(
            err.to_string()
                .contains("contents is 8388609 bytes, the limit is 8388608 bytes"),
            "got: {err}"
        );
        let entries = s.list_dir("".into()).await.expect("no trap").expect("list");
        let link = entries
            .iter()
            .find(|e| e.name == "link-dir")
            .expect("link-dir listed");
        assert_eq!(
            link.kind,
            EntryKind::Symlink,
            "symlinks must be reported, not followed"
        );
    }
}
