//! The trust check every dispatch passes before a run is queued. It fails
//! closed: no forge for the repository, a failed lookup, or anything below
//! write permission means no run.

pub use crate::forge::ForgeResolver;
use crate::forge::{Permission, RepoRef};

use super::route::Dispatch;

/// Why a dispatch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Kiln has no forge for the repository.
    #[error("no forge is configured for {0}")]
    NoForge(RepoRef),
    /// The permission lookup failed; read as untrusted.
    #[error("permission lookup for {login} on {repo} failed ({reason}); treated as untrusted")]
    LookupFailed {
        /// Who.
        login: String,
        /// Where.
        repo: RepoRef,
        /// The forge's error.
        reason: String,
    },
    /// The actor's permission is below write.
    #[error(
        "{login} has {permission} permission on {repo}; triggering needs write, maintain or admin"
    )]
    TooLow {
        /// Who.
        login: String,
        /// Where.
        repo: RepoRef,
        /// What they have.
        permission: Permission,
    },
}

/// How the dispatch's actor earned trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouched {
    /// The forge says they have this permission.
    Permission(Permission),
    /// Kiln itself, on its own `kiln/*` branch of the repository.
    KilnItself,
}

/// Checks that `dispatch`'s actor may trigger it.
pub async fn check(
    forges: &ForgeResolver,
    kiln_logins: &[String],
    dispatch: &Dispatch,
) -> Result<Vouched, Untrusted> {
    let repo = &dispatch.repo;
    let forge = forges(repo).ok_or_else(|| Untrusted::NoForge(repo.clone()))?;
    let login = &dispatch.actor.login;
    // The forge's permission API does not know app bots; Kiln's own pull
    // requests are vouched for by the branch, which only writers can push.
    if dispatch.kiln_branch && kiln_logins.iter().any(|l| l == login) {
        return Ok(Vouched::KilnItself);
    }
    match forge.permission(login).await {
        Ok(p) if p.may_trigger() => Ok(Vouched::Permission(p)),
        Ok(permission) => Err(Untrusted::TooLow {
            login: login.clone(),
            repo: repo.clone(),
            permission,
        }),
        Err(e) => Err(Untrusted::LookupFailed {
            login: login.clone(),
            repo: repo.clone(),
            reason: e.to_string(),
        }),
    }
}
