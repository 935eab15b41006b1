//! Kiln's review role: reads a pull request, its diff, its issue and spec,
//! and proposes one review: line comments only on lines of the diff, each
//! tagged CRITICAL / IMPORTANT / SUGGESTION / NIT, and a verdict (comment or
//! request changes; approving is a human's decision and does not exist
//! here). Findings the model places off the diff are kept in the summary.
use kiln_plugin_sdk::agent::{self, Agent, tools};
use kiln_plugin_sdk::diff::DiffLines;
use kiln_plugin_sdk::forge::{
    self, DiffSide, LineComment, Proposed, ReviewProposal, ReviewVerdict, Severity,
};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, Trust, session, skills, workspace};
use serde::{Deserialize, Serialize};

const FINISH: &str = "submit_review";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "verdict": {"type": "string", "enum": ["comment", "request-changes"]},
    "summary": {"type": "string"},
    "comments": {"type": "array", "items": {
      "type": "object",
      "properties": {
        "path": {"type": "string"},
        "line": {"type": "integer", "minimum": 1},
        "side": {"type": "string", "enum": ["right", "left"]},
        "severity": {"type": "string", "enum": ["CRITICAL", "IMPORTANT", "SUGGESTION", "NIT"]},
        "body": {"type": "string"}
      },
      "required": ["path", "line", "severity", "body"]
    }}
  },
  "required": ["verdict", "summary", "comments"]
}"#;

