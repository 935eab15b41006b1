//! Kiln's triage role: reads a new issue (its text tagged with the author's
//! trust), explores the repository read-only, and proposes labels from the
//! skill's allowlist plus one comment with at most five questions, each
//! with its reason. It never proposes `ready-*` or `plan-approved`.
use kiln_plugin_sdk::agent::{self, Agent, tools};
use kiln_plugin_sdk::forge::{self, Proposed};
use kiln_plugin_sdk::{Outcome, OutcomeStatus, Role, RoleError, Task, session, skills};
use serde::{Deserialize, Serialize};

/// The most questions one triage may ask.
const MAX_QUESTIONS: usize = 5;
/// The most earlier issues referenced in the thread that are read for
/// duplicate evidence.
const MAX_REFERENCED: usize = 5;
const FINISH: &str = "submit_triage";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "labels": {"type": "array", "items": {"type": "string"}},
    "questions": {"type": "array", "maxItems": 5, "items": {
      "type": "object",
      "properties": {"question": {"type": "string"}, "reason": {"type": "string"}},
      "required": ["question", "reason"]
    }},
    "summary": {"type": "string"},
    "duplicate_of": {"type": ["integer", "null"]}
  },
  "required": ["labels", "questions", "summary"]
}"#;

/// A question for the reporter and why it matters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Question {
    question: String,
    reason: String,
}

/// The finish tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Triage {
    labels: Vec<String>,
    #[serde(default)]
    questions: Vec<Question>,
    summary: String,
    #[serde(default)]
    duplicate_of: Option<u64>,
}

/// Labels only a maintainer applies: they move an issue to the next stage.
fn human_only(label: &str) -> bool {
    let l = label.trim().to_lowercase();
    l.starts_with("ready-") || l == "plan-approved"
}

/// The labels the skill's `## Labels` section lists (list items starting
/// with a backticked name). A repository changes them by overriding that
/// section, so the model's instructions and this filter never disagree.
fn allowlist(skill: &str) -> Vec<String> {
    let mut in_section = false;
    let mut labels = Vec::new();
    for line in skill.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            in_section = title.trim().eq_ignore_ascii_case("labels");
            continue;
        }
        let item = line.trim_start();
        let Some(rest) = item
            .strip_prefix("- `")
            .or_else(|| item.strip_prefix("* `"))
        else {
            continue;
        };
        if let Some((label, _)) = rest.split_once('`')
            && in_section
            && !label.trim().is_empty()
            && !human_only(label)
        {
            labels.push(label.trim().to_string());
        }
    }
    labels
}

/// The rules of the skill's Limits, Questions and Duplicates sections that a
/// program can check: the model is told what is wrong and tries again.
fn check(t: &Triage, allowed: &[String], issue: u64) -> Result<(), String> {
    if t.summary.trim().is_empty() {
        return Err("`summary` is empty".into());
    }
    for label in &t.labels {
        if human_only(label) {
            return Err(format!(
                "label `{label}` is a maintainer's decision: never propose ready-* or plan-approved"
            ));
        }
        if !allowed.iter().any(|a| a.eq_ignore_ascii_case(label.trim())) {
            return Err(format!(
                "label `{label}` is not in the Labels section (allowed: {})",
                allowed.join(", ")
            ));
        }
    }
    if t.questions.len() > MAX_QUESTIONS {
        return Err(format!(
            "{} questions: ask at most {MAX_QUESTIONS}, the ones that matter most",
            t.questions.len()
        ));
    }
    if let Some(q) = t
        .questions
        .iter()
        .find(|q| q.question.trim().is_empty() || q.reason.trim().is_empty())
    {
        return Err(format!(
            "every question needs a non-empty `question` and `reason` (got {q:?})"
        ));
    }
    let says_duplicate = t.labels.iter().any(|l| l.eq_ignore_ascii_case("duplicate"));
    match t.duplicate_of {
        Some(n) if n == issue => Err(format!("issue #{issue} cannot duplicate itself")),
        None if says_duplicate => Err(
            "`duplicate` needs evidence: set `duplicate_of` to the earlier issue's number".into(),
        ),
        Some(n) if !says_duplicate => Err(format!(
            "`duplicate_of` is #{n} but `duplicate` is not among the labels"
        )),
        _ => Ok(()),
    }
}

