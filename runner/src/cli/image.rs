//! `kiln image build [NAME]`: builds sandbox images from `sandbox-images/`
//! with no registry, showing progress; unchanged recipes are reused by tag.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kiln::sandbox::image::{BASE, ImageBuilder, ImageProgress};

/// Sandbox image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image recipe (and the base it needs); all recipes without NAME.
    Build(BuildArgs),
}

/// Arguments of `kiln image build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe name (a directory under the recipes directory), e.g. `base` or `proxy`.
    name: Option<String>,
    /// The recipes directory.
    #[arg(long, env = "KILN_IMAGES_DIR", default_value = "sandbox-images")]
    recipes: PathBuf,
}

impl ImageCommand {
    /// Runs the subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            ImageCommand::Build(args) => build(args).await,
        }
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults()
        .context("cannot connect to the Docker engine")?
        .negotiate_version()
        .await
        .context("cannot talk to the Docker engine")?;
    let builder = ImageBuilder::new(docker, &args.recipes);
    let names = match args.name {
        Some(name) => vec![name],
        None => {
            let mut names = builder
                .recipe_names()
                .with_context(|| format!("cannot list recipes in {}", args.recipes.display()))?;
            // The base first: every other recipe is built FROM it.
            names.sort_by_key(|n| n != BASE);
            names
        }
    };
    let spinner_style =
        ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bytes_style = ProgressStyle::with_template(
        "{prefix:.bold} [{elapsed}] [{bar:30}] {bytes}/{total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let bar = ProgressBar::new_spinner();
    bar.set_style(spinner_style.clone());
    bar.enable_steady_tick(Duration::from_millis(120));
    // Without a terminal the bar draws nothing, so milestones go to stderr as plain lines.
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let progress = |event: ImageProgress| match event {
        ImageProgress::Cached { name, tag } => say(format!("{name}: up to date ({tag})")),
        ImageProgress::Started { name, tag } => {
            bar.set_prefix(name.clone());
            say(format!("{name}: building {tag}"));
        }
        ImageProgress::Line { line, .. } => bar.set_message(line),
        ImageProgress::Uploaded { done, total, .. } => {
            // The root filesystem upload is the one step with a known size: show a real bar.
            if bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(bytes_style.clone());
                bar.set_message("importing root filesystem");
            }
            bar.set_position(done);
        }
        ImageProgress::Built { name, tag } => {
            bar.set_style(spinner_style.clone());
            bar.unset_length();
            say(format!("{name}: built {tag}"));
        }
    };
    for name in names {
        let tag = builder
            .ensure(&name, &progress)
            .await
            .with_context(|| format!("building image `{name}`"))?;
        say(format!("{name} = {tag}"));
    }
    bar.finish_and_clear();
    Ok(())
}
