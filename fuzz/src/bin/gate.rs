//! The policy gate on any effect a plugin can ask for, under a repository
//! policy that permits everything: the built-in invariants still hold, and
//! nothing it lets out carries a configured secret.
#![no_main]

use std::sync::{Arc, LazyLock};

use kiln::policy::gate::{
    Decision, Effect, EffectRequest, Gate, GateConfig, ReviewComment, ReviewEvent, Role,
    RunContext, StatusState, Trust,
};
use kiln::policy::redact::SecretValue;
use kiln_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "kiln-fuzz-canary-5e1f09";

/// Built once: Cedar policy parsing per input would hold the target to a
/// few inputs a second.
static GATE: LazyLock<Gate> = LazyLock::new(|| {
    Gate::new(&GateConfig {
        // The worst a repository can configure: Cedar permits everything,
        // so only the built-in invariants stand in the way.
        repo_policies: Some("permit(principal, action, resource);".into()),
        label_allowlist: vec!["bug".into(), "needs-info".into()],
        secrets: vec![SecretValue {
            name: "CANARY".into(),
            value: CANARY.into(),
        }],
        ..GateConfig::default()
    })
    .expect("the fuzz gate builds")
});

const ROLES: [Role; 6] = [
    Role::Triage,
    Role::Spec,
    Role::Implementation,
    Role::Review,
    Role::Verification,
    Role::Improve,
];

/// A string from the input, sometimes with the canary planted in it.
fn text(input: &mut Input) -> String {
    let mut s = input.string();
    if input.byte() & 1 == 1 {
        let at = s
            .char_indices()
            .map(|(i, _)| i)
            .nth(usize::from(input.byte()))
            .unwrap_or(s.len());
        s.insert_str(at, CANARY);
    }
    s
}

fn strings(input: &mut Input) -> Vec<String> {
    (0..input.byte() % 4).map(|_| input.string()).collect()
}

fn effect(input: &mut Input, own_branch: &str) -> Effect {
    let number = u64::from(input.byte());
    // The run's own branch half the time, so the allowed paths are reached.
    let branch = |input: &mut Input| {
        if input.byte() & 1 == 0 {
            own_branch.to_string()
        } else {
            input.string()
        }
    };
    match input.byte() % 14 {
        0 => Effect::WorkspaceRead {
            path: input.string(),
        },
        1 => Effect::WorkspaceWrite {
            path: input.string(),
            content: input.slice().to_vec(),
        },
        2 => Effect::WorkspaceExec {
            argv: strings(input),
        },
        3 => Effect::ModelComplete {
            model: input.string(),
        },
        4 => Effect::Comment {
            number,
            body: text(input),
        },
        5 => Effect::SetLabels {
            number,
            labels: strings(input),
        },
        6 => Effect::ProposePullRequest {
            head: branch(input),
            base: input.string(),
            title: text(input),
            body: text(input),
            draft: input.byte() & 1 == 1,
        },
        7 => Effect::UpdatePullRequest {
            number,
            head: branch(input),
            verification: Some(text(input)),
        },
        8 => Effect::Review {
            number,
            event: match input.byte() % 3 {
                0 => ReviewEvent::Comment,
                1 => ReviewEvent::RequestChanges,
                _ => ReviewEvent::Approve,
            },
            body: text(input),
            comments: (0..input.byte() % 3)
                .map(|_| ReviewComment {
                    path: input.string(),
                    line: u32::from(input.byte()),
                    in_diff: input.byte() & 1 == 1,
                    body: text(input),
                })
                .collect(),
        },
        9 => Effect::Reply {
            number,
            comment_id: u64::from(input.byte()),
            body: text(input),
        },
        10 => Effect::Status {
            number,
            context: input.string(),
            state: match input.byte() % 4 {
                0 => StatusState::Pending,
                1 => StatusState::Success,
                2 => StatusState::Failure,
                _ => StatusState::Error,
            },
            description: text(input),
        },
        11 => Effect::Report {
            number,
            body: text(input),
        },
        12 => Effect::Merge { number },
        _ => Effect::Push {
            branch: branch(input),
            paths: strings(input),
        },
    }
}

/// Every text the effect would send out.
fn outbound(effect: &Effect) -> Vec<&str> {
    match effect {
        Effect::Comment { body, .. } | Effect::Reply { body, .. } | Effect::Report { body, .. } => {
            vec![body]
        }
        Effect::ProposePullRequest { title, body, .. } => vec![title, body],
        Effect::UpdatePullRequest {
            verification: Some(v),
            ..
        } => vec![v],
        Effect::Review { body, comments, .. } => std::iter::once(body.as_str())
            .chain(comments.iter().map(|c| c.body.as_str()))
            .collect(),
        Effect::Status { description, .. } => vec![description],
        _ => Vec::new(),
    }
}

fn is_workflow(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower == ".github/workflows" || lower.starts_with(".github/workflows/")
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let role = ROLES[usize::from(input.byte()) % ROLES.len()];
    let trust = if input.byte() & 1 == 0 {
        Trust::Trusted
    } else {
        Trust::Untrusted
    };
    let own = format!("kiln/{}", input.string());
    let run = Arc::new(RunContext::new(
        "r1",
        role,
        "acme/widgets",
        trust,
        own.as_str(),
    ));
    let effect = effect(&mut input, &own);
    let (decision, admitted) = GATE.admit(EffectRequest {
        run,
        effect: effect.clone(),
    });
    let allowed = matches!(decision, Decision::Allow { .. });
    let what = format!("{effect:?} as {role:?}: {decision:?}");
    match &effect {
        Effect::Merge { .. } => assert!(decision.is_deny(), "a merge got past the gate: {what}"),
        Effect::Push { branch, paths } => {
            assert!(
                !allowed || branch == &own,
                "a push to another branch was allowed: {what}"
            );
            assert!(
                !allowed || !paths.iter().any(|p| is_workflow(p)),
                "a workflow change was allowed without the grant: {what}"
            );
        }
        Effect::ProposePullRequest { head, .. } => assert!(
            !allowed || head == &own,
            "a pull request from another branch was allowed: {what}"
        ),
        Effect::WorkspaceWrite { path, .. } => assert!(
            !allowed || !is_workflow(path),
            "a workflow write was allowed without the grant: {what}"
        ),
        _ => {}
    }
    if !decision.is_deny() {
        for text in outbound(&admitted.effect) {
            assert!(!text.contains(CANARY), "the gate let a secret out: {what}");
        }
    }
});
