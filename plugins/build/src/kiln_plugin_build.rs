//! Build Kiln plugin crates into pure WebAssembly components.
//!
//! A plugin crate is any crate with a `kiln-plugin.toml` manifest beside its
//! `Cargo.toml`. Building one means: compile it for `wasm32-unknown-unknown`
//! (a target with no WASI, so the result has no ambient authority), turn the
//! core module into a component with `wit-component`, and append the manifest
//! as a `kiln:manifest` custom section so a single `.wasm` file says what it
//! is and what it asks for. The Kiln runner's build script uses this for
//! every plugin in the repository, and `kiln plugin build` uses it for
//! third-party plugins.
#![deny(missing_docs)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod manifest;
pub use manifest::{MANIFEST_FILE, MANIFEST_SECTION, Manifest};

/// The guest target: no WASI, so no file system, clock or socket imports.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// The cargo profile plugins are built with. It is defined on the command
/// line ([`PLUGIN_PROFILE_CONFIG`]) so any plugin crate builds the same way,
/// whatever its own `Cargo.toml` says.
pub const PLUGIN_PROFILE: &str = "kiln-plugin";

/// The plugin profile: small code, no unwinding (a panic becomes a trap that
/// the SDK's panic hook has already reported to the host).
pub const PLUGIN_PROFILE_CONFIG: &[&str] = &[
    "profile.kiln-plugin.inherits=\"release\"",
    "profile.kiln-plugin.opt-level=\"s\"",
    "profile.kiln-plugin.lto=true",
    "profile.kiln-plugin.panic=\"abort\"",
    "profile.kiln-plugin.strip=true",
    "profile.kiln-plugin.codegen-units=1",
];

/// Everything that can go wrong while building a plugin.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A directory or file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is missing fields or is not valid TOML.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// No toolchain able to build for the wasm target was found.
    #[error(
        "no Rust standard library for {WASM_TARGET} was found: run `scripts/setup.sh` \
         (it runs `rustup target add {WASM_TARGET}`, or installs Debian's rust-web packages \
         where rustup cannot reach its server)"
    )]
    NoWasmToolchain,
    /// `cargo build` for the plugins failed; its stderr says why.
    #[error("building plugins for {WASM_TARGET} failed ({status}):\n{stderr}")]
    Cargo {
        /// The exit status of cargo.
        status: String,
        /// What cargo printed on stderr.
        stderr: String,
    },
    /// The compiled module could not be turned into a component.
    #[error("turning {package} into a component failed: {message}")]
    Componentize {
        /// The plugin package.
        package: String,
        /// What `wit-component` reported.
        message: String,
    },
}

/// A plugin crate found on disk.
#[derive(Debug, Clone)]
pub struct PluginCrate {
    /// The crate's directory.
    pub dir: PathBuf,
    /// The cargo package name (from `Cargo.toml`).
    pub package: String,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The manifest's text, embedded verbatim in the component.
    pub manifest_text: String,
    /// Whether the crate depends on `kiln-plugin-sdk`, whose feature then
    /// picks the contract version the manifest names.
    pub uses_sdk: bool,
}

/// The contract versions the SDK can bind, each behind its feature
/// `wit-<major>-<minor>-<patch>`.
pub const SDK_WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// A plugin built into a component.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// The crate it came from.
    pub source: PluginCrate,
    /// Where the component was written.
    pub path: PathBuf,
}

