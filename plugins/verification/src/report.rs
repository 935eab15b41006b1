//! The report: one comment starting with a status line (passed, failed or
//! errored), a table of the checks, and the tail of each check's output.
//! Pure text functions, so the format is tested without a host.
use crate::config::Check;

/// Lines of a check's output kept in the report.
pub const TAIL_LINES: usize = 30;
/// Bytes of a check's output kept in the report (the host also redacts it).
pub const TAIL_BYTES: usize = 2000;

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// The sandbox stopped it (`timeout`, `oom-killed`, ...).
    Killed(String),
    /// It could not be started; the host's reason.
    NotRun(String),
}

/// One check and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun {
    /// The check.
    pub check: Check,
    /// How it ended.
    pub ended: Ended,
    /// Wall-clock duration in milliseconds.
    pub duration_ms: u64,
    /// The last lines of its output (stdout, then stderr).
    pub tail: String,
}

impl CheckRun {
    /// True if it exited with 0.
    pub fn passed(&self) -> bool {
        self.ended == Ended::Exited(0)
    }
}

/// The verdict of a verification run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check exited with 0.
    Passed,
    /// A check ran and failed (non-zero exit, killed).
    Failed,
    /// Verification could not be done (bad verify file, no checks, a check
    /// that could not start).
    Errored,
}

impl Verdict {
    /// The word on the status line.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Errored => "errored",
        }
    }

    /// The verdict of a set of check runs.
    pub fn of(runs: &[CheckRun]) -> Verdict {
        if runs.is_empty() || runs.iter().any(|r| matches!(r.ended, Ended::NotRun(_))) {
            Verdict::Errored
        } else if runs.iter().all(CheckRun::passed) {
            Verdict::Passed
        } else {
            Verdict::Failed
        }
    }
}

/// The first line of every report: what a reader needs if they read nothing else.
pub fn status_line(verdict: Verdict, detail: &str) -> String {
    format!("**Kiln verification: {}** — {detail}", verdict.as_str())
}

/// The last [`TAIL_LINES`] lines and at most [`TAIL_BYTES`] bytes of
/// `stdout` then `stderr`, cut on a character boundary.
pub fn tail(stdout: &str, stderr: &str) -> String {
    let mut text = stdout.trim_end().to_string();
    if !stderr.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr.trim_end());
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if out.len() > TAIL_BYTES {
        let mut cut = out.len() - TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_string();
    }
    out
}

/// A table cell: one line, no `|` to split the row.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// A code fence longer than any run of backticks in `text`, so output can
/// never close its block and turn into markdown.
fn fence(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

/// `text` on one line, cut to `max` characters with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    }
}

fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The report of checks that ran. `source` says where the checks came from
/// (the verify file, or the model's guess and why), `head` is the commit.
pub fn render(runs: &[CheckRun], head: &str, source: &str) -> (Verdict, String) {
    let verdict = Verdict::of(runs);
    let failed = runs.iter().filter(|r| !r.passed()).count();
    let short = &head[..head.len().min(12)];
    let detail = match verdict {
        Verdict::Passed => format!("{} check(s) passed at `{short}`", runs.len()),
        Verdict::Failed => format!("{failed} of {} check(s) failed at `{short}`", runs.len()),
        Verdict::Errored => format!("verification could not be completed at `{short}`"),
    };
    let mut out = status_line(verdict, &detail);
    out.push_str("\n\n| check | result | exit status | duration | last line of output |\n");
    out.push_str("|---|---|---|---|---|\n");
    for r in runs {
        let (result, exit) = match &r.ended {
            Ended::Exited(0) => ("passed", "0".to_string()),
            Ended::Exited(c) => ("failed", c.to_string()),
            Ended::Killed(why) => ("failed", format!("killed ({})", cell(&one_line(why, 40)))),
            Ended::NotRun(_) => ("did not run", "—".to_string()),
        };
        let last = match &r.ended {
            Ended::NotRun(why) => why.clone(),
            _ => r.tail.lines().last().unwrap_or_default().to_string(),
        };
        let last: String = last.chars().take(120).collect();
        out.push_str(&format!(
            "| {} | {result} | {exit} | {} | {} |\n",
            cell(&r.check.name),
            duration(r.duration_ms),
            if last.trim().is_empty() {
                String::new()
            } else {
                format!("`{}`", cell(&last).replace('`', "'"))
            }
        ));
    }
    for r in runs.iter().filter(|r| !r.tail.is_empty()) {
        let f = fence(&r.tail);
        out.push_str(&format!(
            "\n<details><summary>{}: <code>{}</code> (last lines of output)</summary>\n\n{f}text\n{}\n{f}\n</details>\n",
            html(&r.check.name),
            html(&one_line(&r.check.run.join(" "), 80)),
            r.tail
        ));
    }
    out.push_str(&format!("\n{source}\n"));
    (verdict, out)
}

