//! The board's data: each open issue of a repository in the column of its
//! stage ([`crate::board::place`]), with its runs and linked pull requests.
//!
//! - `GET /repos`: the repositories that have a board.
//! - `GET /repos/{owner}/{name}/board`: the board as JSON, read fresh.
//! - `GET /repos/{owner}/{name}/board/events`: SSE; `event: board` with the
//!   whole board as data, at once and again whenever it changes.
//!
//! Watching is shared: one poller per watched repository, whatever the
//! number of watchers. It checks the store's runs of the repository once a
//! second (one indexed query) and reads the forge again when they changed
//! or every [`BoardSource::forge_poll`] (labels and pull requests change on
//! the forge, which has no event feed Kiln can subscribe to here). The
//! board is built, redacted and rendered to its SSE frame once per change
//! and the frame shared by every watcher; the poller stops when the last
//! watcher leaves.
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderName, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::ApiState;
use super::auth::Viewer;
use super::error::ApiError;
use super::events::redact_json;
use crate::board::{self, LinkedPr, PrKind, RunFact, Stage, VERIFICATION_CONTEXT};
use crate::forge::{Forge, ForgeError, ForgeResolver, RepoRef, StateFilter, StatusState};
use crate::store::{Run, RunFilter, RunState};

/// Lists the repositories whose boards are shown (the local forge's, read
/// afresh each time so a repository created while serving appears).
pub type RepoLister = Arc<dyn Fn() -> Result<Vec<RepoRef>, ForgeError> + Send + Sync>;

/// Where boards come from; `kiln serve` sets it on [`ApiState`].
#[derive(Clone)]
pub struct BoardSource {
    /// The forge of each repository.
    pub forges: ForgeResolver,
    /// The repositories listed; repositories with runs in the store are
    /// added when the resolver serves them (GitHub ones have no list in
    /// `kiln.toml`).
    pub repos: RepoLister,
    /// Base URL where a non-`local` repository's pull requests are shown
    /// (`https://github.com` → `https://github.com/OWNER/NAME/pull/N`).
    pub web_url: Option<String>,
    /// How often a watched board re-reads a `local/*` repository's forge
    /// when no run changed (default 2 s: it is a local SQLite file).
    pub local_poll: Duration,
    /// The same for other forges (default 30 s: GitHub's rate limit is
    /// shared with the runs).
    pub forge_poll: Duration,
}

impl BoardSource {
    /// A source with the default poll intervals and no web URL.
    pub fn new(forges: ForgeResolver, repos: RepoLister) -> Self {
        BoardSource {
            forges,
            repos,
            web_url: None,
            local_poll: Duration::from_secs(2),
            forge_poll: Duration::from_secs(30),
        }
    }

    fn poll_interval(&self, repo: &RepoRef) -> Duration {
        if repo.owner == "local" {
            self.local_poll
        } else {
            self.forge_poll
        }
    }
}

/// The web base of GitHub (or GitHub Enterprise) whose REST API is at
/// `api_url`: `https://api.github.com` → `https://github.com`,
/// `https://HOST/api/v3` → `https://HOST`.
pub fn github_web_url(api_url: &str) -> String {
    let trimmed = api_url.trim_end_matches('/');
    if let Some(host) = trimmed.strip_prefix("https://api.") {
        return format!("https://{host}");
    }
    trimmed
        .strip_suffix("/api/v3")
        .unwrap_or(trimmed)
        .to_owned()
}

/// How often a watched board looks at the store.
const STORE_POLL: Duration = Duration::from_secs(1);
/// A comment line this often keeps idle SSE connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Runs read per board; older runs of a busy repository fall off.
const MAX_RUNS: usize = 1000;
/// Runs listed on a card (newest first).
const RUNS_PER_CARD: usize = 10;

/// A column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Column {
    /// Stage id (`spec-review`).
    pub id: Stage,
    /// Heading.
    pub title: String,
}

/// A run as a card shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunBrief {
    /// Run id.
    pub id: u64,
    /// Role name.
    pub role: String,
    /// State.
    pub state: RunState,
    /// The issue or pull request it ran on.
    pub number: u64,
    /// Why it is in its state.
    pub reason: Option<String>,
}

/// A linked pull request as a card shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrBrief {
    /// Number.
    pub number: u64,
    /// Spec or implementation.
    pub kind: PrKind,
    /// Title.
    pub title: String,
    /// Draft or not.
    pub draft: bool,
    /// Head branch.
    pub head: String,
    /// Its head's `kiln/verification` status, if set.
    pub verification: Option<StatusState>,
    /// Where to see it, when the forge has web pages.
    pub url: Option<String>,
}

