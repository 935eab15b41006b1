//! Helpers shared by the gate's unit tests: a gate, runs and effects.

use std::sync::Arc;

use super::*;
use crate::policy::redact::SecretValue;

pub(super) const PERMIT_ALL: &str = "permit(principal, action, resource);";

pub(super) fn gate_with(repo_policies: Option<&str>) -> Gate {
    let config = GateConfig {
        repo_policies: repo_policies.map(str::to_owned),
        label_allowlist: vec!["bug".into(), "enhancement".into(), "needs-info".into()],
        allow_workflow_changes: false,
        secrets: vec![SecretValue {
            name: "CANARY".into(),
            value: "kiln-canary-0b5e7d2a".into(),
        }],
        ..GateConfig::default()
    };
    Gate::new(&config).unwrap_or_else(|e| panic!("test gate should build: {e}"))
}

pub(super) fn run_with(role: Role, trust: Trust, branch: &str) -> Arc<RunContext> {
    Arc::new(RunContext::new(
        "run-1",
        role,
        "acme/widgets",
        trust,
        branch,
    ))
}

pub(super) fn run(role: Role) -> Arc<RunContext> {
    run_with(role, Trust::Trusted, "kiln/12-fix-typo")
}

pub(super) fn req(role: Role, effect: Effect) -> EffectRequest {
    EffectRequest {
        run: run(role),
        effect,
    }
}

pub(super) fn labels(labels: &[&str]) -> Effect {
    Effect::SetLabels {
        number: 12,
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
    }
}

pub(super) fn pr(head: &str, draft: bool) -> Effect {
    Effect::ProposePullRequest {
        head: head.into(),
        base: "main".into(),
        title: "Fix typo".into(),
        body: "Fixes #12".into(),
        draft,
    }
}

pub(super) fn write(path: &str) -> Effect {
    Effect::WorkspaceWrite {
        path: path.into(),
        content: b"hello".to_vec(),
    }
}

pub(super) fn review(event: ReviewEvent, in_diff: bool) -> Effect {
    Effect::Review {
        number: 13,
        event,
        body: "Looks reasonable.".into(),
        comments: vec![ReviewComment {
            path: "src/lib.rs".into(),
            line: 10,
            in_diff,
            body: "nit".into(),
        }],
    }
}

pub(super) fn update(head: &str, verification: Option<&str>) -> Effect {
    Effect::UpdatePullRequest {
        number: 13,
        head: head.into(),
        verification: verification.map(str::to_owned),
    }
}

pub(super) fn reply(body: &str) -> Effect {
    Effect::Reply {
        number: 13,
        comment_id: 901,
        body: body.into(),
    }
}

pub(super) fn report(body: &str) -> Effect {
    Effect::Report {
        number: 13,
        body: body.into(),
    }
}

pub(super) fn status(context: &str, description: &str) -> Effect {
    Effect::Status {
        number: 13,
        context: context.into(),
        state: StatusState::Success,
        description: description.into(),
    }
}
