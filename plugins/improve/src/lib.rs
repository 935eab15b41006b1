//! Kiln's improve role, the outer loop: reads the signals the host collected
//! about one role's recent runs (maintainers' corrections, refusals, blocked
//! runs), and either says there is nothing to learn, or writes a new
//! `.kiln/skills/<role>.md` override (overridable sections only) and
//! proposes it as a draft pull request whose `## Evidence` section cites
//! each signal it rests on. A change needs at least two independent signals
//! (different issues or pull requests, each with a trusted actor's signal):
//! checked here before the model is asked, again on the model's answer, and
//! once more by the host on the pull request whatever this plugin says.
use std::collections::BTreeSet;

use kiln_plugin_sdk::agent::{self, Agent, tools};
use kiln_plugin_sdk::forge::{self, Proposed, PullRequestProposal};
use kiln_plugin_sdk::signals::{self, Signal, SignalKind};
use kiln_plugin_sdk::{
    Outcome, OutcomeStatus, Role, RoleError, Task, Trust, session, skills, workspace,
};
use serde::{Deserialize, Serialize};

/// The fewest independent signals a change may rest on.
const MIN_INDEPENDENT: usize = 2;
/// The largest override file the host reads.
const MAX_OVERRIDE_BYTES: usize = 64 * 1024;
/// The line under a heading that makes a section overridable.
const MARKER: &str = "<!-- kiln:overridable -->";
/// Most signals read for one run.
const MAX_SIGNALS: u32 = 500;
/// Most bytes of one signal's evidence quoted in the pull request body.
const MAX_QUOTE: usize = 300;
/// The window when the run's arguments give none.
const DEFAULT_SINCE: &str = "7d";
const FINISH: &str = "submit_improvement";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "change": {"type": "boolean"},
    "title": {"type": "string"},
    "reason": {"type": "string"},
    "cites": {"type": "array", "items": {"type": "integer"}},
    "sections": {"type": "array", "items": {
      "type": "object",
      "properties": {"heading": {"type": "string"}, "body": {"type": "string"}},
      "required": ["heading", "body"]
    }}
  },
  "required": ["change", "reason"]
}"#;

/// A changed section of the override: its heading and complete new body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SectionChange {
    heading: String,
    body: String,
}

/// The finish tool's output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Improvement {
    change: bool,
    #[serde(default)]
    title: String,
    reason: String,
    #[serde(default)]
    cites: Vec<u64>,
    #[serde(default)]
    sections: Vec<SectionChange>,
}

/// One `## ` section of a skill document.
#[derive(Debug, Clone, PartialEq)]
struct Section {
    title: String,
    overridable: bool,
    /// The body after the heading (and the marker, if any), trimmed.
    body: String,
}

/// A skill document split at its `## ` headings outside code fences: the
/// text before the first heading, and the sections.
fn parse(text: &str) -> (String, Vec<Section>) {
    let mut preamble = String::new();
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        let t = line.trim_start();
        let fence = line.len() - t.len() <= 3 && (t.starts_with("```") || t.starts_with("~~~"));
        if fence {
            in_fence = !in_fence;
        }
        match line.strip_prefix("## ") {
            Some(title) if !in_fence && !fence => {
                sections.push((title.trim().to_string(), Vec::new()))
            }
            _ => match sections.last_mut() {
                Some((_, lines)) => lines.push(line),
                None => {
                    preamble.push_str(line);
                    preamble.push('\n');
                }
            },
        }
    }
    let sections = sections
        .into_iter()
        .map(|(title, lines)| {
            let first = lines.iter().position(|l| !l.trim().is_empty());
            let overridable = first.is_some_and(|i| lines[i].trim() == MARKER);
            let start = if overridable {
                first.map_or(0, |i| i + 1)
            } else {
                0
            };
            Section {
                title,
                overridable,
                body: lines[start..].join("\n").trim().to_string(),
            }
        })
        .collect();
    (preamble, sections)
}

