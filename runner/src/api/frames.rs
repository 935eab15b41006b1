//! Rendered SSE frames shared by every watcher: a committed event never
//! changes, so it is redacted and serialized once, not once per watcher.
//! With 100 watchers on one run that work was most of the cost of fanning
//! an event out.
//!
//! A fixed ring of slots indexed by `seq`: a lookup is one index and one
//! uncontended slot lock (a single map behind one lock was itself a hot
//! spot with 100 watchers), and a new frame overwrites the one `CAPACITY`
//! seqs older, so memory is bounded without eviction bookkeeping. Runs
//! whose seqs share a slot overwrite each other; a watcher that misses its
//! frame renders it again.
use std::sync::{Mutex, MutexGuard};

use axum::body::Bytes;

use crate::store::RunId;

/// Slots in the ring: as many as the store's live channel holds per run, so
/// watchers spread over a burst the channel absorbs still share frames
/// (about 250 bytes a frame: ~16 MB when full).
pub const CAPACITY: usize = 65_536;

/// One slot: the frame of `(run, seq)`, if rendered.
type Slot = Option<(RunId, u64, Bytes)>;

/// The shared frames, by run and seq.
#[derive(Debug)]
pub struct FrameCache {
    slots: Box<[Mutex<Slot>]>,
}

impl Default for FrameCache {
    fn default() -> Self {
        FrameCache {
            slots: (0..CAPACITY).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl FrameCache {
    /// The frame of `run`'s event `seq`, rendering it with `render` if no
    /// watcher has yet.
    pub fn get_or_render(&self, run: RunId, seq: u64, render: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((r, s, frame)) = &*self.slot(seq)
            && (*r, *s) == (run, seq)
        {
            return frame.clone();
        }
        // Rendered outside the lock; two watchers racing render it twice, harmlessly.
        let frame = render();
        *self.slot(seq) = Some((run, seq, frame.clone()));
        frame
    }

    fn slot(&self, seq: u64) -> MutexGuard<'_, Slot> {
        let slot = &self.slots[(seq % CAPACITY as u64) as usize];
        slot.lock().unwrap_or_else(|p| p.into_inner())
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
    }

    #[test]
    fn runs_never_get_each_others_frames() {
        let cache = FrameCache::default();
        cache.get_or_render(RunId(1), 7, || Bytes::from_static(b"run 1"));
        let other = cache.get_or_render(RunId(2), 7, || Bytes::from_static(b"run 2"));
        assert_eq!(&other[..], b"run 2");
        let first = cache.get_or_render(RunId(1), 7, || Bytes::from_static(b"run 1 again"));
        assert_eq!(&first[..], b"run 1 again", "run 2 took the slot");
    }
}
