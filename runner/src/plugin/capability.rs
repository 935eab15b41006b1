//! Capabilities: the named permissions a plugin asks for in its manifest and
//! a role grants. A plugin may call an import function only if its manifest
//! asks for the function's capability *and* its role grants it; the policy
//! gate then decides each individual call.
//!
//! `session.*`, `skills.*` and the shared `types` interface need no
//! capability: every role may report events and read its skill.
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A permission to call a group of import functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `model.complete`: ask the model for a turn.
    ModelComplete,
    /// `workspace.read`: read files, list directories, see the diff.
    WorkspaceRead,
    /// `workspace.write`: create, replace and remove files.
    WorkspaceWrite,
    /// `workspace.exec`: run commands in the sandbox.
    WorkspaceExec,
    /// `forge.read`: read issues, pull requests and their diffs.
    ForgeRead,
    /// `forge.comment`: propose comments.
    ForgeComment,
    /// `forge.set-labels`: propose label changes.
    ForgeSetLabels,
    /// `forge.propose-pull-request`: propose a draft pull request.
    ForgeProposePullRequest,
    /// `forge.review`: propose a pull request review.
    ForgeReview,
    /// `forge.reply`: propose replies in review threads (WIT 0.2.0).
    ForgeReply,
    /// `forge.status`: propose commit statuses named `kiln/...` (WIT 0.2.0).
    ForgeStatus,
    /// `signals.read`: read the repository's earlier runs and corrections (WIT 0.2.0).
    SignalsRead,
    /// `forge.report`: post the role's one report comment, or update it in place (WIT 0.2.0).
    ForgeReport,
}

impl Capability {
    /// Every capability, in a stable order.
    pub const ALL: [Capability; 13] = [
        Capability::ModelComplete,
        Capability::WorkspaceRead,
        Capability::WorkspaceWrite,
        Capability::WorkspaceExec,
        Capability::ForgeRead,
        Capability::ForgeComment,
        Capability::ForgeSetLabels,
        Capability::ForgeProposePullRequest,
        Capability::ForgeReview,
        Capability::ForgeReply,
        Capability::ForgeStatus,
        Capability::SignalsRead,
        Capability::ForgeReport,
    ];

    /// The capability's name as written in manifests and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ModelComplete => "model.complete",
            Capability::WorkspaceRead => "workspace.read",
            Capability::WorkspaceWrite => "workspace.write",
            Capability::WorkspaceExec => "workspace.exec",
            Capability::ForgeRead => "forge.read",
            Capability::ForgeComment => "forge.comment",
            Capability::ForgeSetLabels => "forge.set-labels",
            Capability::ForgeProposePullRequest => "forge.propose-pull-request",
            Capability::ForgeReview => "forge.review",
            Capability::ForgeReply => "forge.reply",
            Capability::ForgeStatus => "forge.status",
            Capability::SignalsRead => "signals.read",
            Capability::ForgeReport => "forge.report",
        }
    }

    /// The capability needed to call `function` of the `kiln:role`
    /// interface `interface` in contract version `wit`: `Ok(None)` if none
    /// is needed, `Err` if the function is not part of that version.
    pub fn for_import(
        wit: &str,
        interface: &str,
        function: &str,
    ) -> Result<Option<Capability>, NotInContract> {
        use Capability::*;
        let since_0_2 = wit != "0.1.0";
        let cap = match (interface, function) {
            ("forge", "propose-reply") if since_0_2 => Some(ForgeReply),
            ("forge", "propose-status") if since_0_2 => Some(ForgeStatus),
            ("forge", "propose-pull-request-update") if since_0_2 => Some(ForgeProposePullRequest),
            ("forge", "propose-report") if since_0_2 => Some(ForgeReport),
            ("signals", "recent-runs" | "list-signals") if since_0_2 => Some(SignalsRead),
            ("session", "emit" | "next-instruction" | "get-budget" | "report-panic") => None,
            ("skills", "get") => None,
            ("model", "complete") => Some(ModelComplete),
            ("workspace", "read-file" | "list-dir" | "diff") => Some(WorkspaceRead),
            ("workspace", "write-file" | "remove-file") => Some(WorkspaceWrite),
            ("workspace", "exec") => Some(WorkspaceExec),
            ("forge", "get-issue" | "get-pull-request" | "get-pull-request-diff") => {
                Some(ForgeRead)
            }
            ("forge", "propose-comment") => Some(ForgeComment),
            ("forge", "propose-labels") => Some(ForgeSetLabels),
            ("forge", "propose-pull-request") => Some(ForgeProposePullRequest),
            ("forge", "propose-review") => Some(ForgeReview),
            _ => return Err(NotInContract),
        };
        Ok(cap)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An import function that is not part of the `kiln:role` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a function of the kiln:role contract")]
pub struct NotInContract;

/// A capability name that Kiln does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown capability `{0}` (known: model.complete, workspace.read, workspace.write, workspace.exec, forge.read, forge.comment, forge.set-labels, forge.propose-pull-request, forge.review, forge.reply, forge.status, signals.read, forge.report)"
)]
pub struct UnknownCapability(pub String);

