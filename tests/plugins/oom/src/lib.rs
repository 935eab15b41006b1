//! Allocates 1 MiB blocks forever and keeps them all.
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task};

#[derive(Default)]
struct Oom;

impl Role for Oom {
    fn run(&mut self, _task: Task) -> Result<Outcome, RoleError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

kiln_plugin_sdk::register_role!(Oom);
