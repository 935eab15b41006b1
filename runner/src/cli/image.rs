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
    let progress = Progress::new();
    for name in names {
        let tag = builder
            .ensure(&name, &|e| progress.image(e))
            .await
            .with_context(|| format!("building image `{name}`"))?;
        progress.say(format!("{name} = {tag}"));
    }
    progress.finish();
    Ok(())
}

/// Progress of the long steps (an image build, compiling the role plugins,
/// a first mirror sync) on stderr: a live bar on a terminal; elsewhere
/// indicatif draws nothing and only the milestones are written, as plain
/// lines, so a log file gets no escape codes and no line per builder step.
pub(super) struct Progress {
    bar: ProgressBar,
    spinner: ProgressStyle,
    bytes: ProgressStyle,
}

impl Progress {
    /// A spinner, ticking on a terminal.
    pub fn new() -> Self {
        let spinner =
            ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bytes = ProgressStyle::with_template(
            "{prefix:.bold} [{elapsed}] [{bar:30}] {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        let bar = ProgressBar::new_spinner();
        bar.set_style(spinner.clone());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            spinner,
            bytes,
        }
    }

    /// A milestone: a line above the bar, or a plain line without a terminal.
    pub fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// A step that may be long starts: the spinner shows it on a terminal.
    /// Elsewhere nothing is written: usually it takes a moment, and a log
    /// needs no line saying so.
    pub fn start(&self, prefix: &str, what: &str) {
        self.bar.set_style(self.spinner.clone());
        self.bar.unset_length();
        self.bar.set_prefix(prefix.to_string());
        self.bar.set_message(what.to_string());
    }

    /// The step is over: the spinner stops showing it.
    pub fn done(&self) {
        self.bar.set_prefix("");
        self.bar.set_message("");
    }

    /// What an image build reports.
    pub fn image(&self, event: ImageProgress) {
        match event {
            ImageProgress::Cached { name, tag } => {
                self.say(format!("image {name}: up to date ({tag})"))
            }
            ImageProgress::Started { name, tag } => {
                self.bar.set_prefix(format!("image {name}"));
                self.say(format!(
                    "image {name}: building {tag} (minutes, the first time)"
                ));
            }
            ImageProgress::Line { line, .. } => self.bar.set_message(line),
            ImageProgress::Uploaded { done, total, .. } => {
                // The root filesystem upload is the one step with a known size: a real bar.
                if self.bar.length() != Some(total) {
                    self.bar.set_length(total);
                    self.bar.set_style(self.bytes.clone());
                    self.bar.set_message("importing root filesystem");
                }
                self.bar.set_position(done);
            }
            ImageProgress::Built { name, tag } => {
                self.bar.set_style(self.spinner.clone());
                self.bar.unset_length();
                self.say(format!("image {name}: built {tag}"));
                self.done();
            }
        }
    }

    /// Clears the bar for good.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
