//! The ledger end to end (issue 19 §5): a run's events in the store are
//! hash-chained and signed; `kiln runs verify` names an edited event;
//! `kiln runs export` writes a transcript that verifies offline with
//! `kiln runs pubkey`'s key.

use std::path::Path;
use std::process::Command;

use kiln::forge::RepoRef;
use kiln::policy::Trust;
use kiln::session::EventKind;
use kiln::store::{
    NewRun, RunId, RunState, RunStore, SqliteOptions, SqliteStore, Trigger, TriggerKind,
};

/// `kiln ARGS` on the data directory `dir`: exit code, stdout, stderr.
fn kiln(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_DATA_DIR", dir)
        .env_remove("KILN_REPO")
        .output()
        .expect("run kiln");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn run_with_notes(store: &SqliteStore, notes: u64, end: Option<RunState>) -> RunId {
    let id = store
        .enqueue_run(NewRun {
            repo: RepoRef::parse("octo/widgets").expect("repo"),
            role: kiln::config::Role::Triage,
            number: 4,
            trigger: Trigger {
                kind: TriggerKind::IssueOpened,
                actor: "mallory".into(),
                actor_trust: Trust::Untrusted,
                delivery: None,
                instructions: None,
            },
            script: None,
        })
        .await
        .expect("enqueue");
    store.claim_next_run().await.expect("claim");
    store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    for i in 1..=notes {
        store
            .append_event(id, &EventKind::Note, &format!("step {i}"))
            .await
            .expect("append");
    }
    if let Some(end) = end {
        store
            .transition(id, RunState::Running, end, None)
            .await
            .expect("end");
    }
    id
}

#[tokio::test]
async fn an_edited_event_is_named_and_an_export_verifies_offline_with_the_public_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path();
    let store = SqliteStore::open(data.join("kiln.db"), SqliteOptions::default())
        .await
        .expect("store");
    let done = run_with_notes(&store, 6, Some(RunState::Succeeded)).await;
    let live = run_with_notes(&store, 2, None).await;
    store.flush().await.expect("flush");
    let done_id = done.to_string();

    let (code, out, err) = kiln(data, &["runs", "verify", &done_id]);
    assert_eq!(code, 0, "an untouched run verifies: {out}{err}");
    assert!(out.contains("signed through seq 6"), "{out}");

    let (code, out, err) = kiln(data, &["runs", "verify", &live.to_string()]);
    assert_eq!(code, 0, "a run in progress verifies so far: {out}{err}");
    assert!(out.contains("unsigned until it ends"), "{out}");

    let (code, pubkey, err) = kiln(data, &["runs", "pubkey"]);
    assert_eq!(code, 0, "{err}");
    let pubkey = pubkey.trim().to_string();
    assert!(
        pubkey.starts_with("ed25519:") && pubkey.len() == 8 + 64,
        "{pubkey}"
    );

    let export = data.join("export.json");
    let (code, _, err) = kiln(
        data,
        &[
            "runs",
            "export",
            &done_id,
            "-o",
            export.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let file = export.to_str().expect("utf-8");

    // The auditor's machine: no store, no key file, only the public key.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let (code, out, err) = kiln(
        elsewhere.path(),
        &["runs", "verify", "--file", file, "--pubkey", &pubkey],
    );
    assert_eq!(code, 0, "the export verifies offline: {out}{err}");
    assert!(
        !elsewhere.path().join("ledger.key").exists(),
        "checking a file makes no key"
    );
    let (code, out, _) = kiln(
        elsewhere.path(),
        &[
            "runs",
            "verify",
            "--file",
            file,
            "--pubkey",
            &format!("ed25519:{}", "11".repeat(32)),
        ],
    );
    assert_ne!(code, 0, "another key does not verify it: {out}");
    let (code, _, err) = kiln(elsewhere.path(), &["runs", "verify", "--file", file]);
    assert_ne!(code, 0, "a file needs a key");
    assert!(err.contains("--pubkey"), "{err}");

    // An edited transcript names the edited event.
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).expect("read")).expect("json");
    t["events"][3]["message"] = "step 4, all fine".into();
    let edited = data.join("edited.json");
    std::fs::write(&edited, t.to_string()).expect("write");
    let (code, out, _) = kiln(
        elsewhere.path(),
        &[
            "runs",
            "verify",
            "--file",
            edited.to_str().expect("utf-8"),
            "--pubkey",
            &pubkey,
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("TAMPERED: event seq 4"), "{out}");

    // Someone with the database file edits one stored event.
    let conn = rusqlite::Connection::open(data.join("kiln.db")).expect("raw open");
    conn.execute(
        "UPDATE events SET kind = '{\"type\":\"note\",\"edited\":true}' \
         WHERE run_id = ?1 AND seq = 3",
        [done.0 as i64],
    )
    .expect("tamper");
    let (code, out, err) = kiln(data, &["runs", "verify", &done_id]);
    assert_eq!(code, 1, "a tampered run fails: {out}{err}");
    assert!(
        out.contains("TAMPERED: event seq 3"),
        "the edited event is named: {out}"
    );
}

