//! Secret values resolved for one sandbox: which `kiln.toml` secrets a role
//! gets in each phase, read from their sources on the host.
//!
//! Values only ever reach a container as the environment of a single
//! `docker exec` in their phase, never in the container's configuration, a
//! file or a label, so nothing outlives the phase that needed them. The
//! [`SecretValue`] `Debug` output hides the value so a stray `{:?}` in a log
//! cannot leak it.

use std::fmt;

use crate::config::{KilnConfig, Phase, Role, SecretReadError};

/// A secret's in-sandbox variable name and value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue {
    /// The secret's name in `kiln.toml` (for logs and errors).
    pub name: String,
    /// The environment variable name inside the sandbox.
    pub var: String,
    value: String,
}

impl SecretValue {
    /// A secret value; `var` is the variable the sandbox sees.
    pub fn new(name: impl Into<String>, var: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            var: var.into(),
            value: value.into(),
        }
    }

    /// The value itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("var", &self.var)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Reads the values of every secret scoped to `role` in `phase`. Host-only
/// secrets are never returned, whatever their scope says (validation
/// already refuses such a config; this is the second lock).
pub fn resolve(
    config: &KilnConfig,
    role: Role,
    phase: Phase,
) -> Result<Vec<SecretValue>, SecretReadError> {
    config
        .secrets
        .iter()
        .filter(|s| s.is_scoped_to(role, phase))
        .map(|s| {
            Ok(SecretValue::new(
                &s.name,
                s.container_var(),
                s.read_value()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = SecretValue::new("tok", "TOK", "hunter2");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2"),
            "Debug should not print the value, got: {shown}"
        );
    }

    #[test]
    fn only_scoped_secrets_are_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s");
        std::fs::write(&file, "from-file\n").expect("write");
        let text = format!(
            "[[secrets]]\nname = \"setup-tok\"\nsource = {{ file = \"{}\" }}\n\
             scope = {{ roles = [\"implementation\"], phase = \"setup\" }}\n\
             [[secrets]]\nname = \"review-tok\"\nsource = {{ file = \"{}\" }}\n\
             scope = {{ roles = [\"review\"], phase = \"agent\" }}\n",
            file.display(),
            file.display()
        );
        let config = KilnConfig::from_toml(&text).expect("valid config");
        let setup = resolve(&config, Role::Implementation, Phase::Setup).expect("readable");
        assert_eq!(setup.len(), 1);
        assert_eq!(setup[0].var, "SETUP_TOK");
        assert_eq!(
            setup[0].expose(),
            "from-file",
            "trailing newline should be trimmed"
        );
        let agent = resolve(&config, Role::Implementation, Phase::Agent).expect("readable");
        assert!(
            agent.is_empty(),
            "review's secret should not reach implementation, got {agent:?}"
        );
    }
}
