//! `kiln:role/skills`: the role's skill text from `skills/<name>/SKILL.md`.
//!
//! | WIT function | capability | gate |
//! |--------------|------------|------|
//! | `get`        | none       | name must be `[a-z0-9-]{1,64}`; read through cap-std |
use std::sync::Arc;

use wasmtime::component::HasSelf;

use super::RunState;
use crate::plugin::wit::latest::kiln::role::skills::{self, Skill};
use crate::plugin::wit::latest::kiln::role::types::RoleError;

/// Per-run state of the skills interface.
pub struct SkillsCtx {
    /// The skills directory, if the run has one.
    pub dir: Option<Arc<cap_std::fs::Dir>>,
}

impl skills::Host for RunState {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<Skill, RoleError>> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Ok(Err(RoleError::InvalidArgument(format!(
                "skill name {:?} must be 1-64 of [a-z0-9-]",
                name.chars().take(80).collect::<String>()
            ))));
        }
        let Some(dir) = &self.skills.dir else {
            return Ok(Err(RoleError::NotFound(format!(
                "skill {name}: this run has no skills directory"
            ))));
        };
        let path = format!("{name}/SKILL.md");
        match dir.read_to_string(&path) {
            Ok(text) => Ok(Ok(Skill {
                name,
                text,
                overridden: false,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Err(RoleError::NotFound(
                format!("skill {name}: no {path} in the skills directory"),
            ))),
            Err(e) => Ok(Err(RoleError::Internal(format!(
                "skill {name}: reading {path}: {e}"
            )))),
        }
    }
}

/// Link the `skills` interface.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<RunState>) -> wasmtime::Result<()> {
    skills::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)
}
