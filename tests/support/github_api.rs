//! A GitHub REST API test server on loopback: in-memory issues, comments,
//! labels, pull requests, reviews and collaborators, a real bare git
//! repository served over smart HTTP by `git http-backend`, and GitHub App
//! authentication with a JWT checked against the App's public key.
//!
//! Answers are GitHub's recorded objects (read at test time from
//! `shared/fixtures/github`) with the fields that matter changed. Every
//! request is checked as GitHub would (method, path, auth scheme and value,
//! JSON body) and recorded; faults (429, 502, 500 forever, 422, 401) can be
//! injected per method and path.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/github");
/// The installation id the server reports for its repository.
pub const INSTALLATION_ID: u64 = 4242;
/// The login writes are attributed to when the App acts.
pub const BOT_LOGIN: &str = "kiln-test[bot]";
/// The repository id used in `Link` URLs (`/repositories/{id}/...`), as GitHub does.
const REPO_ID: u64 = 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn fixture(path: &str) -> Value {
    let full = format!("{FIXTURES}/{path}");
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("fixture {full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {full}: {e}"))
}

/// GitHub's recorded objects, one per kind, used as templates.
struct Templates {
    issue: Value,
    label: Value,
    pull: Value,
    comment: Value,
    review: Value,
    review_comment: Value,
    repository: Value,
    validation_failed: Value,
    installation: Value,
}

impl Templates {
    fn load() -> Self {
        let labels = fixture("rest/add-labels-to-issue/normalized-fixture.json");
        Self {
            issue: labels[0]["response"].clone(),
            label: labels[1]["response"][0].clone(),
            pull: fixture("webhooks/pull_request/opened.payload.json")["pull_request"].clone(),
            comment: fixture("webhooks/issue_comment/created.payload.json")["comment"].clone(),
            review: fixture(
                "webhooks/pull_request_review/submitted.with-organization.payload.json",
            )["review"]
                .clone(),
            review_comment:
                fixture("webhooks/pull_request_review_comment/created.payload.json")["comment"]
                    .clone(),
            repository: fixture("webhooks/issues/opened.payload.json")["repository"].clone(),
            validation_failed: fixture("rest/errors/normalized-fixture.json")[0]["response"]
                .clone(),
            // An installation as GitHub sends it (the same object `GET
            // /app/installations` lists); no REST recording of it exists.
            installation: fixture("webhooks/installation/created.payload.json")["installation"]
                .clone(),
        }
    }
}

/// The App's RSA key pair, generated for this test run with `openssl`.
pub struct AppKey {
    /// The App id.
    pub app_id: u64,
    /// PKCS#1 PEM private key, as GitHub hands it out.
    pub private_pem: String,
    /// SPKI PEM public key.
    pub public_pem: String,
}

impl AppKey {
    /// A fresh 2048-bit key.
    pub fn generate(app_id: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("app.pem");
        let ok = Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl")
            .success();
        assert!(ok, "openssl genrsa failed");
        let public = Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .output()
            .expect("run openssl");
        assert!(public.status.success(), "openssl rsa -pubout failed");
        Self {
            app_id,
            private_pem: std::fs::read_to_string(&key).expect("read key"),
            public_pem: String::from_utf8(public.stdout).expect("utf-8 pem"),
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// `Authorization` header, if any.
    pub authorization: Option<String>,
    /// `Accept` header, if any.
    pub accept: Option<String>,
    /// JSON body, if any.
    pub body: Option<Value>,
}

/// A canned answer replacing the real one.
#[derive(Debug, Clone)]
pub struct Fault {
    method: Method,
    path: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    /// `None` = forever.
    remaining: Option<usize>,
    /// The request is applied first and only its answer replaced (a
    /// gateway that timed out after the backend did the work).
    after_applying: bool,
    /// Never answer: the request hangs until the client goes away.
    hang: bool,
    /// Only requests whose JSON body contains this text.
    body_contains: Option<String>,
}

impl Fault {
    /// Answer `method path` (path without query) with `status`.
    pub fn new(method: Method, path: &str, status: u16) -> Self {
        Self {
            method,
            path: path.to_string(),
            status,
            headers: Vec::new(),
            body: json!({"message": "injected fault"}),
            remaining: Some(1),
            after_applying: false,
            hang: false,
            body_contains: None,
        }
    }
    /// Never answers (after applying the request, with
    /// [`Fault::after_applying`]): the client waits until it gives up or dies.
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }
    /// Only for requests whose JSON body contains `text`.
    pub fn when_body_contains(mut self, text: &str) -> Self {
        self.body_contains = Some(text.to_string());
        self
    }
    /// Applies the request, then answers with the fault instead of its
    /// real answer.
    pub fn after_applying(mut self) -> Self {
        self.after_applying = true;
        self
    }
    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Sets the JSON body.
    pub fn body(mut self, body: Value) -> Self {
        self.body = body;
        self
    }
    /// Applies `n` times (default once).
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }
    /// Applies to every matching request.
    pub fn forever(mut self) -> Self {
        self.remaining = None;
        self
    }
}

#[derive(Debug, Clone)]
struct Item {
    number: u64,
    title: String,
    body: Option<String>,
    author: String,
    labels: Vec<String>,
    open: bool,
    pull: Option<Pull>,
}

#[derive(Debug, Clone)]
struct Pull {
    head: String,
    base: String,
    draft: bool,
}

#[derive(Debug, Clone)]
struct StoredComment {
    id: u64,
    number: u64,
    author: String,
    body: String,
}

#[derive(Debug, Clone)]
struct StoredReview {
    id: u64,
    number: u64,
    author: String,
    state: String,
    body: String,
}

#[derive(Debug, Clone)]
struct StoredReviewComment {
    id: u64,
    review_id: u64,
    number: u64,
    author: String,
    path: String,
    line: u64,
    side: String,
    body: String,
    /// Set on replies: the thread's first comment.
    in_reply_to: Option<u64>,
}

#[derive(Debug, Clone)]
struct StoredStatus {
    id: u64,
    sha: String,
    state: String,
    context: String,
    description: Option<String>,
    author: String,
}

/// A check run (Checks API), as the App created it.
#[derive(Debug, Clone)]
pub struct StoredCheckRun {
    /// Its id.
    pub id: u64,
    /// The commit it is on.
    pub head_sha: String,
    /// Its name (Kiln's status context).
    pub name: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// Set once completed.
    pub conclusion: Option<String>,
    /// `output.title`.
    pub title: Option<String>,
    /// `output.summary`.
    pub summary: Option<String>,
}