/// The report when there is nothing to run: the verify file is malformed,
/// or no checks could be found. `why` names the line when there is one.
pub fn errored(why: &str, head: &str) -> String {
    let short = &head[..head.len().min(12)];
    format!(
        "{}\n\n{why}\n\nNo check was run. Fix `.kiln/verify.toml` (see Kiln's README for its format) and ask again with `/kiln verify`.\n",
        status_line(Verdict::Errored, &format!("nothing was run at `{short}`"))
    )
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, ended: Ended, tail: &str) -> CheckRun {
        CheckRun {
            check: Check {
                name: name.into(),
                run: vec!["make".into(), name.into()],
                timeout_secs: 60,
            },
            ended,
            duration_ms: 1500,
            tail: tail.into(),
        }
    }

    #[test]
    fn the_report_starts_with_the_status_line_and_has_a_row_per_check() {
        let (v, text) = render(
            &[
                run("unit", Ended::Exited(0), "ok\nall 3 passed"),
                run("lint", Ended::Exited(2), "x.rs:1: bad | worse"),
            ],
            "0123456789abcdef",
            "From `.kiln/verify.toml`.",
        );
        assert_eq!(v, Verdict::Failed);
        assert!(
            text.starts_with(
                "**Kiln verification: failed** — 1 of 2 check(s) failed at `0123456789ab`"
            ),
            "{text}"
        );
        assert!(
            text.contains("| unit | passed | 0 | 1.5 s | `all 3 passed` |"),
            "{text}"
        );
        assert!(
            text.contains("| lint | failed | 2 | 1.5 s | `x.rs:1: bad \\| worse` |"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("From `.kiln/verify.toml`."));
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(&[]), Verdict::Errored);
        assert_eq!(
            Verdict::of(&[run("a", Ended::Exited(0), "")]),
            Verdict::Passed
        );
        assert_eq!(
            Verdict::of(&[run("a", Ended::Killed("timeout".into()), "")]),
            Verdict::Failed
        );
        assert_eq!(
            Verdict::of(&[
                run("a", Ended::Exited(1), ""),
                run("b", Ended::NotRun("denied".into()), "")
            ]),
            Verdict::Errored
        );
    }

    #[test]
    fn tails_are_bounded_and_cannot_escape_their_block() {
        let long: String = (0..500).map(|i| format!("line {i} é\n")).collect();
        let t = tail(&long, "");
        assert_eq!(t.lines().count(), TAIL_LINES);
        assert!(t.ends_with("line 499 é"));
        let wide = "é".repeat(5000);
        assert!(tail(&wide, "").len() <= TAIL_BYTES);
        assert_eq!(tail("out\n", "err\n"), "out\nerr");
        let (_, text) = render(
            &[run("x", Ended::Exited(1), "```\n# heading\n````")],
            "abc",
            "",
        );
        assert!(
            text.contains("`````text\n```\n# heading\n````\n`````"),
            "{text}"
        );
    }

    #[test]
    fn the_largest_report_fits_the_hosts_text_limit() {
        // Every check at its limits: names, argv, output all at their largest.
        let big = "x`|<".repeat(20_000);
        let runs: Vec<CheckRun> = (0..crate::config::MAX_CHECKS)
            .map(|i| CheckRun {
                check: Check {
                    name: format!("{i}{}", "n".repeat(crate::config::MAX_NAME_CHARS - 2)),
                    run: vec!["a".repeat(crate::config::MAX_ARGV_BYTES)],
                    timeout_secs: 1,
                },
                ended: Ended::Killed(big.clone()),
                duration_ms: u64::MAX,
                tail: tail(&big, &big),
            })
            .collect();
        let (_, text) = render(&runs, &"f".repeat(40), &one_line(&big, 200));
        assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    }

    #[test]
    fn an_errored_report_says_why_and_that_nothing_ran() {
        let text = errored(
            "`.kiln/verify.toml` line 3: invalid array",
            "0123456789abcdef",
        );
        assert!(text.starts_with("**Kiln verification: errored**"), "{text}");
        assert!(text.contains("line 3: invalid array"));
    }
}
