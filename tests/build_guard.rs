//! The build itself refuses lint warnings: `scripts/cargo-env.sh`, which
//! `scripts/test.sh` and `scripts/kiln.sh` source, makes every compile of a
//! workspace crate a clippy compile with warnings denied. Nothing else runs
//! clippy in CI, so if that setup stopped working (a renamed variable, a
//! changed argument encoding), lints would pass unnoticed; this test plants
//! one in a throwaway crate and watches the build fail on it.
use std::path::Path;
use std::process::Command;

/// Builds `lib` as a one-file crate with the project's compiler setup.
fn build(dir: &Path, lib: &str) -> std::process::Output {
    std::fs::create_dir_all(dir.join("src")).expect("src dir");
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"planted\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )
    .expect("manifest");
    std::fs::write(dir.join("src/lib.rs"), lib).expect("lib.rs");
    let env = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cargo-env.sh");
    Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && exec \"$CARGO\" build --offline --quiet --manifest-path '{}'",
            env.display(),
            dir.join("Cargo.toml").display()
        ))
        .env("CARGO", env!("CARGO"))
        .env("CARGO_TARGET_DIR", dir.join("target"))
        // The suite's own build settings must not leak into the child's.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CLIPPY_ARGS")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo")
}

#[test]
fn a_planted_lint_fails_the_build_and_its_fix_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `&Vec<u8>` where `&[u8]` would do: clippy's `ptr_arg`, a warning by
    // default, which plain rustc does not know.
    let planted = build(
        dir.path(),
        "/// Length.\npub fn len(v: &Vec<u8>) -> usize {\n    v.len()\n}\n",
    );
    let stderr = String::from_utf8_lossy(&planted.stderr);
    assert!(
        !planted.status.success() && (stderr.contains("ptr_arg") || stderr.contains("ptr-arg")),
        "a clippy warning fails the build: {stderr}"
    );
    let fixed = build(
        dir.path(),
        "/// Length.\npub fn len(v: &[u8]) -> usize {\n    v.len()\n}\n",
    );
    assert!(
        fixed.status.success(),
        "the same crate without the lint builds: {}",
        String::from_utf8_lossy(&fixed.stderr)
    );
}
