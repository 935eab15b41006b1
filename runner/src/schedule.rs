//! `[[schedules]]`: roles queued on a cron schedule (the outer loop's
//! improvement runs). Each schedule fires once per due time: the last due
//! time it covered is kept in the store, so a restart never fires a slot
//! twice, and a runner that was down across several slots fires once when
//! it comes back, for the latest one.
use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::Deserialize;

use crate::config::Role;
use crate::forge::RepoRef;
use crate::policy::Trust;
use crate::store::{NewRun, RunId, RunStore, StoreError, Trigger, TriggerKind};

/// The names of a standard cron expression's five fields, in order.
pub const CRON_FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

/// Longest schedule name.
const MAX_NAME: usize = 64;

/// Longest wait between two looks at the clock: a clock set forward (or a
/// suspended machine) is noticed within this long.
const MAX_SLEEP_MS: i64 = 60_000;

/// `[[schedules]]`: one role, queued on a cron schedule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A name of its own (`[a-z0-9_-]`, at most 64): the key of its last
    /// firing in the store, and the run's trigger (`schedule(<name>)`).
    pub name: String,
    /// A standard 5-field cron expression (minute hour day-of-month month
    /// day-of-week), in UTC.
    pub cron: String,
    /// The role to run (`improve` for the outer loop).
    pub role: Role,
    /// The repository (`owner/name`), or `"*"` for every repository the
    /// runner serves.
    pub repo: String,
    /// Named arguments handed to the run (`task.args`), e.g. `target` and
    /// `since` for `improve`.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
}

/// Why a `[[schedules]]` entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[[schedules]] {name:?}: {field} {reason}")]
pub struct ScheduleError {
    /// The schedule's `name` (as written, cut at 80 characters).
    pub name: String,
    /// The key, or for `cron` the field of the expression, that is wrong.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron expression, with its text.
#[derive(Debug, Clone)]
pub struct CronExpr {
    cron: Cron,
    text: String,
}

/// The parser for standard cron: exactly five fields, no seconds, no year.
fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

impl CronExpr {
    /// Parses a standard 5-field cron expression; the error names the
    /// field that is wrong (`hour`, `day of week`, ...) and why.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err((
                "`cron`".into(),
                format!(
                    "{text:?} has {} fields; a standard cron expression has 5 (minute hour day-of-month month day-of-week, in UTC)",
                    fields.len()
                ),
            ));
        }
        let parser = parser();
        // croner's errors do not say which field is wrong: try each field
        // alone (the others `*`) to name it.
        for (i, field) in fields.iter().enumerate() {
            let mut probe = ["*"; 5];
            probe[i] = field;
            if let Err(e) = parser.parse(&probe.join(" ")) {
                return Err((
                    format!("`cron` field {} ({})", i + 1, CRON_FIELDS[i]),
                    format!("{field:?} is not valid: {e}"),
                ));
            }
        }
        let cron = parser
            .parse(&fields.join(" "))
            .map_err(|e| ("`cron`".to_string(), format!("{text:?} is not valid: {e}")))?;
        // A pattern that never matches (`0 0 31 2 *`) would never fire.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(("`cron`".into(), format!("{text:?} never matches a date")));
        }
        Ok(CronExpr {
            cron,
            text: text.to_string(),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first due time strictly after `after_ms` (milliseconds since the epoch).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let t = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        self.cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|d| d.timestamp_millis())
    }

    /// The latest due time at or before `now_ms`.
    pub fn latest_at_or_before(&self, now_ms: i64) -> Option<i64> {
        let t = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
        self.cron
            .find_previous_occurrence(&t, true)
            .ok()
            .map(|d| d.timestamp_millis())
    }
}