/// `needs-info` goes with questions and only with them (when the
/// repository's allowlist has it at all).
fn settle_needs_info(t: &mut Triage, allowed: &[String]) {
    let has = |t: &Triage| {
        t.labels
            .iter()
            .any(|l| l.eq_ignore_ascii_case("needs-info"))
    };
    if !t.questions.is_empty() && !has(t) && allowed.iter().any(|a| a == "needs-info") {
        session::note("added needs-info: the triage asks the reporter questions");
        t.labels.push("needs-info".into());
    } else if t.questions.is_empty() && has(t) {
        session::note("dropped needs-info: the triage asks no questions");
        t.labels.retain(|l| !l.eq_ignore_ascii_case("needs-info"));
    }
}

/// Numbers written as `#N` in `text`, other than `issue`, at most `max`.
fn referenced_issues(text: &str, issue: u64, max: usize) -> Vec<u64> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices('#') {
        let digits: String = text[i + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<u64>()
            && n != issue
            && !found.contains(&n)
        {
            found.push(n);
            if found.len() == max {
                break;
            }
        }
    }
    found
}

/// The comment for the reporter: the questions with their reasons, and the
/// duplicate if there is one. `None` if there is nothing to ask or say.
fn comment_body(t: &Triage) -> Option<String> {
    if t.questions.is_empty() && t.duplicate_of.is_none() {
        return None;
    }
    let mut body = String::new();
    if let Some(n) = t.duplicate_of {
        body.push_str(&format!(
            "This looks like a duplicate of #{n}. {}\n\n",
            t.summary.trim()
        ));
    }
    if !t.questions.is_empty() {
        body.push_str("Before work on this can start, could you answer:\n\n");
        for (i, q) in t.questions.iter().enumerate() {
            body.push_str(&format!(
                "{}. {}\n   *Why:* {}\n",
                i + 1,
                q.question.trim(),
                q.reason.trim()
            ));
        }
        body.push('\n');
    }
    body.push_str("— Kiln triage. A maintainer decides what happens next.");
    Some(body)
}

#[derive(Default)]
struct Triager;

impl Role for Triager {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task
            .issue
            .ok_or_else(|| RoleError::InvalidArgument("the triage role needs an issue".into()))?;
        let skill = skills::get("triage")?;
        let allowed = allowlist(&skill.text);
        if allowed.is_empty() {
            session::warning(
                "the triage skill's Labels section lists no labels: none can be proposed",
            );
        }
        let issue = forge::issue(number)?;
        session::progress(&format!("triaging issue #{number}"));

        let mut prompt = format!("Triage this issue.\n\n{}", forge::render_issue(&issue));
        let thread: String = std::iter::once(issue.body.as_str())
            .chain(issue.comments.iter().map(|c| c.body.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        let earlier: Vec<_> = referenced_issues(&thread, number, MAX_REFERENCED)
            .into_iter()
            .filter_map(|n| forge::issue(n).ok())
            .collect();
        if !earlier.is_empty() {
            prompt.push_str("\n\nIssues referenced in the thread, for duplicate evidence:");
            for other in &earlier {
                prompt.push_str("\n\n");
                prompt.push_str(&forge::render_issue(other));
            }
        }

        let check_allowed = allowed.clone();
        let mut agent = Agent::new(agent::system_prompt(&skill.text, &task))
            .tool(tools::ReadFile)
            .tool(tools::ListDir)
            .tool(tools::Search)
            .finish_tool(
                FINISH,
                "Report the triage: labels, questions, summary, duplicate",
                FINISH_SCHEMA,
            )
            .check_finish(agent::parses_as(move |t: &Triage| {
                check(t, &check_allowed, number)
            }))
            .max_turns(20);
        let output = match agent.run(&prompt)?.output_or_blocked(FINISH) {
            Ok(output) => output,
            Err(blocked) => return Ok(blocked),
        };
        let mut triage: Triage = serde_json::from_value(output)
            .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
        settle_needs_info(&mut triage, &allowed);

        let mut done = Vec::new();
        let mut refused = false;
        if !triage.labels.is_empty() {
            let add: Vec<&str> = triage.labels.iter().map(String::as_str).collect();
            let labels = forge::settle(forge::set_labels(number, &add, &[]))?;
            refused |= matches!(labels, Proposed::Refused(_));
            done.push(format!("labels {} {labels}", triage.labels.join(", ")));
        }
        if let Some(body) = comment_body(&triage) {
            let comment = forge::settle(forge::comment(number, &body))?;
            refused |= matches!(comment, Proposed::Refused(_));
            done.push(format!(
                "comment with {} question(s) {comment}",
                triage.questions.len()
            ));
        }
        let summary = format!(
            "{} {}",
            if done.is_empty() {
                "Nothing proposed.".to_string()
            } else {
                format!("{}.", done.join("; "))
            },
            triage.summary.trim()
        );
        let output = Some(serde_json::to_string(&triage).unwrap_or_default());
        Ok(Outcome {
            // A refused proposal leaves the issue half-triaged: a person
            // should look, so the run does not report success.
            status: if refused {
                OutcomeStatus::Blocked
            } else {
                OutcomeStatus::Completed
            },
            summary,
            output,
        })
    }
}

kiln_plugin_sdk::register_role!(Triager);

#[cfg(test)]
mod tests {
    use super::*;

