//! Protected paths (blame: guest for a denial, policy for a hold): files no
//! run changes without a human. A push (the real changed paths of the run's
//! commit) touching one is held for approval, or refused for the patterns
//! that deny; a workspace write is refused at once for a denying pattern, so
//! the plugin learns early, and otherwise left for the push to hold.
//!
//! The built-in list ([`BUILTIN_PROTECTED`]) steers people and agents or runs
//! code on someone's machine: code owners, CI and forge settings, Kiln's own
//! configuration and skills, agent instruction files, dev containers,
//! dependency manifests and lockfiles (install hooks live there). A repo's
//! `[policy] protected` adds patterns and picks hold or deny per pattern;
//! nothing narrows the list: a path matching several patterns gets the
//! strictest action.
//!
//! `.kiln/skills/**` steers every later run of the repository, so only the
//! improve role, whose job it is, may change it; any other role is refused.
//! (`.github/workflows/**` stays refused by the invariants unless the repo
//! grants workflow changes, and is held like the rest of `.github/**` then.)

use regex::{Regex, RegexSet};
use serde::Deserialize;

use super::{Effect, EffectRequest, Role, Violation, clip};

/// What happens to a change of a protected path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    /// Held until a human approves it (the default).
    #[default]
    Hold,
    /// Refused.
    Deny,
}

impl Protection {
    /// `hold` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hold => "hold",
            Self::Deny => "deny",
        }
    }
}

/// One pattern a repository adds to the protected list (`[policy] protected`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedPattern {
    /// A glob over repository paths, compared case-insensitively; `*` stays
    /// within one directory, `**` crosses them; a pattern without `/` matches
    /// that name in any directory.
    pub path: String,
    /// Hold (default) or deny.
    #[serde(default)]
    pub action: Protection,
}

/// The built-in protected paths and why each is protected; all held.
pub const BUILTIN_PROTECTED: &[(&str, &str)] = &[
    ("CODEOWNERS", "code owners decide who reviews"),
    (".github/**", "forge and CI settings"),
    (".kiln/**", "Kiln's own configuration"),
    ("AGENTS.md", "agent instructions"),
    ("CLAUDE.md", "agent instructions"),
    ("GEMINI.md", "agent instructions"),
    (".cursorrules", "agent instructions"),
    (".cursor/**", "agent instructions"),
    (".windsurfrules", "agent instructions"),
    (".clinerules", "agent instructions"),
    (
        ".devcontainer/**",
        "dev container setup runs on people's machines",
    ),
    (
        ".devcontainer.json",
        "dev container setup runs on people's machines",
    ),
    (".gitmodules", "submodules fetch code from elsewhere"),
    (".husky/**", "git hooks run on people's machines"),
    (
        ".pre-commit-config.yaml",
        "git hooks run on people's machines",
    ),
    ("Cargo.toml", "dependency manifest"),
    ("Cargo.lock", "lockfile"),
    ("package.json", "dependency manifest (install scripts)"),
    ("package-lock.json", "lockfile"),
    ("npm-shrinkwrap.json", "lockfile"),
    ("yarn.lock", "lockfile"),
    ("pnpm-lock.yaml", "lockfile"),
    ("pnpm-workspace.yaml", "dependency manifest"),
    ("bun.lock", "lockfile"),
    ("bun.lockb", "lockfile"),
    (".npmrc", "package manager settings"),
    (".yarnrc.yml", "package manager settings"),
    ("pyproject.toml", "dependency manifest (build hooks)"),
    ("setup.py", "dependency manifest (build hooks)"),
    ("setup.cfg", "dependency manifest"),
    ("requirements*.txt", "dependency manifest"),
    ("Pipfile", "dependency manifest"),
    ("Pipfile.lock", "lockfile"),
    ("poetry.lock", "lockfile"),
    ("uv.lock", "lockfile"),
    ("go.mod", "dependency manifest"),
    ("go.sum", "lockfile"),
    ("Gemfile", "dependency manifest"),
    ("Gemfile.lock", "lockfile"),
    ("*.gemspec", "dependency manifest"),
    ("composer.json", "dependency manifest (install scripts)"),
    ("composer.lock", "lockfile"),
    ("pom.xml", "dependency manifest (build plugins)"),
    ("build.gradle", "dependency manifest (build scripts)"),
    ("build.gradle.kts", "dependency manifest (build scripts)"),
    ("settings.gradle", "dependency manifest (build scripts)"),
    ("settings.gradle.kts", "dependency manifest (build scripts)"),
    ("gradle.lockfile", "lockfile"),
    ("mix.exs", "dependency manifest"),
    ("mix.lock", "lockfile"),
    ("Package.swift", "dependency manifest"),
    ("Package.resolved", "lockfile"),
    ("pubspec.yaml", "dependency manifest"),
    ("pubspec.lock", "lockfile"),
    ("*.csproj", "dependency manifest (build targets)"),
    ("packages.lock.json", "lockfile"),
    ("flake.nix", "dependency manifest"),
    ("flake.lock", "lockfile"),
];

