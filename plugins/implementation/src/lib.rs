//! Kiln's implementation role: builds an issue against its approved spec,
//! runs the repository's tests in the sandbox, and proposes a draft pull
//! request whose body starts with `Closes #N` and reports what was verified
//! from the sandbox's own answers, never from the model's account.
//!
//! With a pull request in its task the role answers a review on that pull
//! request's own branch instead (see [`answer`]).
//!
//! Without an approved spec (the issue lacks `plan-approved`, or the spec
//! files are missing) the run ends `blocked` before the model is asked
//! anything, unless a maintainer waived the spec by starting the run with
//! the `ready-to-implement` label.
use kiln_plugin_sdk::agent::tools::{self, CommandRun, CommandStatus};
use kiln_plugin_sdk::agent::{self, Agent};
use kiln_plugin_sdk::forge::{self, Issue, Proposed, PullRequestProposal};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, Trigger, Trust, session, skills, workspace};
use serde::{Deserialize, Serialize};

mod answer;

const FINISH: &str = "submit_implementation";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "status": {"type": "string", "enum": ["done", "blocked"]},
    "title": {"type": "string"},
    "summary": {"type": "string"},
    "commit_message": {"type": "string"},
    "blocked_reason": {"type": ["string", "null"]}
  },
  "required": ["status", "title", "summary", "commit_message"]
}"#;

/// The label by which a maintainer approves an issue's spec.
const APPROVED: &str = "plan-approved";
/// The label by which a maintainer waives the spec for a small change.
const NO_SPEC: &str = "ready-to-implement";

/// Whether the model finished the work (or answered the review) or stopped
/// for a human: both finish tools' `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Done,
    Blocked,
}

/// The finish tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    status: Status,
    #[serde(default)]
    title: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    commit_message: String,
    #[serde(default)]
    blocked_reason: Option<String>,
}

fn check(s: &Submission) -> Result<(), String> {
    let required: &[(&str, &str)] = match s.status {
        Status::Done => &[
            ("title", s.title.as_str()),
            ("summary", s.summary.as_str()),
            ("commit_message", s.commit_message.as_str()),
        ],
        Status::Blocked => &[("blocked_reason", s.blocked_reason.as_deref().unwrap_or(""))],
    };
    match required.iter().find(|(_, v)| v.trim().is_empty()) {
        Some((field, _)) => Err(format!("`{field}` is empty (status {:?})", s.status)),
        None => Ok(()),
    }
}

/// The approved spec's two files.
struct Spec {
    dir: String,
    product: String,
    tech: String,
}

/// Whether the task may go ahead, and with which spec: `Err` is the reason
/// the run is blocked.
fn approved_spec(task: &Task, issue: &Issue) -> Result<Option<Spec>, String> {
    let has = |label: &str| issue.labels.iter().any(|l| l.eq_ignore_ascii_case(label));
    let started_by =
        |label: &str| matches!(&task.trigger, Trigger::Label(l) if l.eq_ignore_ascii_case(label));
    let waived = started_by(NO_SPEC);
    let dir = format!("specs/issue-{}/", issue.number);
    let read = |file: &str| -> Result<Option<String>, String> {
        match workspace::read_to_string(&format!("{dir}{file}")) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text)),
            Ok(_) | Err(RoleError::NotFound(_)) => Ok(None),
            Err(e) => Err(format!("cannot read {dir}{file}: {}", e.describe())),
        }
    };
    let (product, tech) = (read("PRODUCT.md")?, read("TECH.md")?);
    if waived {
        session::note(&format!(
            "the run was started with `{NO_SPEC}`: a maintainer waived the spec"
        ));
        return Ok(product
            .zip(tech)
            .map(|(product, tech)| Spec { dir, product, tech }));
    }
    if !has(APPROVED) && !started_by(APPROVED) {
        return Err(format!(
            "issue #{} has no approved spec: it lacks the `{APPROVED}` label, which a maintainer adds after reviewing {dir}PRODUCT.md and TECH.md (or start the run with `{NO_SPEC}` to waive the spec for a small change)",
            issue.number
        ));
    }
    match (product, tech) {
        (Some(product), Some(tech)) => Ok(Some(Spec { dir, product, tech })),
        (product, _) => Err(format!(
            "issue #{} is marked `{APPROVED}` but its spec is missing: {dir}{} not found in the checkout (merge the spec pull request first)",
            issue.number,
            if product.is_none() {
                "PRODUCT.md"
            } else {
                "TECH.md"
            }
        )),
    }
}

