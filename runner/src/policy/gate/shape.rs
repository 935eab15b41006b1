//! Step 1, shape (blame: guest): paths are relative and normalised, branch
//! and label names are valid, texts and argument lists are within limits.

use super::{Effect, Violation, clip};

/// Longest comment, PR body or review body accepted (GitHub's own limit).
pub const MAX_BODY_CHARS: usize = 65_536;
/// Longest pull request title accepted.
pub const MAX_TITLE_CHARS: usize = 256;
/// Longest label name accepted (GitHub's own limit).
pub const MAX_LABEL_CHARS: usize = 50;
/// Longest workspace path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Largest single file write accepted, in bytes.
pub const MAX_WRITE_BYTES: usize = 64 << 20;
/// Most arguments in one exec.
pub const MAX_ARGS: usize = 4096;
/// Most labels in one call.
pub const MAX_LABELS: usize = 100;
/// Longest commit status context accepted (`kiln/...`).
pub const MAX_STATUS_CONTEXT_CHARS: usize = 64;

fn malformed(detail: String) -> Violation {
    Violation::new("well-formed-request", detail)
}

fn check_path(path: &str) -> Result<(), Violation> {
    // The workspace root itself (listing it, diffing it).
    if path == "." {
        return Ok(());
    }
    let bad = if path.is_empty() {
        Some("is empty")
    } else if path.len() > MAX_PATH_BYTES {
        Some("is too long")
    } else if path.starts_with('/') {
        Some("is absolute")
    } else if path.contains('\\') {
        Some("contains a backslash")
    } else if path.chars().any(char::is_control) {
        Some("contains a control character")
    } else if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        Some("is not normalised (empty, . or .. component)")
    } else {
        None
    };
    match bad {
        Some(why) => Err(malformed(format!("path {:?} {why}", clip(path)))),
        None => Ok(()),
    }
}

fn check_branch(branch: &str) -> Result<(), Violation> {
    let bad = branch.is_empty()
        || branch.len() > 255
        || branch.starts_with(['/', '-', '.'])
        || branch.ends_with(['/', '.'])
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        Err(malformed(format!(
            "branch {:?} is not a valid branch name",
            clip(branch)
        )))
    } else {
        Ok(())
    }
}

fn check_text(what: &str, text: &str, max: usize) -> Result<(), Violation> {
    if text.chars().count() > max {
        Err(malformed(format!("{what} is longer than {max} characters")))
    } else {
        Ok(())
    }
}

pub(super) fn check(effect: &Effect) -> Result<(), Violation> {
    match effect {
        Effect::WorkspaceRead { path } => check_path(path),
        Effect::WorkspaceWrite { path, content } => {
            check_path(path)?;
            if content.len() > MAX_WRITE_BYTES {
                return Err(malformed(format!(
                    "write of {} bytes is larger than {MAX_WRITE_BYTES}",
                    content.len()
                )));
            }
            Ok(())
        }
        Effect::WorkspaceExec { argv } => {
            if argv.is_empty() || argv.len() > MAX_ARGS {
                return Err(malformed(format!(
                    "exec needs 1 to {MAX_ARGS} arguments, got {}",
                    argv.len()
                )));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(malformed("an exec argument contains NUL".into()));
            }
            Ok(())
        }
        Effect::ModelComplete { model } => {
            if model.is_empty() || model.len() > 200 || model.chars().any(char::is_control) {
                return Err(malformed(format!(
                    "model name {:?} is invalid",
                    clip(model)
                )));
            }
            Ok(())
        }
        Effect::Comment { body, .. } => check_text("comment", body, MAX_BODY_CHARS),
        Effect::SetLabels { labels, .. } => {
            if labels.is_empty() || labels.len() > MAX_LABELS {
                return Err(malformed(format!(
                    "set-labels needs 1 to {MAX_LABELS} labels, got {}",
                    labels.len()
                )));
            }
            for l in labels {
                if l.trim().is_empty()
                    || l.chars().count() > MAX_LABEL_CHARS
                    || l.chars().any(char::is_control)
                {
                    return Err(malformed(format!("label {:?} is invalid", clip(l))));
                }
            }
            Ok(())
        }
        Effect::ProposePullRequest {
            head,
            base,
            title,
            body,
            ..
        } => {
            check_branch(head)?;
            check_branch(base)?;
            check_text("pull request title", title, MAX_TITLE_CHARS)?;
            check_text("pull request body", body, MAX_BODY_CHARS)
        }
        Effect::UpdatePullRequest {
            head, verification, ..
        } => {
            check_branch(head)?;
            match verification {
                Some(v) => check_text("verification section", v, MAX_BODY_CHARS),
                None => Ok(()),
            }
        }
        Effect::Review { body, comments, .. } => {
            check_text("review body", body, MAX_BODY_CHARS)?;
            for c in comments {
                check_path(&c.path)?;
                check_text("review comment", &c.body, MAX_BODY_CHARS)?;
            }
            Ok(())
        }
        Effect::Reply { body, .. } => check_text("reply", body, MAX_BODY_CHARS),
        Effect::Report { body, .. } => check_text("report", body, MAX_BODY_CHARS),
        Effect::Status { description, .. } => {
            check_text("status description", description, MAX_BODY_CHARS)
        }
        Effect::Merge { .. } => Ok(()),
        Effect::Push { branch, paths } => {
            check_branch(branch)?;
            paths.iter().try_for_each(|p| check_path(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::gate::test_support::*;
    use crate::policy::gate::*;

    #[test]
    fn malformed_requests_are_refused_not_panicked_on() {
        let gate = gate_with(Some(PERMIT_ALL));
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        let attempts: Vec<(&str, Effect)> = vec![
            ("empty path", write("")),
            ("dot path", write("./src/lib.rs")),
            ("backslash path", write("src\\..\\x")),
            ("control char path", write("src/\u{0}lib.rs")),
            ("empty argv", Effect::WorkspaceExec { argv: vec![] }),
            ("branch with ..", pr("kiln/a..b", true)),
            ("branch with space", pr("kiln/a b", true)),
            ("empty label list", labels(&[])),
            ("blank label", labels(&[" "])),
            (
                "oversized comment",
                Effect::Comment {
                    number: 1,
                    body: long,
                },
            ),
            (
                "huge issue number",
                Effect::Comment {
                    number: u64::MAX,
                    body: "x".into(),
                },
            ),
        ];
        for (what, effect) in attempts {
            let d = gate.decide(&req(Role::Implementation, effect));
            if what == "huge issue number" {
                assert!(!d.is_hold(), "{what}: should be decided, got: {d:?}");
                continue;
            }
            assert!(
                d.is_deny() && d.blame() == Blame::Guest,
                "{what} should be refused as malformed, got: {d:?}"
            );
        }
    }

    #[test]
    fn oversized_replies_and_status_descriptions_are_refused() {
        let gate = gate_with(Some(PERMIT_ALL));
        let long = "x".repeat(MAX_BODY_CHARS + 1);
        for (what, effect) in [
            ("reply", reply(&long)),
            ("status description", status("kiln/verification", &long)),
        ] {
            let d = gate.decide(&req(Role::Implementation, effect));
            assert!(
                d.is_deny() && d.blame() == Blame::Guest && d.reason().contains("longer than"),
                "an oversized {what} should be refused, got: {d:?}"
            );
        }
        let at_cap = gate.decide(&req(
            Role::Implementation,
            reply(&"é".repeat(MAX_BODY_CHARS)),
        ));
        assert!(
            at_cap.is_allow(),
            "the cap counts characters, not bytes, got: {at_cap:?}"
        );
    }
}
