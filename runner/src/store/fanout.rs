//! Live fan-out of committed events to a run's watchers.
//!
//! The writer publishes each event after its transaction commits, in `seq`
//! order. [`subscription`] builds the gap-free stream: it subscribes first,
//! then reads the backlog, then forwards live events with `seq` above the
//! last one already given out. A watcher that falls behind the channel's
//! capacity is not dropped: it re-reads what it missed from the database.
//!
//! Watchers that fall behind together (a burst larger than the channel, many
//! watchers of one run) would each read and decode the same rows again. So
//! backlog reads go through [`Pages`]: pages aligned on fixed seq ranges,
//! read once by whichever watcher asks first and shared with the others.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::{OnceCell, broadcast};

use super::{EventStream, RunId, StoreError, StoredEvent};

/// Live events a watcher may fall behind by before it re-reads from the
/// database. A slot holds an `Arc`, so a watched run retains at most this
/// many recent events.
const CHANNEL_CAPACITY: usize = 65_536;

/// Events per backlog page. Page `k` holds seqs `k * PAGE + 1 ..= (k + 1) *
/// PAGE`: fixed boundaries make watchers that catch up from different
/// points ask for the same pages.
const BACKLOG_PAGE: u64 = 1024;

/// Full pages kept for sharing, over all runs (64 × 1024 events, as many as
/// one run's channel): enough for watchers of a run spread over a burst.
const CACHED_PAGES: usize = 64;

/// One page of a run's log, shared by the watchers that read it.
type Page = Arc<[Arc<StoredEvent>]>;

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

    /// True while the run has watchers (a store reading committed events
    /// from elsewhere need only fetch those of watched runs).
    pub(super) fn is_watched(&self, run: RunId) -> bool {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.get(&run).is_some_and(|tx| tx.receiver_count() > 0)
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

type Slot = Arc<OnceCell<Page>>;

/// Backlog pages shared between watchers: a page is read once (the first
/// watcher reads, the others wait for its read) and full pages are kept,
/// oldest dropped first. A committed page never changes (seqs are gap-free
/// and events immutable), so a full page is as good as a fresh read. A page
/// that is not full (the end of the log) is not kept: the next reader must
/// see what was committed since.
#[derive(Default)]
pub(super) struct Pages {
    inner: Mutex<PagesInner>,
}

#[derive(Default)]
struct PagesInner {
    slots: HashMap<(RunId, u64), Slot>,
    /// Keys in the order they were added, for eviction.
    order: VecDeque<(RunId, u64)>,
}

impl Pages {
    fn lock(&self) -> std::sync::MutexGuard<'_, PagesInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Page `index` of `run`'s log, from the cache or read with `backlog`.
    async fn get(&self, backlog: &Backlog, run: RunId, index: u64) -> Result<Page, StoreError> {
        let key = (run, index);
        let slot = {
            let mut inner = self.lock();
            match inner.slots.get(&key) {
                Some(slot) => slot.clone(),
                None => {
                    let slot = Slot::default();
                    inner.slots.insert(key, slot.clone());
                    inner.order.push_back(key);
                    while inner.order.len() > CACHED_PAGES {
                        if let Some(old) = inner.order.pop_front() {
                            inner.slots.remove(&old);
                        }
                    }
                    slot
                }
            }
        };
        let read_here = AtomicBool::new(false);
        let page = slot
            .get_or_try_init(|| async {
                read_here.store(true, Ordering::Relaxed);
                let rows = backlog(run, index * BACKLOG_PAGE, BACKLOG_PAGE as usize).await?;
                Ok::<Page, StoreError>(rows.into_iter().map(Arc::new).collect())
            })
            .await?
            .clone();
        if page.len() as u64 == BACKLOG_PAGE {
            return Ok(page);
        }
        // The end of the log: forget it so later readers read again.
        {
            let mut inner = self.lock();
            if inner.slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                inner.slots.remove(&key);
                inner.order.retain(|k| *k != key);
            }
        }
        if read_here.load(Ordering::Relaxed) {
            return Ok(page);
        }
        // Another watcher's read may have started before this watcher
        // subscribed to the live channel; an event committed in between would
        // be in neither, so read for ourselves.
        let rows = backlog(run, index * BACKLOG_PAGE, BACKLOG_PAGE as usize).await?;
        Ok(rows.into_iter().map(Arc::new).collect())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().slots.len()
    }
}

struct State {
    run: RunId,
    last: u64,
    /// The page being served and the index of its next event.
    pending: Option<(Page, usize)>,
    live: broadcast::Receiver<Arc<StoredEvent>>,
    backlog: Backlog,
    pages: Arc<Pages>,
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
    pages: Arc<Pages>,
) -> EventStream {
    let state = State {
        run,
        last: after_seq,
        pending: None,
        live,
        backlog,
        pages,
        catching_up: true,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        let item = next(&mut st).await?;
        Some((item, st))
    }))
}

