//! Sandbox images, built locally from the recipes in `sandbox-images/` with
//! no image registry.
//!
//! - `base/build.sh` makes a Debian root filesystem tarball with mmdebstrap
//!   from the **machine's own apt sources** (piped on stdin, so no mirror is
//!   ever written into the project); the tarball becomes an image through the
//!   engine's import API (`docker import`).
//! - Every other recipe is a directory with a `Dockerfile` that starts
//!   `ARG BASE_IMAGE` / `FROM ${BASE_IMAGE}` and is built on the local base.
//!
//! Each image is tagged `kiln-<name>:<hash>`, where the hash covers the
//! recipe's files and its inputs (the apt sources for the base, the base's
//! tag for the others). An unchanged recipe is found by tag and not rebuilt;
//! any edit produces a new tag.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};

/// Name of the recipe built from a root filesystem rather than a Dockerfile.
pub const BASE: &str = "base";
/// Name of the egress proxy's recipe.
pub const PROXY: &str = "proxy";
/// The Debian suite the base is built from (must match the apt sources).
pub const BASE_SUITE: &str = "bookworm";

/// Errors from finding or building images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No recipe directory with that name.
    #[error(
        "no image recipe `{name}` in {dir} (expected {dir}/{name}/Dockerfile or {dir}/{name}/build.sh)"
    )]
    UnknownRecipe {
        /// The requested name.
        name: String,
        /// The recipes directory.
        dir: String,
    },
    /// Reading a recipe or the apt sources failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No apt source for the base suite was found on this machine.
    #[error(
        "no apt source for suite {suite} in /etc/apt/sources.list{{,.d/}}: cannot build the base image"
    )]
    NoAptSources {
        /// The suite looked for.
        suite: &'static str,
    },
    /// The root filesystem build failed.
    #[error("building the base root filesystem failed ({status}); last output:\n{tail}")]
    Rootfs {
        /// How the recipe exited.
        status: String,
        /// The last lines it printed.
        tail: String,
    },
    /// The engine refused or failed the import or build.
    #[error("image {tag}: {source}")]
    Engine {
        /// The tag being produced.
        tag: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
    /// The engine reported a build error.
    #[error("image {tag}: build failed: {message}")]
    Build {
        /// The tag being produced.
        tag: String,
        /// The builder's message.
        message: String,
    },
}

/// What an image build is doing, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageProgress {
    /// The image exists already under its recipe hash.
    Cached {
        /// Recipe name.
        name: String,
        /// Image tag.
        tag: String,
    },
    /// A build started.
    Started {
        /// Recipe name.
        name: String,
        /// Image tag.
        tag: String,
    },
    /// A line of builder output.
    Line {
        /// Recipe name.
        name: String,
        /// The line.
        line: String,
    },
    /// Bytes of the root filesystem sent to the engine.
    Uploaded {
        /// Recipe name.
        name: String,
        /// Bytes sent so far.
        done: u64,
        /// Total bytes.
        total: u64,
    },
    /// A build finished.
    Built {
        /// Recipe name.
        name: String,
        /// Image tag.
        tag: String,
    },
}

impl std::fmt::Display for ImageProgress {
    /// One line for a person: `base: using kiln-base:4d1d…`, `base: built …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageProgress::Cached { name, tag } => write!(f, "{name}: using {tag}"),
            ImageProgress::Started { name, tag } => write!(f, "{name}: building {tag}"),
            ImageProgress::Line { name, line } => write!(f, "{name}: {line}"),
            ImageProgress::Uploaded { name, done, total } => {
                write!(f, "{name}: sent {done} of {total} bytes to the engine")
            }
            ImageProgress::Built { name, tag } => write!(f, "{name}: built {tag}"),
        }
    }
}

/// Builds the recipes in one `sandbox-images/` directory.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    docker: Docker,
    recipes: PathBuf,
}

