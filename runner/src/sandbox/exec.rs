//! Commands run inside a sandbox: the request (argv, env, workdir, timeout),
//! the events streamed while it runs, and the outcome with the reason it ended.
//!
//! Output is capped per stream: a command that prints gigabytes must not make
//! the host hold gigabytes (the rest is counted, and streamed events stop at
//! the cap too). Why a command died is read from the container's cgroup
//! counters, because Docker only reports OOM kills of the container's main
//! process, not of exec'd ones.

use std::time::Duration;

/// One command to run in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program and arguments; no shell is involved unless argv names one.
    pub argv: Vec<String>,
    /// Extra environment (`NAME`, `value`), on top of the sandbox's own.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox (default `/workspace`).
    pub workdir: Option<String>,
    /// Timeout; `None` uses the sandbox's default.
    pub timeout: Option<Duration>,
}

impl ExecRequest {
    /// A request for `argv` with no extra env, in `/workspace`, default timeout.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            workdir: None,
            timeout: None,
        }
    }

    /// A request running `script` with `bash -c`.
    pub fn shell(script: impl Into<String>) -> Self {
        Self::new(["bash".to_string(), "-c".to_string(), script.into()])
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.workdir = Some(dir.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() {
            return Err("argv is empty".into());
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("argv contains a NUL byte".into());
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                return Err(format!("bad environment variable name `{name}`"));
            }
        }
        Ok(())
    }
}

/// A piece of output, streamed while the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes written to stdout.
    Stdout(Vec<u8>),
    /// Bytes written to stderr.
    Stderr(Vec<u8>),
}

/// Why a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited by itself with this status.
    Exited(i64),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// The kernel's OOM killer killed it (the container's memory limit was hit).
    OomKilled,
    /// It was killed after hitting the pids limit (e.g. a fork bomb), or
    /// died because it could not create processes.
    PidsLimit {
        /// The exit status it ended with.
        status: i64,
    },
}

impl ExitReason {
    /// True for a normal exit with status 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitReason::Exited(0))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited(code) => write!(f, "exited with status {code}"),
            ExitReason::TimedOut(t) => write!(f, "killed after the {}s timeout", t.as_secs_f64()),
            ExitReason::OomKilled => f.write_str("killed by the OOM killer (memory limit reached)"),
            ExitReason::PidsLimit { status } => {
                write!(
                    f,
                    "hit the process limit (status {status}); runaway processes were killed"
                )
            }
        }
    }
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// Why it ended.
    pub reason: ExitReason,
    /// Kept stdout (at most the cap).
    pub stdout: Vec<u8>,
    /// Kept stderr (at most the cap).
    pub stderr: Vec<u8>,
    /// Bytes of stdout dropped beyond the cap.
    pub stdout_dropped: u64,
    /// Bytes of stderr dropped beyond the cap.
    pub stderr_dropped: u64,
    /// Wall-clock time.
    pub duration: Duration,
}

impl ExecOutcome {
    /// Stdout as lossy UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as lossy UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A capped buffer for one output stream.
#[derive(Debug, Default)]
pub(crate) struct CappedOutput {
    pub(crate) kept: Vec<u8>,
    pub(crate) dropped: u64,
}

impl CappedOutput {
    /// Keeps what fits under `cap` and returns that part (what may be streamed).
    pub(crate) fn push<'a>(&mut self, chunk: &'a [u8], cap: usize) -> &'a [u8] {
        let room = cap.saturating_sub(self.kept.len());
        let (keep, drop) = chunk.split_at(room.min(chunk.len()));
        self.kept.extend_from_slice(keep);
        self.dropped += drop.len() as u64;
        keep
    }
}

/// The container's cgroup counters that explain deaths: OOM kills and
/// refused forks. Monotonic, so a delta over one command attributes it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitCounters {
    pub(crate) oom_kills: u64,
    pub(crate) pids_max_hits: u64,
}

/// Shell snippet printing `FILE KEY VALUE` lines of the counters, for
/// cgroup v1 and v2 layouts (only builtins, so it runs even when the pids
/// limit leaves no room for another process).
pub(crate) const READ_COUNTERS: &str = "for f in /sys/fs/cgroup/memory/memory.oom_control \
     /sys/fs/cgroup/pids/pids.events /sys/fs/cgroup/memory.events /sys/fs/cgroup/pids.events; \
     do [ -r \"$f\" ] && while read -r k v; do echo \"$f $k $v\"; done < \"$f\"; done; true";

