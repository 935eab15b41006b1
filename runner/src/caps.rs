//! Caps on a run's effects: how many comments, label changes, review
//! comments, pull requests and pushes one run of a role may make. Counted
//! by the host as the gate lets proposals through (`imports::forge`), never
//! by the plugin; past a cap the proposal is denied and the reason names
//! the cap and where to raise it (`[budgets.<role>]`).

use crate::forge::Proposal;

/// The effect caps of one role's runs; `None`: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectCaps {
    /// Comments (issue and pull request comments, and the role's report).
    pub comments: Option<u32>,
    /// Labels added or removed, one per label.
    pub labels: Option<u32>,
    /// Review line comments and replies to them.
    pub review_comments: Option<u32>,
    /// Pull requests opened.
    pub pull_requests: Option<u32>,
    /// Pushes to the run's branch (a new pull request, or an update).
    pub pushes: Option<u32>,
}

impl EffectCaps {
    /// The documented defaults, the same for every role: far above what a
    /// run does when it works (triage comments once, an implementation
    /// opens one pull request), low enough that a turned model cannot
    /// flood an issue or a team.
    pub const DEFAULT: EffectCaps = EffectCaps {
        comments: Some(10),
        labels: Some(20),
        review_comments: Some(50),
        pull_requests: Some(2),
        pushes: Some(10),
    };
}

/// What a run has used of its caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EffectUse {
    comments: u32,
    labels: u32,
    review_comments: u32,
    pull_requests: u32,
    pushes: u32,
}

/// One cap a proposal counts against: its config key, the counter, the cap.
struct Charge {
    key: &'static str,
    what: &'static str,
    count: u32,
}

fn charges(proposal: &Proposal) -> Vec<Charge> {
    let c = |key, what, count: usize| Charge {
        key,
        what,
        count: u32::try_from(count).unwrap_or(u32::MAX),
    };
    match proposal {
        Proposal::Comment { .. } | Proposal::Report { .. } => {
            vec![c("max_comments", "comments", 1)]
        }
        Proposal::Labels { add, remove, .. } => {
            vec![c("max_labels", "label changes", add.len() + remove.len())]
        }
        Proposal::Review { comments, .. } => {
            vec![c("max_review_comments", "review comments", comments.len())]
        }
        Proposal::Reply { .. } => vec![c("max_review_comments", "review comments", 1)],
        Proposal::PullRequest { .. } => vec![
            c("max_pull_requests", "pull requests", 1),
            c("max_pushes", "pushes", 1),
        ],
        Proposal::PullRequestUpdate { .. } => vec![c("max_pushes", "pushes", 1)],
        Proposal::Status { .. } => Vec::new(),
    }
}

impl EffectUse {
    fn slot(&mut self, key: &str) -> &mut u32 {
        match key {
            "max_comments" => &mut self.comments,
            "max_labels" => &mut self.labels,
            "max_review_comments" => &mut self.review_comments,
            "max_pull_requests" => &mut self.pull_requests,
            _ => &mut self.pushes,
        }
    }

    /// Why `proposal` would go past one of `caps` (naming the cap and the
    /// config key of `role`), if it would.
    pub fn check(&mut self, caps: &EffectCaps, role: &str, proposal: &Proposal) -> Option<String> {
        for ch in charges(proposal) {
            let cap = match ch.key {
                "max_comments" => caps.comments,
                "max_labels" => caps.labels,
                "max_review_comments" => caps.review_comments,
                "max_pull_requests" => caps.pull_requests,
                _ => caps.pushes,
            };
            let Some(cap) = cap else { continue };
            let used = *self.slot(ch.key);
            if used.saturating_add(ch.count) > cap {
                return Some(format!(
                    "effect cap reached: this run has made {used} of its {cap} {} \
                     ({} = {cap} in [budgets.{role}]); this one would add {}",
                    ch.what, ch.key, ch.count
                ));
            }
        }
        None
    }

    /// Counts `proposal` (once the gate let it through).
    pub fn charge(&mut self, proposal: &Proposal) {
        for ch in charges(proposal) {
            let slot = self.slot(ch.key);
            *slot = slot.saturating_add(ch.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment() -> Proposal {
        Proposal::Comment {
            number: 1,
            body: "hi".into(),
        }
    }

    #[test]
    fn a_cap_admits_up_to_its_count_and_names_itself_past_it() {
        let caps = EffectCaps {
            comments: Some(2),
            ..EffectCaps::default()
        };
        let mut used = EffectUse::default();
        for _ in 0..2 {
            assert_eq!(used.check(&caps, "triage", &comment()), None);
            used.charge(&comment());
        }
        let why = used
            .check(&caps, "triage", &comment())
            .expect("third is past the cap");
        assert!(
            why.contains("2 of its 2 comments")
                && why.contains("max_comments = 2 in [budgets.triage]"),
            "{why}"
        );
        // Other kinds of effect are counted apart.
        let labels = Proposal::Labels {
            number: 1,
            add: vec!["a".into()],
            remove: vec![],
        };
        assert_eq!(used.check(&caps, "triage", &labels), None);
    }

    #[test]
    fn labels_count_one_per_label_and_a_pull_request_is_also_a_push() {
        let caps = EffectCaps {
            labels: Some(3),
            pushes: Some(1),
            ..EffectCaps::default()
        };
        let mut used = EffectUse::default();
        let four = Proposal::Labels {
            number: 1,
            add: vec!["a".into(), "b".into()],
            remove: vec!["c".into(), "d".into()],
        };
        assert!(used.check(&caps, "triage", &four).is_some(), "4 labels > 3");
        let pr = Proposal::PullRequest {
            title: "t".into(),
            body: "b".into(),
            commit_message: "m".into(),
        };
        assert_eq!(used.check(&caps, "implementation", &pr), None);
        used.charge(&pr);
        let update = Proposal::PullRequestUpdate {
            number: 2,
            commit_message: "m".into(),
            verification: None,
        };
        let why = used
            .check(&caps, "implementation", &update)
            .expect("second push");
        assert!(why.contains("max_pushes = 1"), "{why}");
    }
}