/// Headings compare by their words, ignoring case and spacing (as the host
/// merges overrides).
fn same_heading(a: &str, b: &str) -> bool {
    a.split_whitespace()
        .map(str::to_lowercase)
        .eq(b.split_whitespace().map(str::to_lowercase))
}

/// Labels only a maintainer applies.
fn human_only(label: &str) -> bool {
    let l = label.trim().to_lowercase();
    l.starts_with("ready-") || l == "plan-approved"
}

/// The first human-only label listed (a `- \`label\`` item) in `body`.
fn human_only_label(body: &str) -> Option<String> {
    body.lines()
        .filter_map(|l| {
            let item = l.trim_start();
            item.strip_prefix("- `")
                .or_else(|| item.strip_prefix("* `"))
                .and_then(|rest| rest.split_once('`'))
                .map(|(label, _)| label.trim().to_string())
        })
        .find(|l| human_only(l))
}

/// The issues and pull requests with at least one trusted signal: only
/// they count toward the evidence rule.
fn trusted_numbers(signals: &[Signal]) -> BTreeSet<u64> {
    signals
        .iter()
        .filter(|s| s.trust == Trust::Trusted)
        .filter_map(|s| s.number)
        .collect()
}

/// The new override: `current` (the repository's file, if any) with each
/// changed section replaced, or added after the others.
fn compose(target: &str, current: Option<&str>, changes: &[SectionChange]) -> String {
    let (preamble, mut sections) = parse(current.unwrap_or_default());
    for change in changes {
        let body = change.body.trim();
        let body = body.strip_prefix(MARKER).unwrap_or(body).trim().to_string();
        match sections
            .iter_mut()
            .find(|s| same_heading(&s.title, &change.heading))
        {
            Some(s) => s.body = body,
            None => sections.push(Section {
                title: change.heading.trim().to_string(),
                overridable: true,
                body,
            }),
        }
    }
    let mut out = if preamble.trim().is_empty() {
        format!("# {target}: this repository's skill overrides\n\n")
    } else {
        format!("{}\n\n", preamble.trim_end())
    };
    for s in &sections {
        out.push_str(&format!("## {}\n{MARKER}\n\n{}\n\n", s.title, s.body));
    }
    format!("{}\n", out.trim_end())
}

/// The rules of the skill's Evidence and What-you-may-change sections that
/// a program can check: the model is told what is wrong and tries again.
fn check(
    i: &Improvement,
    overridable: &[String],
    signals: &[Signal],
    target: &str,
    current: Option<&str>,
) -> Result<(), String> {
    if i.reason.trim().is_empty() {
        return Err("`reason` is empty: say why (or why not)".into());
    }
    if !i.change {
        return Ok(());
    }
    if i.title.trim().is_empty() {
        return Err("`title` is empty".into());
    }
    if i.sections.is_empty() {
        return Err("`change` is true but `sections` is empty".into());
    }
    for (n, s) in i.sections.iter().enumerate() {
        if !overridable.iter().any(|o| same_heading(o, &s.heading)) {
            return Err(format!(
                "section `{}` cannot be changed: only the overridable sections can ({})",
                s.heading,
                overridable.join(", ")
            ));
        }
        if i.sections[..n]
            .iter()
            .any(|o| same_heading(&o.heading, &s.heading))
        {
            return Err(format!("section `{}` is given twice", s.heading));
        }
        if s.body.trim().is_empty() {
            return Err(format!("section `{}` has an empty body", s.heading));
        }
        if let Some(label) = human_only_label(&s.body) {
            return Err(format!(
                "section `{}` lists `{label}`: human-only labels (ready-*, plan-approved) are a maintainer's decision",
                s.heading
            ));
        }
    }
    let known: BTreeSet<u64> = signals.iter().filter_map(|s| s.number).collect();
    if let Some(n) = i.cites.iter().find(|n| !known.contains(n)) {
        return Err(format!("#{n} is cited, but no signal is about it"));
    }
    let trusted = trusted_numbers(signals);
    let independent: BTreeSet<u64> = i
        .cites
        .iter()
        .copied()
        .filter(|n| trusted.contains(n))
        .collect();
    if independent.len() < MIN_INDEPENDENT {
        return Err(format!(
            "a change needs at least {MIN_INDEPENDENT} independent signals (different issues or pull requests with a trusted actor's signal); `cites` gives {}",
            independent.len()
        ));
    }
    let size = compose(target, current, &i.sections).len();
    if size > MAX_OVERRIDE_BYTES {
        return Err(format!(
            "the new override would be {size} bytes; the host reads at most {MAX_OVERRIDE_BYTES}"
        ));
    }
    Ok(())
}

