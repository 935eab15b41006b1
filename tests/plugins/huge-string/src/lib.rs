//! Sends a 100 MB event message to the host.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, session};

#[derive(Default)]
struct Huge;

impl Role for Huge {
    fn run(&mut self, _task: Task) -> Result<Outcome, RoleError> {
        let message = "x".repeat(100 * 1000 * 1000);
        session::progress(&message);
        Ok(Outcome::completed("the host accepted a 100 MB event"))
    }
}

kiln_plugin_sdk::register_role!(Huge);