/// One open issue on the board.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Card {
    /// Issue number.
    pub number: u64,
    /// Title (untrusted text).
    pub title: String,
    /// Author login.
    pub author: String,
    /// Labels.
    pub labels: Vec<String>,
    /// Its column.
    pub stage: Stage,
    /// Which rule put it there.
    pub why: String,
    /// The live run that decided the stage, if one did.
    pub active_run: Option<RunBrief>,
    /// Its runs and its pull requests' runs, newest first (at most ten).
    pub runs: Vec<RunBrief>,
    /// Its open linked pull requests.
    pub pull_requests: Vec<PrBrief>,
}

/// A repository's board.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Board {
    /// `owner/name`.
    pub repo: String,
    /// The columns, in order.
    pub stages: Vec<Column>,
    /// Open issues, newest first.
    pub issues: Vec<Card>,
}

fn forge_error(repo: &RepoRef, e: ForgeError) -> ApiError {
    match e {
        ForgeError::NotFound(m) => ApiError::NotFound(format!("{repo}: {m}")),
        other => ApiError::Internal(format!("reading {repo} from its forge: {other}")),
    }
}

fn source(state: &ApiState) -> Result<&BoardSource, ApiError> {
    state.board.as_ref().ok_or_else(|| {
        ApiError::NotFound("this runner serves no boards (no forge is configured)".into())
    })
}

/// Every repository with a board: the lister's, then those with runs in
/// the store that the resolver serves; sorted, without duplicates.
async fn repos(state: &ApiState, source: &BoardSource) -> Result<Vec<RepoRef>, ApiError> {
    let lister = source.repos.clone();
    let mut out = tokio::task::spawn_blocking(move || lister())
        .await
        .map_err(|e| ApiError::Internal(format!("listing repositories: {e}")))?
        .map_err(|e| ApiError::Internal(format!("listing repositories: {e}")))?;
    let known: HashSet<RepoRef> = out.iter().cloned().collect();
    let runs = state
        .store
        .list_runs(RunFilter {
            limit: Some(MAX_RUNS),
            ..RunFilter::default()
        })
        .await?;
    let mut seen = HashSet::new();
    for run in runs {
        if !known.contains(&run.repo)
            && seen.insert(run.repo.clone())
            && (source.forges)(&run.repo).is_some()
        {
            out.push(run.repo);
        }
    }
    out.sort_by_key(|r| r.to_string());
    out.dedup();
    Ok(out)
}

/// The repository named in the path, if it has a board.
async fn board_repo(state: &ApiState, owner: &str, name: &str) -> Result<RepoRef, ApiError> {
    let source = source(state)?;
    let repo = RepoRef::parse(&format!("{owner}/{name}"))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if repos(state, source).await?.contains(&repo) {
        Ok(repo)
    } else {
        Err(ApiError::NotFound(format!(
            "no board for {repo}: boards show the local forge's repositories and those Kiln has runs for"
        )))
    }
}

fn brief(run: &Run) -> RunBrief {
    RunBrief {
        id: run.id.0,
        role: run.role.as_str().to_owned(),
        state: run.state,
        number: run.number,
        reason: run.reason.clone(),
    }
}

