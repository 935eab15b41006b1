//! The runner API (axum): runs and their events (JSON and SSE), operator
//! actions on live runs (steer, approve or deny held effects, cancel,
//! attach a shell),
//! handback, API tokens, the OpenAPI document, the metrics and the dashboard.
//!
//! Reads go to the [`RunStore`]; actions that reach a live run go through
//! [`RunControl`]. Every route but `/healthz`, `/openapi.json` and the
//! dashboard's login page needs a bearer token (`Authorization: Bearer
//! kiln_…`) whose scope covers it: `viewer` reads, `operator` also acts on
//! runs, `admin` also manages tokens. Everything served from the event log is
//! redacted again on the way out (defence in depth: the gate redacted it
//! when it was recorded).
//!
//! One submodule per concern: [`auth`] (tokens, scopes, the dashboard
//! cookie), [`error`] (one error type, one JSON shape), `runs` (run reads and
//! actions), `events` (the JSON and SSE event feeds), `handback`, `tokens`,
//! `openapi`, `dashboard`, [`ledger`] (a run's hash-chained, signed
//! transcript and its check), [`board`] (each open issue in the column of its
//! stage, as JSON and over SSE) and `board_page`, `frames` (SSE frames
//! rendered once for all watchers), and [`client`] (a typed client the CLI,
//! tests and benchmarks share).

mod attach;
pub mod auth;
pub mod board;
mod board_page;
pub mod client;
mod dashboard;
pub mod error;
mod events;
mod frames;
mod handback;
pub mod ledger;
mod metrics;
mod openapi;
mod params;
mod runs;
pub mod session;
pub mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::control::RunControl;
use crate::policy::Redactor;
use crate::store::RunStore;

pub use error::ApiError;

/// Largest request body accepted; steering messages and reasons are small,
/// and the plugin side caps a message at 64 KiB anyway.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    /// Runs, events, approvals and tokens.
    pub store: Arc<dyn RunStore>,
    /// Actions on live runs.
    pub control: Arc<dyn RunControl>,
    /// Applied to every event text served (again: defence in depth).
    pub redactor: Arc<Redactor>,
    /// Routes mounted beside the API (e.g. webhook intake at
    /// `/webhooks/github`); they carry their own state and their own auth.
    pub extra: Router,
    /// Where the boards read repositories from; `None`: no boards.
    pub board: Option<board::BoardSource>,
    /// The public half of the host key that signs the ledger, which
    /// `GET /runs/{id}/ledger/verify` checks seals with; `None`: that
    /// route answers an internal error.
    pub ledger_key: Option<crate::ledger::PublicKey>,
    /// SSE frames rendered once for every watcher.
    frames: Arc<frames::FrameCache>,
    /// The boards being watched, one poller each.
    boards: Arc<board::Hub>,
    /// Dashboard login links and sessions.
    sessions: Arc<session::Sessions>,
}

impl ApiState {
    /// State with no extra routes.
    pub fn new(
        store: Arc<dyn RunStore>,
        control: Arc<dyn RunControl>,
        redactor: Arc<Redactor>,
    ) -> Self {
        ApiState {
            store,
            control,
            redactor,
            extra: Router::new(),
            board: None,
            ledger_key: None,
            frames: Arc::default(),
            boards: Arc::default(),
            sessions: Arc::default(),
        }
    }

    /// Serve boards (`/repos/...`, `/ui/board/...`) of the repositories
    /// `source` lists, read through its forges.
    pub fn with_board(mut self, source: board::BoardSource) -> Self {
        self.board = Some(source);
        self
    }

    /// Check ledger seals with `key` (the host key's public half, `kiln
    /// runs pubkey`).
    pub fn with_ledger_key(mut self, key: crate::ledger::PublicKey) -> Self {
        self.ledger_key = Some(key);
        self
    }

    /// Mount `router` beside the API, e.g. `Router::new().nest("/webhooks/github",
    /// intake)`. Its paths must not overlap the API's and it must not set a
    /// fallback (the API's answers unknown paths with a JSON 404).
    pub fn with_extra(mut self, router: Router) -> Self {
        self.extra = self.extra.merge(router);
        self
    }
}

/// The runner API, the OpenAPI document and the dashboard as one router.
pub fn router(state: ApiState) -> Router {
    let extra = state.extra.clone();
    let api = Router::new()
        .route("/healthz", get(runs::healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::metrics))
        .route("/runs", get(runs::list).post(runs::queue))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/events", get(events::events))
        .route("/runs/{id}/messages", post(runs::steer))
        .route("/runs/{id}/approvals", get(runs::approvals))
        .route("/runs/{id}/approvals/{effect}", post(runs::decide))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/attach", get(attach::attach))
        .route(
            "/runs/{id}/resume",
            post(runs::resume).layer(DefaultBodyLimit::max(runs::MAX_RESUME_BYTES)),
        )
        .route("/runs/{id}/handback", get(handback::bundle))
        .route(
            "/runs/{id}/transcript.jsonl",
            get(handback::transcript_jsonl),
        )
        .route("/runs/{id}/transcript.md", get(handback::transcript_md))
        .route("/runs/{id}/ledger", get(ledger::export))
        .route("/runs/{id}/ledger/verify", get(ledger::verify))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/repos", get(board::list))
        .route("/repos/{owner}/{name}/board", get(board::show))
        .route("/repos/{owner}/{name}/board/events", get(board::events))
        .merge(dashboard::routes())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(error::log_internal))
        .with_state(state);
    api.merge(extra)
}
