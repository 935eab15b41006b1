//! `[intake] runs_per_actor_per_hour`: how many runs one actor may start on
//! one repository per hour, so a stranger opening fifty issues costs at
//! most the limit's worth of model spend. The count is the store's, in the
//! same step as the insert ([`crate::store::RunStore::enqueue_run_limited`]);
//! this module says whom it applies to, what the refusal says, and answers
//! an actor once per window, not once per event.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::forge::RepoRef;
use crate::policy::Trust;
use crate::store::ActorLimit;

const HOUR_MS: i64 = 3_600_000;

/// The per-actor limit and whom it has answered.
#[derive(Debug)]
pub struct ActorLimiter {
    max: u32,
    exempt_maintainers: bool,
    /// (repository, actor) → the end of the window they were told about.
    told: Mutex<HashMap<(RepoRef, String), i64>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` as `2026-12-07 18:46 UTC`.
fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

impl ActorLimiter {
    /// `max` runs per actor per hour (0: no limit); maintainers exempt or not.
    pub fn new(max: u32, exempt_maintainers: bool) -> Self {
        ActorLimiter {
            max,
            exempt_maintainers,
            told: Mutex::new(HashMap::new()),
        }
    }

    /// The limit a run triggered by an actor of `trust` is held to, if any.
    /// Trusted means write access or more: a maintainer.
    pub fn limit_for(&self, trust: Trust) -> Option<ActorLimit> {
        if self.max == 0 || (self.exempt_maintainers && trust == Trust::Trusted) {
            return None;
        }
        Some(ActorLimit {
            max: u64::from(self.max),
            window_ms: HOUR_MS,
        })
    }

    /// The delivery's recorded reason.
    pub fn refusal(&self, actor: &str, runs: u64, retry_at_ms: i64) -> String {
        format!(
            "rate limit: {actor} started {runs} runs on this repository in the last hour \
             (runs_per_actor_per_hour = {}); nothing was run; try again after {}",
            self.max,
            clock(retry_at_ms)
        )
    }

    /// The one answer on the forge.
    pub fn reply(&self, actor: &str, runs: u64, retry_at_ms: i64) -> String {
        let minutes = ((retry_at_ms - now_ms()).max(0) + 59_999) / 60_000;
        format!(
            "Kiln did not start a run for this: `{actor}` has started {runs} runs on this \
             repository in the last hour, and the limit is {} per hour. It can be tried again \
             after {} (in about {minutes} minutes). Events before then are recorded, not run, \
             and get no further answer.",
            self.max,
            clock(retry_at_ms)
        )
    }

    /// True the first time `actor` is refused on `repo` in the window that
    /// ends at `retry_at_ms` (answer them); false after (stay quiet). Kept in
    /// memory: a restart may answer once more.
    pub fn first_refusal(&self, repo: &RepoRef, actor: &str, retry_at_ms: i64) -> bool {
        let now = now_ms();
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        told.retain(|_, until| *until > now);
        let key = (repo.clone(), actor.to_string());
        if told.contains_key(&key) {
            return false;
        }
        told.insert(key, retry_at_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintainers_are_exempt_by_default_and_zero_means_no_limit() {
        let l = ActorLimiter::new(3, true);
        assert_eq!(l.limit_for(Trust::Trusted), None);
        assert_eq!(
            l.limit_for(Trust::Untrusted),
            Some(ActorLimit {
                max: 3,
                window_ms: HOUR_MS
            })
        );
        assert!(
            ActorLimiter::new(3, false)
                .limit_for(Trust::Trusted)
                .is_some()
        );
        assert_eq!(
            ActorLimiter::new(0, false).limit_for(Trust::Untrusted),
            None
        );
    }

    #[test]
    fn an_actor_is_answered_once_per_window_and_per_repository() {
        let l = ActorLimiter::new(3, true);
        let repo = RepoRef::parse("octo/widgets").expect("repo");
        let other = RepoRef::parse("octo/gadgets").expect("repo");
        let later = now_ms() + HOUR_MS;
        assert!(l.first_refusal(&repo, "mallory", later));
        assert!(!l.first_refusal(&repo, "mallory", later));
        assert!(!l.first_refusal(&repo, "mallory", later + 5));
        assert!(l.first_refusal(&repo, "eve", later));
        assert!(l.first_refusal(&other, "mallory", later));
        // Once the window has passed, a new refusal is answered again.
        let passed = ActorLimiter::new(3, true);
        assert!(passed.first_refusal(&repo, "mallory", now_ms() - 1));
        assert!(passed.first_refusal(&repo, "mallory", later));
        let text = l.reply("mallory", 3, later);
        assert!(
            text.contains("3 per hour") && text.contains("UTC"),
            "{text}"
        );
    }
}
