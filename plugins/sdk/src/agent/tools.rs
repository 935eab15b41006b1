//! Ready-made tools over the workspace import. Roles pick the ones they
//! offer; the host's gate decides what each call may actually do.
use super::{Tool, ToolCallRecord, string_arg};
use crate::RoleError;
use crate::model::ToolSpec;
use crate::workspace::{self, Command, EntryKind};

fn spec(name: &str, description: &str, parameters: &str) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: description.into(),
        parameters: parameters.into(),
    }
}

/// `read_file {path}`: the text of a workspace file.
pub struct ReadFile;

impl Tool for ReadFile {
    fn spec(&self) -> ToolSpec {
        spec(
            "read_file",
            "Read a file of the repository checkout. Paths are relative to the repository root.",
            r#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        workspace::read_to_string(string_arg(args, "path")?)
    }
}

/// `list_dir {path}`: the entries of a workspace directory.
pub struct ListDir;

impl Tool for ListDir {
    fn spec(&self) -> ToolSpec {
        spec(
            "list_dir",
            "List a directory of the repository checkout (\"\" is the root). Directories end with /.",
            r#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        let entries = workspace::list_dir(args.get("path").and_then(|p| p.as_str()).unwrap_or(""))?;
        Ok(entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Directory => format!("{}/", e.name),
                EntryKind::Symlink => format!("{} -> (symlink)", e.name),
                _ => format!("{} ({} bytes)", e.name, e.size),
            })
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// `write_file {path, contents}`: create or replace a workspace file.
pub struct WriteFile;

const WRITE_FILE_PARAMETERS: &str = r#"{"type":"object","properties":{"path":{"type":"string"},"contents":{"type":"string"}},"required":["path","contents"]}"#;

fn write_file(path: &str, args: &serde_json::Value) -> Result<String, RoleError> {
    let contents = string_arg(args, "contents")?;
    workspace::write(path, contents)?;
    Ok(format!("wrote {} bytes to {path}", contents.len()))
}

impl Tool for WriteFile {
    fn spec(&self) -> ToolSpec {
        spec(
            "write_file",
            "Create or replace a file in the repository checkout with the given contents.",
            WRITE_FILE_PARAMETERS,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        write_file(string_arg(args, "path")?, args)
    }
}

/// `write_file {path, contents}` limited to paths under one directory (for
/// a role that should write only there, e.g. `specs/issue-7/`). The host's
/// policy decides too; this tells the model the rule before it tries.
pub struct WriteFileUnder(pub String);

impl Tool for WriteFileUnder {
    fn spec(&self) -> ToolSpec {
        spec(
            "write_file",
            &format!(
                "Create or replace a file under `{}` in the repository checkout with the given contents. Writes elsewhere are refused.",
                self.0
            ),
            WRITE_FILE_PARAMETERS,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        let path = string_arg(args, "path")?;
        let inside = path.strip_prefix(self.0.as_str()).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|part| !part.is_empty() && part != "." && part != "..")
        });
        if !inside {
            return Err(RoleError::Denied(format!(
                "{path}: this role writes only files under {}",
                self.0
            )));
        }
        write_file(path, args)
    }
}

/// Directories [`Search`] does not descend into: build output and VCS data.
const SKIPPED_DIRS: &[&str] = &[".git", "target", "node_modules", ".venv", "__pycache__"];

/// `search {query, path?}`: the lines of workspace text files containing a
/// string (case-insensitive), as `path:line: text`. Reads through the
/// workspace import, so it works without a sandbox.
pub struct Search;

/// How many files one search reads, and how many matches it reports, at most.
const SEARCH_MAX_FILES: usize = 2000;
const SEARCH_MAX_MATCHES: usize = 60;
const SEARCH_MAX_FILE_BYTES: u64 = 512 * 1024;

impl Tool for Search {
    fn spec(&self) -> ToolSpec {
        spec(
            "search",
            "Find lines containing a string (case-insensitive) in the text files of the repository checkout, under `path` (default the root). Answers `path:line: text`.",
            r#"{"type":"object","properties":{"query":{"type":"string"},"path":{"type":"string"}},"required":["query"]}"#,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        let query = string_arg(args, "query")?.to_lowercase();
        if query.is_empty() {
            return Err(RoleError::InvalidArgument("`query` is empty".into()));
        }
        let root = args
            .get("path")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        let mut pending = vec![root];
        let (mut files, mut matches) = (0, Vec::new());
        while let Some(dir) = pending.pop() {
            let mut entries = workspace::list_dir(&dir)?;
            // Pop order is reversed: visit names in sorted order.
            entries.reverse();
            for entry in entries {
                let path = if dir.is_empty() {
                    entry.name.clone()
                } else {
                    format!("{dir}/{}", entry.name)
                };
                match entry.kind {
                    EntryKind::Directory if !SKIPPED_DIRS.contains(&entry.name.as_str()) => {
                        pending.push(path)
                    }
                    EntryKind::File if entry.size <= SEARCH_MAX_FILE_BYTES => {
                        files += 1;
                        if files > SEARCH_MAX_FILES {
                            matches.push(format!(
                                "[stopped after {SEARCH_MAX_FILES} files: narrow `path`]"
                            ));
                            return Ok(matches.join("\n"));
                        }
                        let Ok(bytes) = workspace::read(&path) else {
                            continue;
                        };
                        // Binary files are skipped.
                        let Ok(text) = std::str::from_utf8(&bytes) else {
                            continue;
                        };
                        for (n, line) in text.lines().enumerate() {
                            if line.to_lowercase().contains(&query) {
                                matches.push(format!("{path}:{}: {}", n + 1, line.trim()));
                                if matches.len() == SEARCH_MAX_MATCHES {
                                    matches.push(format!(
                                        "[stopped at {SEARCH_MAX_MATCHES} matches: narrow the query]"
                                    ));
                                    return Ok(matches.join("\n"));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if matches.is_empty() {
            Ok(format!("no matches in {files} files"))
        } else {
            Ok(matches.join("\n"))
        }
    }
}

/// `run_command {argv, timeout_ms?}`: run a command in the sandbox.
pub struct RunCommand;

impl Tool for RunCommand {
    fn spec(&self) -> ToolSpec {
        spec(
            "run_command",
            "Run a command in the sandbox at the repository root (no network). argv is the program and its arguments; use [\"bash\",\"-c\",\"...\"] for a shell.",
            r#"{"type":"object","properties":{"argv":{"type":"array","items":{"type":"string"}},"timeout_ms":{"type":"integer"}},"required":["argv"]}"#,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        let argv: Vec<String> = args
            .get("argv")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if argv.is_empty() {
            return Err(RoleError::InvalidArgument(
                "`argv` must be a non-empty array of strings".into(),
            ));
        }
        let mut cmd = Command::from_argv(argv);
        if let Some(ms) = args.get("timeout_ms").and_then(|v| v.as_u64()) {
            cmd = cmd.timeout_ms(ms);
        }
        let out = cmd.run()?;
        let status = match (&out.exit_code, &out.killed_by) {
            (_, Some(why)) => CommandStatus::Killed(why.clone()),
            (Some(code), None) => CommandStatus::Exited(*code),
            (None, None) => CommandStatus::NoStatus,
        };
        Ok(format!(
            "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        ))
    }
}

/// How a `run_command` call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    /// The command exited with this code.
    Exited(i32),
    /// The command was stopped (`timeout`, `oom-killed`, ...).
    Killed(String),
    /// The sandbox gave no status.
    NoStatus,
    /// The command could not run at all; the error as the model saw it
    /// (e.g. `unavailable: ... no sandbox attached`).
    NotRun(String),
}

impl std::fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first line of `run_command`'s answer; `from_output` reads it back.
        match self {
            CommandStatus::Exited(code) => write!(f, "exit code {code}"),
            CommandStatus::Killed(why) => write!(f, "killed: {why}"),
            CommandStatus::NoStatus => f.write_str("no exit status"),
            CommandStatus::NotRun(why) => write!(f, "did not run: {why}"),
        }
    }
}

impl CommandStatus {
    /// True if the command ran and exited with 0.
    pub fn success(&self) -> bool {
        *self == CommandStatus::Exited(0)
    }

    fn from_output(output: &str, is_error: bool) -> Self {
        let first = output.lines().next().unwrap_or_default();
        if is_error {
            return CommandStatus::NotRun(first.to_string());
        }
        if let Some(code) = first
            .strip_prefix("exit code ")
            .and_then(|c| c.parse().ok())
        {
            CommandStatus::Exited(code)
        } else if let Some(why) = first.strip_prefix("killed: ") {
            CommandStatus::Killed(why.to_string())
        } else {
            CommandStatus::NoStatus
        }
    }
}

/// One `run_command` call of a finished loop: what ran and how it ended,
/// as the sandbox reported it (not as the model described it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// How it ended.
    pub status: CommandStatus,
}

/// The `run_command` calls among `calls` (see [`super::Agent::tool_calls`]).
pub fn command_runs(calls: &[ToolCallRecord]) -> Vec<CommandRun> {
    calls
        .iter()
        .filter(|c| c.name == "run_command")
        .map(|c| CommandRun {
            argv: c
                .arguments
                .get("argv")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .map(|s| s.as_str().map_or_else(|| s.to_string(), String::from))
                        .collect()
                })
                .unwrap_or_default(),
            status: CommandStatus::from_output(&c.output, c.is_error),
        })
        .collect()
}

/// The paths written with `write_file` among `calls`, first write first,
/// each once.
pub fn written_files(calls: &[ToolCallRecord]) -> Vec<String> {
    let mut paths: Vec<String> = Vec::new();
    for c in calls
        .iter()
        .filter(|c| c.name == "write_file" && !c.is_error)
    {
        if let Some(p) = c.arguments.get("path").and_then(|p| p.as_str())
            && !paths.iter().any(|q| q == p)
        {
            paths.push(p.to_string());
        }
    }
    paths
}

/// `workspace_diff {}`: the changes made so far, as a unified diff.
pub struct Diff;

impl Tool for Diff {
    fn spec(&self) -> ToolSpec {
        spec(
            "workspace_diff",
            "Show the changes made in the checkout so far, as a unified diff.",
            r#"{"type":"object","properties":{}}"#,
        )
    }
    fn call(&mut self, _args: &serde_json::Value) -> Result<String, RoleError> {
        workspace::diff()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, args: serde_json::Value, output: &str, is_error: bool) -> ToolCallRecord {
        ToolCallRecord {
            name: name.into(),
            arguments: args,
            output: output.into(),
            is_error,
        }
    }

    #[test]
    fn command_runs_report_what_the_sandbox_said() {
        let calls = [
            record("read_file", serde_json::json!({"path": "x"}), "text", false),
            record(
                "run_command",
                serde_json::json!({"argv": ["bash", "tests/run.sh"]}),
                &format!("{}\n--- stdout ---\nok", CommandStatus::Exited(0)),
                false,
            ),
            record(
                "run_command",
                serde_json::json!({"argv": ["make"]}),
                &format!(
                    "{}\n--- stdout ---\n",
                    CommandStatus::Killed("timeout".into())
                ),
                false,
            ),
            record(
                "run_command",
                serde_json::json!({"argv": ["make"]}),
                "unavailable: workspace.exec make: this run has no sandbox attached",
                true,
            ),
        ];
        let runs = command_runs(&calls);
        assert_eq!(
            runs.iter().map(|r| r.status.clone()).collect::<Vec<_>>(),
            [
                CommandStatus::Exited(0),
                CommandStatus::Killed("timeout".into()),
                CommandStatus::NotRun(
                    "unavailable: workspace.exec make: this run has no sandbox attached".into()
                ),
            ]
        );
        assert_eq!(runs[0].argv, ["bash", "tests/run.sh"]);
        assert!(runs[0].status.success() && !runs[1].status.success());
    }

    #[test]
    fn written_files_lists_each_successful_write_once() {
        let calls = [
            record(
                "write_file",
                serde_json::json!({"path": "a"}),
                "wrote",
                false,
            ),
            record(
                "write_file",
                serde_json::json!({"path": "b"}),
                "denied",
                true,
            ),
            record(
                "write_file",
                serde_json::json!({"path": "a"}),
                "wrote",
                false,
            ),
        ];
        assert_eq!(written_files(&calls), ["a"]);
    }

    #[test]
    fn a_scoped_write_refuses_paths_outside_its_directory_before_the_host_sees_them() {
        let mut tool = WriteFileUnder("specs/issue-7/".into());
        for path in [
            "src/main.rs",
            "specs/issue-7/",
            "specs/issue-7/../../src/x",
            "specs/issue-7//x",
            "specs/issue-70/PRODUCT.md",
        ] {
            let err = tool
                .call(&serde_json::json!({"path": path, "contents": "x"}))
                .expect_err(path);
            assert!(matches!(err, RoleError::Denied(_)), "{path}: {err:?}");
        }
    }
}
