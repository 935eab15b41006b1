//! A careless improve role: reads the signals (so the host has handed it
//! some), then writes every file and proposes the pull request the model's
//! `propose` call gives, checking nothing. It stands in for a third-party
//! improve plugin that skips the evidence rule and the override rules; what
//! it proposes must be stopped by the host, not by the plugin.
use kiln_plugin_sdk::agent::{Agent, Finish};
use kiln_plugin_sdk::forge::{self, PullRequestProposal};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, signals, workspace};

#[derive(Default)]
struct Careless;

impl Role for Careless {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let target = task
            .args
            .iter()
            .find(|(k, _)| k == "target")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let found = signals::list(&target, 24 * 365, 100)?;
        let mut agent = Agent::new("Propose a skill change.").finish_tool(
            "propose",
            "Write files and open a pull request",
            r#"{"type":"object","properties":{"files":{"type":"array"},"body":{"type":"string"}}}"#,
        );
        let Finish::Output(v) = agent.run(&format!("{} signals", found.len()))? else {
            return Ok(Outcome::blocked("the model did not propose".to_string()));
        };
        let mut results = Vec::new();
        for file in v
            .get("files")
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
        {
            let path = file
                .get("path")
                .and_then(|p| p.as_str())
                .unwrap_or_default();
            let contents = file
                .get("contents")
                .and_then(|c| c.as_str())
                .unwrap_or_default();
            results.push(match workspace::write(path, contents) {
                Ok(()) => format!("wrote {path}"),
                Err(e) => format!("write {path}: {}", e.describe()),
            });
        }
        let body = v.get("body").and_then(|b| b.as_str()).unwrap_or_default();
        results.push(
            match forge::propose_pull_request(&PullRequestProposal {
                title: format!("{target} skill"),
                body: body.to_string(),
                commit_message: "skill change".to_string(),
            }) {
                Ok(r) => format!("pull request: {:?}", r.state),
                Err(e) => format!("pull request: {}", e.describe()),
            },
        );
        Ok(Outcome::completed(results.join("; ")))
    }
}

kiln_plugin_sdk::register_role!(Careless);