    fn triage(labels: &[&str], questions: usize, dup: Option<u64>) -> Triage {
        Triage {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            questions: (0..questions)
                .map(|i| Question {
                    question: format!("q{i}?"),
                    reason: "because".into(),
                })
                .collect(),
            summary: "s".into(),
            duplicate_of: dup,
        }
    }

    #[test]
    fn the_allowlist_is_read_from_the_skills_labels_section_without_human_only_labels() {
        let skill = "## Steps\n- `bug` is not here\n## Labels\n<!-- kiln:overridable -->\nType:\n- `kind/bug` — broken\n* `needs-info` — ask\n- `ready-to-spec` — never\n## Output\n- `x`\n";
        assert_eq!(allowlist(skill), ["kind/bug", "needs-info"]);
        let core = include_str!("../../../skills/triage/SKILL.md");
        assert_eq!(
            allowlist(core),
            [
                "bug",
                "enhancement",
                "documentation",
                "question",
                "needs-info",
                "duplicate"
            ]
        );
    }

    #[test]
    fn the_checks_refuse_what_the_limits_forbid_and_say_why() {
        let allowed = allowlist(include_str!("../../../skills/triage/SKILL.md"));
        assert_eq!(
            check(&triage(&["bug", "needs-info"], 2, None), &allowed, 1),
            Ok(())
        );
        let cases = [
            (
                triage(&["Ready-To-Implement"], 0, None),
                "maintainer's decision",
            ),
            (triage(&["plan-approved"], 0, None), "maintainer's decision"),
            (triage(&["wontfix"], 0, None), "not in the Labels section"),
            (triage(&["bug"], 6, None), "ask at most 5"),
            (triage(&["duplicate"], 0, None), "needs evidence"),
            (
                triage(&["duplicate"], 0, Some(1)),
                "cannot duplicate itself",
            ),
            (triage(&["bug"], 0, Some(3)), "not among the labels"),
        ];
        for (t, expected) in cases {
            let err = check(&t, &allowed, 1).expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let mut t = triage(&["bug"], 1, None);
        t.questions[0].reason = " ".into();
        assert!(check(&t, &allowed, 1).is_err());
    }

    #[test]
    fn referenced_issues_are_found_once_without_the_issue_itself() {
        assert_eq!(
            referenced_issues("see #12, #3 and #12; this is #7; C# code", 7, 5),
            [12, 3]
        );
        assert_eq!(referenced_issues("#1 #2 #3", 9, 2), [1, 2]);
    }

    #[test]
    fn the_comment_lists_each_question_with_its_reason() {
        let body = comment_body(&triage(&["bug"], 2, None)).expect("questions");
        assert!(body.contains("1. q0?\n   *Why:* because\n2. q1?"), "{body}");
        assert_eq!(comment_body(&triage(&["bug"], 0, None)), None);
    }
}