// One build per process at a time: parallel tests asking for the same image
// must not run mmdebstrap twice.
static BUILD_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl ImageBuilder {
    /// A builder for the recipes under `recipes` (the `sandbox-images/` directory).
    pub fn new(docker: Docker, recipes: impl Into<PathBuf>) -> Self {
        Self {
            docker,
            recipes: recipes.into(),
        }
    }

    /// The recipe names found (directories with a `build.sh` or `Dockerfile`).
    pub fn recipe_names(&self) -> Result<Vec<String>, ImageError> {
        let entries = std::fs::read_dir(&self.recipes).map_err(read_err(&self.recipes))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(read_err(&self.recipes))?;
            let p = entry.path();
            if p.join("Dockerfile").is_file() || p.join("build.sh").is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// The tag the recipe `name` builds to right now (nothing is built).
    pub fn tag_for(&self, name: &str) -> Result<String, ImageError> {
        let dir = self.recipe_dir(name)?;
        let mut hasher = Sha256::new();
        hash_dir(&dir, &mut hasher)?;
        if name == BASE {
            hasher.update(b"\0suite\0");
            hasher.update(BASE_SUITE);
            hasher.update(b"\0sources\0");
            hasher.update(machine_apt_sources(BASE_SUITE)?);
        } else {
            hasher.update(b"\0base\0");
            hasher.update(self.tag_for(BASE)?);
        }
        Ok(format!(
            "kiln-{name}:{}",
            &hex::encode(hasher.finalize())[..16]
        ))
    }

    /// Returns the tag of `name`, building it (and the base first) if no
    /// image with its recipe hash exists.
    pub async fn ensure(
        &self,
        name: &str,
        progress: &(dyn Fn(ImageProgress) + Sync),
    ) -> Result<String, ImageError> {
        // An unknown name fails before minutes of base building.
        self.recipe_dir(name)?;
        let _guard = BUILD_LOCK.lock().await;
        let base = self.ensure_one(BASE, progress).await?;
        if name == BASE {
            return Ok(base);
        }
        self.ensure_one(name, progress).await
    }

    async fn ensure_one(
        &self,
        name: &str,
        progress: &(dyn Fn(ImageProgress) + Sync),
    ) -> Result<String, ImageError> {
        let tag = self.tag_for(name)?;
        if self.docker.inspect_image(&tag).await.is_ok() {
            progress(ImageProgress::Cached {
                name: name.into(),
                tag: tag.clone(),
            });
            return Ok(tag);
        }
        progress(ImageProgress::Started {
            name: name.into(),
            tag: tag.clone(),
        });
        if name == BASE {
            self.build_base(&tag, progress).await?;
        } else {
            let base = self.tag_for(BASE)?;
            self.build_dockerfile(name, &tag, &base, progress).await?;
        }
        progress(ImageProgress::Built {
            name: name.into(),
            tag: tag.clone(),
        });
        Ok(tag)
    }

    fn recipe_dir(&self, name: &str) -> Result<PathBuf, ImageError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let dir = self.recipes.join(name);
        let has_recipe = if name == BASE {
            dir.join("build.sh").is_file()
        } else {
            dir.join("Dockerfile").is_file()
        };
        if valid && has_recipe {
            Ok(dir)
        } else {
            Err(ImageError::UnknownRecipe {
                name: name.into(),
                dir: self.recipes.display().to_string(),
            })
        }
    }

    async fn build_base(
        &self,
        tag: &str,
        progress: &(dyn Fn(ImageProgress) + Sync),
    ) -> Result<(), ImageError> {
        let dir = self.recipe_dir(BASE)?;
        let sources = machine_apt_sources(BASE_SUITE)?;
        let work = tempfile::Builder::new()
            .prefix("kiln-rootfs-")
            .tempdir()
            .map_err(read_err(std::env::temp_dir()))?;
        let tar_path = work.path().join("rootfs.tar");
        let mut child = tokio::process::Command::new("sh")
            .arg(dir.join("build.sh"))
            .arg(&tar_path)
            .env("KILN_BASE_SUITE", BASE_SUITE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(read_err(dir.join("build.sh")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sources.as_bytes())
                .await
                .map_err(read_err("build.sh stdin"))?;
        }
        let mut tail = std::collections::VecDeque::new();
        let stdout =
            tokio::io::BufReader::new(child.stdout.take().ok_or_else(|| no_pipe("stdout"))?)
                .lines();
        let stderr =
            tokio::io::BufReader::new(child.stderr.take().ok_or_else(|| no_pipe("stderr"))?)
                .lines();
        let mut lines =
            futures_util::stream::select(tokio_lines(stdout).boxed(), tokio_lines(stderr).boxed());
        while let Some(line) = lines.next().await {
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line.clone());
            progress(ImageProgress::Line {
                name: BASE.into(),
                line,
            });
        }
        let status = child.wait().await.map_err(read_err("build.sh"))?;
        if !status.success() {
            return Err(ImageError::Rootfs {
                status: status.to_string(),
                tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
            });
        }
        self.import(tag, &tar_path, progress).await
    }

    async fn import(
        &self,
        tag: &str,
        tar_path: &Path,
        progress: &(dyn Fn(ImageProgress) + Sync),
    ) -> Result<(), ImageError> {
        let file = tokio::fs::File::open(tar_path)
            .await
            .map_err(read_err(tar_path))?;
        let total = file.metadata().await.map_err(read_err(tar_path))?.len();
        let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
        // The image runs as the unprivileged user by default; Kiln sets it
        // explicitly too, but a `docker run` by hand should not be root either.
        let options = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(version)
            .changes(vec![
                "USER 1000:1000".into(),
                "WORKDIR /workspace".into(),
                "ENV HOME=/home/agent".into(),
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "CMD [\"bash\"]".into(),
            ])
            .build();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        // Bytes handed to the engine so far, for the progress bar.
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let reader = tokio::spawn(async move {
            let mut file = file;
            loop {
                let mut buf = vec![0u8; 1 << 20];
                match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(buf.into())).await.is_err() {
                            break;
                        }
                        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
        });
        let body =
            bollard::body_try_stream(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            }));
        let uploaded = |sent: &std::sync::atomic::AtomicU64| ImageProgress::Uploaded {
            name: BASE.into(),
            done: sent.load(std::sync::atomic::Ordering::Relaxed),
            total,
        };
        let mut stream = self.docker.create_image(Some(options), Some(body), None);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                item = stream.next() => {
                    let Some(item) = item else { break };
                    let info = item.map_err(|source| ImageError::Engine {
                        tag: tag.into(),
                        source,
                    })?;
                    if let Some(status) = info.status {
                        progress(ImageProgress::Line {
                            name: BASE.into(),
                            line: status,
                        });
                    }
                }
                _ = tick.tick() => progress(uploaded(&sent)),
            }
        }
        reader.abort();
        progress(uploaded(&sent));
        Ok(())
    }

    async fn build_dockerfile(
        &self,
        name: &str,
        tag: &str,
        base: &str,
        progress: &(dyn Fn(ImageProgress) + Sync),
    ) -> Result<(), ImageError> {
        let dir = self.recipe_dir(name)?;
        let context = tar_dir(&dir)?;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(tag)
            .rm(true)
            .forcerm(true)
            .buildargs(&HashMap::from([(
                "BASE_IMAGE".to_string(),
                base.to_string(),
            )]))
            .build();
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|source| ImageError::Engine {
                tag: tag.into(),
                source,
            })?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(ImageError::Build {
                    tag: tag.into(),
                    message,
                });
            }
            if let Some(line) = info.stream {
                for line in line.lines().filter(|l| !l.trim().is_empty()) {
                    progress(ImageProgress::Line {
                        name: name.into(),
                        line: line.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn tokio_lines<R>(lines: tokio::io::Lines<R>) -> impl futures_util::Stream<Item = String> + Send
where
    R: tokio::io::AsyncBufRead + Unpin + Send,
{
    futures_util::stream::unfold(lines, |mut lines| async move {
        match lines.next_line().await {
            Ok(Some(line)) => Some((line, lines)),
            _ => None,
        }
    })
}

fn no_pipe(which: &str) -> ImageError {
    ImageError::Read {
        path: format!("build.sh {which}"),
        source: std::io::Error::other("pipe not captured"),
    }
}

fn read_err(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.as_ref().display().to_string();
    move |source| ImageError::Read { path, source }
}

/// Feeds every file of a recipe directory (sorted, with relative paths and
/// modes) into the hash.
fn hash_dir(dir: &Path, hasher: &mut Sha256) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt as _;
    for (rel, path) in recipe_files(dir)? {
        let bytes = std::fs::read(&path).map_err(read_err(&path))?;
        let mode = std::fs::metadata(&path)
            .map_err(read_err(&path))?
            .permissions()
            .mode();
        hasher.update(rel.as_bytes());
        hasher.update([0]);
        hasher.update(mode.to_le_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(())
}

fn recipe_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, ImageError> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(read_err(&d))? {
            let path = entry.map_err(read_err(&d))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(read_err(&path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, path));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A build context: the recipe directory as an in-memory tar.
fn tar_dir(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (rel, path) in recipe_files(dir)? {
        builder
            .append_path_with_name(&path, &rel)
            .map_err(read_err(&path))?;
    }
    builder.into_inner().map_err(read_err(dir))
}

/// The machine's apt sources for `suite`, as one text in a single format
/// (deb822 if the machine has any `.sources` file, one-line otherwise).
/// Entries for other suites (third-party repositories whose keys the new
/// root filesystem would not have) are left out.
pub fn machine_apt_sources(suite: &'static str) -> Result<String, ImageError> {
    let mut deb822 = Vec::new();
    let mut one_line = Vec::new();
    let read = |path: &Path| std::fs::read_to_string(path).map_err(read_err(path));
    let main = Path::new("/etc/apt/sources.list");
    if main.is_file() {
        one_line.push(read(main)?);
    }
    let d = Path::new("/etc/apt/sources.list.d");
    if d.is_dir() {
        let mut paths: Vec<_> = std::fs::read_dir(d)
            .map_err(read_err(d))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for p in paths {
            match p.extension().and_then(|e| e.to_str()) {
                Some("sources") => deb822.push(read(&p)?),
                Some("list") => one_line.push(read(&p)?),
                _ => {}
            }
        }
    }
    let selected = select_sources(&deb822, &one_line, suite);
    if selected.trim().is_empty() {
        return Err(ImageError::NoAptSources { suite });
    }
    Ok(selected)
}

/// Keeps the source entries whose suites belong to `suite` (`bookworm`,
/// `bookworm-updates`, `bookworm-security`), preferring deb822 entries.
pub fn select_sources(deb822: &[String], one_line: &[String], suite: &str) -> String {
    let belongs = |s: &str| {
        s == suite || s.starts_with(&format!("{suite}-")) || s.starts_with(&format!("{suite}/"))
    };
    let stanzas: Vec<String> = deb822
        .iter()
        .flat_map(|text| text.split("\n\n"))
        .filter(|stanza| {
            let mut types_deb = false;
            let mut suites_ok = false;
            let mut enabled = true;
            for line in stanza.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                match key.trim().to_ascii_lowercase().as_str() {
                    "types" => types_deb = value.split_whitespace().any(|t| t == "deb"),
                    "suites" => suites_ok = value.split_whitespace().any(belongs),
                    "enabled" => enabled = value.trim() != "no",
                    _ => {}
                }
            }
            types_deb && suites_ok && enabled
        })
        .map(|s| s.trim().to_string())
        .collect();
    if !stanzas.is_empty() {
        return stanzas.join("\n\n") + "\n";
    }
    one_line
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| {
            let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
            // Options in brackets may contain spaces only if quoted; Debian's
            // tooling never writes those, so skipping `[...]` words suffices.
            words.next() == Some("deb") && words.nth(1).is_some_and(belongs)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources_keep_only_the_suite() {
        let debian =
            "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n"
                .to_string();
        let third =
            "Types: deb\nURIs: https://vendor.invalid/apt\nSuites: nodistro\nComponents: main\n"
                .to_string();
        let got = select_sources(&[debian, third], &[], "bookworm");
        assert!(
            got.contains("bookworm-security"),
            "security stanza should be kept: {got}"
        );
        assert!(
            !got.contains("vendor.invalid"),
            "third-party stanza should be dropped: {got}"
        );
    }

    #[test]
    fn one_line_sources_are_the_fallback() {
        let list = "# comment\ndeb http://m.invalid/debian bookworm main\ndeb-src http://m.invalid/debian bookworm main\n\
                    deb [arch=amd64] https://vendor.invalid/apt stable main\n"
            .to_string();
        let got = select_sources(&[], &[list], "bookworm");
        assert_eq!(got, "deb http://m.invalid/debian bookworm main\n");
    }

    #[test]
    fn recipe_hash_changes_with_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM x\n").expect("write");
        let hash = |d: &Path| {
            let mut h = Sha256::new();
            hash_dir(d, &mut h).expect("hash");
            hex::encode(h.finalize())
        };
        let a = hash(dir.path());
        assert_eq!(a, hash(dir.path()), "same recipe, same hash");
        std::fs::write(dir.path().join("Dockerfile"), "FROM y\n").expect("write");
        assert_ne!(a, hash(dir.path()), "an edited recipe must get a new tag");
    }
}
