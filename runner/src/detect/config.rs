//! `[detection]` in `kiln.toml`: the detection step's settings for the
//! repository. The scanners always run; only their budget is set here.
use std::time::Duration;

use serde::Deserialize;

/// `[detection]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionConfig {
    /// The step's time budget in seconds (reading the patch, scanning);
    /// past it the effects are held (failing closed).
    pub timeout_secs: u64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            timeout_secs: super::step::DEFAULT_TIMEOUT.as_secs(),
        }
    }
}

impl DetectionConfig {
    /// The run's detection settings.
    pub fn settings(&self) -> super::step::Settings {
        super::step::Settings {
            model: None,
            // Zero would hold every pull request: at least a second.
            budget: Duration::from_secs(self.timeout_secs.max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: DetectionConfig = toml::from_str("").expect("empty");
        assert_eq!(c.timeout_secs, 120);
        let c: DetectionConfig = toml::from_str("timeout_secs = 0").expect("zero");
        assert_eq!(c.settings().budget, Duration::from_secs(1));
        let e = toml::from_str::<DetectionConfig>("scanners = false").expect_err("unknown");
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
