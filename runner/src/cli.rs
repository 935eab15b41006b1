//! Argument parsing for `kiln`: one module per subcommand group, so each
//! group can grow (or be added) without touching the others.

mod image;

use clap::{Parser, Subcommand};

/// Kiln: a self-hosted software factory runner.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sandbox images.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Image(cmd) => cmd.run().await,
        }
    }
}
