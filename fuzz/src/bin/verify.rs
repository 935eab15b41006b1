//! A repository's `.kiln/verify.toml`, parsed by the verification role (the
//! plugin's own source, compiled here for the host): any text is a list of
//! checks within the limits, or an error pointing at a line of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../../plugins/verification/src/config.rs"]
mod verify;

use verify::{MAX_ARGS, MAX_ARGV_BYTES, MAX_CHECKS, MAX_NAME_CHARS, TIMEOUT_RANGE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match verify::parse(text) {
        Ok(checks) => {
            assert!(
                (1..=MAX_CHECKS).contains(&checks.len()),
                "{} checks accepted",
                checks.len()
            );
            for c in &checks {
                let chars = c.name.chars().count();
                assert!(
                    (1..=MAX_NAME_CHARS).contains(&chars) && !c.name.contains(['\n', '\r']),
                    "a name outside the limits was accepted: {:?}",
                    c.name
                );
                assert!(
                    !c.run.is_empty() && !c.run[0].trim().is_empty(),
                    "a check without a program was accepted: {c:?}"
                );
                assert!(c.run.len() <= MAX_ARGS, "too many words accepted: {c:?}");
                assert!(
                    c.run.iter().map(String::len).sum::<usize>() <= MAX_ARGV_BYTES,
                    "too long a command accepted"
                );
                assert!(
                    !c.run.iter().any(|a| a.contains('\0')),
                    "a NUL byte reached a command: {c:?}"
                );
                assert!(
                    TIMEOUT_RANGE.contains(&c.timeout_secs),
                    "a time limit outside the range was accepted: {c:?}"
                );
            }
            let mut names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), checks.len(), "two checks share a name");
        }
        Err(e) => {
            assert!(!e.message.trim().is_empty(), "an error without a message");
            if let Some(line) = e.line {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of a {lines}-line file: {e}"
                );
            }
        }
    }
});
