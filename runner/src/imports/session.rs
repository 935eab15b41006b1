//! `kiln:role/session`: events out, steering in, budget.
//!
//! | WIT function        | capability | gate |
//! |---------------------|------------|------|
//! | `emit`              | none       | size-checked (traps past `max_event_bytes`) |
//! | `next-instruction`  | none       | — |
//! | `get-budget`        | none       | — |
//! | `report-panic`      | none       | size-capped, never traps |
use super::{RunState, check_size};
use crate::plugin::types::{BudgetReport, PluginEventKind};
use crate::session::{EventKind, Pause, Steering};

/// Per-run state of the session interface.
pub struct SessionCtx {
    /// Steering messages waiting for the plugin.
    pub steering: Steering,
    /// Held while an operator is attached to the run's sandbox.
    pub pause: Pause,
}

impl RunState {
    /// `session.emit`: traps past the event size limit.
    pub(crate) fn emit(&mut self, kind: PluginEventKind, message: String) -> wasmtime::Result<()> {
        check_size(
            "session.emit: event message",
            message.len(),
            self.limits.max_event_bytes,
        )?;
        let kind = match kind {
            PluginEventKind::Progress => EventKind::Progress,
            PluginEventKind::Note => EventKind::Note,
            PluginEventKind::Warning => EventKind::Warning,
        };
        self.events.record(kind, message);
        Ok(())
    }

    /// `session.next-instruction`: the next steering message.
    pub(crate) async fn next_instruction(&mut self) -> Option<String> {
        // Asked before each model turn: an attached operator may still be
        // typing, and may steer when they detach.
        self.unless_paused().await;
        self.session.steering.next()
    }

    /// `session.get-budget`: what the run has spent and has left.
    pub(crate) fn budget_report(&self) -> BudgetReport {
        let b = &self.model.budget;
        let left = self
            .limits
            .wall_clock
            .saturating_sub(self.started.elapsed());
        BudgetReport {
            turns_used: b.turns,
            turns_max: b.max_turns,
            tokens_used: b.tokens,
            tokens_max: b.max_tokens,
            cost_used_micro_usd: b.cost_micro_usd,
            cost_max_micro_usd: b.max_cost_micro_usd,
            time_left_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// `session.report-panic`: never traps; the message is cut to the limit.
    pub(crate) fn report_panic(&mut self, mut message: String) {
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
    }
}
