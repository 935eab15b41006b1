//! Repositories on the host: one bare mirror per repository, fetched
//! incrementally, and one fresh workspace per run checked out on a `kiln/...`
//! branch, ready to be mounted at `/workspace`.
//!
//! The host touches workspace files **only through cap-std** ([`Workspace::dir`]):
//! the container can plant symlinks (`ln -s /etc/shadow x`), and cap-std
//! refuses any path or symlink that resolves outside the workspace, where
//! `std::fs` would follow it.
//!
//! Workspaces are full copies (`--no-hardlinks`): a hard-linked object file
//! would let a read-write sandbox rewrite the shared mirror through the link.
//! Host git must not be run *inside* a workspace after the container has
//! had it: its `.git/config` and hooks are then untrusted.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use sha2::{Digest as _, Sha256};

/// Errors from mirrors, workspaces and workspace file access.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A git command failed.
    #[error("git {args}: {reason}")]
    Git {
        /// The git arguments (no secrets are ever passed to git here).
        args: String,
        /// Exit status and stderr, or why it could not start.
        reason: String,
    },
    /// A host-side file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path involved.
        path: String,
        /// The I/O error (cap-std reports escapes as errors here).
        source: std::io::Error,
    },
    /// A ref or branch name was refused before reaching git.
    #[error("{0}")]
    BadName(String),
}

/// Takes the exclusive lock on `path` (created if missing), waiting without
/// blocking a runtime thread; released when the file is dropped.
async fn lock(path: &Path) -> Result<std::fs::File, WorkspaceError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", path)(e)),
        }
    }
}

fn io(what: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> WorkspaceError {
    let path = path.as_ref().display().to_string();
    move |source| WorkspaceError::Io { what, path, source }
}

async fn git<I, S>(dir: Option<&Path>, args: I) -> Result<String, WorkspaceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    git_authorized(dir, args, None).await
}

/// [`git`], sending `authorization` as the HTTP `Authorization` header. It
/// goes through the environment (`GIT_CONFIG_*`), never the command line or
/// the repository's config, so no process listing, error or mirror shows it.
async fn git_authorized<I, S>(
    dir: Option<&Path>,
    args: I,
    authorization: Option<&str>,
) -> Result<String, WorkspaceError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = tokio::process::Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    // No prompts, no system config, no hooks: these runs must be predictable.
    cmd.args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "protocol.ext.allow=never",
        // No hints ("Using 'master' as the name…") in the service's log.
        "-c",
        "init.defaultBranch=main",
        "-c",
        "advice.defaultBranchName=false",
    ])
    .args(&args)
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    if let Some(auth) = authorization {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: {auth}"));
    }
    let out = cmd.output().await.map_err(|e| WorkspaceError::Git {
        args: shown.clone(),
        reason: format!("cannot run git: {e}"),
    })?;
    if !out.status.success() {
        return Err(WorkspaceError::Git {
            args: shown,
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A bare mirror of one repository on the host.
#[derive(Debug, Clone)]
pub struct RepoMirror {
    path: PathBuf,
}

impl RepoMirror {
    /// Brings the mirror of `url` under `cache_root` up to date: cloned the
    /// first time, fetched incrementally (with pruning) after that.
    pub async fn sync(cache_root: &Path, url: &str) -> Result<Self, WorkspaceError> {
        Self::sync_authorized(cache_root, url, None).await
    }

    /// [`RepoMirror::sync`] with the forge's `Authorization` header value
    /// (a GitHub App's installation token), for repositories that need it.
    pub async fn sync_authorized(
        cache_root: &Path,
        url: &str,
        authorization: Option<&str>,
    ) -> Result<Self, WorkspaceError> {
        if url.starts_with('-') {
            return Err(WorkspaceError::BadName(format!(
                "repository URL `{url}` must not start with '-'"
            )));
        }
        std::fs::create_dir_all(cache_root).map_err(io("create", cache_root))?;
        let name = hex::encode(&Sha256::digest(url.as_bytes())[..12]);
        let path = cache_root.join(format!("{name}.git"));
        // One sync of a mirror at a time: the first runs of a new repository
        // on a service with many workers all cloned into the same partial
        // directory and failed. An flock, so a dead process holds nothing.
        let _lock = lock(&cache_root.join(format!("{name}.lock"))).await?;
        if path.join("HEAD").is_file() {
            git_authorized(
                Some(&path),
                ["fetch", "--prune", "--quiet", "origin"],
                authorization,
            )
            .await?;
        } else {
            // Clone into a temporary name and rename, so a crash mid-clone
            // never leaves a half mirror that looks complete.
            let partial = cache_root.join(format!("{name}.git.partial"));
            if partial.exists() {
                std::fs::remove_dir_all(&partial).map_err(io("remove", &partial))?;
            }
            git_authorized(
                None,
                [
                    OsStr::new("clone"),
                    OsStr::new("--mirror"),
                    OsStr::new("--quiet"),
                    OsStr::new("--"),
                    OsStr::new(url),
                    partial.as_os_str(),
                ],
                authorization,
            )
            .await?;
            std::fs::rename(&partial, &path).map_err(io("rename", &partial))?;
        }
        Ok(Self { path })
    }

    /// The mirror's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fetches the branch a git bundle holds (earlier work of run `run`, or
    /// an operator's commits on top of it) into the mirror and returns its
    /// commit. The bundle must hold exactly one branch, and git checks that
    /// the mirror has every commit it builds on. The ref lives under
    /// `refs/kiln-continue/`; the next sync prunes it, but the objects stay
    /// (git keeps unreachable objects for weeks) and the run only needs them
    /// while it starts.
    pub async fn fetch_bundle(&self, bundle: &Path, run: &str) -> Result<String, WorkspaceError> {
        if run.is_empty() || !run.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(WorkspaceError::BadName(format!("run id `{run}`")));
        }
        let heads = git(
            Some(&self.path),
            [
                OsStr::new("bundle"),
                OsStr::new("list-heads"),
                bundle.as_os_str(),
            ],
        )
        .await?;
        let branches: Vec<(&str, &str)> = heads
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, r)| r.starts_with("refs/heads/"))
            .collect();
        let [(commit, name)] = branches[..] else {
            return Err(WorkspaceError::BadName(format!(
                "bundle {} must hold exactly one branch, it holds {}",
                bundle.display(),
                branches.len()
            )));
        };
        let local = format!("refs/kiln-continue/{run}/{}", &name["refs/heads/".len()..]);
        git(
            Some(&self.path),
            [
                OsStr::new("fetch"),
                OsStr::new("--quiet"),
                OsStr::new("--no-tags"),
                bundle.as_os_str(),
                OsStr::new(&format!("+{name}:{local}")),
            ],
        )
        .await?;
        Ok(commit.to_owned())
    }

    /// Resolves `git_ref` (branch, tag or commit) to a commit id.
    pub async fn resolve(&self, git_ref: &str) -> Result<String, WorkspaceError> {
        if git_ref.is_empty() || git_ref.starts_with('-') || git_ref.contains(['\0', ' ']) {
            return Err(WorkspaceError::BadName(format!(
                "ref `{git_ref}` is not a valid git ref"
            )));
        }
        git(
            Some(&self.path),
            [
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{git_ref}^{{commit}}"),
            ],
        )
        .await
    }
}