/// The `## Verification` part of the pull request body, from what the
/// sandbox answered: every command with its real status, then a verdict.
/// Returns the text and whether the change counts as verified (every
/// distinct command's last run exited 0).
fn verification(runs: &[CommandRun]) -> (String, bool) {
    let mut text = String::from("## Verification\n\n");
    if runs.is_empty() {
        text.push_str("**Not verified**: no command was run. A maintainer must run the tests before merging.\n");
        return (text, false);
    }
    text.push_str(
        "Commands run in the sandbox, in order, with the status the sandbox reported:\n\n",
    );
    for run in runs {
        text.push_str(&format!("- `{}` — {}\n", run.argv.join(" "), run.status));
    }
    let ran: Vec<&CommandRun> = runs
        .iter()
        .filter(|r| !matches!(r.status, CommandStatus::NotRun(_)))
        .collect();
    if ran.is_empty() {
        text.push_str("\n**Not verified**: the sandbox could not run any command, so this change is untested. A maintainer must run the tests before merging.\n");
        return (text, false);
    }
    // The last run of each distinct command is what the change left behind.
    let mut last: Vec<&CommandRun> = Vec::new();
    for run in ran.iter().rev() {
        if !last.iter().any(|l| l.argv == run.argv) {
            last.push(run);
        }
    }
    let failing: Vec<String> = last
        .iter()
        .rev()
        .filter(|r| !r.status.success())
        .map(|r| format!("`{}` ({})", r.argv.join(" "), r.status))
        .collect();
    if failing.is_empty() {
        text.push_str("\nVerified: the last run of every command exited 0.\n");
        (text, true)
    } else {
        text.push_str(&format!(
            "\n**Failing**: the last run of {} did not pass.\n",
            failing.join(", ")
        ));
        (text, false)
    }
}

fn pull_request_body(
    number: u64,
    summary: &str,
    files: &[String],
    spec: Option<&Spec>,
    verification: &str,
) -> String {
    let mut body = format!("Closes #{number}\n\n{}\n\n", summary.trim());
    if !files.is_empty() {
        body.push_str("## Files changed\n\n");
        for f in files {
            body.push_str(&format!("- `{f}`\n"));
        }
        body.push('\n');
    }
    match spec {
        Some(spec) => body.push_str(&format!(
            "Built against the approved spec in `{}` (PRODUCT.md, TECH.md).\n\n",
            spec.dir
        )),
        None => body.push_str(&format!("Built without a spec (`{NO_SPEC}`).\n\n")),
    }
    body.push_str(verification);
    body.push_str("\n---\nWritten by Kiln's implementation agent. This is a draft: a maintainer reviews and merges.");
    body
}

#[derive(Default)]
struct Implementer;

impl Role for Implementer {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        // A maintainer's review (or `/kiln fix`) on Kiln's pull request:
        // answer it on that pull request's branch.
        if let Some(pr) = task.pull_request {
            return answer::answer(&task, pr);
        }
        let number = task.issue.ok_or_else(|| {
            RoleError::InvalidArgument("the implementation role needs an issue".into())
        })?;
        let issue = forge::issue(number)?;
        let spec = match approved_spec(&task, &issue) {
            Ok(spec) => spec,
            Err(reason) => {
                session::note(&format!("blocked: {reason}"));
                return Ok(Outcome::blocked(reason));
            }
        };
        let skill = skills::get("implementation")?;
        session::progress(&format!("implementing issue #{number}"));

        let mut prompt = format!("Implement issue #{number}.\n\n");
        match &spec {
            Some(s) => {
                // An approved spec was reviewed and merged by a maintainer.
                let source = |f: &str| format!("{}{f}, the approved spec", s.dir);
                prompt.push_str(&forge::envelope(
                    Trust::Trusted,
                    &source("PRODUCT.md"),
                    &s.product,
                ));
                prompt.push_str("\n\n");
                prompt.push_str(&forge::envelope(
                    Trust::Trusted,
                    &source("TECH.md"),
                    &s.tech,
                ));
                prompt.push_str("\n\n");
            }
            None => prompt.push_str(
                "There is no spec: a maintainer judged the change small. Work from the issue.\n\n",
            ),
        }
        prompt.push_str(&forge::render_issue(&issue));

