//! A run's session as the host sees it: the ordered event log, the steering
//! messages operators send in, and the run's budget counters.
//!
//! Every import call, policy decision, model turn and plugin message becomes
//! a [`RunEvent`]. Events go to an [`EventSink`] (memory now; the store and
//! the SSE fan-out later) so a trapped plugin never takes its log with it.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use crate::policy::Blame;

/// What an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum EventKind {
    /// The plugin reported progress.
    Progress,
    /// The plugin recorded a note.
    Note,
    /// The plugin reported a problem it carries on from.
    Warning,
    /// The plugin panicked; the message is its panic message.
    Panic,
    /// A model turn was requested and answered.
    ModelTurn,
    /// The plugin proposed a forge effect.
    Proposal {
        /// Effect id.
        effect: String,
    },
    /// An import call was refused.
    Denied {
        /// Who is at fault.
        blame: Blame,
    },
    /// The policy gate decided an effect (`verdict`: allow, deny, hold).
    Policy {
        /// The effect's action (`forge.comment`, `workspace.exec`, ...).
        action: String,
        /// `allow`, `deny` or `hold`.
        verdict: String,
    },
    /// A command ran in the sandbox; the message has its output.
    Exec,
    /// The detection step judged the run's work before it left the host;
    /// the message lists the findings. Host-only.
    Detection {
        /// `clean`, `flagged` or `failed`.
        verdict: String,
        /// How many findings.
        findings: usize,
    },
    /// The run started: its progress comment was posted (the message names
    /// the comment), then its plugin started. Host-only: plugins cannot emit it.
    Started,
    /// The run ended; the message says how.
    Finished,
    /// An operator's steering message was queued for the run; the message
    /// is its text. Host-only: plugins cannot emit it, so the outer loop
    /// can read it as the operator's words.
    Steering {
        /// Who sent it: `operator:<API token name>`.
        by: String,
    },
}

/// One entry of a run's transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunEvent {
    /// Position in the run's log, from 0.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
    /// Text for people.
    pub message: String,
}

/// Where a run's events go. Implementations must not block for long: they
/// are called from import calls.
pub trait EventSink: Send + Sync {
    /// Append an event (the sink assigns `seq`).
    fn record(&self, kind: EventKind, message: String);
}

/// An in-memory event log, shared between the run and whoever watches it.
#[derive(Debug, Default, Clone)]
pub struct MemoryEvents {
    events: Arc<Mutex<Vec<RunEvent>>>,
}

impl MemoryEvents {
    /// A new, empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every event so far.
    pub fn snapshot(&self) -> Vec<RunEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for MemoryEvents {
    fn record(&self, kind: EventKind, message: String) {
        if let Ok(mut events) = self.events.lock() {
            let seq = events.len() as u64;
            events.push(RunEvent { seq, kind, message });
        }
    }
}

/// Steering messages from operators, waiting for the plugin to pick them up
/// before its next model turn.
#[derive(Debug, Default, Clone)]
pub struct Steering {
    queue: Arc<Mutex<VecDeque<String>>>,
}

impl Steering {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue a message for the plugin.
    pub fn send(&self, message: impl Into<String>) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(message.into());
        }
    }

    /// Take the oldest waiting message.
    pub fn next(&self) -> Option<String> {
        self.queue.lock().ok()?.pop_front()
    }
}

/// Holds a run's agent while a human works in its sandbox (`kiln attach`):
/// the plugin's next model turn, command, file write or forge proposal waits
/// until every holder has let go. Time spent paused does not count against
/// the plugin's wall clock.
#[derive(Debug, Clone)]
pub struct Pause {
    state: Arc<tokio::sync::watch::Sender<PauseState>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct PauseState {
    holders: u32,
    // tokio's clock, so tests can run paused time virtually.
    since: Option<tokio::time::Instant>,
    before: std::time::Duration,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            state: Arc::new(tokio::sync::watch::Sender::new(PauseState::default())),
        }
    }
}

impl Pause {
    /// A run that is not paused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pause the run until the returned guard is dropped.
    pub fn hold(&self) -> PauseGuard {
        self.state.send_modify(|s| {
            s.holders += 1;
            s.since.get_or_insert_with(tokio::time::Instant::now);
        });
        PauseGuard {
            pause: self.clone(),
        }
    }

