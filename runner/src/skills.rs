//! Skills: the Markdown that defines each built-in role's behaviour.
//!
//! The core skills (`skills/<role>/SKILL.md`) are compiled into the binary,
//! so `kiln` runs with nothing on disk. A repository adapts a role with
//! `.kiln/skills/<role>.md`, but only where the core skill allows it: a
//! `## ` section whose heading is directly followed by the line
//! [`OVERRIDABLE_MARKER`] may be replaced by the section of the same heading
//! in the override. Everything else in an override is ignored, and each
//! ignored part is reported (the skills import turns the reports into
//! warning events), so a repository can never rewrite a role's limits.

/// The line, right under a `## ` heading, that lets repositories replace the
/// section.
pub const OVERRIDABLE_MARKER: &str = "<!-- kiln:overridable -->";

/// The largest override file the host reads; a larger one is ignored whole.
pub const MAX_OVERRIDE_BYTES: usize = 64 * 1024;

/// The core skills shipped in the binary: (name, text).
pub const CORE_SKILLS: &[(&str, &str)] = &[
    ("triage", include_str!("../../skills/triage/SKILL.md")),
    ("spec", include_str!("../../skills/spec/SKILL.md")),
    (
        "implementation",
        include_str!("../../skills/implementation/SKILL.md"),
    ),
    ("review", include_str!("../../skills/review/SKILL.md")),
    (
        "verification",
        include_str!("../../skills/verification/SKILL.md"),
    ),
    ("improve", include_str!("../../skills/improve/SKILL.md")),
];

/// The core skill `name`, if Kiln ships one.
pub fn core(name: &str) -> Option<&'static str> {
    CORE_SKILLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// A skill after a repository's override was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    /// The text the role should use.
    pub text: String,
    /// Whether any section was replaced.
    pub overridden: bool,
    /// The parts of the override that were not applied, and why.
    pub ignored: Vec<Ignored>,
}

/// A part of an override that was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Text before the override's first `## ` heading (other than `# `
    /// titles and blank lines).
    Preamble,
    /// A section the core skill has but does not mark overridable.
    NotOverridable(String),
    /// A section the core skill does not have.
    Unknown(String),
    /// A section given a second time; the first one was applied.
    Repeated(String),
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ignored::Preamble => f.write_str(
                "text before the first `## ` heading is ignored (an override only replaces sections)",
            ),
            Ignored::NotOverridable(h) => write!(
                f,
                "section `{h}` is ignored: the core skill does not mark it overridable"
            ),
            Ignored::Unknown(h) => write!(
                f,
                "section `{h}` is ignored: the core skill has no section of that name"
            ),
            Ignored::Repeated(h) => write!(
                f,
                "section `{h}` is ignored: it appears more than once, the first one was applied"
            ),
        }
    }
}

/// One `## ` section of a skill document.
struct Section<'a> {
    /// The heading's text, as written.
    title: &'a str,
    /// The whole section: heading line, marker, body.
    text: &'a str,
    /// The body, after the heading line (and after the marker, if any).
    body: &'a str,
    /// Whether the marker follows the heading.
    overridable: bool,
}

/// A skill document split at its `## ` headings (headings inside fenced
/// code blocks do not count).
struct Document<'a> {
    preamble: &'a str,
    sections: Vec<Section<'a>>,
}

/// The title of a level-2 heading line, if `line` is one.
fn heading(line: &str) -> Option<&str> {
    line.strip_prefix("## ").map(str::trim)
}

/// Whether `line` opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    let t = line.trim_start();
    line.len() - t.len() <= 3 && (t.starts_with("```") || t.starts_with("~~~"))
}

/// Headings compare by their words, ignoring case and spacing.
fn same_heading(a: &str, b: &str) -> bool {
    a.split_whitespace()
        .map(str::to_lowercase)
        .eq(b.split_whitespace().map(str::to_lowercase))
}