        let mut agent = Agent::new(agent::system_prompt(&skill.text, &task))
            .tool(tools::ReadFile)
            .tool(tools::ListDir)
            .tool(tools::Search)
            .tool(tools::WriteFile)
            .tool(tools::RunCommand)
            .tool(tools::Diff)
            .finish_tool(
                FINISH,
                "Finish: `done` with the pull request's title, summary and commit message, or `blocked` with the reason",
                FINISH_SCHEMA,
            )
            .check_finish(agent::parses_as(check))
            .max_turns(60);
        let output = match agent.run(&prompt)?.output_or_blocked(FINISH) {
            Ok(output) => output,
            Err(blocked) => return Ok(blocked),
        };
        let submission: Submission = serde_json::from_value(output)
            .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
        if submission.status == Status::Blocked {
            let reason = submission.blocked_reason.unwrap_or_default();
            return Ok(Outcome::blocked(reason.trim().to_string()));
        }
        let files = tools::written_files(agent.tool_calls());
        if files.is_empty() {
            return Ok(Outcome::blocked(
                "the model reported the work done but changed no file; nothing to propose",
            ));
        }
        let runs = tools::command_runs(agent.tool_calls());
        let (verified_text, verified) = verification(&runs);
        if !verified {
            session::warning(
                "the change is not verified: see the pull request's Verification section",
            );
        }
        let proposal = PullRequestProposal {
            title: submission.title.trim().to_string(),
            body: pull_request_body(
                number,
                &submission.summary,
                &files,
                spec.as_ref(),
                &verified_text,
            ),
            commit_message: submission.commit_message.trim().to_string(),
        };
        let proposed = forge::settle(forge::propose_pull_request(&proposal))?;
        let summary = format!(
            "Changed {}; draft pull request \"{}\" {proposed}. {}",
            files.join(", "),
            proposal.title,
            if verified {
                "Tests verified in the sandbox."
            } else {
                "Not verified: see the pull request."
            }
        );
        let mut outcome = match proposed {
            Proposed::Refused(_) => Outcome::blocked(summary),
            _ => Outcome::completed(summary),
        };
        outcome.output = Some(
            serde_json::json!({
                "files": files,
                "verified": verified,
                "commands": runs.iter().map(|r| serde_json::json!({
                    "argv": r.argv,
                    "status": r.status.to_string(),
                })).collect::<Vec<_>>(),
            })
            .to_string(),
        );
        Ok(outcome)
    }
}

kiln_plugin_sdk::register_role!(Implementer);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &str, status: CommandStatus) -> CommandRun {
        CommandRun {
            argv: argv.split(' ').map(String::from).collect(),
            status,
        }
    }

    #[test]
    fn verification_reports_the_sandboxs_answers_and_judges_the_last_runs() {
        let (text, ok) = verification(&[
            run("bash tests/run.sh", CommandStatus::Exited(1)),
            run("bash tests/run.sh", CommandStatus::Exited(0)),
        ]);
        assert!(ok);
        assert!(
            text.contains(
                "- `bash tests/run.sh` — exit code 1\n- `bash tests/run.sh` — exit code 0\n"
            ),
            "{text}"
        );
        let (text, ok) = verification(&[
            run("bash tests/run.sh", CommandStatus::Exited(0)),
            run("bash tests/run.sh", CommandStatus::Killed("timeout".into())),
        ]);
        assert!(!ok);
        assert!(
            text.contains("**Failing**: the last run of `bash tests/run.sh` (killed: timeout)"),
            "{text}"
        );
    }

    #[test]
    fn without_a_sandbox_the_change_is_reported_unverified() {
        let (text, ok) = verification(&[run(
            "bash tests/run.sh",
            CommandStatus::NotRun("unavailable: no sandbox".into()),
        )]);
        assert!(!ok);
        assert!(
            text.contains("did not run: unavailable: no sandbox"),
            "{text}"
        );
        assert!(text.contains("**Not verified**: the sandbox could not run any command"));
        let (text, ok) = verification(&[]);
        assert!(!ok && text.contains("no command was run"));
    }

    #[test]
    fn the_body_starts_with_closes_and_the_checks_need_a_reason_to_block() {
        let body = pull_request_body(
            4,
            " Fixed it. ",
            &["a.sh".into()],
            None,
            "## Verification\n",
        );
        assert!(
            body.starts_with("Closes #4\n\nFixed it.\n\n## Files changed\n\n- `a.sh`\n"),
            "{body}"
        );
        let blocked = Submission {
            status: Status::Blocked,
            title: String::new(),
            summary: String::new(),
            commit_message: String::new(),
            blocked_reason: None,
        };
        assert_eq!(
            check(&blocked),
            Err("`blocked_reason` is empty (status Blocked)".into())
        );
    }
}
