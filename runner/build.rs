//! Builds every plugin crate of the repository (`plugins/*` and
//! `tests/plugins/*`, any crate with a `kiln-plugin.toml`) into a pure
//! WebAssembly component, so a plain `cargo build` or `cargo test` produces
//! them. Role plugins are embedded in the `kiln` binary; test plugins are
//! only referenced by path.
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        // A build script's panic output is hard to read; print the cause
        // plainly and fail.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("runner/ has no parent")?
        .to_path_buf();
    watch_plugin_sources(&root)?;
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
        .join("kiln-plugins");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let roles = kiln_plugin_build::discover(&[root.join("plugins")])?;
    let tests = kiln_plugin_build::discover(&[root.join("tests/plugins")])?;
    let all: Vec<_> = roles.iter().chain(tests.iter()).cloned().collect();
    let built = kiln_plugin_build::Builder::new(&root, &target_dir)
        .build(&all, &out_dir.join("plugins"))?;

    let mut code = String::new();
    code.push_str("/// Role plugins shipped inside the `kiln` binary: (name, component bytes).\n");
    code.push_str("pub const ROLE_PLUGINS: &[(&str, &[u8])] = &[\n");
    for b in built
        .iter()
        .filter(|b| roles.iter().any(|r| r.package == b.source.package))
    {
        writeln!(
            code,
            "    ({:?}, include_bytes!({:?})),",
            b.source.manifest.name, b.path
        )?;
    }
    code.push_str("];\n\n");
    code.push_str("/// Test plugins built from `tests/plugins/`: (name, path of the component).\n");
    code.push_str("pub const TEST_PLUGINS: &[(&str, &str)] = &[\n");
    for b in built
        .iter()
        .filter(|b| tests.iter().any(|t| t.package == b.source.package))
    {
        writeln!(
            code,
            "    ({:?}, {:?}),",
            b.source.manifest.name,
            b.path.display().to_string()
        )?;
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("plugins.rs"), code)?;
    Ok(())
}

/// Tell cargo to run this script again only when a plugin's input changes:
/// each crate's `Cargo.toml`, `kiln-plugin.toml` and `src/` under `plugins/`
/// and `tests/plugins/` (the SDK's too), the WIT contract, the lock file
/// (a new plugin crate or dependency version lands there) and the root
/// manifest (the plugin profile inherits its `[profile.release]`). A plugin
/// crate added or removed changes the lock file.
///
/// Not whole directories: cargo scans a watched directory recursively, so a
/// `target/` that `kiln plugin build` leaves in a plugin crate, or an
/// editor's files, would rerun this script and relink every test binary.
fn watch_plugin_sources(root: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let watch = |p: PathBuf| println!("cargo:rerun-if-changed={}", p.display());
    watch(root.join("wit"));
    watch(root.join("Cargo.lock"));
    watch(root.join("Cargo.toml"));
    for parent in ["plugins", "tests/plugins"] {
        for entry in std::fs::read_dir(root.join(parent))? {
            let dir = entry?.path();
            for input in ["Cargo.toml", "kiln-plugin.toml", "src"] {
                // Only paths that exist: cargo reruns a script on every
                // build while a watched path is missing.
                if dir.join(input).exists() {
                    watch(dir.join(input));
                }
            }
        }
    }
    Ok(())
}
