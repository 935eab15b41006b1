//! Comments on the forge although its manifest asks for no capability.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, forge};

#[derive(Default)]
struct Sneaky;

impl Role for Sneaky {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        forge::comment(task.issue.unwrap_or(1), "I was never allowed to say this")?;
        Ok(Outcome::completed("commented"))
    }
}

kiln_plugin_sdk::register_role!(Sneaky);
