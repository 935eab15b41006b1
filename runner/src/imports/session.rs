//! `kiln:role/session`: events out, steering in, budget.
//!
//! | WIT function        | capability | gate |
//! |---------------------|------------|------|
//! | `emit`              | none       | size-checked (traps past `max_event_bytes`) |
//! | `next-instruction`  | none       | — |
//! | `get-budget`        | none       | — |
//! | `report-panic`      | none       | size-capped, never traps |
use wasmtime::component::HasSelf;

use super::{RunState, check_size};
use crate::plugin::wit::latest::kiln::role::session::{self, Budget, Event, EventKind as WitKind};
use crate::session::{EventKind, Pause, Steering};

/// Per-run state of the session interface.
pub struct SessionCtx {
    /// Steering messages waiting for the plugin.
    pub steering: Steering,
    /// Held while an operator is attached to the run's sandbox.
    pub pause: Pause,
}

impl session::Host for RunState {
    async fn emit(&mut self, event: Event) -> wasmtime::Result<()> {
        check_size(
            "session.emit: event message",
            event.message.len(),
            self.limits.max_event_bytes,
        )?;
        let kind = match event.kind {
            WitKind::Progress => EventKind::Progress,
            WitKind::Note => EventKind::Note,
            WitKind::Warning => EventKind::Warning,
        };
        self.events.record(kind, event.message);
        Ok(())
    }

    async fn next_instruction(&mut self) -> wasmtime::Result<Option<String>> {
        // Asked before each model turn: an attached operator may still be
        // typing, and may steer when they detach.
        self.unless_paused().await;
        Ok(self.session.steering.next())
    }

    async fn get_budget(&mut self) -> wasmtime::Result<Budget> {
        let b = &self.model.budget;
        let left = self
            .limits
            .wall_clock
            .saturating_sub(self.started.elapsed());
        Ok(Budget {
            turns_used: b.turns,
            turns_max: b.max_turns,
            tokens_used: b.tokens,
            tokens_max: b.max_tokens,
            cost_used_micro_usd: b.cost_micro_usd,
            cost_max_micro_usd: b.max_cost_micro_usd,
            time_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        })
    }

    async fn report_panic(&mut self, mut message: String) -> wasmtime::Result<()> {
        // Never trap here: the panic message is the most useful thing the
        // run's failure can carry. Cut it instead.
        if message.len() > self.limits.max_event_bytes {
            let mut cut = self.limits.max_event_bytes;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        self.events.record(EventKind::Panic, message.clone());
        self.panic = Some(message);
        Ok(())
    }
}

/// Link the `session` interface.
pub fn add_to_linker(linker: &mut wasmtime::component::Linker<RunState>) -> wasmtime::Result<()> {
    session::add_to_linker::<RunState, HasSelf<RunState>>(linker, |s| s)
}
