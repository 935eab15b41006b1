//! The dashboard: server-rendered HTML from the same service, no front-end
//! build. Pages: `/ui/login`, `/ui/runs` (live status: the page re-reads
//! `/runs`), `/ui/runs/{id}` (the live transcript over SSE, held effects
//! with approve / deny, cancel, a steering box), and the boards
//! (`/ui/board`, `/ui/board/{owner}/{name}`, in `board_page`).
//!
//! Event text is untrusted (model and plugin output): the server escapes
//! every piece it writes into HTML, and the inline script only ever sets
//! `textContent`. Each page also carries a Content-Security-Policy that
//! runs only the page's own script (a per-response nonce), so markup that
//! slipped through could still not execute.
//!
//! Logging in: `kiln dashboard` asks `POST /ui/login-links` (bearer token)
//! for a one-time link `/ui/login/{code}`; opening it (or posting a token
//! to the login form) starts a session. The `HttpOnly`, `SameSite=Strict`,
//! expiring cookie holds the session id, never the token (see
//! [`super::session`]); the page's `fetch` calls carry the CSRF header that
//! cookie-authenticated actions need (see [`super::auth`]).
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::ApiState;
use super::auth::{self, COOKIE, Caller};
use super::error::ApiError;
use super::events::{all_events, redact_json};
use super::params;
use crate::store::{Approval, Run, RunFilter, StoredEvent};