/// Skills steer every later run; only the improve role may change them.
const SKILLS: &str = ".kiln/skills/**";

/// A change the protected list catches: which path, hold or deny, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedChange {
    /// The changed path.
    pub path: String,
    /// What happens to it.
    pub action: Protection,
    /// The pattern that caught it and why it is protected.
    pub why: String,
}

/// Why the protected list could not be built (a bad `[policy] protected` glob).
#[derive(Debug, thiserror::Error)]
#[error("[policy] protected pattern {pattern:?} is not a valid glob: {reason}")]
pub struct ProtectedPatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

struct Rule {
    action: Protection,
    why: String,
    /// The built-in `.kiln/**` (improve's skills are its job, not a hold).
    kiln_dir: bool,
}

/// The compiled protected list: built-in patterns, then the repo's.
pub(super) struct ProtectedPaths {
    set: RegexSet,
    rules: Vec<Rule>,
    skills: Regex,
}

/// Translates one pattern into a regex: case-insensitive (a
/// case-insensitive checkout makes `codeowners` the real thing), `*` and `?`
/// within a directory, `**` across directories, `[...]` a class, and a
/// pattern without `/` anchored at any depth.
fn glob(pattern: &str) -> Result<String, ProtectedPatternError> {
    let p = pattern.trim().trim_start_matches('/');
    let err = |reason: &str| ProtectedPatternError {
        pattern: pattern.to_owned(),
        reason: reason.to_owned(),
    };
    if p.is_empty() {
        return Err(err("it is empty"));
    }
    let mut re = String::from("(?i)^");
    if !p.contains('/') {
        re.push_str("(?:.*/)?");
    }
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                let at_start = i == 0 || chars.get(i - 1) == Some(&'/');
                match chars.get(i + 2) {
                    Some(&'/') if at_start => {
                        re.push_str("(?:.*/)?");
                        i += 3;
                        continue;
                    }
                    None if at_start => re.push_str(".*"),
                    _ => return Err(err("`**` must be a whole path component")),
                }
                i += 2;
                continue;
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                let close = chars
                    .get(i + 1..)
                    .and_then(|rest| rest.iter().skip(1).position(|&c| c == ']'))
                    .map(|j| i + 2 + j)
                    .ok_or_else(|| err("unclosed character class"))?;
                re.push('[');
                for (k, &c) in chars
                    .get(i + 1..close)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    match c {
                        '!' if k == 0 => re.push('^'),
                        '\\' | '[' | '&' | '~' | '^' => {
                            re.push('\\');
                            re.push(c);
                        }
                        '/' => return Err(err("a character class cannot match `/`")),
                        c => re.push(c),
                    }
                }
                re.push(']');
                i = close + 1;
                continue;
            }
            '\\' => {
                let next = chars.get(i + 1).ok_or_else(|| err("it ends with `\\`"))?;
                re.push_str(&regex::escape(&next.to_string()));
                i += 2;
                continue;
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    re.push('$');
    Regex::new(&re).map_err(|e| err(&e.to_string()))?;
    Ok(re)
}

