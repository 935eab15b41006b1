//! A repository's skill override (`.kiln/skills/<role>.md`) merged into a
//! core skill: any override text merges without a panic, and no override
//! can change a section the core skill does not mark overridable.
#![no_main]

use kiln::skills::{core, merge, overridable_sections};
use libfuzzer_sys::fuzz_target;

const ROLES: [&str; 5] = ["triage", "spec", "implementation", "review", "verification"];

/// The core's `## ` sections (outside code fences) as (title, text).
fn sections(skill: &str) -> Vec<(&str, String)> {
    let mut out: Vec<(&str, String)> = Vec::new();
    let mut fenced = false;
    for line in skill.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        match line.strip_prefix("## ") {
            Some(title) if !fenced => out.push((title.trim(), line.to_string())),
            _ => {
                if let Some((_, text)) = out.last_mut() {
                    text.push_str(line);
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = kiln_fuzz::Input::new(data);
    let role = ROLES[usize::from(input.byte()) % ROLES.len()];
    let Some(core_text) = core(role) else {
        return;
    };
    let Ok(override_text) = std::str::from_utf8(input.rest()) else {
        return;
    };
    let merged = merge(core_text, override_text);
    let free = overridable_sections(core_text);
    for (title, text) in sections(core_text) {
        if !free.contains(&title) {
            assert!(
                merged.text.contains(&text),
                "the fixed section {title:?} changed in the merge"
            );
        }
    }
});
