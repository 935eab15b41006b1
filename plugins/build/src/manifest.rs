//! The plugin manifest (`kiln-plugin.toml`): what a plugin is and what it
//! asks for. The host compares the asks with what the plugin's component
//! really imports and with what its role grants.
use serde::{Deserialize, Serialize};

/// The manifest's file name, beside the plugin crate's `Cargo.toml`.
pub const MANIFEST_FILE: &str = "kiln-plugin.toml";

/// The name of the custom section that carries the manifest in a component.
pub const MANIFEST_SECTION: &str = "kiln:manifest";

/// A plugin's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: lowercase letters, digits and `-`.
    pub name: String,
    /// The plugin's own version (semver).
    pub version: String,
    /// The `kiln:role` WIT version the plugin is built against, e.g. `0.1.0`.
    pub wit: String,
    /// The role the plugin plays (`triage`, `spec`, `implementation`,
    /// `review`, or a custom role configured in `kiln.toml`).
    pub role: String,
    /// What the plugin does, in one line.
    #[serde(default)]
    pub description: String,
    /// Capabilities asked for, e.g. `model.complete`, `forge.comment`.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// Why a manifest was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not valid TOML, or fields missing or unknown.
    #[error("invalid {MANIFEST_FILE}: {0}")]
    Toml(String),
    /// A field has a value the host cannot accept.
    #[error("invalid {MANIFEST_FILE}: field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// Parse and check a manifest's text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Toml(e.message().to_string()))?;
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !name_ok(&m.name) {
            return Err(ManifestError::Field {
                field: "name",
                reason: format!("{:?} must be 1-64 of [a-z0-9-]", m.name),
            });
        }
        if !name_ok(&m.role) {
            return Err(ManifestError::Field {
                field: "role",
                reason: format!("{:?} must be 1-64 of [a-z0-9-]", m.role),
            });
        }
        if !is_semver(&m.version) {
            return Err(ManifestError::Field {
                field: "version",
                reason: format!("{:?} is not MAJOR.MINOR.PATCH", m.version),
            });
        }
        if !is_semver(&m.wit) {
            return Err(ManifestError::Field {
                field: "wit",
                reason: format!("{:?} is not MAJOR.MINOR.PATCH", m.wit),
            });
        }
        Ok(m)
    }
}

fn is_semver(s: &str) -> bool {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<_> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "triage"
version = "0.1.0"
wit = "0.1.0"
role = "triage"
capabilities = ["model.complete", "forge.comment"]
"#;

    #[test]
    fn a_complete_manifest_parses() {
        let m = Manifest::parse(GOOD).expect("a complete manifest should parse");
        assert_eq!(m.capabilities, vec!["model.complete", "forge.comment"]);
    }

    #[test]
    fn bad_manifests_are_rejected_with_the_field_named() {
        let cases = [
            (
                GOOD.replace("name = \"triage\"", "name = \"Tri Age\""),
                "field `name`",
            ),
            (
                GOOD.replace("wit = \"0.1.0\"", "wit = \"latest\""),
                "field `wit`",
            ),
            (
                GOOD.replace("version = \"0.1.0\"", ""),
                "missing field `version`",
            ),
            (
                format!("{GOOD}\nnetwork = true\n"),
                "unknown field `network`",
            ),
            ("not toml at all [".to_string(), "invalid kiln-plugin.toml"),
        ];
        for (text, expected) in cases {
            let err = Manifest::parse(&text)
                .expect_err("manifest should be rejected")
                .to_string();
            assert!(
                err.contains(expected),
                "expected error mentioning {expected:?}, got: {err}"
            );
        }
    }
}