impl ProtectedPaths {
    /// The built-in list widened by the repository's patterns.
    pub(super) fn new(extra: &[ProtectedPattern]) -> Result<Self, ProtectedPatternError> {
        let mut patterns = Vec::new();
        let mut rules = Vec::new();
        for (pattern, why) in BUILTIN_PROTECTED {
            patterns.push(glob(pattern)?);
            rules.push(Rule {
                action: Protection::Hold,
                why: format!("{pattern}: {why}"),
                kiln_dir: *pattern == ".kiln/**",
            });
        }
        for p in extra {
            patterns.push(glob(&p.path)?);
            rules.push(Rule {
                action: p.action,
                why: format!("{}: protected by the repository's [policy]", p.path.trim()),
                kiln_dir: false,
            });
        }
        let built = |e: regex::Error| ProtectedPatternError {
            pattern: String::new(),
            reason: e.to_string(),
        };
        Ok(Self {
            set: RegexSet::new(&patterns).map_err(built)?,
            rules,
            skills: Regex::new(&glob(SKILLS)?).map_err(built)?,
        })
    }

    /// What the list says about `path` changed by a run of `role`, if
    /// anything: the strictest matching rule.
    pub(super) fn check(&self, role: Role, path: &str) -> Option<ProtectedChange> {
        let skills = self.skills.is_match(path);
        if skills && !is_improve(role) {
            return Some(ProtectedChange {
                path: path.to_owned(),
                action: Protection::Deny,
                why: format!(
                    "{SKILLS}: skills steer every later run; only the improve role changes them"
                ),
            });
        }
        self.set
            .matches(path)
            .into_iter()
            .filter_map(|i| self.rules.get(i))
            // The improve role's own write surface is not held as Kiln
            // configuration; a repo pattern still applies to it.
            .filter(|r| !(skills && r.kiln_dir))
            .max_by_key(|r| r.action)
            .map(|r| ProtectedChange {
                path: path.to_owned(),
                action: r.action,
                why: r.why.clone(),
            })
    }

    /// Every protected change among `paths`.
    pub(super) fn changes<'a>(
        &self,
        role: Role,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Vec<ProtectedChange> {
        paths
            .into_iter()
            .filter_map(|p| self.check(role, p))
            .collect()
    }

