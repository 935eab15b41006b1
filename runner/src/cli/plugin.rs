//! `kiln plugin ...`: build a plugin crate, check a component, list the
//! built-in plugins.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use kiln::plugin::{Capability, PluginHost, PluginLimits, builtin};

/// Plugin commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Print a plugin's world, imports, manifest and whether this host would
    /// load it. Exits 1 if the plugin would be refused.
    Check {
        /// The component (`.wasm`) to check.
        file: PathBuf,
    },
    /// Build a plugin crate (a crate with a kiln-plugin.toml) into a
    /// component, then check it.
    Build {
        /// The plugin crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the component (default: <dir>/target/kiln/<name>.wasm).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the role plugins built into this binary.
    List,
}

/// Run a plugin command.
pub fn run(cmd: PluginCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PluginCommand::Check { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            check(&file.display().to_string(), &bytes)
        }
        PluginCommand::Build { dir, output } => {
            let dir = dir
                .canonicalize()
                .with_context(|| format!("no such directory {}", dir.display()))?;
            let krate = kiln_plugin_build::load_crate(&dir)?;
            let target = dir.join("target").join("kiln");
            let out_dir = target.join("out");
            eprintln!(
                "building {} for {} ...",
                krate.package,
                kiln_plugin_build::WASM_TARGET
            );
            let built = kiln_plugin_build::Builder::new(&dir, &target)
                .build(std::slice::from_ref(&krate), &out_dir)?;
            let mut path = built[0].path.clone();
            if let Some(output) = output {
                std::fs::copy(&path, &output)
                    .with_context(|| format!("cannot write {}", output.display()))?;
                path = output;
            }
            println!("built {}", path.display());
            let bytes = std::fs::read(&path)?;
            check(&path.display().to_string(), &bytes)
        }
        PluginCommand::List => {
            if builtin::ROLE_PLUGINS.is_empty() {
                println!("no role plugins are built into this binary");
            }
            for (name, bytes) in builtin::ROLE_PLUGINS {
                println!("{name} ({} bytes)", bytes.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(label: &str, bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let host = PluginHost::new(PluginLimits::default())?;
    let (info, verdict) = match host.check(bytes) {
        Ok(v) => v,
        Err(e) => {
            println!("{label}\nverdict: REFUSED: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let m = &info.manifest;
    println!("{label}");
    println!(
        "plugin:       {} {} ({})",
        m.name,
        m.version,
        if m.description.is_empty() {
            "no description"
        } else {
            &m.description
        }
    );
    println!("role:         {}", m.role);
    println!("world:        kiln:role/role@{}", m.wit);
    println!("size:         {} bytes", info.size);
    println!("exports:      {}", info.exports.join(", "));
    println!(
        "capabilities: {}",
        if m.capabilities.is_empty() {
            "(none)".to_string()
        } else {
            m.capabilities.join(", ")
        }
    );
    println!("imports:");
    for import in &info.imports {
        println!("  {}", import.name);
        let interface = import
            .name
            .split('/')
            .nth(1)
            .and_then(|s| s.split('@').next())
            .unwrap_or("");
        for f in &import.functions {
            let need = match Capability::for_import(interface, f) {
                Ok(Some(cap)) if m.capabilities.iter().any(|c| c == cap.as_str()) => {
                    format!("needs {cap} (declared)")
                }
                Ok(Some(cap)) => format!("needs {cap} (NOT DECLARED)"),
                Ok(None) => "no capability needed".to_string(),
                Err(_) => "not part of the contract".to_string(),
            };
            println!("    {f:<24} {need}");
        }
    }
    match verdict {
        Ok(caps) => {
            let caps: Vec<_> = caps.iter().map(|c| c.as_str()).collect();
            println!(
                "verdict:      OK: loads with {}",
                if caps.is_empty() {
                    "no capabilities".to_string()
                } else {
                    caps.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("verdict:      REFUSED: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