/// Checks a run branch name: `kiln/` followed by a safe ref path.
pub fn validate_branch(branch: &str) -> Result<(), WorkspaceError> {
    let rest = branch.strip_prefix("kiln/").unwrap_or("");
    let ok = !rest.is_empty()
        && rest.len() <= 200
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && !rest.contains("..")
        && !rest.contains("//")
        && !rest.starts_with(['/', '.'])
        && !rest.ends_with(['/', '.'])
        && !rest.ends_with(".lock");
    if ok {
        Ok(())
    } else {
        Err(WorkspaceError::BadName(format!(
            "branch `{branch}` must be kiln/<name> with [A-Za-z0-9._/-] and no '..'"
        )))
    }
}

/// One run's working copy. Dropping it deletes the directory.
#[derive(Debug)]
pub struct Workspace {
    _root: tempfile::TempDir,
    path: PathBuf,
    dir: Dir,
    branch: String,
    head: String,
}

impl Workspace {
    /// Checks out `git_ref` from `mirror` on a new branch `branch` (which must
    /// be `kiln/...`) in a fresh temporary directory under `parent` (the
    /// system temp dir if `None`). The files are owned by the sandbox user
    /// when the runner is root, so a read-write mount is writable.
    pub async fn create(
        mirror: &RepoMirror,
        git_ref: &str,
        branch: &str,
        parent: Option<&Path>,
    ) -> Result<Self, WorkspaceError> {
        validate_branch(branch)?;
        let head = mirror.resolve(git_ref).await?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("kiln-ws-");
        let root = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .map_err(io("create", parent.unwrap_or(Path::new("$TMPDIR"))))?;
        let path = root.path().join("workspace");
        // --template= skips copying sample hooks: faster, and nothing executable appears.
        git(
            None,
            [
                OsStr::new("clone"),
                OsStr::new("--quiet"),
                OsStr::new("--no-hardlinks"),
                OsStr::new("--no-checkout"),
                OsStr::new("--template="),
                OsStr::new("--"),
                mirror.path().as_os_str(),
                path.as_os_str(),
            ],
        )
        .await?;
        git(Some(&path), ["checkout", "--quiet", "-B", branch, &head]).await?;
        // The host path of the mirror means nothing inside the sandbox.
        git(Some(&path), ["remote", "remove", "origin"]).await?;
        hand_to_sandbox_user(&path)?;
        let dir = Dir::open_ambient_dir(&path, ambient_authority()).map_err(io("open", &path))?;
        Ok(Self {
            _root: root,
            path,
            dir,
            branch: branch.to_owned(),
            head,
        })
    }

