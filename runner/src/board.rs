//! Where an issue stands in the label state machine, for the board
//! (`/ui/board/{owner}/{name}`, `GET /repos/{owner}/{name}/board`).
//!
//! [`place`] is the one place the rules are written down, as a pure
//! function of what the forge and the store say about an issue: its labels,
//! its linked pull requests (and their `kiln/verification` status) and its
//! runs. The API gathers those facts; this module only decides. The README
//! ("The board") states the same rules for people.
use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::forge::{PullRequest, StatusState};
use crate::store::{RunId, RunState};

/// The commit status context the verification role sets.
pub const VERIFICATION_CONTEXT: &str = "kiln/verification";

/// Head-branch prefix of a spec pull request: `kiln/spec-issue-N`.
pub const SPEC_HEAD_PREFIX: &str = "kiln/spec-issue-";

/// Head-branch prefix of an implementation pull request: `kiln/implement-issue-N`.
pub const IMPLEMENTATION_HEAD_PREFIX: &str = "kiln/implement-issue-";

/// A column of the board: a stage of the label state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Opened, not (or not yet usefully) triaged; triage runs here.
    New,
    /// Waiting for the reporter (`needs-info`).
    NeedsInfo,
    /// A maintainer asked for a spec (`ready-to-spec`); the spec run works here.
    Spec,
    /// A spec pull request is open, waiting for a maintainer.
    SpecReview,
    /// The plan is approved (`plan-approved`, `ready-to-implement`).
    Approved,
    /// An implementation run is working on it.
    Implementing,
    /// An implementation pull request is open (review and verification run here).
    InReview,
    /// The implementation pull request's head passed `kiln/verification`.
    Verified,
    /// The issue's last run ended `blocked`: a human must act.
    Blocked,
}

impl Stage {
    /// Every stage, in board (column) order.
    pub const ALL: [Stage; 9] = [
        Stage::New,
        Stage::NeedsInfo,
        Stage::Spec,
        Stage::SpecReview,
        Stage::Approved,
        Stage::Implementing,
        Stage::InReview,
        Stage::Verified,
        Stage::Blocked,
    ];

    /// The stage's id in JSON and in the page (`spec-review`).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::New => "new",
            Stage::NeedsInfo => "needs-info",
            Stage::Spec => "spec",
            Stage::SpecReview => "spec-review",
            Stage::Approved => "approved",
            Stage::Implementing => "implementing",
            Stage::InReview => "in-review",
            Stage::Verified => "verified",
            Stage::Blocked => "blocked",
        }
    }

    /// The column's heading.
    pub fn title(self) -> &'static str {
        match self {
            Stage::New => "New",
            Stage::NeedsInfo => "Needs info",
            Stage::Spec => "Spec",
            Stage::SpecReview => "Spec review",
            Stage::Approved => "Approved",
            Stage::Implementing => "Implementing",
            Stage::InReview => "In review",
            Stage::Verified => "Verified",
            Stage::Blocked => "Blocked",
        }
    }

    /// The stage a live run of `role` puts its issue in; `None` for custom
    /// roles, which do not move issues along the state machine. Matched by
    /// name so a new built-in role (verification) needs no change here.
    pub fn of_role(role: &Role) -> Option<Stage> {
        match role.as_str() {
            "triage" => Some(Stage::New),
            "spec" => Some(Stage::Spec),
            "implementation" => Some(Stage::Implementing),
            "review" | "verification" => Some(Stage::InReview),
            _ => None,
        }
    }
}

/// What a pull request is to an issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PrKind {
    /// The spec pull request (head `kiln/spec-issue-N`).
    Spec,
    /// The implementation pull request (head `kiln/implement-issue-N`, or a
    /// body that closes the issue).
    Implementation,
}

/// What `pr` is to issue `issue`, if anything: its head branch first (Kiln's
/// own branches), else a closing keyword in its body (`Closes #N`, as
/// GitHub reads them: close/closes/closed, fix/fixes/fixed,
/// resolve/resolves/resolved, any case).
pub fn link(issue: u64, pr: &PullRequest) -> Option<PrKind> {
    let head_is = |prefix: &str| {
        pr.head_branch
            .strip_prefix(prefix)
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u64>() == Ok(issue))
    };
    if head_is(SPEC_HEAD_PREFIX) {
        Some(PrKind::Spec)
    } else if head_is(IMPLEMENTATION_HEAD_PREFIX) || closes(&pr.issue.body, issue) {
        Some(PrKind::Implementation)
    } else {
        None
    }
}