/// Load the plugin crate in `dir` (which must hold `kiln-plugin.toml`).
pub fn load_crate(dir: &Path) -> Result<PluginCrate, BuildError> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p).map_err(|source| BuildError::Io { path: p, source })
    };
    let manifest_text = read(dir.join(MANIFEST_FILE))?;
    let manifest = Manifest::parse(&manifest_text)?;
    let cargo_toml = read(dir.join("Cargo.toml"))?;
    let package = cargo_package_name(&cargo_toml).ok_or_else(|| BuildError::Io {
        path: dir.join("Cargo.toml"),
        source: std::io::Error::other("no [package] name"),
    })?;
    let uses_sdk = cargo_toml
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("dependencies")?.get("kiln-plugin-sdk").cloned())
        .is_some();
    if uses_sdk && !SDK_WIT_VERSIONS.contains(&manifest.wit.as_str()) {
        return Err(BuildError::Manifest(manifest::ManifestError::Field {
            field: "wit",
            reason: format!(
                "{:?} is not a version the SDK can build against (it knows {})",
                manifest.wit,
                SDK_WIT_VERSIONS.join(", ")
            ),
        }));
    }
    Ok(PluginCrate {
        dir: dir.to_path_buf(),
        package,
        manifest,
        manifest_text,
        uses_sdk,
    })
}

/// Every plugin crate directly under each of `parents`, sorted by package.
pub fn discover(parents: &[PathBuf]) -> Result<Vec<PluginCrate>, BuildError> {
    let mut found = Vec::new();
    for parent in parents {
        let entries = std::fs::read_dir(parent).map_err(|source| BuildError::Io {
            path: parent.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| BuildError::Io {
                path: parent.clone(),
                source,
            })?;
            if entry.path().join(MANIFEST_FILE).is_file() {
                found.push(load_crate(&entry.path())?);
            }
        }
    }
    found.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(found)
}

fn cargo_package_name(cargo_toml: &str) -> Option<String> {
    let value: toml::Table = cargo_toml.parse().ok()?;
    value
        .get("package")?
        .get("name")?
        .as_str()
        .map(String::from)
}

/// How to invoke cargo for the wasm target on this machine.
#[derive(Debug, Clone)]
enum Toolchain {
    /// The current (rustup) toolchain has the wasm32 standard library.
    Installed { cargo: OsString },
    /// Debian's `rustc-web` packages: build the standard library from source.
    DebianBuildStd,
}

fn detect_toolchain() -> Result<Toolchain, BuildError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    if let Ok(out) = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
        && out.status.success()
    {
        let libdir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_rlibs(&libdir) {
            return Ok(Toolchain::Installed { cargo });
        }
    }
    if Path::new("/usr/bin/cargo").is_file() && Path::new("/usr/bin/rustc").is_file() {
        return Ok(Toolchain::DebianBuildStd);
    }
    Err(BuildError::NoWasmToolchain)
}

fn has_rlibs(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore"))
        })
        .unwrap_or(false)
}

/// Builds plugin crates of one cargo workspace.
#[derive(Debug, Clone)]
pub struct Builder {
    workspace_root: PathBuf,
    target_dir: PathBuf,
}

impl Builder {
    /// A builder for the workspace at `workspace_root`, compiling into
    /// `target_dir` (kept between builds so rebuilds are incremental).
    pub fn new(workspace_root: impl Into<PathBuf>, target_dir: impl Into<PathBuf>) -> Self {
        Builder {
            workspace_root: workspace_root.into(),
            target_dir: target_dir.into(),
        }
    }

