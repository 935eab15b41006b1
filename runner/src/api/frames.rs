//! Rendered SSE frames shared by every watcher: a committed event never
//! changes, so it is redacted and serialized once, not once per watcher.
//! With 100 watchers on one run that work was most of the cost of fanning
//! an event out.
//!
//! Bounded: the oldest frames are dropped first (FIFO over all runs), which
//! suits watchers that follow a run together; a watcher far behind renders
//! its own.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;

use crate::store::RunId;

/// How many rendered frames are kept (~a few MB).
pub const CAPACITY: usize = 8192;

/// The shared frames, by run and seq.
#[derive(Debug, Default)]
pub struct FrameCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    frames: HashMap<(RunId, u64), Bytes>,
    order: VecDeque<(RunId, u64)>,
}

impl FrameCache {
    /// The frame of `run`'s event `seq`, rendering it with `render` if no
    /// watcher has yet.
    pub fn get_or_render(&self, run: RunId, seq: u64, render: impl FnOnce() -> Bytes) -> Bytes {
        if let Some(frame) = self.lock().frames.get(&(run, seq)) {
            return frame.clone();
        }
        // Rendered outside the lock; two watchers racing render it twice, harmlessly.
        let frame = render();
        let mut inner = self.lock();
        if inner.frames.insert((run, seq), frame.clone()).is_none() {
            inner.order.push_back((run, seq));
            while inner.order.len() > CAPACITY {
                if let Some(old) = inner.order.pop_front() {
                    inner.frames.remove(&old);
                }
            }
        }
        frame
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_rendered_once_and_the_oldest_are_dropped() {
        let cache = FrameCache::default();
        let mut renders = 0;
        for _ in 0..3 {
            cache.get_or_render(RunId(1), 1, || {
                renders += 1;
                Bytes::from_static(b"x")
            });
        }
        assert_eq!(renders, 1, "later watchers should get the rendered frame");
        for seq in 2..=(CAPACITY as u64 + 1) {
            cache.get_or_render(RunId(1), seq, Bytes::new);
        }
        let again = cache.get_or_render(RunId(1), 1, || Bytes::from_static(b"re-rendered"));
        assert_eq!(
            &again[..],
            b"re-rendered",
            "the oldest frame should have been dropped"
        );
        assert!(cache.lock().frames.len() <= CAPACITY);
    }
}
