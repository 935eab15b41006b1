//! The board pages: `/ui/board` (the repositories with a board) and
//! `/ui/board/{owner}/{name}` (each open issue as a card in the column of
//! its stage, moved live: the page follows
//! `/repos/{owner}/{name}/board/events` and redraws the columns from each
//! board it receives).
//!
//! The dashboard's rules hold: issue titles, labels and run reasons are
//! untrusted, so the server escapes every piece it writes and the script
//! only sets `textContent` (and `href` to run pages it builds from numbers,
//! or to `http(s)` pull request URLs); the page's CSP runs only its own
//! script (per-response nonce); the dashboard cookie authenticates.
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;

use super::ApiState;
use super::board::{self, Board, Card, PrBrief, RunBrief};
use super::dashboard::{caller, error_page, escape, nav, page};
use crate::board::{PrKind, Stage};

/// The board pages' routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui/board", get(boards_page))
        .route("/ui/board/{owner}/{name}", get(board_page))
}

async fn boards_page(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let repos = match board::list_for_page(&state).await {
        Ok(r) => r,
        Err(e) => return error_page(e),
    };
    let items: String = repos
        .iter()
        .map(|r| {
            format!(
                "<li data-repo=\"{name}\"><a href=\"/ui/board/{name}\">{name}</a></li>",
                name = escape(&r.to_string())
            )
        })
        .collect();
    let list = if items.is_empty() {
        "<p id=\"none\">No repositories yet: create one on the local forge with \
         <code>kiln repo create local/NAME --from DIR</code>.</p>"
            .to_owned()
    } else {
        format!("<ul id=\"repos\">{items}</ul>")
    };
    page(
        "Boards",
        &format!("<body><h1>Boards</h1>{}{list}</body>", nav(&caller)),
        None,
    )
}

fn run_text(r: &RunBrief) -> String {
    format!("r{} {} {}", r.id, r.role, r.state.as_str())
}

fn run_link(r: &RunBrief) -> String {
    let title = r
        .reason
        .as_deref()
        .map(|why| format!(" title=\"{}\"", escape(why)))
        .unwrap_or_default();
    format!(
        "<a class=\"run run-{state}\" href=\"/ui/runs/{id}\"{title}>{text}</a>",
        state = r.state.as_str(),
        id = r.id,
        text = escape(&run_text(r)),
    )
}

fn pr_text(p: &PrBrief) -> String {
    let kind = match p.kind {
        PrKind::Spec => "spec",
        PrKind::Implementation => "implementation",
    };
    let mut text = format!("#{} {kind}", p.number);
    if p.draft {
        text.push_str(" · draft");
    }
    if let Some(v) = p.verification {
        text.push_str(&format!(" · {}: {v}", crate::board::VERIFICATION_CONTEXT));
    }
    text
}

/// Only web URLs become links: a forge's URL is data, and a `javascript:`
/// one must never be clickable.
fn web_url(url: Option<&str>) -> Option<&str> {
    url.filter(|u| u.starts_with("https://") || u.starts_with("http://"))
}

fn pr_item(p: &PrBrief) -> String {
    let title = escape(&format!("{} ({})", p.title, p.head));
    let text = escape(&pr_text(p));
    match web_url(p.url.as_deref()) {
        Some(url) => format!(
            "<a class=\"pr\" href=\"{}\" title=\"{title}\" rel=\"noreferrer\">{text}</a>",
            escape(url)
        ),
        None => format!("<span class=\"pr\" title=\"{title}\">{text}</span>"),
    }
}

fn card(c: &Card) -> String {
    let labels: String = c
        .labels
        .iter()
        .map(|l| format!("<span class=\"label\">{}</span>", escape(l)))
        .collect();
    let live = c
        .active_run
        .as_ref()
        .map(|r| format!("<div class=\"live\">live: {}</div>", run_link(r)))
        .unwrap_or_default();
    let prs = if c.pull_requests.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = c.pull_requests.iter().map(pr_item).collect();
        format!(
            "<div class=\"prs\">pull requests: {}</div>",
            items.join(" ")
        )
    };
    let runs = if c.runs.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = c.runs.iter().map(run_link).collect();
        format!("<div class=\"runs\">runs: {}</div>", items.join(" "))
    };
    format!(
        "<li class=\"card\" data-issue=\"{n}\" data-stage=\"{stage}\">\
         <div class=\"card-title\"><span class=\"num\">#{n}</span> <span class=\"title\">{title}</span></div>\
         <div class=\"labels\">{labels}</div><div class=\"why\">{why}</div>{live}{prs}{runs}</li>",
        n = c.number,
        stage = c.stage.as_str(),
        title = escape(&c.title),
        why = escape(&c.why),
    )
}

fn columns(board: &Board) -> String {
    Stage::ALL
        .into_iter()
        .map(|stage| {
            let cards: Vec<&Card> = board.issues.iter().filter(|c| c.stage == stage).collect();
            let items: String = cards.iter().map(|c| card(c)).collect();
            format!(
                "<section class=\"col\" data-stage=\"{id}\"><h2>{title} <span class=\"count\">{n}</span></h2>\
                 <ul class=\"cards\">{items}</ul></section>",
                id = stage.as_str(),
                title = escape(stage.title()),
                n = cards.len(),
            )
        })
        .collect()
}

