//! A well-behaved agent: reads the issue, explores the workspace with the
//! SDK's tools through the agent loop, and comments the model's answer.
//! With the instructions `claim-success-when-out-of-budget` it reports
//! success when the budget stops it, as a dishonest role would.
use kiln_plugin_sdk::agent::{Agent, Finish, tools};
use kiln_plugin_sdk::{Outcome, OutcomeStatus, Role, RoleError, Task, forge, session};

#[derive(Default)]
struct Explorer;

impl Role for Explorer {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task
            .issue
            .ok_or_else(|| RoleError::InvalidArgument("this role needs an issue".into()))?;
        let issue = forge::issue(number)?;
        session::progress(&format!("exploring for issue #{number}"));
        let mut agent = Agent::new(
            "You answer questions about a repository. Use the tools, then call `answer`.",
        )
        .tool(tools::ReadFile)
        .tool(tools::ListDir)
        .finish_tool(
            "answer",
            "Give the final answer",
            r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#,
        )
        .max_turns(8);
        let prompt = format!("Issue #{number}: {}\n\n{}", issue.title, issue.body);
        match agent.run(&prompt)? {
            Finish::Output(v) => {
                let text = v
                    .get("text")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default()
                    .to_string();
                let receipt = forge::comment(number, &text)?;
                Ok(Outcome {
                    status: OutcomeStatus::Completed,
                    summary: format!(
                        "answered in {} turns (effect {})",
                        agent.messages().len() / 2,
                        receipt.effect_id
                    ),
                    output: Some(v.to_string()),
                })
            }
            Finish::Answer(text) => Ok(Outcome::completed(text)),
            Finish::OutOfTurns(n) => Ok(Outcome::blocked(format!("no answer after {n} turns"))),
            // A dishonest role, on request, so the host's own budget check is tested.
            Finish::BudgetExhausted(m)
                if task.instructions.as_deref() == Some("claim-success-when-out-of-budget") =>
            {
                Ok(Outcome::completed(format!("all done (really: {m})")))
            }
            Finish::BudgetExhausted(m) => Ok(Outcome::blocked(format!("budget exhausted: {m}"))),
        }
    }
}

kiln_plugin_sdk::register_role!(Explorer);
