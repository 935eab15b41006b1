//! Step 3, Cedar (blame: policy): the embedded default policies plus the
//! repo's own, validated against the schema; nothing is allowed unless a
//! policy permits it, `forbid` wins over `permit`, and a matching `@hold`
//! policy holds what the others allow.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, Context, Decision as CedarDecision, Effect as CedarEffect, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};
use miette::Diagnostic;

use super::{Blame, Decision, Effect, EffectRequest, Gate, GateConfig, GateError, describe};

/// The Cedar schema every policy is validated against.
pub const SCHEMA: &str = include_str!("../schema.cedarschema");

/// The default policy set embedded in Kiln.
pub const DEFAULT_POLICIES: &str = include_str!("../default.cedar");

/// One problem in a policy text, with its place in that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    /// Id of the policy it concerns, once parsed.
    pub policy: Option<String>,
    /// 1-based line and column in the policy text, when Cedar gives one.
    pub position: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.position {
            write!(f, "line {line}, column {column}: ")?;
        }
        if let Some(policy) = &self.policy {
            write!(f, "policy {policy}: ")?;
        }
        f.write_str(&self.message)
    }
}

const ACTIONS: [&str; 14] = [
    "workspace.read",
    "workspace.write",
    "workspace.exec",
    "model.complete",
    "forge.comment",
    "forge.set-labels",
    "forge.propose-pull-request",
    "forge.update-pull-request",
    "forge.review",
    "forge.reply",
    "forge.status",
    "forge.report",
    "forge.merge",
    "forge.push",
];

/// Parses and validates the default and repo policies and splits them by
/// action (see [`ActionPolicies`]).
pub(super) fn load(
    config: &GateConfig,
) -> Result<
    (
        Schema,
        &'static Types,
        HashMap<&'static str, ActionPolicies>,
    ),
    GateError,
> {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(SCHEMA).map_err(|e| GateError::Schema(e.to_string()))?;
    let validator = Validator::new(schema.clone());
    let defaults = load_policies(DEFAULT_POLICIES, "default", &validator)
        .map_err(|(_, d)| GateError::DefaultPolicies(d))?;
    let repo = match &config.repo_policies {
        Some(src) => load_policies(src, "repo", &validator).map_err(|(syntax, d)| {
            if syntax {
                GateError::RepoPolicySyntax(d)
            } else {
                GateError::RepoPolicyInvalid(d)
            }
        })?,
        None => PolicySet::new(),
    };
    let types = types().map_err(GateError::Schema)?;
    let mut actions: HashMap<&'static str, ActionPolicies> = ACTIONS
        .iter()
        .map(|&a| {
            let uid = uid(&types.action, a);
            (
                a,
                ActionPolicies {
                    uid: Some(uid),
                    ..ActionPolicies::default()
                },
            )
        })
        .collect();
    let mut seen = HashSet::new();
    for p in defaults.policies().chain(repo.policies()) {
        if !seen.insert(p.id().clone()) {
            return Err(GateError::DuplicateId(p.id().to_string()));
        }
        let scope = p.action_constraint();
        for slot in actions.values_mut() {
            let applies = match (&scope, &slot.uid) {
                (ActionConstraint::Any, _) | (_, None) => true,
                (ActionConstraint::Eq(a), Some(uid)) => a == uid,
                // The schema has no action groups, so `in` lists actions.
                (ActionConstraint::In(list), Some(uid)) => list.contains(uid),
            };
            if !applies {
                continue;
            }
            let target = if p.annotation("hold").is_some() {
                &mut slot.holds
            } else {
                &mut slot.grants
            };
            target
                .add(p.clone())
                .map_err(|_| GateError::DuplicateId(p.id().to_string()))?;
        }
    }
    Ok((schema, types, actions))
}

fn position(src: &str, offset: usize) -> (usize, usize) {
    let before = src
        .as_bytes()
        .get(..offset.min(src.len()))
        .unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(before.get(line_start..).unwrap_or_default())
        .chars()
        .count()
        + 1;
    (line, column)
}

fn diagnostic(src: &str, policy: Option<String>, err: &dyn Diagnostic) -> PolicyDiagnostic {
    let position = err
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| position(src, label.offset()));
    let mut message = err.to_string();
    if let Some(help) = err.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    PolicyDiagnostic {
        policy,
        position,
        message,
    }
}

