//! Log lines as a service's log file or collector gets them: `kiln` with
//! stderr piped (as systemd or `docker logs` take it) writes no colour
//! codes, and `--log-format json` (or `KILN_LOG_FORMAT=json`) writes one
//! JSON object per line. The command is `kiln github check` against the
//! loopback GitHub server: at `KILN_LOG=debug` it logs each call it makes.

use serde_json::Value;

use crate::github_app::{app_config, kiln};
use crate::support::github_api::GitHubApi;

/// stderr of `kiln github check` at debug level, with `extra` arguments and env.
async fn logged(extra: &[&str], env: &[(&str, &str)]) -> String {
    let api = GitHubApi::start("acme", "widgets").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = app_config(dir.path(), &api, &api.app().private_pem);
    let mut args = vec!["github", "check", "-c", config.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("KILN_LOG", "kiln=debug"));
    let out = kiln(dir.path(), &args, &env).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stderr).expect("logs are UTF-8")
}

#[tokio::test]
async fn logs_into_a_pipe_carry_no_colour_codes() {
    let logs = logged(&[], &[]).await;
    assert!(
        logs.contains("GitHub answered"),
        "the debug lines are there:\n{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "no escape sequences in piped logs:\n{logs:?}"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_by_flag_or_environment() {
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("KILN_LOG_FORMAT", "json")][..]),
    ] {
        let logs = logged(args, env).await;
        let lines: Vec<&str> = logs.lines().collect();
        assert!(!lines.is_empty(), "{args:?} {env:?}: no log lines");
        for line in &lines {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            assert!(
                v["level"].is_string() && v["timestamp"].is_string(),
                "{line}"
            );
        }
        assert!(
            lines
                .iter()
                .any(|l| l.contains("\"message\":\"GitHub answered\"")),
            "{logs}"
        );
    }
}