/// The ledger over the API: the export is the transcript `kiln runs export`
/// writes and verifies with the runner's key; the verify route recomputes
/// the stored chain and names an edited event; both need a token.
#[tokio::test]
async fn the_api_serves_the_ledger_and_names_an_edited_event() {
    use kiln::api::client::ClientError;

    let server = crate::support::api::Server::start().await;
    let done = run_with_notes(&server.store, 5, Some(RunState::Succeeded)).await;
    let live = run_with_notes(&server.store, 2, None).await;
    server.store.flush().await.expect("flush");
    let viewer = server.client(&server.viewer);
    let key = kiln::ledger::HostKey::load_or_create(server.dir.path())
        .expect("key")
        .public();

    let exported = viewer.ledger(done.0).await.expect("ledger");
    assert_eq!(exported.events.len(), 5, "the five notes");
    assert!(exported.seal.is_some(), "a finished run is sealed");
    assert_eq!(
        exported,
        server.store.transcript(done).await.expect("transcript"),
        "the export is the stored transcript"
    );
    assert!(
        exported.verify(&key).ok(),
        "{}: it verifies offline",
        exported.verify(&key)
    );

    let check = viewer.verify_ledger(done.0).await.expect("verify");
    assert!(check.ok, "{check:?}");
    assert_eq!(
        (check.verdict.as_str(), check.seq, check.events),
        ("signed", Some(5), 5)
    );
    assert_eq!(check.public_key, key.to_string());
    let check = viewer.verify_ledger(live.0).await.expect("verify");
    assert_eq!((check.ok, check.verdict.as_str()), (true, "in-progress"));

    // Authenticated like the other run routes, and a 404 for no such run.
    let stranger = server.client("kiln_not-a-token");
    for r in [
        stranger.ledger(done.0).await.map(drop),
        stranger.verify_ledger(done.0).await.map(drop),
    ] {
        assert!(
            matches!(&r, Err(ClientError::Api { status, .. }) if status.as_u16() == 401),
            "{r:?}"
        );
    }
    assert!(matches!(
        viewer.verify_ledger(999).await,
        Err(ClientError::Api { status, .. }) if status.as_u16() == 404
    ));

    // Someone with the database file edits one stored event.
    let conn = rusqlite::Connection::open(server.dir.path().join("kiln.db")).expect("raw open");
    conn.execute(
        "UPDATE events SET message = 'step 2, all fine' WHERE run_id = ?1 AND seq = 2",
        [done.0 as i64],
    )
    .expect("tamper");
    let check = viewer.verify_ledger(done.0).await.expect("verify");
    assert_eq!(
        (check.ok, check.verdict.as_str(), check.seq),
        (false, "broken", Some(2)),
        "{check:?}"
    );
    assert!(
        check.message.contains("TAMPERED: event seq 2"),
        "{}",
        check.message
    );
    let exported = viewer.ledger(done.0).await.expect("ledger");
    assert!(
        !exported.verify(&key).ok(),
        "the edited export fails offline"
    );
}