/// Whether `body` closes issue `issue` with one of GitHub's closing
/// keywords (`Closes #12`, `fixes: #12`); `#123` does not close `#12`.
pub fn closes(body: &str, issue: u64) -> bool {
    const KEYWORDS: [&str; 9] = [
        "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
    ];
    let lower = body.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(at) = lower[from..].find('#') {
        let hash = from + at;
        from = hash + 1;
        let digits: String = lower[hash + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if digits.parse::<u64>() != Ok(issue) {
            continue;
        }
        // The word before `#`, past spaces and an optional colon; it must
        // be a whole word (`unclosed #12`, `2fixes #12` close nothing).
        let before = lower[..hash].trim_end_matches([' ', '\t']);
        let before = before.strip_suffix(':').unwrap_or(before);
        let word_start = before
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_alphabetic())
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let whole = word_start == 0 || !bytes[word_start - 1].is_ascii_digit();
        if whole && KEYWORDS.contains(&&before[word_start..]) {
            return true;
        }
    }
    false
}

/// A pull request linked to an issue, as the board needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedPr {
    /// Its number.
    pub number: u64,
    /// Spec or implementation.
    pub kind: PrKind,
    /// Its labels (a spec pull request may carry `plan-approved`).
    pub labels: Vec<String>,
    /// The state of its head's `kiln/verification` status, if set.
    pub verification: Option<StatusState>,
}

/// One run of an issue (or of one of its pull requests), as the board needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFact {
    /// Its id.
    pub id: RunId,
    /// Its role.
    pub role: Role,
    /// Its state.
    pub state: RunState,
}

/// Where an issue stands, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The column.
    pub stage: Stage,
    /// Which rule put it there, for people (`spec pull request #4 is open`).
    pub why: String,
    /// The live run (queued, preparing, running or awaiting approval) that
    /// decided the stage, if one did.
    pub active_run: Option<RunId>,
}

fn has(labels: &[String], label: &str) -> bool {
    labels.iter().any(|l| l.eq_ignore_ascii_case(label))
}

