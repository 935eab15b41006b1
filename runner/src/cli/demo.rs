//! `kiln demo`: the factory on a sample repository of the local forge, run
//! the way `kiln serve` runs it. The demo starts the runner, the event pump
//! and the router in-process and then acts only as the humans would — a
//! stranger files the issue, a maintainer labels it, merges the spec and
//! approves the plan, requests a change in review — and waits for the runs
//! those events cause, printing each trigger that fired and each run's
//! events.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt as _;
use kiln::app::{self, AppOptions};
use kiln::config::Role;
use kiln::forge::local::{KILN_LOGIN, LocalForge, Outbox};
use kiln::forge::{Forge, ForgeResolver, RepoRef};
use kiln::intake::local::PumpOptions;
use kiln::intake::{Dispatcher, RunnerHooks};
use kiln::model::{ModelConfig, ModelProvider, ScriptedProvider};
use kiln::service::Runner;
use kiln::store::{RecoveryPolicy, Run, RunFilter, RunState, RunStore, SqliteOptions, SqliteStore};

use super::local_forge::{LocalArgs, local_user};
use super::run::{RunnerArgs, load_config, model};

/// The demo's files, built into the binary so `kiln demo` needs nothing on disk.
mod files {
    pub const ISSUE: &str = include_str!("../../demo/issue.md");
    pub const README: &str = include_str!("../../demo/sample-repo/README.md");
    pub const SLUGIFY: &str = include_str!("../../demo/sample-repo/slugify.sh");
    pub const TESTS: &str = include_str!("../../demo/sample-repo/tests/run.sh");
    pub const VERIFY: &str = include_str!("../../demo/sample-repo/.kiln/verify.toml");
    /// Each role's script, as `runner/demo/<role>.json`.
    pub const SCRIPTS: [(&str, &str); 4] = [
        ("triage", include_str!("../../demo/triage.json")),
        ("spec", include_str!("../../demo/spec.json")),
        (
            "implementation",
            include_str!("../../demo/implementation.json"),
        ),
        ("review", include_str!("../../demo/review.json")),
    ];
}

/// How long the demo waits for the runs one human action causes.
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

fn write_sample(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("tests"))?;
    std::fs::create_dir_all(dir.join(".kiln"))?;
    std::fs::write(dir.join(".kiln/verify.toml"), files::VERIFY)?;
    std::fs::write(dir.join("README.md"), files::README)?;
    std::fs::write(dir.join("slugify.sh"), files::SLUGIFY)?;
    std::fs::write(dir.join("tests/run.sh"), files::TESTS)?;
    for f in ["slugify.sh", "tests/run.sh"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("\n=== {n}. {text}");
}

/// The runs of the demo's repository, and what has been printed of them.
struct Watch {
    store: Arc<dyn RunStore>,
    repo: RepoRef,
    outbox: Outbox,
    consumer: String,
    seen: HashSet<u64>,
}

impl Watch {
    async fn runs(&self) -> anyhow::Result<Vec<Run>> {
        let mut runs = self
            .store
            .list_runs(RunFilter {
                repo: Some(self.repo.clone()),
                ..RunFilter::default()
            })
            .await?;
        runs.sort_by_key(|r| r.id);
        Ok(runs)
    }

