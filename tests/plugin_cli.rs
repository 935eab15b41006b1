//! `kiln plugin ...` and `kiln --help`, run as a user would: the real
//! binary on real built components, and the README's "Writing a plugin"
//! walkthrough followed word for word.
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use kiln::plugin::builtin;

use crate::support::images;

fn kiln(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("run kiln");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn plugin_check_prints_world_imports_manifest_and_an_ok_verdict() {
    let path = builtin::test_plugin_path("agent").expect("agent built");
    let (code, out) = kiln(&["plugin", "check", path]);
    assert_eq!(code, 0, "a valid plugin should pass the check:\n{out}");
    for expected in [
        "plugin:       agent 0.1.0",
        "role:         triage",
        "world:        kiln:role/role@0.2.0",
        "kiln:role/model@0.2.0",
        "complete                 needs model.complete (declared)",
        "kiln:role/forge@0.2.0",
        "propose-comment          needs forge.comment (declared)",
        "verdict:      OK: loads with model.complete, workspace.read, forge.read, forge.comment",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
}

#[test]
fn plugin_check_refuses_an_undeclared_import_and_names_it() {
    let path = builtin::test_plugin_path("undeclared-import").expect("built");
    let (code, out) = kiln(&["plugin", "check", path]);
    assert_eq!(code, 1, "a refused plugin should exit 1:\n{out}");
    assert!(
        out.contains("propose-comment          needs forge.comment (NOT DECLARED)"),
        "{out}"
    );
    assert!(
        out.contains("verdict:      REFUSED: plugin undeclared-import imports `kiln:role/forge@0.2.0#propose-comment`"),
        "{out}"
    );
}

#[test]
fn plugin_check_on_garbage_says_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("garbage.wasm");
    std::fs::write(&file, b"this is not wasm").expect("write");
    let (code, out) = kiln(&["plugin", "check", file.to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("REFUSED: not a valid WebAssembly component"),
        "{out}"
    );
    let (code, out) = kiln(&["plugin", "check", "/nonexistent/x.wasm"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("cannot read /nonexistent/x.wasm"), "{out}");
}

#[test]
fn help_describes_every_command() {
    let (code, out) = kiln(&["--help"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plugin") && out.contains("Build, check and list role plugins"),
        "{out}"
    );
    let (code, out) = kiln(&["plugin", "--help"]);
    assert_eq!(code, 0, "{out}");
    for cmd in ["check", "build", "list"] {
        assert!(
            out.contains(cmd),
            "`kiln plugin --help` should describe {cmd}:\n{out}"
        );
    }
}

#[test]
fn plugin_check_json_reports_the_verdict_and_the_roles_entry_for_ci() {
    let path = builtin::test_plugin_path("reply").expect("reply built");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plugin", "check", "--json", path])
        .env_remove("KILN_CONFIG")
        .output()
        .expect("run kiln");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON object");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["plugin"]["wit"], "0.2.0");
    assert_eq!(report["plugin"]["role"], "answer");
    // A custom role nobody configured: the entry to add, with the hash.
    assert_eq!(report["role_configured"], false);
    let sha = report["sha256"].as_str().expect("sha256");
    let snippet = report["roles_snippet"].as_str().expect("snippet");
    assert!(
        snippet.contains("name = \"answer\"") && snippet.contains(&format!("sha256 = \"{sha}\"")),
        "{snippet}"
    );
    let forge = report["imports"]
        .as_array()
        .expect("imports")
        .iter()
        .find(|i| i["name"] == "kiln:role/forge@0.2.0")
        .expect("forge import");
    let reply = forge["functions"]
        .as_array()
        .expect("functions")
        .iter()
        .find(|f| f["name"] == "propose-reply")
        .expect("propose-reply");
    assert_eq!(reply["capability"], "forge.reply");
    assert_eq!(reply["declared"], true);
    // A refusal is a JSON report too, with exit 1.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["plugin", "check", "--json"])
        .arg(&bad)
        .output()
        .expect("run kiln");
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("core module, not a component")),
        "{report:#}"
    );
}

/// Split a README command line as a shell would (words, double quotes).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// The `kiln ...` lines of the README's "Writing a plugin" section, in order.
fn readme_plugin_commands() -> Vec<Vec<String>> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("\n## Writing a plugin\n")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("README has a \"Writing a plugin\" section");
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && l.starts_with("kiln ") => {
                let l = l.split(" #").next().unwrap_or(l);
                commands.push(words(l));
            }
            _ => {}
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_a_plugin_as_the_readme_says_ends_in_its_comment_on_the_local_forge() {
    images::images().await;
    let started = Instant::now();
    let home = tempfile::tempdir().expect("home");
    let home = home.path();
    // The project the walkthrough's `repo create` starts from.
    std::fs::create_dir_all(home.join("my-app")).expect("mkdir");
    std::fs::write(home.join("my-app/README.md"), "# my-app\n").expect("write");
    let commands = readme_plugin_commands();
    assert!(
        commands.len() >= 6,
        "the README walkthrough should have new, build, test, repo create, issue new and run: {commands:?}"
    );
    let tilde = |w: &str| match w.strip_prefix("~/") {
        Some(rest) => home.join(rest).display().to_string(),
        None => w.to_string(),
    };
    let mut transcript = String::new();
    for command in &commands {
        let args: Vec<String> = command[1..].iter().map(|w| tilde(w)).collect();
        let step = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(&args)
            .current_dir(home)
            .env("HOME", home)
            .env("KILN_DATA_DIR", home.join("data"))
            .env("KILN_USER", "alice")
            .env(
                "KILN_IMAGES_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images"),
            )
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_REPO")
            .output()
            .expect("run kiln");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        transcript.push_str(&format!(
            "$ kiln {}\n{stdout}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
        assert!(
            out.status.success(),
            "`kiln {}` failed; the walkthrough so far:\n{transcript}",
            args.join(" ")
        );
        eprintln!(
            "kiln {} took {:.1} s",
            args[..2].join(" "),
            step.elapsed().as_secs_f64()
        );
        if args[..2] == ["plugin", "build"] {
            // "add the printed entry to kiln.toml"
            let entry = stdout
                .split("add to kiln.toml\n\n")
                .nth(1)
                .unwrap_or_else(|| {
                    panic!("`kiln plugin build` should print the [[roles]] entry:\n{stdout}")
                });
            std::fs::write(home.join("kiln.toml"), entry).expect("write kiln.toml");
        }
        if args[..2] == ["plugin", "test"] {
            assert!(
                stdout.contains("e1 forge.comment on #1: Thanks for the report.")
                    && stdout.contains("— applied"),
                "`kiln plugin test` should show the comment it proposed and applied:\n{stdout}"
            );
        }
    }
    // The custom role's comment is on the local forge's issue.
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["issue", "show", "1", "-R", "local/my-app"])
        .env("KILN_DATA_DIR", home.join("data"))
        .output()
        .expect("kiln issue show");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("Thanks for the report. The issue says the CSV export"),
        "the changelog role's comment should be on issue #1:\n{shown}\n--- walkthrough ---\n{transcript}"
    );
    let took = started.elapsed();
    eprintln!(
        "README \"Writing a plugin\", from `kiln plugin new` to the role's comment: {:.0} s (aim: under 10 minutes, first build included)",
        took.as_secs_f64()
    );
}
