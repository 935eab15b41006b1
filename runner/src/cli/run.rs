//! `kiln run`: one role, once, on an issue or pull request of the local
//! forge, printing its events live (or queued for `kiln serve`).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use kiln::app::{self, AppOptions};
use kiln::config::{KilnConfig, Role};
use kiln::forge::Forge;
use kiln::model::{ModelConfig, ModelProvider, ScriptedProvider, build_provider};
use kiln::policy::Trust;
use kiln::session::{EventKind, EventSink, RunEvent};
use kiln::worker::{LiveRun, RunEnd, RunRequest, RunSummary, RunTrigger, Services, execute};

use super::local_forge::{LocalArgs, local_user};

/// Options every command that runs roles shares.
#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The config file (default: ./kiln.toml if it exists, else built-in defaults).
    #[arg(long, short = 'c', env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Replay this model script instead of calling a model (see runner/demo/*.json).
    #[arg(long)]
    pub script: Option<PathBuf>,
}

/// `kiln run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The role to run: triage, spec, implementation, review, or a custom
    /// role configured with [[roles]] in kiln.toml.
    #[arg(long)]
    pub role: Role,
    /// The issue (or, for review, the pull request) number.
    #[arg(long, alias = "pr")]
    pub issue: u64,
    /// Queue the run for `kiln serve` to execute (watch it with `kiln watch
    /// <run>` or on the dashboard) instead of running it here: through the
    /// runner API when KILN_URL is set, else into the local data dir's store.
    #[arg(long)]
    pub queue: bool,
    /// The runner API to queue through (with --queue); unset: the local store.
    #[arg(long, env = "KILN_URL")]
    pub url: Option<String>,
    /// An operator token for the runner API (kiln_…).
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub runner: RunnerArgs,
}

/// The config: the file given, ./kiln.toml, or the defaults.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<KilnConfig> {
    match path {
        Some(p) => Ok(KilnConfig::load(p)?),
        None if Path::new("kiln.toml").is_file() => Ok(KilnConfig::load(Path::new("kiln.toml"))?),
        None => Ok(KilnConfig::default()),
    }
}

/// The model: a script if given, else `[model]`, else the environment.
pub(super) fn model(
    config: &mut KilnConfig,
    script: Option<&Path>,
    fallback_script: Option<(&str, &str)>,
) -> anyhow::Result<Arc<dyn ModelProvider>> {
    if let Some(s) = script {
        return Ok(Arc::new(ScriptedProvider::load(s)?));
    }
    if let Some(m) = config.model.clone() {
        return Ok(build_provider(&m, &config.secrets)?);
    }
    if let Some((m, secrets)) = ModelConfig::from_env() {
        // Keys from the environment are redacted like configured secrets.
        config.secrets.extend(secrets);
        return Ok(build_provider(&m, &config.secrets)?);
    }
    match fallback_script {
        Some((name, text)) => Ok(Arc::new(ScriptedProvider::from_json(name, text)?)),
        None => bail!(
            "no model is configured: pass --script FILE, add a [model] section to kiln.toml, \
             or set ANTHROPIC_API_KEY (or OPENAI_BASE_URL / OPENAI_API_KEY)"
        ),
    }
}

/// Prints a run's events as they happen.
struct Printer {
    prefix: String,
}