struct ServerState {
    requests: Vec<Recorded>,
    /// Check runs, oldest first.
    check_runs: Vec<StoredCheckRun>,
    faults: Vec<Fault>,
    items: BTreeMap<u64, Item>,
    /// Label changes, oldest first: (number, actor, added, label, Unix ms).
    label_events: Vec<(u64, String, bool, String, i64)>,
    comments: Vec<StoredComment>,
    reviews: Vec<StoredReview>,
    review_comments: Vec<StoredReviewComment>,
    /// Commit statuses, oldest first.
    statuses: Vec<StoredStatus>,
    collaborators: HashMap<String, &'static str>,
    /// Issued installation tokens and their expiry (Unix seconds).
    tokens: HashMap<String, u64>,
    /// A fine-grained token the server accepts, if any.
    personal_token: Option<String>,
    /// Lifetime of the next installation tokens, in seconds.
    token_lifetime: u64,
    /// The App's `permissions` and `events` (`GET /app`).
    app_grants: (Value, Vec<String>),
    /// The installation's, which lag behind the App's until its owner accepts.
    installation_grants: (Value, Vec<String>),
    /// Whether the App is installed on the repository.
    installed: bool,
    next_id: u64,
}

struct Shared {
    owner: String,
    name: String,
    addr: SocketAddr,
    app: AppKey,
    bare: PathBuf,
    templates: Templates,
    state: Mutex<ServerState>,
}