impl ScheduleConfig {
    /// Checks the entry on its own (names of roles are checked by the
    /// config, which knows the custom ones); returns the parsed cron.
    pub fn validate(&self) -> Result<CronExpr, ScheduleError> {
        let bad = |field: &str, reason: String| ScheduleError {
            name: self.name.chars().take(80).collect(),
            field: field.to_string(),
            reason,
        };
        if self.name.is_empty()
            || self.name.len() > MAX_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(bad("`name`", "must be 1-64 of [a-z0-9_-]".into()));
        }
        if self.repo != "*" {
            RepoRef::parse(&self.repo).map_err(|e| {
                bad(
                    "`repo`",
                    format!("must be owner/name or \"*\" (every repository): {e}"),
                )
            })?;
        }
        for key in self.args.keys() {
            if key.is_empty()
                || key.len() > MAX_NAME
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "`args`",
                    format!(
                        "key {:?} must be 1-64 of [a-z0-9_-]",
                        key.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
        if self.role == Role::Improve {
            let args: Vec<_> = self
                .args
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            check_improve_args(&args).map_err(|e| bad("`args`", e))?;
        }
        CronExpr::parse(&self.cron).map_err(|(field, reason)| bad(&field, reason))
    }
}

/// One configured schedule, parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The entry as configured.
    pub config: ScheduleConfig,
    /// Its cron expression.
    pub cron: CronExpr,
}

impl Schedule {
    /// Parses and checks `config`.
    pub fn new(config: ScheduleConfig) -> Result<Self, ScheduleError> {
        let cron = config.validate()?;
        Ok(Schedule { config, cron })
    }

    /// The run this schedule queues on `repo`.
    pub fn new_run(&self, repo: RepoRef) -> NewRun {
        NewRun {
            script: None,
            repo,
            role: self.config.role,
            // Not about an issue: the repository as a whole.
            number: 0,
            trigger: Trigger {
                kind: TriggerKind::Schedule {
                    name: self.config.name.clone(),
                    args: self
                        .config
                        .args
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                },
                actor: format!("schedule:{}", self.config.name),
                // Only the operator writes kiln.toml.
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        }
    }
}

/// The time, injected so tests decide what "now" is.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// The repositories a `"*"` schedule fires on.
pub type RepoLister = Arc<dyn Fn() -> Vec<RepoRef> + Send + Sync>;

/// One run a schedule queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    /// The schedule's name.
    pub schedule: String,
    /// The due time it fired for (milliseconds since the epoch).
    pub due_ms: i64,
    /// The repository.
    pub repo: RepoRef,
    /// The run queued.
    pub run: RunId,
}

/// A schedule's next and last firing, for `kiln schedules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// The schedule's name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// The role it runs.
    pub role: Role,
    /// Its repository, or `*`.
    pub repo: String,
    /// When it fires next (milliseconds since the epoch).
    pub next_ms: Option<i64>,
    /// The due time it last fired for, and when it did.
    pub last: Option<(i64, i64)>,
}

/// Fires the configured schedules: [`Scheduler::tick`] queues what is due.
pub struct Scheduler {
    schedules: Vec<Schedule>,
    store: Arc<dyn RunStore>,
    repos: RepoLister,
    clock: Arc<dyn Clock>,
}

impl Scheduler {
    /// A scheduler for `schedules`, recording firings in `store`.
    pub fn new(
        schedules: Vec<Schedule>,
        store: Arc<dyn RunStore>,
        repos: RepoLister,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Scheduler {
            schedules,
            store,
            repos,
            clock,
        }
    }

    /// The schedules of `config`, parsed (the config was validated, so
    /// this fails only on a config built by hand).
    pub fn parse(configs: &[ScheduleConfig]) -> Result<Vec<Schedule>, ScheduleError> {
        configs.iter().cloned().map(Schedule::new).collect()
    }

    /// Queues a run for every schedule due now (once per schedule, for its
    /// latest due time, however many were missed) and records each firing.
    /// A schedule seen for the first time starts counting from now.
    pub async fn tick(&self) -> Result<Vec<Fired>, StoreError> {
        let now = self.clock.now_ms();
        let mut fired = Vec::new();
        for s in &self.schedules {
            let name = &s.config.name;
            let record = self.store.watch_schedule(name, now).await?;
            let Some(due) = s.cron.latest_at_or_before(now) else {
                continue;
            };
            if due <= record.covered_ms() {
                continue;
            }
            // Claimed before queueing: two runners on one store (or a crash
            // between the two steps) fire a slot at most once.
            if !self.store.claim_schedule(name, due, now).await? {
                continue;
            }
            let repos = if s.config.repo == "*" {
                self.served_repos().await?
            } else {
                RepoRef::parse(&s.config.repo).into_iter().collect()
            };
            if repos.is_empty() {
                tracing::warn!(schedule = %name, "schedule fired, but the runner serves no repository");
            }
            for repo in repos {
                let run = self.store.enqueue_run(s.new_run(repo.clone())).await?;
                tracing::info!(schedule = %name, %repo, %run, "schedule fired");
                fired.push(Fired {
                    schedule: name.clone(),
                    due_ms: due,
                    repo,
                    run,
                });
            }
        }
        Ok(fired)
    }