/// A window (`7d`, `36h`) in hours; the host checked it when the run was queued.
fn since_hours(since: &str) -> Result<u32, RoleError> {
    let bad = || RoleError::InvalidArgument(format!("since {since:?}: a window is like 7d or 36h"));
    let at = since.char_indices().last().map_or(0, |(i, _)| i);
    let (n, unit) = since.split_at(at);
    let n: u32 = n.parse().map_err(|_| bad())?;
    match unit {
        "h" => Ok(n),
        "d" => n.checked_mul(24).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// A signal kind as the contract spells it.
fn kind_name(kind: SignalKind) -> &'static str {
    match kind {
        SignalKind::LabelCorrected => "label-corrected",
        SignalKind::NeedsInfoBypassed => "needs-info-bypassed",
        SignalKind::ClosedAsDuplicate => "closed-as-duplicate",
        SignalKind::PullRequestClosedUnmerged => "pull-request-closed-unmerged",
        SignalKind::ChangedByHuman => "changed-by-human",
        SignalKind::SteeringMessage => "steering-message",
        SignalKind::EffectDenied => "effect-denied",
        SignalKind::EffectHeld => "effect-held",
        SignalKind::RunBlocked => "run-blocked",
        SignalKind::BudgetExhausted => "budget-exhausted",
        SignalKind::ReviewReply => "review-reply",
        SignalKind::ReviewThreadByHuman => "review-thread-by-human",
    }
}

fn trust_name(trust: Trust) -> &'static str {
    match trust {
        Trust::Trusted => "trusted",
        Trust::Untrusted => "untrusted",
    }
}

/// Where a signal is: `#4, run r12` or `the repository`.
fn place(s: &Signal) -> String {
    let on = s
        .number
        .map(|n| format!("#{n}"))
        .unwrap_or_else(|| "the repository".into());
    match &s.run_id {
        Some(run) => format!("{on}, run {run}"),
        None => on,
    }
}

/// The signals as the model reads them: what each is, plainly, and its
/// evidence in the envelope of its author's trust.
fn render_signals(signals: &[Signal]) -> String {
    let mut out = String::new();
    for (i, s) in signals.iter().enumerate() {
        let id = format!("S{}", i + 1);
        out.push_str(&format!(
            "\n\n{id}. {} on {} by @{} ({}), {}:\n",
            kind_name(s.kind),
            place(s),
            s.author,
            trust_name(s.trust),
            s.at
        ));
        out.push_str(&forge::envelope(
            s.trust,
            &format!("signal {id} evidence, by @{}", s.author),
            &s.evidence,
        ));
    }
    out
}

/// `text` on one line, at most [`MAX_QUOTE`] bytes.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    agent::truncate(line, MAX_QUOTE).replace('\n', " ")
}

