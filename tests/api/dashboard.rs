//! The dashboard in a real headless Chromium (Debian's `chromium`, installed
//! by `scripts/setup-browser.sh`), driven over the DevTools protocol: log in
//! through the form, open a live run, see an event appended after load
//! appear (as text, not markup), click Approve on a held effect and see the
//! decision reach the run control; open a repository's board, see a
//! hostile issue title as text, and see its card move between columns as
//! its labels and runs change, without a reload.
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use kiln::config::Role;
use kiln::forge::{Forge as _, NewIssue, RepoRef};
use kiln::session::EventKind;
use kiln::store::{RunState, RunStore as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::api::{Call, Server};

/// Only a guard against a hung browser; no assertion depends on timing.
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs chromium when missing (scripts/setup-browser.sh).
fn ensure_chromium() {
    let setup = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/setup-browser.sh");
    let status = Command::new(setup).status().expect("setup-browser.sh runs");
    assert!(
        status.success(),
        "scripts/setup-browser.sh should install chromium"
    );
}

fn launch() -> Browser {
    ensure_chromium();
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("chromium should print its DevTools address")
            .expect("stderr line");
        if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
            break rest
                .split('/')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .expect("port");
        }
    };
    // Keep draining stderr so chromium never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Browser {
        child,
        _profile: profile,
        port,
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Page {
    ws: Ws,
    next_id: u64,
}

impl Page {
    async fn open(browser: &Browser) -> Page {
        let target: Value = reqwest::Client::new()
            .put(format!(
                "http://127.0.0.1:{}/json/new?about:blank",
                browser.port
            ))
            .send()
            .await
            .expect("new target")
            .json()
            .await
            .expect("target json");
        let url = target["webSocketDebuggerUrl"].as_str().expect("ws url");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("devtools ws");
        Page { ws, next_id: 0 }
    }