    /// Waits until every event so far is routed, every run it caused has
    /// ended, and nothing new started for a moment (a finished run's own
    /// effects are events that may start the next run). Prints each run as
    /// it is queued and follows its events.
    async fn settle(&mut self) -> anyhow::Result<Vec<Run>> {
        let start = Instant::now();
        let mut quiet_since: Option<Instant> = None;
        loop {
            let runs = self.runs().await?;
            for r in &runs {
                if self.seen.insert(r.id.0) {
                    announce(r);
                    follow(self.store.clone(), r, self.repo.clone());
                }
            }
            let last = self.outbox.last_id()?;
            let routed = self
                .outbox
                .cursor(&self.consumer)
                .is_ok_and(|cursor| cursor >= last);
            let idle = routed && runs.iter().all(|r| r.state.is_terminal());
            match (idle, quiet_since) {
                (true, Some(t)) if t.elapsed() >= Duration::from_millis(600) => return Ok(runs),
                (true, None) => quiet_since = Some(Instant::now()),
                (false, _) => quiet_since = None,
                _ => {}
            }
            anyhow::ensure!(
                start.elapsed() < STEP_TIMEOUT,
                "the demo's runs did not finish within {} s",
                STEP_TIMEOUT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One line per run the router queued: what fired it, and who.
fn announce(run: &Run) {
    let kind = serde_json::to_value(&run.trigger.kind)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    let what = match &run.trigger.kind {
        kiln::store::TriggerKind::Label { label } => format!("label `{label}`"),
        _ => kind.replace('-', " "),
    };
    println!(
        "  {what} by {} ({}) → {} run {} on #{}",
        run.trigger.actor,
        if run.trigger.actor_trust == kiln::policy::Trust::Trusted {
            "trusted"
        } else {
            "untrusted"
        },
        run.role,
        run.id,
        run.number
    );
}

/// The line of the story an event of a run tells, if any: what the run did
/// to the forge (each effect, and where it landed as `owner/name#N`), what
/// the gate refused or held, warnings, and how the run ended. Model turns,
/// tool calls and command output stay in the run's log.
fn story_line(e: &kiln::store::StoredEvent, repo: &RepoRef) -> Option<String> {
    let first = e.message.lines().next().unwrap_or_default();
    // Effects say where they landed as `#N`; the story names the repository.
    let linked = || first.replace(" at #", &format!(" at {repo}#"));
    let verdict = e.kind.get("verdict").and_then(|v| v.as_str());
    match (e.type_name(), verdict) {
        ("proposal", _) => Some(format!("effect: {}", linked())),
        ("policy", Some(v @ ("deny" | "hold"))) => Some(format!("gate {v}: {first}")),
        ("warning", _) => Some(format!("warning: {first}")),
        ("finished", _) => Some(format!("run {first}")),
        _ => None,
    }
}

/// Prints `run`'s story as its events are recorded, until it ends.
fn follow(store: Arc<dyn RunStore>, run: &Run, repo: RepoRef) {
    let (id, prefix) = (run.id, format!("    [{} {}]", run.role, run.id));
    tokio::spawn(async move {
        let Ok(mut events) = store.subscribe(id, 0).await else {
            return;
        };
        while let Some(Ok(e)) = events.next().await {
            if let Some(line) = story_line(&e, &repo) {
                println!("{prefix} {line}");
            }
        }
    });
}

/// Fails unless every run ended as it should.
fn ensure_succeeded(runs: &[Run]) -> anyhow::Result<()> {
    for r in runs {
        anyhow::ensure!(
            r.state == RunState::Succeeded,
            "{} run {} on #{} ended {}: {}",
            r.role,
            r.id,
            r.number,
            r.state.as_str(),
            r.reason.as_deref().unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

async fn latest_pr(forge: &LocalForge, head_prefix: &str) -> anyhow::Result<u64> {
    forge
        .list_pull_requests(kiln::forge::StateFilter::All)
        .await?
        .into_iter()
        .find(|p| p.head_branch.starts_with(head_prefix))
        .map(|p| p.issue.number)
        .with_context(|| format!("no pull request from a {head_prefix}… branch was opened"))
}

/// `kiln demo`.
pub async fn demo(args: RunnerArgs, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    let mut config = load_config(args.config.as_deref())?;
    let data_dir = local.data_dir()?;
    let root = local.forge_root()?;
    let user = local_user();
    // A real model, if one is configured, else each role's script.
    let real = args.script.is_some() || config.model.is_some() || ModelConfig::from_env().is_some();
    let (model, role_models) = if real {
        (
            Some(model(&mut config, args.script.as_deref(), None)?),
            HashMap::new(),
        )
    } else {
        let mut scripts = HashMap::new();
        for (role, text) in files::SCRIPTS {
            let provider = ScriptedProvider::from_json(&format!("{role}.json"), text)?;
            scripts.insert(
                role.parse::<Role>().map_err(anyhow::Error::msg)?,
                Arc::new(provider.per_conversation()) as Arc<dyn ModelProvider>,
            );
        }
        (None, scripts)
    };
    println!(
        "Kiln demo: a sample repository on the local forge at {}; the runner, its event \
         router and {} worker(s) run in this process, and the demo acts only as the humans \
         would.\nModel: {}",
        root.display(),
        2,
        match &model {
            Some(m) => m.name(),
            None =>
                "SCRIPTED — each role replays runner/demo/<role>.json; no model is called".into(),
        }
    );

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let repo = RepoRef::parse(&format!("local/slugify-demo-{stamp}"))?;
    // The demo's runs, mirrors and store live apart from `kiln serve`'s: a
    // service on the same data directory keeps its own queue and recovery.
    let demo_dir = data_dir.join("demos").join(stamp.to_string());
    std::fs::create_dir_all(&demo_dir)
        .with_context(|| format!("cannot create {}", demo_dir.display()))?;
    let store: Arc<dyn RunStore> = Arc::new(
        SqliteStore::open(demo_dir.join("kiln.db"), SqliteOptions::default())
            .await
            .context("opening the demo's store")?,
    );
    let budgets = app::budgets(&config);
    let services = super::run::with_progress(AppOptions {
        config: config.clone(),
        data_dir: demo_dir.clone(),
        recipes: app::recipes_dir(),
        runner_id: app::cli_runner_id(),
        model,
        role_models,
        budgets,
        history: Some(store.clone()),
    })
    .await?;
    let forges: ForgeResolver = kiln::forge::local::LocalForges::new(&root).resolver();
    let runner = Runner::new(store.clone(), services, forges.clone());
    runner.start(2, RecoveryPolicy::default()).await?;
    let wake = runner.clone();
    let dispatcher = Dispatcher::start(
        store.clone(),
        forges,
        &config.intake,
        RunnerHooks {
            control: Some(runner.clone() as Arc<dyn kiln::control::RunControl>),
            wake: Some(Arc::new(move || wake.notify_queued())),
        },
    );
    // Start reading after everything already in the forge's outbox.
    let consumer = format!("demo-{stamp}");
    let outbox = Outbox::open(&root)?;
    outbox.advance(&consumer, outbox.last_id()?)?;
    kiln::intake::local::start(
        dispatcher,
        PumpOptions {
            forge_root: root.clone(),
            consumer: consumer.clone(),
            idle_poll: kiln::intake::local::IDLE_POLL,
            only_repo: Some(repo.clone()),
        },
    )?;
    let mut watch = Watch {
        store,
        repo: repo.clone(),
        outbox,
        consumer,
        seen: HashSet::new(),
    };

    step(
        1,
        "A stranger files an issue (with a prompt injection in it) on a new repository",
    );
    let src = tempfile::tempdir()?;
    write_sample(src.path())?;
    let forge = LocalForge::create(&root, repo.clone(), &user, Some(src.path()))
        .await
        .context("creating the sample repository")?;
    let human = forge.acting_as(&user);
    let (title, body) = files::ISSUE
        .trim_start_matches("# ")
        .split_once('\n')
        .unwrap_or(("Demo issue", files::ISSUE));
    let issue = forge
        .acting_as("reporter")
        .create_issue(kiln::forge::NewIssue {
            title: title.trim().to_string(),
            body: body.trim().to_string(),
            labels: vec![],
        })
        .await?;
    println!("{repo}#{issue} \"{}\" opened by reporter", title.trim());
    ensure_succeeded(&watch.settle().await?)?;

    step(
        2,
        &format!("A maintainer ({user}) labels #{issue} ready-to-spec"),
    );
    human.add_labels(issue, &["ready-to-spec".into()]).await?;
    ensure_succeeded(&watch.settle().await?)?;
    let spec_pr = latest_pr(&forge, "kiln/spec-").await?;

    step(
        3,
        &format!(
            "AUTO-APPROVED FOR THE DEMO: as {user}, merge spec PR #{spec_pr} and label #{issue} \
             plan-approved (in real use a human reviews the spec first)"
        ),
    );
    human.merge(spec_pr).await?;
    human.add_labels(issue, &["plan-approved".into()]).await?;
    ensure_succeeded(&watch.settle().await?)?;
    let impl_pr = latest_pr(&forge, "kiln/implement-").await?;

    step(
        4,
        &format!(
            "{user} requests a change on one line of PR #{impl_pr}: Kiln answers on the same \
             branch, then reviews and verifies again"
        ),
    );
    human
        .create_review(
            impl_pr,
            kiln::forge::NewReview {
                request_changes: true,
                body: "One wording fix, please.".into(),
                comments: vec![kiln::forge::LineComment {
                    path: "slugify.sh".into(),
                    line: 5,
                    new_side: true,
                    severity: kiln::forge::Severity::Suggestion,
                    body: "`-s` squeezes each run, not one: say so.".into(),
                }],
            },
        )
        .await?;
    let runs = watch.settle().await?;
    ensure_succeeded(&runs)?;

    step(5, "The result");
    let pr = forge.get_pull_request(impl_pr).await?;
    println!(
        "{repo}#{impl_pr} {}\"{}\" ({} → {}), closing {repo}#{issue}",
        if pr.draft { "draft " } else { "" },
        pr.issue.title,
        pr.head_branch,
        pr.base_branch,
    );
    for status in forge.list_statuses(impl_pr).await? {
        println!(
            "  status {}: {} ({})",
            status.context, status.state, status.description
        );
    }
    for review in forge.list_reviews(impl_pr).await? {
        println!(
            "  review by {}: {}, {} line comment(s)",
            review.author,
            review.state.to_lowercase().replace('_', " "),
            review.comments.len()
        );
    }
    let answered = pr
        .review_threads
        .iter()
        .filter(|t| t.comments.iter().skip(1).any(|c| c.author == KILN_LOGIN))
        .count();
    println!(
        "  review threads: {}, {answered} answered by {KILN_LOGIN}",
        pr.review_threads.len()
    );
    println!("  runs:");
    for r in &runs {
        println!(
            "    {:<4} {:<14} on #{:<3} {}",
            r.id.to_string(),
            r.role.as_str(),
            r.number,
            r.state.as_str()
        );
    }
    let next = [
        (
            format!("kiln issue show {issue} -R {repo}"),
            "the issue: labels, Kiln's questions, progress comments".to_string(),
        ),
        (
            format!("kiln pr show {spec_pr} -R {repo}"),
            format!("the spec pull request (specs/issue-{issue}/)"),
        ),
        (
            format!("kiln pr show {impl_pr} -R {repo}"),
            "the fix: its body, verification status, review threads".into(),
        ),
        (
            format!("kiln pr diff {impl_pr} -R {repo}"),
            "the fix's diff".into(),
        ),
        (
            "kiln serve".into(),
            format!("then http://127.0.0.1:7878/ui/board/{repo}: the board"),
        ),
    ];
    let width = next.iter().map(|(c, _)| c.len()).max().unwrap_or_default();
    println!("\nOpen next (the local forge keeps all of it):");
    for (command, what) in &next {
        println!("  {command:<width$}   {what}");
    }
    println!(
        "The runs' sandboxes, workspaces and handback bundles are under {}.",
        demo_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
