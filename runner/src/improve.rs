//! The host's checks on what an `improve` run proposes, made on its pull
//! request whatever the plugin says ([`check_pull_request`], called by the
//! forge import before the gate decides the push): the commit changes only
//! the target role's override `.kiln/skills/<role>.md`; the change rests on
//! at least two independent signals (different issues or pull requests, each
//! with a signal from a trusted actor), cited in the body's `## Evidence`
//! section, and every cited one is about a signal the host handed the run;
//! the new override only replaces sections the core skill marks overridable
//! (the rules of [`crate::skills::merge`]), fits the override size limit,
//! and never puts a human-only label into an allowlist. The wider write
//! surface (`.kiln/skills/**` only) is a gate invariant, not checked here.
use std::collections::BTreeSet;

use crate::plugin::types::Signal;
use crate::skills::{MAX_OVERRIDE_BYTES, merge};

/// The fewest independent signals (different issues or pull requests) a
/// change may rest on.
pub const MIN_INDEPENDENT_SIGNALS: usize = 2;

/// The heading of the pull request body's section whose list items
/// (`- #N ...`) cite the issues and pull requests a change rests on.
pub const EVIDENCE_HEADING: &str = "## Evidence";

/// The override file an improve run of `target` writes.
pub fn override_path(target: &str) -> String {
    format!(".kiln/skills/{target}.md")
}

/// Why the host refuses an `improve` run's proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The commit changes nothing.
    #[error("the pull request changes nothing; an improve run proposes a new {0}")]
    NothingChanged(String),
    /// The commit changes a path other than the target's override.
    #[error("the pull request changes {path}; an improve run changes only {file}")]
    OtherPath {
        /// The path it should not change.
        path: String,
        /// The one file it may change.
        file: String,
    },
    /// The target role has no core skill built into Kiln.
    #[error("role {0} has no core skill built into Kiln to improve")]
    NoCoreSkill(String),
    /// The new override is not UTF-8 text.
    #[error("the new {0} is not UTF-8 text")]
    NotText(String),
    /// Fewer than [`MIN_INDEPENDENT_SIGNALS`] different issues or pull
    /// requests with a trusted actor's signal.
    #[error(
        "a change must rest on at least {MIN_INDEPENDENT_SIGNALS} independent signals (different issues or pull requests, each with a signal from a trusted actor, cited as `- #N` items of the body's `## Evidence` section); this one cites {0}"
    )]
    TooFewSignals(usize),
    /// A cited issue or pull request that no collected signal is about.
    #[error("#{0} is cited, but no signal the host collected is about it")]
    NotASignal(u64),
    /// The override file is over the size limit.
    #[error("the new override is {size} bytes; the host reads at most {MAX_OVERRIDE_BYTES}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
    },
    /// A part of the override the core skill does not let a repository change.
    #[error("the new override would change what the core skill does not allow: {0}")]
    NotOverridable(String),
    /// A human-only label in the merged skill's `Labels` allowlist.
    #[error("the new override lists `{0}` as a label: it is applied by humans only")]
    HumanOnlyLabel(String),
}

/// Checks an improve run's pull request for `target`: `body` its body,
/// `paths` every path its commit changes, `files` the contents of those
/// that still exist, `signals` what the host handed the run.
pub fn check_pull_request(
    target: &str,
    body: &str,
    paths: &[String],
    files: &[(String, Vec<u8>)],
    signals: &[Signal],
) -> Result<(), Refusal> {
    let file = override_path(target);
    if paths.is_empty() {
        return Err(Refusal::NothingChanged(file));
    }
    if let Some(other) = paths.iter().find(|p| **p != file) {
        return Err(Refusal::OtherPath {
            path: other.clone(),
            file,
        });
    }
    let core =
        crate::skills::core(target).ok_or_else(|| Refusal::NoCoreSkill(target.to_string()))?;
    // A deleted override hands the role back its core skill.
    let text = match files.iter().find(|(p, _)| *p == file) {
        Some((_, bytes)) => std::str::from_utf8(bytes).map_err(|_| Refusal::NotText(file))?,
        None => "",
    };
    check(core, text, &cited_numbers(body), signals)
}

/// The issues and pull requests a pull request body cites: the number
/// starting each `- #N` item of its `## Evidence` section, in order.
pub fn cited_numbers(body: &str) -> Vec<u64> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with("## ") {
            inside = line.trim_end() == EVIDENCE_HEADING;
            continue;
        }
        let Some(rest) = line.strip_prefix("- #").filter(|_| inside) else {
            continue;
        };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

/// Checks a proposal: `core` is the role's core skill, `override_text` the
/// proposed `.kiln/skills/<role>.md`, `cited` the issues and pull requests
/// its pull request body cites, `signals` what the host collected. Only
/// issues and pull requests with a trusted actor's signal count toward
/// [`MIN_INDEPENDENT_SIGNALS`]: an untrusted author's words are evidence,
/// never a reason on their own.
pub fn check(
    core: &str,
    override_text: &str,
    cited: &[u64],
    signals: &[Signal],
) -> Result<(), Refusal> {
    let collected: BTreeSet<u64> = signals.iter().filter_map(|s| s.number).collect();
    if let Some(n) = cited.iter().find(|n| !collected.contains(n)) {
        return Err(Refusal::NotASignal(*n));
    }
    let trusted: BTreeSet<u64> = signals
        .iter()
        .filter(|s| s.trusted)
        .filter_map(|s| s.number)
        .collect();
    let independent: BTreeSet<u64> = cited
        .iter()
        .copied()
        .filter(|n| trusted.contains(n))
        .collect();
    if independent.len() < MIN_INDEPENDENT_SIGNALS {
        return Err(Refusal::TooFewSignals(independent.len()));
    }
    if override_text.len() > MAX_OVERRIDE_BYTES {
        return Err(Refusal::TooLarge {
            size: override_text.len(),
        });
    }
    let merged = merge(core, override_text);
    if let Some(part) = merged.ignored.first() {
        return Err(Refusal::NotOverridable(part.to_string()));
    }
    if let Some(label) = labels_section(&merged.text)
        .into_iter()
        .find(|l| crate::policy::gate::is_human_only_label(l))
    {
        return Err(Refusal::HumanOnlyLabel(label));
    }
    Ok(())
}

