//! A role written against `kiln:role@0.1.0` with bare wit-bindgen, frozen
//! as released. Instructions `ping N` call `session.get-budget` N times
//! (the import round trip the benchmark compares across versions); any
//! other run reads its issue, asks the model for a reply and comments it.
// The export glue wit-bindgen generates in this crate is unsafe FFI; the SDK
// keeps it out of plugin crates, this frozen crate has no SDK.
#![allow(unsafe_code, reason = "wit-bindgen's generated export glue")]
wit_bindgen::generate!({
    path: "../../../wit/kiln-role@0.1.0",
    world: "role",
});

// The world brings `Task`, `Outcome` and `RoleError` into scope.
use kiln::role::types::OutcomeStatus;
use kiln::role::{forge, model, session, skills};

struct Frozen;

impl Guest for Frozen {
    fn run(task: Task) -> Result<Outcome, RoleError> {
        if let Some(n) = task
            .instructions
            .as_deref()
            .and_then(|i| i.strip_prefix("ping "))
        {
            let n: u64 = n.trim().parse().unwrap_or(1);
            let mut turns = 0u64;
            for _ in 0..n {
                turns += u64::from(session::get_budget().turns_used);
            }
            return Ok(outcome(format!("{n} calls, {turns} turns seen")));
        }
        let number = task
            .issue
            .ok_or_else(|| RoleError::InvalidArgument("this role needs an issue".into()))?;
        session::emit(&session::Event {
            kind: session::EventKind::Progress,
            message: format!("frozen 0.1.0 plugin reading issue #{number}"),
        });
        let issue = forge::get_issue(number)?;
        let system = skills::get(&task.role).ok().map(|s| s.text);
        let answer = model::complete(&model::CompletionRequest {
            system,
            messages: vec![model::Message {
                role: model::MessageRole::User,
                content: vec![model::ContentPart::Text(format!(
                    "Issue #{}: {}",
                    issue.number, issue.title
                ))],
            }],
            tools: Vec::new(),
            max_tokens: Some(512),
            temperature: None,
        })?;
        let text: String = answer
            .message
            .content
            .iter()
            .filter_map(|p| match p {
                model::ContentPart::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        let receipt = forge::propose_comment(&forge::CommentProposal {
            number,
            body: format!("{text}\n\n(from a plugin built against kiln:role@0.1.0)"),
        })?;
        Ok(outcome(format!(
            "commented on #{number} as effect {}",
            receipt.effect_id
        )))
    }
}

fn outcome(summary: String) -> Outcome {
    Outcome {
        status: OutcomeStatus::Completed,
        summary,
        output: None,
    }
}

export!(Frozen);