fn parse(text: &str) -> Document<'_> {
    // Byte offsets of each heading line, found outside code fences.
    let mut starts = Vec::new();
    let mut in_fence = false;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_fence(bare) {
            in_fence = !in_fence;
        } else if !in_fence && heading(bare).is_some() {
            starts.push(offset);
        }
        offset += line.len();
    }
    let preamble = &text[..starts.first().copied().unwrap_or(text.len())];
    let sections = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| {
            let end = starts.get(i + 1).copied().unwrap_or(text.len());
            let section = &text[start..end];
            let (first, rest) = section.split_once('\n').unwrap_or((section, ""));
            let title = heading(first.trim_end_matches('\r')).unwrap_or_default();
            let (marker, after) = rest.split_once('\n').unwrap_or((rest, ""));
            let overridable = marker.trim() == OVERRIDABLE_MARKER;
            Section {
                title,
                text: section,
                body: if overridable { after } else { rest },
                overridable,
            }
        })
        .collect();
    Document { preamble, sections }
}

/// Apply `override_text` (a repository's `.kiln/skills/<role>.md`) to the
/// core skill text: each overridable section with a same-named section in
/// the override gets the override's body; everything else stays as Kiln
/// wrote it, and each part of the override not applied is reported.
pub fn merge(core: &str, override_text: &str) -> Merged {
    let core_doc = parse(core);
    let over = parse(override_text);
    let mut ignored = Vec::new();
    let preamble_is_titles = over
        .preamble
        .lines()
        .all(|l| l.trim().is_empty() || l.starts_with("# "));
    if !preamble_is_titles {
        ignored.push(Ignored::Preamble);
    }
    // For each core section, the override section that replaces it.
    let mut replacement: Vec<Option<&str>> = vec![None; core_doc.sections.len()];
    for section in &over.sections {
        match core_doc
            .sections
            .iter()
            .position(|c| same_heading(c.title, section.title))
        {
            None => ignored.push(Ignored::Unknown(section.title.to_string())),
            Some(i) if !core_doc.sections[i].overridable => {
                ignored.push(Ignored::NotOverridable(section.title.to_string()))
            }
            Some(i) if replacement[i].is_some() => {
                ignored.push(Ignored::Repeated(section.title.to_string()))
            }
            Some(i) => replacement[i] = Some(section.body),
        }
    }
    let mut text = String::with_capacity(core.len() + override_text.len());
    text.push_str(core_doc.preamble);
    for (section, replaced) in core_doc.sections.iter().zip(&replacement) {
        match replaced {
            None => text.push_str(section.text),
            Some(body) => {
                // An override may repeat the marker under its own heading.
                let body = body.trim();
                let body = body.strip_prefix(OVERRIDABLE_MARKER).unwrap_or(body).trim();
                text.push_str(&format!(
                    "## {}\n{OVERRIDABLE_MARKER}\n\n{body}\n\n",
                    section.title
                ));
            }
        }
    }
    Merged {
        text,
        overridden: replacement.iter().any(Option::is_some),
        ignored,
    }
}

