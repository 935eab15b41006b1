//! `kiln github manifest|check`: connecting Kiln to GitHub as a GitHub App
//! (README, "Connect GitHub"). The permissions and events are
//! `kiln::forge::github::app`'s, so the manifest, the check and the runs
//! agree on what the App needs.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use kiln::forge::RepoRef;
use kiln::forge::github::app;

use super::local_forge::LocalArgs;
use super::run::load_config;

/// `kiln github ...`.
#[derive(Debug, Subcommand)]
pub enum GitHubCommand {
    /// Print the GitHub App manifest (JSON for GitHub's manifest flow): the
    /// permissions and webhook events Kiln needs, webhooks to URL/webhooks/github.
    Manifest {
        /// Kiln's public URL, as GitHub will reach it (the App's home page;
        /// webhooks go to URL/webhooks/github).
        #[arg(long, env = "KILN_PUBLIC_URL")]
        url: String,
        /// The App's name on GitHub (unique across GitHub).
        #[arg(long, default_value = "kiln")]
        name: String,
    },
    /// Check the App `[github]` configures with GitHub's API: its key, its
    /// permissions and events, its installations, and (with -R) that it
    /// covers the repository. Exit 1 naming each thing that is missing.
    Check {
        /// The config file (default: ./kiln.toml).
        #[arg(long, short = 'c', env = "KILN_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Runs a `kiln github` command.
pub async fn run(cmd: GitHubCommand, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        GitHubCommand::Manifest { url, name } => {
            let parsed = url::Url::parse(&url).with_context(|| format!("--url {url:?}"))?;
            anyhow::ensure!(
                parsed.scheme() == "https" || parsed.scheme() == "http",
                "--url {url:?} must be an http(s) URL GitHub can reach"
            );
            println!("{:#}", app::manifest(&name, &url));
            Ok(ExitCode::SUCCESS)
        }
        GitHubCommand::Check { config } => {
            let config = load_config(config.as_deref())?;
            let github = config.github.as_ref().context(
                "no [github] section in kiln.toml: see \"Connect GitHub\" in the README",
            )?;
            let repo = local.repo.as_deref().map(RepoRef::parse).transpose()?;
            let report = app::check(github, &config.secrets, repo.as_ref()).await;
            print!("{report}");
            if report.ok() {
                println!(
                    "GitHub App ready{}",
                    repo.map(|r| format!(" for {r}")).unwrap_or_default()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::from(1))
            }
        }
    }
}