    /// The step: a denying pattern refuses a write or a push; a holding one
    /// makes a push wait for a human (the returned changes).
    pub(super) fn step(&self, req: &EffectRequest) -> Result<Vec<ProtectedChange>, Violation> {
        let role = req.run.role;
        let changes = match &req.effect {
            Effect::Push { paths, .. } => self.changes(role, paths.iter().map(String::as_str)),
            // A write is not a change yet; only a refusal is worth saying
            // now (the push holds the rest, on the real changed paths).
            Effect::WorkspaceWrite { path, .. } => self
                .check(role, path)
                .filter(|c| c.action == Protection::Deny)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        if let Some(denied) = changes.iter().find(|c| c.action == Protection::Deny) {
            return Err(Violation::new(
                "protected-paths",
                format!("{:?} is protected ({})", clip(&denied.path), denied.why),
            ));
        }
        Ok(changes)
    }
}

/// The improve role, whose job is changing skills. A custom role that
/// merely calls itself so is not it.
fn is_improve(role: Role) -> bool {
    !matches!(role, Role::Custom(_)) && role.as_str() == "improve"
}

/// The hold reason for protected changes: each path and why.
pub(super) fn hold_reason(changes: &[ProtectedChange]) -> String {
    let list: Vec<String> = changes
        .iter()
        .take(20)
        .map(|c| format!("{:?} ({})", clip(&c.path), c.why))
        .collect();
    let more = changes.len().saturating_sub(20);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("protected paths changed: {}{more}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(extra: &[ProtectedPattern]) -> ProtectedPaths {
        ProtectedPaths::new(extra).unwrap_or_else(|e| panic!("{e}"))
    }

    fn action(p: &ProtectedPaths, role: Role, path: &str) -> Option<Protection> {
        p.check(role, path).map(|c| c.action)
    }

    #[test]
    fn the_builtin_list_holds_what_steers_people_and_agents() {
        let p = paths(&[]);
        let role = Role::Implementation;
        for path in [
            "CODEOWNERS",
            "docs/CODEOWNERS",
            ".github/CODEOWNERS",
            ".github/dependabot.yml",
            ".kiln/kiln.toml",
            "AGENTS.md",
            "sub/dir/AGENTS.md",
            "CLAUDE.md",
            ".cursorrules",
            ".cursor/rules/x.mdc",
            ".devcontainer/devcontainer.json",
            "Cargo.toml",
            "crates/a/Cargo.toml",
            "Cargo.lock",
            "package.json",
            "web/package.json",
            "yarn.lock",
            "pnpm-lock.yaml",
            "pyproject.toml",
            "requirements.txt",
            "requirements-dev.txt",
            "go.mod",
            "go.sum",
            "Gemfile",
            "Gemfile.lock",
            "a.gemspec",
        ] {
            assert_eq!(action(&p, role, path), Some(Protection::Hold), "{path}");
        }
        for path in [
            "src/lib.rs",
            "README.md",
            "docs/agents.md.txt",
            "packages.json.bak/x",
            "mypackage.json",
            "requirements/notes.md",
            "github/x",
            "kiln/x",
        ] {
            assert_eq!(action(&p, role, path), None, "{path}");
        }
    }

    // Case, depth and a leading slash do not get around it.
    #[test]
    fn case_and_depth_tricks_are_still_protected() {
        let p = paths(&[]);
        let role = Role::Implementation;
        for path in [
            "codeowners",
            "CodeOwners",
            "a/b/c/CODEOWNERS",
            ".GitHub/settings.yml",
            ".KILN/x",
            "Agents.MD",
            "PACKAGE.JSON",
        ] {
            assert_eq!(action(&p, role, path), Some(Protection::Hold), "{path}");
        }
        let extra = paths(&[ProtectedPattern {
            path: "/deploy/**".into(),
            action: Protection::Deny,
        }]);
        assert_eq!(
            action(&extra, role, "Deploy/prod.yml"),
            Some(Protection::Deny)
        );
    }

    #[test]
    fn only_the_improve_role_changes_skills() {
        let p = paths(&[]);
        for role in [
            Role::Triage,
            Role::Spec,
            Role::Implementation,
            Role::Review,
            Role::Verification,
            Role::Custom(crate::config::RoleName::new("improve").expect("name")),
        ] {
            let c = p.check(role, ".kiln/skills/triage.md").expect("protected");
            assert_eq!(c.action, Protection::Deny, "{role}");
            assert!(c.why.contains("only the improve role"), "{}", c.why);
            assert_eq!(
                action(&p, role, ".KILN/Skills/triage.md"),
                Some(Protection::Deny)
            );
        }
    }

    // The repo widens the list and can make a built-in pattern deny; it
    // cannot make one less strict.
    #[test]
    fn config_widens_never_narrows() {
        let p = paths(&[
            ProtectedPattern {
                path: "infra/**".into(),
                action: Protection::Deny,
            },
            ProtectedPattern {
                path: "docs/SECURITY.md".into(),
                action: Protection::Hold,
            },
            ProtectedPattern {
                path: "package.json".into(),
                action: Protection::Deny,
            },
            ProtectedPattern {
                path: "CODEOWNERS".into(),
                action: Protection::Hold,
            },
        ]);
        let role = Role::Implementation;
        assert_eq!(action(&p, role, "infra/main.tf"), Some(Protection::Deny));
        assert_eq!(action(&p, role, "docs/SECURITY.md"), Some(Protection::Hold));
        assert_eq!(action(&p, role, "package.json"), Some(Protection::Deny));
        assert_eq!(action(&p, role, "CODEOWNERS"), Some(Protection::Hold));
        assert_eq!(action(&p, role, "src/main.rs"), None);
    }

    #[test]
    fn a_bad_pattern_is_a_precise_startup_error() {
        let err = ProtectedPaths::new(&[ProtectedPattern {
            path: "a/[b".into(),
            action: Protection::Hold,
        }])
        .err()
        .expect("refused");
        assert!(err.to_string().contains("\"a/[b\""), "{err}");
        assert!(
            ProtectedPaths::new(&[ProtectedPattern {
                path: "  ".into(),
                action: Protection::Deny,
            }])
            .is_err()
        );
    }

    fn push(paths: &[&str]) -> Effect {
        Effect::Push {
            branch: "kiln/12-fix-typo".into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    // Through the whole gate: a push changing protected paths is held with
    // each path and why, even where Cedar allows everything; a skills change
    // is refused at write and at push; other writes go through.
    #[test]
    fn the_gate_holds_protected_pushes_and_refuses_skills() {
        use crate::policy::gate::test_support::*;
        use crate::policy::gate::{Decision, Gate, GateConfig};
        for gate in [gate_with(None), gate_with(Some(PERMIT_ALL))] {
            let d = gate.decide(&req(
                Role::Implementation,
                push(&["src/lib.rs", "CODEOWNERS", "web/package.json", "AGENTS.md"]),
            ));
            let Decision::Hold { reason } = &d else {
                panic!("held, got {d:?}");
            };
            for needle in [
                "protected paths changed",
                "\"CODEOWNERS\" (CODEOWNERS: code owners decide who reviews)",
                "\"web/package.json\" (package.json: dependency manifest (install scripts))",
                "\"AGENTS.md\"",
            ] {
                assert!(reason.contains(needle), "{needle}: {reason}");
            }
            assert!(!reason.contains("src/lib.rs"), "{reason}");
            let d = gate.decide(&req(
                Role::Implementation,
                push(&["src/lib.rs", ".kiln/skills/triage.md"]),
            ));
            assert!(d.is_deny(), "{d:?}");
            assert!(
                d.reason().contains("denied by invariant protected-paths")
                    && d.reason().contains("only the improve role"),
                "{}",
                d.reason()
            );
            for (path, denied) in [
                (".kiln/skills/triage.md", true),
                (".Kiln/SKILLS/x.md", true),
                ("CODEOWNERS", false),
                ("package.json", false),
            ] {
                let d = gate.decide(&req(Role::Implementation, write(path)));
                assert_eq!(d.is_deny(), denied, "{path}: {d:?}");
            }
            assert!(
                gate.decide(&req(Role::Implementation, push(&["src/lib.rs"])))
                    .is_allow()
            );
        }
        // A repo's deny pattern refuses the write and the push at once.
        let gate = Gate::new(&GateConfig {
            repo_policies: Some(PERMIT_ALL.into()),
            protected: vec![ProtectedPattern {
                path: "infra/**".into(),
                action: Protection::Deny,
            }],
            ..GateConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            gate.decide(&req(Role::Implementation, write("infra/a.tf")))
                .is_deny()
        );
        assert!(
            gate.decide(&req(Role::Implementation, push(&["infra/a.tf"])))
                .is_deny()
        );
        // A bad pattern stops start-up with the pattern named.
        let err = Gate::new(&GateConfig {
            protected: vec![ProtectedPattern {
                path: "x/**y".into(),
                action: Protection::Hold,
            }],
            ..GateConfig::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("\"x/**y\""), "{err}");
    }
}