    /// Every repository the runner serves: the lister's (the local
    /// forge's) and every one it has runs for.
    async fn served_repos(&self) -> Result<Vec<RepoRef>, StoreError> {
        let mut repos = (self.repos)();
        let runs = self
            .store
            .list_runs(crate::store::RunFilter {
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        for run in runs {
            if !repos.contains(&run.repo) {
                repos.push(run.repo);
            }
        }
        Ok(repos)
    }

    /// Each schedule's next and last firing.
    pub async fn status(&self) -> Result<Vec<ScheduleStatus>, StoreError> {
        let now = self.clock.now_ms();
        let records = self.store.schedule_records().await?;
        Ok(self
            .schedules
            .iter()
            .map(|s| {
                let record = records.iter().find(|r| r.name == s.config.name);
                let last = record.and_then(|r| r.last_due_ms.zip(r.last_fired_ms));
                // A slot missed while the runner was down fires on start.
                let next_ms = match record {
                    Some(r) => s.cron.next_after(r.covered_ms()).map(|due| due.max(now)),
                    None => s.cron.next_after(now),
                };
                ScheduleStatus {
                    name: s.config.name.clone(),
                    cron: s.cron.as_str().to_string(),
                    role: s.config.role,
                    repo: s.config.repo.clone(),
                    next_ms,
                    last,
                }
            })
            .collect())
    }

    /// Milliseconds until the next look: the earliest next due time, at
    /// most [`MAX_SLEEP_MS`] away.
    fn wait_ms(&self) -> i64 {
        let now = self.clock.now_ms();
        self.schedules
            .iter()
            .filter_map(|s| s.cron.next_after(now))
            .map(|due| due - now)
            .min()
            .unwrap_or(MAX_SLEEP_MS)
            .clamp(0, MAX_SLEEP_MS)
    }

    /// Ticks until the process ends, calling `wake` when runs were queued.
    pub fn spawn(self, wake: Arc<dyn Fn() + Send + Sync>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.tick().await {
                    Ok(fired) if !fired.is_empty() => wake(),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "schedules: cannot fire"),
                }
                // Past the due minute's start, so the next tick sees it due.
                let wait = self.wait_ms() + 10;
                tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
            }
        })
    }
}

/// The trigger name of an `improve` run asked for by hand (`kiln improve`).
pub const ON_DEMAND: &str = "on-demand";

/// The arguments of an `improve` run: `target` (the role whose skill to
/// improve, required) and `since` (the window, `7d` by default).
pub fn check_improve_args(args: &[(String, String)]) -> Result<(), String> {
    let mut target = None;
    for (k, v) in args {
        match k.as_str() {
            "target" => {
                let role: Role = v.parse()?;
                if role == Role::Improve {
                    return Err("improve cannot target itself".into());
                }
                target = Some(role);
            }
            "since" => {
                parse_since(v)?;
            }
            other => {
                return Err(format!(
                    "improve takes the arguments target and since, not {:?}",
                    other.chars().take(80).collect::<String>()
                ));
            }
        }
    }
    target
        .map(|_| ())
        .ok_or_else(|| "improve needs the argument target (the role to improve)".into())
}

