//! `kiln run` (one role, once) and `kiln demo` (a sample repository on the
//! local forge driven through triage → spec → implementation → review).
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use kiln::app::{self, AppOptions};
use kiln::config::{KilnConfig, Role};
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, RepoRef};
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
    /// Queue the run in the store for `kiln serve` to execute (watch it with
    /// `kiln watch <run>` or on the dashboard) instead of running it here.
    #[arg(long)]
    pub queue: bool,
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
fn model(
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
        run_id: id.clone(),
        repo: forge.repo().clone(),
        role,
        number,
        trigger,
        // The operator at the keyboard started it.
        trust: Trust::Trusted,
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
    println!(
        "[{}] {}: {} (transcript {}, handback bundle {})",
        role.as_str(),
        summary.state.as_str(),
        summary.reason,
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
    let progress = |p: kiln::sandbox::image::ImageProgress| eprintln!("image: {p:?}");
    Ok(app::services(
        AppOptions {
            config,
            data_dir: data_dir.to_path_buf(),
            recipes: app::recipes_dir(),
            // Per process: start-up orphan removal is by runner id, and two
            // `kiln run` / `kiln demo` at once must not remove each other's sandboxes.
            runner_id: kiln::app::cli_runner_id(),
            model: Some(model),
            budgets,
            history: None,
        },
        &progress,
    )
    .await?)
}

/// `kiln run`: one role on one issue of the local forge.
pub async fn run(args: RunArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let role = args.role;
    let mut config = load_config(args.runner.config.as_deref())?;
    if !config.known_roles().contains(&role) {
        anyhow::bail!(
            "role `{role}` is neither built in (triage, spec, implementation, review) nor configured with [[roles]] in kiln.toml"
        );
    }
    if args.queue {
        return queue(role, args.issue, local).await;
    }
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

/// Put a run in the store's queue, as the operator at the keyboard.
async fn queue(role: Role, number: u64, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    use kiln::store::{NewRun, RunStore, SqliteOptions, SqliteStore, Trigger, TriggerKind};
    let forge = local.open()?;
    let data_dir = local.data_dir()?;
    std::fs::create_dir_all(&data_dir)?;
    let store = SqliteStore::open(
        data_dir.join(super::token::STORE_FILE),
        SqliteOptions::default(),
    )
    .await?;
    let id = store
        .enqueue_run(NewRun {
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
        "queued run {id} ({role} on {}#{number}); `kiln serve` executes it",
        forge.repo()
    );
    Ok(ExitCode::SUCCESS)
}

/// The demo's files, built into the binary so `kiln demo` needs nothing on disk.
mod demo_files {
    pub const ISSUE: &str = include_str!("../../demo/issue.md");
    pub const README: &str = include_str!("../../demo/sample-repo/README.md");
    pub const SLUGIFY: &str = include_str!("../../demo/sample-repo/slugify.sh");
    pub const TESTS: &str = include_str!("../../demo/sample-repo/tests/run.sh");
    pub const TRIAGE: &str = include_str!("../../demo/triage.json");
    pub const SPEC: &str = include_str!("../../demo/spec.json");
    pub const IMPLEMENTATION: &str = include_str!("../../demo/implementation.json");
    pub const REVIEW: &str = include_str!("../../demo/review.json");
}

fn write_sample(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::write(dir.join("README.md"), demo_files::README)?;
    std::fs::write(dir.join("slugify.sh"), demo_files::SLUGIFY)?;
    std::fs::write(dir.join("tests/run.sh"), demo_files::TESTS)?;
    for f in ["slugify.sh", "tests/run.sh"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("\n=== {n}. {text}");
}

/// `kiln demo`.
pub async fn demo(args: RunnerArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(args.config.as_deref())?;
    let data_dir = local.data_dir()?;
    let root = local.forge_root()?;
    let user = local_user();
    // A real model, if one is configured, else each role's script.
    let real =
        args.script.is_none() && (config.model.is_some() || ModelConfig::from_env().is_some());
    let real_model = if real {
        Some(model(&mut config, None, None)?)
    } else {
        None
    };
    let pick = |name: &str, text: &str| -> anyhow::Result<Arc<dyn ModelProvider>> {
        match &real_model {
            Some(m) => Ok(m.clone()),
            None => Ok(Arc::new(ScriptedProvider::from_json(name, text)?)),
        }
    };
    println!(
        "Kiln demo: a sample repository on the local forge at {}, driven through \
         triage → spec → implementation → review.\nModel: {}",
        root.display(),
        match &real_model {
            Some(m) => m.name(),
            None =>
                "SCRIPTED — each role replays runner/demo/<role>.json; no model is called".into(),
        }
    );

    step(1, "Create the sample repository and its issue");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let repo = RepoRef::parse(&format!("local/slugify-demo-{stamp}"))?;
    let src = tempfile::tempdir()?;
    write_sample(src.path())?;
    let forge = LocalForge::create(&root, repo.clone(), &user, Some(src.path()))
        .await
        .context("creating the sample repository")?;
    let human = forge.acting_as(&user);
    let (title, body) = demo_files::ISSUE
        .trim_start_matches("# ")
        .split_once('\n')
        .unwrap_or(("Demo issue", demo_files::ISSUE));
    // Filed by a stranger (no permission on the repository): its text is
    // untrusted data for every role, whatever it asks for.
    let issue = forge
        .acting_as("reporter")
        .create_issue(kiln::forge::NewIssue {
            title: title.trim().to_string(),
            body: body.trim().to_string(),
            labels: vec![],
        })
        .await?;
    println!("{repo}: issue #{issue} \"{}\"", title.trim());
    let shared: Arc<dyn Forge> = Arc::new(forge.clone());

    let build = |m: Arc<dyn ModelProvider>| services(config.clone(), &data_dir, m);

    step(2, "Triage (read-only): labels and questions");
    let s = build(pick("triage.json", demo_files::TRIAGE)?).await?;
    let r = run_one(
        &s,
        shared.clone(),
        Role::Triage,
        issue,
        RunTrigger::Manual,
        &data_dir,
    )
    .await?;
    ensure_ok(&r, "triage")?;

    step(
        3,
        &format!("A maintainer ({user}) labels #{issue} ready-to-spec"),
    );
    human.add_labels(issue, &["ready-to-spec".into()]).await?;
    let s = build(pick("spec.json", demo_files::SPEC)?).await?;
    let r = run_one(
        &s,
        shared.clone(),
        Role::Spec,
        issue,
        RunTrigger::Label("ready-to-spec".into()),
        &data_dir,
    )
    .await?;
    ensure_ok(&r, "spec")?;
    let spec_pr = latest_pr(&forge).await?;

    step(
        4,
        &format!(
            "AUTO-APPROVED FOR THE DEMO: as {user}, merge spec PR #{spec_pr} and label #{issue} \
             plan-approved (in real use a human reviews the spec first)"
        ),
    );
    human.merge(spec_pr).await?;
    human.add_labels(issue, &["plan-approved".into()]).await?;

    step(
        5,
        "Implementation: fix, run the tests in the sandbox, draft PR",
    );
    let s = build(pick("implementation.json", demo_files::IMPLEMENTATION)?).await?;
    let r = run_one(
        &s,
        shared.clone(),
        Role::Implementation,
        issue,
        RunTrigger::Label("plan-approved".into()),
        &data_dir,
    )
    .await?;
    ensure_ok(&r, "implementation")?;
    let impl_pr = latest_pr(&forge).await?;

    step(6, &format!("Review of PR #{impl_pr}"));
    let s = build(pick("review.json", demo_files::REVIEW)?).await?;
    let r = run_one(
        &s,
        shared.clone(),
        Role::Review,
        impl_pr,
        RunTrigger::PullRequestOpened,
        &data_dir,
    )
    .await?;
    ensure_ok(&r, "review")?;

    step(
        7,
        &format!("The result: draft PR #{impl_pr} and its review"),
    );
    let pr = forge.get_pull_request(impl_pr).await?;
    println!(
        "#{impl_pr} {}{} ({} → {})\n\n{}\n",
        if pr.draft { "[draft] " } else { "" },
        pr.issue.title,
        pr.head_branch,
        pr.base_branch,
        pr.issue.body
    );
    println!("{}", pr.diff);
    for review in forge.list_reviews(impl_pr).await? {
        println!(
            "--- review by {} ({})\n{}",
            review.author, review.state, review.body
        );
        for c in review.comments {
            println!("  {}:{} [{:?}] {}", c.path, c.line, c.severity, c.body);
        }
    }
    println!(
        "\nExplore it: kiln issue show {issue} -R {repo}; kiln pr list -R {repo}; \
         kiln pr diff {impl_pr} -R {repo}"
    );
    Ok(ExitCode::SUCCESS)
}

fn ensure_ok(r: &RunSummary, what: &str) -> anyhow::Result<()> {
    match r.state {
        RunEnd::Succeeded => Ok(()),
        other => bail!("the {what} run ended {}: {}", other.as_str(), r.reason),
    }
}

async fn latest_pr(forge: &LocalForge) -> anyhow::Result<u64> {
    forge
        .list_pull_requests(kiln::forge::StateFilter::Open)
        .await?
        .first()
        .map(|p| p.issue.number)
        .context("the run proposed no pull request")
}