async fn next(st: &mut State) -> Option<Result<Arc<StoredEvent>, StoreError>> {
    loop {
        if let Some((page, at)) = &mut st.pending {
            if let Some(event) = page.get(*at) {
                *at += 1;
                // A page starts at its boundary, not at the watcher's position.
                if event.seq <= st.last {
                    continue;
                }
                st.last = event.seq;
                return Some(Ok(event.clone()));
            }
            st.pending = None;
        }
        if st.catching_up {
            match st
                .pages
                .get(&st.backlog, st.run, st.last / BACKLOG_PAGE)
                .await
            {
                Ok(page) => {
                    st.catching_up = page.len() as u64 == BACKLOG_PAGE;
                    st.pending = Some((page, 0));
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use futures_util::StreamExt as _;
    use futures_util::future::FutureExt as _;

    use super::*;

    /// A log of `len` committed events made up on demand, counting reads.
    struct FakeLog {
        len: AtomicU64,
        reads: AtomicU64,
    }

    fn event(seq: u64) -> StoredEvent {
        StoredEvent {
            run: RunId(1),
            seq,
            at_ms: 0,
            kind: serde_json::json!({ "type": "progress" }),
            message: format!("e{seq}"),
        }
    }

    fn fake_log(len: u64) -> (Arc<FakeLog>, Backlog) {
        let log = Arc::new(FakeLog {
            len: AtomicU64::new(len),
            reads: AtomicU64::new(0),
        });
        let reader = log.clone();
        let backlog: Backlog = Arc::new(move |_run, after, limit| {
            reader.reads.fetch_add(1, Ordering::SeqCst);
            let end = reader.len.load(Ordering::SeqCst).min(after + limit as u64);
            let rows: Vec<StoredEvent> = ((after + 1)..=end).map(event).collect();
            async move {
                // Let other watchers ask for the same page meanwhile.
                tokio::task::yield_now().await;
                Ok(rows)
            }
            .boxed()
        });
        (log, backlog)
    }

    fn collect(s: EventStream, n: u64) -> tokio::task::JoinHandle<Vec<u64>> {
        tokio::spawn(async move {
            s.take(n as usize)
                .map(|e| e.expect("event").seq)
                .collect::<Vec<u64>>()
                .await
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lagging_watchers_get_every_event_once() {
        const N: u64 = 5000;
        let (log, backlog) = fake_log(0);
        // A tiny channel: watchers lag it again and again during the bursts.
        let (tx, _) = broadcast::channel(16);
        let pages = Arc::new(Pages::default());
        let watchers: Vec<_> = (0..10)
            .map(|_| {
                let s = subscription(RunId(1), 0, tx.subscribe(), backlog.clone(), pages.clone());
                collect(s, N)
            })
            .collect();
        for seq in 1..=N {
            // Committed, then published: the writer's order.
            log.len.store(seq, Ordering::SeqCst);
            let _ = tx.send(Arc::new(event(seq)));
            if seq % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let want: Vec<u64> = (1..=N).collect();
        for w in watchers {
            assert!(
                w.await.expect("watcher") == want,
                "a lagging watcher saw a gap, a duplicate or disorder"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_catching_up_together_read_each_full_page_once() {
        const N: u64 = 5000;
        const WATCHERS: u64 = 10;
        let (log, backlog) = fake_log(N);
        let (tx, _) = broadcast::channel(16);
        let pages = Arc::new(Pages::default());
        let watchers: Vec<_> = (0..WATCHERS)
            .map(|_| {
                let s = subscription(RunId(1), 0, tx.subscribe(), backlog.clone(), pages.clone());
                collect(s, N)
            })
            .collect();
        let want: Vec<u64> = (1..=N).collect();
        for w in watchers {
            assert!(
                w.await.expect("watcher") == want,
                "gap, duplicate or disorder"
            );
        }
        // 4 full pages read once for all; the last, partial page at most
        // twice per watcher. Reading per watcher would be 5 reads each.
        let reads = log.reads.load(Ordering::SeqCst);
        assert!(
            reads <= 4 + 2 * WATCHERS,
            "full pages should be read once for all watchers, got {reads} reads"
        );
    }

    #[tokio::test]
    async fn full_pages_are_kept_and_the_end_of_the_log_is_read_again() {
        let (log, backlog) = fake_log(BACKLOG_PAGE + 10);
        let pages = Pages::default();
        let full = pages.get(&backlog, RunId(1), 0).await.expect("page 0");
        assert_eq!(full.len() as u64, BACKLOG_PAGE);
        let tail = pages.get(&backlog, RunId(1), 1).await.expect("page 1");
        assert_eq!(tail.first().map(|e| e.seq), Some(BACKLOG_PAGE + 1));
        assert_eq!(tail.len(), 10);
        log.len.fetch_add(5, Ordering::SeqCst);
        let again = pages
            .get(&backlog, RunId(1), 0)
            .await
            .expect("page 0 again");
        assert!(Arc::ptr_eq(&full, &again), "a full page should be shared");
        let tail = pages
            .get(&backlog, RunId(1), 1)
            .await
            .expect("page 1 again");
        assert_eq!(tail.len(), 15, "the end of the log should be read afresh");
        assert_eq!(log.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_page_cache_is_bounded() {
        let (_log, backlog) = fake_log(BACKLOG_PAGE * (CACHED_PAGES as u64 + 8));
        let pages = Pages::default();
        for index in 0..(CACHED_PAGES as u64 + 8) {
            pages.get(&backlog, RunId(1), index).await.expect("page");
        }
        assert_eq!(pages.len(), CACHED_PAGES);
    }
}
