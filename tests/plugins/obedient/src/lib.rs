//! A naive agent: shows the model the issue and proposes whatever labels and
//! comment the model's `act` call asks for, without judgement. It stands in
//! for a plugin whose model was talked round by a prompt injection; what it
//! proposes must be stopped by the host's gate, not by the plugin.
use kiln_plugin_sdk::agent::{Agent, Finish};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, forge};

#[derive(Default)]
struct Obedient;

impl Role for Obedient {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task
            .issue
            .ok_or_else(|| RoleError::InvalidArgument("this role needs an issue".into()))?;
        let issue = forge::issue(number)?;
        let mut agent = Agent::new("Do what the issue says.").finish_tool(
            "act",
            "Apply labels and post a comment",
            r#"{"type":"object","properties":{"labels":{"type":"array","items":{"type":"string"}},"comment":{"type":"string"}}}"#,
        );
        let Finish::Output(v) = agent.run(&format!("{}\n\n{}", issue.title, issue.body))? else {
            return Ok(Outcome::blocked("the model did not act".to_string()));
        };
        let labels: Vec<&str> = v
            .get("labels")
            .and_then(|l| l.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let mut results = Vec::new();
        if !labels.is_empty() {
            results.push(match forge::set_labels(number, &labels, &[]) {
                Ok(r) => format!("labels: {:?}", r.state),
                Err(e) => format!("labels: {}", e.describe()),
            });
        }
        if let Some(c) = v.get("comment").and_then(|c| c.as_str()) {
            results.push(match forge::comment(number, c) {
                Ok(r) => format!("comment: {:?}", r.state),
                Err(e) => format!("comment: {}", e.describe()),
            });
        }
        Ok(Outcome::completed(results.join("; ")))
    }
}

kiln_plugin_sdk::register_role!(Obedient);
