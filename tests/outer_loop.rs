//! The outer loop from the command line: `[[schedules]]` refused at start-up
//! when its cron is wrong (naming the schedule and the field), `kiln
//! schedules` listing next and last firing, and `kiln improve` queuing the
//! run a schedule would, refusing bad input with a precise error.
use std::path::Path;
use std::process::Output;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

async fn kiln(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(KILN)
        .args(args)
        .current_dir(dir)
        .env("KILN_DATA_DIR", dir.join("data"))
        .env("KILN_USER", "alice")
        .env_remove("KILN_URL")
        .env_remove("KILN_REPO")
        .env_remove("KILN_CONFIG")
        .env_remove("KILN_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run kiln")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn schedules_are_listed_and_improve_is_queued_on_demand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("README.md"), "# app\n").expect("write");
    let out = kiln(
        dir.path(),
        &[
            "repo",
            "create",
            "local/app",
            "--from",
            src.to_str().expect("utf-8"),
        ],
    )
    .await;
    assert!(out.status.success(), "{:?}", text(&out));
    std::fs::write(
        dir.path().join("kiln.toml"),
        "[[schedules]]\nname = \"improve-triage\"\ncron = \"30 3 * * 1\"\nrole = \"improve\"\nrepo = \"*\"\nargs = { target = \"triage\", since = \"7d\" }\n",
    )
    .expect("write");

    let out = kiln(dir.path(), &["schedules"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("improve-triage"))
        .unwrap_or_else(|| panic!("no row for the schedule: {stdout}"));
    assert!(
        row.contains("30 3 * * 1") && row.contains("improve") && row.ends_with("never"),
        "{row}"
    );
    assert!(row.contains("T03:30:00Z"), "the next firing, in UTC: {row}");

    let out = kiln(
        dir.path(),
        &["improve", "triage", "--since", "36h", "-R", "local/app"],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("queued run r1 (improve triage on local/app, last 36h)"),
        "{stdout}"
    );

    for (args, says) in [
        (vec!["improve", "triage", "--since", "7w"], "\"7w\""),
        (vec!["improve", "improve"], "improve cannot target itself"),
        (vec!["improve", "Bad Role!"], "must be a built-in role"),
    ] {
        let out = kiln(dir.path(), &args).await;
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} must fail: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_invalid_cron_stops_start_up_naming_the_schedule_and_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("kiln.toml"),
        "[[schedules]]\nname = \"nightly\"\ncron = \"0 25 * * *\"\nrole = \"improve\"\nrepo = \"*\"\nargs = { target = \"triage\" }\n",
    )
    .expect("write");
    for args in [vec!["schedules"], vec!["serve", "--listen", "127.0.0.1:0"]] {
        let out = kiln(dir.path(), &args).await;
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "{args:?} must refuse the config: {stdout}"
        );
        assert!(
            stderr.contains("[[schedules]] \"nightly\": `cron` field 2 (hour) \"25\" is not valid"),
            "{args:?}: {stderr}"
        );
    }
}
