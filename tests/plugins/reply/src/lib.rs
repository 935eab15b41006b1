//! Uses what WIT 0.2.0 added: reads its pull request's review threads,
//! replies in each, sets the `kiln/answer` status (or, with instructions
//! `status NAME`, a status named NAME), and reports how many earlier runs
//! of its role `signals` returned.
use kiln_plugin_sdk::forge::{self, StatusState};
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, signals};

#[derive(Default)]
struct Reply;

impl Role for Reply {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task
            .pull_request
            .ok_or_else(|| RoleError::InvalidArgument("needs a pull request".into()))?;
        let pr = forge::pull_request(number)?;
        for thread in &pr.review_threads {
            let asked = thread
                .comments
                .first()
                .map(|c| c.body.as_str())
                .unwrap_or("");
            forge::reply(number, thread.id, &format!("Addressed: {asked}"))?;
        }
        let context = task
            .instructions
            .as_deref()
            .and_then(|i| i.strip_prefix("status "))
            .unwrap_or("kiln/answer");
        forge::set_status(
            number,
            context,
            StatusState::Success,
            "every thread answered",
        )?;
        let history = match signals::recent_runs(&task.role, 24, 10) {
            Ok(runs) => format!("{} earlier runs", runs.len()),
            Err(e) => format!("no history ({})", e.describe()),
        };
        Ok(Outcome::completed(format!(
            "replied to {} threads on #{number} at {}; {history}",
            pr.review_threads.len(),
            pr.head_sha
        )))
    }
}

kiln_plugin_sdk::register_role!(Reply);
