//! `kiln plugin check` and `kiln --help`, run as a user would: the real
//! binary on real built components.
use std::process::Command;

use kiln::plugin::builtin;

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
        "world:        kiln:role/role@0.1.0",
        "kiln:role/model@0.1.0",
        "complete                 needs model.complete (declared)",
        "kiln:role/forge@0.1.0",
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
        out.contains("verdict:      REFUSED: plugin undeclared-import imports `kiln:role/forge@0.1.0#propose-comment`"),
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