    /// Compile `crates` in one cargo invocation and write `<name>.wasm`
    /// components (named by manifest name) into `out_dir`.
    pub fn build(
        &self,
        crates: &[PluginCrate],
        out_dir: &Path,
    ) -> Result<Vec<BuiltPlugin>, BuildError> {
        if crates.is_empty() {
            return Ok(Vec::new());
        }
        let toolchain = detect_toolchain()?;
        let mut cmd = match &toolchain {
            Toolchain::Installed { cargo } => Command::new(cargo),
            Toolchain::DebianBuildStd => {
                let mut c = Command::new("/usr/bin/cargo");
                // Debian's rustc-web is a different compiler from the host's:
                // keep rustup's shims and variables out of its way.
                c.env("PATH", "/usr/bin:/bin")
                    .env("RUSTC", "/usr/bin/rustc")
                    .env("RUSTC_BOOTSTRAP", "1");
                c.env_remove("RUSTUP_TOOLCHAIN")
                    .env_remove("RUSTUP_HOME")
                    .env_remove("CARGO_HOME");
                c
            }
        };
        cmd.current_dir(&self.workspace_root)
            .arg("build")
            .arg("--manifest-path")
            .arg(self.workspace_root.join("Cargo.toml"))
            .args([
                "--target",
                WASM_TARGET,
                "--profile",
                PLUGIN_PROFILE,
                "--target-dir",
            ])
            .arg(&self.target_dir);
        for setting in PLUGIN_PROFILE_CONFIG {
            cmd.args(["--config", setting]);
        }
        if matches!(toolchain, Toolchain::DebianBuildStd) {
            cmd.arg("-Zbuild-std=std,panic_abort");
        }
        for c in crates {
            cmd.args(["-p", &c.package]);
        }
        // One plugin of its own: its manifest picks the SDK's contract
        // version. (Kiln's own plugins are built together; each crate's
        // Cargo.toml picks it, and the host checks it against the manifest.)
        if let [c] = crates
            && c.uses_sdk
        {
            cmd.args([
                "--features",
                &format!("kiln-plugin-sdk/wit-{}", c.manifest.wit.replace('.', "-")),
            ]);
        }
        // When invoked from a build script, the outer cargo's settings for the
        // host (flags, clippy as a wrapper, its target) must not leak in.
        for var in [
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC_WORKSPACE_WRAPPER",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_MANIFEST_DIR",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd.output().map_err(|source| BuildError::Io {
            path: "cargo".into(),
            source,
        })?;
        if !out.status.success() {
            return Err(BuildError::Cargo {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        std::fs::create_dir_all(out_dir).map_err(|source| BuildError::Io {
            path: out_dir.into(),
            source,
        })?;
        let wasm_dir = self.target_dir.join(WASM_TARGET).join(PLUGIN_PROFILE);
        let mut built = Vec::with_capacity(crates.len());
        for c in crates {
            let core_path = wasm_dir.join(format!("{}.wasm", c.package.replace('-', "_")));
            let core = std::fs::read(&core_path).map_err(|source| BuildError::Io {
                path: core_path.clone(),
                source,
            })?;
            let component = componentize(&c.package, &core, &c.manifest_text)?;
            let path = out_dir.join(format!("{}.wasm", c.manifest.name));
            write_if_changed(&path, &component)?;
            built.push(BuiltPlugin {
                source: c.clone(),
                path,
            });
        }
        Ok(built)
    }
}

/// Rewriting an unchanged file would bump its mtime and make cargo rebuild
/// everything that embeds it.
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).ok().as_deref() == Some(bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).map_err(|source| BuildError::Io {
        path: path.into(),
        source,
    })
}

/// Turn a core module built with `wit-bindgen` into a component and append
/// `manifest_text` as the `kiln:manifest` custom section.
pub fn componentize(
    package: &str,
    core: &[u8],
    manifest_text: &str,
) -> Result<Vec<u8>, BuildError> {
    let err = |e: &dyn std::fmt::Display| BuildError::Componentize {
        package: package.into(),
        message: format!("{e:#}"),
    };
    let mut component = wit_component::ComponentEncoder::default()
        .module(core)
        .map_err(|e| err(&e))?
        .validate(true)
        .encode()
        .map_err(|e| err(&e))?;
    append_manifest(&mut component, manifest_text);
    Ok(component)
}

/// Append the manifest as a custom section. Custom sections may follow any
/// section of a component, and the runtime ignores them.
pub fn append_manifest(component: &mut Vec<u8>, manifest_text: &str) {
    use wasm_encoder::{ComponentSection, CustomSection, Encode};
    let section = CustomSection {
        name: MANIFEST_SECTION.into(),
        data: manifest_text.as_bytes().into(),
    };
    component.push(ComponentSection::id(&section));
    section.encode(component);
}
