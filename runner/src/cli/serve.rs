//! `kiln serve`: the runner as a service — the store, a worker pool that
//! executes queued runs, the local forge's events and the webhook intake
//! (when a webhook secret is configured) driving runs through one router,
//! and the runner API with its dashboard, on one address.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kiln::app::{self, AppOptions};
use kiln::forge::github::GitHub;
use kiln::forge::{Forge, ForgeResolver, RepoRef};
use kiln::model::{ModelConfig, ScriptedProvider, build_provider};
use kiln::service::Runner;
use kiln::store::{RecoveryPolicy, RunStore};

use super::local_forge::LocalArgs;
use super::run::load_config;

/// `kiln serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:7878", env = "KILN_LISTEN")]
    pub listen: SocketAddr,
    /// Runs executed at once.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Re-queue runs a crashed runner left behind (otherwise they fail with
    /// "runner restarted").
    #[arg(long)]
    pub requeue: bool,
    /// The config file (default: ./kiln.toml if it exists).
    #[arg(long, short = 'c', env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replay this model script for every run instead of calling a model.
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Replay `DIR/<role>.json` for each role's runs (roles without a file
    /// use --script or the configured model): for demos and tests.
    #[arg(long, value_name = "DIR")]
    pub scripts: Option<PathBuf>,
    /// Accept and store webhook deliveries (answering 202 as usual) but
    /// process none of them: GitHub's deliveries are kept while runs must
    /// not start (maintenance, a broken model key). A `kiln serve` without
    /// the flag on the same store processes them, each once.
    #[arg(long)]
    pub hold_deliveries: bool,
}

/// One scripted provider per `<role>.json` in `dir`, each replayed from its
/// start for every run of the role.
pub fn role_scripts(
    dir: &std::path::Path,
    config: &kiln::config::KilnConfig,
) -> anyhow::Result<
    std::collections::HashMap<kiln::config::Role, Arc<dyn kiln::model::ModelProvider>>,