/// Parses, renames (`<prefix>.<@id or cedar id>`) and validates a policy text.
fn load_policies(
    src: &str,
    prefix: &str,
    validator: &Validator,
) -> Result<PolicySet, (bool, Vec<PolicyDiagnostic>)> {
    let parsed = PolicySet::from_str(src).map_err(|errs| {
        (
            true,
            errs.iter()
                .map(|e| diagnostic(src, None, e))
                .collect::<Vec<_>>(),
        )
    })?;
    let mut diags = Vec::new();
    if parsed.num_of_templates() > 0 {
        diags.push(PolicyDiagnostic {
            policy: None,
            position: None,
            message: "policy templates (?principal, ?resource) are not supported".into(),
        });
    }
    let mut set = PolicySet::new();
    let mut policies: Vec<&Policy> = parsed.policies().collect();
    policies.sort_by_key(|p| p.id().to_string());
    for p in policies {
        let name = p
            .annotation("id")
            .map_or_else(|| p.id().to_string(), str::to_owned);
        let id = format!("{prefix}.{name}");
        if p.effect() == CedarEffect::Forbid && p.annotation("hold").is_some() {
            diags.push(PolicyDiagnostic {
                policy: Some(id.clone()),
                position: None,
                message: "@hold is only allowed on permit policies (a forbid always denies)".into(),
            });
        }
        if set.add(p.new_id(PolicyId::new(&id))).is_err() {
            diags.push(PolicyDiagnostic {
                policy: Some(id),
                position: None,
                message: "this policy id is defined twice; give each policy a distinct @id".into(),
            });
        }
    }
    let result = validator.validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        diags.push(diagnostic(src, Some(e.policy_id().to_string()), e));
    }
    if diags.is_empty() {
        Ok(set)
    } else {
        Err((false, diags))
    }
}

fn type_name(name: &str) -> Result<EntityTypeName, String> {
    EntityTypeName::from_str(name).map_err(|e| format!("{name}: {e}"))
}

pub(super) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

static TYPES: LazyLock<Result<Types, String>> = LazyLock::new(|| {
    Ok(Types {
        action: type_name("Kiln::Action")?,
        run: type_name("Kiln::Run")?,
        repo: type_name("Kiln::Repo")?,
        path: type_name("Kiln::Path")?,
        branch: type_name("Kiln::Branch")?,
        label: type_name("Kiln::Label")?,
        issue: type_name("Kiln::Issue")?,
    })
});

pub(super) fn types() -> Result<&'static Types, String> {
    TYPES.as_ref().map_err(Clone::clone)
}

pub(super) struct Types {
    pub(super) action: EntityTypeName,
    pub(super) run: EntityTypeName,
    pub(super) repo: EntityTypeName,
    pub(super) path: EntityTypeName,
    pub(super) branch: EntityTypeName,
    pub(super) label: EntityTypeName,
    pub(super) issue: EntityTypeName,
}

/// The policies that can apply to one action, split at start-up: Cedar
/// evaluates every policy of a set, so a decision only pays for the policies
/// whose action scope matches.
#[derive(Default)]
pub(super) struct ActionPolicies {
    pub(super) uid: Option<EntityUid>,
    pub(super) grants: PolicySet,
    pub(super) holds: PolicySet,
}

