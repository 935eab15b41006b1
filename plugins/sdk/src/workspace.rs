//! The run's checkout of the repository. Paths are relative to the
//! workspace root; the host refuses any path that would leave it.
pub use crate::wit::kiln::role::workspace::{DirEntry, EntryKind, ExecOutput, ExecRequest};
use crate::{RoleError, wit::kiln::role::workspace as raw};

/// Read a file as bytes.
pub fn read(path: &str) -> Result<Vec<u8>, RoleError> {
    raw::read_file(path)
}

/// Read a file as UTF-8 text (invalid sequences are replaced).
pub fn read_to_string(path: &str) -> Result<String, RoleError> {
    raw::read_file(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Create or replace a file.
pub fn write(path: &str, contents: impl AsRef<[u8]>) -> Result<(), RoleError> {
    raw::write_file(path, contents.as_ref())
}

/// Remove a file.
pub fn remove(path: &str) -> Result<(), RoleError> {
    raw::remove_file(path)
}

/// List a directory (`""` is the root).
pub fn list_dir(path: &str) -> Result<Vec<DirEntry>, RoleError> {
    raw::list_dir(path)
}

/// The workspace's changes against the run's base commit, as a unified diff.
pub fn diff() -> Result<String, RoleError> {
    raw::diff()
}

/// A command to run in the sandbox, built step by step.
#[derive(Debug, Clone)]
pub struct Command {
    request: ExecRequest,
}

impl Command {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            request: ExecRequest {
                argv: vec![program.into()],
                env: Vec::new(),
                workdir: None,
                timeout_ms: None,
                max_output_bytes: None,
            },
        }
    }

    /// A command from a full argv.
    pub fn from_argv(argv: Vec<String>) -> Self {
        let mut cmd = Command::new(String::new());
        cmd.request.argv = argv;
        cmd
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.request.argv.push(arg.into());
        self
    }

    /// Set an environment variable for this command.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.push((key.into(), value.into()));
        self
    }

    /// Run in this directory (relative to the workspace root).
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.request.workdir = Some(dir.into());
        self
    }

    /// Give up after this many milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.request.timeout_ms = Some(ms);
        self
    }

    /// Keep at most this many bytes of stdout and of stderr.
    pub fn max_output_bytes(mut self, bytes: u64) -> Self {
        self.request.max_output_bytes = Some(bytes);
        self
    }

    /// Run the command and wait for it.
    pub fn run(&self) -> Result<ExecOutput, RoleError> {
        raw::exec(&self.request)
    }
}

impl ExecOutput {
    /// True if the command exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}
