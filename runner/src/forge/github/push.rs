//! Pushing a run's commit to GitHub with `git`, the credential passed as an
//! HTTP header through `GIT_CONFIG_*` environment variables: never in argv
//! (visible in `ps`), never in the remote URL (stored, printed), never logged.
//!
//! The repository pushed from is a run's workspace, which a sandbox wrote:
//! its config and hooks are not trusted. So git never reads them: the push
//! runs from an empty host-owned repository that borrows the workspace's
//! object store (`GIT_ALTERNATE_OBJECT_DIRECTORIES`), with a hermetic
//! environment (no system or global config, no credential helpers, no
//! prompts, no redirects).
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use crate::forge::ForgeError;

/// The only branches Kiln pushes to.
pub const BRANCH_PREFIX: &str = "kiln/";

/// Environment variables passed through to git (proxies and CA bundles the
/// host may need to reach GitHub).
const PASSTHROUGH: &[&str] = &[
    "PATH",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
];

/// Refuses a branch outside `kiln/` or one git would not accept as a ref name.
pub fn check_branch(branch: &str) -> Result<(), ForgeError> {
    let Some(rest) = branch.strip_prefix(BRANCH_PREFIX) else {
        return Err(ForgeError::Invalid(format!(
            "refusing to push to branch {branch:?}: Kiln only pushes to {BRANCH_PREFIX}* branches"
        )));
    };
    let bad_char = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    let malformed = rest.is_empty()
        || branch.len() > 200
        || branch.chars().any(bad_char)
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch.ends_with('/')
        || branch.ends_with('.')
        || branch.ends_with(".lock")
        || branch.split('/').any(|c| c.starts_with('.'));
    if malformed {
        return Err(ForgeError::Invalid(format!(
            "branch {branch:?} is not a valid git branch name"
        )));
    }
    Ok(())
}

/// Refuses anything but a full hexadecimal object id (so it can never be read
/// as an option or a ref expression).
pub fn check_commit(commit: &str) -> Result<(), ForgeError> {
    let hex = commit
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if hex && matches!(commit.len(), 40 | 64) {
        Ok(())
    } else {
        Err(ForgeError::Invalid(format!(
            "commit {commit:?} is not a full lower-case hexadecimal object id"
        )))
    }
}

/// Force-pushes (with the `git` program at `git`) `commit` from the repository at `local` to `refs/heads/{branch}`
/// of `url`, sending `authorization` as the HTTP `Authorization` header.
/// `redact` lists values scrubbed from git's output in errors.
pub async fn push(
    git: &Path,
    local: &Path,
    url: &str,
    authorization: Option<&str>,
    commit: &str,
    branch: &str,
    redact: &[&str],
) -> Result<(), ForgeError> {
    check_branch(branch)?;
    check_commit(commit)?;
    let objects = object_dir(local)?;
    let scratch = tempfile::tempdir()
        .map_err(|e| ForgeError::Git(format!("cannot create a scratch directory: {e}")))?;
    let git_dir = scratch.path().join("push.git");
    let home = scratch.path().join("home");
    std::fs::create_dir(&home)
        .map_err(|e| ForgeError::Git(format!("cannot create a scratch directory: {e}")))?;
    run(
        git,
        &home,
        &["init", "--quiet", "--bare", &git_dir.to_string_lossy()],
        &[],
        redact,
    )
    .await?;
    let mut config: Vec<(String, String)> = vec![
        ("core.hooksPath".into(), "/dev/null".into()),
        ("credential.helper".into(), String::new()),
        ("http.followRedirects".into(), "false".into()),
        ("protocol.allow".into(), "never".into()),
        ("protocol.https.allow".into(), "always".into()),
        ("protocol.http.allow".into(), "always".into()),
        ("protocol.file.allow".into(), "always".into()),
    ];
    if let Some(value) = authorization {
        // Scoped to the remote's URL so no other URL ever receives it.
        config.push((
            format!("http.{url}.extraHeader"),
            format!("Authorization: {value}"),
        ));
    }
    let mut env: Vec<(String, String)> = vec![
        ("GIT_DIR".into(), git_dir.to_string_lossy().into_owned()),
        (
            "GIT_ALTERNATE_OBJECT_DIRECTORIES".into(),
            objects.to_string_lossy().into_owned(),
        ),
        ("GIT_CONFIG_COUNT".into(), config.len().to_string()),
    ];
    for (i, (k, v)) in config.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{i}"), k));
        env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
    }
    let refspec = format!("{commit}:refs/heads/{branch}");
    run(
        git,
        &home,
        &[
            "push",
            "--force",
            "--no-verify",
            "--quiet",
            "--",
            url,
            &refspec,
        ],
        &env,
        redact,
    )
    .await?;
    tracing::info!(branch, commit, "pushed");
    Ok(())
}

/// The object store of the repository at `local` (a work tree or a bare repository).
fn object_dir(local: &Path) -> Result<PathBuf, ForgeError> {
    let dot_git = local.join(".git");
    let candidates = [dot_git.join("objects"), local.join("objects")];
    candidates.into_iter().find(|p| p.is_dir()).ok_or_else(|| {
        ForgeError::Git(format!(
            "{} is not a git repository with its own object store",
            local.display()
        ))
    })
}

/// Runs git with a hermetic environment; errors carry git's output, redacted.
async fn run(
    git: &Path,
    home: &Path,
    args: &[&str],
    env: &[(String, String)],
    redact: &[&str],
) -> Result<(), ForgeError> {
    let mut cmd = Command::new(git);
    cmd.env_clear()
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for var in PASSTHROUGH {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| ForgeError::Git(format!("cannot run git: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    for secret in redact.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "<redacted>");
    }
    Err(ForgeError::Git(format!(
        "git {} failed ({}): {text}",
        args.first().copied().unwrap_or(""),
        out.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_kiln_branches_pass() {
        for ok in ["kiln/run-1", "kiln/issue-4/impl", "kiln/a.b"] {
            assert!(check_branch(ok).is_ok(), "{ok}");
        }
        for bad in [
            "main",
            "kiln",
            "kiln/",
            "Kiln/x",
            "refs/heads/kiln/x",
            "kiln/../main",
            "kiln/x:refs/heads/main",
            "kiln/x y",
            "kiln/.hidden",
            "kiln/x.lock",
            "kiln//x",
            "kiln/x@{1}",
            "-kiln/x",
            "kiln/x\n",
        ] {
            assert!(
                matches!(check_branch(bad), Err(ForgeError::Invalid(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn commits_must_be_full_object_ids() {
        assert!(check_commit(&"a".repeat(40)).is_ok());
        assert!(check_commit(&"0".repeat(64)).is_ok());
        for bad in [
            "HEAD",
            "--upload-pack=x",
            "abc123",
            &"A".repeat(40),
            &"g".repeat(40),
        ] {
            assert!(check_commit(bad).is_err(), "{bad}");
        }
    }
}
