//! Files that steer agents: instruction files (`AGENTS.md`, `CLAUDE.md`,
//! `.cursorrules`, Copilot instructions, …), Kiln's own `.kiln/**` and
//! skills. A change to one of them changes what the next model run is told,
//! so any change (added, edited or deleted) is flagged as prompt injection
//! for a human to read.
use super::{Category, FileChange, FileStatus, Finding};

const SCANNER: &str = "steering";

/// Why `path` steers agents, if it does.
pub fn steering_file(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    // `dir` at the start or after a `/` (no string made per check).
    let has_dir = |dir: &str| {
        lower.starts_with(dir)
            || lower
                .match_indices(dir)
                .any(|(i, _)| i > 0 && lower.as_bytes()[i - 1] == b'/')
    };
    if has_dir(".kiln/") {
        Some("Kiln's repository configuration and skills")
    } else if name == "skill.md" || lower.starts_with("skills/") || has_dir(".claude/") {
        Some("an agent skill")
    } else if matches!(
        name,
        "agents.md"
            | "agent.md"
            | "claude.md"
            | "gemini.md"
            | ".cursorrules"
            | ".windsurfrules"
            | ".clinerules"
            | "copilot-instructions.md"
            | ".aider.conf.yml"
            | "conventions.md"
    ) || has_dir(".cursor/")
        || has_dir(".github/instructions/")
        || has_dir(".github/prompts/")
        || has_dir(".continue/")
        || has_dir(".windsurf/")
        || has_dir(".clinerules/")
    {
        Some("an agent instruction file")
    } else {
        None
    }
}

/// Checks one changed file.
pub fn scan_change(change: &FileChange, out: &mut Vec<Finding>) {
    let Some(what) = steering_file(&change.path) else {
        return;
    };
    let verb = match change.status {
        FileStatus::Added => "adds",
        FileStatus::Modified => "changes",
        FileStatus::Deleted => "deletes",
    };
    out.push(Finding {
        category: Category::PromptInjection,
        scanner: SCANNER,
        reason: format!("the patch {verb} {what}, which the next agent run will obey"),
        file: change.path.clone(),
        line: change.added.first().map(|l| l.number),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_files_anywhere_are_steering_files() {
        for p in [
            "AGENTS.md",
            "sub/dir/CLAUDE.md",
            ".cursorrules",
            ".cursor/rules/x.mdc",
            ".github/copilot-instructions.md",
            ".kiln/skills/triage.md",
            ".kiln/kiln.toml",
            "skills/detect/SKILL.md",
        ] {
            assert!(steering_file(p).is_some(), "{p}");
        }
        for p in ["docs/agents.txt", "src/agents.rs", "README.md", "kiln/x.rs"] {
            assert!(steering_file(p).is_none(), "{p}");
        }
    }
}