    /// One DevTools command; events arriving meanwhile are skipped.
    async fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).await.expect("send");
        loop {
            let frame = self.ws.next().await.expect("devtools open").expect("frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("devtools json");
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "page script failed: {expression}: {r}"
        );
        r["result"]["value"].clone()
    }

    /// Re-evaluates `expression` until it is true. While a navigation is
    /// under way the document may have no body yet: an expression that
    /// throws then counts as "not yet", not as a failure.
    async fn until(&mut self, what: &str, expression: &str) {
        let guarded = format!(
            "(() => {{ try {{ return ({expression}) === true; }} catch (e) {{ return false; }} }})()"
        );
        let check = async {
            loop {
                if self.eval(&guarded).await == json!(true) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(HANG_GUARD, check).await.is_err() {
            panic!("the page never showed {what} ({expression})");
        }
    }

    async fn goto(&mut self, url: &str) {
        self.send("Page.navigate", json!({ "url": url })).await;
    }
}

#[tokio::test]
async fn dashboard_shows_live_events_as_text_and_approves_in_a_real_browser() {
    let server = Server::start().await;
    let run = server.run_in(20, RunState::AwaitingApproval).await;
    server.event(run, EventKind::Started, "run started").await;
    server
        .store
        .hold_effect(run, "e9", json!({ "comment": "<b>hi</b>" }))
        .await
        .expect("hold");
    server
        .event(
            run,
            EventKind::Proposal {
                effect: "e9".into(),
            },
            "held: comment",
        )
        .await;

    let browser = launch();
    let mut page = Page::open(&browser).await;
    page.send("Runtime.enable", json!({})).await;

    // Log in through the form; the token goes into an HttpOnly cookie.
    page.goto(&format!("{}/ui/login", server.url)).await;
    page.until(
        "the login form",
        "!!document.querySelector('input[name=token]')",
    )
    .await;
    page.eval(&format!(
        "document.querySelector('input[name=token]').value = {}; document.querySelector('form').submit(); true",
        json!(server.operator)
    ))
    .await;
    page.until(
        "the runs list with the run",
        &format!(
            "location.pathname === '/ui/runs' && !!document.querySelector('tr[data-run=\"{}\"]')",
            run.0
        ),
    )
    .await;
    assert_eq!(
        page.eval("document.cookie").await,
        json!(""),
        "the token cookie should be HttpOnly (invisible to scripts)"
    );

    page.goto(&format!("{}/ui/runs/{}", server.url, run.0))
        .await;
    page.until(
        "the live stream open",
        "document.body && document.body.dataset.live === 'true'",
    )
    .await;
    let before = page
        .eval("document.querySelectorAll('#events li').length")
        .await;
    assert_eq!(before, json!(2), "the page should render the run's events");

    // Appended after load, with markup that must stay text.
    let hostile =
        "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";
    server.event(run, EventKind::Note, hostile).await;
    page.until(
        "the appended event",
        "document.querySelectorAll('#events li').length === 3",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#events li:last-child pre.msg').textContent")
            .await,
        json!(hostile),
        "the event should be shown as its text"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#events img, #events script').length + (document.title === 'pwned' ? 100 : 0)").await,
        json!(0),
        "the event's markup must not become elements or run"
    );

    // Approve the held effect with a reason.
    page.eval(
        "const li = document.querySelector('li[data-effect=\"e9\"]'); \
         li.querySelector('input.reason').value = 'ship it'; \
         li.querySelector('button.approve').click(); true",
    )
    .await;
    let calls = tokio::time::timeout(HANG_GUARD, server.control.wait_for_calls(1))
        .await
        .expect("the approval should reach the run control");
    match &calls[0] {
        Call::Decide(r, effect, d) => {
            assert_eq!((*r, effect.as_str()), (run.0, "e9"));
            assert!(d.approve, "the Approve button should approve");
            assert_eq!(d.by, "otto-operator");
            assert_eq!(d.reason.as_deref(), Some("ship it"));
        }
        other => panic!("expected a decision, got {other:?}"),
    }
    page.until(
        "the decision confirmed and the effect gone from the held list",
        "document.getElementById('status').textContent === 'approved e9' && \
         !document.querySelector('li[data-effect=\"e9\"]')",
    )
    .await;

    // The run ends: the page shows the final state and closes its stream.
    server
        .store
        .transition(run, RunState::AwaitingApproval, RunState::Running, None)
        .await
        .expect("resume");
    server.finish(run, RunState::Succeeded).await;
    page.until(
        "the final state",
        "document.body.dataset.ended === 'true' && document.getElementById('state').textContent === 'succeeded'",
    )
    .await;
    // A finished run offers nothing to cancel or steer, and nothing is held.
    page.until(
        "the controls gone and the held-effects section hidden",
        "!document.getElementById('cancel') && !document.getElementById('steer') && \
         document.getElementById('held').hidden",
    )
    .await;
}

/// Logs `page` in through the form with `token`; ends on the runs list.
async fn log_in(page: &mut Page, server: &Server, token: &str) {
    page.goto(&format!("{}/ui/login", server.url)).await;
    page.until(
        "the login form",
        "!!document.querySelector('input[name=token]')",
    )
    .await;
    page.eval(&format!(
        "document.querySelector('input[name=token]').value = {}; document.querySelector('form').submit(); true",
        json!(token)
    ))
    .await;
    page.until("the runs list", "location.pathname === '/ui/runs'")
        .await;
}

/// The selector of issue `n`'s card in the column of `stage`.
fn card_in(stage: &str, n: u64) -> String {
    format!("section.col[data-stage=\"{stage}\"] li.card[data-issue=\"{n}\"]")
}

#[tokio::test]
async fn the_board_moves_cards_live_and_shows_titles_as_text_in_a_real_browser() {
    let server = Server::start().await;
    let forge = server.local_repo("board-ui").await;
    let repo = RepoRef::parse("local/board-ui").expect("repo");
    let hostile = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>Export";
    let n = forge
        .create_issue(NewIssue {
            title: hostile.into(),
            body: "steps".into(),
            labels: vec!["bug".into()],
        })
        .await
        .expect("issue");

    let browser = launch();
    let mut page = Page::open(&browser).await;
    page.send("Runtime.enable", json!({})).await;
    log_in(&mut page, &server, &server.viewer).await;

    // From the runs list to the boards list to the board.
    page.until(
        "the Boards link",
        "!!document.querySelector('a[href=\"/ui/board\"]')",
    )
    .await;
    page.eval("document.querySelector('a[href=\"/ui/board\"]').click(); true")
        .await;
    page.until(
        "the board's link",
        "!!document.querySelector('a[href=\"/ui/board/local/board-ui\"]')",
    )
    .await;
    page.eval("document.querySelector('a[href=\"/ui/board/local/board-ui\"]').click(); true")
        .await;
    page.until(
        "the board, live",
        "location.pathname === '/ui/board/local/board-ui' && document.body.dataset.live === 'true'",
    )
    .await;
    let new_card = card_in("new", n);
    page.until(
        "the issue in New",
        &format!("!!document.querySelector({})", json!(new_card)),
    )
    .await;
    let title = format!(
        "document.querySelector({}).querySelector('.title').textContent",
        json!(new_card)
    );
    assert_eq!(
        page.eval(&title).await,
        json!(hostile),
        "the title is shown as its text"
    );
    let harmless = "document.querySelectorAll('#board img, #board script').length + (document.title === 'pwned' ? 100 : 0)";
    assert_eq!(
        page.eval(harmless).await,
        json!(0),
        "the title's markup must not become elements or run"
    );
    // Anything set now survives only if the page is never reloaded.
    page.eval("window.kilnMarker = 'same page'; true").await;

    // A maintainer labels it on the forge: the card moves to Spec.
    forge
        .add_labels(n, &["ready-to-spec".into()])
        .await
        .expect("label");
    let spec_card = card_in("spec", n);
    page.until(
        "the card in Spec",
        &format!(
            "!!document.querySelector({}) && !document.querySelector({})",
            json!(spec_card),
            json!(new_card)
        ),
    )
    .await;
    assert_eq!(
        page.eval(&format!(
            "document.querySelector({}).querySelector('.title').textContent",
            json!(spec_card)
        ))
        .await,
        json!(hostile),
        "a redrawn card keeps the title as text"
    );
    assert_eq!(
        page.eval(harmless).await,
        json!(0),
        "a redrawn card's title stays text"
    );

    // A run: the card shows it live, then moves to Blocked when it blocks.
    let run = server.run_on(&repo, Role::Spec, n, RunState::Running).await;
    page.until(
        "the live run on the card",
        &format!(
            "!!document.querySelector({} + ' .live a[href=\"/ui/runs/{}\"]')",
            json!(spec_card),
            run.0
        ),
    )
    .await;
    server.finish(run, RunState::Blocked).await;
    let blocked_card = card_in("blocked", n);
    page.until(
        "the card in Blocked",
        &format!(
            "!!document.querySelector({}) && document.querySelector('section.col[data-stage=\"blocked\"] .count').textContent === '1'",
            json!(blocked_card)
        ),
    )
    .await;
    assert_eq!(
        page.eval("window.kilnMarker").await,
        json!("same page"),
        "the card moved without a reload"
    );
    assert_eq!(page.eval(harmless).await, json!(0));
}

/// `kiln dashboard RUN --open` with `BROWSER` set to a headless Chromium
/// command: one command, and the browser is logged in on the run's page.
fn open_in_headless_chromium(server: &Server, run: u64, action: &str) -> std::process::Output {
    let profile = tempfile::tempdir().expect("profile dir");
    let browser = format!(
        "chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
         --window-size=1200,900 --user-data-dir={} {action}",
        profile.path().display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["dashboard", &format!("r{run}"), "--open"])
        .env("KILN_URL", &server.url)
        .env("KILN_TOKEN", &server.viewer)
        .env("BROWSER", browser)
        .stdin(Stdio::null())
        .output()
        .expect("kiln dashboard");
    assert!(
        out.status.success(),
        "kiln dashboard --open: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_dashboard_opens_a_run_page_in_headless_chromium_in_one_command() {
    ensure_chromium();
    let server = Server::start().await;
    let run = server.run_in(12, RunState::Running).await;
    server
        .event(run, EventKind::Note, "the agent is reading the issue")
        .await;
    server.finish(run, RunState::Succeeded).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let png = dir.path().join("run.png");

    let out = open_in_headless_chromium(&server, run.0, &format!("--screenshot={}", png.display()));
    let printed = String::from_utf8_lossy(&out.stdout);
    let link = printed
        .lines()
        .find(|l| l.contains("/ui/login/"))
        .unwrap_or_else(|| panic!("kiln dashboard prints the link: {printed}"))
        .trim()
        .to_owned();
    let image = std::fs::read(&png).expect("the screenshot was written");
    assert!(
        image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 1000,
        "a PNG of the page ({} bytes)",
        image.len()
    );
    // The browser used the link: it works only once.
    let again = reqwest::get(&link).await.expect("open the link again");
    assert_eq!(
        again.status().as_u16(),
        401,
        "a second use of the link fails"
    );

    // The same one command with --dump-dom shows what the browser saw: the
    // run's page, logged in, with its transcript and no controls on a
    // finished run and no empty held-effects heading.
    let out = open_in_headless_chromium(&server, run.0, "--dump-dom");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(&format!("Run r{}", run.0))
            && dom.contains("the agent is reading the issue")
            && dom.contains("signed in as <b>vera-viewer</b>"),
        "the run's page, logged in: {dom}"
    );
    assert!(
        !dom.contains("id=\"cancel\"") && !dom.contains("id=\"steer\""),
        "a finished run offers no Cancel or Steer: {dom}"
    );
    assert!(
        dom.contains("<section id=\"held\" hidden=\"\"")
            || dom.contains("<section id=\"held\" hidden>"),
        "no visible Held effects heading when nothing is held: {dom}"
    );
}
