//! Runner overhead of one triage run: everything except model time (forge
//! snapshot with trust look-ups, mirror and workspace, sandbox, plugin
//! instantiation, gate, forge effects, progress comment, teardown and
//! handback bundle), with the scripted provider answering instantly. The
//! baseline, measured in the same run and interleaved, is a raw
//! `docker run --rm IMAGE true` of the same image. Run with:
//!
//! ```text
//! cargo bench -p kiln --bench run            # KILN_BENCH_ITERS=10 by default
//! ```
mod common;
use common::{median, ms};
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use kiln::app::{self, AppOptions};
use kiln::config::{KilnConfig, Role};
use kiln::forge::local::LocalForge;
use kiln::forge::{Forge, NewIssue, RepoRef};
use kiln::model::ScriptedProvider;
use kiln::policy::Trust;
use kiln::session::MemoryEvents;
use kiln::worker::{LiveRun, RunEnd, RunRequest, RunTrigger, execute};

const SCRIPT: &str = include_str!("../demo/triage.json");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let iters = common::iterations(10);
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("sample");
    common::sample_repo(&src)?;
    let forge = LocalForge::create(
        &dir.path().join("forge"),
        RepoRef::parse("local/bench")?,
        "alice",
        Some(&src),
    )
    .await?;
    let forge: Arc<dyn Forge> = Arc::new(forge);
    let mut services = app::services(
        AppOptions {
            config: KilnConfig::default(),
            data_dir: dir.path().to_path_buf(),
            recipes: app::recipes_dir(),
            runner_id: "bench-run".into(),
            model: None,
            role_models: Default::default(),
            budgets: HashMap::new(),
            history: None,
        },
        &|_| {},
    )
    .await?;
    let image = services.image.clone();
    let (mut runs, mut raws) = (Vec::new(), Vec::new());
    for i in 0..iters {
        let number = forge
            .create_issue(NewIssue {
                title: "slugify leaves runs of dashes".into(),
                body: include_str!("../demo/issue.md").into(),
                labels: vec![],
            })
            .await?;
        services.model = Some(Arc::new(ScriptedProvider::from_json(
            "triage.json",
            SCRIPT,
        )?));
        let req = RunRequest {
            script: None,
            run_id: format!("bench-{i}"),
            repo: forge.repo().clone(),
            role: Role::Triage,
            number,
            trigger: RunTrigger::Manual,
            trust: Trust::Trusted,
            instructions: None,
            continue_from: Vec::new(),
            actor: None,
        };
        let t = Instant::now();
        let s = execute(
            &services,
            forge.clone(),
            &req,
            Arc::new(MemoryEvents::new()),
            &LiveRun::new(),
        )
        .await;
        runs.push(t.elapsed());
        anyhow::ensure!(s.state == RunEnd::Succeeded, "run failed: {}", s.reason);

        let t = Instant::now();
        let ok = Command::new("docker")
            .args(["run", "--rm", "--network", "none", &image, "true"])
            .status()?
            .success();
        raws.push(t.elapsed());
        anyhow::ensure!(ok, "docker run failed");
    }
    let (run, raw) = (median(&mut runs), median(&mut raws));
    println!(
        "triage run (scripted model) median {:.0} ms; raw `docker run --rm` median {:.0} ms; \
         runner overhead beyond the raw container {:.0} ms (target < 2000 ms); ratio {:.2}x ({iters} iterations)",
        ms(run),
        ms(raw),
        ms(run.saturating_sub(raw)),
        run.as_secs_f64() / raw.as_secs_f64()
    );
    Ok(())
}
