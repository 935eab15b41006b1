//! Kiln's verification role: runs a pull request's checks in the sandbox at
//! the pull request's head and reports them: one comment (updated in place
//! on every later run, never a second one) and a `kiln/verification` commit
//! status on the head.
//!
//! The checks come from `.kiln/verify.toml` at the head; without one, the
//! model looks for the project's checks (Makefile, Cargo.toml, package.json,
//! tests/) and the report says they were guessed. The host keeps the
//! checkout's own files unchangeable while the checks run: they may write
//! build outputs, never alter what they check.
use kiln_plugin_sdk::agent::{self, Agent, tools};
use kiln_plugin_sdk::forge::{self, StatusState};
use kiln_plugin_sdk::workspace::Command;
use kiln_plugin_sdk::{Outcome, Role, RoleError, Task, session, skills, workspace};
use serde::Deserialize;

mod config;
mod report;

use config::{Check, ConfigError};
use report::{CheckRun, Ended, Verdict};

/// The commit status this role sets.
const CONTEXT: &str = "kiln/verification";
const FINISH: &str = "submit_checks";
const FINISH_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "checks": {"type": "array", "items": {
      "type": "object",
      "properties": {
        "name": {"type": "string"},
        "run": {"type": "array", "items": {"type": "string"}},
        "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 3600}
      },
      "required": ["name", "run"]
    }},
    "found_in": {"type": "string"}
  },
  "required": ["checks", "found_in"]
}"#;
/// Bytes of stdout and of stderr the host returns per check; only the tail
/// reaches the report.
const OUTPUT_BYTES: u64 = 64 * 1024;

/// The finish tool's output when the model looks for the checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Guess {
    checks: Vec<GuessedCheck>,
    found_in: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuessedCheck {
    name: String,
    run: Vec<String>,
    timeout_secs: Option<u64>,
}

/// The guess as a verify file, so it passes exactly the checks a file does.
fn guess_to_toml(g: &Guess) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        check: Vec<&'a Check>,
    }
    let checks: Vec<Check> = g
        .checks
        .iter()
        .map(|c| Check {
            name: c.name.clone(),
            run: c.run.clone(),
            timeout_secs: c.timeout_secs.unwrap_or(config::DEFAULT_TIMEOUT_SECS),
        })
        .collect();
    toml::to_string(&File {
        check: checks.iter().collect(),
    })
    .unwrap_or_default()
}

fn check_guess(g: &Guess) -> Result<(), String> {
    if g.found_in.trim().is_empty() {
        return Err("`found_in` is empty: say which files the checks come from".into());
    }
    config::parse(&guess_to_toml(g))
        .map(|_| ())
        .map_err(|e| e.message)
}

/// Where the checks come from, and what the report says about it.
enum Source {
    File(Vec<Check>),
    Malformed(ConfigError),
    Guessed(Vec<Check>, String),
    NotFound(String),
}

/// The checks of the verify file at the head, or `None` without one.
fn from_file() -> Result<Option<Source>, RoleError> {
    let bytes = match workspace::read(config::PATH) {
        Ok(b) => b,
        Err(RoleError::NotFound(_)) => return Ok(None),
        Err(RoleError::LimitExceeded(m)) => {
            return Ok(Some(Source::Malformed(ConfigError {
                line: None,
                message: format!("too large to read: {m}"),
            })));
        }
        Err(e) => return Err(e),
    };
    if bytes.len() > config::MAX_FILE_BYTES {
        return Ok(Some(Source::Malformed(ConfigError {
            line: None,
            message: format!(
                "{} bytes, at most {} are read",
                bytes.len(),
                config::MAX_FILE_BYTES
            ),
        })));
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Some(Source::Malformed(ConfigError {
            line: None,
            message: "not UTF-8 text".into(),
        })));
    };
    Ok(Some(match config::parse(&text) {
        Ok(checks) => Source::File(checks),
        Err(e) => Source::Malformed(e),
    }))
}

/// Ask the model to find the project's checks. Errors that must end the
/// run (cancelled, budget spent) end it; anything else is reported.
fn guess(task: &Task, number: u64) -> Result<Source, RoleError> {
    let skill = skills::get("verification")?;
    let mut agent = Agent::new(agent::system_prompt(&skill.text, task))
        .tool(tools::ReadFile)
        .tool(tools::ListDir)
        .tool(tools::Search)
        .finish_tool(
            FINISH,
            "Submit the checks this project runs, and where you found them",
            FINISH_SCHEMA,
        )
        .check_finish(agent::parses_as(check_guess))
        .max_turns(15);
    let prompt = format!(
        "Pull request #{number} has no `{}`. Find the checks this project runs \
         (its tests, linters, build) and submit them with `{FINISH}`.",
        config::PATH
    );
    let finish = match agent.run(&prompt) {
        Ok(f) => f,
        Err(e @ (RoleError::Cancelled | RoleError::BudgetExhausted(_))) => return Err(e),
        Err(e) => {
            return Ok(Source::NotFound(format!(
                "the model could not be asked: {}",
                e.describe()
            )));
        }
    };
    let output = match finish.output_or_blocked(FINISH) {
        Ok(o) => o,
        Err(blocked) => return Ok(Source::NotFound(blocked.summary)),
    };
    let g: Guess = serde_json::from_value(output)
        .map_err(|e| RoleError::Internal(format!("checked output no longer parses: {e}")))?;
    let checks = config::parse(&guess_to_toml(&g))
        .map_err(|e| RoleError::Internal(format!("checked output no longer passes: {e}")))?;
    // The model's words go into the report: one bounded line.
    Ok(Source::Guessed(checks, report::one_line(&g.found_in, 200)))
}