/// The running server. Dropping it stops serving.
pub struct GitHubApi {
    shared: Arc<Shared>,
    _root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitHubApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitHubApi {
    /// Serves repository `owner/name` (default branch `main`, one commit
    /// with `README.md`) for an App with a freshly generated key.
    pub async fn start(owner: &str, name: &str) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let bare = root.path().join(format!("{owner}/{name}.git"));
        std::fs::create_dir_all(&bare).expect("mkdir");
        git(
            &bare,
            &["init", "--quiet", "--bare", "--initial-branch=main"],
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            owner: owner.into(),
            name: name.into(),
            addr,
            app: AppKey::generate(77),
            bare,
            templates: Templates::load(),
            state: Mutex::new(ServerState {
                requests: Vec::new(),
                check_runs: Vec::new(),
                faults: Vec::new(),
                items: BTreeMap::new(),
                label_events: Vec::new(),
                comments: Vec::new(),
                reviews: Vec::new(),
                review_comments: Vec::new(),
                statuses: Vec::new(),
                collaborators: HashMap::new(),
                tokens: HashMap::new(),
                personal_token: None,
                token_lifetime: 3600,
                app_grants: full_grants(),
                installation_grants: full_grants(),
                installed: true,
                next_id: 5000,
            }),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            shared,
            _root: root,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, the API base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The App's key pair.
    pub fn app(&self) -> &AppKey {
        &self.shared.app
    }

    /// The bare repository behind the git endpoint.
    pub fn bare_repo(&self) -> &Path {
        &self.shared.bare
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// Requests whose path (without query) is `path`.
    pub fn requests_to(&self, method: Method, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.split('?').next() == Some(path))
            .collect()
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Installation tokens issued from now on live `secs` seconds.
    pub fn set_token_lifetime(&self, secs: u64) {
        self.lock().token_lifetime = secs;
    }

    /// The App's permissions and webhook events become these (GitHub's
    /// shape: `{"issues": "write", ...}` and event names).
    pub fn set_app_grants(&self, permissions: Value, events: &[&str]) {
        self.lock().app_grants = (permissions, events.iter().map(|e| e.to_string()).collect());
    }

    /// The installation's permissions and events become these.
    pub fn set_installation_grants(&self, permissions: Value, events: &[&str]) {
        self.lock().installation_grants =
            (permissions, events.iter().map(|e| e.to_string()).collect());
    }

    /// Removes the App's installation: it is installed nowhere.
    pub fn uninstall(&self) {
        self.lock().installed = false;
    }

    /// Accept `token` as a fine-grained token.
    pub fn accept_personal_token(&self, token: &str) {
        self.lock().personal_token = Some(token.to_string());
    }

    /// Revoke every installation token issued so far.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// Every installation token issued and not revoked.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.lock().tokens.keys().cloned().collect()
    }

    /// Installation tokens issued so far (valid or not).
    pub fn issued_token_count(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("/access_tokens"))
            .count()
    }

    /// Gives `login` a repository role (`read`, `triage`, `write`, `maintain`, `admin`).
    pub fn grant(&self, login: &str, role: &'static str) {
        self.lock().collaborators.insert(login.to_string(), role);
    }

    /// Adds `n` issues titled `seeded {i}` authored by `octocat`.
    pub fn seed_issues(&self, n: usize) {
        let mut st = self.lock();
        for i in 0..n {
            let number = st.items.len() as u64 + 1;
            st.items.insert(
                number,
                Item {
                    number,
                    title: format!("seeded {i}"),
                    body: None,
                    author: "octocat".into(),
                    labels: Vec::new(),
                    open: true,
                    pull: None,
                },
            );
        }
    }

    /// The commit `refs/heads/{branch}` points to, if the branch exists.
    pub fn branch_head(&self, branch: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(&self.shared.bare)
            .args(["rev-parse", "--verify", "--quiet"])
            .arg(format!("refs/heads/{branch}"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Every check run created so far, oldest first.
    pub fn check_runs(&self) -> Vec<StoredCheckRun> {
        self.lock().check_runs.clone()
    }

    /// Opens issue `title` as `author` would on github.com; its number.
    pub fn open_issue(&self, author: &str, title: &str, body: &str) -> u64 {
        let mut st = self.lock();
        let number = st.items.keys().last().copied().unwrap_or(0) + 1;
        st.items.insert(
            number,
            Item {
                number,
                title: title.into(),
                body: Some(body.into()),
                author: author.into(),
                labels: Vec::new(),
                open: true,
                pull: None,
            },
        );
        number
    }

    /// The `kiln.toml` lines that make Kiln use this server as GitHub with
    /// its App: `[github]` and the key's `[[secrets]]` entry (name
    /// `github-app`), the key written to `dir/app.pem`.
    pub fn kiln_toml(&self, dir: &Path) -> String {
        std::fs::create_dir_all(dir).expect("mkdir");
        let key = dir.join("app.pem");
        std::fs::write(&key, &self.app().private_pem).expect("write the App key");
        format!(
            "[github]\napi_url = {api_url:?}\napp_id = {app_id}\nprivate_key_secret = \"github-app\"\n\n\
             [[secrets]]\nname = \"github-app\"\nkind = \"github-app-key\"\nsource = {{ file = {key:?} }}\n",
            api_url = self.url(),
            app_id = self.app().app_id,
            key = key.display().to_string(),
        )
    }

    /// Opens a pull request from `head` (a branch already in the bare
    /// repository) into `main` as `author` would on github.com; its number.
    pub fn open_pull(&self, author: &str, title: &str, head: &str) -> u64 {
        let number = self.open_issue(author, title, "");
        let mut st = self.lock();
        if let Some(item) = st.items.get_mut(&number) {
            item.pull = Some(Pull {
                head: head.into(),
                base: "main".into(),
                draft: false,
            });
        }
        number
    }

    /// Adds `label` to issue or pull request `number`, as a person would on github.com.
    pub fn add_label(&self, number: u64, label: &str) {
        let mut st = self.lock();
        let item = st.items.get_mut(&number).expect("no such issue");
        if !item.labels.iter().any(|l| l == label) {
            item.labels.push(label.into());
        }
    }

    /// `actor` adds and removes labels on issue or pull request `number`,
    /// as a person would on github.com (the issue's events record it).
    pub fn relabel(&self, actor: &str, number: u64, add: &[&str], remove: &[&str]) {
        let mut st = self.lock();
        let item = st.items.get_mut(&number).expect("no such issue");
        let mut changed = Vec::new();
        for l in add {
            if !item.labels.iter().any(|x| x == l) {
                item.labels.push(l.to_string());
                changed.push((true, l.to_string()));
            }
        }
        for l in remove {
            if item.labels.iter().any(|x| x == l) {
                item.labels.retain(|x| x != l);
                changed.push((false, l.to_string()));
            }
        }
        for (added, label) in changed {
            st.label_events
                .push((number, actor.into(), added, label, now_ms()));
        }
    }

    /// The labels of issue or pull request `number`.
    pub fn labels(&self, number: u64) -> Vec<String> {
        self.lock()
            .items
            .get(&number)
            .map(|i| i.labels.clone())
            .unwrap_or_default()
    }

    /// `(author, body)` of every issue comment on `number`, oldest first.
    pub fn comments(&self, number: u64) -> Vec<(String, String)> {
        self.lock()
            .comments
            .iter()
            .filter(|c| c.number == number)
            .map(|c| (c.author.clone(), c.body.clone()))
            .collect()
    }

    /// `(number, head, base, author, open)` of every pull request, oldest first.
    pub fn pulls(&self) -> Vec<(u64, String, String, String, bool)> {
        self.lock()
            .items
            .values()
            .filter_map(|i| {
                let p = i.pull.as_ref()?;
                Some((
                    i.number,
                    p.head.clone(),
                    p.base.clone(),
                    i.author.clone(),
                    i.open,
                ))
            })
            .collect()
    }

    /// `(id, author, state)` of every review of pull request `number`, oldest first.
    pub fn reviews(&self, number: u64) -> Vec<(u64, String, String)> {
        self.lock()
            .reviews
            .iter()
            .filter(|r| r.number == number)
            .map(|r| (r.id, r.author.clone(), r.state.clone()))
            .collect()
    }

    /// Merges pull request `number` as a maintainer would on github.com
    /// (a fast-forward of its base to its head) and closes it.
    pub fn merge(&self, number: u64) {
        let mut st = self.lock();
        let item = st.items.get_mut(&number).expect("no such pull request");
        let pull = item.pull.clone().expect("not a pull request");
        let bare = self.shared.bare.to_string_lossy().into_owned();
        let (head, base) = (
            format!("refs/heads/{}", pull.head),
            format!("refs/heads/{}", pull.base),
        );
        git(
            &self.shared.bare,
            &[
                "--git-dir",
                &bare,
                "merge-base",
                "--is-ancestor",
                &base,
                &head,
            ],
        );
        git(
            &self.shared.bare,
            &["--git-dir", &bare, "update-ref", &base, &head],
        );
        item.open = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs git in `dir`, panicking with its output on failure (test setup only).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds (civil-from-days).
fn iso(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(
        "x-ratelimit-remaining",
        axum::http::HeaderValue::from_static("4999"),
    );
    r
}

fn message(status: u16, message: &str) -> Response {
    json_response(
        status,
        json!({"message": message, "documentation_url": "https://docs.github.com/rest"}),
    )
}

fn validation_failed(t: &Templates, resource: &str, field: &str, code: &str) -> Response {
    let mut body = t.validation_failed.clone();
    body["errors"] = json!([{"resource": resource, "field": field, "code": code}]);
    json_response(422, body)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let header_str = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header_str(header::AUTHORIZATION);
    let is_git = path.starts_with("/git/");
    let json_body: Option<Value> = if body.is_empty() || is_git {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(_) => return message(400, "Problems parsing JSON"),
        }
    };
    let mut replaced = None;
    let mut hang = Hang::No;
    {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.requests.push(Recorded {
            method: method.clone(),
            path: if query.is_empty() {
                path.clone()
            } else {
                format!("{path}?{query}")
            },
            authorization: authorization.clone(),
            accept: header_str(header::ACCEPT),
            body: json_body.clone(),
        });
        let body_text = json_body.as_ref().map(Value::to_string).unwrap_or_default();
        if let Some(i) = st.faults.iter().position(|f| {
            f.method == method
                && f.path == path
                && f.body_contains
                    .as_deref()
                    .is_none_or(|t| body_text.contains(t))
        }) {
            let fault = st.faults[i].clone();
            match st.faults[i].remaining {
                Some(1) => {
                    st.faults.remove(i);
                }
                Some(n) => st.faults[i].remaining = Some(n - 1),
                None => {}
            }
            let mut r = json_response(fault.status, fault.body);
            for (k, v) in fault.headers {
                if let (Ok(k), Ok(v)) = (
                    header::HeaderName::from_bytes(k.as_bytes()),
                    axum::http::HeaderValue::from_str(&v),
                ) {
                    r.headers_mut().insert(k, v);
                }
            }
            if fault.hang && !fault.after_applying {
                hang = Hang::Before;
            } else if !fault.after_applying {
                return r;
            } else {
                if fault.hang {
                    hang = Hang::After;
                }
                replaced = Some(r);
            }
        }
    }
    if hang == Hang::Before {
        std::future::pending::<()>().await;
    }
    let answer = route(
        &shared,
        method,
        &path,
        &query,
        &headers,
        authorization,
        body,
        json_body,
    )
    .await;
    if hang == Hang::After {
        std::future::pending::<()>().await;
    }
    replaced.unwrap_or(answer)
}

/// Whether a faulted request is left unanswered, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hang {
    No,
    /// Without applying it.
    Before,
    /// After applying it.
    After,
}

/// The real answer to a request (after faults were considered).
#[allow(clippy::too_many_arguments, reason = "the parts of one request")]
async fn route(
    shared: &Arc<Shared>,
    method: Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    authorization: Option<String>,
    body: Bytes,
    json_body: Option<Value>,
) -> Response {
    if path.starts_with("/git/") {
        return git_http(shared, &method, path, query, headers, body).await;
    }
    if path == "/app" || path.starts_with("/app/") || path.ends_with("/installation") {
        if let Err(r) = check_jwt(shared, authorization.as_deref()) {
            return r;
        }
        return app_route(shared, &method, path);
    }
    if let Err(r) = check_token(shared, authorization.as_deref()) {
        return r;
    }
    if method == Method::GET && path == "/user" {
        // The authenticated user (a fine-grained token's); this server
        // attributes every write to the bot, so that is who it is.
        return json_response(200, user(&shared.templates.issue["user"], BOT_LOGIN));
    }
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    repo_route(shared, &mut st, &method, path, query, headers, json_body)
}

#[allow(
    clippy::result_large_err,
    reason = "a test server's refusal, built once per bad request"
)]
fn check_jwt(shared: &Shared, authorization: Option<&str>) -> Result<(), Response> {
    use octocrab::jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
    let Some(jwt) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return Err(message(401, "A JSON web token could not be decoded"));
    };
    let key = DecodingKey::from_rsa_pem(shared.app.public_pem.as_bytes())
        .map_err(|_| message(500, "test server: bad public key"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    // `iss` is the App id as a number, which the library's string check
    // would reject; it and `iat` are checked below.
    validation.set_required_spec_claims(&["exp"]);
    let claims = decode::<Value>(jwt, &key, &validation)
        .map_err(|_| message(401, "A JSON web token could not be decoded"))?
        .claims;
    let iss_ok = claims["iss"] == json!(shared.app.app_id)
        || claims["iss"] == json!(shared.app.app_id.to_string());
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    let window_ok = matches!((iat, exp), (Some(i), Some(e)) if e > i && e - i <= 600 && i <= now());
    if !iss_ok || !window_ok {
        return Err(message(
            401,
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    Ok(())
}

#[allow(
    clippy::result_large_err,
    reason = "a test server's refusal, built once per bad request"
)]
fn check_token(shared: &Shared, authorization: Option<&str>) -> Result<(), Response> {
    let token = authorization.and_then(|a| {
        a.strip_prefix("Bearer ")
            .or_else(|| a.strip_prefix("token "))
    });
    let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let valid = token.is_some_and(|t| {
        st.tokens.get(t).is_some_and(|exp| *exp > now()) || st.personal_token.as_deref() == Some(t)
    });
    if valid {
        Ok(())
    } else {
        Err(message(401, "Bad credentials"))
    }
}

/// Everything Kiln's App asks for (README, "Connect GitHub").
fn full_grants() -> (Value, Vec<String>) {
    (
        json!({"checks": "write", "issues": "write", "pull_requests": "write",
               "contents": "write", "metadata": "read"}),
        [
            "issues",
            "issue_comment",
            "pull_request",
            "pull_request_review",
            "pull_request_review_comment",
        ]
        .map(String::from)
        .to_vec(),
    )
}

/// The App's installation on this server's account, from GitHub's
/// recorded installation object.
fn installation_json(shared: &Shared, st: &ServerState) -> Value {
    let mut i = shared.templates.installation.clone();
    i["id"] = json!(INSTALLATION_ID);
    i["account"]["login"] = json!(shared.owner);
    i["app_id"] = json!(shared.app.app_id);
    i["app_slug"] = json!("kiln-test");
    i["access_tokens_url"] = json!(format!(
        "http://{}/app/installations/{INSTALLATION_ID}/access_tokens",
        shared.addr
    ));
    i["permissions"] = st.installation_grants.0.clone();
    i["events"] = json!(st.installation_grants.1);
    i
}

fn app_route(shared: &Shared, method: &Method, path: &str) -> Response {
    let repo_installation = format!("/repos/{}/{}/installation", shared.owner, shared.name);
    let tokens = format!("/app/installations/{INSTALLATION_ID}/access_tokens");
    if *method == Method::GET && path == "/app" {
        // GET /app with the App's JWT: no recorded fixture, GitHub's documented shape.
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        return json_response(
            200,
            json!({
                "id": shared.app.app_id,
                "slug": "kiln-test",
                "name": "Kiln test",
                "owner": {"login": shared.owner, "id": 1, "type": "Organization"},
                "permissions": st.app_grants.0,
                "events": st.app_grants.1,
            }),
        );
    }
    if *method == Method::GET && path == "/app/installations" {
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let list = if st.installed {
            vec![installation_json(shared, &st)]
        } else {
            Vec::new()
        };
        return json_response(200, json!(list));
    }
    if *method == Method::GET && path == repo_installation {
        let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.installed {
            return message(404, "Not Found");
        }
        return json_response(200, installation_json(shared, &st));
    }
    if *method == Method::POST && path == tokens {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let token = format!("ghs_{}", rand_token());
        let expires = now() + st.token_lifetime;
        st.tokens.insert(token.clone(), expires);
        return json_response(
            201,
            json!({
                "token": token,
                "expires_at": iso(expires),
                "permissions": {"issues": "write", "pull_requests": "write", "contents": "write"},
                "repository_selection": "selected",
            }),
        );
    }
    message(404, "Not Found")
}

fn rand_token() -> String {
    (0..36)
        .map(|_| {
            let n = rand::random_range(0..36u32);
            char::from_digit(n, 36).unwrap_or('0')
        })
        .collect()
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn decode_segment(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if bytes[i] == b'%'
            && let Some(b) = hex
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A page of `items` with GitHub's `Link` header (`/repositories/{id}/...` URLs).
fn paginate(shared: &Shared, rest: &str, query: &str, items: Vec<Value>) -> Response {
    let per_page: usize = query_param(query, "per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = query_param(query, "page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let mut r = json_response(200, Value::Array(slice));
    let other: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.starts_with("page=") && !kv.is_empty())
        .collect();
    let link = |p: usize, rel: &str| {
        let mut q = other.clone();
        let page = format!("page={p}");
        q.push(&page);
        format!(
            "<http://{}/repositories/{REPO_ID}/{rest}?{}>; rel=\"{rel}\"",
            shared.addr,
            q.join("&")
        )
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < pages {
        links.push(link(page + 1, "next"));
        links.push(link(pages, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
    }
    if !links.is_empty()
        && let Ok(v) = axum::http::HeaderValue::from_str(&links.join(", "))
    {
        r.headers_mut().insert(header::LINK, v);
    }
    r
}

fn user(template: &Value, login: &str) -> Value {
    let mut u = template.clone();
    u["login"] = json!(login);
    u
}

fn issue_json(t: &Templates, item: &Item) -> Value {
    let mut v = t.issue.clone();
    v["number"] = json!(item.number);
    v["id"] = json!(10_000 + item.number);
    v["title"] = json!(item.title);
    v["body"] = json!(item.body);
    v["user"] = user(&t.issue["user"], &item.author);
    v["state"] = json!(if item.open { "open" } else { "closed" });
    v["labels"] = Value::Array(
        item.labels
            .iter()
            .map(|l| {
                let mut lv = t.label.clone();
                lv["name"] = json!(l);
                lv
            })
            .collect(),
    );
    if item.pull.is_some() {
        v["pull_request"] =
            json!({"url": "", "html_url": "", "diff_url": "", "patch_url": "", "merged_at": null});
    }
    v
}

fn pull_json(shared: &Shared, item: &Item) -> Value {
    let t = &shared.templates;
    let Some(pull) = &item.pull else {
        return Value::Null;
    };
    let mut v = t.pull.clone();
    v["number"] = json!(item.number);
    v["id"] = json!(20_000 + item.number);
    v["title"] = json!(item.title);
    v["body"] = json!(item.body);
    v["user"] = user(&t.pull["user"], &item.author);
    v["state"] = json!(if item.open { "open" } else { "closed" });
    v["draft"] = json!(pull.draft);
    v["labels"] = issue_json(t, item)["labels"].clone();
    for (side, branch) in [("head", &pull.head), ("base", &pull.base)] {
        v[side]["ref"] = json!(branch);
        v[side]["sha"] = json!(rev(shared, branch).unwrap_or_default());
    }
    v
}

fn rev(shared: &Shared, branch: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&shared.bare)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_diff(shared: &Shared, pull: &Pull, name_only: bool) -> String {
    let range = format!("refs/heads/{}...refs/heads/{}", pull.base, pull.head);
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(&shared.bare).arg("diff");
    if name_only {
        cmd.arg("--name-only");
    }
    let out = cmd.arg(range).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn str_field<'a>(body: &'a Option<Value>, key: &str) -> Option<&'a str> {
    body.as_ref()?.get(key)?.as_str()
}

#[allow(clippy::too_many_lines, reason = "one match over GitHub's routes")]
fn repo_route(
    shared: &Shared,
    st: &mut ServerState,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Response {
    let t = &shared.templates;
    let prefix = format!("/repos/{}/{}", shared.owner, shared.name);
    let alias = format!("/repositories/{REPO_ID}");
    let rest = if path == prefix {
        ""
    } else if let Some(r) = path.strip_prefix(&format!("{prefix}/")) {
        r
    } else if let Some(r) = path.strip_prefix(&format!("{alias}/")) {
        r
    } else {
        return message(404, "Not Found");
    };
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    let m = method.as_str();
    let num = |s: &str| s.parse::<u64>().ok();
    let new_id = |st: &mut ServerState| {
        st.next_id += 1;
        st.next_id
    };
    match (m, parts.as_slice()) {
        ("GET", []) => {
            let mut v = t.repository.clone();
            v["name"] = json!(shared.name);
            v["full_name"] = json!(format!("{}/{}", shared.owner, shared.name));
            v["owner"]["login"] = json!(shared.owner);
            v["default_branch"] = json!("main");
            v["clone_url"] = json!(format!(
                "http://{}/git/{}/{}.git",
                shared.addr, shared.owner, shared.name
            ));
            json_response(200, v)
        }
        ("GET", ["issues"]) => {
            let state = query_param(query, "state").unwrap_or("open");
            let mut items: Vec<&Item> = st
                .items
                .values()
                .filter(|i| state == "all" || (state == "open") == i.open)
                .collect();
            if query_param(query, "direction") != Some("asc") {
                items.reverse();
            }
            let items = items.into_iter().map(|i| issue_json(t, i)).collect();
            paginate(shared, "issues", query, items)
        }
        ("POST", ["issues"]) => {
            let Some(title) = str_field(&body, "title") else {
                return message(422, "Invalid request.\n\n\"title\" wasn't supplied.");
            };
            let labels: Vec<String> = body
                .as_ref()
                .and_then(|b| b.get("labels"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let number = st.items.keys().last().copied().unwrap_or(0) + 1;
            for l in &labels {
                st.label_events
                    .push((number, BOT_LOGIN.into(), true, l.clone(), now_ms()));
            }
            let item = Item {
                number,
                title: title.to_string(),
                body: str_field(&body, "body").map(String::from),
                author: BOT_LOGIN.into(),
                labels,
                open: true,
                pull: None,
            };
            let v = issue_json(t, &item);
            st.items.insert(number, item);
            json_response(201, v)
        }
        ("GET", ["issues", n]) => match num(n).and_then(|n| st.items.get(&n)) {
            Some(item) => json_response(200, issue_json(t, item)),
            None => message(404, "Not Found"),
        },
        // The issue's events (only label changes are kept here), in the
        // shape GitHub documents for `GET /repos/{o}/{r}/issues/{n}/events`.
        ("GET", ["issues", n, "events"]) => {
            let Some(n) = num(n).filter(|n| st.items.contains_key(n)) else {
                return message(404, "Not Found");
            };
            let items = st
                .label_events
                .iter()
                .enumerate()
                .filter(|(_, e)| e.0 == n)
                .map(|(i, (_, actor, added, label, at))| {
                    json!({
                        "id": 9_000_000 + i as u64,
                        "event": if *added { "labeled" } else { "unlabeled" },
                        "actor": { "login": actor, "type": "User" },
                        "label": { "name": label, "color": "ededed" },
                        "commit_id": null,
                        "created_at": kiln::signals::rfc3339(*at),
                    })
                })
                .collect();
            paginate(shared, &format!("issues/{n}/events"), query, items)
        }
        ("GET", ["issues", n, "comments"]) => {
            let Some(n) = num(n).filter(|n| st.items.contains_key(n)) else {
                return message(404, "Not Found");
            };
            let items = st
                .comments
                .iter()
                .filter(|c| c.number == n)
                .map(|c| comment_json(t, c))
                .collect();
            paginate(shared, &format!("issues/{n}/comments"), query, items)
        }
        ("POST", ["issues", n, "comments"]) => {
            let Some(n) = num(n).filter(|n| st.items.contains_key(n)) else {
                return message(404, "Not Found");
            };
            let Some(text) = str_field(&body, "body") else {
                return message(422, "Invalid request.\n\n\"body\" wasn't supplied.");
            };
            let c = StoredComment {
                id: new_id(st),
                number: n,
                author: BOT_LOGIN.into(),
                body: text.to_string(),
            };
            let v = comment_json(t, &c);
            st.comments.push(c);
            json_response(201, v)
        }
        ("PATCH", ["issues", "comments", id]) => {
            let Some(text) = str_field(&body, "body").map(String::from) else {
                return message(422, "Invalid request.\n\n\"body\" wasn't supplied.");
            };
            match st.comments.iter_mut().find(|c| Some(c.id) == num(id)) {
                Some(c) => {
                    c.body = text;
                    let c = c.clone();
                    json_response(200, comment_json(t, &c))
                }
                None => message(404, "Not Found"),
            }
        }
        ("POST", ["issues", n, "labels"]) => {
            let Some(item) = num(n).and_then(|n| st.items.get_mut(&n)) else {
                return message(404, "Not Found");
            };
            let Some(labels) = body
                .as_ref()
                .and_then(|b| b.get("labels"))
                .and_then(Value::as_array)
            else {
                return message(422, "Invalid request.\n\n\"labels\" wasn't supplied.");
            };
            let mut added = Vec::new();
            for l in labels.iter().filter_map(Value::as_str) {
                if !item.labels.iter().any(|x| x == l) {
                    item.labels.push(l.to_string());
                    added.push(l.to_string());
                }
            }
            let item = item.clone();
            for l in added {
                st.label_events
                    .push((item.number, BOT_LOGIN.into(), true, l, now_ms()));
            }
            json_response(200, issue_json(t, &item)["labels"].clone())
        }
        ("DELETE", ["issues", n, "labels", name]) => {
            let Some(item) = num(n).and_then(|n| st.items.get_mut(&n)) else {
                return message(404, "Not Found");
            };
            let name = decode_segment(name);
            let before = item.labels.len();
            item.labels.retain(|l| *l != name);
            if item.labels.len() == before {
                return message(404, "Label does not exist");
            }
            let item = item.clone();
            st.label_events.push((
                item.number,
                BOT_LOGIN.into(),
                false,
                name.to_string(),
                now_ms(),
            ));
            json_response(200, issue_json(t, &item)["labels"].clone())
        }
        ("PATCH", ["pulls", n]) => {
            let Some(text) = str_field(&body, "body").map(String::from) else {
                return message(422, "Invalid request.\n\n\"body\" wasn't supplied.");
            };
            match num(n)
                .and_then(|n| st.items.get_mut(&n))
                .filter(|i| i.pull.is_some())
            {
                Some(item) => {
                    item.body = Some(text);
                    let item = item.clone();
                    json_response(200, pull_json(shared, &item))
                }
                None => message(404, "Not Found"),
            }
        }
        ("GET", ["pulls"]) => {
            let state = query_param(query, "state").unwrap_or("open");
            let mut items: Vec<&Item> = st
                .items
                .values()
                .filter(|i| i.pull.is_some())
                .filter(|i| state == "all" || (state == "open") == i.open)
                .collect();
            if query_param(query, "direction") != Some("asc") {
                items.reverse();
            }
            let items = items.into_iter().map(|i| pull_json(shared, i)).collect();
            paginate(shared, "pulls", query, items)
        }
        ("POST", ["pulls"]) => {
            let (Some(title), Some(head), Some(base)) = (
                str_field(&body, "title"),
                str_field(&body, "head"),
                str_field(&body, "base"),
            ) else {
                return message(
                    422,
                    "Invalid request.\n\n\"title\", \"head\" and \"base\" are required.",
                );
            };
            if rev(shared, head).is_none() {
                return validation_failed(t, "PullRequest", "head", "invalid");
            }
            if rev(shared, base).is_none() {
                return validation_failed(t, "PullRequest", "base", "invalid");
            }
            let duplicate = st.items.values().any(|i| {
                i.open
                    && i.pull
                        .as_ref()
                        .is_some_and(|p| p.head == head && p.base == base)
            });
            if duplicate {
                let mut v = t.validation_failed.clone();
                v["errors"] = json!([{"resource": "PullRequest", "code": "custom",
                    "message": format!("A pull request already exists for {}:{head}.", shared.owner)}]);
                return json_response(422, v);
            }
            let number = st.items.keys().last().copied().unwrap_or(0) + 1;
            let draft = body
                .as_ref()
                .and_then(|b| b.get("draft"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let item = Item {
                number,
                title: title.to_string(),
                body: str_field(&body, "body").map(String::from),
                author: BOT_LOGIN.into(),
                labels: Vec::new(),
                open: true,
                pull: Some(Pull {
                    head: head.to_string(),
                    base: base.to_string(),
                    draft,
                }),
            };
            let v = pull_json(shared, &item);
            st.items.insert(number, item);
            json_response(201, v)
        }
        ("GET", ["pulls", n]) => {
            let Some(item) = num(n)
                .and_then(|n| st.items.get(&n))
                .filter(|i| i.pull.is_some())
            else {
                return message(404, "Not Found");
            };
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept == "application/vnd.github.v3.diff"
                && let Some(pull) = &item.pull
            {
                let diff = git_diff(shared, pull, false);
                return (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/vnd.github.v3.diff; charset=utf-8",
                    )],
                    diff,
                )
                    .into_response();
            }
            json_response(200, pull_json(shared, item))
        }
        ("GET", ["pulls", n, "reviews"]) => {
            let Some(n) = num(n).filter(|n| st.items.get(n).is_some_and(|i| i.pull.is_some()))
            else {
                return message(404, "Not Found");
            };
            let items = st
                .reviews
                .iter()
                .filter(|r| r.number == n)
                .map(|r| review_json(t, r))
                .collect();
            paginate(shared, &format!("pulls/{n}/reviews"), query, items)
        }
        ("POST", ["pulls", n, "reviews"]) => {
            let Some(item) = num(n).and_then(|n| st.items.get(&n)).cloned() else {
                return message(404, "Not Found");
            };
            let Some(pull) = &item.pull else {
                return message(404, "Not Found");
            };
            let event = str_field(&body, "event").unwrap_or("PENDING");
            let state = match event {
                "APPROVE" => "APPROVED",
                "REQUEST_CHANGES" => "CHANGES_REQUESTED",
                "COMMENT" => "COMMENTED",
                _ => return validation_failed(t, "PullRequestReview", "event", "invalid"),
            };
            // Every API write here is the App's: GitHub refuses to let a pull
            // request's author approve it or request changes on it.
            if item.author == BOT_LOGIN && event != "COMMENT" {
                let mut v = t.validation_failed.clone();
                v["errors"] = json!([if event == "APPROVE" {
                    "Can not approve your own pull request"
                } else {
                    "Can not request changes on your own pull request"
                }]);
                return json_response(422, v);
            }
            let text = str_field(&body, "body").unwrap_or("");
            if text.is_empty() && event != "APPROVE" {
                let mut v = t.validation_failed.clone();
                v["errors"] = json!([format!("Body is required when event is {event}")]);
                return json_response(422, v);
            }
            let changed: HashSet<String> = git_diff(shared, pull, true)
                .lines()
                .map(String::from)
                .collect();
            let comments = body
                .as_ref()
                .and_then(|b| b.get("comments"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let review_id = new_id(st);
            let mut stored = Vec::new();
            for c in &comments {
                let (Some(p), Some(line), Some(b)) = (
                    c.get("path").and_then(Value::as_str),
                    c.get("line").and_then(Value::as_u64),
                    c.get("body").and_then(Value::as_str),
                ) else {
                    return validation_failed(
                        t,
                        "PullRequestReviewComment",
                        "line",
                        "missing_field",
                    );
                };
                let side = c.get("side").and_then(Value::as_str).unwrap_or("RIGHT");
                if !changed.contains(p) || !matches!(side, "LEFT" | "RIGHT") || line == 0 {
                    let mut v = t.validation_failed.clone();
                    v["message"] = json!("Unprocessable Entity");
                    v["errors"] = json!(["Path could not be resolved"]);
                    return json_response(422, v);
                }
                stored.push(StoredReviewComment {
                    id: new_id(st),
                    review_id,
                    number: item.number,
                    author: BOT_LOGIN.into(),
                    path: p.into(),
                    line,
                    side: side.into(),
                    body: b.into(),
                    in_reply_to: None,
                });
            }
            let review = StoredReview {
                id: review_id,
                number: item.number,
                author: BOT_LOGIN.into(),
                state: state.into(),
                body: text.into(),
            };
            let v = review_json(t, &review);
            st.reviews.push(review);
            st.review_comments.extend(stored);
            json_response(200, v)
        }
        ("GET", ["pulls", n, "comments"]) => {
            let Some(n) = num(n).filter(|n| st.items.get(n).is_some_and(|i| i.pull.is_some()))
            else {
                return message(404, "Not Found");
            };
            let items = st
                .review_comments
                .iter()
                .filter(|c| c.number == n)
                .map(|c| review_comment_json(t, c))
                .collect();
            paginate(shared, &format!("pulls/{n}/comments"), query, items)
        }
        ("POST", ["pulls", n, "comments", id, "replies"]) => {
            let Some(n) = num(n).filter(|n| st.items.get(n).is_some_and(|i| i.pull.is_some()))
            else {
                return message(404, "Not Found");
            };
            let Some(text) = str_field(&body, "body").filter(|b| !b.is_empty()) else {
                return validation_failed(t, "PullRequestReviewComment", "body", "missing_field");
            };
            // A comment of another pull request is not found under this one.
            let Some(parent) = st
                .review_comments
                .iter()
                .find(|c| Some(c.id) == num(id) && c.number == n)
                .cloned()
            else {
                return message(404, "Not Found");
            };
            // GitHub: "Replies to replies are not supported."
            if parent.in_reply_to.is_some() {
                return validation_failed(t, "PullRequestReviewComment", "in_reply_to", "invalid");
            }
            // Like GitHub, a reply is a single-comment review of its own.
            let review_id = new_id(st);
            st.reviews.push(StoredReview {
                id: review_id,
                number: n,
                author: BOT_LOGIN.into(),
                state: "COMMENTED".into(),
                body: String::new(),
            });
            let c = StoredReviewComment {
                id: new_id(st),
                review_id,
                number: n,
                author: BOT_LOGIN.into(),
                body: text.into(),
                in_reply_to: Some(parent.id),
                ..parent
            };
            let v = review_comment_json(t, &c);
            st.review_comments.push(c);
            json_response(201, v)
        }
        ("POST", ["statuses", sha]) => {
            if !commit_exists(shared, sha) {
                let mut v = t.validation_failed.clone();
                v["message"] = json!(format!("No commit found for SHA: {sha}"));
                v["errors"] = json!([]);
                return json_response(422, v);
            }
            let state = str_field(&body, "state").unwrap_or("");
            if !matches!(state, "pending" | "success" | "failure" | "error") {
                return validation_failed(t, "Status", "state", "custom");
            }
            let description = str_field(&body, "description").map(String::from);
            if description
                .as_ref()
                .is_some_and(|d| d.chars().count() > 140)
            {
                return validation_failed(t, "Status", "description", "custom");
            }
            let status = StoredStatus {
                id: new_id(st),
                sha: sha.to_string(),
                state: state.into(),
                context: str_field(&body, "context").unwrap_or("default").into(),
                description,
                author: BOT_LOGIN.into(),
            };
            let v = status_json(shared, &status);
            st.statuses.push(status);
            json_response(201, v)
        }
        ("POST", ["check-runs"]) => {
            // Only an App may create check runs: GitHub answers a personal
            // token with 403.
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|a| {
                    a.strip_prefix("Bearer ")
                        .or_else(|| a.strip_prefix("token "))
                });
            if bearer.is_some_and(|t| !st.tokens.contains_key(t)) {
                return message(403, "You must authenticate via a GitHub App.");
            }
            let sha = str_field(&body, "head_sha").unwrap_or("").to_string();
            if !commit_exists(shared, &sha) {
                return validation_failed(t, "CheckRun", "head_sha", "invalid");
            }
            let Some(name) = str_field(&body, "name").filter(|n| !n.is_empty()) else {
                return validation_failed(t, "CheckRun", "name", "missing_field");
            };
            let status = str_field(&body, "status").unwrap_or("queued");
            let conclusion = str_field(&body, "conclusion");
            let conclusions = [
                "action_required",
                "cancelled",
                "failure",
                "neutral",
                "success",
                "skipped",
                "stale",
                "timed_out",
            ];
            let valid = match (status, conclusion) {
                ("completed", Some(c)) => conclusions.contains(&c),
                ("queued" | "in_progress", None) => true,
                _ => false,
            };
            if !valid {
                return validation_failed(t, "CheckRun", "conclusion", "invalid");
            }
            let output = body.as_ref().and_then(|b| b.get("output"));
            let out_field = |k: &str| {
                output
                    .and_then(|o| o.get(k))
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            if output.is_some() && (out_field("title").is_none() || out_field("summary").is_none())
            {
                return validation_failed(t, "CheckRun", "output", "missing_field");
            }
            let run = StoredCheckRun {
                id: new_id(st),
                head_sha: sha,
                name: name.to_string(),
                status: status.to_string(),
                conclusion: conclusion.map(String::from),
                title: out_field("title"),
                summary: out_field("summary"),
            };
            let v = check_run_json(shared, &run);
            st.check_runs.push(run);
            json_response(201, v)
        }
        ("GET", ["commits", sha, "check-runs"]) => {
            if !commit_exists(shared, sha) {
                return message(404, "Not Found");
            }
            // GitHub's default `filter=latest`: the newest run of each name.
            let mut seen = std::collections::HashSet::new();
            let runs: Vec<Value> = st
                .check_runs
                .iter()
                .rev()
                .filter(|r| r.head_sha == *sha && seen.insert(r.name.clone()))
                .map(|r| check_run_json(shared, r))
                .collect();
            json_response(200, json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("GET", ["commits", sha, "statuses"]) => {
            if !commit_exists(shared, sha) {
                return message(404, "Not Found");
            }
            // Newest first, every status (not only the latest per context).
            let items = st
                .statuses
                .iter()
                .rev()
                .filter(|s| s.sha == *sha)
                .map(|s| status_json(shared, s))
                .collect();
            paginate(shared, &format!("commits/{sha}/statuses"), query, items)
        }
        ("GET", ["collaborators", login, "permission"]) => {
            let login = decode_segment(login);
            match st.collaborators.get(&login) {
                Some(role) => {
                    // No recorded fixture; GitHub's documented shape, where
                    // `permission` folds maintain into write and triage into read.
                    let folded = match *role {
                        "maintain" => "write",
                        "triage" => "read",
                        r => r,
                    };
                    json_response(
                        200,
                        json!({
                            "permission": folded,
                            "role_name": role,
                            "user": user(&t.issue["user"], &login),
                        }),
                    )
                }
                None => message(404, &format!("{login} is not a user")),
            }
        }
        _ => message(404, "Not Found"),
    }
}

fn comment_json(t: &Templates, c: &StoredComment) -> Value {
    let mut v = t.comment.clone();
    v["id"] = json!(c.id);
    v["body"] = json!(c.body);
    v["user"] = user(&t.comment["user"], &c.author);
    v
}

fn review_json(t: &Templates, r: &StoredReview) -> Value {
    let mut v = t.review.clone();
    v["id"] = json!(r.id);
    v["body"] = json!(r.body);
    v["state"] = json!(r.state);
    v["user"] = user(&t.review["user"], &r.author);
    v
}

fn review_comment_json(t: &Templates, c: &StoredReviewComment) -> Value {
    let mut v = t.review_comment.clone();
    v["id"] = json!(c.id);
    v["pull_request_review_id"] = json!(c.review_id);
    v["path"] = json!(c.path);
    v["line"] = json!(c.line);
    v["original_line"] = json!(c.line);
    v["side"] = json!(c.side);
    v["body"] = json!(c.body);
    v["user"] = user(&t.review_comment["user"], &c.author);
    // GitHub sends `in_reply_to_id` on replies only.
    if let Some(root) = c.in_reply_to {
        v["in_reply_to_id"] = json!(root);
    }
    v
}

/// A check run. No recorded fixture exists for the Checks API; this is
/// GitHub's documented shape (`POST /repos/{o}/{r}/check-runs`).
fn check_run_json(shared: &Shared, r: &StoredCheckRun) -> Value {
    json!({
        "id": r.id,
        "head_sha": r.head_sha,
        "node_id": format!("CR_kwDO{}", r.id),
        "external_id": "",
        "url": format!("https://api.github.com/repos/{}/{}/check-runs/{}", shared.owner, shared.name, r.id),
        "html_url": format!("https://github.com/{}/{}/runs/{}", shared.owner, shared.name, r.id),
        "details_url": null,
        "status": r.status,
        "conclusion": r.conclusion,
        "started_at": iso(now()),
        "completed_at": if r.status == "completed" { json!(iso(now())) } else { Value::Null },
        "output": {"title": r.title, "summary": r.summary, "text": null,
                   "annotations_count": 0, "annotations_url": ""},
        "name": r.name,
        "check_suite": {"id": 1},
        "app": {"id": shared.app.app_id, "slug": "kiln-test", "name": "Kiln test"},
        "pull_requests": [],
    })
}

/// A commit status. No recorded fixture exists for statuses; this is
/// GitHub's documented shape (`POST /repos/{o}/{r}/statuses/{sha}`).
fn status_json(shared: &Shared, s: &StoredStatus) -> Value {
    let url = format!(
        "https://api.github.com/repos/{}/{}/statuses/{}",
        shared.owner, shared.name, s.sha
    );
    json!({
        "url": url,
        "avatar_url": "https://avatars.githubusercontent.com/in/77?v=4",
        "id": s.id,
        "node_id": format!("SC_kwDO{}", s.id),
        "state": s.state,
        "description": s.description,
        "target_url": null,
        "context": s.context,
        "created_at": iso(now()),
        "updated_at": iso(now()),
        "creator": user(&shared.templates.issue["user"], &s.author),
    })
}

/// Whether `sha` names a commit of the repository (full object id only).
fn commit_exists(shared: &Shared, sha: &str) -> bool {
    sha.len() == 40
        && sha.bytes().all(|b| b.is_ascii_hexdigit())
        && Command::new("git")
            .arg("--git-dir")
            .arg(&shared.bare)
            .args(["cat-file", "-e"])
            .arg(format!("{sha}^{{commit}}"))
            .status()
            .is_ok_and(|s| s.success())
}

/// Smart HTTP through `git http-backend` (CGI), after checking the
/// `Authorization` header git sends is `Basic x-access-token:<live token>`.
async fn git_http(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| pair.strip_prefix("x-access-token:").map(String::from))
        .is_some_and(|token| {
            let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.tokens.get(&token).is_some_and(|exp| *exp > now())
                || st.personal_token.as_deref() == Some(token.as_str())
        });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"GitHub\"")],
            "",
        )
            .into_response();
    }
    let root = shared
        .bare
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let exec_path = Command::new("git")
        .arg("--exec-path")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let header = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new(format!("{exec_path}/git-http-backend"));
    cmd.env_clear()
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path.trim_start_matches("/git"))
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_TYPE", header(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header(header::CONTENT_ENCODING))
        .env(
            "GIT_PROTOCOL",
            header(header::HeaderName::from_static("git-protocol")),
        )
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let Ok(mut child) = cmd.spawn() else {
        return message(500, "test server: cannot run git http-backend");
    };
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&body).await;
        });
    }
    let Ok(out) = child.wait_with_output().await else {
        return message(500, "test server: git http-backend failed");
    };
    cgi_response(&out.stdout)
}

fn cgi_response(out: &[u8]) -> Response {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return message(500, "test server: malformed CGI output");
    };
    let head = String::from_utf8_lossy(&out[..end]);
    let mut builder = Response::builder().status(200);
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split_whitespace().next().and_then(|c| c.parse().ok());
            builder = builder.status(code.unwrap_or(500));
        } else {
            builder = builder.header(k.trim(), v);
        }
    }
    builder
        .body(axum::body::Body::from(out[end + sep..].to_vec()))
        .unwrap_or_else(|_| message(500, "test server: bad CGI headers"))
}