    /// True while someone holds the run.
    pub fn is_paused(&self) -> bool {
        self.state.borrow().holders > 0
    }

    /// Total time the run has been paused, including a pause going on now.
    pub fn paused_for(&self) -> std::time::Duration {
        let s = *self.state.borrow();
        s.before + s.since.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Resolves at once if the run is not paused, else when it is resumed.
    pub async fn until_resumed(&self) {
        if !self.is_paused() {
            return;
        }
        let mut rx = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|s| s.holders == 0).await;
    }
}

/// Keeps a run paused while alive (see [`Pause::hold`]).
#[derive(Debug)]
pub struct PauseGuard {
    pause: Pause,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.pause.state.send_modify(|s| {
            s.holders = s.holders.saturating_sub(1);
            if s.holders == 0
                && let Some(t) = s.since.take()
            {
                s.before += t.elapsed();
            }
        });
    }
}

/// A run's budget: limits from config and what has been spent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    /// Model turns allowed.
    pub max_turns: Option<u32>,
    /// Tokens allowed (input + output).
    pub max_tokens: Option<u64>,
    /// Cost allowed, in millionths of a US dollar.
    pub max_cost_micro_usd: Option<u64>,
    /// Model turns taken.
    pub turns: u32,
    /// Tokens used.
    pub tokens: u64,
    /// Cost so far.
    pub cost_micro_usd: u64,
    /// Caps on the run's effects (comments, labels, pull requests, …).
    pub effects: crate::caps::EffectCaps,
}

impl Budget {
    /// Why no further model turn may be taken, if that is so.
    pub fn exhausted(&self) -> Option<String> {
        if let Some(max) = self.max_turns.filter(|m| self.turns >= *m) {
            return Some(format!("turn budget spent: {} of {max} turns", self.turns));
        }
        if let Some(max) = self.max_tokens.filter(|m| self.tokens >= *m) {
            return Some(format!(
                "token budget spent: {} of {max} tokens",
                self.tokens
            ));
        }
        if let Some(max) = self
            .max_cost_micro_usd
            .filter(|m| self.cost_micro_usd >= *m)
        {
            return Some(format!(
                "cost budget spent: ${:.4} of ${:.4}",
                self.cost_micro_usd as f64 / 1e6,
                max as f64 / 1e6
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reports_the_first_limit_reached() {
        let mut b = Budget {
            max_turns: Some(2),
            max_tokens: Some(100),
            ..Budget::default()
        };
        assert_eq!(
            b.exhausted(),
            None,
            "a fresh budget should not be exhausted"
        );
        b.tokens = 100;
        assert_eq!(
            b.exhausted().as_deref(),
            Some("token budget spent: 100 of 100 tokens")
        );
        b.turns = 2;
        assert_eq!(
            b.exhausted().as_deref(),
            Some("turn budget spent: 2 of 2 turns")
        );
    }

    #[test]
    fn events_are_numbered_in_order_and_steering_is_fifo() {
        let events = MemoryEvents::new();
        events.record(EventKind::Started, "a".into());
        events.record(EventKind::Note, "b".into());
        let seqs: Vec<_> = events.snapshot().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![0, 1]);
        let steering = Steering::new();
        steering.send("first");
        steering.send("second");
        assert_eq!(steering.next().as_deref(), Some("first"));
        assert_eq!(steering.next().as_deref(), Some("second"));
        assert_eq!(steering.next(), None);
    }

    #[tokio::test]
    async fn a_paused_run_waits_until_every_holder_lets_go() {
        let pause = Pause::new();
        pause.until_resumed().await;
        let first = pause.hold();
        let second = pause.hold();
        let waiter = tokio::spawn({
            let pause = pause.clone();
            async move { pause.until_resumed().await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(pause.is_paused(), "one holder is still attached");
        assert!(
            !waiter.is_finished(),
            "the run must wait for the second holder"
        );
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resumed once both let go")
            .expect("waiter");
        assert!(!pause.is_paused());
        let paused = pause.paused_for();
        assert!(paused > std::time::Duration::ZERO);
        assert_eq!(pause.paused_for(), paused, "no time accrues once resumed");
    }
}