impl EventSink for Printer {
    fn record(&self, kind: EventKind, message: String) {
        let tag = match &kind {
            EventKind::Policy { verdict, .. } => format!("policy:{verdict}"),
            EventKind::Proposal { effect } => format!("effect {effect}"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_default(),
        };
        let first = message.lines().next().unwrap_or_default();
        let more = if message.lines().nth(1).is_some() {
            " …"
        } else {
            ""
        };
        println!("{} {tag:>14}  {first}{more}", self.prefix);
    }
}

/// Keeps every event too, for the transcript.
struct Tee {
    printer: Printer,
    memory: kiln::session::MemoryEvents,
}

impl EventSink for Tee {
    fn record(&self, kind: EventKind, message: String) {
        self.printer.record(kind.clone(), message.clone());
        self.memory.record(kind, message);
    }
}

fn run_id(role: Role, number: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    // Container names derive from the run id: two CLI processes in the same
    // second must not collide.
    format!("{}-{number}-{secs}-{}", role.as_str(), std::process::id())
}

/// Run one role once and write its transcript.
pub(super) async fn run_one(
    services: &Services,
    forge: Arc<dyn Forge>,
    role: Role,
    number: u64,
    trigger: RunTrigger,
    data_dir: &Path,
) -> anyhow::Result<RunSummary> {
    let id = run_id(role, number);
    let req = RunRequest {
        script: None,
        run_id: id.clone(),
        repo: forge.repo().clone(),
        role,
        number,
        trigger,
        // The operator at the keyboard started it.
        trust: Trust::Trusted,
        actor: None,
        instructions: None,
        continue_from: Vec::new(),
    };
    let sink = Arc::new(Tee {
        printer: Printer {
            prefix: format!("[{}]", role.as_str()),
        },
        memory: kiln::session::MemoryEvents::new(),
    });
    let summary = execute(services, forge, &req, sink.clone(), &LiveRun::new()).await;
    let dir = data_dir.join("runs").join(&id);
    std::fs::create_dir_all(&dir)?;
    let transcript = dir.join("events.jsonl");
    let lines: Vec<String> = sink
        .memory
        .snapshot()
        .iter()
        .map(|e: &RunEvent| serde_json::to_string(e).unwrap_or_default())
        .collect();
    std::fs::write(&transcript, lines.join("\n") + "\n")?;
    // The `finished` event above said how the run ended; this says where
    // to read it again.
    println!(
        "[{}] transcript {}, handback bundle {}",
        role.as_str(),
        transcript.display(),
        dir.join("handback.bundle").display()
    );
    Ok(summary)
}

pub(super) async fn services(
    config: KilnConfig,
    data_dir: &Path,
    model: Arc<dyn ModelProvider>,
) -> anyhow::Result<Services> {
    let budgets = app::budgets(&config);
    with_progress(AppOptions {
        config,
        data_dir: data_dir.to_path_buf(),
        recipes: app::recipes_dir(),
        // Per process: start-up orphan removal is by runner id, and two
        // `kiln run` / `kiln demo` at once must not remove each other's sandboxes.
        runner_id: kiln::app::cli_runner_id(),
        model: Some(model),
        role_models: Default::default(),
        budgets,
        history: None,
    })
    .await
}

/// [`app::services`], showing its long steps (compiling the role plugins,
/// building the sandbox image the first time) as they happen.
pub(super) async fn with_progress(opts: AppOptions) -> anyhow::Result<Services> {
    let progress = super::image::Progress::new();
    progress.start("kiln", "compiling the role plugins, connecting to Docker");
    let services = app::services(opts, &|e| progress.image(e)).await;
    progress.finish();
    Ok(services?)
}

/// Refuses a role that is neither built in nor configured, naming both lists.
fn known_role(config: &KilnConfig, role: Role) -> anyhow::Result<()> {
    if config.known_roles().contains(&role) {
        return Ok(());
    }
    let builtin: Vec<String> = Role::ALL.iter().map(ToString::to_string).collect();
    anyhow::bail!(
        "role `{role}` is neither built in ({}) nor configured with [[roles]] in kiln.toml",
        builtin.join(", ")
    )
}

/// `kiln run`: one role on one issue of the local forge.
pub async fn run(args: RunArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let role = args.role;
    if args.queue {
        // Read first: an unreadable script queues nothing.
        let script = match &args.runner.script {
            Some(f) => Some(std::fs::read_to_string(f).with_context(|| {
                format!(
                    "nothing was queued: cannot read the model script {}",
                    f.display()
                )
            })?),
            None => None,
        };
        if let Some(url) = &args.url {
            return queue_remote(url, args.token.clone(), role, args.issue, script, local).await;
        }
        eprintln!(
            "KILN_URL is not set: queuing into the local store at {} (a `kiln serve` on this data dir runs it)",
            local.data_dir()?.display()
        );
        let config = load_config(args.runner.config.as_deref())?;
        known_role(&config, role)?;
        return queue(role, args.issue, script, local).await;
    }
    let mut config = load_config(args.runner.config.as_deref())?;
    known_role(&config, role)?;
    let model = model(&mut config, args.runner.script.as_deref(), None)?;
    let data_dir = local.data_dir()?;
    let forge: Arc<dyn Forge> = Arc::new(local.open()?);
    let services = services(config, &data_dir, model).await?;
    let summary = run_one(
        &services,
        forge,
        role,
        args.issue,
        RunTrigger::Manual,
        &data_dir,
    )
    .await?;
    Ok(match summary.state {
        RunEnd::Succeeded | RunEnd::AwaitingApproval => ExitCode::SUCCESS,
        RunEnd::Blocked | RunEnd::Failed | RunEnd::Cancelled => ExitCode::from(1),
    })
}

/// Queue a run through the runner API at `url`, which checks the target
/// and the script before it queues anything.
async fn queue_remote(
    url: &str,
    token: Option<String>,
    role: Role,
    number: u64,
    script: Option<String>,
    local: &LocalArgs,
) -> anyhow::Result<ExitCode> {
    let Some(repo) = &local.repo else {
        anyhow::bail!(
            "queuing through the runner API at {url} needs the repository: pass -R OWNER/NAME (or set KILN_REPO)"
        );
    };
    eprintln!("queuing through the runner API at {url}");
    let client = kiln::api::client::Client::new(url, token)?;
    let run = client
        .queue(repo, role.as_str(), number, script.as_deref())
        .await
        .with_context(|| format!("nothing was queued: {role} on {repo}#{number}"))?;
    println!(
        "queued run {} ({role} on {}#{number}); follow it with `kiln watch {}`",
        run.id, run.repo, run.id
    );
    Ok(ExitCode::SUCCESS)
}

/// Put a run in the local store's queue, as the operator at the keyboard,
/// once its target is checked.
async fn queue(
    role: Role,
    number: u64,
    script: Option<String>,
    local: &LocalArgs,
) -> anyhow::Result<ExitCode> {
    use kiln::store::{NewRun, Trigger, TriggerKind};
    if let Some(text) = &script {
        ScriptedProvider::from_json("script", text)
            .context("nothing was queued: the model script")?;
    }
    let forge = local.open()?;
    kiln::forge::check_run_target(&forge, role, number)
        .await
        .context("nothing was queued")?;
    let store = super::token::open_store(local).await?;
    let id = store
        .enqueue_run(NewRun {
            script,
            repo: forge.repo().clone(),
            role,
            number,
            trigger: Trigger {
                kind: TriggerKind::Manual,
                actor: local_user(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await?;
    println!(
        "queued run {id} ({role} on {}#{number}); `kiln serve` executes it, `kiln watch {id}` follows it",
        forge.repo()
    );
    Ok(ExitCode::SUCCESS)
}
