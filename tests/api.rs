//! The runner API end to end: real HTTP on loopback, a real SQLite store in
//! a temp dir, the real router; the run control is the test plumbing in
//! `support/api.rs`. The dashboard is driven in a real headless Chromium
//! (`dashboard` module) and the CLI as the built `kiln` binary.

use crate::support::api as support;

mod board;
mod dashboard;

use std::collections::HashSet;

use futures_util::StreamExt as _;
use kiln::api::auth::{COOKIE, CSRF_HEADER};
use kiln::api::client::{ClientError, FeedItem};
use kiln::api::error::ErrorBody;
use kiln::session::EventKind;
use kiln::store::{RunId, RunState, RunStore, StoredEvent};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Call, Server, git};

/// A GitHub token shape the gate's redactor knows.
const GH_TOKEN: &str = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut rb = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request answered");
    let status = r.status();
    (status, r.text().await.expect("body"))
}

fn error_body(text: &str) -> ErrorBody {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("error answers should be JSON {{error, message}}: {e}: {text}"))
}

/// Reads a feed until `n` events or the end; returns the events and whether `end` came.
async fn read(
    feed: &mut futures_util::stream::BoxStream<'static, Result<FeedItem, ClientError>>,
    n: usize,
) -> (Vec<StoredEvent>, Option<Value>) {
    let mut events = Vec::new();
    while events.len() < n {
        match feed.next().await {
            Some(Ok(FeedItem::Event(e))) => events.push(e),
            Some(Ok(FeedItem::End(v))) => return (events, Some(v)),
            Some(Ok(FeedItem::StreamError(m))) => panic!("server stream error: {m}"),
            Some(Err(e)) => panic!("feed failed: {e}"),
            None => return (events, None),
        }
    }
    (events, None)
}

#[tokio::test]
async fn sse_resumes_after_a_disconnect_with_nothing_lost_or_repeated() {
    let server = Server::start().await;
    let client = server.client(&server.viewer);
    let run = server.run_in(1, RunState::Running).await;
    for i in 1..=5 {
        server
            .event(run, EventKind::Progress, &format!("e{i}"))
            .await;
    }
    let mut feed = client.feed(run.0, None).await.expect("feed");
    let (first, _) = read(&mut feed, 3).await;
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    drop(feed);

    // Appended while nobody is connected.
    for i in 6..=10 {
        server
            .event(run, EventKind::Progress, &format!("e{i}"))
            .await;
    }
    let mut feed = client.feed(run.0, Some(3)).await.expect("resumed feed");
    let (second, _) = read(&mut feed, 7).await;
    assert_eq!(
        second.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (4..=10).collect::<Vec<_>>(),
        "resuming after Last-Event-ID 3 should give 4..=10 exactly once"
    );
    assert_eq!(second[0].message, "e4");

    // A live event, then the run ends: the stream closes with `end`.
    server.event(run, EventKind::Finished, "done").await;
    server.finish(run, RunState::Succeeded).await;
    let (rest, end) = read(&mut feed, usize::MAX).await;
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [11]);
    let end = end.expect("the stream should end with `end` once the run is final");
    assert_eq!(end["state"], "succeeded");
    assert!(feed.next().await.is_none(), "nothing should follow `end`");

    // Resuming a finished run from the middle replays the rest, then ends.
    let mut feed = client.feed(run.0, Some(8)).await.expect("feed");
    let (tail, end) = read(&mut feed, usize::MAX).await;
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [9, 10, 11]);
    assert!(end.is_some());
}

#[tokio::test]
async fn a_hundred_watchers_each_receive_every_event_in_order() {
    const WATCHERS: usize = 100;
    const EVENTS: u64 = 300;
    let server = Server::start().await;
    let run = server.run_in(2, RunState::Running).await;
    let mut feeds = Vec::new();
    for _ in 0..WATCHERS {
        // Connected (headers answered) means subscribed: what follows is live.
        feeds.push(
            server
                .client(&server.viewer)
                .feed(run.0, None)
                .await
                .expect("feed"),
        );
    }
    let watchers: Vec<_> = feeds
        .into_iter()
        .map(|mut feed| {
            tokio::spawn(async move {
                let (events, end) = read(&mut feed, usize::MAX).await;
                (events.into_iter().map(|e| e.seq).collect::<Vec<_>>(), end)
            })
        })
        .collect();
    let sink = server.store.event_sink(run);
    for i in 0..EVENTS {
        kiln::session::EventSink::record(&sink, EventKind::Progress, format!("p{i}"));
    }
    server.store.flush().await.expect("flush");
    server.finish(run, RunState::Failed).await;
    let expected: Vec<u64> = (1..=EVENTS).collect();
    for (i, w) in watchers.into_iter().enumerate() {
        let (seqs, end) = w.await.expect("watcher");
        assert_eq!(
            seqs, expected,
            "watcher {i} should get 1..={EVENTS} in order, once each"
        );
        assert_eq!(end.expect("end")["state"], "failed");
    }
}

