//! `kiln schedules` (each `[[schedules]]` entry with its next and last
//! firing) and `kiln improve` (the outer loop's run, queued on demand).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use kiln::config::Role;
use kiln::forge::Forge as _;
use kiln::policy::Trust;
use kiln::schedule::{ON_DEMAND, Scheduler, SystemClock, check_improve_args, parse_since};
use kiln::signals::rfc3339;
use kiln::store::{NewRun, RunStore, Trigger, TriggerKind};

use super::local_forge::{LocalArgs, local_user};
use super::run::load_config;

/// `kiln schedules`.
#[derive(Debug, Args)]
pub struct SchedulesArgs {
    /// The config file (default: ./kiln.toml if it exists).
    #[arg(long, short = 'c', env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `kiln improve`.
#[derive(Debug, Args)]
pub struct ImproveArgs {
    /// The role whose skill to improve (triage, spec, implementation,
    /// review, verification, or a custom role).
    pub role: Role,
    /// How far back to read its runs and the corrections people made (7d, 36h).
    #[arg(long, default_value = "7d")]
    pub since: String,
    /// The runner API to queue through; unset: the local data dir's store.
    #[arg(long, env = "KILN_URL")]
    pub url: Option<String>,
    /// An operator token for the runner API (kiln_…).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Prints each schedule with its next and last firing.
pub async fn schedules(args: SchedulesArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    if config.schedules.is_empty() {
        println!("no [[schedules]] in the config");
        return Ok(ExitCode::SUCCESS);
    }
    let store: Arc<dyn RunStore> = super::token::open_store(local).await?;
    let scheduler = Scheduler::new(
        Scheduler::parse(&config.schedules)?,
        store,
        Arc::new(Vec::new),
        Arc::new(SystemClock),
    );
    println!(
        "{:<20} {:<16} {:<14} {:<24} {:<21} LAST FIRED",
        "NAME", "CRON (UTC)", "ROLE", "REPO", "NEXT"
    );
    for s in scheduler.status().await? {
        let last = match s.last {
            Some((due, at)) => format!("{} (due {})", rfc3339(at), rfc3339(due)),
            None => "never".into(),
        };
        println!(
            "{:<20} {:<16} {:<14} {:<24} {:<21} {last}",
            s.name,
            s.cron,
            s.role.as_str(),
            s.repo,
            s.next_ms.map(rfc3339).unwrap_or_else(|| "never".into()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues an `improve` run of `ROLE` on the repository, as a schedule would.
pub async fn improve(args: ImproveArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let run_args = vec![
        ("target".to_string(), args.role.to_string()),
        ("since".to_string(), args.since.clone()),
    ];
    parse_since(&args.since).map_err(anyhow::Error::msg)?;
    check_improve_args(&run_args).map_err(anyhow::Error::msg)?;
    if let Some(url) = &args.url {
        let Some(repo) = &local.repo else {
            anyhow::bail!(
                "queuing through the runner API at {url} needs the repository: pass -R OWNER/NAME (or set KILN_REPO)"
            );
        };
        let client = kiln::api::client::Client::new(url, args.token.clone())?;
        let run = client
            .queue_improve(repo, &run_args)
            .await
            .with_context(|| format!("nothing was queued: improve {} on {repo}", args.role))?;
        println!(
            "queued run {} (improve {} on {}, last {}); follow it with `kiln watch {}`",
            run.id, args.role, run.repo, args.since, run.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let forge = local.open()?;
    let store = super::token::open_store(local).await?;
    let id = store
        .enqueue_run(NewRun {
            script: None,
            repo: forge.repo().clone(),
            role: Role::Improve,
            number: 0,
            trigger: Trigger {
                kind: TriggerKind::Schedule {
                    name: ON_DEMAND.into(),
                    args: run_args,
                },
                actor: local_user(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await?;
    println!(
        "queued run {id} (improve {} on {}, last {}); `kiln serve` executes it, `kiln watch {id}` follows it",
        args.role,
        forge.repo(),
        args.since
    );
    Ok(ExitCode::SUCCESS)
}
