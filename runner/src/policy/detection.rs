//! What the detection step (see [`crate::detect`]) tells the policies: its
//! verdict as Cedar context for the effects it covers, the ones that carry
//! a run's work off the host (the push and the pull request).
use cedar_policy::RestrictedExpression;

/// The actions whose context carries the detection verdict.
pub const COVERED_ACTIONS: &[&str] = &[
    "forge.push",
    "forge.propose-pull-request",
    "forge.update-pull-request",
];

/// The detection verdict as policies see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectionContext {
    /// How many findings (`context.detection_findings`).
    pub findings: u64,
    /// Their categories, each once: `prompt_injection`, `secret_leak`,
    /// `malicious_patch` (`context.detection_categories`).
    pub categories: Vec<String>,
    /// A detector failed or timed out (`context.detection_failed`).
    pub failed: bool,
}

/// The context pairs for `action`: the three detection attributes for a
/// covered action (zero, empty and false when no detection ran), none
/// otherwise (the schema declares them only there).
pub(crate) fn cedar_pairs(
    detection: Option<&DetectionContext>,
    action: &str,
) -> Vec<(String, RestrictedExpression)> {
    if !COVERED_ACTIONS.contains(&action) {
        return Vec::new();
    }
    let d = detection.cloned().unwrap_or_default();
    vec![
        (
            "detection_findings".to_owned(),
            RestrictedExpression::new_long(i64::try_from(d.findings).unwrap_or(i64::MAX)),
        ),
        (
            "detection_categories".to_owned(),
            RestrictedExpression::new_set(
                d.categories
                    .into_iter()
                    .map(RestrictedExpression::new_string),
            ),
        ),
        (
            "detection_failed".to_owned(),
            RestrictedExpression::new_bool(d.failed),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::policy::{Effect, EffectRequest, Gate, GateConfig, Role, RunContext, Trust};

    /// Decides `effect` for `base` with `detection` in its context.
    fn decide(
        gate: &Gate,
        base: &RunContext,
        detection: DetectionContext,
        effect: Effect,
    ) -> crate::policy::Decision {
        gate.decide(&EffectRequest {
            run: Arc::new(base.with_detection(detection)),
            effect,
        })
    }

    fn pr() -> Effect {
        Effect::ProposePullRequest {
            head: "kiln/7-x".into(),
            base: "main".into(),
            title: "t".into(),
            body: "b".into(),
            draft: true,
        }
    }

    fn push() -> Effect {
        Effect::Push {
            branch: "kiln/7-x".into(),
            paths: vec!["src/a.rs".into()],
        }
    }

    #[test]
    fn findings_or_a_failed_detector_hold_the_push_and_the_pull_request() {
        let gate = Gate::new(&GateConfig::default()).expect("gate");
        let base = RunContext::new(
            "r1",
            Role::Implementation,
            "o/r",
            Trust::Trusted,
            "kiln/7-x",
        );
        for effect in [pr(), push()] {
            let clean = decide(&gate, &base, DetectionContext::default(), effect.clone());
            assert!(clean.is_allow(), "{clean:?}");
            let flagged = DetectionContext {
                findings: 2,
                categories: vec!["malicious_patch".into()],
                failed: false,
            };
            let d = decide(&gate, &base, flagged, effect.clone());
            assert!(
                d.is_hold() && d.reason().contains("default.hold-detection-findings"),
                "{d:?}"
            );
            let failed = DetectionContext {
                failed: true,
                ..DetectionContext::default()
            };
            assert!(decide(&gate, &base, failed, effect).is_hold());
        }
    }

    #[test]
    fn a_repository_policy_can_deny_on_a_category_but_not_lift_the_hold() {
        let gate = Gate::new(&GateConfig {
            repo_policies: Some(
                r#"@id("no-leaks")
forbid (principal, action, resource)
when { context has detection_categories && context.detection_categories.contains("secret_leak") };
@id("permit-all")
permit (principal, action, resource);"#
                    .into(),
            ),
            ..GateConfig::default()
        })
        .expect("gate");
        let base = RunContext::new(
            "r1",
            Role::Implementation,
            "o/r",
            Trust::Trusted,
            "kiln/7-x",
        );
        let leak = DetectionContext {
            findings: 1,
            categories: vec!["secret_leak".into()],
            failed: false,
        };
        let d = decide(&gate, &base, leak, pr());
        assert!(d.is_deny() && d.reason().contains("repo.no-leaks"), "{d:?}");
        let hook = DetectionContext {
            findings: 1,
            categories: vec!["malicious_patch".into()],
            failed: false,
        };
        assert!(decide(&gate, &base, hook, pr()).is_hold());
    }

    #[test]
    fn only_covered_actions_carry_the_context() {
        assert!(cedar_pairs(None, "forge.comment").is_empty());
        assert_eq!(cedar_pairs(None, "forge.push").len(), 3);
    }
}