/// The backticked names listed in a skill's `## Labels` section.
fn labels_section(skill: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in skill.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            inside = title.trim().eq_ignore_ascii_case("labels");
            continue;
        }
        let item = line.trim_start();
        if let Some(rest) = item
            .strip_prefix("- `")
            .or_else(|| item.strip_prefix("* `"))
            && inside
            && let Some((label, _)) = rest.split_once('`')
        {
            out.push(label.trim().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::types::SignalKind;

    fn signal(number: u64) -> Signal {
        Signal {
            kind: SignalKind::LabelCorrected,
            run_id: Some(format!("r{number}")),
            number: Some(number),
            author: "alice".into(),
            trusted: number != 4,
            evidence: "added `bug`".into(),
            at: String::new(),
        }
    }

    fn core() -> &'static str {
        crate::skills::core("triage").expect("triage skill")
    }

    const LABELS: &str = "## Labels\n<!-- kiln:overridable -->\n\n- `bug`: something is broken\n- `crash`: it crashes\n";

    #[test]
    fn a_change_needs_two_independent_collected_signals_and_overridable_sections_only() {
        let signals = [signal(1), signal(2), signal(3), signal(4)];
        assert_eq!(check(core(), LABELS, &[1, 2], &signals), Ok(()));
        assert_eq!(
            check(core(), LABELS, &[1, 4], &signals),
            Err(Refusal::TooFewSignals(1)),
            "#4's only signal is an untrusted author's: evidence, not a reason"
        );
        assert_eq!(
            check(core(), LABELS, &[3], &signals),
            Err(Refusal::TooFewSignals(1)),
            "one issue alone is no evidence"
        );
        assert_eq!(
            check(core(), LABELS, &[1, 1], &signals),
            Err(Refusal::TooFewSignals(1)),
            "the same issue twice is one signal"
        );
        assert_eq!(
            check(core(), LABELS, &[1, 9], &signals),
            Err(Refusal::NotASignal(9))
        );
        let limits = format!("{LABELS}\n## Limits\n\nPropose any label you like.\n");
        let err = check(core(), &limits, &[1, 2], &signals).unwrap_err();
        assert!(
            matches!(&err, Refusal::NotOverridable(m) if m.contains("Limits")),
            "{err}"
        );
        let ready = format!("{LABELS}- `ready-to-spec`: ready\n");
        assert_eq!(
            check(core(), &ready, &[1, 2], &signals),
            Err(Refusal::HumanOnlyLabel("ready-to-spec".into()))
        );
        let huge = format!("{LABELS}{}", "x".repeat(MAX_OVERRIDE_BYTES));
        let err = check(core(), &huge, &[1, 2], &signals).unwrap_err();
        assert!(matches!(err, Refusal::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("at most 65536"), "{err}");
    }

    #[test]
    fn the_pull_request_changes_the_targets_override_only_and_cites_from_its_evidence_section() {
        let signals = [signal(1), signal(2)];
        let body = "Why: #7 is only mentioned.\n\n## Evidence\n\n- #1 — relabelled\n- #2 — relabelled\n  - #9 nested, not a citation\n\n## Sections changed\n\n- #8 is no citation here\n";
        assert_eq!(cited_numbers(body), [1, 2]);
        let file = override_path("triage");
        let changed = |paths: &[&str], text: &str| {
            check_pull_request(
                "triage",
                body,
                &paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                &[(file.clone(), text.as_bytes().to_vec())],
                &signals,
            )
        };
        assert_eq!(changed(&[&file], LABELS), Ok(()));
        assert_eq!(
            changed(&[], LABELS),
            Err(Refusal::NothingChanged(file.clone()))
        );
        let err = changed(&[&file, ".kiln/policy.cedar"], LABELS).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the pull request changes .kiln/policy.cedar; an improve run changes only .kiln/skills/triage.md"
        );
        assert!(
            matches!(
                changed(&[".kiln/skills/review.md"], LABELS),
                Err(Refusal::OtherPath { .. })
            ),
            "another role's override is not this run's to change"
        );
        let limits = format!("{LABELS}\n## Limits\n\nAnything goes.\n");
        assert!(matches!(
            changed(&[&file], &limits),
            Err(Refusal::NotOverridable(_))
        ));
        let uncited = check_pull_request(
            "triage",
            "No evidence section: #1 and #2.",
            std::slice::from_ref(&file),
            &[(file.clone(), LABELS.as_bytes().to_vec())],
            &signals,
        );
        assert_eq!(uncited, Err(Refusal::TooFewSignals(0)));
    }
}