impl LimitCounters {
    /// Parses the output of [`READ_COUNTERS`]. Both `memory.events` and
    /// `pids.events` have a `max` key, so the file decides what it counts.
    pub(crate) fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(file), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let file = file.rsplit('/').next().unwrap_or(file);
            match (file, key) {
                ("memory.oom_control" | "memory.events", "oom_kill") => c.oom_kills += value,
                ("pids.events", "max") => c.pids_max_hits += value,
                _ => {}
            }
        }
        c
    }
}

/// Decides why a command ended from its status and the counter deltas.
pub(crate) fn classify(
    status: i64,
    timed_out: Option<Duration>,
    before: LimitCounters,
    after: LimitCounters,
) -> ExitReason {
    if let Some(t) = timed_out {
        if after.pids_max_hits > before.pids_max_hits {
            return ExitReason::PidsLimit { status };
        }
        return ExitReason::TimedOut(t);
    }
    // 137 = killed by SIGKILL, which is what the OOM killer sends.
    if status == 137 && after.oom_kills > before.oom_kills {
        return ExitReason::OomKilled;
    }
    if status != 0 && after.pids_max_hits > before.pids_max_hits {
        return ExitReason::PidsLimit { status };
    }
    ExitReason::Exited(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_counted() {
        let mut out = CappedOutput::default();
        assert_eq!(out.push(b"hello", 8), b"hello");
        assert_eq!(
            out.push(b"world", 8),
            b"wor",
            "only what fits should be kept and streamed"
        );
        assert_eq!(out.push(b"more", 8), b"");
        assert_eq!(out.kept, b"hellowor");
        assert_eq!(out.dropped, 6);
    }

    #[test]
    fn counters_parse_v1_and_v2() {
        let v1 = "/sys/fs/cgroup/memory/memory.oom_control under_oom 0\n\
                  /sys/fs/cgroup/memory/memory.oom_control oom_kill 3\n\
                  /sys/fs/cgroup/pids/pids.events max 17\n";
        assert_eq!(
            LimitCounters::parse(v1),
            LimitCounters {
                oom_kills: 3,
                pids_max_hits: 17
            }
        );
        let v2 = "/sys/fs/cgroup/memory.events max 5\n/sys/fs/cgroup/memory.events oom_kill 2\n\
                  /sys/fs/cgroup/pids.events max 9\n";
        assert_eq!(
            LimitCounters::parse(v2),
            LimitCounters {
                oom_kills: 2,
                pids_max_hits: 9
            },
            "memory.events' own `max` line must not count as a pids limit hit"
        );
        assert_eq!(
            LimitCounters::parse("garbage\nf max x\n"),
            LimitCounters::default()
        );
    }

    #[test]
    fn classification_names_the_limit() {
        let zero = LimitCounters::default();
        let oom = LimitCounters {
            oom_kills: 1,
            ..zero
        };
        let pids = LimitCounters {
            pids_max_hits: 4,
            ..zero
        };
        let t = Duration::from_secs(1);
        assert_eq!(classify(137, None, zero, oom), ExitReason::OomKilled);
        assert_eq!(
            classify(137, None, zero, zero),
            ExitReason::Exited(137),
            "a plain SIGKILL is not an OOM kill"
        );
        assert_eq!(
            classify(137, Some(t), zero, pids),
            ExitReason::PidsLimit { status: 137 }
        );
        assert_eq!(classify(137, Some(t), zero, zero), ExitReason::TimedOut(t));
        assert_eq!(classify(0, None, zero, pids), ExitReason::Exited(0));
        assert_eq!(
            classify(254, None, zero, pids),
            ExitReason::PidsLimit { status: 254 }
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(ExecRequest::new(Vec::<String>::new()).validate().is_err());
        assert!(ExecRequest::new(["a\0b"]).validate().is_err());
        assert!(
            ExecRequest::new(["true"])
                .env("A=B", "x")
                .validate()
                .is_err()
        );
        assert!(ExecRequest::new(["true"]).env("A", "x").validate().is_ok());
    }
}