const BOARD_SCRIPT: &str = r#"
const REPO = document.body.dataset.repo;
const statusLine = document.getElementById('status');
function say(text) { statusLine.textContent = text; }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function runLink(r) {
  const a = el('a', 'run run-' + String(r.state).replace(/[^a-z-]/g, ''),
               'r' + r.id + ' ' + r.role + ' ' + r.state);
  a.href = '/ui/runs/' + encodeURIComponent(String(r.id));
  if (r.reason) a.title = String(r.reason);
  return a;
}
function prItem(p) {
  let text = '#' + p.number + ' ' + p.kind;
  if (p.draft) text += ' · draft';
  if (p.verification) text += ' · kiln/verification: ' + p.verification;
  const url = typeof p.url === 'string' && /^https?:\/\//.test(p.url) ? p.url : null;
  const e = el(url ? 'a' : 'span', 'pr', text);
  if (url) { e.href = url; e.rel = 'noreferrer'; }
  e.title = p.title + ' (' + p.head + ')';
  return e;
}
function line(cls, prefix, items) {
  const d = el('div', cls, prefix);
  items.forEach((item, i) => { if (i) d.appendChild(document.createTextNode(' ')); d.appendChild(item); });
  return d;
}
function card(c) {
  const li = el('li', 'card');
  li.dataset.issue = String(c.number);
  li.dataset.stage = String(c.stage);
  const head = el('div', 'card-title');
  head.appendChild(el('span', 'num', '#' + c.number));
  head.appendChild(document.createTextNode(' '));
  head.appendChild(el('span', 'title', String(c.title)));
  li.appendChild(head);
  const labels = el('div', 'labels');
  for (const l of c.labels) labels.appendChild(el('span', 'label', String(l)));
  li.appendChild(labels);
  li.appendChild(el('div', 'why', String(c.why)));
  if (c.active_run) li.appendChild(line('live', 'live: ', [runLink(c.active_run)]));
  if (c.pull_requests.length) li.appendChild(line('prs', 'pull requests: ', c.pull_requests.map(prItem)));
  if (c.runs.length) li.appendChild(line('runs', 'runs: ', c.runs.map(runLink)));
  return li;
}
function render(board) {
  for (const col of document.querySelectorAll('section.col')) {
    const cards = board.issues.filter(c => c.stage === col.dataset.stage).map(card);
    col.querySelector('ul.cards').replaceChildren(...cards);
    col.querySelector('.count').textContent = String(cards.length);
  }
  document.body.dataset.version = String(Number(document.body.dataset.version || '0') + 1);
}
const path = REPO.split('/').map(encodeURIComponent).join('/');
const source = new EventSource('/repos/' + path + '/board/events');
source.addEventListener('board', (m) => { render(JSON.parse(m.data)); say(''); });
source.addEventListener('stream-error', (m) => { say('board: ' + JSON.parse(m.data).message); });
source.onopen = () => { document.body.dataset.live = 'true'; };
source.onerror = () => { say('connection lost; reconnecting'); };
"#;

async fn board_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let loaded = async {
        let repo = board::page_repo(&state, &owner, &name).await?;
        board::served(&state, &repo).await
    };
    let board = match loaded.await {
        Ok(b) => b,
        Err(e) => return error_page(e),
    };
    let repo = escape(&board.repo);
    let body = format!(
        "<body class=\"wide\" data-repo=\"{repo}\" data-version=\"0\"><h1>Board: {repo}</h1>{nav}\
         <p><a href=\"/ui/board\">All boards</a> <span id=\"status\" role=\"status\"></span></p>\
         <div id=\"board\" class=\"board\">{cols}</div></body>",
        nav = nav(&caller),
        cols = columns(&board),
    );
    page(&format!("Board {}", board.repo), &body, Some(BOARD_SCRIPT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunState;

    #[test]
    fn untrusted_card_text_is_escaped_and_only_web_urls_link() {
        let c = Card {
            number: 7,
            title: "<script>alert(1)</script>".into(),
            author: "mallory".into(),
            labels: vec!["<b>x</b>".into()],
            stage: Stage::InReview,
            why: "a & b".into(),
            active_run: None,
            runs: vec![RunBrief {
                id: 3,
                role: "review".into(),
                state: RunState::Blocked,
                number: 8,
                reason: Some("\"><img src=x>".into()),
            }],
            pull_requests: vec![PrBrief {
                number: 8,
                kind: PrKind::Implementation,
                title: "<i>fix</i>".into(),
                draft: true,
                head: "kiln/implement-issue-7".into(),
                verification: None,
                url: Some("javascript:alert(1)".into()),
            }],
        };
        let html = card(&c);
        for raw in ["<script>", "<b>", "<img", "<i>", "javascript:"] {
            assert!(!html.contains(raw), "{raw} leaked: {html}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("href=\"javascript:"), "{html}");
        assert!(html.contains("href=\"/ui/runs/3\""), "{html}");
    }
}