/// Every route with the least scope it needs (None: public).
fn routes(run: RunId) -> Vec<(Method, String, Option<Value>, Option<&'static str>)> {
    let r = run.0;
    vec![
        (Method::GET, "/healthz".into(), None, None),
        (Method::GET, "/openapi.json".into(), None, None),
        (Method::GET, "/metrics".into(), None, Some("viewer")),
        (Method::GET, "/runs".into(), None, Some("viewer")),
        (Method::GET, format!("/runs/{r}"), None, Some("viewer")),
        (
            Method::GET,
            format!("/runs/{r}/events"),
            None,
            Some("viewer"),
        ),
        (
            Method::GET,
            format!("/runs/{r}/approvals"),
            None,
            Some("viewer"),
        ),
        (
            Method::GET,
            format!("/runs/{r}/handback"),
            None,
            Some("viewer"),
        ),
        (
            Method::GET,
            format!("/runs/{r}/transcript.jsonl"),
            None,
            Some("viewer"),
        ),
        (
            Method::GET,
            format!("/runs/{r}/transcript.md"),
            None,
            Some("viewer"),
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some(json!({"message": "hi"})),
            Some("operator"),
        ),
        (
            Method::POST,
            format!("/runs/{r}/approvals/e1"),
            Some(json!({"approve": true})),
            Some("operator"),
        ),
        (
            Method::POST,
            format!("/runs/{r}/cancel"),
            None,
            Some("operator"),
        ),
        // Past auth it is refused (not a WebSocket request): nothing opens.
        (
            Method::GET,
            format!("/runs/{r}/attach"),
            None,
            Some("operator"),
        ),
        // Past auth the bundle is refused (not base64): the run stays put.
        (
            Method::POST,
            format!("/runs/{r}/resume"),
            Some(json!({"bundle": "not base64!"})),
            Some("operator"),
        ),
        (Method::GET, "/tokens".into(), None, Some("admin")),
        (
            Method::POST,
            "/tokens".into(),
            Some(json!({"name": "made", "scope": "viewer"})),
            Some("admin"),
        ),
        (Method::DELETE, "/tokens/999".into(), None, Some("admin")),
        (Method::GET, "/repos".into(), None, Some("viewer")),
        // Past auth: no such repository on the forge (404), nothing streams.
        (
            Method::GET,
            "/repos/local/demo/board".into(),
            None,
            Some("viewer"),
        ),
        (
            Method::GET,
            "/repos/local/demo/board/events".into(),
            None,
            Some("viewer"),
        ),
    ]
}