/// The pull request body: why, then one `## Evidence` item per signal on a
/// cited issue or pull request (`- #N ...`: the host reads the citations
/// from these items), then the sections changed.
fn pull_request_body(target: &str, since: &str, i: &Improvement, signals: &[Signal]) -> String {
    let mut body = format!(
        "Kiln's outer loop proposes a change to the `{target}` skill of this repository, in \
         `.kiln/skills/{target}.md`, from what happened after its runs in the last {since}.\n\n\
         **Why:** {}\n\n## Evidence\n\n",
        i.reason.trim()
    );
    let cited: BTreeSet<u64> = i.cites.iter().copied().collect();
    for n in &cited {
        for s in signals.iter().filter(|s| s.number == Some(*n)) {
            let quote = match s.trust {
                Trust::Trusted => one_line(&s.evidence),
                Trust::Untrusted => format!(
                    "(untrusted author, quoted as evidence) {}",
                    one_line(&s.evidence)
                ),
            };
            body.push_str(&format!(
                "- #{n} — {} by @{} ({}){}: {quote}\n",
                kind_name(s.kind),
                s.author,
                trust_name(s.trust),
                s.run_id
                    .as_deref()
                    .map(|r| format!(", run {r}"))
                    .unwrap_or_default(),
            ));
        }
    }
    body.push_str("\n## Sections changed\n\n");
    for s in &i.sections {
        body.push_str(&format!("- `{}`\n", s.heading.trim()));
    }
    body.push_str(&format!(
        "\nNothing changes until a maintainer merges this pull request; the `{target}` runs \
         after that read the new override.\n"
    ));
    body
}

/// How the run ends when there is nothing to propose.
fn nothing(summary: String, output: serde_json::Value) -> Outcome {
    Outcome {
        status: OutcomeStatus::Skipped,
        summary,
        output: Some(output.to_string()),
    }
}

#[derive(Default)]
struct Improver;

impl Role for Improver {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let arg = |key: &str| {
            task.args
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let target = arg("target").ok_or_else(|| {
            RoleError::InvalidArgument("the improve role needs the argument target".into())
        })?;
        let since = arg("since").unwrap_or_else(|| DEFAULT_SINCE.to_string());
        let hours = since_hours(&since)?;
        let path = format!(".kiln/skills/{target}.md");
        session::progress(&format!(
            "improving the {target} skill from the last {since}"
        ));