/// The board of `repo`, read from its forge and the store now.
pub async fn build(state: &ApiState, repo: &RepoRef) -> Result<Board, ApiError> {
    let source = source(state)?;
    let forge: Arc<dyn Forge> = (source.forges)(repo)
        .ok_or_else(|| ApiError::NotFound(format!("no forge serves {repo}")))?;
    let (issues, prs, runs) = tokio::join!(
        forge.list_issues(StateFilter::Open),
        forge.list_pull_requests(StateFilter::Open),
        state.store.list_runs(RunFilter {
            repo: Some(repo.clone()),
            limit: Some(MAX_RUNS),
            ..RunFilter::default()
        }),
    );
    let issues = issues.map_err(|e| forge_error(repo, e))?;
    let prs = prs.map_err(|e| forge_error(repo, e))?;
    let runs = runs?;
    // Only implementation pull requests can make an issue verified: ask
    // the forge for those statuses only, all at once.
    let implementation: Vec<u64> = prs
        .iter()
        .filter(|pr| {
            issues
                .iter()
                .any(|i| board::link(i.number, pr) == Some(PrKind::Implementation))
        })
        .map(|pr| pr.issue.number)
        .collect();
    let statuses = futures_util::future::join_all(implementation.iter().map(|n| {
        let forge = forge.clone();
        async move { (*n, forge.list_statuses(*n).await) }
    }))
    .await;
    let mut verification: HashMap<u64, StatusState> = HashMap::new();
    for (n, result) in statuses {
        match result {
            Ok(list) => {
                if let Some(s) = list.iter().find(|s| s.context == VERIFICATION_CONTEXT) {
                    verification.insert(n, s.state);
                }
            }
            // A pull request closed meanwhile, or a head branch gone: the
            // card just shows no verification.
            Err(e) => tracing::warn!(%repo, pr = n, error = %e, "board: statuses unreadable"),
        }
    }
    let web = source
        .web_url
        .as_deref()
        .filter(|_| repo.owner != "local")
        .map(|w| w.trim_end_matches('/').to_owned());
    let cards = issues
        .iter()
        .map(|issue| {
            let linked: Vec<(&crate::forge::PullRequest, PrKind)> = prs
                .iter()
                .filter_map(|pr| board::link(issue.number, pr).map(|k| (pr, k)))
                .collect();
            let numbers: HashSet<u64> = linked
                .iter()
                .map(|(pr, _)| pr.issue.number)
                .chain([issue.number])
                .collect();
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| numbers.contains(&r.number))
                .collect();
            let facts: Vec<RunFact> = mine
                .iter()
                .map(|r| RunFact {
                    id: r.id,
                    role: r.role,
                    state: r.state,
                })
                .collect();
            let prs_linked: Vec<LinkedPr> = linked
                .iter()
                .map(|(pr, kind)| LinkedPr {
                    number: pr.issue.number,
                    kind: *kind,
                    labels: pr.issue.labels.clone(),
                    verification: verification.get(&pr.issue.number).copied(),
                })
                .collect();
            let placed = board::place(&issue.labels, &prs_linked, &facts);
            Card {
                number: issue.number,
                title: issue.title.clone(),
                author: issue.author.clone(),
                labels: issue.labels.clone(),
                stage: placed.stage,
                why: placed.why,
                active_run: placed
                    .active_run
                    .and_then(|id| mine.iter().find(|r| r.id == id))
                    .map(|r| brief(r)),
                runs: mine.iter().take(RUNS_PER_CARD).map(|r| brief(r)).collect(),
                pull_requests: linked
                    .iter()
                    .map(|(pr, kind)| PrBrief {
                        number: pr.issue.number,
                        kind: *kind,
                        title: pr.issue.title.clone(),
                        draft: pr.draft,
                        head: pr.head_branch.clone(),
                        verification: verification.get(&pr.issue.number).copied(),
                        url: web
                            .as_ref()
                            .map(|w| format!("{w}/{repo}/pull/{}", pr.issue.number)),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Board {
        repo: repo.to_string(),
        stages: Stage::ALL
            .into_iter()
            .map(|id| Column {
                id,
                title: id.title().to_owned(),
            })
            .collect(),
        issues: cards,
    })
}

/// The board as served: redacted (defence in depth, as for events: run
/// reasons and forge text pass the redactor on the way out).
pub(super) async fn served(state: &ApiState, repo: &RepoRef) -> Result<Board, ApiError> {
    let board = build(state, repo).await?;
    let internal = |e: serde_json::Error| ApiError::Internal(format!("board of {repo}: {e}"));
    let mut v = serde_json::to_value(&board).map_err(internal)?;
    redact_json(&state.redactor, &mut v);
    serde_json::from_value(v).map_err(internal)
}

/// `GET /repos`: the repositories with a board.
pub async fn list(State(state): State<ApiState>, _caller: Viewer) -> Result<Response, ApiError> {
    let repos = match &state.board {
        Some(source) => repos(&state, source).await?,
        None => Vec::new(),
    };
    let names: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
    Ok(Json(json!({ "repos": names })).into_response())
}

/// The repositories with a board, for the boards page.
pub(super) async fn list_for_page(state: &ApiState) -> Result<Vec<RepoRef>, ApiError> {
    match &state.board {
        Some(source) => repos(state, source).await,
        None => Ok(Vec::new()),
    }
}

/// The repository named by a page's path, if it has a board.
pub(super) async fn page_repo(
    state: &ApiState,
    owner: &str,
    name: &str,
) -> Result<RepoRef, ApiError> {
    board_repo(state, owner, name).await
}

/// `GET /repos/{owner}/{name}/board`.
pub async fn show(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let repo = board_repo(&state, &owner, &name).await?;
    Ok(Json(served(&state, &repo).await?).into_response())
}

/// `GET /repos/{owner}/{name}/board/events`: SSE of the board.
pub async fn events(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let repo = board_repo(&state, &owner, &name).await?;
    let rx = state.boards.subscribe(&state, repo);
    let body = feed(rx).map(Ok::<_, Infallible>);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies that buffer would hold the board back.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The latest frame of a watched board (`None` until the first build).
type Latest = Option<Bytes>;

/// The shared pollers, one per watched repository.
#[derive(Default)]
pub(super) struct Hub {
    watches: Mutex<HashMap<RepoRef, Arc<watch::Sender<Latest>>>>,
}

impl Hub {
    /// A receiver of `repo`'s board frames, starting its poller if none runs.
    fn subscribe(&self, state: &ApiState, repo: RepoRef) -> watch::Receiver<Latest> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watches.get(&repo) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        watches.insert(repo.clone(), tx.clone());
        tokio::spawn(poll(state.clone(), repo, tx));
        rx
    }

    /// Forget `repo`'s poller if nobody watches it any more; decided under
    /// the lock, so a watcher arriving now either finds the poller before
    /// this or starts a new one after it.
    fn release(&self, repo: &RepoRef, tx: &watch::Sender<Latest>) -> bool {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if tx.receiver_count() == 0 {
            watches.remove(repo);
            true
        } else {
            false
        }
    }
}

/// What the runs of a repository look like now: a hash of each run's id,
/// state and last change (newest runs first; one indexed query).
async fn runs_fingerprint(state: &ApiState, repo: &RepoRef) -> Option<u64> {
    let runs = state
        .store
        .list_runs(RunFilter {
            repo: Some(repo.clone()),
            limit: Some(MAX_RUNS),
            ..RunFilter::default()
        })
        .await
        .ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in &runs {
        (r.id.0, r.state.as_str(), r.updated_ms).hash(&mut h);
    }
    Some(h.finish())
}

/// One SSE frame; the data is compact JSON, which never holds a raw newline.
fn frame(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// The poller of one repository's board.
async fn poll(state: ApiState, repo: RepoRef, tx: Arc<watch::Sender<Latest>>) {
    let Some(source) = state.board.clone() else {
        return;
    };
    let forge_every = source.poll_interval(&repo);
    let mut tick = tokio::time::interval(STORE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_runs = None;
    let mut last_read: Option<Instant> = None;
    let mut last_data = String::new();
    loop {
        tick.tick().await;
        if state.boards.release(&repo, &tx) {
            return;
        }
        let runs = runs_fingerprint(&state, &repo).await;
        let due = last_read.is_none_or(|t| t.elapsed() >= forge_every);
        if runs == last_runs && !due {
            continue;
        }
        last_runs = runs;
        last_read = Some(Instant::now());
        let (name, data) = match served(&state, &repo).await {
            Ok(board) => match serde_json::to_string(&board) {
                Ok(data) => ("board", data),
                Err(e) => (
                    "stream-error",
                    json!({ "message": format!("board unserializable: {e}") }).to_string(),
                ),
            },
            Err(e) => {
                if let ApiError::Internal(detail) = &e {
                    tracing::error!(%repo, error = %detail, "board: reading failed");
                }
                let message = match e {
                    ApiError::Internal(_) => {
                        "reading the board failed (the runner's log says why)".to_owned()
                    }
                    other => other.to_string(),
                };
                ("stream-error", json!({ "message": message }).to_string())
            }
        };
        let data = format!("{name}\n{data}");
        if data != last_data {
            let (name, body) = data.split_once('\n').unwrap_or(("board", ""));
            tx.send_replace(Some(frame(name, body)));
            last_data = data;
        }
    }
}

/// A watcher's SSE body: the current frame, then each new one, with a
/// keep-alive comment when nothing changed for a while.
fn feed(rx: watch::Receiver<Latest>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
        if first {
            let now = rx.borrow_and_update().clone();
            if let Some(frame) = now {
                return Some((frame, (rx, false)));
            }
        }
        loop {
            match tokio::time::timeout(KEEP_ALIVE, rx.changed()).await {
                Ok(Ok(())) => {
                    let now = rx.borrow_and_update().clone();
                    if let Some(frame) = now {
                        return Some((frame, (rx, false)));
                    }
                }
                // The poller is gone (the server is shutting down).
                Ok(Err(_)) => return None,
                Err(_) => return Some((Bytes::from_static(b": keep-alive\n\n"), (rx, false))),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_web_urls_come_from_the_api_url() {
        assert_eq!(
            github_web_url("https://api.github.com"),
            "https://github.com"
        );
        assert_eq!(
            github_web_url("https://api.github.com/"),
            "https://github.com"
        );
        assert_eq!(
            github_web_url("https://ghe.example.com/api/v3"),
            "https://ghe.example.com"
        );
    }
}