#[tokio::test]
async fn auth_matrix_scope_by_endpoint() {
    let server = Server::start().await;
    // A finished run: actions answer 409 after auth passes, and nothing changes.
    let run = server.run_in(3, RunState::Succeeded).await;
    let revoked = server
        .store
        .create_token("gone", kiln::store::TokenScope::Admin)
        .await
        .expect("token");
    server
        .store
        .revoke_token(revoked.token.id)
        .await
        .expect("revoke");
    let rank = |s: &str| ["viewer", "operator", "admin"].iter().position(|x| *x == s);
    let creds: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("garbage", Some("not-a-token".into())),
        (
            "unknown",
            Some("kiln_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        ),
        ("revoked", Some(revoked.plaintext.clone())),
        ("viewer", Some(server.viewer.clone())),
        ("operator", Some(server.operator.clone())),
        ("admin", Some(server.admin.clone())),
    ];
    for (method, path, body, needed) in routes(run) {
        for (who, token) in &creds {
            let (status, text) = call(
                &server,
                method.clone(),
                &path,
                token.as_deref(),
                body.clone(),
            )
            .await;
            let expected = match (needed, rank(who)) {
                (None, _) => None,
                (Some(_), None) => Some(StatusCode::UNAUTHORIZED),
                (Some(n), Some(have)) if have < rank(n).unwrap_or(0) => Some(StatusCode::FORBIDDEN),
                _ => None,
            };
            match expected {
                Some(want) => {
                    assert_eq!(
                        status, want,
                        "{who} on {method} {path} should be {want}, got {status}: {text}"
                    );
                    let body = error_body(&text);
                    assert!(
                        !body.message.is_empty(),
                        "{method} {path}: the body should say what is wrong"
                    );
                    if *who == "revoked" {
                        assert!(body.message.contains("revoked"), "{}", body.message);
                    }
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{who} on {method} {path} should pass auth, got {status}: {text}"
                ),
            }
        }
    }
}

#[tokio::test]
async fn cookie_actions_need_the_csrf_header() {
    let server = Server::start().await;
    let run = server.run_in(4, RunState::Running).await;
    let http = reqwest::Client::new();
    let url = format!("{}/runs/{}/messages", server.url, run.0);
    let (cookie, _) = server.session_cookie(&server.operator).await;
    // A cross-site form post carries the cookie but cannot add the header.
    let r = http
        .post(&url)
        .header("cookie", &cookie)
        .json(&json!({"message": "from a forged form"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "cookie without CSRF header must be refused"
    );
    assert!(
        error_body(&r.text().await.expect("body"))
            .message
            .contains(CSRF_HEADER)
    );
    assert!(
        server.control.calls().is_empty(),
        "nothing should reach the control"
    );
    let r = http
        .post(&url)
        .header("cookie", &cookie)
        .header(CSRF_HEADER, "1")
        .json(&json!({"message": "from the dashboard"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // Reads by cookie need no header.
    let r = http
        .get(format!("{}/runs/{}", server.url, run.0))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn steering_approvals_and_cancel_reach_the_run_control() {
    let server = Server::start().await;
    let op = server.client(&server.operator);
    let run = server.run_in(5, RunState::AwaitingApproval).await;
    server
        .store
        .hold_effect(run, "e1", json!({"comment": "hello"}))
        .await
        .expect("hold");
    server
        .store
        .hold_effect(run, "e2", json!({"labels": ["bug"]}))
        .await
        .expect("hold");

    op.steer(run.0, "use the smaller fix").await.expect("steer");
    let pending = op.approvals(run.0).await.expect("approvals");
    assert_eq!(
        pending
            .iter()
            .map(|a| a.effect_id.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    op.decide(run.0, "e1", true, Some("looks right"))
        .await
        .expect("approve");
    op.decide(run.0, "e2", false, None).await.expect("deny");
    let again = op.decide(run.0, "e1", false, None).await;
    assert!(
        matches!(&again, Err(ClientError::Api { status, message, .. }) if *status == StatusCode::CONFLICT && message.contains("already approved")),
        "a second decision should be a 409 naming the first, got {again:?}"
    );
    let missing = op.decide(run.0, "nope", true, None).await;
    assert!(
        matches!(&missing, Err(ClientError::Api { status, .. }) if *status == StatusCode::NOT_FOUND),
        "an unknown effect should be 404, got {missing:?}"
    );
    op.cancel(run.0).await.expect("cancel");
    let after = op.steer(run.0, "too late").await;
    assert!(
        matches!(&after, Err(ClientError::Api { status, message, .. }) if *status == StatusCode::CONFLICT && message.contains("cancelled")),
        "steering a cancelled run should be 409, got {after:?}"
    );

    let calls = server.control.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[0], Call::Steer(run.0, "use the smaller fix".into()));
    match &calls[1] {
        Call::Decide(r, e, d) => {
            assert_eq!((*r, e.as_str(), d.approve), (run.0, "e1", true));
            assert_eq!(d.by, "otto-operator", "the decision should name the token");
            assert_eq!(d.reason.as_deref(), Some("looks right"));
        }
        other => panic!("expected the approval, got {other:?}"),
    }
    assert!(matches!(&calls[2], Call::Decide(_, e, d) if e == "e2" && !d.approve));
    assert_eq!(calls[3], Call::Cancel(run.0, "otto-operator".into()));
    assert_eq!(
        server.store.get_run(run).await.expect("run").state,
        RunState::Cancelled
    );
}

#[tokio::test]
async fn bad_ids_and_bodies_get_precise_errors() {
    let server = Server::start().await;
    let run = server.run_in(6, RunState::Running).await;
    let r = run.0;
    let cases: Vec<(Method, String, Option<&str>, StatusCode, &str)> = vec![
        (
            Method::GET,
            "/runs/abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "run id",
        ),
        (
            Method::GET,
            "/runs/r0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "run id",
        ),
        (
            Method::GET,
            "/runs/99999999999999999999".into(),
            None,
            StatusCode::BAD_REQUEST,
            "run id",
        ),
        (
            Method::GET,
            "/runs/9223372036854775808".into(),
            None,
            StatusCode::BAD_REQUEST,
            "run id",
        ),
        (
            Method::GET,
            "/runs/r999".into(),
            None,
            StatusCode::NOT_FOUND,
            "r999",
        ),
        (
            Method::GET,
            "/runs/r999/events".into(),
            None,
            StatusCode::NOT_FOUND,
            "r999",
        ),
        (
            Method::GET,
            "/runs?limit=0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/runs?limit=abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            Method::GET,
            "/runs?state=sleeping".into(),
            None,
            StatusCode::BAD_REQUEST,
            "sleeping",
        ),
        // Any role name is a filter (runs of a custom role outlive its
        // [[roles]] entry); a word that cannot be a role is an error.
        (
            Method::GET,
            "/runs?role=Boss".into(),
            None,
            StatusCode::BAD_REQUEST,
            "Boss",
        ),
        (
            Method::GET,
            "/runs?repo=nope".into(),
            None,
            StatusCode::BAD_REQUEST,
            "repo",
        ),
        (
            Method::GET,
            "/runs?colour=red".into(),
            None,
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            Method::GET,
            format!("/runs/{r}/events?after=-1"),
            None,
            StatusCode::BAD_REQUEST,
            "after",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            None,
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some("{"),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some("{}"),
            StatusCode::BAD_REQUEST,
            "message",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some(r#"{"message":"  "}"#),
            StatusCode::BAD_REQUEST,
            "empty",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some(r#"{"message":"a","x":1}"#),
            StatusCode::BAD_REQUEST,
            "x",
        ),
        (
            Method::POST,
            format!("/runs/{r}/messages"),
            Some(r#"{"message":5}"#),
            StatusCode::BAD_REQUEST,
            "string",
        ),
        (
            Method::POST,
            format!("/runs/{r}/approvals/a%20b"),
            Some(r#"{"approve":true}"#),
            StatusCode::BAD_REQUEST,
            "effect id",
        ),
        (
            Method::POST,
            format!("/runs/{r}/approvals/e1"),
            Some(r#"{"approve":"yes"}"#),
            StatusCode::BAD_REQUEST,
            "boolean",
        ),
        (
            Method::POST,
            format!("/runs/{r}/approvals/e1"),
            Some(r#"{"approve":true}"#),
            StatusCode::NOT_FOUND,
            "e1",
        ),
        (
            Method::POST,
            "/runs/r999/cancel".into(),
            None,
            StatusCode::NOT_FOUND,
            "r999",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(r#"{"name":"x","scope":"root"}"#),
            StatusCode::BAD_REQUEST,
            "root",
        ),
        (
            Method::POST,
            "/tokens".into(),
            Some(r#"{"name":"<b>","scope":"viewer"}"#),
            StatusCode::BAD_REQUEST,
            "token name",
        ),
        (
            Method::DELETE,
            "/tokens/abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "token id",
        ),
        (
            Method::DELETE,
            "/tokens/424242".into(),
            None,
            StatusCode::NOT_FOUND,
            "424242",
        ),
        (
            Method::PUT,
            "/runs".into(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "PUT",
        ),
        (
            Method::GET,
            "/nowhere".into(),
            None,
            StatusCode::NOT_FOUND,
            "/nowhere",
        ),
    ];
    let http = reqwest::Client::new();
    for (method, path, body, want, mention) in cases {
        let mut rb = http
            .request(method.clone(), format!("{}{path}", server.url))
            .bearer_auth(&server.admin);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = rb.send().await.expect("answer");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(
            status, want,
            "{method} {path} {body:?} should be {want}, got {status}: {text}"
        );
        let e = error_body(&text);
        assert!(
            e.message.contains(mention),
            "{method} {path}: the message should mention {mention:?}, got {:?}",
            e.message
        );
    }
    // An oversized body is refused before it is parsed.
    let big = json!({ "message": "x".repeat(kiln::api::MAX_BODY_BYTES + 1) });
    let (status, text) = call(
        &server,
        Method::POST,
        &format!("/runs/{r}/messages"),
        Some(&server.operator),
        Some(big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    error_body(&text);
    // A Last-Event-ID that is not a seq.
    let resp = http
        .get(format!("{}/runs/{r}/events", server.url))
        .bearer_auth(&server.viewer)
        .header("accept", "text/event-stream")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_body(&resp.text().await.expect("body"))
            .message
            .contains("Last-Event-ID")
    );
    assert!(
        server.control.calls().is_empty(),
        "no bad request should reach the control"
    );
}

#[tokio::test]
async fn served_events_are_redacted_everywhere() {
    let server = Server::start().await;
    let run = server.run_in(7, RunState::Running).await;
    server
        .event(
            run,
            EventKind::Proposal {
                effect: format!("e-{GH_TOKEN}"),
            },
            &format!("the model wrote {GH_TOKEN} into a comment"),
        )
        .await;
    server
        .event(run, EventKind::Note, "<script>alert('owned')</script>")
        .await;
    server.finish(run, RunState::Failed).await;
    let client = server.client(&server.viewer);
    let mut served = Vec::new();
    let (page, finished) = client.events_page(run.0, 0).await.expect("json events");
    assert!(finished, "a failed run with every event served is finished");
    served.push(serde_json::to_string(&page).expect("json"));
    let mut feed = client.feed(run.0, None).await.expect("feed");
    let (sse, _) = read(&mut feed, usize::MAX).await;
    assert_eq!(sse.len(), 2);
    served.push(serde_json::to_string(&sse).expect("json"));
    served.push(client.transcript(run.0, "jsonl").await.expect("jsonl"));
    served.push(client.transcript(run.0, "md").await.expect("md"));
    let (_, html) = call(
        &server,
        Method::GET,
        &format!("/ui/runs/{}", run.0),
        Some(&server.viewer),
        None,
    )
    .await;
    served.push(html.clone());
    for (i, text) in served.iter().enumerate() {
        assert!(
            !text.contains(GH_TOKEN),
            "form {i} served the token shape: {text}"
        );
        assert!(
            text.contains("[REDACTED:"),
            "form {i} should show the redaction marker"
        );
    }
    // The dashboard shows event markup as text.
    assert!(
        html.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"),
        "the <script> in an event should be escaped in the page"
    );
    assert!(
        !html.contains("<script>alert"),
        "the event's <script> must not be markup"
    );
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes_exactly() {
    let server = Server::start().await;
    let run = server.run_in(8, RunState::Succeeded).await;
    let (status, text) = call(&server, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&text).expect("openapi json");
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let mut documented = HashSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{id}", &run.0.to_string())
            .replace("{effect}", "e1")
            .replace("{owner}", "local")
            .replace("{name}", "demo");
        for method in &methods {
            let key = method.as_str().to_lowercase();
            let is_doc = ops.get(&key).is_some();
            if is_doc {
                documented.insert((key.clone(), path.clone()));
            }
            let resp = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client")
                .request(method.clone(), format!("{}{concrete}", server.url))
                .bearer_auth(&server.admin)
                .send()
                .await
                .expect("answer");
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if is_doc {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no route for"),
                    "{method} {path} is documented but not routed: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented, so it should not be served"
                );
            }
        }
    }
    assert!(documented.len() >= 19, "{documented:?}");
}

#[tokio::test]
async fn tokens_are_managed_by_admins_and_revocation_bites_at_once() {
    let server = Server::start().await;
    let admin = server.client(&server.admin);
    let (made, plaintext) = admin
        .create_token("ci", kiln::store::TokenScope::Viewer)
        .await
        .expect("create");
    assert!(plaintext.starts_with("kiln_"));
    let listed = admin.tokens().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|t| t.id == made.id && t.revoked_ms.is_none())
    );
    let (_, text) = call(&server, Method::GET, "/tokens", Some(&server.admin), None).await;
    assert!(
        !text.contains("sha256"),
        "token hashes should never be served: {text}"
    );
    let ci = server.client(&plaintext);
    ci.runs("").await.expect("the new token reads");
    admin.revoke_token(made.id).await.expect("revoke");
    let after = ci.runs("").await;
    assert!(
        matches!(&after, Err(ClientError::Api { status, .. }) if *status == StatusCode::UNAUTHORIZED),
        "a revoked token should get 401 at once, got {after:?}"
    );
}

#[tokio::test]
async fn runs_are_listed_with_filters_and_events_paged_as_json() {
    let server = Server::start().await;
    let a = server.run_in(10, RunState::Running).await;
    let b = server.run_in(11, RunState::Succeeded).await;
    let c = server.client(&server.viewer);
    let all = c.runs("").await.expect("runs");
    assert_eq!(
        all.iter().map(|r| r.id).collect::<Vec<_>>(),
        [b, a],
        "newest first"
    );
    let running = c
        .runs("state=running,awaiting-approval")
        .await
        .expect("runs");
    assert_eq!(running.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
    let by_number = c
        .runs("number=11&repo=local/demo&role=implementation")
        .await
        .expect("runs");
    assert_eq!(by_number.iter().map(|r| r.id).collect::<Vec<_>>(), [b]);
    for i in 0..5 {
        server.event(a, EventKind::Progress, &format!("p{i}")).await;
    }
    let (events, finished) = c.events_page(a.0, 2).await.expect("page");
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert!(!finished, "a running run is not finished");
}

#[tokio::test]
async fn cli_watch_steer_approve_and_handback_work_over_the_api() {
    let server = Server::start().await;
    let run = server.run_in(12, RunState::AwaitingApproval).await;
    server
        .store
        .hold_effect(run, "e7", json!({"comment": "ok"}))
        .await
        .expect("hold");
    let kiln = env!("CARGO_BIN_EXE_kiln");
    // Async: the server answers on this test's runtime while the CLI waits.
    let cli = async |args: &[&str], token: &str| {
        let out = tokio::process::Command::new(kiln)
            .args(args)
            .env("KILN_URL", &server.url)
            .env("KILN_TOKEN", token)
            .env_remove("KILN_REPO")
            .output()
            .await
            .expect("kiln runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let id = format!("r{}", run.0);
    let (code, out, err) = cli(&["runs"], &server.viewer).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains(&id) && out.contains("awaiting-approval"),
        "{out}"
    );
    let (code, _, err) = cli(&["steer", &id, "try again"], &server.viewer).await;
    assert_ne!(code, Some(0), "a viewer may not steer");
    assert!(err.contains("403") && err.contains("operator"), "{err}");
    let (code, _, err) = cli(&["steer", &id, "try again"], &server.operator).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = cli(&["approve", &id], &server.operator).await;
    assert_eq!(code, Some(0));
    assert!(
        out.contains("e7"),
        "approve without an effect lists held effects: {out}"
    );
    let (code, _, err) = cli(
        &["approve", &id, "e7", "--reason", "fine"],
        &server.operator,
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    assert!(matches!(
        server.control.calls().last(),
        Some(Call::Decide(_, e, d)) if e == "e7" && d.approve && d.reason.as_deref() == Some("fine")
    ));

    // watch --follow follows live events (one with a terminal escape) past
    // the wait for approval, until the run ends.
    let watcher = {
        let url = server.url.clone();
        let token = server.viewer.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::process::Command::new(kiln)
                .args(["watch", &id, "--follow"])
                .env("KILN_URL", url)
                .env("KILN_TOKEN", token)
                .output()
                .await
                .expect("watch runs")
        })
    };
    server
        .event(run, EventKind::Progress, "tests pass\x1b[2J")
        .await;
    server
        .store
        .transition(run, RunState::AwaitingApproval, RunState::Running, None)
        .await
        .expect("resume");
    server.finish(run, RunState::Succeeded).await;
    let out = watcher.await.expect("watch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "watch of a succeeded run exits 0: {stdout}"
    );
    assert!(stdout.contains("steering: try again"), "{stdout}");
    assert!(
        stdout.contains("tests pass") && !stdout.contains('\x1b'),
        "{stdout:?}"
    );
    assert!(stdout.contains("ended: succeeded"), "{stdout}");

    // handback into a fresh clone of the repository the run worked on.
    let work = server.dir.path().join("origin");
    std::fs::create_dir_all(&work).expect("dir");
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("README"), "hello\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "base"]);
    let clone = server.dir.path().join("clone");
    git(
        server.dir.path(),
        &[
            "clone",
            "-q",
            work.to_str().expect("utf8"),
            clone.to_str().expect("utf8"),
        ],
    );
    git(
        &work,
        &["checkout", "-qb", &format!("kiln/issue-{}", run.0)],
    );
    std::fs::write(work.join("fix.rs"), "fn fixed() {}\n").expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "the run's fix"]);
    let bundle = server.bundles.join(format!("run-{}.bundle", run.0));
    git(
        &work,
        &[
            "bundle",
            "create",
            bundle.to_str().expect("utf8"),
            &format!("kiln/issue-{}", run.0),
            "^main",
        ],
    );
    let out = tokio::process::Command::new(kiln)
        .args(["handback", &id])
        .current_dir(&clone)
        .env("KILN_URL", &server.url)
        .env("KILN_TOKEN", &server.viewer)
        .output()
        .await
        .expect("handback runs");
    assert!(
        out.status.success(),
        "handback: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let subject = git(
        &clone,
        &["log", "-1", "--format=%s", &format!("kiln/run-{}", run.0)],
    );
    assert_eq!(subject, "the run's fix");
    let md = std::fs::read_to_string(clone.join(format!(".kiln/runs/{}.md", run.0)))
        .expect("transcript");
    assert!(
        md.contains("steering: try again") && md.contains("succeeded"),
        "{md}"
    );
}

#[tokio::test]
async fn cli_tokens_work_on_the_local_store_file() {
    let dir = tempfile::tempdir().expect("dir");
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(kiln)
            .args(args)
            .env("KILN_DATA_DIR", dir.path())
            .output()
            .expect("kiln runs");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let plaintext = run(&["token", "create", "laptop", "--scope", "operator"]);
    assert!(plaintext.starts_with("kiln_"), "{plaintext}");
    let list = run(&["token", "list"]);
    assert!(
        list.contains("laptop") && list.contains("operator") && list.contains("live"),
        "{list}"
    );
    assert!(!list.contains(&plaintext), "list must not show the token");
    run(&["token", "revoke", "1"]);
    assert!(run(&["token", "list"]).contains("revoked"));
}

#[tokio::test]
async fn fuzz_the_api_with_schemathesis() {
    let server = Server::start().await;
    // Final runs only: an SSE request on a live run streams until the run
    // ends, which a fuzzer would see as a timeout.
    let run = server.run_in(30, RunState::Succeeded).await;
    server.event(run, EventKind::Started, "started").await;
    server.event(run, EventKind::Finished, "done").await;
    server.run_in(31, RunState::Failed).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/fuzz-api.sh");
    let out = tokio::process::Command::new(script)
        .args([&server.url, &server.admin])
        .output()
        .await
        .expect("fuzz-api.sh runs");
    // Keep schemathesis' summary in the test's output (shown with --nocapture).
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "schemathesis found a failure:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn extra_routes_are_mounted_beside_the_api() {
    use tower::ServiceExt as _;
    let server = Server::start().await;
    let redactor = std::sync::Arc::new(kiln::policy::Redactor::new(&[]).expect("redactor"));
    let intake = axum::Router::new().route("/", axum::routing::post(|| async { "accepted" }));
    let state = kiln::api::ApiState::new(server.store.clone(), server.control.clone(), redactor)
        .with_extra(axum::Router::new().nest("/webhooks/github", intake));
    let app = kiln::api::router(state);
    let request = |method: &str, path: &str| {
        axum::http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let r = app
        .clone()
        .oneshot(request("POST", "/webhooks/github"))
        .await
        .expect("answer");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the mounted route should answer"
    );
    let r = app
        .oneshot(request("GET", "/webhooks/elsewhere"))
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    error_body(&String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn resume_and_attach_refuse_what_they_cannot_do_and_say_why() {
    let server = Server::start().await;
    let live = server.run_in(21, RunState::Running).await;
    let done = server.run_in(22, RunState::Failed).await;
    let op = Some(server.operator.as_str());

    let (status, text) = call(
        &server,
        Method::POST,
        &format!("/runs/{}/resume", live.0),
        op,
        Some(json!({"note": "go on"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(
        error_body(&text).message.contains("only a finished run"),
        "{text}"
    );

    let (status, text) = call(
        &server,
        Method::POST,
        &format!("/runs/{}/resume", done.0),
        op,
        Some(json!({"note": "go on", "bundle": "***"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(error_body(&text).message.contains("not base64"), "{text}");

    let (status, text) = call(
        &server,
        Method::POST,
        &format!("/runs/{}/resume", done.0),
        op,
        Some(json!({"note": "try the other parser", "extra": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(error_body(&text).message.contains("extra"), "{text}");

    let (status, text) = call(
        &server,
        Method::POST,
        &format!("/runs/{}/resume", done.0),
        op,
        Some(json!({"note": "try the other parser"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert!(
        server.control.calls().iter().any(|c| matches!(
            c,
            Call::Resume(id, _, Some(note), None) if *id == done.0 && note == "try the other parser"
        )),
        "the resume reached the control: {:?}",
        server.control.calls()
    );
    let run = server.store.get_run(done).await.expect("run");
    assert_eq!(run.state, RunState::Queued);

    // Attach is a WebSocket; a plain GET, or half a terminal size, is refused.
    let (status, text) = call(
        &server,
        Method::GET,
        &format!("/runs/{}/attach", live.0),
        op,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(error_body(&text).message.contains("WebSocket"), "{text}");
    let (status, text) = call(
        &server,
        Method::GET,
        &format!("/runs/{}/attach?cols=80", live.0),
        op,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(
        error_body(&text).message.contains("cols and rows"),
        "{text}"
    );
}

#[tokio::test]
async fn a_shell_is_never_opened_by_the_dashboard_cookie() {
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
    let server = Server::start().await;
    let run = server.run_in(23, RunState::Running).await;
    // What a page on another port of this host could do: the browser sends
    // the (same-site) cookie with a WebSocket handshake, and a GET needs no
    // CSRF header.
    let url = format!(
        "{}/runs/{}/attach",
        server.url.replacen("http://", "ws://", 1),
        run.0
    );
    let mut request = url.into_client_request().expect("request");
    let (cookie, _) = server.session_cookie(&server.operator).await;
    request
        .headers_mut()
        .insert("cookie", cookie.parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(error_body(&body).message.contains("Bearer"), "{body}");
        }
        other => panic!("the handshake must be refused, got {other:?}"),
    }
    assert!(
        !server
            .control
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Attach(..))),
        "nothing reached the control"
    );
}

// The dashboard's cookie is a session id: never a token, HttpOnly,
// SameSite=Strict, expiring; its login link works once; revoking the token
// ends the session; a session cannot mint more sessions.
#[tokio::test]
async fn the_dashboard_cookie_is_an_opaque_session_from_a_one_time_link() {
    let server = Server::start().await;
    let run = server.run_in(5, RunState::Running).await;
    let tokens = [&server.viewer, &server.operator, &server.admin];
    let page = format!("/ui/runs/{}", run.0);
    let (link, ttl) = server
        .client(&server.viewer)
        .login_link(Some(&page))
        .await
        .expect("a login link");
    assert!(ttl > 0, "the link expires");
    assert!(tokens.iter().all(|t| !link.contains(t.as_str())), "{link}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    let r = http.get(&link).send().await.expect("open the link");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(page.as_str()),
        "the link leads to the run's page"
    );
    let set: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(set.len(), 1, "{set:?}");
    let cookie = &set[0];
    for t in tokens {
        assert!(
            !cookie.contains(t.as_str()),
            "no token in the cookie: {cookie}"
        );
    }
    assert!(cookie.starts_with(&format!("{COOKIE}=ks_")), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    let pair = cookie.split(';').next().unwrap_or_default().to_owned();
    let r = http
        .get(format!("{}/runs/{}", server.url, run.0))
        .header("cookie", &pair)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::OK, "the session reads");

    // Used once: the second time it is refused and sets nothing.
    let r = http.get(&link).send().await.expect("open again");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    assert!(r.text().await.unwrap_or_default().contains("already used"));

    // The login form starts a session too, never storing the token.
    let r = http
        .post(format!("{}/ui/login", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.operator))
        .send()
        .await
        .expect("log in");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let form_cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        form_cookie.starts_with(&format!("{COOKIE}=ks_"))
            && !form_cookie.contains(server.operator.as_str()),
        "{form_cookie}"
    );

    // A session cannot make login links.
    let r = http
        .post(format!("{}/ui/login-links", server.url))
        .header("cookie", &pair)
        .header(CSRF_HEADER, "1")
        .json(&json!({}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Revoking the token ends its sessions at once.
    let admin = server.client(&server.admin);
    let viewer = admin
        .tokens()
        .await
        .expect("tokens")
        .into_iter()
        .find(|t| t.name == "vera-viewer")
        .expect("the viewer token");
    admin.revoke_token(viewer.id).await.expect("revoke");
    let r = http
        .get(format!("{}/runs/{}", server.url, run.0))
        .header("cookie", &pair)
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "revoked with the token"
    );
}