/// Runs one check in the sandbox, with its time limit.
fn run_check(check: &Check) -> Result<CheckRun, RoleError> {
    session::progress(&format!("check {:?}: {}", check.name, check.run.join(" ")));
    let out = Command::from_argv(check.run.clone())
        .timeout_ms(check.timeout_secs * 1000)
        .max_output_bytes(OUTPUT_BYTES)
        .run();
    Ok(match out {
        Ok(o) => CheckRun {
            check: check.clone(),
            ended: match (&o.killed_by, o.exit_code) {
                (Some(why), _) => Ended::Killed(why.clone()),
                (None, Some(code)) => Ended::Exited(code),
                (None, None) => Ended::Killed("no exit status".into()),
            },
            duration_ms: o.duration_ms,
            tail: report::tail(&o.stdout, &o.stderr),
        },
        Err(e @ (RoleError::Cancelled | RoleError::BudgetExhausted(_))) => return Err(e),
        Err(e) => CheckRun {
            check: check.clone(),
            ended: Ended::NotRun(e.describe()),
            duration_ms: 0,
            tail: String::new(),
        },
    })
}

fn state(v: Verdict) -> StatusState {
    match v {
        Verdict::Passed => StatusState::Success,
        Verdict::Failed => StatusState::Failure,
        Verdict::Errored => StatusState::Error,
    }
}

#[derive(Default)]
struct Verifier;

impl Role for Verifier {
    fn run(&mut self, task: Task) -> Result<Outcome, RoleError> {
        let number = task.pull_request.ok_or_else(|| {
            RoleError::InvalidArgument("the verification role needs a pull request".into())
        })?;
        let pr = forge::pull_request(number)?;
        let head = pr.head_sha.clone();
        let source = match from_file()? {
            Some(s) => s,
            None => guess(&task, number)?,
        };
        let (checks, note) = match source {
            Source::Malformed(e) => {
                let why = format!("`{}` is malformed: {e}", config::PATH);
                let body = report::errored(&why, &head);
                let description = format!("{} is malformed", config::PATH);
                return publish(number, Verdict::Errored, &body, &description);
            }
            Source::NotFound(why) => {
                let why = format!(
                    "There is no `{}` and no checks could be found: {why}",
                    config::PATH
                );
                let body = report::errored(&why, &head);
                return publish(number, Verdict::Errored, &body, "no checks found");
            }
            Source::File(c) => (
                c,
                format!("Checks from `{}` at the pull request's head.", config::PATH),
            ),
            Source::Guessed(c, found_in) => (
                c,
                format!(
                    "**These checks were guessed**: there is no `{path}`, so Kiln's model \
                     looked for the project's checks ({found_in}). Add a `{path}` to choose them.",
                    path = config::PATH
                ),
            ),
        };
        // The head shows the checks running; the verdict replaces it.
        forge::settle(forge::set_status(
            number,
            CONTEXT,
            StatusState::Pending,
            &format!("running {} check(s)", checks.len()),
        ))?;
        let mut runs = Vec::with_capacity(checks.len());
        for c in &checks {
            runs.push(run_check(c)?);
        }
        let (verdict, body) = report::render(&runs, &head, &note);
        let failed = runs.iter().filter(|r| !r.passed()).count();
        let description = match verdict {
            Verdict::Passed => format!("{} check(s) passed", runs.len()),
            Verdict::Failed => format!("{failed} of {} check(s) failed", runs.len()),
            Verdict::Errored => "a check could not run".to_string(),
        };
        publish(number, verdict, &body, &description)
    }
}

/// Posts (or updates) the report and sets the status. A refused proposal
/// blocks the run: a person has to see why the report is missing.
fn publish(
    number: u64,
    verdict: Verdict,
    body: &str,
    description: &str,
) -> Result<Outcome, RoleError> {
    let reported = forge::settle(forge::report(number, body))?;
    let status = forge::settle(forge::set_status(
        number,
        CONTEXT,
        state(verdict),
        description,
    ))?;
    let summary = format!(
        "verification {} on #{number}: {description}; report {reported}; status {status}",
        verdict.as_str()
    );
    let refused = |p: &forge::Proposed| matches!(p, forge::Proposed::Refused(_));
    Ok(if refused(&reported) || refused(&status) {
        Outcome::blocked(summary)
    } else {
        Outcome::completed(summary)
    })
}

kiln_plugin_sdk::register_role!(Verifier);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guess_passes_the_same_limits_as_a_file() {
        let good = Guess {
            checks: vec![GuessedCheck {
                name: "tests".into(),
                run: vec!["make".into(), "test".into()],
                timeout_secs: None,
            }],
            found_in: "Makefile".into(),
        };
        assert_eq!(check_guess(&good), Ok(()));
        let bad = Guess {
            checks: vec![GuessedCheck {
                name: "tests".into(),
                run: vec![],
                timeout_secs: Some(10),
            }],
            found_in: "Makefile".into(),
        };
        assert!(check_guess(&bad).is_err());
        let none = Guess {
            checks: vec![],
            found_in: "nowhere".into(),
        };
        assert!(check_guess(&none).unwrap_err().contains("no checks"));
    }
}