/// Parses a `--since` window (`7d`, `36h`) into hours.
pub fn parse_since(text: &str) -> Result<u32, String> {
    // The unit is the last character, whatever its width: splitting at a
    // byte offset panicked on a multi-byte one (found by the `config` fuzz
    // target).
    let unit_at = text.char_indices().last().map_or(0, |(i, _)| i);
    let (n, unit) = text.split_at(unit_at);
    let n: u32 = n
        .parse()
        .map_err(|_| format!("{text:?}: a window is a number and a unit, like 7d or 36h"))?;
    let hours = match unit {
        "d" => n.checked_mul(24),
        "h" => Some(n),
        _ => None,
    }
    .ok_or_else(|| format!("{text:?}: a window is a number and a unit (d or h), like 7d or 36h"))?;
    if hours == 0 || hours > 24 * 366 {
        return Err(format!("{text:?}: the window must be 1h to 366d"));
    }
    Ok(hours)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    #[test]
    fn a_window_ending_in_a_multibyte_character_is_an_error_not_a_panic() {
        for text in ["ȥ", "7ȥ", "7日", "日d"] {
            let err = parse_since(text).expect_err(text);
            assert!(err.contains("window"), "{text:?}: {err}");
        }
    }

    use super::*;
    use crate::store::{RunFilter, SqliteOptions, SqliteStore};

    /// A clock the test sets.
    struct TestClock(AtomicI64);

    impl Clock for TestClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .timestamp_millis()
    }

    fn config(name: &str, cron: &str) -> ScheduleConfig {
        ScheduleConfig {
            name: name.into(),
            cron: cron.into(),
            role: Role::Improve,
            repo: "local/app".into(),
            args: [("target".to_string(), "triage".to_string())].into(),
        }
    }

    async fn store(dir: &std::path::Path) -> Arc<dyn RunStore> {
        Arc::new(
            SqliteStore::open(dir.join("kiln.db"), SqliteOptions::default())
                .await
                .expect("store"),
        )
    }

    fn scheduler(store: Arc<dyn RunStore>, clock: Arc<TestClock>) -> Scheduler {
        let schedules = Scheduler::parse(&[config("nightly", "30 3 * * *")]).expect("schedules");
        Scheduler::new(schedules, store, Arc::new(Vec::new), clock)
    }

    #[tokio::test]
    async fn fires_at_the_due_minute_once_across_a_restart_and_once_after_downtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(TestClock(AtomicI64::new(at("2026-12-07T01:00:00Z"))));
        let s = scheduler(store(dir.path()).await, clock.clone());
        assert!(s.tick().await.expect("tick").is_empty(), "not due yet");
        clock.0.store(at("2026-12-07T03:29:59Z"), Ordering::SeqCst);
        assert!(s.tick().await.expect("tick").is_empty(), "a second early");
        clock.0.store(at("2026-12-07T03:30:00Z"), Ordering::SeqCst);
        let fired = s.tick().await.expect("tick");
        assert_eq!(fired.len(), 1, "due at 03:30: {fired:?}");
        assert_eq!(fired[0].due_ms, at("2026-12-07T03:30:00Z"));
        assert!(
            s.tick().await.expect("tick").is_empty(),
            "once per due time"
        );
        drop(s);

        // A restart within the same minute: the store remembers the firing.
        clock.0.store(at("2026-12-07T03:30:40Z"), Ordering::SeqCst);
        let s = scheduler(store(dir.path()).await, clock.clone());
        assert!(
            s.tick().await.expect("tick").is_empty(),
            "a restart does not fire the same slot again"
        );
        drop(s);

        // Down for three nights: one firing on start, for the latest slot.
        clock.0.store(at("2026-12-10T09:00:00Z"), Ordering::SeqCst);
        let store = store(dir.path()).await;
        let s = scheduler(store.clone(), clock.clone());
        let fired = s.tick().await.expect("tick");
        assert_eq!(
            fired.len(),
            1,
            "one firing, not one per missed slot: {fired:?}"
        );
        assert_eq!(fired[0].due_ms, at("2026-12-10T03:30:00Z"));
        assert!(s.tick().await.expect("tick").is_empty());
        let status = s.status().await.expect("status");
        assert_eq!(status[0].next_ms, Some(at("2026-12-11T03:30:00Z")));
        assert_eq!(
            status[0].last,
            Some((at("2026-12-10T03:30:00Z"), at("2026-12-10T09:00:00Z")))
        );

        let runs = store.list_runs(RunFilter::default()).await.expect("runs");
        assert_eq!(runs.len(), 2, "{runs:?}");
        let run = &runs[0];
        assert_eq!(run.role, Role::Improve);
        assert_eq!(run.repo.to_string(), "local/app");
        assert_eq!(run.trigger.actor, "schedule:nightly");
        assert_eq!(
            run.trigger.kind,
            TriggerKind::Schedule {
                name: "nightly".into(),
                args: vec![("target".into(), "triage".into())],
            }
        );
    }

    #[tokio::test]
    async fn a_new_schedule_waits_for_its_first_due_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Started after today's slot: nothing fires until tomorrow's.
        let clock = Arc::new(TestClock(AtomicI64::new(at("2026-12-07T05:00:00Z"))));
        let s = scheduler(store(dir.path()).await, clock.clone());
        assert!(s.tick().await.expect("tick").is_empty());
        let status = s.status().await.expect("status");
        assert_eq!(status[0].next_ms, Some(at("2026-12-08T03:30:00Z")));
        assert_eq!(status[0].last, None);
    }

    #[test]
    fn a_bad_cron_expression_names_the_schedule_and_the_field() {
        for (cron, field) in [
            ("61 * * * *", "`cron` field 1 (minute)"),
            ("0 25 * * *", "`cron` field 2 (hour)"),
            ("0 0 32 * *", "`cron` field 3 (day of month)"),
            ("0 0 * 13 *", "`cron` field 4 (month)"),
            ("0 0 * * mon-xyz", "`cron` field 5 (day of week)"),
            ("0 0 * *", "`cron`"),
            ("0 0 0 * * *", "`cron`"),
            ("0 0 31 2 *", "`cron`"),
        ] {
            let err = Schedule::new(config("weekly", cron)).expect_err(cron);
            assert_eq!(err.field, field, "{cron}: {err}");
            assert_eq!(err.name, "weekly");
            let text = err.to_string();
            assert!(
                text.starts_with("[[schedules]] \"weekly\": `cron`"),
                "{text}"
            );
        }
        let mut bad = config("Nightly!", "0 0 * * *");
        assert_eq!(Schedule::new(bad.clone()).unwrap_err().field, "`name`");
        bad.name = "ok".into();
        bad.repo = "no-slash".into();
        assert_eq!(Schedule::new(bad).unwrap_err().field, "`repo`");
        let mut every = config("all", "*/15 * * * *");
        every.repo = "*".into();
        assert!(Schedule::new(every.clone()).is_ok());
        // improve needs to know which role to improve.
        every.args.clear();
        let err = Schedule::new(every).unwrap_err();
        assert_eq!(err.field, "`args`", "{err}");
        assert!(err.reason.contains("target"), "{err}");
    }

    #[test]
    fn a_window_is_days_or_hours() {
        assert_eq!(parse_since("7d"), Ok(168));
        assert_eq!(parse_since("36h"), Ok(36));
        for bad in ["", "7", "d", "7w", "0d", "-1d", "999d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::{ConfigError, KilnConfig};

    #[test]
    fn kiln_toml_refuses_a_bad_schedule_at_start_up_naming_it_and_the_field() {
        let ok = KilnConfig::from_toml(
            "[[schedules]]\nname = \"improve-triage\"\ncron = \"30 3 * * 1\"\nrole = \"improve\"\nrepo = \"*\"\nargs = { target = \"triage\", since = \"7d\" }\n",
        )
        .expect("valid");
        assert_eq!(ok.schedules.len(), 1);
        let err = KilnConfig::from_toml(
            "[[schedules]]\nname = \"nightly\"\ncron = \"0 25 * * *\"\nrole = \"improve\"\nrepo = \"*\"\nargs = { target = \"triage\" }\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Schedule(_)), "{err:?}");
        assert!(
            err.to_string().starts_with(
                "[[schedules]] \"nightly\": `cron` field 2 (hour) \"25\" is not valid"
            ),
            "{err}"
        );
        let err = KilnConfig::from_toml(
            "[[schedules]]\nname = \"weekly\"\ncron = \"0 3 * * 1\"\nrole = \"deployer\"\nrepo = \"*\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("[[schedules]] \"weekly\" names role `deployer`"),
            "{err}"
        );
        let twice = "[[schedules]]\nname = \"a\"\ncron = \"0 3 * * 1\"\nrole = \"triage\"\nrepo = \"local/app\"\n";
        let err = KilnConfig::from_toml(&format!("{twice}{twice}")).unwrap_err();
        assert!(
            err.to_string().contains("is used by two schedules"),
            "{err}"
        );
        let err = KilnConfig::from_toml(
            "[[schedules]]\nname = \"a\"\ncron = \"0 3 * * 1\"\nrole = \"triage\"\nrepo = \"*\"\nevery = 3\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("every"),
            "an unknown key is named: {err}"
        );
    }
}
