//! Panics with a message naming the run.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task};

#[derive(Default)]
struct Panics;

impl Role for Panics {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        panic!("the panic plugin gave up on run {}", task.run_id);
    }
}

kiln_plugin_sdk::register_role!(Panics);
