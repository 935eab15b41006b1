//! The board over real HTTP on loopback: a real local forge (issues,
//! labels, pull requests on their branches, a commit status) and real
//! runs in the store, read back as `GET /repos/{owner}/{name}/board`, and
//! followed over its SSE stream while a label and a run change.
use std::time::Duration;

use futures_util::StreamExt as _;
use kiln::config::Role;
use kiln::forge::{CommitStatus, Forge as _, NewIssue, NewPullRequest, RepoRef, StatusState};
use kiln::store::{RunState, RunStore as _};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{call, error_body};
use crate::support::api::{Server, branch};

/// Only a guard against a hung stream; no assertion depends on timing.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn issue(title: &str, labels: &[&str]) -> NewIssue {
    NewIssue {
        title: title.into(),
        body: "body".into(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
    }
}

fn card(board: &Value, number: u64) -> &Value {
    board["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .find(|c| c["number"] == number)
        .unwrap_or_else(|| panic!("#{number} should be on the board: {board}"))
}

fn stage(board: &Value, number: u64) -> String {
    card(board, number)["stage"]
        .as_str()
        .expect("stage")
        .to_owned()
}

#[tokio::test]
async fn the_board_places_each_open_issue_by_labels_pull_requests_statuses_and_runs() {
    let server = Server::start().await;
    let forge = server.local_repo("shop").await;
    let repo = RepoRef::parse("local/shop").expect("repo");
    let new = forge
        .create_issue(issue("Export fails", &["bug"]))
        .await
        .expect("issue");
    let needs_info = forge
        .create_issue(issue("It is slow", &["needs-info"]))
        .await
        .expect("issue");
    let to_spec = forge
        .create_issue(issue("Dark mode", &["ready-to-spec"]))
        .await
        .expect("issue");
    let in_spec_review = forge
        .create_issue(issue("Search", &["ready-to-spec"]))
        .await
        .expect("issue");
    branch(&forge, &format!("kiln/spec-issue-{in_spec_review}"));
    let spec_pr = forge
        .create_draft_pull_request(NewPullRequest {
            title: "Spec: search".into(),
            body: format!("Spec for #{in_spec_review}"),
            head: format!("kiln/spec-issue-{in_spec_review}"),
            base: "main".into(),
        })
        .await
        .expect("spec pr");
    let approved = forge
        .create_issue(issue("Typo", &["ready-to-implement"]))
        .await
        .expect("issue");
    let verified = forge
        .create_issue(issue("Crash on save", &["plan-approved"]))
        .await
        .expect("issue");
    // Linked by its body, not its branch.
    branch(&forge, "fix-save");
    let impl_pr = forge
        .create_draft_pull_request(NewPullRequest {
            title: "Fix the crash".into(),
            body: format!("Closes #{verified}\n\n## Verification\n..."),
            head: "fix-save".into(),
            base: "main".into(),
        })
        .await
        .expect("implementation pr");
    forge
        .set_status(
            impl_pr,
            &CommitStatus {
                context: "kiln/verification".into(),
                state: StatusState::Success,
                description: "tests pass".into(),
            },
        )
        .await
        .expect("status");
    let implementing = forge
        .create_issue(issue("Retry uploads", &["plan-approved"]))
        .await
        .expect("issue");
    let live = server
        .run_on(&repo, Role::Implementation, implementing, RunState::Running)
        .await;
    let blocked = forge
        .create_issue(issue("Rewrite it", &["plan-approved"]))
        .await
        .expect("issue");
    server
        .run_on(&repo, Role::Implementation, blocked, RunState::Blocked)
        .await;
    let hostile = "<script>document.title='pwned'</script> & \"quotes\"";
    let untrusted = forge
        .create_issue(issue(hostile, &[]))
        .await
        .expect("issue");
    let closed = forge
        .create_issue(issue("Old", &["bug"]))
        .await
        .expect("issue");
    forge.close(closed).await.expect("close");
    // Another repository's runs never reach this board.
    server.run_in(new, RunState::Running).await;

    let (status, text) = call(&server, Method::GET, "/repos", Some(&server.viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let repos: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(repos["repos"], serde_json::json!(["local/shop"]), "{repos}");

    let (status, text) = call(
        &server,
        Method::GET,
        "/repos/local/shop/board",
        Some(&server.viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let board: Value = serde_json::from_str(&text).expect("board json");
    assert_eq!(board["repo"], "local/shop");
    let columns: Vec<&str> = board["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(
        columns,
        [
            "new",
            "needs-info",
            "spec",
            "spec-review",
            "approved",
            "implementing",
            "in-review",
            "verified",
            "blocked"
        ]
    );
    for (number, want) in [
        (new, "new"),
        (needs_info, "needs-info"),
        (to_spec, "spec"),
        (in_spec_review, "spec-review"),
        (approved, "approved"),
        (verified, "verified"),
        (implementing, "implementing"),
        (blocked, "blocked"),
        (untrusted, "new"),
    ] {
        assert_eq!(
            stage(&board, number),
            want,
            "#{number}: {}",
            card(&board, number)
        );
    }
    let numbers: Vec<u64> = board["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|c| c["number"].as_u64().expect("number"))
        .collect();
    assert!(
        !numbers.contains(&closed),
        "closed issues are off the board"
    );
    assert!(
        !numbers.contains(&spec_pr) && !numbers.contains(&impl_pr),
        "pull requests are not cards"
    );
    assert!(
        card(&board, new)["runs"]
            .as_array()
            .expect("runs")
            .is_empty()
    );
    let c = card(&board, implementing);
    assert_eq!(c["active_run"]["id"], live.0);
    assert_eq!(c["active_run"]["state"], "running");
    assert!(
        c["why"].as_str().expect("why").contains(&live.to_string()),
        "{c}"
    );
    let c = card(&board, verified);
    assert_eq!(c["pull_requests"][0]["number"], impl_pr);
    assert_eq!(c["pull_requests"][0]["kind"], "implementation");
    assert_eq!(c["pull_requests"][0]["verification"], "success");
    assert_eq!(
        c["pull_requests"][0]["url"],
        Value::Null,
        "local pull requests have no web page"
    );
    let c = card(&board, in_spec_review);
    assert_eq!(c["pull_requests"][0]["kind"], "spec");
    assert_eq!(card(&board, blocked)["runs"][0]["state"], "blocked");
    assert_eq!(
        card(&board, untrusted)["title"],
        hostile,
        "JSON carries the title as text"
    );

    // Auth, unknown repositories, malformed names.
    let (status, _) = call(&server, Method::GET, "/repos/local/shop/board", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, text) = call(
        &server,
        Method::GET,
        "/repos/local/nope/board",
        Some(&server.viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(error_body(&text).message.contains("local/nope"), "{text}");
    let (status, text) = call(
        &server,
        Method::GET,
        "/repos/local/b%20d/board",
        Some(&server.viewer),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
}

/// Reads SSE frames until a `board` event satisfies `pred`; returns it.
async fn next_board<B: AsRef<[u8]>>(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<B>> + Unpin),
    buf: &mut String,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let wait = async {
        loop {
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = if e == "board" { "board" } else { "other" };
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if event == "board" {
                    let board: Value = serde_json::from_str(&data).expect("board json");
                    if pred(&board) {
                        return board;
                    }
                }
            }
            let chunk = body
                .next()
                .await
                .expect("the stream stays open")
                .expect("chunk");
            buf.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    };
    tokio::time::timeout(HANG_GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("the stream never sent a board where {what}"))
}

#[tokio::test]
async fn the_board_stream_follows_labels_and_runs() {
    let server = Server::start().await;
    let forge = server.local_repo("live").await;
    let repo = RepoRef::parse("local/live").expect("repo");
    let n = forge
        .create_issue(issue("Add CSV export", &[]))
        .await
        .expect("issue");
    let response = reqwest::Client::new()
        .get(format!("{}/repos/local/live/board/events", server.url))
        .bearer_auth(&server.viewer)
        .send()
        .await
        .expect("stream opens");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an SSE stream"
    );
    let mut body = response.bytes_stream();
    let mut buf = String::new();
    let first = next_board(&mut body, &mut buf, "the issue is there", |b| {
        b["issues"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    assert_eq!(stage(&first, n), "new");

    // A human label on the forge: no run, only the forge changed.
    forge
        .add_labels(n, &["ready-to-spec".into()])
        .await
        .expect("label");
    next_board(&mut body, &mut buf, "the issue moved to spec", |b| {
        stage(b, n) == "spec"
    })
    .await;

    // A run: queued, then it blocks.
    let run = server.run_on(&repo, Role::Spec, n, RunState::Queued).await;
    let board = next_board(&mut body, &mut buf, "the run is live", |b| {
        card(b, n)["active_run"]["id"] == run.0
    })
    .await;
    assert_eq!(stage(&board, n), "spec");
    server
        .store
        .transition(
            run,
            RunState::Queued,
            RunState::Blocked,
            Some("spec unclear".into()),
        )
        .await
        .expect("block");
    let board = next_board(&mut body, &mut buf, "the issue is blocked", |b| {
        stage(b, n) == "blocked"
    })
    .await;
    assert_eq!(card(&board, n)["runs"][0]["reason"], "spec unclear");
}
