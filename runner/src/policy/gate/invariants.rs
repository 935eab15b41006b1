//! Step 2, invariants (blame: guest): rules no policy can lift, checked in
//! Rust before Cedar runs.

use super::shape::MAX_STATUS_CONTEXT_CHARS;
use super::{Effect, EffectRequest, Gate, ReviewEvent, Violation, clip};

impl Gate {
    pub(super) fn check_invariants(&self, req: &EffectRequest) -> Result<(), Violation> {
        match &req.effect {
            Effect::Merge { .. } => Err(Violation::new(
                "no-merge",
                "agents never merge; a human merges".into(),
            )),
            Effect::Review {
                event: ReviewEvent::Approve,
                ..
            } => Err(Violation::new(
                "no-approve",
                "agents never approve a pull request".into(),
            )),
            Effect::ProposePullRequest { head, draft, .. } => {
                if !draft {
                    return Err(Violation::new(
                        "draft-only",
                        "agents only open draft pull requests".into(),
                    ));
                }
                kiln_branch(head)?;
                own_branch(req, head)
            }
            Effect::UpdatePullRequest { head, .. } => {
                kiln_branch(head)?;
                // An answering run updates the pull request it answers,
                // whose head is its own branch; no policy can point it
                // at another one.
                if *head != req.run.branch {
                    return Err(Violation::new(
                        "own-pull-request-only",
                        format!(
                            "branch {:?} is not the run's own branch {:?}",
                            clip(head),
                            clip(&req.run.branch)
                        ),
                    ));
                }
                Ok(())
            }
            Effect::Push { branch, paths } => {
                kiln_branch(branch)?;
                own_branch(req, branch)?;
                for p in paths {
                    self.writable_path(p)?;
                }
                for p in paths {
                    improve_surface(req.run.role, p)?;
                }
                Ok(())
            }
            Effect::WorkspaceWrite { path, .. } => {
                kiln_branch(&req.run.branch)?;
                self.writable_path(path)?;
                improve_surface(req.run.role, path)
            }
            Effect::SetLabels { labels, .. } => {
                for label in labels {
                    if is_human_only_label(label) {
                        return Err(Violation::new(
                            "human-only-labels",
                            format!("label {label:?} is applied by humans only"),
                        ));
                    }
                    if !self.allowlist.contains(&label.trim().to_lowercase()) {
                        return Err(Violation::new(
                            "label-allowlist",
                            format!("label {label:?} is not in the repo's label allowlist"),
                        ));
                    }
                }
                Ok(())
            }
            Effect::Status { context, .. } => status_context(context),
            Effect::Review { .. }
            | Effect::WorkspaceRead { .. }
            | Effect::WorkspaceExec { .. }
            | Effect::ModelComplete { .. }
            | Effect::Comment { .. }
            | Effect::Reply { .. }
            | Effect::Report { .. } => Ok(()),
        }
    }

    fn writable_path(&self, path: &str) -> Result<(), Violation> {
        let lower = path.to_ascii_lowercase();
        if lower.split('/').any(|c| c == ".git") {
            return Err(Violation::new(
                "no-git-internals",
                format!("{path:?} is inside a .git directory"),
            ));
        }
        // Case-insensitive: a case-insensitive checkout would turn
        // `.GitHub/Workflows` into the real thing.
        if !self.allow_workflow_changes
            && (lower == ".github/workflows" || lower.starts_with(".github/workflows/"))
        {
            return Err(Violation::new(
                "no-workflow-changes",
                format!(
                    "{path:?} is a workflow file; the repo config does not grant workflow changes"
                ),
            ));
        }
        Ok(())
    }
}

/// The outer loop's write surface: an `improve` run writes, and pushes,
/// skill overrides under `.kiln/skills/` and nothing else, whatever a policy
/// permits. Checked on each written path and on the real changed paths of a
/// push, like workflow files. Exact components only: `.kiln/skills/../x`,
/// `./.kiln/skills/x` or a case variant is outside.
fn improve_surface(role: crate::config::Role, path: &str) -> Result<(), Violation> {
    if role != crate::config::Role::Improve {
        return Ok(());
    }
    let inside = path.strip_prefix(".kiln/skills/").is_some_and(|rest| {
        rest.split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
    });
    if inside {
        Ok(())
    } else {
        Err(Violation::new(
            "improve-writes-skills-only",
            format!(
                "{:?} is outside .kiln/skills/: an improve run changes skill overrides only",
                clip(path)
            ),
        ))
    }
}