    /// The host directory (to mount; never to open files through).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capability handle on the workspace: the only way the host should
    /// read or write its files.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The run's branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The commit the branch started at.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Reads a file by workspace-relative path; escapes are refused.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, WorkspaceError> {
        self.dir.read(rel).map_err(io("read", rel))
    }

    /// Writes a file by workspace-relative path; escapes are refused.
    pub fn write(&self, rel: &str, contents: &[u8]) -> Result<(), WorkspaceError> {
        self.dir.write(rel, contents).map_err(io("write", rel))
    }
}

impl Workspace {
    /// Makes every file and directory of the fresh checkout (tracked files
    /// and `.git`) unchangeable by the sandbox user while still letting it
    /// add new files, so checks can write build outputs into a read-write
    /// mount but cannot alter what they check. Everything is given to root
    /// (a different uid from the sandbox's 1000, which has no capabilities
    /// to override ownership): files lose their write bits, directories
    /// outside `.git` become world-writable with the sticky bit (new entries
    /// allowed; only the owner may unlink or rename an entry, so no tracked
    /// file can be deleted, moved away or replaced), `.git` stays closed.
    /// Returns `false`, changing nothing, when the runner is not root: it
    /// cannot give files away, so the caller must mount read-only instead.
    /// Call it before the sandbox starts.
    pub fn protect_checkout(&self) -> Result<bool, WorkspaceError> {
        use std::os::unix::fs::PermissionsExt as _;
        if !is_root() {
            return Ok(false);
        }
        let mut stack = vec![(self.path.clone(), false)];
        while let Some((p, in_git)) = stack.pop() {
            // lchown and lstat: a symlink in the checkout is never followed.
            std::os::unix::fs::lchown(&p, Some(0), Some(0)).map_err(io("chown", &p))?;
            let meta = std::fs::symlink_metadata(&p).map_err(io("stat", &p))?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                let mode = if in_git { 0o755 } else { 0o1777 };
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io("chmod", &p))?;
                for entry in std::fs::read_dir(&p).map_err(io("list", &p))? {
                    let entry = entry.map_err(io("list", &p))?;
                    let git = in_git || (p == self.path && entry.file_name() == ".git");
                    stack.push((entry.path(), git));
                }
            } else if meta.is_file() {
                // Readable by all, executable as before, writable by nobody
                // but root; set-id bits dropped.
                let mode = (mode & 0o555) | 0o444;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(io("chmod", &p))?;
            }
        }
        Ok(true)
    }
}

