//! `GET /metrics`: the process's metrics ([`crate::metrics`]) in
//! Prometheus' text format, with the store's run counts read at each
//! scrape. It needs a `viewer` token like every other read: the service is
//! reachable from wherever GitHub's webhooks come, and the counts say what
//! the factory is doing (Prometheus sends the token with
//! `authorization: { credentials_file: ... }` in its scrape config).
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::ApiState;
use super::auth::Viewer;
use super::error::ApiError;

/// `GET /metrics`.
pub async fn metrics(
    State(state): State<ApiState>,
    _caller: Viewer,
) -> Result<impl IntoResponse, ApiError> {
    let runs = state.store.run_counts().await?;
    let text = crate::metrics::global().encode(&runs);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}