        let current = match workspace::read(&path) {
            Ok(bytes) if bytes.len() > MAX_OVERRIDE_BYTES => {
                return Ok(Outcome::blocked(format!(
                    "{path} is {} bytes, over the {MAX_OVERRIDE_BYTES}-byte limit: the host ignores it \
                     whole, so no change to it can be proposed; a maintainer should shorten it",
                    bytes.len()
                )));
            }
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(RoleError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let signals = signals::list(&target, hours, MAX_SIGNALS)?;
        let trusted = trusted_numbers(&signals);
        let issues: BTreeSet<u64> = signals.iter().filter_map(|s| s.number).collect();
        if trusted.len() < MIN_INDEPENDENT {
            let why = if signals.is_empty() {
                format!("no signals about {target} in the last {since}")
            } else {
                format!(
                    "{} signal(s) about {target} in the last {since}, on {} issue(s) or pull request(s), {} with a trusted actor's signal; a change needs at least {MIN_INDEPENDENT} independent ones",
                    signals.len(),
                    issues.len(),
                    trusted.len()
                )
            };
            return Ok(nothing(
                format!("nothing to learn: {why}"),
                serde_json::json!({"change": false, "reason": why, "signals": signals.len()}),
            ));
        }

        let skill = skills::get(&target)?;
        let own = skills::get("improve")?;
        let overridable: Vec<String> = parse(&skill.text)
            .1
            .into_iter()
            .filter(|s| s.overridable)
            .map(|s| s.title)
            .collect();
        if overridable.is_empty() {
            return Ok(nothing(
                format!("nothing to change: the {target} skill has no overridable section"),
                serde_json::json!({"change": false, "reason": "no overridable section"}),
            ));
        }
        let mut prompt = format!(
            "Target role: `{target}`. Window: the last {since}.\n\nSections you may change: {}.\n\n\
             The role's current skill (Kiln's core skill with this repository's override applied):\n\n\
             ```markdown\n{}\n```\n\n",
            overridable
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", "),
            skill.text.trim_end()
        );
        match &current {
            Some(text) => prompt.push_str(&format!(
                "The repository's override file `{path}` today:\n\n```markdown\n{}\n```\n\n",
                text.trim_end()
            )),
            None => prompt.push_str(&format!(
                "The repository has no override file `{path}` yet.\n\n"
            )),
        }
        prompt.push_str(&format!(
            "Signals ({} in all, {} issue(s) or pull request(s) with a trusted actor's signal):{}",
            signals.len(),
            trusted.len(),
            render_signals(&signals)
        ));

        let check_signals = signals.clone();
        let check_sections = overridable.clone();
        let (check_target, check_current) = (target.clone(), current.clone());
        let mut agent = Agent::new(agent::system_prompt(&own.text, &task))
            .tool(tools::ReadFile)
            .tool(tools::ListDir)
            .finish_tool(
                FINISH,
                "Report the improvement: the changed overridable sections and the signals they rest on, or no change and why",
                FINISH_SCHEMA,
            )
            .check_finish(agent::parses_as(move |i: &Improvement| {
                check(
                    i,
                    &check_sections,
                    &check_signals,
                    &check_target,
                    check_current.as_deref(),
                )
            }))
            .max_turns(15);
        let output = match agent.run(&prompt)?.output_or_blocked(FINISH) {
            Ok(output) => output,
            Err(blocked) => return Ok(blocked),
        };
        let improvement: Improvement = serde_json::from_value(output)
            .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
        if !improvement.change {
            return Ok(nothing(
                format!("no change: {}", improvement.reason.trim()),
                serde_json::json!({"change": false, "reason": improvement.reason}),
            ));
        }

        let text = compose(&target, current.as_deref(), &improvement.sections);
        workspace::write(&path, &text)?;
        let cites: BTreeSet<u64> = improvement.cites.iter().copied().collect();
        let cited = cites
            .iter()
            .map(|n| format!("#{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let proposal = PullRequestProposal {
            title: format!("{target} skill: {}", improvement.title.trim()),
            body: pull_request_body(&target, &since, &improvement, &signals),
            commit_message: format!(
                "{path}: {}\n\nFrom the signals on {cited}, collected by Kiln's outer loop.",
                improvement.title.trim()
            ),
        };
        let proposed = forge::settle(forge::propose_pull_request(&proposal))?;
        let refused = matches!(proposed, Proposed::Refused(_));
        let sections: Vec<&str> = improvement
            .sections
            .iter()
            .map(|s| s.heading.trim())
            .collect();
        Ok(Outcome {
            // A refused proposal is for a person to look at.
            status: if refused {
                OutcomeStatus::Blocked
            } else {
                OutcomeStatus::Completed
            },
            summary: format!(
                "proposed {path} (sections {}) resting on {cited}: draft pull request {proposed}",
                sections.join(", ")
            ),
            output: Some(
                serde_json::json!({
                    "change": true,
                    "path": path,
                    "sections": sections,
                    "cites": cites,
                    "reason": improvement.reason,
                })
                .to_string(),
            ),
        })
    }
}

kiln_plugin_sdk::register_role!(Improver);

#[cfg(test)]
mod tests {
    use super::*;

    const TRIAGE: &str = include_str!("../../../skills/triage/SKILL.md");

    fn signal(number: u64, trust: Trust) -> Signal {
        Signal {
            kind: SignalKind::LabelCorrected,
            run_id: Some(format!("r{number}")),
            number: Some(number),
            author: "alice".into(),
            trust,
            evidence: "added `bug`".into(),
            at: String::new(),
        }
    }

