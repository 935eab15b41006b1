//! The detection step as the host runs it, between a writing run's proposal
//! (a pull request or an update to one) and the push: gather the artifacts
//! (the workspace's diff against its base, the proposal's texts, the run's
//! untrusted inputs), run the scanners and the optional model detector
//! within the step's own time budget, and say what the policies must know.
//! Whatever cannot be read or answered in time is a detector error, and an
//! error holds (fails closed).
use std::time::Duration;

use super::{Artifacts, Patch, Text, Verdict, model::ModelDetector, scan};
use crate::forge::ForgeSnapshot;
use crate::policy::{DetectionContext, Redactor};
use crate::publish::Publisher;

/// The step's time budget when `[detection] timeout_secs` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How a run's detection step is set up (from `[detection]`).
#[derive(Clone)]
pub struct Settings {
    /// The model-backed detector, when the repository enables it.
    pub model: Option<std::sync::Arc<dyn ModelDetector>>,
    /// The step's time budget.
    pub budget: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            budget: DEFAULT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("model", &self.model.is_some())
            .field("budget", &self.budget)
            .finish()
    }
}

/// Most findings listed one per line in the run's detection event.
const EVENT_FINDINGS: usize = 50;

/// The run's untrusted inputs: titles, bodies and comments written by
/// people without write access, named by where they came from.
pub fn untrusted_inputs(snapshot: &ForgeSnapshot) -> Vec<Text> {
    let mut out = Vec::new();
    let issues = snapshot.issues.values().map(|i| ("issue", i)).chain(
        snapshot
            .pull_requests
            .values()
            .map(|p| ("pull request", &p.issue)),
    );
    for (kind, issue) in issues {
        let n = issue.number;
        if !issue.trusted {
            out.push(Text::new(
                format!("{kind} #{n} title by @{}", issue.author),
                issue.title.clone(),
            ));
            out.push(Text::new(
                format!("{kind} #{n} body by @{}", issue.author),
                issue.body.clone(),
            ));
        }
        for c in issue.comments.iter().filter(|c| !c.trusted) {
            out.push(Text::new(
                format!("{kind} #{n} comment {} by @{}", c.id, c.author),
                c.body.clone(),
            ));
        }
    }
    // HashMap order is arbitrary; findings come out in a stable order.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Runs the step. Never fails: a patch that cannot be read, a model
/// detector that errs, and running out of time are errors in the verdict.
pub async fn run(
    publisher: Option<&Publisher>,
    outbound: Vec<Text>,
    inputs: Vec<Text>,
    redactor: &Redactor,
    model: Option<&dyn ModelDetector>,
    budget: Duration,
) -> Verdict {
    match tokio::time::timeout(
        budget,
        run_within(publisher, outbound, inputs, redactor, model),
    )
    .await
    {
        Ok(v) => v,
        Err(_) => Verdict {
            findings: Vec::new(),
            errors: vec![format!(
                "the detection step did not finish within {}s",
                budget.as_secs()
            )],
        },
    }
}

async fn run_within(
    publisher: Option<&Publisher>,
    outbound: Vec<Text>,
    inputs: Vec<Text>,
    redactor: &Redactor,
    model: Option<&dyn ModelDetector>,
) -> Verdict {
    let mut errors = Vec::new();
    let patch = match publisher {
        Some(p) => match p.diff().await {
            Ok(diff) => Patch::parse(&diff),
            Err(e) => {
                errors.push(format!("the patch could not be read: {e}"));
                Patch::default()
            }
        },
        None => Patch::default(),
    };
    let artifacts = Artifacts {
        patch,
        outbound,
        inputs,
    };
    let mut verdict = scan(&artifacts, redactor);
    verdict.errors.extend(errors);
    if let Some(m) = model {
        match m.detect(&artifacts).await {
            Ok(v) => verdict.merge(v),
            Err(e) => verdict
                .errors
                .push(format!("the model detector failed: {e}")),
        }
    }
    verdict
}

/// What the policies see of a verdict.
pub fn policy_context(v: &Verdict) -> DetectionContext {
    DetectionContext {
        findings: v.findings.len() as u64,
        categories: v
            .categories()
            .into_iter()
            .map(|c| c.as_str().to_string())
            .collect(),
        failed: !v.errors.is_empty(),
    }
}

/// The run event's message: the summary, then every finding on a line.
pub fn event_message(v: &Verdict) -> String {
    let mut out = match v.label() {
        "clean" => {
            "detection: clean, no findings in the patch, outbound text or inputs".to_string()
        }
        _ => format!(
            "detection: {} finding{}{}",
            v.findings.len(),
            if v.findings.len() == 1 { "" } else { "s" },
            if v.errors.is_empty() {
                String::new()
            } else {
                format!(", {} detector error(s): holding", v.errors.len())
            }
        ),
    };
    for f in v.findings.iter().take(EVENT_FINDINGS) {
        out.push_str("\n- ");
        out.push_str(&f.to_string());
    }
    if v.findings.len() > EVENT_FINDINGS {
        out.push_str(&format!(
            "\n- … and {} more",
            v.findings.len() - EVENT_FINDINGS
        ));
    }
    for e in &v.errors {
        out.push_str("\n- detector error: ");
        out.push_str(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forge::{Comment, Issue};

    fn issue(n: u64, trusted: bool, body: &str, comments: Vec<Comment>) -> Issue {
        Issue {
            number: n,
            title: format!("Issue {n}"),
            body: body.into(),
            author: if trusted { "maintainer" } else { "stranger" }.into(),
            trusted,
            labels: vec![],
            open: true,
            comments,
        }
    }

    #[test]
    fn only_untrusted_words_are_inputs() {
        let mut s = ForgeSnapshot::default();
        s.issues.insert(
            1,
            issue(
                1,
                true,
                "trusted body",
                vec![
                    Comment {
                        id: 7,
                        author: "mallory".into(),
                        trusted: false,
                        body: "stranger's comment".into(),
                    },
                    Comment {
                        id: 8,
                        author: "maintainer".into(),
                        trusted: true,
                        body: "ours".into(),
                    },
                ],
            ),
        );
        s.issues
            .insert(2, issue(2, false, "stranger's body", vec![]));
        let texts: Vec<String> = untrusted_inputs(&s).into_iter().map(|t| t.text).collect();
        assert_eq!(texts, ["stranger's comment", "stranger's body", "Issue 2"]);
    }

    struct Slow;
    impl ModelDetector for Slow {
        fn detect<'a>(&'a self, _: &'a Artifacts) -> super::super::model::DetectFuture<'a> {
            Box::pin(async {
                std::future::pending::<()>().await;
                Ok(Verdict::default())
            })
        }
    }

    struct Broken;
    impl ModelDetector for Broken {
        fn detect<'a>(&'a self, _: &'a Artifacts) -> super::super::model::DetectFuture<'a> {
            Box::pin(async { Err("the model answered nonsense".to_string()) })
        }
    }

    #[tokio::test]
    async fn a_detector_that_fails_or_times_out_holds() {
        let r = Redactor::new(&[]).expect("redactor");
        let slow = run(
            None,
            vec![],
            vec![],
            &r,
            Some(&Slow),
            Duration::from_millis(1),
        )
        .await;
        assert!(
            slow.holds() && slow.errors[0].contains("did not finish"),
            "{slow:?}"
        );
        let broken = run(None, vec![], vec![], &r, Some(&Broken), DEFAULT_TIMEOUT).await;
        assert!(broken.holds() && broken.errors[0].contains("nonsense"));
        let ctx = policy_context(&broken);
        assert!(ctx.failed && ctx.findings == 0);
        assert!(event_message(&broken).contains("detector error: the model detector failed"));
        let clean = run(None, vec![], vec![], &r, None, DEFAULT_TIMEOUT).await;
        assert!(!clean.holds());
        assert_eq!(policy_context(&clean), DetectionContext::default());
    }
}