> {
    let mut out = std::collections::HashMap::new();
    for role in config.known_roles() {
        let file = dir.join(format!("{role}.json"));
        if file.is_file() {
            let provider = ScriptedProvider::load(&file)?.per_conversation();
            out.insert(
                role,
                Arc::new(provider) as Arc<dyn kiln::model::ModelProvider>,
            );
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "--scripts {}: no <role>.json for any role ({})",
            dir.display(),
            config
                .known_roles()
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(out)
}

/// Run the service until interrupted.
pub async fn serve(args: ServeArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(args.config.as_deref())?;
    let data_dir = local.data_dir()?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let role_models = match &args.scripts {
        Some(dir) => role_scripts(dir, &config)?,
        None => Default::default(),
    };
    let model = match (&args.script, &config.model) {
        // Every run replays the script from its start (one provider serves all).
        (Some(s), _) => Some(Arc::new(ScriptedProvider::load(s)?.per_conversation()) as _),
        (None, Some(m)) => Some(build_provider(m, &config.secrets)?),
        (None, None) => match ModelConfig::from_env() {
            Some((m, secrets)) => {
                config.secrets.extend(secrets);
                Some(build_provider(&m, &config.secrets)?)
            }
            None => {
                if role_models.is_empty() {
                    eprintln!("kiln serve: no model configured; runs will fail until one is");
                }
                None
            }
        },
    };
    // Stable per data directory: a restarted service removes its own orphans
    // and never those of a service on another data directory; a Postgres
    // store names it in the leases of the runs this runner claims.
    let runner_id = app::serve_runner_id(&data_dir);
    // Runner hosts sharing a Postgres store may use the same data path:
    // the host name keeps their lease names apart.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let lease_name = format!("{runner_id}@{}", host.trim());
    let store: Arc<dyn RunStore> = kiln::store::open(&config, &data_dir, &lease_name)
        .await
        .context("opening the store")?;
    let budgets = app::budgets(&config);
    let services = super::run::with_progress(AppOptions {
        config: config.clone(),
        data_dir: data_dir.clone(),
        recipes: app::recipes_dir(),
        runner_id: runner_id.clone(),
        model,
        role_models,
        budgets,
        history: Some(store.clone()),
    })
    .await?;
    let gate = services.gate.clone();
    let github = match &config.github {
        Some(g) => Some(GitHub::from_config(g, &config.secrets)?),
        None => None,
    };
    let forge_root = local.forge_root()?;
    let board_root = forge_root.clone();
    // `local/*` repositories live on the local forge; everything else on GitHub.
    let local_forges = kiln::forge::local::LocalForges::new(&forge_root);
    let forges: ForgeResolver = Arc::new(move |repo: &RepoRef| -> Option<Arc<dyn Forge>> {
        if repo.owner == "local" {
            local_forges
                .get(repo)
                .map(|f| Arc::new(f) as Arc<dyn Forge>)
        } else {
            github
                .as_ref()
                .map(|g| Arc::new(g.forge(repo.clone())) as Arc<dyn Forge>)
        }
    });
    // Boards: the local forge's repositories (listed afresh on each request)
    // and GitHub ones with runs, read through the same resolver.
    let mut board = kiln::api::board::BoardSource::new(
        forges.clone(),
        Arc::new(move || kiln::forge::local::list_repos(&board_root)),
    );
    board.web_url = config
        .github
        .as_ref()
        .map(|g| kiln::api::board::github_web_url(&g.api_url));
    let runner = Runner::new(store.clone(), services, forges.clone());
    let recovery = RecoveryPolicy {
        requeue: args.requeue,
        ..RecoveryPolicy::default()
    };
    runner.start(args.workers, recovery).await?;
    // Several runners on one Postgres store: leases and their recovery.
    if let Some(shared) = &config.store {
        runner.spawn_heartbeat(shared.heartbeat(), recovery);
    }
    // `[[schedules]]`: fired by the same store, so a restart never fires a
    // due time twice.
    if !config.schedules.is_empty() {
        let schedules = kiln::schedule::Scheduler::parse(&config.schedules)?;
        let root = forge_root.clone();
        let wake = runner.clone();
        kiln::schedule::Scheduler::new(
            schedules,
            store.clone(),
            Arc::new(move || kiln::forge::local::list_repos(&root).unwrap_or_default()),
            Arc::new(kiln::schedule::SystemClock),
        )
        .spawn(Arc::new(move || wake.notify_queued()));
    }
    // One dispatcher for every forge: the local forge's events and GitHub's
    // webhooks go through the same router, trust check and run cap.
    let wake_runner = runner.clone();
    // Webhook deliveries are claimed from the store in the runner's name:
    // what a dead predecessor accepted and did not process is taken at once.
    let dispatcher = kiln::intake::Dispatcher::start_with(
        store.clone(),
        forges,
        &config.intake,
        kiln::intake::RunnerHooks {
            control: Some(runner.clone() as Arc<dyn kiln::control::RunControl>),
            wake: Some(Arc::new(move || wake_runner.notify_queued())),
        },
        kiln::intake::DeliveryOptions {
            runner: runner_id.clone(),
            hold: args.hold_deliveries,
        },
    );
    kiln::intake::local::start(
        dispatcher.clone(),
        kiln::intake::local::PumpOptions {
            forge_root: local.forge_root()?,
            consumer: runner_id.clone(),
            idle_poll: kiln::intake::local::IDLE_POLL,
            only_repo: None,
        },
    )?;
    if args.hold_deliveries && config.intake.intake.webhook_secret.is_none() {
        anyhow::bail!(
            "--hold-deliveries: this runner takes no webhooks ([intake] webhook_secret is not set), \
             so there is nothing to hold"
        );
    }
    let mut extra = axum::Router::new();
    if let Some(name) = &config.intake.intake.webhook_secret {
        let secret = config
            .secrets
            .iter()
            .find(|s| &s.name == name)
            .with_context(|| format!("[intake] webhook_secret names no [[secrets]] entry {name}"))?
            .read_value()?;
        let intake = kiln::intake::Intake::with_dispatcher(dispatcher, &config.intake, secret)?;
        extra = extra.merge(kiln::intake::router(intake));
    }
    // The key the store signs run ledgers with (made in the data directory).
    let ledger_key = kiln::ledger::HostKey::load_or_create(&data_dir)
        .context("the ledger's host key")?
        .public();
    let state = kiln::api::ApiState::new(store, runner.clone(), Arc::new(gate.redactor().clone()))
        .with_extra(extra)
        .with_board(board)
        .with_ledger_key(ledger_key);
    let app = kiln::api::router(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "kiln serve: listening on http://{} (dashboard at /, API at /runs, OpenAPI at /openapi.json); data in {}; sandboxes labelled dev.kiln.runner-id={runner_id}",
        listener.local_addr()?,
        data_dir.display()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
