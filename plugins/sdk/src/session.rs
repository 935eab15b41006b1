//! The run's live session: events for the transcript, steering messages
//! from people watching, and the remaining budget.
use crate::wit::kiln::role::session as raw;
pub use crate::wit::kiln::role::session::{Budget, Event, EventKind};

/// Add an event to the run's transcript.
pub fn emit(kind: EventKind, message: &str) {
    raw::emit(&Event {
        kind,
        message: message.to_string(),
    });
}

/// Report what the role is doing now.
pub fn progress(message: &str) {
    emit(EventKind::Progress, message);
}

/// Record a decision and its reason in the transcript.
pub fn note(message: &str) {
    emit(EventKind::Note, message);
}

/// Record something that went wrong without stopping the role.
pub fn warning(message: &str) {
    emit(EventKind::Warning, message);
}

/// The next steering message from an operator, if one arrived.
pub fn next_instruction() -> Option<String> {
    raw::next_instruction()
}

/// What is left of the run's budget.
pub fn budget() -> Budget {
    raw::get_budget()
}

/// Send a panic message to the host (the SDK's panic hook does this).
pub fn report_panic(message: &str) {
    raw::report_panic(message);
}
