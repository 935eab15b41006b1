//! Turning a run's workspace into a commit the host can push, without ever
//! trusting the workspace's own `.git`.
//!
//! Once a sandbox has had a workspace, everything in it is the agent's: its
//! `.git/config` may define filters, an fsmonitor or hooks that plain host
//! `git` would execute. So the host keeps a *shadow* repository outside the
//! mount — a bare clone of the host-owned mirror with no hooks — and uses
//! the workspace only as a work tree: `git --git-dir=<shadow>
//! --work-tree=<workspace>`, with system and global configuration switched
//! off. Nothing the agent wrote can add configuration to that git; attributes
//! in the work tree can name filters, but no filter is defined.
use std::path::{Path, PathBuf};

use crate::forge::check_kiln_branch;

/// Why the workspace could not be read or committed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Running git failed.
    #[error("git {command} failed: {stderr}")]
    Git {
        /// The git subcommand.
        command: String,
        /// What git said.
        stderr: String,
    },
    /// Git could not be started, or a temporary directory not created.
    #[error("{0}")]
    Io(String),
    /// The workspace has no change to commit.
    #[error("the workspace has no changes to commit")]
    NothingToCommit,
    /// The branch is not one Kiln may push.
    #[error("{0}")]
    Branch(String),
}

/// A run's shadow repository: commits the workspace's files onto the run's
/// branch, starting from the commit the workspace was checked out at.
#[derive(Debug)]
pub struct Publisher {
    _dir: tempfile::TempDir,
    git_dir: PathBuf,
    work_tree: PathBuf,
    base_commit: String,
    branch: String,
}

impl Publisher {
    /// A shadow of `mirror` (a host-owned repository) for the work tree
    /// `work_tree`, which was checked out at `base_commit`; commits go to
    /// `branch` (`kiln/...`). It lives in a fresh temporary directory under
    /// `parent` (the system temp dir if `None`).
    pub async fn new(
        mirror: &Path,
        base_commit: &str,
        work_tree: &Path,
        branch: &str,
        parent: Option<&Path>,
    ) -> Result<Self, PublishError> {
        check_kiln_branch(branch).map_err(|e| PublishError::Branch(e.to_string()))?;
        let mut builder = tempfile::Builder::new();
        builder.prefix("kiln-shadow-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .map_err(|e| PublishError::Io(format!("cannot create the shadow repository: {e}")))?;
        let git_dir = dir.path().join("shadow.git");
        run_git(
            None,
            None,
            &[
                "clone".as_ref(),
                "--quiet".as_ref(),
                "--bare".as_ref(),
                "--template=".as_ref(),
                "--".as_ref(),
                mirror.as_os_str(),
                git_dir.as_os_str(),
            ],
        )
        .await?;
        let p = Publisher {
            _dir: dir,
            git_dir,
            work_tree: work_tree.to_path_buf(),
            base_commit: base_commit.to_string(),
            branch: branch.to_string(),
        };
        let r = format!("refs/heads/{branch}");
        p.git(&["update-ref", &r, base_commit]).await?;
        p.git(&["symbolic-ref", "HEAD", &r]).await?;
        p.git(&["read-tree", base_commit]).await?;
        Ok(p)
    }

    /// The shadow repository (push from here).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The branch commits go to.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The commit the workspace started from.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    async fn git(&self, args: &[&str]) -> Result<String, PublishError> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        run_git(Some(&self.git_dir), Some(&self.work_tree), &args).await
    }

    /// Stage every file of the work tree in the shadow index.
    async fn stage(&self) -> Result<(), PublishError> {
        self.git(&["add", "--all", "--", "."]).await.map(drop)
    }

    /// Paths the workspace changes (added, modified, deleted) since the base.
    pub async fn changed_paths(&self) -> Result<Vec<String>, PublishError> {
        self.changed_since(&self.base_commit.clone()).await
    }

