//! `.kiln/verify.toml`: the checks a repository asks Kiln to run on its pull
//! requests. Every problem is reported with the line it is on, so a
//! maintainer can fix the file from the report alone.
//!
//! ```toml
//! [[check]]
//! name = "unit tests"
//! run = ["cargo", "test", "--locked"]
//! timeout_secs = 900
//! ```
use serde::Deserialize;
use toml::Spanned;

/// Where the file lives in the repository.
pub const PATH: &str = ".kiln/verify.toml";
/// The most checks one file may ask for.
pub const MAX_CHECKS: usize = 20;
/// The most words one check's `run` may have.
pub const MAX_ARGS: usize = 64;
/// The most bytes one check's `run` may have, all words together.
pub const MAX_ARGV_BYTES: usize = 8 * 1024;
/// The longest check name, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// The shortest and longest time a check may ask for, in seconds (the host
/// caps every command at its own limit as well).
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// A check's time limit when the file gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// The largest file read, in bytes.
pub const MAX_FILE_BYTES: usize = 64 * 1024;

/// One check to run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What the report calls it.
    pub name: String,
    /// Program and arguments, run without a shell.
    pub run: Vec<String>,
    /// Time limit in seconds.
    pub timeout_secs: u64,
}

/// What is wrong with a verify file: the line (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The line the problem is on, when it is on one.
    pub line: Option<usize>,
    /// What is wrong, for people.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "{PATH} line {line}: {}", self.message),
            None => write!(f, "{PATH}: {}", self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    check: Vec<Spanned<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: Spanned<String>,
    run: Spanned<Vec<String>>,
    timeout_secs: Option<Spanned<i64>>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses and checks a verify file.
pub fn parse(text: &str) -> Result<Vec<Check>, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError {
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim().to_string(),
    })?;
    let at = |span: std::ops::Range<usize>, message: String| ConfigError {
        line: Some(line_of(text, span.start)),
        message,
    };
    if file.check.is_empty() {
        return Err(ConfigError {
            line: None,
            message: "no checks: add at least one `[[check]]` with `name` and `run`".into(),
        });
    }
    if file.check.len() > MAX_CHECKS {
        let extra = &file.check[MAX_CHECKS];
        return Err(at(
            extra.span(),
            format!(
                "{} checks, at most {MAX_CHECKS} are allowed",
                file.check.len()
            ),
        ));
    }
    let mut checks: Vec<Check> = Vec::with_capacity(file.check.len());
    for c in &file.check {
        let c = c.get_ref();
        let name = c.name.get_ref().trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.contains(['\n', '\r']) {
            return Err(at(
                c.name.span(),
                format!("`name` must be one line of 1 to {MAX_NAME_CHARS} characters"),
            ));
        }
        if checks.iter().any(|k| k.name == name) {
            return Err(at(
                c.name.span(),
                format!("a check named {name:?} is already defined above"),
            ));
        }
        let run = c.run.get_ref();
        if run.is_empty() || run[0].trim().is_empty() {
            return Err(at(
                c.run.span(),
                "`run` must name a program: [\"program\", \"arg\", ...]".into(),
            ));
        }
        if run.len() > MAX_ARGS {
            return Err(at(
                c.run.span(),
                format!(
                    "`run` has {} words, at most {MAX_ARGS} are allowed",
                    run.len()
                ),
            ));
        }
        let bytes: usize = run.iter().map(String::len).sum();
        if bytes > MAX_ARGV_BYTES {
            return Err(at(
                c.run.span(),
                format!("`run` is {bytes} bytes long, at most {MAX_ARGV_BYTES} are allowed"),
            ));
        }
        if run.iter().any(|a| a.contains('\0')) {
            return Err(at(c.run.span(), "`run` contains a NUL character".into()));
        }
        let timeout_secs = match &c.timeout_secs {
            None => DEFAULT_TIMEOUT_SECS,
            Some(t) => match u64::try_from(*t.get_ref()) {
                Ok(v) if TIMEOUT_RANGE.contains(&v) => v,
                _ => {
                    return Err(at(
                        t.span(),
                        format!(
                            "`timeout_secs` is {}, it must be from {} to {} seconds",
                            t.get_ref(),
                            TIMEOUT_RANGE.start(),
                            TIMEOUT_RANGE.end()
                        ),
                    ));
                }
            },
        };
        checks.push(Check {
            name: name.to_string(),
            run: run.clone(),
            timeout_secs,
        });
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("should be refused")
    }

    #[test]
    fn a_good_file_gives_its_checks_with_the_default_timeout() {
        let checks = parse(
            "# checks\n[[check]]\nname = \"unit\"\nrun = [\"make\", \"test\"]\n\n\
             [[check]]\nname = \"lint\"\nrun = [\"make\", \"lint\"]\ntimeout_secs = 60\n",
        )
        .expect("valid");
        assert_eq!(
            checks,
            vec![
                Check {
                    name: "unit".into(),
                    run: vec!["make".into(), "test".into()],
                    timeout_secs: DEFAULT_TIMEOUT_SECS,
                },
                Check {
                    name: "lint".into(),
                    run: vec!["make".into(), "lint".into()],
                    timeout_secs: 60,
                },
            ]
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        // An unclosed array is noticed where the next key starts.
        let e = err("[[check]]\nname = \"unit\"\nrun = [\"make\", \"test\"\ntimeout_secs = 5\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("expected `,`"), "{e}");
        let e = err("[[check]]\nname = unit\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(
            e.to_string().starts_with(".kiln/verify.toml line 2: "),
            "{e}"
        );
    }

    #[test]
    fn wrong_fields_and_types_name_their_line() {
        let e = err("[[check]]\nname = \"unit\"\nrun = [\"make\"]\ncommand = \"x\"\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("command"), "{e}");
        let e = err("[[check]]\nname = \"unit\"\nrun = \"make test\"\n");
        assert_eq!(e.line, Some(3), "{e}");
        let e = err("[[check]]\nname = \"unit\"\n");
        assert!(e.message.contains("run"), "{e}");
    }

    #[test]
    fn limits_are_enforced_with_clear_messages() {
        let e = err("[[check]]\nname = \"u\"\nrun = [\"x\"]\ntimeout_secs = 0\n");
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("from 1 to 3600"), "{e}");
        let e = err("[[check]]\nname = \"u\"\nrun = [\"x\"]\ntimeout_secs = 99999\n");
        assert!(e.message.contains("99999"), "{e}");
        let e = err("[[check]]\nname = \"u\"\nrun = [\"x\"]\ntimeout_secs = -5\n");
        assert!(e.message.contains("-5"), "{e}");
        let e = err("[[check]]\nname = \"u\"\nrun = []\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("must name a program"), "{e}");
        let words = vec!["\"a\""; MAX_ARGS + 1].join(", ");
        let e = err(&format!("[[check]]\nname = \"u\"\nrun = [{words}]\n"));
        assert!(e.message.contains("at most 64"), "{e}");
        let long = "a".repeat(MAX_ARGV_BYTES + 1);
        let e = err(&format!("[[check]]\nname = \"u\"\nrun = [\"{long}\"]\n"));
        assert!(e.message.contains("bytes long"), "{e}");
        let e = err(&format!(
            "[[check]]\nname = \"{}\"\nrun = [\"x\"]\n",
            "n".repeat(65)
        ));
        assert_eq!(e.line, Some(2));
        let e =
            err("[[check]]\nname = \"u\"\nrun = [\"x\"]\n[[check]]\nname = \"u\"\nrun = [\"y\"]\n");
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("already defined"), "{e}");
        let many = "[[check]]\nname = \"c{}\"\nrun = [\"x\"]\n";
        let text: String = (0..=MAX_CHECKS)
            .map(|i| many.replace("{}", &i.to_string()))
            .collect();
        let e = err(&text);
        assert!(e.message.contains("at most 20"), "{e}");
        assert_eq!(e.line, Some(3 * MAX_CHECKS + 1), "{e}");
        let e = err("# nothing\n");
        assert_eq!(e.line, None);
        assert!(e.message.contains("no checks"), "{e}");
    }
}