impl Gate {
    /// Builds the Cedar queries for one request (one per label for
    /// set-labels) and combines their outcomes.
    pub(super) fn cedar(&self, req: &EffectRequest) -> Result<Decision, String> {
        let run = &req.run;
        let cached = run.cedar.as_ref().map_err(Clone::clone)?;
        let repo_uid = &cached.repo;
        let policies = self
            .actions
            .get(req.effect.action())
            .ok_or_else(|| format!("no Cedar action for {}", req.effect.action()))?;
        let action = policies
            .uid
            .clone()
            .ok_or_else(|| format!("no Cedar action for {}", req.effect.action()))?;

        let queries = self.resources(req)?;
        let mut allowed_by: Vec<String> = Vec::new();
        let mut held: Vec<String> = Vec::new();
        for (resource, mut context) in queries {
            let (resource_uid, entities) = match resource {
                Some(r) => (r.uid.clone(), run.entities_with(cached, r)?),
                None => (repo_uid.clone(), cached.base.clone()),
            };
            // Every action sees it: a policy may hold anything a run does
            // after reading a stranger's words, not only its pull request.
            context.push((
                "read_untrusted".to_owned(),
                RestrictedExpression::new_bool(run.read_untrusted),
            ));
            context.extend(crate::policy::detection::cedar_pairs(
                run.detection.as_ref(),
                req.effect.action(),
            ));
            let context = Context::from_pairs(context).map_err(|e| e.to_string())?;
            // Checking each request against the schema costs more than the
            // decision itself; the tests check every request shape the host
            // builds instead.
            #[cfg(test)]
            let schema = Some(&self.schema);
            #[cfg(not(test))]
            let schema = None;
            let request = Request::new(
                cached.principal.clone(),
                action.clone(),
                resource_uid,
                context,
                schema,
            )
            .map_err(|e| e.to_string())?;
            let response = self
                .authorizer
                .is_authorized(&request, &policies.grants, &entities);
            let errors: Vec<String> = response
                .diagnostics()
                .errors()
                .map(ToString::to_string)
                .collect();
            let ids: Vec<String> = response
                .diagnostics()
                .reason()
                .map(ToString::to_string)
                .collect();
            if !errors.is_empty() {
                return Ok(Decision::Deny {
                    reason: format!(
                        "{}: denied, a policy failed to evaluate (failing closed): {}",
                        describe(req),
                        errors.join("; ")
                    ),
                    blame: Blame::Policy,
                });
            }
            if response.decision() == CedarDecision::Deny {
                let reason = if ids.is_empty() {
                    format!(
                        "{}: denied, no policy permits {} for role {}",
                        describe(req),
                        req.effect.action(),
                        run.role
                    )
                } else {
                    format!("{}: denied by {}", describe(req), ids.join(", "))
                };
                return Ok(Decision::Deny {
                    reason,
                    blame: Blame::Policy,
                });
            }
            for id in ids {
                if !allowed_by.contains(&id) {
                    allowed_by.push(id);
                }
            }
            if policies.holds.is_empty() {
                continue;
            }
            let hold = self
                .authorizer
                .is_authorized(&request, &policies.holds, &entities);
            for e in hold.diagnostics().errors() {
                // A hold policy that cannot be evaluated holds: failing closed.
                held.push(format!("a hold policy failed to evaluate: {e}"));
            }
            if hold.decision() == CedarDecision::Allow {
                for id in hold.diagnostics().reason() {
                    let why = policies.holds.annotation(id, "hold").unwrap_or_default();
                    let why = if why.is_empty() {
                        "held for approval"
                    } else {
                        why
                    };
                    let entry = format!("{id} ({why})");
                    if !held.contains(&entry) {
                        held.push(entry);
                    }
                }
            }
        }
        if held.is_empty() {
            Ok(Decision::Allow {
                reason: format!("{}: allowed by {}", describe(req), allowed_by.join(", ")),
            })
        } else {
            Ok(Decision::Hold {
                reason: format!(
                    "{}: held for human approval by {}",
                    describe(req),
                    held.join(", ")
                ),
            })
        }
    }

