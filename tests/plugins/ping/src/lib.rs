//! Calls `session.budget` N times, N read from the task's instructions.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, session};

#[derive(Default)]
struct Ping;

impl Role for Ping {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let n: u64 = task
            .instructions
            .as_deref()
            .unwrap_or("1")
            .trim()
            .parse()
            .unwrap_or(1);
        let mut turns = 0u64;
        for _ in 0..n {
            turns += u64::from(session::budget().turns_used);
        }
        Ok(Outcome::completed(format!("{n} calls, {turns} turns seen")))
    }
}

kiln_plugin_sdk::register_role!(Ping);