/// Makes the checkout owned by uid/gid 1000 and the top directory
/// traversable. Uses lchown so a symlink in the repository is never followed.
fn hand_to_sandbox_user(path: &Path) -> Result<(), WorkspaceError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", path))?;
    // Only root can give files away; an unprivileged runner must itself run as uid 1000.
    if !is_root() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::lchown(&p, Some(1000), Some(1000)).map_err(io("chown", &p))?;
        let meta = std::fs::symlink_metadata(&p).map_err(io("stat", &p))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(io("list", &p))? {
                stack.push(entry.map_err(io("list", &p))?.path());
            }
        }
    }
    Ok(())
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self is owned by the process's effective uid: no unsafe libc call needed.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_sync(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "git {args:?} should succeed");
    }

    /// A temp dir holding `src`, a repository with one commit on `main`
    /// (file `a`), and its URL.
    fn one_commit_repo() -> (tempfile::TempDir, PathBuf, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        git_sync(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("a"), "one\n").expect("write");
        git_sync(&src, &["add", "a"]);
        git_sync(&src, &["commit", "-q", "-m", "one"]);
        let url = src.to_string_lossy().into_owned();
        (tmp, src, url)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn runs_syncing_one_new_repository_at_once_all_get_a_mirror() {
        let (tmp, _, url) = one_commit_repo();
        let cache = tmp.path().join("mirrors");
        // The first runs of a new repository on a service with many workers:
        // every one clones (or waits for the clone), then all fetch at once.
        for round in ["clone", "fetch"] {
            let syncs: Vec<_> = (0..8)
                .map(|_| {
                    let (cache, url) = (cache.clone(), url.clone());
                    tokio::spawn(async move { RepoMirror::sync(&cache, &url).await })
                })
                .collect();
            for s in syncs {
                let mirror = s
                    .await
                    .expect("sync task")
                    .unwrap_or_else(|e| panic!("every concurrent {round} should succeed: {e}"));
                assert!(
                    mirror.resolve("main").await.is_ok(),
                    "the mirror should have main after a concurrent {round}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_protected_checkout_belongs_to_root_with_no_write_bits_and_sticky_dirs() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let (tmp, src, url) = one_commit_repo();
        std::fs::create_dir(src.join("bin")).expect("mkdir");
        std::fs::write(src.join("bin/run"), "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(src.join("bin/run"), std::fs::Permissions::from_mode(0o4775))
            .expect("chmod");
        // A link out of the checkout, to a file of the test's own.
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "x").expect("write");
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        std::os::unix::fs::symlink(&outside, src.join("link")).expect("symlink");
        git_sync(&src, &["add", "bin/run", "link"]);
        git_sync(&src, &["commit", "-q", "-m", "more"]);
        let mirror = RepoMirror::sync(&tmp.path().join("mirrors"), &url)
            .await
            .expect("sync");
        let ws = Workspace::create(&mirror, "main", "kiln/t", Some(tmp.path()))
            .await
            .expect("checkout");
        let protected = ws.protect_checkout().expect("protect");
        if !is_root() {
            assert!(!protected, "only root can give files away");
            return;
        }
        assert!(protected);
        let mode = |p: &str| {
            let meta = std::fs::symlink_metadata(ws.path().join(p)).expect("stat");
            (meta.uid(), meta.permissions().mode() & 0o7777)
        };
        assert_eq!(
            mode(""),
            (0, 0o1777),
            "the root takes new files, keeps its own"
        );
        assert_eq!(mode("bin"), (0, 0o1777));
        assert_eq!(mode("a"), (0, 0o444), "a tracked file is read-only");
        assert_eq!(
            mode("bin/run"),
            (0, 0o555),
            "executable, no set-id, no write"
        );
        assert_eq!(mode(".git"), (0, 0o755), ".git takes nothing new");
        assert_eq!(mode(".git/HEAD"), (0, 0o444));
        let link = std::fs::symlink_metadata(ws.path().join("link")).expect("stat");
        assert_eq!(link.uid(), 0, "the link itself changed hands");
        let target = std::fs::metadata(&outside).expect("stat");
        assert_eq!(
            target.permissions().mode() & 0o777,
            0o664,
            "the link's target was not followed"
        );
    }

    #[tokio::test]
    async fn mirror_fetches_incrementally_and_workspaces_share_nothing() {
        let (tmp, src, url) = one_commit_repo();
        let cache = tmp.path().join("mirrors");
        let mirror = RepoMirror::sync(&cache, &url)
            .await
            .expect("first sync clones");

        std::fs::write(src.join("a"), "two\n").expect("write");
        git_sync(&src, &["commit", "-q", "-am", "two"]);
        let again = RepoMirror::sync(&cache, &url)
            .await
            .expect("second sync fetches");
        assert_eq!(
            again.path(),
            mirror.path(),
            "the same mirror should be reused"
        );

        let ws = Workspace::create(&again, "main", "kiln/t", Some(tmp.path()))
            .await
            .expect("checkout");
        assert_eq!(
            ws.read("a").expect("read"),
            b"two\n",
            "the fetched commit should be checked out"
        );
        assert_eq!(ws.branch(), "kiln/t");
        // Hard links into the mirror would let a read-write sandbox rewrite it.
        use std::os::unix::fs::MetadataExt as _;
        let mut stack = vec![ws.path().join(".git/objects")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("list") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("stat");
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    assert_eq!(
                        meta.nlink(),
                        1,
                        "{} should not be hard-linked",
                        path.display()
                    );
                }
            }
        }
        let bad =
            Workspace::create(&again, "--upload-pack=evil", "kiln/t2", Some(tmp.path())).await;
        assert!(
            bad.is_err(),
            "an option-looking ref should be refused, got: {bad:?}"
        );
    }

    #[test]
    fn branch_names_are_checked() {
        for ok in ["kiln/run-1", "kiln/issue-3/impl", "kiln/a.b_c"] {
            assert!(validate_branch(ok).is_ok(), "{ok} should be accepted");
        }
        for bad in [
            "main",
            "kiln/",
            "kiln/../main",
            "kiln/a b",
            "kiln/-x/..",
            "kiln/x.lock",
            "kiln//x",
            "kiln/x@{1}",
        ] {
            assert!(validate_branch(bad).is_err(), "{bad} should be refused");
        }
    }
}
