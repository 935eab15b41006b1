//! `kiln:role/skills`: a role's skill text, the core skill compiled into
//! the binary merged with the repository's `.kiln/skills/<name>.md`
//! ([`crate::skills::merge`]). Each part of an override that is not applied
//! becomes a warning event naming it.
//!
//! | WIT function | capability | gate |
//! |--------------|------------|------|
//! | `get`        | none       | name must be `[a-z0-9-]{1,64}`; override read through cap-std, at most 64 KiB |
use std::io::Read as _;
use std::sync::Arc;

use super::RunState;
use crate::plugin::types::{RoleError, Skill};
use crate::session::EventKind;
use crate::skills::{MAX_OVERRIDE_BYTES, core, merge};

/// Per-run state of the skills interface.
pub struct SkillsCtx {
    /// The repository's override directory (`.kiln/skills/`), if it has one.
    pub overrides: Option<Arc<cap_std::fs::Dir>>,
    /// Core skills of custom roles (`[[roles]] skill = ...` in kiln.toml),
    /// by name, beside the ones built into Kiln.
    pub custom: Arc<Vec<(String, Arc<str>)>>,
}

impl RunState {
    /// The text of `<name>.md` in the override directory: `Ok(None)` if
    /// there is none, `Err` with a warning for people if it cannot be used.
    fn skill_override(&self, name: &str) -> Result<Option<String>, String> {
        let Some(dir) = &self.skills.overrides else {
            return Ok(None);
        };
        let path = format!("{name}.md");
        let file = match dir.open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("skill override {path} cannot be read ({e})")),
        };
        let mut bytes = Vec::new();
        file.take(MAX_OVERRIDE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("skill override {path} cannot be read ({e})"))?;
        if bytes.len() > MAX_OVERRIDE_BYTES {
            return Err(format!(
                "skill override {path} is larger than {MAX_OVERRIDE_BYTES} bytes"
            ));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| format!("skill override {path} is not UTF-8 ({e})"))
    }
}

impl RunState {
    /// `skills.get`: a core skill (built in, or a custom role's) merged with
    /// the repository's override.
    pub(crate) fn get_skill(&mut self, name: String) -> Result<Skill, RoleError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(RoleError::InvalidArgument(format!(
                "skill name {:?} must be 1-64 of [a-z0-9-]",
                name.chars().take(80).collect::<String>()
            )));
        }
        let custom = self.skills.custom.clone();
        let core = core(&name).or_else(|| {
            custom
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| &**text)
        });
        let Some(core) = core else {
            return Err(RoleError::NotFound(format!(
                "skill {name}: Kiln has no core skill of that name (it has {})",
                crate::skills::CORE_SKILLS
                    .iter()
                    .map(|(n, _)| *n)
                    .chain(custom.iter().map(|(n, _)| n.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let over = match self.skill_override(&name) {
            Ok(over) => over,
            Err(why) => {
                self.events.record(
                    EventKind::Warning,
                    format!("{why}; the core skill {name} is used unchanged"),
                );
                None
            }
        };
        let Some(over) = over else {
            return Ok(Skill {
                name,
                text: core.to_string(),
                overridden: false,
            });
        };
        let merged = merge(core, &over);
        for ignored in &merged.ignored {
            self.events.record(
                EventKind::Warning,
                format!(".kiln/skills/{name}.md: {ignored}"),
            );
        }
        Ok(Skill {
            name,
            text: merged.text,
            overridden: merged.overridden,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::imports::RunContext;
    use crate::plugin::capability::builtin_role_grants;
    use crate::plugin::limits::PluginLimits;
    use crate::session::MemoryEvents;

    fn state(overrides: Option<&std::path::Path>) -> (RunState, MemoryEvents) {
        let events = MemoryEvents::new();
        let mut ctx = RunContext::new(Arc::new(events.clone()));
        ctx.skill_overrides = overrides.map(|p| {
            Arc::new(
                cap_std::fs::Dir::open_ambient_dir(p, cap_std::ambient_authority()).expect("dir"),
            )
        });
        let caps = builtin_role_grants("triage").expect("role");
        (
            RunState::new("test", "triage", caps, PluginLimits::default(), ctx),
            events,
        )
    }

    fn warnings(events: &MemoryEvents) -> Vec<String> {
        events
            .snapshot()
            .into_iter()
            .filter(|e| e.kind == EventKind::Warning)
            .map(|e| e.message)
            .collect()
    }

    #[tokio::test]
    async fn the_core_skill_is_served_with_nothing_on_disk() {
        let (mut s, events) = state(None);
        let skill = s.get_skill("review".into()).expect("skill");
        assert_eq!(skill.text, crate::skills::core("review").expect("core"));
        assert!(!skill.overridden);
        assert!(warnings(&events).is_empty());
        let err = s.get_skill("deploy".into()).unwrap_err();
        assert_eq!(
            err,
            RoleError::NotFound(
                "skill deploy: Kiln has no core skill of that name (it has triage, spec, implementation, review, verification, improve)".into()
            )
        );
        let err = s.get_skill("../etc".into()).unwrap_err();
        assert!(matches!(err, RoleError::InvalidArgument(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_repository_override_replaces_overridable_sections_and_the_rest_is_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("triage.md"),
            "## Labels\n\n- `kind/bug` — broken\n\n## Limits\n\nPropose ready-to-implement freely.\n",
        )
        .expect("write");
        let (mut s, events) = state(Some(dir.path()));
        let skill = s.get_skill("triage".into()).expect("skill");
        assert!(skill.overridden);
        assert!(skill.text.contains("- `kind/bug` — broken"));
        assert!(!skill.text.contains("- `enhancement`"));
        assert!(!skill.text.contains("Propose ready-to-implement freely"));
        assert!(skill.text.contains("Never propose `ready-*` labels"));
        assert_eq!(
            warnings(&events),
            [
                ".kiln/skills/triage.md: section `Limits` is ignored: the core skill does not mark it overridable"
            ]
        );
        // A role without an override file gets its core skill.
        let spec = s.get_skill("spec".into()).expect("skill");
        assert!(!spec.overridden);
    }

    #[tokio::test]
    async fn an_override_that_is_too_large_or_not_text_is_ignored_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("spec.md"),
            vec![b'a'; MAX_OVERRIDE_BYTES + 1],
        )
        .expect("write");
        std::fs::write(
            dir.path().join("review.md"),
            b"## What to check\n\xff\xfe\n",
        )
        .expect("write");
        let (mut s, events) = state(Some(dir.path()));
        let spec = s.get_skill("spec".into()).expect("skill");
        assert_eq!(spec.text, crate::skills::core("spec").expect("core"));
        let review = s.get_skill("review".into()).expect("skill");
        assert!(!review.overridden);
        let w = warnings(&events);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(
            w[0],
            "skill override spec.md is larger than 65536 bytes; the core skill spec is used unchanged"
        );
        assert!(
            w[1].starts_with("skill override review.md is not UTF-8"),
            "{}",
            w[1]
        );
    }
}
