//! The host's checks on what an `improve` run proposes, made whatever the
//! plugin says: a change rests on at least two independent signals, the
//! signals it cites are ones the host collected, and the new override file
//! only replaces sections the core skill marks overridable (the rules of
//! [`crate::skills::merge`]), fits the override size limit, and never puts a
//! human-only label into an allowlist. The write surface (`.kiln/skills/**`
//! only) is a gate invariant, not checked here.
use std::collections::BTreeSet;

use crate::plugin::types::Signal;
use crate::skills::{MAX_OVERRIDE_BYTES, merge};

/// The fewest independent signals (different issues or pull requests) a
/// change may rest on.
pub const MIN_INDEPENDENT_SIGNALS: usize = 2;

/// Why the host refuses an `improve` run's proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Fewer than [`MIN_INDEPENDENT_SIGNALS`] different issues or pull requests.
    #[error(
        "a change must rest on at least {MIN_INDEPENDENT_SIGNALS} independent signals (different issues or pull requests); this one cites {0}"
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

/// Checks a proposal: `core` is the role's core skill, `override_text` the
/// proposed `.kiln/skills/<role>.md`, `cited` the issues and pull requests
/// its pull request body cites, `signals` what the host collected.
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
    let independent: BTreeSet<u64> = cited.iter().copied().collect();
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
            trusted: true,
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
        let signals = [signal(1), signal(2), signal(3)];
        assert_eq!(check(core(), LABELS, &[1, 2], &signals), Ok(()));
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
}
