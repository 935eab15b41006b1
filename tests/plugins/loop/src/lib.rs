//! Loops forever, burning CPU without calling the host.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task};

#[derive(Default)]
struct Loop;

impl Role for Loop {
    fn run(&mut self, _task: Task) -> Result<Outcome, RoleError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

kiln_plugin_sdk::register_role!(Loop);