/// The overridable section titles of a skill, in order.
pub fn overridable_sections(skill: &str) -> Vec<&str> {
    parse(skill)
        .sections
        .iter()
        .filter(|s| s.overridable)
        .map(|s| s.title)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORE: &str = "# Role\n\nIntro.\n\n## Labels\n<!-- kiln:overridable -->\n\n- `bug`\n\n## Limits\n\nNever merge.\n\n## Style\n<!-- kiln:overridable -->\n\nBe brief.\n```md\n## Not a heading\n```\n";

    #[test]
    fn an_overridable_section_is_replaced_and_the_rest_is_kept_verbatim() {
        let merged = merge(
            CORE,
            "# Our triage\n\n## Labels\n\n- `kind/bug`\n- `area/ui`\n",
        );
        assert!(merged.overridden);
        assert_eq!(merged.ignored, vec![]);
        assert_eq!(
            merged.text,
            "# Role\n\nIntro.\n\n## Labels\n<!-- kiln:overridable -->\n\n- `kind/bug`\n- `area/ui`\n\n## Limits\n\nNever merge.\n\n## Style\n<!-- kiln:overridable -->\n\nBe brief.\n```md\n## Not a heading\n```\n"
        );
    }

    #[test]
    fn sections_that_are_not_overridable_or_unknown_are_ignored_and_named() {
        let over = "Some words first.\n\n## limits\n\nMerge whenever.\n\n## Deploy\n\nShip it.\n\n## Style\n\nBe verbose.\n\n## STYLE\n\nAgain.\n";
        let merged = merge(CORE, over);
        assert_eq!(
            merged.ignored,
            vec![
                Ignored::Preamble,
                Ignored::NotOverridable("limits".into()),
                Ignored::Unknown("Deploy".into()),
                Ignored::Repeated("STYLE".into()),
            ]
        );
        assert!(merged.text.contains("Never merge."), "{}", merged.text);
        assert!(!merged.text.contains("Merge whenever"));
        assert!(!merged.text.contains("Ship it"));
        assert!(merged.text.contains("Be verbose."));
        assert!(!merged.text.contains("Be brief."));
        assert_eq!(
            Ignored::NotOverridable("limits".into()).to_string(),
            "section `limits` is ignored: the core skill does not mark it overridable"
        );
    }

    #[test]
    fn headings_inside_code_fences_are_not_sections() {
        // The core's fenced "## Not a heading" is part of Style, so an
        // override cannot target it.
        let merged = merge(CORE, "## Not a heading\n\nx\n");
        assert_eq!(
            merged.ignored,
            vec![Ignored::Unknown("Not a heading".into())]
        );
        assert_eq!(merged.text, CORE);
        assert!(!merged.overridden);
        // ... and a fenced heading in an override stays inside its section.
        let merged = merge(CORE, "## Style\n\n```\n## Limits\n```\n");
        assert_eq!(merged.ignored, vec![]);
        assert!(merged.text.contains("```\n## Limits\n```"));
        assert!(merged.text.contains("Never merge."));
    }

    #[test]
    fn an_empty_override_or_one_repeating_the_marker_is_harmless() {
        assert_eq!(
            merge(CORE, ""),
            Merged {
                text: CORE.to_string(),
                overridden: false,
                ignored: vec![]
            }
        );
        let merged = merge(CORE, "## Labels\n<!-- kiln:overridable -->\n- `x`\n");
        assert_eq!(merged.text.matches(OVERRIDABLE_MARKER).count(), 2);
        assert!(
            merged
                .text
                .contains("<!-- kiln:overridable -->\n\n- `x`\n\n## Limits")
        );
    }

    #[test]
    fn every_core_skill_is_embedded_and_marks_its_overridable_sections() {
        let names: Vec<_> = CORE_SKILLS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "triage",
                "spec",
                "implementation",
                "review",
                "verification",
                "improve"
            ]
        );
        assert_eq!(
            overridable_sections(core("triage").expect("triage")),
            ["Labels", "What makes an issue actionable"]
        );
        assert_eq!(
            overridable_sections(core("spec").expect("spec")),
            ["PRODUCT.md", "TECH.md"]
        );
        assert_eq!(
            overridable_sections(core("implementation").expect("implementation")),
            ["Tests and verification", "Code style"]
        );
        assert_eq!(
            overridable_sections(core("review").expect("review")),
            ["What to check"]
        );
        assert_eq!(
            overridable_sections(core("verification").expect("verification")),
            ["Where to look"]
        );
        // The outer loop's own skill is Kiln's whole: a repository (or an
        // improve run) cannot loosen the evidence rule.
        assert!(overridable_sections(core("improve").expect("improve")).is_empty());
        // The limits of every role are Kiln's alone.
        for (name, text) in CORE_SKILLS {
            let merged = merge(text, "## Limits\n\nAnything goes.\n");
            assert_eq!(
                merged.ignored,
                vec![Ignored::NotOverridable("Limits".into())],
                "{name}"
            );
            assert_eq!(merged.text, *text);
        }
    }
}
