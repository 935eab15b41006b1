//! [`StoreEvents`]: a run's [`EventSink`] that writes to the store without
//! blocking the caller (import calls run on tokio threads).

use std::sync::Arc;

use crate::session::{EventKind, EventSink};

use super::RunId;

/// Takes events for the store's writer without waiting for the commit.
pub trait EventQueue: Send + Sync {
    /// Queue an event for `run`; failures are logged by the store, not returned.
    fn enqueue(&self, run: RunId, kind: serde_json::Value, message: String);
}

/// One run's event log in the store, as an [`EventSink`]. `record` queues
/// the event and returns at once; [`super::RunStore::flush`] waits for it
/// to be committed.
#[derive(Clone)]
pub struct StoreEvents {
    run: RunId,
    queue: Arc<dyn EventQueue>,
}

impl StoreEvents {
    /// A sink for `run` over a store's queue.
    pub fn new(run: RunId, queue: Arc<dyn EventQueue>) -> Self {
        StoreEvents { run, queue }
    }

    /// The run this sink writes to.
    pub fn run(&self) -> RunId {
        self.run
    }
}

impl std::fmt::Debug for StoreEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreEvents")
            .field("run", &self.run)
            .finish()
    }
}

impl EventSink for StoreEvents {
    fn record(&self, kind: EventKind, message: String) {
        let kind = serde_json::to_value(&kind).unwrap_or_else(
            |e| serde_json::json!({ "type": "note", "unserializable": e.to_string() }),
        );
        self.queue.enqueue(self.run, kind, message);
    }
}