impl FromStr for Capability {
    type Err = UnknownCapability;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCapability(s.to_string()))
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySet(BTreeSet<Capability>);

impl CapabilitySet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `cap` is in the set.
    pub fn contains(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    /// The capabilities in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }

    /// Parse a list of capability names.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, UnknownCapability> {
        names.iter().map(|n| n.as_ref().parse()).collect()
    }
}

impl FromIterator<Capability> for CapabilitySet {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        CapabilitySet(iter.into_iter().collect())
    }
}

/// What each built-in role is granted. Custom roles get their grants from
/// `kiln.toml`; anything not granted here is refused at load time.
pub fn builtin_role_grants(role: &str) -> Option<CapabilitySet> {
    use Capability::*;
    let caps: &[Capability] = match role {
        "triage" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceExec,
            ForgeRead,
            ForgeComment,
            ForgeSetLabels,
        ],
        "spec" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceWrite,
            WorkspaceExec,
            ForgeRead,
            ForgeComment,
            ForgeProposePullRequest,
        ],
        // Implementation also answers reviews on its pull request.
        "implementation" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceWrite,
            WorkspaceExec,
            ForgeRead,
            ForgeComment,
            ForgeProposePullRequest,
            ForgeReply,
        ],
        "review" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceExec,
            ForgeRead,
            ForgeComment,
            ForgeReview,
        ],
        // Runs checks and reports them; it never writes the workspace (the
        // host keeps the checkout's files unchangeable) nor reviews.
        "verification" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceExec,
            ForgeRead,
            ForgeReport,
            ForgeStatus,
        ],
        // The outer loop: reads the history, writes only `.kiln/skills/**`
        // (a gate invariant) and proposes it as a draft pull request.
        "improve" => &[
            ModelComplete,
            WorkspaceRead,
            WorkspaceWrite,
            ForgeRead,
            ForgeProposePullRequest,
            SignalsRead,
        ],
        _ => return None,
    };
    Some(caps.iter().copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_round_trips_through_its_name() {
        for cap in Capability::ALL {
            assert_eq!(cap.as_str().parse::<Capability>(), Ok(cap));
        }
        assert!(
            "forge.merge".parse::<Capability>().is_err(),
            "there is no merge capability to ask for"
        );
    }

    #[test]
    fn no_builtin_role_may_review_and_write_code_at_once() {
        // Separation of duties: the role that writes code never reviews it.
        for role in ["triage", "spec", "implementation", "review", "verification"] {
            let grants = builtin_role_grants(role).expect("built-in role");
            assert!(
                !(grants.contains(Capability::ForgeReview)
                    && grants.contains(Capability::WorkspaceWrite)),
                "role {role} should not be granted both forge.review and workspace.write"
            );
        }
        assert!(
            builtin_role_grants("triage").is_some_and(|g| !g.contains(Capability::WorkspaceWrite))
        );
    }

    #[test]
    fn unknown_import_functions_are_not_part_of_the_contract() {
        assert_eq!(
            Capability::for_import("0.2.0", "forge", "merge"),
            Err(NotInContract)
        );
        assert_eq!(
            Capability::for_import("0.1.0", "forge", "propose-comment"),
            Ok(Some(Capability::ForgeComment))
        );
        assert_eq!(Capability::for_import("0.2.0", "session", "emit"), Ok(None));
        // What 0.2.0 added is not part of 0.1.0.
        assert_eq!(
            Capability::for_import("0.2.0", "forge", "propose-reply"),
            Ok(Some(Capability::ForgeReply))
        );
        assert_eq!(
            Capability::for_import("0.1.0", "forge", "propose-reply"),
            Err(NotInContract)
        );
        assert_eq!(
            Capability::for_import("0.1.0", "signals", "list-signals"),
            Err(NotInContract)
        );
        assert_eq!(
            Capability::for_import("0.2.0", "forge", "propose-report"),
            Ok(Some(Capability::ForgeReport))
        );
        assert_eq!(
            Capability::for_import("0.1.0", "forge", "propose-report"),
            Err(NotInContract)
        );
    }

    #[test]
    fn verification_reports_and_runs_checks_but_never_writes() {
        let g = builtin_role_grants("verification").expect("built-in role");
        for cap in [
            Capability::WorkspaceExec,
            Capability::ForgeReport,
            Capability::ForgeStatus,
        ] {
            assert!(g.contains(cap), "verification should be granted {cap}");
        }
        for cap in [
            Capability::WorkspaceWrite,
            Capability::ForgeReview,
            Capability::ForgeProposePullRequest,
            Capability::ForgeSetLabels,
        ] {
            assert!(!g.contains(cap), "verification should not be granted {cap}");
        }
    }
}
