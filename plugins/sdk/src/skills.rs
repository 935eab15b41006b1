//! Skill files: the Markdown that defines a role's behaviour.
pub use crate::wit::kiln::role::skills::Skill;
use crate::{RoleError, wit::kiln::role::skills as raw};

/// The merged skill text for `name` (core skill plus repository overrides).
pub fn get(name: &str) -> Result<Skill, RoleError> {
    raw::get(name)
}
