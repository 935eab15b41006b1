//! `[policy]` in `kiln.toml`: the repository's additions to Kiln's default
//! policies — extra Cedar rules, the labels agents may apply, the explicit
//! grant for workflow changes, and paths added to the protected list.
use std::path::PathBuf;

use serde::Deserialize;

use super::{GateConfig, ProtectedPattern, SecretValue};

/// Labels agents may apply when `[policy] labels` is not set: the usual
/// type labels plus the two triage outcomes. Never `ready-*` or
/// `plan-approved` (the gate refuses those whatever the list says).
pub const DEFAULT_LABELS: &[&str] = &[
    "bug",
    "enhancement",
    "documentation",
    "question",
    "needs-info",
    "duplicate",
];

/// Hosts outbound links and images may point at when `[policy] link_hosts`
/// is not set: the forge's own (GitHub and the hosts it serves uploads from).
pub const DEFAULT_LINK_HOSTS: &[&str] = &["github.com", "*.github.com", "*.githubusercontent.com"];

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Labels agents may apply (case-insensitive).
    pub labels: Vec<String>,
    /// Whether agents may change `.github/workflows/**`.
    pub allow_workflow_changes: bool,
    /// Extra Cedar policies, inline.
    pub policies: Option<String>,
    /// Extra Cedar policies, from a file (relative to the working directory).
    pub policies_file: Option<PathBuf>,
    /// Paths added to the built-in protected list, each held (default) or
    /// denied; the built-in list itself cannot be narrowed.
    pub protected: Vec<ProtectedPattern>,
    /// Hosts outbound links and images may point at (`*.domain` for its
    /// subdomains); replaces [`DEFAULT_LINK_HOSTS`].
    pub link_hosts: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            labels: DEFAULT_LABELS.iter().map(|s| s.to_string()).collect(),
            allow_workflow_changes: false,
            policies: None,
            policies_file: None,
            protected: Vec::new(),
            link_hosts: DEFAULT_LINK_HOSTS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl PolicyConfig {
    /// The gate's configuration, with the values of every configured secret
    /// (to be redacted). Reading `policies_file` can fail.
    pub fn gate_config(&self, secrets: Vec<SecretValue>) -> Result<GateConfig, String> {
        let mut policies = self.policies.clone().unwrap_or_default();
        if let Some(f) = &self.policies_file {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("[policy] policies_file {}: {e}", f.display()))?;
            policies.push('\n');
            policies.push_str(&text);
        }
        Ok(GateConfig {
            repo_policies: (!policies.trim().is_empty()).then_some(policies),
            label_allowlist: self.labels.clone(),
            allow_workflow_changes: self.allow_workflow_changes,
            secrets,
            protected: self.protected.clone(),
            link_hosts: self.link_hosts.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Gate;

    #[test]
    fn the_default_policy_section_builds_a_gate_and_a_bad_policy_names_its_line() {
        let ok = PolicyConfig::default().gate_config(vec![]).expect("config");
        Gate::new(&ok).expect("the defaults build a gate");
        let bad = PolicyConfig {
            policies: Some("permit (principal, action, resource)\nwhen { nonsense".into()),
            ..PolicyConfig::default()
        }
        .gate_config(vec![])
        .expect("config");
        let err = Gate::new(&bad).expect_err("a broken policy stops start-up");
        assert!(err.to_string().contains("line"), "{err}");
    }
}
