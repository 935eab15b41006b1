//! Command-line interface: one module per command group.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod plugin;

/// Kiln: a self-hosted software factory runner. Issues flow through role
/// plugins (triage, spec, implementation, review) that run as WebAssembly
/// components, each in its own sandbox, and come out as draft pull requests.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, check and list role plugins (WebAssembly components).
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
}

/// Run the parsed command; the exit code says whether it succeeded.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Plugin(cmd) => plugin::run(cmd),
    }
}
