//! Command-line interface: one module per command group, so each group can
//! grow (or be added) without touching the others.
use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::{Parser, Subcommand, ValueEnum};

mod attach;
mod demo;
mod github;
mod image;
mod ledger;
mod local_forge;
mod plugin;
mod remote;
mod run;
mod schedule;
mod serve;
mod token;

/// Kiln: a self-hosted software factory runner. Issues flow through role
/// plugins (triage, spec, implementation, review, verification) that run as WebAssembly
/// components, each in its own sandbox, and come out as draft pull requests.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    local: local_forge::LocalArgs,
    /// How log lines on stderr look: `text` (coloured only on a terminal) or
    /// `json` (one JSON object per line, for a service's log collector).
    /// Which lines: KILN_LOG (default `warn`), e.g. KILN_LOG=info.
    #[arg(
        long,
        global = true,
        env = "KILN_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
}

/// The form of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, check and list role plugins (WebAssembly components).
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Build sandbox images from sandbox-images/ (no registry needed).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run one role once on an issue (or, for review, a pull request) of the local forge.
    Run(run::RunArgs),
    /// Build what is missing, create a sample repository on the local forge and
    /// drive it through triage → spec → implementation → review, through forge
    /// events as `kiln serve` would.
    Demo(run::RunnerArgs),
    /// Run the service: store, worker pool, webhook intake, runner API and dashboard.
    Serve(serve::ServeArgs),
    /// The `[[schedules]]` of kiln.toml, each with its next and last firing.
    Schedules(schedule::SchedulesArgs),
    /// Queue the outer loop for a role now: read its runs and the
    /// maintainers' corrections, and propose a change to its skill override.
    Improve(schedule::ImproveArgs),
    /// Repositories on the local forge (create one from a directory).
    #[command(subcommand)]
    Repo(local_forge::RepoCommand),
    /// Issues on the local forge: open, list, show, label, comment, close.
    #[command(subcommand)]
    Issue(local_forge::IssueCommand),
    /// Pull requests on the local forge: list, show (with reviews), diff.
    #[command(subcommand)]
    Pr(local_forge::PrCommand),
    #[command(flatten)]
    Remote(remote::RemoteCommand),
    /// Connect a GitHub App: print its manifest, check its permissions and installations.
    #[command(subcommand)]
    Github(github::GitHubCommand),
    /// API tokens in the local store: create, list, revoke.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

impl Cli {
    /// Sends log lines to stderr in the chosen format. Colour codes only
    /// reach a terminal: in a file or a pipe they are noise.
    pub fn init_logging(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
            .unwrap_or_else(|_| "warn".into());
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
            LogFormat::Json => builder.json().with_ansi(false).init(),
        }
    }

    /// Run the chosen command; the exit code says whether it succeeded.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Plugin(cmd) => plugin::run(cmd).await,
            Command::Image(cmd) => cmd.run().await.map(|()| ExitCode::SUCCESS),
            Command::Run(args) => run::run(args, &self.local).await,
            Command::Serve(args) => serve::serve(args, &self.local).await,
            Command::Schedules(args) => schedule::schedules(args, &self.local).await,
            Command::Improve(args) => schedule::improve(args, &self.local).await,
            Command::Demo(args) => demo::demo(args, &self.local).await,
            Command::Repo(cmd) => local_forge::repo(cmd, &self.local).await,
            Command::Issue(cmd) => local_forge::issue(cmd, &self.local).await,
            Command::Pr(cmd) => local_forge::pr(cmd, &self.local).await,
            Command::Remote(cmd) => remote::run(cmd, &self.local).await,
            Command::Token(cmd) => token::run(cmd, &self.local).await,
            Command::Github(cmd) => github::run(cmd, &self.local).await,
        }
    }
}