/// The dashboard's routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/login/{code}", get(login_link))
        .route("/ui/login-links", post(create_login_link))
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .merge(super::board_page::routes())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5rem;max-width:70rem;color:#222}\
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left}\
.state{font-weight:600}.ev{border-left:3px solid #bbb;margin:.4rem 0;padding:.2rem .6rem;list-style:none}\
.ev .seq{color:#888;margin-right:.5rem}.ev .type{font-weight:600;margin-right:.5rem}.ev .extra{color:#555}\
.ev pre{white-space:pre-wrap;margin:.2rem 0;font-size:.9rem}.ev-denied,.ev-panic,.ev-warning{border-color:#c33}\
.ev-proposal{border-color:#c90}.ev-model-turn{border-color:#36c}#events{padding:0}\
.approval{border:1px solid #c90;padding:.5rem;margin:.5rem 0;list-style:none}#approvals{padding:0}\
button{margin-right:.4rem}#status{color:#555;min-height:1.2rem}textarea{width:100%}\
.wide{max-width:none}.board{display:flex;gap:.5rem;overflow-x:auto;align-items:flex-start}\
.col{flex:1 0 11rem;max-width:18rem;background:#f4f4f4;border-radius:4px;padding:.3rem}.col h2{font-size:1rem;margin:.3rem}\
.col .count{color:#777;font-weight:400}.cards{list-style:none;padding:0;margin:0}\
.card{background:#fff;border:1px solid #ddd;border-radius:4px;margin:.4rem 0;padding:.4rem;font-size:.9rem}\
.card .num{color:#777}.card .title{font-weight:600;overflow-wrap:anywhere}.card .why{color:#555;font-size:.8rem}\
.label{display:inline-block;background:#e4e8f0;border-radius:3px;padding:0 .3rem;margin:.1rem .2rem .1rem 0;font-size:.8rem}\
.card .live{color:#36c}.card .runs,.card .prs{font-size:.8rem}.card .run,.card .pr{display:inline-block;white-space:nowrap}.run-blocked,.run-failed{color:#c33}";

/// A full page with a per-response script nonce in its CSP.
pub(super) fn page(title: &str, body: &str, script: Option<&str>) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let script = script
        .map(|s| format!("<script nonce=\"{nonce}\">{s}</script>"))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{} — Kiln</title>\
         <style>{STYLE}</style></head>{body}{script}</html>",
        escape(title)
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
         connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn with_status(status: StatusCode, mut response: Response) -> Response {
    *response.status_mut() = status;
    response
}

/// An error as a page with the error's status.
pub(super) fn error_page(e: ApiError) -> Response {
    let status = e.status();
    let message = match &e {
        ApiError::Internal(_) => "internal error".to_owned(),
        other => other.to_string(),
    };
    if let ApiError::Internal(detail) = &e {
        tracing::error!(error = %detail, "dashboard request failed");
    }
    with_status(
        status,
        page(
            "Error",
            &format!(
                "<body><h1>{}</h1><p id=\"error\">{}</p><p><a href=\"/ui/runs\">Runs</a></p></body>",
                status.as_u16(),
                escape(&message)
            ),
            None,
        ),
    )
}

/// The caller, or the response to give instead (the login form when there
/// is no live token).
pub(super) async fn caller(state: &ApiState, headers: &HeaderMap) -> Result<Caller, Response> {
    match auth::authenticate(state, &Method::GET, headers).await {
        Ok(c) => Ok(c),
        Err(ApiError::Unauthorized(_)) => Err(Redirect::to("/ui/login").into_response()),
        Err(e) => Err(error_page(e)),
    }
}

fn login_page(error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p id=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        "Log in",
        &format!(
            "<body><h1>Kiln</h1>{error}<form method=\"post\" action=\"/ui/login\">\
             <label>API token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label> \
             <button type=\"submit\">Log in</button></form>\
             <p>Create a token with <code>kiln token create NAME --scope viewer</code>.</p></body>"
        ),
        None,
    )
}

async fn login_form() -> Response {
    login_page(None)
}

async fn login(State(state): State<ApiState>, body: Result<Bytes, BytesRejection>) -> Response {
    let bytes = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::TooLarge("login form too large".into()).into_response();
        }
        Err(e) => return with_status(StatusCode::BAD_REQUEST, login_page(Some(&e.to_string()))),
    };
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned());
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return with_status(
            StatusCode::BAD_REQUEST,
            login_page(Some("the form needs a token field")),
        );
    };
    match auth::lookup(&state, &token, true).await {
        Ok(caller) => {
            let session = state.sessions.start(&caller.token_sha256);
            session_response(&session, "/ui/runs")
        }
        Err(ApiError::Unauthorized(m)) => {
            with_status(StatusCode::UNAUTHORIZED, login_page(Some(&m)))
        }
        Err(e) => error_page(e),
    }
}

/// A redirect to `next` that sets the session cookie: opaque id, not
/// readable by scripts, never sent cross-site, gone when the session is.
fn session_response(session: &str, next: &str) -> Response {
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        super::session::SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to(next).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            r.headers_mut().insert(header::SET_COOKIE, v);
            r
        }
        Err(_) => error_page(ApiError::Internal("session cookie is not a header".into())),
    }
}

/// Body of `POST /ui/login-links`.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoginLinkBody {
    /// The dashboard page the link opens (`/ui/...`); default `/ui/runs`.
    #[serde(default)]
    pub next: Option<String>,
}

/// `POST /ui/login-links`: a one-time link that logs a browser in as the
/// calling token. Bearer only: a session cannot mint more sessions.
async fn create_login_link(
    State(state): State<ApiState>,
    auth::Viewer(caller): auth::Viewer,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    if caller.via_cookie {
        return Err(ApiError::Forbidden(
            "a login link is made with an API token (Authorization: Bearer), not a dashboard session"
                .into(),
        ));
    }
    let LoginLinkBody { next } = match body {
        Ok(b) if b.is_empty() => LoginLinkBody::default(),
        other => params::json_body(other)?,
    };
    let next = next.unwrap_or_else(|| "/ui/runs".into());
    // Only a dashboard page: the link must not redirect anywhere else.
    if !next.starts_with("/ui/")
        || next.contains("//")
        || next.contains('\\')
        || next.chars().any(|c| c.is_control())
    {
        return Err(ApiError::BadRequest(format!(
            "next {next:?} is not a dashboard path (/ui/...)"
        )));
    }
    let code = state.sessions.create_link(&caller.token_sha256, &next);
    tracing::info!(by = %caller.name, "dashboard login link");
    Ok(axum::Json(serde_json::json!({
        "path": format!("/ui/login/{code}"),
        "expires_in": super::session::LINK_TTL.as_secs(),
    })))
}

/// `GET /ui/login/{code}`: use a login link (once) and go where it leads.
async fn login_link(State(state): State<ApiState>, Path(code): Path<String>) -> Response {
    let used = || {
        with_status(
            StatusCode::UNAUTHORIZED,
            login_page(Some(
                "this login link was already used or has expired: run `kiln dashboard` for a new one",
            )),
        )
    };
    let Some((session, token, next)) = state.sessions.redeem(&code) else {
        return used();
    };
    // The token may have been revoked since the link was made.
    match state.store.token_by_hash(&token).await {
        Ok(Some(t)) if t.revoked_ms.is_none() => session_response(&session, &next),
        Ok(_) => {
            state.sessions.end(&session);
            used()
        }
        Err(e) => error_page(e.into()),
    }
}

async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(session) = auth::cookie(&headers, COOKIE) {
        state.sessions.end(session);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("kiln_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// The links every page starts with, and who is signed in.
pub(super) fn nav(caller: &Caller) -> String {
    format!(
        "<p><a href=\"/ui/runs\">Runs</a> · <a href=\"/ui/board\">Boards</a> · signed in as <b>{}</b> ({}) \
         <form method=\"post\" action=\"/ui/logout\" style=\"display:inline\">\
         <button type=\"submit\">Log out</button></form></p>",
        escape(&caller.name),
        caller.scope.as_str()
    )
}

fn run_row(run: &Run) -> String {
    format!(
        "<tr data-run=\"{id}\"><td><a href=\"/ui/runs/{id}\">r{id}</a></td><td>{repo}#{number}</td>\
         <td>{role}</td><td class=\"state\">{state}</td><td>{reason}</td></tr>",
        id = run.id.0,
        repo = escape(&run.repo.to_string()),
        number = run.number,
        role = run.role.as_str(),
        state = run.state.as_str(),
        reason = escape(run.reason.as_deref().unwrap_or("")),
    )
}

const RUNS_SCRIPT: &str = r#"
const tbody = document.getElementById('runs');
function cell(text) { const td = document.createElement('td'); td.textContent = text; return td; }
async function refresh() {
  try {
    const r = await fetch('/runs?limit=200', { credentials: 'same-origin' });
    if (!r.ok) return;
    const body = await r.json();
    const rows = body.runs.map(run => {
      const tr = document.createElement('tr');
      tr.dataset.run = String(run.id);
      const a = document.createElement('a');
      a.href = '/ui/runs/' + encodeURIComponent(String(run.id));
      a.textContent = 'r' + run.id;
      const first = document.createElement('td'); first.appendChild(a); tr.appendChild(first);
      tr.appendChild(cell(run.repo.owner + '/' + run.repo.name + '#' + run.number));
      tr.appendChild(cell(run.role));
      const st = cell(run.state); st.className = 'state'; tr.appendChild(st);
      tr.appendChild(cell(run.reason || ''));
      return tr;
    });
    tbody.replaceChildren(...rows);
  } catch (e) { /* the next refresh tries again */ }
}
setInterval(refresh, 2000);
"#;

async fn runs_page(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let runs = match state
        .store
        .list_runs(RunFilter {
            limit: Some(200),
            ..RunFilter::default()
        })
        .await
    {
        Ok(runs) => runs,
        Err(e) => return error_page(e.into()),
    };
    let runs: Vec<Run> = runs.into_iter().map(|r| redacted_run(&state, r)).collect();
    let rows: String = runs.iter().map(run_row).collect();
    page(
        "Runs",
        &format!(
            "<body><h1>Runs</h1>{}<table><thead><tr><th>run</th><th>issue</th><th>role</th>\
             <th>state</th><th>reason</th></tr></thead><tbody id=\"runs\">{rows}</tbody></table></body>",
            nav(&caller)
        ),
        Some(RUNS_SCRIPT),
    )
}

fn redacted_run(state: &ApiState, run: Run) -> Run {
    let Ok(mut v) = serde_json::to_value(&run) else {
        return run;
    };
    redact_json(&state.redactor, &mut v);
    serde_json::from_value(v).unwrap_or(run)
}

fn event_item(e: &StoredEvent) -> String {
    let kind = e.type_name();
    let class: String = kind
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let extra = e.kind_fields(": ");
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!("<span class=\"extra\">{}</span>", escape(&extra.join(", ")))
    };
    format!(
        "<li class=\"ev ev-{class}\" data-seq=\"{seq}\"><span class=\"seq\">#{seq}</span>\
         <span class=\"type\">{kind}</span>{extra}<pre class=\"msg\">{msg}</pre></li>",
        seq = e.seq,
        kind = escape(kind),
        msg = escape(&e.message),
    )
}

/// A held effect as a person reads it: kind, target and the gate's reason
/// above the proposed text (title and body, comment, labels).
fn approval_text(a: &Approval) -> String {
    use crate::forge::{EffectRecord, EffectState, Proposal};
    let Ok(record) = serde_json::from_value::<EffectRecord>(a.proposal.clone()) else {
        return serde_json::to_string_pretty(&a.proposal).unwrap_or_default();
    };
    let (reason, concerns) = match &record.state {
        EffectState::Held {
            reason, concerns, ..
        } => (reason.as_str(), concerns.as_slice()),
        _ => ("", &[][..]),
    };
    // Each concern (a protected path, a finding) with its files' diff, so
    // the reasons sit next to exactly what would be approved.
    let concerns: String = concerns
        .iter()
        .map(|c| format!("\n\n{}: {}\n{}", c.source, c.reason, c.diff))
        .collect();
    let (what, text) = match &record.proposal {
        Proposal::PullRequest { title, body, .. } => (
            "draft pull request".to_owned(),
            format!("{title}\n\n{body}"),
        ),
        Proposal::PullRequestUpdate {
            number,
            commit_message,
            ..
        } => (
            format!("push to pull request #{number}"),
            commit_message.clone(),
        ),
        Proposal::Comment { number, body } => (format!("comment on #{number}"), body.clone()),
        Proposal::Reply { number, body, .. } => (format!("reply on #{number}"), body.clone()),
        Proposal::Review {
            number, summary, ..
        } => (format!("review of #{number}"), summary.clone()),
        Proposal::Report { number, body, .. } => (format!("report on #{number}"), body.clone()),
        Proposal::Labels {
            number,
            add,
            remove,
        } => (
            format!("labels on #{number}"),
            format!("add {add:?}, remove {remove:?}"),
        ),
        Proposal::Status {
            number,
            context,
            description,
            ..
        } => (
            format!("status {context} on #{number}"),
            description.clone(),
        ),
    };
    format!("{what}: held because {reason}\n\n{text}{concerns}")
}

fn approval_item(a: &Approval) -> String {
    let proposal = approval_text(a);
    format!(
        "<li class=\"approval\" data-effect=\"{id}\"><code>{id}</code><pre class=\"proposal\">{p}</pre>\
         <input class=\"reason\" placeholder=\"reason (optional)\"> \
         <button class=\"approve\" data-approve=\"true\">Approve</button>\
         <button class=\"deny\" data-approve=\"false\">Deny</button></li>",
        id = escape(&a.effect_id),
        p = escape(&proposal),
    )
}

const RUN_SCRIPT: &str = r#"
const RUN = document.body.dataset.run;
let last = Number(document.body.dataset.last);
const events = document.getElementById('events');
const approvals = document.getElementById('approvals');
const statusLine = document.getElementById('status');
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function say(text) { statusLine.textContent = text; }
function setState(state, reason) {
  document.getElementById('state').textContent = state;
  document.getElementById('reason').textContent = reason || '';
}
function renderEvent(ev) {
  const type = String((ev.kind && ev.kind.type) || 'event');
  const li = el('li', 'ev ev-' + type.replace(/[^A-Za-z0-9-]/g, ''));
  li.dataset.seq = String(ev.seq);
  li.appendChild(el('span', 'seq', '#' + ev.seq));
  li.appendChild(el('span', 'type', type));
  const extra = Object.entries(ev.kind || {}).filter(([k]) => k !== 'type')
    .map(([k, v]) => k + ': ' + (typeof v === 'string' ? v : JSON.stringify(v))).join(', ');
  if (extra) li.appendChild(el('span', 'extra', extra));
  li.appendChild(el('pre', 'msg', String(ev.message)));
  events.appendChild(li);
}
function describe(ap) {
  const p = (ap.proposal && ap.proposal.proposal) || {};
  const st = (ap.proposal && ap.proposal.state) || {};
  const n = p.number !== undefined ? ' #' + p.number : '';
  const text = p.kind === 'pull-request' ? (p.title + '\n\n' + p.body)
    : (p.body || p.summary || p.commit_message || p.description || JSON.stringify(p, null, 2));
  return String(p.kind || 'effect') + n + ': held because ' + String(st.reason || '') + '\n\n' + String(text);
}
function renderApprovals(list) {
  document.getElementById('held').hidden = list.length === 0;
  approvals.replaceChildren(...list.map(ap => {
    const li = el('li', 'approval');
    li.dataset.effect = ap.effect_id;
    li.appendChild(el('code', null, ap.effect_id));
    li.appendChild(el('pre', 'proposal', describe(ap)));
    const reason = el('input', 'reason'); reason.placeholder = 'reason (optional)';
    li.appendChild(reason);
    const ok = el('button', 'approve', 'Approve'); ok.dataset.approve = 'true'; li.appendChild(ok);
    const no = el('button', 'deny', 'Deny'); no.dataset.approve = 'false'; li.appendChild(no);
    return li;
  }));
}
let refreshing = null;
async function refresh() {
  try {
    const r = await fetch('/runs/' + RUN, { credentials: 'same-origin' });
    if (r.ok) { const run = await r.json(); setState(run.state, run.reason); }
    const a = await fetch('/runs/' + RUN + '/approvals', { credentials: 'same-origin' });
    if (a.ok) renderApprovals((await a.json()).approvals);
  } catch (e) { say('refresh failed: ' + e); }
}
function scheduleRefresh() {
  if (refreshing) return;
  refreshing = setTimeout(() => { refreshing = null; refresh(); }, 300);
}
async function act(path, body, done) {
  try {
    const r = await fetch(path, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-kiln-csrf': '1' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({}));
    say(r.ok ? done : ('refused (' + r.status + '): ' + (answer.message || '')));
  } catch (e) { say('request failed: ' + e); }
  refresh();
}
approvals.addEventListener('click', (ev) => {
  const button = ev.target.closest('button[data-approve]');
  if (!button) return;
  const li = button.closest('li[data-effect]');
  const effect = li.dataset.effect;
  const approve = button.dataset.approve === 'true';
  const reason = li.querySelector('input.reason').value.trim();
  act('/runs/' + RUN + '/approvals/' + encodeURIComponent(effect),
      { approve, reason: reason || null }, (approve ? 'approved ' : 'denied ') + effect);
});
// A finished run's page has no controls.
const cancelButton = document.getElementById('cancel');
if (cancelButton) cancelButton.addEventListener('click', () => {
  if (confirm('Cancel this run?')) act('/runs/' + RUN + '/cancel', undefined, 'cancelling');
});
const steerForm = document.getElementById('steer');
if (steerForm) steerForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const box = document.getElementById('message');
  const message = box.value;
  if (!message.trim()) return;
  act('/runs/' + RUN + '/messages', { message }, 'message sent');
  box.value = '';
});
const source = new EventSource('/runs/' + RUN + '/events?after=' + last);
source.onmessage = (m) => {
  const ev = JSON.parse(m.data);
  if (ev.seq <= last) return;
  last = ev.seq;
  renderEvent(ev);
  scheduleRefresh();
};
source.addEventListener('end', (m) => {
  const d = JSON.parse(m.data);
  setState(d.state, d.reason);
  source.close();
  const controls = document.getElementById('controls');
  if (controls) controls.remove();
  document.body.dataset.ended = 'true';
  refresh();
});
source.addEventListener('stream-error', (m) => { say('stream: ' + JSON.parse(m.data).message); });
source.onopen = () => { document.body.dataset.live = 'true'; };
"#;

async fn run_page(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let caller = match caller(&state, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let id = match params::run_id(&id) {
        Ok(id) => id,
        Err(e) => return error_page(e),
    };
    let loaded = async {
        let run = state.store.get_run(id).await?;
        let pending = state.store.pending_effects(id).await?;
        let events = all_events(&state, id).await?;
        Ok::<_, ApiError>((run, pending, events))
    };
    let (run, pending, events) = match loaded.await {
        Ok(x) => x,
        Err(e) => return error_page(e),
    };
    let run = redacted_run(&state, run);
    let pending: Vec<Approval> = pending
        .into_iter()
        .map(|a| {
            let mut v = serde_json::to_value(&a).unwrap_or_default();
            redact_json(&state.redactor, &mut v);
            serde_json::from_value(v).unwrap_or(a)
        })
        .collect();
    let last = events.last().map(|e| e.seq).unwrap_or(0);
    let items: String = events.iter().map(event_item).collect();
    let held: String = pending.iter().map(approval_item).collect();
    // A finished run can be neither cancelled nor steered: no controls.
    // The held-effects section shows only while something is held.
    let controls = if run.state.is_terminal() {
        String::new()
    } else {
        "<div id=\"controls\"><p><button id=\"cancel\">Cancel run</button></p>\
         <h2>Steer</h2><form id=\"steer\"><textarea id=\"message\" rows=\"3\" \
         placeholder=\"a message the agent reads before its next model turn\"></textarea>\
         <button type=\"submit\">Send</button></form></div>"
            .to_owned()
    };
    let hidden = if pending.is_empty() { " hidden" } else { "" };
    let body = format!(
        "<body data-run=\"{rid}\" data-last=\"{last}\"><h1>Run r{rid}</h1>{nav}\
         <p>{repo}#{number} · {role} · state <span id=\"state\" class=\"state\">{st}</span> \
         <span id=\"reason\">{reason}</span></p><p id=\"status\" role=\"status\"></p>\
         <section id=\"held\"{hidden}><h2>Held effects: waiting for your decision</h2>\
         <ul id=\"approvals\">{held}</ul></section>{controls}\
         <h2>Transcript</h2><ol id=\"events\">{items}</ol></body>",
        rid = run.id.0,
        nav = nav(&caller),
        repo = escape(&run.repo.to_string()),
        number = run.number,
        role = run.role.as_str(),
        st = run.state.as_str(),
        reason = escape(run.reason.as_deref().unwrap_or("")),
    );
    page(&format!("Run r{}", run.id.0), &body, Some(RUN_SCRIPT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
