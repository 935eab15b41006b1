//! Ready-made tools over the workspace import. Roles pick the ones they
//! offer; the host's gate decides what each call may actually do.
use super::{Tool, string_arg};
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

impl Tool for WriteFile {
    fn spec(&self) -> ToolSpec {
        spec(
            "write_file",
            "Create or replace a file in the repository checkout with the given contents.",
            r#"{"type":"object","properties":{"path":{"type":"string"},"contents":{"type":"string"}},"required":["path","contents"]}"#,
        )
    }
    fn call(&mut self, args: &serde_json::Value) -> Result<String, RoleError> {
        let path = string_arg(args, "path")?;
        let contents = string_arg(args, "contents")?;
        workspace::write(path, contents)?;
        Ok(format!("wrote {} bytes to {path}", contents.len()))
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
            (_, Some(why)) => format!("killed: {why}"),
            (Some(code), None) => format!("exit code {code}"),
            (None, None) => "no exit status".to_string(),
        };
        Ok(format!(
            "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.stdout, out.stderr
        ))
    }
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