/// How much of the diff goes into the prompt; the model reads the rest of
/// the code with its tools.
const MAX_DIFF_IN_PROMPT: usize = 48 * 1024;
/// The most line comments one review posts.
const MAX_COMMENTS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verdict {
    Comment,
    RequestChanges,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Tag {
    Critical,
    Important,
    Suggestion,
    Nit,
}

impl Tag {
    fn severity(self) -> Severity {
        match self {
            Tag::Critical => Severity::Critical,
            Tag::Important => Severity::Important,
            Tag::Suggestion => Severity::Suggestion,
            Tag::Nit => Severity::Nit,
        }
    }

    /// The tag as the skill writes it.
    fn as_str(self) -> &'static str {
        match self {
            Tag::Critical => "CRITICAL",
            Tag::Important => "IMPORTANT",
            Tag::Suggestion => "SUGGESTION",
            Tag::Nit => "NIT",
        }
    }

    /// Findings that must be fixed before a merge.
    fn blocks_merge(self) -> bool {
        matches!(self, Tag::Critical | Tag::Important)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Side {
    Left,
    #[default]
    Right,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Finding {
    path: String,
    line: u32,
    #[serde(default)]
    side: Side,
    severity: Tag,
    body: String,
}

/// The finish tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Review {
    verdict: Verdict,
    summary: String,
    comments: Vec<Finding>,
}

fn check(r: &Review) -> Result<(), String> {
    if r.summary.trim().is_empty() {
        return Err("`summary` is empty".into());
    }
    if r.comments.len() > MAX_COMMENTS {
        return Err(format!(
            "{} comments: keep the {MAX_COMMENTS} that matter most",
            r.comments.len()
        ));
    }
    match r.comments.iter().position(|c| c.body.trim().is_empty()) {
        Some(i) => Err(format!("comment {} has an empty body", i + 1)),
        None => Ok(()),
    }
}

fn side(s: Side) -> DiffSide {
    match s {
        Side::Left => DiffSide::Left,
        Side::Right => DiffSide::Right,
    }
}

/// The review to propose: findings on diff lines become line comments, the
/// others move into the summary (with their tag, path and line) so nothing
/// the model found is lost; any CRITICAL or IMPORTANT finding means
/// request-changes, whatever the model chose.
fn build(number: u64, review: &Review, diff: &DiffLines) -> ReviewProposal {
    let (on, off): (Vec<&Finding>, Vec<&Finding>) = review
        .comments
        .iter()
        .partition(|c| diff.contains(&c.path, side(c.side), c.line));
    let request_changes = review.verdict == Verdict::RequestChanges
        || review.comments.iter().any(|c| c.severity.blocks_merge());
    let mut summary = format!(
        "**Verdict: {}**\n\n{}\n",
        if request_changes {
            "changes requested"
        } else {
            "comments only"
        },
        review.summary.trim()
    );
    if !off.is_empty() {
        summary.push_str("\n### Findings outside the diff\n\n");
        for c in &off {
            summary.push_str(&format!(
                "- **{}** `{}` line {}: {}\n",
                c.severity.as_str(),
                c.path,
                c.line,
                c.body.trim()
            ));
        }
    }
    summary.push_str(
        "\n---\nReviewed by Kiln's review agent. Kiln never approves or merges: a maintainer decides.",
    );
    ReviewProposal {
        number,
        verdict: if request_changes {
            ReviewVerdict::RequestChanges
        } else {
            ReviewVerdict::Comment
        },
        summary,
        comments: on
            .into_iter()
            .map(|c| LineComment {
                path: c.path.trim_start_matches("./").to_string(),
                line: c.line,
                side: side(c.side),
                severity: c.severity.severity(),
                body: c.body.trim().to_string(),
            })
            .collect(),
    }
}

/// The issue a pull request closes: the task's, or the first `Closes #N` /
/// `Fixes #N` in the body.
fn closed_issue(task: &Task, body: &str) -> Option<u64> {
    task.issue.or_else(|| {
        let lower = body.to_lowercase();
        ["closes #", "fixes #", "resolves #"].iter().find_map(|kw| {
            let at = lower.find(kw)? + kw.len();
            lower[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
    })
}

#[derive(Default)]
struct Reviewer;

impl Role for Reviewer {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task.pull_request.ok_or_else(|| {
            RoleError::InvalidArgument("the review role needs a pull request".into())
        })?;
        let skill = skills::get("review")?;
        let pr = forge::pull_request(number)?;
        let diff_text = forge::pull_request_diff(number)?;
        let diff = DiffLines::parse(&diff_text);
        session::progress(&format!(
            "reviewing pull request #{number} ({} files changed)",
            diff.paths().count()
        ));

        let mut prompt = format!(
            "Review pull request #{number}.\n\n{}\n\n",
            forge::render_pull_request(&pr)
        );
        // The diff is the author's text as much as the body is.
        prompt.push_str(&forge::envelope(
            pr.trust,
            &format!("diff of pull request #{number}"),
            &agent::truncate(diff_text.clone(), MAX_DIFF_IN_PROMPT),
        ));
        if let Some(n) = closed_issue(&task, &pr.body) {
            match forge::issue(n) {
                Ok(issue) => {
                    prompt.push_str("\n\nThe issue it closes:\n\n");
                    prompt.push_str(&forge::render_issue(&issue));
                }
                Err(e) => session::warning(&format!("issue #{n}: {}", e.describe())),
            }
            for file in ["PRODUCT.md", "TECH.md"] {
                let path = format!("specs/issue-{n}/{file}");
                if let Ok(text) = workspace::read_to_string(&path) {
                    // The spec at the pull request's head may be edited by
                    // the change under review: it is data like the diff.
                    prompt.push_str("\n\n");
                    prompt.push_str(&forge::envelope(
                        Trust::Untrusted,
                        &format!("{path} at the pull request's head"),
                        &text,
                    ));
                }
            }
        }

        let mut agent = Agent::new(agent::system_prompt(&skill.text, &task))
            .tool(tools::ReadFile)
            .tool(tools::ListDir)
            .tool(tools::Search)
            .finish_tool(
                FINISH,
                "Submit the review: verdict, summary and severity-tagged line comments",
                FINISH_SCHEMA,
            )
            .check_finish(agent::parses_as(check))
            .max_turns(30);
        let output = match agent.run(&prompt)?.output_or_blocked(FINISH) {
            Ok(output) => output,
            Err(blocked) => return Ok(blocked),
        };
        let review: Review = serde_json::from_value(output)
            .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
        let mut proposal = build(number, &review, &diff);
        let moved = review.comments.len() - proposal.comments.len();
        if moved > 0 {
            session::note(&format!(
                "{moved} finding(s) were not on lines of the diff and moved into the summary"
            ));
        }
        let mut proposed = forge::settle(forge::review(&proposal))?;
        if matches!(proposed, Proposed::Refused(_))
            && proposal.verdict == ReviewVerdict::RequestChanges
        {
            // A repository's policy may allow only neutral reviews; the
            // findings still deserve to reach the pull request.
            session::note("request-changes was refused; posting the same review as a comment");
            proposal.verdict = ReviewVerdict::Comment;
            proposed = forge::settle(forge::review(&proposal))?;
        }
        let summary = format!(
            "Review of #{number} ({}, {} line comment(s), {moved} finding(s) in the summary) {proposed}.",
            if proposal.verdict == ReviewVerdict::RequestChanges {
                "changes requested"
            } else {
                "comments only"
            },
            proposal.comments.len(),
        );
        let mut outcome = match proposed {
            Proposed::Refused(_) => Outcome::blocked(summary),
            _ => Outcome::completed(summary),
        };
        outcome.output = Some(serde_json::to_string(&review).unwrap_or_default());
        Ok(outcome)
    }
}

kiln_plugin_sdk::register_role!(Reviewer);

#[cfg(test)]
mod tests {
    use super::*;

    const DIFF: &str = "--- a/x.sh\n+++ b/x.sh\n@@ -1,2 +1,3 @@\n a\n-b\n+c\n+d\n";

    fn finding(line: u32, side: Side, severity: Tag) -> Finding {
        Finding {
            path: "x.sh".into(),
            line,
            side,
            severity,
            body: format!("finding at {line}"),
        }
    }

    #[test]
    fn off_diff_findings_move_to_the_summary_and_important_ones_request_changes() {
        let review = Review {
            verdict: Verdict::Comment,
            summary: "Looks fine.".into(),
            comments: vec![
                finding(2, Side::Right, Tag::Nit),
                finding(2, Side::Left, Tag::Suggestion),
                finding(9, Side::Right, Tag::Important),
            ],
        };
        let p = build(5, &review, &DiffLines::parse(DIFF));
        assert_eq!(p.comments.len(), 2);
        assert!(p.comments.iter().all(|c| c.line == 2));
        assert_eq!(p.verdict, ReviewVerdict::RequestChanges);
        assert!(
            p.summary
                .starts_with("**Verdict: changes requested**\n\nLooks fine.\n")
        );
        assert!(
            p.summary
                .contains("- **IMPORTANT** `x.sh` line 9: finding at 9\n"),
            "{}",
            p.summary
        );
    }

    #[test]
    fn a_review_with_only_minor_findings_stays_a_comment() {
        let review = Review {
            verdict: Verdict::Comment,
            summary: "Fine.".into(),
            comments: vec![finding(3, Side::Right, Tag::Suggestion)],
        };
        let p = build(5, &review, &DiffLines::parse(DIFF));
        assert_eq!(p.verdict, ReviewVerdict::Comment);
        assert!(!p.summary.contains("outside the diff"));
    }

    #[test]
    fn the_output_is_parsed_strictly_and_checked() {
        let bad = serde_json::json!({"verdict": "approve", "summary": "ok", "comments": []});
        assert!(
            serde_json::from_value::<Review>(bad).is_err(),
            "there is no approve"
        );
        let review: Review = serde_json::from_value(serde_json::json!({
            "verdict": "request-changes", "summary": "s",
            "comments": [{"path": "x.sh", "line": 2, "severity": "NIT", "body": " "}]
        }))
        .expect("parses; side defaults to right");
        assert_eq!(review.comments[0].side, Side::Right);
        assert_eq!(check(&review), Err("comment 1 has an empty body".into()));
    }

    #[test]
    fn the_closed_issue_comes_from_the_task_or_the_body() {
        let mut task = Task {
            run_id: "r".into(),
            role: "review".into(),
            repo: "o/r".into(),
            issue: None,
            pull_request: Some(2),
            branch: "kiln/review-pr-2".into(),
            base_branch: "main".into(),
            trigger: kiln_plugin_sdk::Trigger::PullRequestOpened,
            instructions: None,
            args: Vec::new(),
        };
        assert_eq!(closed_issue(&task, "Closes #17\n\nstuff"), Some(17));
        assert_eq!(closed_issue(&task, "nothing"), None);
        task.issue = Some(3);
        assert_eq!(closed_issue(&task, "Fixes #17"), Some(3));
    }
}