/// The stage of an issue. `runs` are the issue's runs and its linked pull
/// requests' runs, newest first (the store's order); `prs` its open linked
/// pull requests. The first rule that applies wins:
///
/// 1. a live run (queued, preparing, running, awaiting approval) of a
///    built-in role: its role's stage (triage → new, spec → spec,
///    implementation → implementing, review and verification → in review);
/// 2. the newest finished run of a built-in role ended `blocked` → blocked;
/// 3. an open implementation pull request: verified if its head's
///    `kiln/verification` status is `success`, else in review;
/// 4. `plan-approved` or `ready-to-implement` on the issue, or
///    `plan-approved` on its spec pull request → approved;
/// 5. an open spec pull request → spec review;
/// 6. `ready-to-spec` → spec;
/// 7. `needs-info` → needs info;
/// 8. otherwise → new.
///
/// Custom roles' runs never move an issue.
pub fn place(labels: &[String], prs: &[LinkedPr], runs: &[RunFact]) -> Placement {
    let at = |stage, why: String| Placement {
        stage,
        why,
        active_run: None,
    };
    let staged = runs
        .iter()
        .filter_map(|r| Stage::of_role(&r.role).map(|s| (r, s)));
    for (run, stage) in staged.clone() {
        if !run.state.is_terminal() {
            return Placement {
                stage,
                why: format!("{} run {} is {}", run.role, run.id, run.state),
                active_run: Some(run.id),
            };
        }
    }
    if let Some((run, _)) = staged.clone().next()
        && run.state == RunState::Blocked
    {
        return at(
            Stage::Blocked,
            format!("its last run, {} ({}), ended blocked", run.id, run.role),
        );
    }
    // The newest implementation pull request speaks for the issue.
    let newest = |kind| {
        prs.iter()
            .filter(|p| p.kind == kind)
            .max_by_key(|p| p.number)
    };
    if let Some(pr) = newest(PrKind::Implementation) {
        return match pr.verification {
            Some(StatusState::Success) => at(
                Stage::Verified,
                format!(
                    "{VERIFICATION_CONTEXT} passed on pull request #{}",
                    pr.number
                ),
            ),
            Some(other) => at(
                Stage::InReview,
                format!(
                    "implementation pull request #{} is open ({VERIFICATION_CONTEXT}: {other})",
                    pr.number
                ),
            ),
            None => at(
                Stage::InReview,
                format!("implementation pull request #{} is open", pr.number),
            ),
        };
    }
    let spec = newest(PrKind::Spec);
    for label in ["plan-approved", "ready-to-implement"] {
        if has(labels, label) {
            return at(Stage::Approved, format!("labelled {label}"));
        }
    }
    if let Some(pr) = spec {
        if has(&pr.labels, "plan-approved") {
            return at(
                Stage::Approved,
                format!("spec pull request #{} is labelled plan-approved", pr.number),
            );
        }
        return at(
            Stage::SpecReview,
            format!("spec pull request #{} is open", pr.number),
        );
    }
    if has(labels, "ready-to-spec") {
        return at(Stage::Spec, "labelled ready-to-spec".into());
    }
    if has(labels, "needs-info") {
        return at(Stage::NeedsInfo, "labelled needs-info".into());
    }
    at(Stage::New, "no stage label, pull request or run yet".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::Issue;

    fn labels(ls: &[&str]) -> Vec<String> {
        ls.iter().map(|l| (*l).to_owned()).collect()
    }

    fn run(id: u64, role: &str, state: RunState) -> RunFact {
        RunFact {
            id: RunId(id),
            role: role.parse().expect("role"),
            state,
        }
    }

    fn pr(number: u64, kind: PrKind, verification: Option<StatusState>) -> LinkedPr {
        LinkedPr {
            number,
            kind,
            labels: Vec::new(),
            verification,
        }
    }

    fn stage(ls: &[&str], prs: &[LinkedPr], runs: &[RunFact]) -> Stage {
        place(&labels(ls), prs, runs).stage
    }

    #[test]
    fn labels_alone_place_an_issue() {
        assert_eq!(stage(&[], &[], &[]), Stage::New);
        assert_eq!(stage(&["bug"], &[], &[]), Stage::New);
        assert_eq!(stage(&["bug", "needs-info"], &[], &[]), Stage::NeedsInfo);
        assert_eq!(stage(&["ready-to-spec"], &[], &[]), Stage::Spec);
        // A maintainer's label moves it on, whatever triage said.
        assert_eq!(
            stage(&["needs-info", "ready-to-spec"], &[], &[]),
            Stage::Spec
        );
        assert_eq!(stage(&["ready-to-implement"], &[], &[]), Stage::Approved);
        assert_eq!(
            stage(&["ready-to-spec", "plan-approved"], &[], &[]),
            Stage::Approved
        );
        assert_eq!(stage(&["Needs-Info"], &[], &[]), Stage::NeedsInfo);
    }

    #[test]
    fn pull_requests_move_an_issue_past_its_labels() {
        let spec = pr(4, PrKind::Spec, None);
        assert_eq!(
            stage(&["ready-to-spec"], std::slice::from_ref(&spec), &[]),
            Stage::SpecReview
        );
        // Approved with the spec pull request still open (implementation
        // starts from the spec branch).
        assert_eq!(
            stage(
                &["ready-to-spec", "plan-approved"],
                std::slice::from_ref(&spec),
                &[]
            ),
            Stage::Approved
        );
        let approved_spec = LinkedPr {
            labels: labels(&["plan-approved"]),
            ..spec.clone()
        };
        assert_eq!(
            stage(&["ready-to-spec"], &[approved_spec], &[]),
            Stage::Approved
        );
        let implementation = pr(6, PrKind::Implementation, None);
        assert_eq!(
            stage(&["plan-approved"], &[spec.clone(), implementation], &[]),
            Stage::InReview
        );
        let failed = pr(6, PrKind::Implementation, Some(StatusState::Failure));
        let placed = place(&labels(&[]), &[failed], &[]);
        assert_eq!(placed.stage, Stage::InReview);
        assert!(placed.why.contains("failure"), "{}", placed.why);
        let passed = pr(6, PrKind::Implementation, Some(StatusState::Success));
        assert_eq!(stage(&[], &[passed], &[]), Stage::Verified);
        // The newest implementation pull request speaks for the issue.
        let old_passed = pr(5, PrKind::Implementation, Some(StatusState::Success));
        let new_pending = pr(9, PrKind::Implementation, Some(StatusState::Pending));
        assert_eq!(stage(&[], &[old_passed, new_pending], &[]), Stage::InReview);
    }

    #[test]
    fn a_live_run_puts_the_issue_in_its_roles_stage() {
        for (role, want) in [
            ("triage", Stage::New),
            ("spec", Stage::Spec),
            ("implementation", Stage::Implementing),
            ("review", Stage::InReview),
            ("verification", Stage::InReview),
        ] {
            for state in [
                RunState::Queued,
                RunState::Preparing,
                RunState::Running,
                RunState::AwaitingApproval,
            ] {
                let placed = place(
                    &labels(&["needs-info"]),
                    &[],
                    &[run(3, role, state), run(2, "triage", RunState::Blocked)],
                );
                assert_eq!(placed.stage, want, "{role} {state}");
                assert_eq!(placed.active_run, Some(RunId(3)));
                assert!(placed.why.contains("r3"), "{}", placed.why);
            }
        }
        // Finished runs do not hold the issue in their stage.
        assert_eq!(
            stage(
                &["ready-to-spec"],
                &[],
                &[run(3, "spec", RunState::Succeeded)]
            ),
            Stage::Spec
        );
        assert_eq!(
            stage(
                &[],
                &[pr(4, PrKind::Spec, None)],
                &[run(3, "spec", RunState::Failed)]
            ),
            Stage::SpecReview
        );
    }

    #[test]
    fn a_blocked_last_run_blocks_until_a_new_run() {
        let blocked = run(5, "implementation", RunState::Blocked);
        let placed = place(
            &labels(&["plan-approved"]),
            &[],
            std::slice::from_ref(&blocked),
        );
        assert_eq!(placed.stage, Stage::Blocked);
        assert!(placed.why.contains("r5"), "{}", placed.why);
        assert_eq!(placed.active_run, None);
        // Blocked beats an open pull request: its review run was refused.
        assert_eq!(
            stage(
                &[],
                &[pr(6, PrKind::Implementation, None)],
                &[run(7, "review", RunState::Blocked)]
            ),
            Stage::Blocked
        );
        // A newer run (finished or live) lifts it.
        assert_eq!(
            stage(
                &["plan-approved"],
                &[],
                &[run(6, "implementation", RunState::Queued), blocked.clone()]
            ),
            Stage::Implementing
        );
        assert_eq!(
            stage(
                &["plan-approved"],
                &[],
                &[run(6, "implementation", RunState::Failed), blocked.clone()]
            ),
            Stage::Approved
        );
        // An older blocked run does not count.
        assert_eq!(
            stage(
                &["needs-info"],
                &[],
                &[
                    run(9, "triage", RunState::Succeeded),
                    run(2, "triage", RunState::Blocked)
                ]
            ),
            Stage::NeedsInfo
        );
    }

    #[test]
    fn custom_roles_never_move_an_issue() {
        let custom = [
            run(9, "changelog", RunState::Running),
            run(8, "changelog", RunState::Blocked),
        ];
        let placed = place(&labels(&["ready-to-spec"]), &[], &custom);
        assert_eq!(placed.stage, Stage::Spec);
        assert_eq!(placed.active_run, None);
    }

    fn pull(head: &str, body: &str) -> PullRequest {
        PullRequest {
            issue: Issue {
                number: 40,
                title: "t".into(),
                body: body.into(),
                author: "kiln[bot]".into(),
                trusted: true,
                labels: Vec::new(),
                open: true,
                comments: Vec::new(),
            },
            head_branch: head.into(),
            base_branch: "main".into(),
            draft: true,
            diff: String::new(),
            head_sha: String::new(),
            review_threads: Vec::new(),
            head_from_fork: false,
        }
    }

    #[test]
    fn pull_requests_link_by_head_branch_or_closing_keyword() {
        assert_eq!(
            link(12, &pull("kiln/spec-issue-12", "")),
            Some(PrKind::Spec)
        );
        assert_eq!(
            link(12, &pull("kiln/implement-issue-12", "")),
            Some(PrKind::Implementation)
        );
        assert_eq!(link(12, &pull("kiln/spec-issue-123", "")), None);
        assert_eq!(link(12, &pull("kiln/spec-issue-1", "")), None);
        assert_eq!(link(12, &pull("kiln/spec-issue-+12", "")), None);
        assert_eq!(
            link(12, &pull("feature", "Closes #12\n\nFixes the thing")),
            Some(PrKind::Implementation)
        );
        assert_eq!(link(12, &pull("feature", "Refs #12")), None);
        // A spec PR that mentions closing stays the spec PR.
        assert_eq!(
            link(12, &pull("kiln/spec-issue-12", "Closes #12")),
            Some(PrKind::Spec)
        );
    }

    #[test]
    fn closing_keywords_are_whole_words_before_the_exact_number() {
        for yes in [
            "Closes #12",
            "closes #12.",
            "This fixes #12",
            "Resolved: #12",
            "FIXES #12 and #13",
            "See #3; closes #12",
            "close #12",
            "(fixed #12)",
            "é fixes #12",
        ] {
            assert!(closes(yes, 12), "{yes:?} should close #12");
        }
        for no in [
            "Closes #123",
            "Closes #1",
            "Refs #12",
            "unclosed #12",
            "prefixes #12",
            "closes # 12",
            "#12",
            "closes issue #12",
            "2fixes #12",
            "é fixes #13",
            "",
        ] {
            assert!(!closes(no, 12), "{no:?} should not close #12");
        }
    }

    #[test]
    fn stages_are_in_board_order_with_distinct_ids() {
        let ids: Vec<&str> = Stage::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            ids,
            [
                "new",
                "needs-info",
                "spec",
                "spec-review",
                "approved",
                "implementing",
                "in-review",
                "verified",
                "blocked"
            ]
        );
        for s in Stage::ALL {
            assert_eq!(
                serde_json::to_value(s).expect("serialize"),
                serde_json::json!(s.as_str())
            );
        }
    }
}