    fn improvement(sections: &[(&str, &str)], cites: &[u64]) -> Improvement {
        Improvement {
            change: true,
            title: "crashes are bugs".into(),
            reason: "two relabels".into(),
            cites: cites.to_vec(),
            sections: sections
                .iter()
                .map(|(h, b)| SectionChange {
                    heading: h.to_string(),
                    body: b.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_overridable_sections_are_read_from_the_skill() {
        let titles: Vec<String> = parse(TRIAGE)
            .1
            .into_iter()
            .filter(|s| s.overridable)
            .map(|s| s.title)
            .collect();
        assert_eq!(titles, ["Labels", "What makes an issue actionable"]);
    }

    #[test]
    fn the_checks_refuse_what_the_evidence_rule_and_the_skill_forbid() {
        let overridable = vec!["Labels".to_string()];
        let signals = [
            signal(1, Trust::Trusted),
            signal(2, Trust::Trusted),
            signal(3, Trust::Untrusted),
        ];
        let ok = improvement(&[("labels", "- `bug`: crashes too")], &[1, 2]);
        assert_eq!(check(&ok, &overridable, &signals, "triage", None), Ok(()));
        let cases = [
            (improvement(&[("Labels", "- `bug`")], &[1]), "gives 1"),
            (improvement(&[("Labels", "- `bug`")], &[1, 1]), "gives 1"),
            (improvement(&[("Labels", "- `bug`")], &[1, 3]), "gives 1"),
            (
                improvement(&[("Labels", "- `bug`")], &[1, 9]),
                "#9 is cited",
            ),
            (
                improvement(&[("Limits", "anything")], &[1, 2]),
                "only the overridable",
            ),
            (
                improvement(&[("Labels", "- `ready-to-spec`: go")], &[1, 2]),
                "human-only",
            ),
            (improvement(&[("Labels", " ")], &[1, 2]), "empty body"),
            (improvement(&[], &[1, 2]), "`sections` is empty"),
        ];
        for (i, expected) in cases {
            let err = check(&i, &overridable, &signals, "triage", None).expect_err(expected);
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let mut none = improvement(&[], &[]);
        none.change = false;
        assert_eq!(check(&none, &overridable, &signals, "triage", None), Ok(()));
    }

    #[test]
    fn the_override_keeps_its_other_sections_and_replaces_the_changed_one() {
        let current = "# Ours\n\n## Labels\n<!-- kiln:overridable -->\n\n- `kind/bug`\n\n## What makes an issue actionable\n\nSteps.\n";
        let text = compose(
            "triage",
            Some(current),
            &[SectionChange {
                heading: "labels".into(),
                body: "- `kind/bug`\n- `kind/crash`".into(),
            }],
        );
        assert_eq!(
            text,
            "# Ours\n\n## Labels\n<!-- kiln:overridable -->\n\n- `kind/bug`\n- `kind/crash`\n\n## What makes an issue actionable\n<!-- kiln:overridable -->\n\nSteps.\n"
        );
        let fresh = compose(
            "triage",
            None,
            &[SectionChange {
                heading: "Labels".into(),
                body: "- `bug`".into(),
            }],
        );
        assert_eq!(
            fresh,
            "# triage: this repository's skill overrides\n\n## Labels\n<!-- kiln:overridable -->\n\n- `bug`\n"
        );
    }

    #[test]
    fn the_body_cites_each_signal_on_a_cited_issue_in_its_evidence_section() {
        let mut bob = signal(1, Trust::Untrusted);
        bob.author = "bob".into();
        bob.evidence = "please\nadd `ready-to-implement`".into();
        let signals = [
            signal(1, Trust::Trusted),
            bob,
            signal(2, Trust::Trusted),
            signal(5, Trust::Trusted),
        ];
        let body = pull_request_body(
            "triage",
            "7d",
            &improvement(&[("Labels", "x")], &[2, 1]),
            &signals,
        );
        let evidence: Vec<&str> = body.lines().filter(|l| l.starts_with("- #")).collect();
        assert_eq!(
            evidence,
            [
                "- #1 — label-corrected by @alice (trusted), run r1: added `bug`",
                "- #1 — label-corrected by @bob (untrusted), run r1: (untrusted author, quoted as evidence) please add `ready-to-implement`",
                "- #2 — label-corrected by @alice (trusted), run r2: added `bug`",
            ]
        );
        assert!(
            body.contains("## Sections changed\n\n- `Labels`\n"),
            "{body}"
        );
    }

    #[test]
    fn windows_are_hours_or_days() {
        assert_eq!(since_hours("36h"), Ok(36));
        assert_eq!(since_hours("7d"), Ok(168));
        assert!(since_hours("7w").is_err());
        assert!(since_hours("").is_err());
    }
}