    /// The resource entity (None: the repo itself) and context of each query.
    fn resources(&self, req: &EffectRequest) -> Result<Vec<Query>, String> {
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let entity =
            |ty: &EntityTypeName, id: &str, attrs: Vec<(&'static str, RestrictedExpression)>| {
                Resource {
                    uid: uid(ty, id),
                    cacheable: true,
                    attrs,
                }
            };
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let issue = |n: u64| entity(&self.types.issue, &n.to_string(), vec![("number", long(n))]);
        let branch = |name: &str| {
            entity(
                &self.types.branch,
                name,
                vec![
                    ("name", s(name)),
                    (
                        "kiln",
                        RestrictedExpression::new_bool(name.starts_with("kiln/")),
                    ),
                ],
            )
        };
        let run = &req.run;
        let one = |resource, context: Vec<(&str, RestrictedExpression)>| {
            Ok(vec![(
                resource,
                context
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
            )])
        };
        match &req.effect {
            Effect::WorkspaceRead { path } => one(
                Some(entity(&self.types.path, path, vec![("path", s(path))])),
                vec![("branch", s(&run.branch))],
            ),
            Effect::WorkspaceWrite { path, content } => one(
                Some(entity(&self.types.path, path, vec![("path", s(path))])),
                vec![
                    ("branch", s(&run.branch)),
                    ("size", long(content.len() as u64)),
                ],
            ),
            Effect::WorkspaceExec { argv } => one(
                None,
                vec![
                    ("program", s(argv.first().map_or("", String::as_str))),
                    (
                        "args",
                        RestrictedExpression::new_set(argv.iter().skip(1).map(|a| s(a))),
                    ),
                    ("command_line", s(&argv.join(" "))),
                ],
            ),
            Effect::ModelComplete { model } => one(None, vec![("model", s(model))]),
            Effect::Comment { number, body } => one(
                Some(issue(*number)),
                vec![("length", long(body.chars().count() as u64))],
            ),
            Effect::SetLabels { labels, .. } => {
                let all = || RestrictedExpression::new_set(labels.iter().map(|l| s(l)));
                labels
                    .iter()
                    .map(|label| {
                        let allowlisted = self.allowlist.contains(&label.trim().to_lowercase());
                        // `allowlisted` comes from this gate's config, not
                        // the id: never cached in the run.
                        let resource = Resource {
                            cacheable: false,
                            ..entity(
                                &self.types.label,
                                label,
                                vec![
                                    ("name", s(label)),
                                    ("allowlisted", RestrictedExpression::new_bool(allowlisted)),
                                ],
                            )
                        };
                        Ok((Some(resource), vec![("labels".to_owned(), all())]))
                    })
                    .collect()
            }
            Effect::ProposePullRequest {
                head, base, draft, ..
            } => one(
                Some(branch(head)),
                vec![
                    ("base", s(base)),
                    ("draft", RestrictedExpression::new_bool(*draft)),
                    (
                        "own_branch",
                        RestrictedExpression::new_bool(*head == run.branch),
                    ),
                ],
            ),
            Effect::UpdatePullRequest {
                number,
                head,
                verification,
            } => one(
                Some(branch(head)),
                vec![
                    ("number", long(*number)),
                    (
                        "own_branch",
                        RestrictedExpression::new_bool(*head == run.branch),
                    ),
                    (
                        "edits_body",
                        RestrictedExpression::new_bool(verification.is_some()),
                    ),
                    (
                        "length",
                        long(verification.as_deref().map_or(0, |v| v.chars().count()) as u64),
                    ),
                ],
            ),
            Effect::Review {
                number,
                event,
                comments,
                ..
            } => one(
                Some(issue(*number)),
                vec![
                    ("event", s(event.as_str())),
                    ("line_comments", long(comments.len() as u64)),
                    (
                        "all_lines_in_diff",
                        RestrictedExpression::new_bool(comments.iter().all(|c| c.in_diff)),
                    ),
                ],
            ),
            Effect::Reply {
                number,
                comment_id,
                body,
            } => one(
                Some(issue(*number)),
                vec![
                    ("comment_id", long(*comment_id)),
                    ("length", long(body.chars().count() as u64)),
                ],
            ),
            Effect::Status {
                number,
                context,
                state,
                description,
            } => one(
                Some(issue(*number)),
                vec![
                    ("status_context", s(context)),
                    ("state", s(state.as_str())),
                    ("length", long(description.chars().count() as u64)),
                ],
            ),
            Effect::Report { number, body } => one(
                Some(issue(*number)),
                vec![("length", long(body.chars().count() as u64))],
            ),
            Effect::Merge { number } => one(Some(issue(*number)), vec![]),
            Effect::Push {
                branch: name,
                paths,
            } => one(
                Some(branch(name)),
                vec![
                    (
                        "paths",
                        RestrictedExpression::new_set(paths.iter().map(|p| s(p))),
                    ),
                    (
                        "touches_workflows",
                        RestrictedExpression::new_bool(
                            paths
                                .iter()
                                .any(|p| p.to_ascii_lowercase().starts_with(".github/workflows/")),
                        ),
                    ),
                ],
            ),
        }
    }
}