    async fn changed_since(&self, rev: &str) -> Result<Vec<String>, PublishError> {
        self.stage().await?;
        let out = self
            .git(&["diff", "--cached", "--name-only", "-z", "--no-renames", rev])
            .await?;
        Ok(out
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// The staged contents of the changed paths that still exist, for the
    /// secret scan that must pass before a commit.
    pub async fn changed_files(&self) -> Result<Vec<(String, Vec<u8>)>, PublishError> {
        Ok(self.changes().await?.1)
    }

    /// Every changed path and the contents of those that still exist,
    /// from one staging of the work tree.
    pub async fn changes(&self) -> Result<(Vec<String>, Vec<(String, Vec<u8>)>), PublishError> {
        let paths = self.changed_paths().await?;
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            // A deleted path has no blob; its absence is the change.
            if let Ok(bytes) = self.blob(&format!(":{p}")).await {
                files.push((p.clone(), bytes));
            }
        }
        Ok((paths, files))
    }

    async fn blob(&self, spec: &str) -> Result<Vec<u8>, PublishError> {
        let out = host_git(Some(&self.git_dir), Some(&self.work_tree))
            .args(["cat-file", "blob", spec])
            .output()
            .await
            .map_err(|e| PublishError::Io(format!("cannot run git: {e}")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(PublishError::Git {
                command: "cat-file".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// The unified diff of the workspace against its base commit.
    pub async fn diff(&self) -> Result<String, PublishError> {
        self.stage().await?;
        self.git(&[
            "diff",
            "--cached",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            &self.base_commit,
        ])
        .await
    }

    /// The unified diff of `paths` (taken literally, never as pathspec
    /// magic) against the base commit: what a held effect shows.
    pub async fn diff_paths(&self, paths: &[String]) -> Result<String, PublishError> {
        self.stage().await?;
        let out = host_git(Some(&self.git_dir), Some(&self.work_tree))
            .env("GIT_LITERAL_PATHSPECS", "1")
            .args([
                "diff",
                "--cached",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                self.base_commit.as_str(),
                "--",
            ])
            .args(paths)
            .output()
            .await
            .map_err(|e| PublishError::Io(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            return Err(PublishError::Git {
                command: "diff".into(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Commit the workspace on the run's branch; returns the commit id.
    pub async fn commit(&self, message: &str) -> Result<String, PublishError> {
        if self.changed_since("HEAD").await?.is_empty() {
            return Err(PublishError::NothingToCommit);
        }
        self.git(&["commit", "--quiet", "--no-verify", "-m", message])
            .await?;
        Ok(self.git(&["rev-parse", "HEAD"]).await?.trim().to_string())
    }
}

impl Publisher {
    /// Write the run's branch as a git bundle to `path` (for handback),
    /// committing any work not yet committed first.
    pub async fn bundle(&self, path: &Path, message: &str) -> Result<(), PublishError> {
        match self.commit(message).await {
            Ok(_) | Err(PublishError::NothingToCommit) => {}
            Err(e) => return Err(e),
        }
        let target = path
            .to_str()
            .ok_or_else(|| PublishError::Io(format!("{} is not UTF-8", path.display())))?;
        let r = format!("refs/heads/{}", self.branch);
        self.git(&["bundle", "create", "--quiet", target, &r])
            .await
            .map(drop)
    }
}

/// Host git with no system or global configuration, no hooks, no
/// fsmonitor, and no prompts: every git the host runs starts here (the
/// local forge, the shadow repository, held pull requests).
pub(crate) fn host_git(
    git_dir: Option<&Path>,
    work_tree: Option<&Path>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = git_dir {
        cmd.arg("--git-dir").arg(d);
    }
    if let Some(w) = work_tree {
        cmd.arg("--work-tree").arg(w);
    }
    cmd.args([
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "core.quotePath=false",
        "-c",
        "commit.gpgSign=false",
        // Hints ("Using 'master' as the name for the initial branch…") are
        // for people at a terminal; in the service they are log noise.
        "-c",
        "init.defaultBranch=main",
        "-c",
        "advice.defaultBranchName=false",
    ])
    .env("GIT_CONFIG_NOSYSTEM", "1")
    .env("GIT_CONFIG_GLOBAL", "/dev/null")
    .env("GIT_TERMINAL_PROMPT", "0")
    .env("GIT_AUTHOR_NAME", "Kiln")
    .env("GIT_AUTHOR_EMAIL", "kiln@localhost")
    .env("GIT_COMMITTER_NAME", "Kiln")
    .env("GIT_COMMITTER_EMAIL", "kiln@localhost")
    .env_remove("GIT_DIR")
    .env_remove("GIT_WORK_TREE")
    .stdin(std::process::Stdio::null());
    cmd
}

async fn run_git(
    git_dir: Option<&Path>,
    work_tree: Option<&Path>,
    args: &[&std::ffi::OsStr],
) -> Result<String, PublishError> {
    let out = host_git(git_dir, work_tree)
        .args(args)
        .output()
        .await
        .map_err(|e| PublishError::Io(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(PublishError::Git {
            command: args
                .first()
                .map(|a| a.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .expect("sh")
            .success();
        assert!(ok, "{script}");
    }

    #[tokio::test]
    async fn commits_the_workspace_without_running_anything_its_git_config_defines() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path();
        sh(
            d,
            "git init -q -b main mirror && cd mirror && echo one > a.txt && git add a.txt && \
             git -c user.name=t -c user.email=t@t commit -qm init && cd .. && \
             git clone -q mirror ws",
        );
        let head = String::from_utf8(
            std::process::Command::new("git")
                .args(["-C", "mirror", "rev-parse", "HEAD"])
                .current_dir(d)
                .output()
                .expect("rev-parse")
                .stdout,
        )
        .expect("utf8");
        // What a hostile agent can do inside the mount: filters, fsmonitor,
        // hooks, all in the workspace's own .git.
        let pwned = d.join("PWNED");
        sh(
            &d.join("ws"),
            &format!(
                "git config filter.evil.clean 'touch {p}' && git config core.fsmonitor 'touch {p}' && \
                 mkdir -p .git/hooks && printf '#!/bin/sh\\ntouch {p}\\n' > .git/hooks/pre-commit && \
                 chmod +x .git/hooks/pre-commit && echo '* filter=evil' > .gitattributes && \
                 echo two > a.txt && echo new > b.txt",
                p = pwned.display()
            ),
        );
        let p = Publisher::new(
            &d.join("mirror"),
            head.trim(),
            &d.join("ws"),
            "kiln/test",
            None,
        )
        .await
        .expect("publisher");
        let mut paths = p.changed_paths().await.expect("paths");
        paths.sort();
        assert_eq!(paths, [".gitattributes", "a.txt", "b.txt"]);
        let files = p.changed_files().await.expect("files");
        assert!(files.contains(&("b.txt".to_string(), b"new\n".to_vec())));
        let diff = p.diff().await.expect("diff");
        assert!(diff.contains("+two"), "{diff}");
        let sha = p.commit("Fix a").await.expect("commit");
        assert_eq!(sha.len(), 40);
        assert!(
            !pwned.exists(),
            "host git ran something the workspace defined"
        );
        assert!(matches!(
            p.commit("again").await,
            Err(PublishError::NothingToCommit)
        ));
    }

    #[tokio::test]
    async fn refuses_branches_outside_kiln() {
        let err = Publisher::new(
            Path::new("/nonexistent"),
            "abc",
            Path::new("/tmp"),
            "main",
            None,
        )
        .await
        .expect_err("main is not a kiln branch");
        assert!(err.to_string().contains("kiln/<name>"), "{err}");
    }
}
