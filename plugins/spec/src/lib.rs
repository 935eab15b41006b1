//! Kiln's spec role: reads an issue and the repository, writes
//! `specs/issue-N/PRODUCT.md` (user stories, acceptance criteria) and
//! `specs/issue-N/TECH.md` (approach, code locations, edge cases, test
//! plan), and proposes them as a draft pull request linking the issue. The
//! host commits them on the run's branch (`kiln/spec-issue-N`).
use kiln_plugin_sdk::agent::{self, Agent, tools};
use kiln_plugin_sdk::forge::{self, Proposed, PullRequestProposal};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, session, skills, workspace};
use serde::{Deserialize, Serialize};

const FINISH: &str = "submit_spec";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "title": {"type": "string"},
    "body": {"type": "string"},
    "commit_message": {"type": "string"}
  },
  "required": ["title", "body", "commit_message"]
}"#;

/// The two files a spec consists of.
const SPEC_FILES: [&str; 2] = ["PRODUCT.md", "TECH.md"];

/// The finish tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    title: String,
    body: String,
    commit_message: String,
}

/// The directory of issue `n`'s spec.
fn spec_dir(n: u64) -> String {
    format!("specs/issue-{n}/")
}

/// The spec files of `dir` that are missing or empty in the workspace.
fn missing_files(dir: &str) -> Vec<String> {
    SPEC_FILES
        .iter()
        .map(|f| format!("{dir}{f}"))
        .filter(|path| {
            workspace::read_to_string(path)
                .map(|text| text.trim().is_empty())
                .unwrap_or(true)
        })
        .collect()
}

fn check(s: &Submission, dir: &str) -> Result<(), String> {
    for (field, value) in [
        ("title", &s.title),
        ("body", &s.body),
        ("commit_message", &s.commit_message),
    ] {
        if value.trim().is_empty() {
            return Err(format!("`{field}` is empty"));
        }
    }
    let missing = missing_files(dir);
    if !missing.is_empty() {
        return Err(format!(
            "write {} with `write_file` first (missing or empty)",
            missing.join(" and ")
        ));
    }
    Ok(())
}

/// The pull request body: a fixed head linking the issue and naming the
/// files, the model's text, and what a maintainer does next.
fn pull_request_body(number: u64, dir: &str, body: &str) -> String {
    format!(
        "Spec for #{number}: [`{dir}PRODUCT.md`]({dir}PRODUCT.md) and [`{dir}TECH.md`]({dir}TECH.md).\n\n{}\n\n---\nWritten by Kiln's spec agent. To approve: review and merge this pull request, then add the `plan-approved` label to #{number}.",
        body.trim()
    )
}

#[derive(Default)]
struct SpecWriter;

impl Role for SpecWriter {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task
            .issue
            .ok_or_else(|| RoleError::InvalidArgument("the spec role needs an issue".into()))?;
        let skill = skills::get("spec")?;
        let issue = forge::issue(number)?;
        let dir = spec_dir(number);
        session::progress(&format!("writing the spec for issue #{number} under {dir}"));
        let prompt = format!(
            "Write the spec for this issue: `{dir}PRODUCT.md` and `{dir}TECH.md`.\n\n{}",
            forge::render_issue(&issue)
        );
        let check_dir = dir.clone();
        let mut agent = Agent::new(agent::system_prompt(&skill.text, &task))
            .tool(tools::ReadFile)
            .tool(tools::ListDir)
            .tool(tools::Search)
            .tool(tools::WriteFileUnder(dir.clone()))
            .finish_tool(
                FINISH,
                "Submit the spec once both files are written: the pull request's title, body and commit message",
                FINISH_SCHEMA,
            )
            .check_finish(agent::parses_as(move |s: &Submission| check(s, &check_dir)))
            .max_turns(30);
        let output = match agent.run(&prompt)?.output_or_blocked(FINISH) {
            Ok(output) => output,
            Err(blocked) => return Ok(blocked),
        };
        let submission: Submission = serde_json::from_value(output)
            .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
        // The check ran before the loop ended; the files cannot have gone
        // since, but a spec PR without them would be worse than a re-check.
        let missing = missing_files(&dir);
        if !missing.is_empty() {
            return Ok(Outcome::blocked(format!(
                "the spec is incomplete: {} missing",
                missing.join(", ")
            )));
        }
        let proposal = PullRequestProposal {
            title: submission.title.trim().to_string(),
            body: pull_request_body(number, &dir, &submission.body),
            commit_message: submission.commit_message.trim().to_string(),
        };
        let proposed = forge::settle(forge::propose_pull_request(&proposal))?;
        let summary = format!(
            "Spec for #{number} written to {dir}PRODUCT.md and {dir}TECH.md; draft pull request \"{}\" {proposed}.",
            proposal.title
        );
        let mut outcome = match proposed {
            Proposed::Refused(_) => Outcome::blocked(summary),
            _ => Outcome::completed(summary),
        };
        outcome.output = Some(
            serde_json::json!({
                "files": SPEC_FILES.iter().map(|f| format!("{dir}{f}")).collect::<Vec<_>>(),
                "title": proposal.title,
            })
            .to_string(),
        );
        Ok(outcome)
    }
}

kiln_plugin_sdk::register_role!(SpecWriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_request_body_links_the_issue_and_says_how_to_approve() {
        let body = pull_request_body(12, &spec_dir(12), "  Decides X.  ");
        assert!(
            body.starts_with(
                "Spec for #12: [`specs/issue-12/PRODUCT.md`](specs/issue-12/PRODUCT.md)"
            )
        );
        assert!(body.contains("\n\nDecides X.\n\n"));
        assert!(body.ends_with("add the `plan-approved` label to #12."));
    }
}