/// A query's resource, turned into an entity only when the run has no cached
/// store for it.
pub(super) struct Resource {
    pub(super) uid: EntityUid,
    /// Whether its attributes depend on its id alone.
    pub(super) cacheable: bool,
    pub(super) attrs: Vec<(&'static str, RestrictedExpression)>,
}

/// One Cedar query: the resource (None: the repo) and the context.
pub(super) type Query = (Option<Resource>, Vec<(String, RestrictedExpression)>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::gate::run::RESOURCE_CACHE;
    use crate::policy::gate::test_support::*;
    use crate::policy::gate::*;
    use std::sync::Arc;

    // A run reuses entity stores for the resources it already touched; the
    // decisions must be the same as with a fresh store.
    #[test]
    fn cached_resources_decide_like_fresh_ones() {
        let gate = gate_with(None);
        let spec = run(Role::Spec);
        let decide = |path: &str| {
            gate.decide(&EffectRequest {
                run: spec.clone(),
                effect: write(path),
            })
        };
        for round in 0..3 {
            for i in 0..(RESOURCE_CACHE + 4) {
                let inside = decide(&format!("specs/{i}.md"));
                let outside = decide(&format!("src/{i}.rs"));
                assert!(
                    inside.is_allow() && outside.is_deny(),
                    "round {round}, file {i}: specs/ should be allowed and src/ denied for spec, got: {inside:?} / {outside:?}"
                );
            }
        }
        let again = gate.decide(&EffectRequest {
            run: spec.clone(),
            effect: labels(&["bug"]),
        });
        assert!(
            again.is_deny(),
            "spec may not label, cached or not, got: {again:?}"
        );
    }

    #[test]
    fn builtin_schema_and_default_policies_are_valid() {
        let gate = Gate::new(&GateConfig::default());
        assert!(
            gate.is_ok(),
            "the embedded schema and defaults should validate, got: {:?}",
            gate.err()
        );
    }

    // What each role may do under the default policies alone.
    #[test]
    fn default_policies_grant_each_role_its_job() {
        let gate = gate_with(None);
        let allowed: Vec<(&str, Role, Effect)> = vec![
            (
                "triage comments",
                Role::Triage,
                Effect::Comment {
                    number: 12,
                    body: "Thanks!".into(),
                },
            ),
            (
                "triage labels from the allowlist",
                Role::Triage,
                labels(&["bug", "Needs-Info"]),
            ),
            (
                "spec writes specs/**",
                Role::Spec,
                write("specs/12-fix-typo/spec.md"),
            ),
            (
                "spec proposes a draft PR from its branch",
                Role::Spec,
                pr("kiln/12-fix-typo", true),
            ),
            (
                "implementation writes the workspace",
                Role::Implementation,
                write("src/lib.rs"),
            ),
            (
                "implementation runs commands",
                Role::Implementation,
                Effect::WorkspaceExec {
                    argv: vec!["cargo".into(), "test".into()],
                },
            ),
            (
                "implementation proposes a draft PR",
                Role::Implementation,
                pr("kiln/12-fix-typo", true),
            ),
            (
                "implementation branch is pushed",
                Role::Implementation,
                Effect::Push {
                    branch: "kiln/12-fix-typo".into(),
                    paths: vec!["src/lib.rs".into()],
                },
            ),
            (
                "review comments on diff lines",
                Role::Review,
                review(ReviewEvent::Comment, true),
            ),
            (
                "review requests changes",
                Role::Review,
                review(ReviewEvent::RequestChanges, true),
            ),
            (
                "review posts a summary",
                Role::Review,
                Effect::Review {
                    number: 13,
                    event: ReviewEvent::Comment,
                    body: "Summary".into(),
                    comments: vec![],
                },
            ),
        ];
        for (what, role, effect) in allowed {
            let d = gate.decide(&req(role, effect));
            assert!(
                d.is_allow(),
                "{what} should be allowed for role {role}, got: {d:?}"
            );
            assert!(
                d.reason().contains("allowed by default."),
                "{what}: the reason should name the policy, got: {d:?}"
            );
        }
        for role in Role::ALL {
            for effect in [
                Effect::WorkspaceRead {
                    path: "README.md".into(),
                },
                Effect::ModelComplete {
                    model: "claude-sonnet".into(),
                },
            ] {
                let d = gate.decide(&req(role, effect));
                assert!(
                    d.is_allow(),
                    "every role should read and call the model; role {role} got: {d:?}"
                );
            }
        }
        let denied: Vec<(&str, Role, Effect)> = vec![
            ("triage writing files", Role::Triage, write("src/lib.rs")),
            (
                "triage opening a PR",
                Role::Triage,
                pr("kiln/12-fix-typo", true),
            ),
            (
                "spec writing outside specs/",
                Role::Spec,
                write("src/lib.rs"),
            ),
            (
                "spec running commands",
                Role::Spec,
                Effect::WorkspaceExec {
                    argv: vec!["sh".into()],
                },
            ),
            (
                "review commenting off the diff",
                Role::Review,
                review(ReviewEvent::Comment, false),
            ),
            (
                "review plain comment",
                Role::Review,
                Effect::Comment {
                    number: 13,
                    body: "hi".into(),
                },
            ),
            ("review labelling", Role::Review, labels(&["bug"])),
            (
                "implementation labelling",
                Role::Implementation,
                labels(&["bug"]),
            ),
            (
                "triage pushing",
                Role::Triage,
                Effect::Push {
                    branch: "kiln/12-fix-typo".into(),
                    paths: vec![],
                },
            ),
        ];
        for (what, role, effect) in denied {
            let d = gate.decide(&req(role, effect));
            assert!(
                d.is_deny() && d.blame() == Blame::Policy,
                "{what} should be denied by policy for role {role}, got: {d:?}"
            );
        }
    }

    // The README's policy (docs/policies/) holds what a trusted trigger
    // leads a run to propose after reading a stranger's words, and nothing
    // else; the default holds only on an untrusted trigger.
    #[test]
    fn the_documented_policy_holds_pull_requests_of_runs_that_read_untrusted_words() {
        let documented = include_str!("../../../../docs/policies/hold-untrusted-words.cedar");
        let trusted_read = |read| EffectRequest {
            run: Arc::new(
                RunContext::new(
                    "run-1",
                    Role::Implementation,
                    "acme/widgets",
                    Trust::Trusted,
                    "kiln/12-fix-typo",
                )
                .with_read_untrusted(read),
            ),
            effect: pr("kiln/12-fix-typo", true),
        };
        let d = gate_with(Some(documented)).decide(&trusted_read(true));
        assert!(
            d.is_hold() && d.reason().contains("repo.hold-untrusted-words"),
            "{d:?}"
        );
        let d = gate_with(Some(documented)).decide(&trusted_read(false));
        assert!(d.is_allow(), "only words of untrusted authors hold: {d:?}");
        let d = gate_with(None).decide(&trusted_read(true));
        assert!(
            d.is_allow(),
            "the default does not hold on read_untrusted alone: {d:?}"
        );
    }

    #[test]
    fn hold_annotations_hold_but_never_grant() {
        let gate = gate_with(None);
        let untrusted = EffectRequest {
            run: run_with(Role::Implementation, Trust::Untrusted, "kiln/12-fix-typo"),
            effect: pr("kiln/12-fix-typo", true),
        };
        let d = gate.decide(&untrusted);
        assert!(
            d.is_hold()
                && d.reason().contains("default.hold-untrusted-pull-request")
                && d.reason().contains("untrusted actor"),
            "a PR from a run started by an untrusted actor should be held, got: {d:?}"
        );
        let triage = EffectRequest {
            run: run_with(Role::Triage, Trust::Untrusted, "kiln/12-fix-typo"),
            effect: pr("kiln/12-fix-typo", true),
        };
        let d = gate.decide(&triage);
        assert!(
            d.is_deny(),
            "a hold policy must not grant triage a PR, got: {d:?}"
        );

        let repo = r#"
@id("approve-exec")
@hold("a human approves every command")
permit (principal, action == Kiln::Action::"workspace.exec", resource);
"#;
        let gate = gate_with(Some(repo));
        let d = gate.decide(&req(
            Role::Implementation,
            Effect::WorkspaceExec {
                argv: vec!["make".into()],
            },
        ));
        assert!(
            d.is_hold()
                && d.reason()
                    .contains("repo.approve-exec (a human approves every command)"),
            "a repo @hold policy should hold exec, got: {d:?}"
        );
    }

    #[test]
    fn repo_forbid_wins_and_is_named() {
        let repo = r#"
@id("no-curl")
forbid (principal, action == Kiln::Action::"workspace.exec", resource)
when { context.program == "curl" };
"#;
        let gate = gate_with(Some(repo));
        let d = gate.decide(&req(
            Role::Implementation,
            Effect::WorkspaceExec {
                argv: vec!["curl".into(), "x".into()],
            },
        ));
        assert!(
            d.is_deny() && d.reason().contains("denied by repo.no-curl"),
            "the repo's forbid should deny curl and be named, got: {d:?}"
        );
    }

    // Bad repo policies stop start-up with the line, column and reason.
    #[test]
    fn bad_repo_policies_report_line_and_reason() {
        let cases: [(&str, &str, usize, &str); 4] = [
            (
                "syntax error",
                "permit(principal, action, resource);\n\npermit(principal action, resource);",
                3,
                "do not parse",
            ),
            (
                "unknown attribute",
                "permit(principal, action == Kiln::Action::\"forge.comment\", resource)\nwhen { principal.rank == \"admin\" };",
                2,
                "rank",
            ),
            (
                "unknown action",
                "// comment\npermit(principal, action == Kiln::Action::\"forge.delete-repo\", resource);",
                2,
                "delete-repo",
            ),
            (
                "type error",
                "permit(principal, action == Kiln::Action::\"workspace.write\", resource)\nwhen {\n  resource.path == 3\n};",
                3,
                "repo policies are invalid",
            ),
        ];
        for (what, src, line, needle) in cases {
            let config = GateConfig {
                repo_policies: Some(src.into()),
                ..GateConfig::default()
            };
            let err = match Gate::new(&config) {
                Err(e) => e,
                Ok(_) => panic!("{what}: a bad repo policy should stop start-up"),
            };
            let msg = err.to_string();
            assert!(
                msg.contains(needle),
                "{what}: the error should mention {needle:?}, got: {msg}"
            );
            assert!(
                msg.contains(&format!("line {line}, column")),
                "{what}: the error should point at line {line}, got: {msg}"
            );
        }
        let hold_forbid = GateConfig {
            repo_policies: Some("@hold(\"x\") forbid(principal, action, resource);".into()),
            ..GateConfig::default()
        };
        let err = Gate::new(&hold_forbid)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("@hold is only allowed on permit"),
            "@hold on forbid should be refused, got: {err}"
        );
        let dup = GateConfig {
            repo_policies: Some("@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);".into()),
            ..GateConfig::default()
        };
        let err = Gate::new(&dup)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("repo.a"),
            "a duplicate @id should be refused, got: {err}"
        );
        let human = GateConfig {
            label_allowlist: vec!["ready-to-spec".into()],
            ..GateConfig::default()
        };
        assert!(
            matches!(Gate::new(&human), Err(GateError::HumanOnlyLabel(_))),
            "a human-only label in the allowlist should stop start-up"
        );
    }

    // Verification runs checks, reports them in its one comment and sets a
    // `kiln/...` status; no other built-in role may do any of the three, a
    // custom role may report and set statuses (it "talks"), and nothing lets
    // verification write, label, review or pose as the repository's CI.
    #[test]
    fn verification_checks_reports_and_sets_statuses_and_nothing_more() {
        let gate = gate_with(None);
        let exec = Effect::WorkspaceExec {
            argv: vec!["make".into(), "test".into()],
        };
        for (effect, policy) in [
            (exec.clone(), "default.verification-exec"),
            (
                report("**Kiln verification: passed**"),
                "default.verification-report",
            ),
            (
                status("kiln/verification", "2 checks passed"),
                "default.verification-status",
            ),
        ] {
            let d = gate.decide(&req(Role::Verification, effect.clone()));
            assert!(
                d.is_allow() && d.reason().contains(policy),
                "verification: {effect:?} should be allowed by {policy}, got: {d:?}"
            );
        }
        for role in [Role::Triage, Role::Spec, Role::Review] {
            let d = gate.decide(&req(role, report("hi")));
            assert!(
                d.is_deny() && d.blame() == Blame::Policy,
                "{role} should not post a report, got: {d:?}"
            );
        }
        let d = gate.decide(&req(Role::Implementation, report("hi")));
        assert!(d.is_deny(), "implementation should not report, got: {d:?}");
        let custom = Role::Custom(crate::config::RoleName::new("changelog").expect("name"));
        let d = gate.decide(&req(custom, report("hi")));
        assert!(d.is_allow(), "a custom role may report, got: {d:?}");
        for (what, effect) in [
            ("writing a tracked file", write("src/lib.rs")),
            ("labelling", labels(&["bug"])),
            ("reviewing", review(ReviewEvent::Comment, true)),
            (
                "a plain comment",
                Effect::Comment {
                    number: 13,
                    body: "hi".into(),
                },
            ),
            (
                "opening a pull request",
                pr("kiln/verification-pr-13", true),
            ),
        ] {
            let d = gate.decide(&req(Role::Verification, effect));
            assert!(
                d.is_deny(),
                "verification {what} should be denied, got: {d:?}"
            );
        }
        // Wrong contexts are refused by the invariant, whatever the policy.
        for context in ["ci/test", "verification", "Kiln/verification", "kiln/"] {
            let d = gate.decide(&req(Role::Verification, status(context, "passed")));
            assert!(
                d.is_deny() && d.blame() != Blame::Policy,
                "context {context:?} should be refused by the invariant, got: {d:?}"
            );
        }
        // The report is outbound text: sized and redacted like a comment.
        let d = gate.decide(&req(
            Role::Verification,
            report(&"x".repeat(MAX_BODY_CHARS + 1)),
        ));
        assert!(
            d.is_deny(),
            "an oversized report should be refused, got: {d:?}"
        );
        let leak = "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 in the output";
        let (d, admitted) = gate.admit(req(Role::Verification, report(leak)));
        assert!(d.is_allow(), "{d:?}");
        let Effect::Report { body, .. } = &admitted.effect else {
            panic!("a report stays a report");
        };
        assert!(
            !body.contains("ghp_abcdef"),
            "the token should be redacted: {body}"
        );
    }

    // An answering implementation run may reply; no other role may, and only
    // the verification role sets statuses (its own test below).
    #[test]
    fn replies_and_statuses_are_granted_only_to_the_roles_that_need_them() {
        let gate = gate_with(None);
        let d = gate.decide(&req(Role::Implementation, reply("Fixed in abc123.")));
        assert!(
            d.is_allow() && d.reason().contains("default.implementation-reply"),
            "implementation should reply to a review comment, got: {d:?}"
        );
        for role in [Role::Triage, Role::Spec, Role::Review] {
            let d = gate.decide(&req(role, reply("hi")));
            assert!(
                d.is_deny() && d.blame() == Blame::Policy,
                "{role} should not reply, got: {d:?}"
            );
        }
        for role in [Role::Triage, Role::Spec, Role::Implementation, Role::Review] {
            let d = gate.decide(&req(role, status("kiln/verification", "passed")));
            assert!(
                d.is_deny() && d.blame() == Blame::Policy,
                "{role} should not set a status, got: {d:?}"
            );
        }
        // A repo can grant statuses by name and state, and replies by size.
        let repo = r#"
@id("review-status")
permit (principal, action == Kiln::Action::"forge.status", resource)
when { principal.role == "review" && context.status_context == "kiln/review" && context.state != "success" };
@id("short-review-replies")
permit (principal, action == Kiln::Action::"forge.reply", resource)
when { principal.role == "review" && context.length < 100 && context.comment_id > 0 };
"#;
        let custom = gate_with(Some(repo));
        let pending = Effect::Status {
            number: 13,
            context: "kiln/review".into(),
            state: StatusState::Pending,
            description: "reviewing".into(),
        };
        for (effect, allowed) in [
            (pending, true),
            (status("kiln/review", "approved, really"), false),
            (reply("ok"), true),
            (reply(&"x".repeat(100)), false),
        ] {
            let d = custom.decide(&req(Role::Review, effect.clone()));
            assert_eq!(d.is_allow(), allowed, "{effect:?}: {d:?}");
        }
        let open = gate_with(Some(PERMIT_ALL));
        let d = open.decide(&req(
            Role::Review,
            status("kiln/verification", &"x".repeat(500)),
        ));
        assert!(
            d.is_allow(),
            "a kiln/ status a policy permits should pass (the forge cuts the description), got: {d:?}"
        );
    }
}