/// Whether `label` is one only humans apply (`ready-*`, `plan-approved`).
pub fn is_human_only_label(label: &str) -> bool {
    let l = label.trim().to_lowercase();
    l.starts_with("ready-") || l == "plan-approved"
}

/// A run pushes and proposes from its own branch only: no repository
/// policy can point it at another run's branch (found by the gate fuzz
/// target under a permit-everything policy).
fn own_branch(req: &EffectRequest, branch: &str) -> Result<(), Violation> {
    if branch == req.run.branch {
        return Ok(());
    }
    Err(Violation::new(
        "own-branch-only",
        format!(
            "branch {:?} is not the run's own branch {:?}",
            clip(branch),
            clip(&req.run.branch)
        ),
    ))
}

fn kiln_branch(branch: &str) -> Result<(), Violation> {
    match branch.strip_prefix("kiln/") {
        Some(rest) if !rest.is_empty() => Ok(()),
        _ => Err(Violation::new(
            "kiln-branches-only",
            format!("branch {:?} is outside kiln/*", clip(branch)),
        )),
    }
}

/// A status context Kiln may set: `kiln/<name>` in lower-case letters,
/// digits, `-` and `/`. Anything else could pose as the repository's own CI
/// (`ci/build`, `continuous-integration/...`) and fake a passing check.
fn status_context(context: &str) -> Result<(), Violation> {
    let name = context.strip_prefix("kiln/").unwrap_or("");
    let ok = !name.is_empty()
        && context.len() <= MAX_STATUS_CONTEXT_CHARS
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.contains("//")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(Violation::new(
            "kiln-status-contexts-only",
            format!(
                "status context {:?} is not kiln/<name> ([a-z0-9/-], at most {MAX_STATUS_CONTEXT_CHARS} characters)",
                clip(context)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::gate::test_support::*;
    use crate::policy::gate::*;
    use std::sync::Arc;

    // The invariants hold for every role even when the repo permits everything.
    #[test]
    fn invariants_hold_against_a_permit_all_repo_policy() {
        let gate = gate_with(Some(PERMIT_ALL));
        let sanity = gate.decide(&req(Role::Review, write("src/lib.rs")));
        assert!(
            sanity.is_allow(),
            "permit-all should lift the role defaults, got: {sanity:?}"
        );
        let attempts: Vec<(&str, Effect, &str)> = vec![
            ("merge", Effect::Merge { number: 13 }, "no-merge"),
            ("approve", review(ReviewEvent::Approve, true), "no-approve"),
            ("non-draft PR", pr("kiln/12-fix-typo", false), "draft-only"),
            ("PR from main", pr("main", true), "kiln-branches-only"),
            (
                "PR from a branch named kiln",
                pr("kiln", true),
                "kiln-branches-only",
            ),
            (
                "push to main",
                Effect::Push {
                    branch: "main".into(),
                    paths: vec!["a".into()],
                },
                "kiln-branches-only",
            ),
            (
                "push to a lookalike",
                Effect::Push {
                    branch: "kilnx/evil".into(),
                    paths: vec![],
                },
                "kiln-branches-only",
            ),
            (
                "workflow write",
                write(".github/workflows/ci.yml"),
                "no-workflow-changes",
            ),
            (
                "workflow write, other case",
                write(".GitHub/Workflows/ci.yml"),
                "no-workflow-changes",
            ),
            (
                "workflow change in a push",
                Effect::Push {
                    branch: "kiln/12-fix-typo".into(),
                    paths: vec!["src/a.rs".into(), ".github/workflows/release.yml".into()],
                },
                "no-workflow-changes",
            ),
            (
                "git hook write",
                write(".git/hooks/pre-commit"),
                "no-git-internals",
            ),
            (
                "nested .git write",
                write("vendor/x/.git/config"),
                "no-git-internals",
            ),
            (
                "path escape",
                write("specs/../../etc/passwd"),
                "well-formed-request",
            ),
            ("absolute path", write("/etc/passwd"), "well-formed-request"),
            (
                "ready-to-implement label",
                labels(&["ready-to-implement"]),
                "human-only-labels",
            ),
            (
                "ready-* in another case",
                labels(&["bug", "Ready-To-Spec"]),
                "human-only-labels",
            ),
            (
                "plan-approved label",
                labels(&["plan-approved"]),
                "human-only-labels",
            ),
            (
                "label outside the allowlist",
                labels(&["wontfix"]),
                "label-allowlist",
            ),
            (
                "secret written into a file",
                Effect::WorkspaceWrite {
                    path: "src/config.rs".into(),
                    content: b"const T: &str = \"ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2\";"
                        .to_vec(),
                },
                "no-secrets-in-commits",
            ),
        ];
        for role in Role::ALL {
            for (what, effect, invariant) in &attempts {
                let d = gate.decide(&req(role, effect.clone()));
                // An improve run is refused anything outside `.kiln/skills/`
                // first (the secret check comes after the invariants).
                let outside_surface =
                    role == Role::Improve && d.reason().contains("improve-writes-skills-only");
                assert!(
                    d.is_deny() && (d.reason().contains(invariant) || outside_surface),
                    "{what} should be denied by invariant {invariant} for role {role}, got: {d:?}"
                );
                assert_eq!(
                    d.blame(),
                    Blame::Guest,
                    "{what}: an invariant breach is the guest's fault"
                );
                assert!(
                    !d.reason().contains("ghp_Z9y8"),
                    "{what}: a reason must never quote a secret, got: {d:?}"
                );
            }
        }
        let run_on_main = EffectRequest {
            run: run_with(Role::Implementation, Trust::Trusted, "main"),
            effect: write("src/lib.rs"),
        };
        let d = gate.decide(&run_on_main);
        assert!(
            d.is_deny() && d.reason().contains("kiln-branches-only"),
            "writing a workspace checked out on main should be denied, got: {d:?}"
        );
    }

    // The improve role's write surface holds against a permit-all policy
    // and the workflow grant: writes and pushes outside `.kiln/skills/` are
    // refused, with the reason; inside it they pass. Other roles are not
    // confined by it.
    #[test]
    fn an_improve_run_writes_and_pushes_skill_overrides_only() {
        let config = GateConfig {
            repo_policies: Some(PERMIT_ALL.into()),
            allow_workflow_changes: true,
            ..GateConfig::default()
        };
        let gate = Gate::new(&config).unwrap_or_else(|e| panic!("gate should build: {e}"));
        let branch = "kiln/improve-triage-2026-12-07";
        let push = |paths: &[&str]| Effect::Push {
            branch: branch.into(),
            paths: paths.iter().map(|p| (*p).to_string()).collect(),
        };
        let req = |role: Role, effect: Effect| EffectRequest {
            run: run_with(role, Trust::Trusted, branch),
            effect,
        };
        for ok in [
            write(".kiln/skills/triage.md"),
            push(&[".kiln/skills/triage.md", ".kiln/skills/review.md"]),
        ] {
            let d = gate.decide(&req(Role::Improve, ok.clone()));
            assert!(d.is_allow(), "{ok:?} is the improve surface: {d:?}");
        }
        for bad in [
            write("src/lib.rs"),
            write(".kiln/verify.toml"),
            write(".kiln/skills"),
            write(".Kiln/Skills/triage.md"),
            write(".kiln/skillsx/triage.md"),
            write(".github/workflows/ci.yml"),
            write("skills/triage/SKILL.md"),
            push(&[".kiln/skills/triage.md", "src/lib.rs"]),
        ] {
            let d = gate.decide(&req(Role::Improve, bad.clone()));
            assert!(
                d.is_deny() && d.reason().contains("improve-writes-skills-only"),
                "{bad:?} must be refused for improve, got: {d:?}"
            );
        }
        // Paths that are not normalised never get this far.
        for bad in [write(".kiln/skills/"), push(&[".kiln/skills/./triage.md"])] {
            let d = gate.decide(&req(Role::Improve, bad.clone()));
            assert!(d.is_deny(), "{bad:?} must be refused, got: {d:?}");
        }
        let d = gate.decide(&req(Role::Implementation, write("src/lib.rs")));
        assert!(d.is_allow(), "other roles are not confined: {d:?}");
    }

    #[test]
    fn workflow_changes_need_an_explicit_grant() {
        let config = GateConfig {
            repo_policies: Some(PERMIT_ALL.into()),
            allow_workflow_changes: true,
            ..GateConfig::default()
        };
        let gate = Gate::new(&config).unwrap_or_else(|e| panic!("gate should build: {e}"));
        let d = gate.decide(&req(
            Role::Implementation,
            write(".github/workflows/ci.yml"),
        ));
        assert!(
            d.is_allow(),
            "with allow_workflow_changes a workflow write should pass, got: {d:?}"
        );
    }

    // An answering run updates its own pull request: the push to its own
    // branch and the update are allowed; another kiln branch, a branch
    // outside kiln/*, or another role are refused, and an untrusted trigger
    // holds the update like a new pull request.
    #[test]
    fn a_pull_request_update_goes_only_to_the_runs_own_branch() {
        let gate = gate_with(None);
        let own = "kiln/implement-issue-4";
        let answering = run_with(Role::Implementation, Trust::Trusted, own);
        let decide = |run: &Arc<RunContext>, effect: Effect| {
            gate.decide(&EffectRequest {
                run: run.clone(),
                effect,
            })
        };
        let d = decide(&answering, update(own, Some("## Verification\n\nok")));
        assert!(
            d.is_allow()
                && d.reason()
                    .contains("default.implementation-update-pull-request"),
            "got: {d:?}"
        );
        let push = |branch: &str| Effect::Push {
            branch: branch.into(),
            paths: vec!["src/a.rs".into()],
        };
        assert!(decide(&answering, push(own)).is_allow());
        for other in ["kiln/implement-issue-5", "kiln/spec-issue-4"] {
            let d = decide(&answering, push(other));
            assert!(d.is_deny(), "push to {other} should be denied, got: {d:?}");
            let d = decide(&answering, update(other, None));
            assert!(
                d.is_deny() && d.reason().contains("own-pull-request-only"),
                "update of {other} should be denied by the invariant, got: {d:?}"
            );
        }
        // Nor can a repository policy point a push or a pull request at
        // another run's branch.
        let gate_all = gate_with(Some(PERMIT_ALL));
        for other in ["kiln/implement-issue-5", "kiln/spec-issue-4"] {
            for effect in [push(other), pr(other, true)] {
                let d = gate_all.decide(&EffectRequest {
                    run: answering.clone(),
                    effect,
                });
                assert!(
                    d.is_deny() && d.reason().contains("own-branch-only"),
                    "{other}: got {d:?}"
                );
            }
        }
        // A run whose branch is outside kiln/* (a fork's, say) gets nothing,
        // whatever a repository policy permits.
        let outside = run_with(Role::Implementation, Trust::Trusted, "feature/x");
        for effect in [update("feature/x", None), push("feature/x")] {
            let d = gate_all.decide(&EffectRequest {
                run: outside.clone(),
                effect,
            });
            assert!(
                d.is_deny() && d.reason().contains("kiln-branches-only"),
                "got: {d:?}"
            );
        }
        let d = decide(
            &run_with(Role::Spec, Trust::Trusted, own),
            update(own, None),
        );
        assert!(d.is_deny(), "spec does not answer reviews, got: {d:?}");
        let d = decide(
            &run_with(Role::Implementation, Trust::Untrusted, own),
            update(own, None),
        );
        assert!(d.is_hold(), "untrusted trigger should hold, got: {d:?}");
        let (_, admitted) = gate.admit(EffectRequest {
            run: answering.clone(),
            effect: update(own, Some("token kiln-canary-0b5e7d2a")),
        });
        let Effect::UpdatePullRequest { verification, .. } = &admitted.effect else {
            panic!("still an update");
        };
        assert!(
            !verification
                .as_deref()
                .unwrap_or("")
                .contains("kiln-canary"),
            "the section is redacted: {verification:?}"
        );
    }

    // A plugin naming its status like the repo's CI could fake a passing
    // check; no policy can allow it.
    #[test]
    fn a_status_cannot_pose_as_another_check() {
        let gate = gate_with(Some(PERMIT_ALL));
        let too_long = format!("kiln/{}", "a".repeat(MAX_STATUS_CONTEXT_CHARS));
        for context in [
            "ci/build",
            "continuous-integration/travis-ci/pr",
            "security/snyk",
            "",
            "kiln",
            "kiln/",
            "Kiln/verification",
            "KILN/verification",
            "kilnx/verification",
            " kiln/verification",
            "kiln/verification ",
            "kiln/verification\n",
            "kiln/verif\u{200b}ication",
            "kiln/Verification",
            "kiln/../ci/build",
            "kiln//ci",
            "kiln/ci/",
            "kiln/ci_build",
            too_long.as_str(),
        ] {
            for role in Role::ALL {
                let d = gate.decide(&req(role, status(context, "ok")));
                assert!(
                    d.is_deny()
                        && d.blame() == Blame::Guest
                        && d.reason().contains("kiln-status-contexts-only"),
                    "status context {context:?} should be refused by the invariant for {role}, got: {d:?}"
                );
            }
        }
        for context in ["kiln/verification", "kiln/verify/unit-2", "kiln/a"] {
            let d = gate.decide(&req(Role::Implementation, status(context, "ok")));
            assert!(d.is_allow(), "{context:?} should pass, got: {d:?}");
        }
    }
}
