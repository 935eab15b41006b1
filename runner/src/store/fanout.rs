//! Live fan-out of committed events to a run's watchers.
//!
//! The writer publishes each event after its transaction commits, in `seq`
//! order. [`subscription`] builds the gap-free stream: it subscribes first,
//! then reads the backlog, then forwards live events with `seq` above the
//! last one already given out. A watcher that falls behind the channel's
//! capacity is not dropped: it re-reads what it missed from the database.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use super::{EventStream, RunId, StoreError, StoredEvent};

/// Live events a watcher may fall behind by before it re-reads from the
/// database (much slower: rows are parsed again per watcher). A slot holds
/// an `Arc`, so a watched run retains at most this many recent events.
const CHANNEL_CAPACITY: usize = 65_536;

/// Events read from the database per backlog query.
const BACKLOG_PAGE: usize = 1024;

/// One broadcast channel per watched run.
#[derive(Default)]
pub(super) struct Hub {
    runs: Mutex<HashMap<RunId, broadcast::Sender<Arc<StoredEvent>>>>,
}

impl Hub {
    /// A receiver of the run's live events, from now on.
    pub(super) fn subscribe(&self, run: RunId) -> broadcast::Receiver<Arc<StoredEvent>> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.entry(run)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Hands committed events to the watchers of their runs.
    pub(super) fn publish(&self, events: impl IntoIterator<Item = StoredEvent>) {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.is_empty() {
            return;
        }
        for event in events {
            let run = event.run;
            let unwatched = match runs.get(&run) {
                Some(tx) => tx.send(Arc::new(event)).is_err(),
                None => false,
            };
            if unwatched {
                // Every watcher is gone; forget the channel (a new watcher
                // makes a new one under the same lock).
                runs.remove(&run);
            }
        }
    }
}

/// Reads committed events of a run after a seq (a store's `events_after`).
pub(super) type Backlog = Arc<
    dyn Fn(RunId, u64, usize) -> BoxFuture<'static, Result<Vec<StoredEvent>, StoreError>>
        + Send
        + Sync,
>;

struct State {
    run: RunId,
    last: u64,
    pending: VecDeque<Arc<StoredEvent>>,
    live: broadcast::Receiver<Arc<StoredEvent>>,
    backlog: Backlog,
    /// True while the backlog may hold more than `pending`.
    catching_up: bool,
}

/// The run's events after `after_seq`, then live ones; `live` must have been
/// subscribed before this call reads anything.
pub(super) fn subscription(
    run: RunId,
    after_seq: u64,
    live: broadcast::Receiver<Arc<StoredEvent>>,
    backlog: Backlog,
) -> EventStream {
    let state = State {
        run,
        last: after_seq,
        pending: VecDeque::new(),
        live,
        backlog,
        catching_up: true,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let item = next(&mut st).await?;
        Some((item, st))
    }))
}

async fn next(st: &mut State) -> Option<Result<Arc<StoredEvent>, StoreError>> {
    loop {
        if let Some(event) = st.pending.pop_front() {
            st.last = event.seq;
            return Some(Ok(event));
        }
        if st.catching_up {
            match (st.backlog)(st.run, st.last, BACKLOG_PAGE).await {
                Ok(page) => {
                    st.catching_up = page.len() == BACKLOG_PAGE;
                    st.pending.extend(page.into_iter().map(Arc::new));
                    continue;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        match st.live.recv().await {
            Ok(event) if event.seq <= st.last => continue,
            Ok(event) if event.seq == st.last + 1 => {
                st.last = event.seq;
                return Some(Ok(event));
            }
            // A hole (the backlog read raced ahead of the channel, or we
            // lagged): the database has everything committed, read from there.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => st.catching_up = true,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
