//! A run's events, two ways:
//! - **SSE** (`Accept: text/event-stream`): the backlog after
//!   `Last-Event-ID` (or `?after=N`), then live events, each exactly once in
//!   `seq` order (the store's subscription guarantees it). Every event's SSE
//!   `id` is its `seq`, so a reconnecting `EventSource` resumes where it
//!   stopped. When the run reaches a final state the stream sends what is
//!   left, then one `event: end` carrying the state, and closes. A store
//!   failure mid-stream sends `event: stream-error` and closes (the client
//!   resumes with `Last-Event-ID`).
//! - **JSON** (anything else): one page after `?after=N`, for clients that
//!   poll.
//!
//! Every event is redacted again before it is served.
use std::time::Duration;

use std::convert::Infallible;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use futures_util::stream::ReadyChunks;
use serde_json::{Value, json};
use tokio::time::{Interval, MissedTickBehavior};

use super::ApiState;
use super::auth::Viewer;
use super::error::ApiError;
use super::params::{self, Query};
use crate::policy::Redactor;
use crate::store::{EventStream, RunId, StoredEvent};

/// Most events one JSON page (or one catch-up read) holds.
pub const MAX_PAGE: u64 = 1000;

/// How often an idle stream asks the store whether its run has ended: the
/// store has no state-change feed, and a run may end without a last event.
const STATE_CHECK: Duration = Duration::from_secs(1);

/// Idle state checks between keep-alive comments (15 s).
const KEEP_ALIVE_TICKS: u32 = 15;

/// Most events rendered into one chunk of the body.
const MAX_BATCH: usize = 256;

/// Redacts every string inside a JSON value.
pub(super) fn redact_json(redactor: &Redactor, value: &mut Value) {
    match value {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = redactor.redact(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_json(redactor, v)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_json(redactor, v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// An event as served: its message and every string of its kind redacted.
pub(super) fn redact_event(redactor: &Redactor, mut event: StoredEvent) -> StoredEvent {
    if let std::borrow::Cow::Owned(clean) = redactor.redact(&event.message) {
        event.message = clean;
    }
    redact_json(redactor, &mut event.kind);
    event
}

/// Every event of a run (redacted), read page by page.
pub(super) async fn all_events(state: &ApiState, run: RunId) -> Result<Vec<StoredEvent>, ApiError> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map(|e: &StoredEvent| e.seq).unwrap_or(0);
        let page = state
            .store
            .events_after(run, after, MAX_PAGE as usize)
            .await?;
        let full = page.len() == MAX_PAGE as usize;
        out.extend(page.into_iter().map(|e| redact_event(&state.redactor, e)));
        if !full {
            return Ok(out);
        }
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// `GET /runs/{id}/events`: SSE or a JSON page, by the `Accept` header.
pub async fn events(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let run = params::run_id(&id)?;
    let q = Query::parse(raw.as_deref(), &["after", "limit"], &[])?;
    let mut after = q.number("after", 0, i64::MAX as u64)?.unwrap_or(0);
    let limit = q.number("limit", 1, MAX_PAGE)?.unwrap_or(MAX_PAGE);
    let current = state.store.get_run(run).await?;
    if !wants_sse(&headers) {
        let page = state.store.events_after(run, after, limit as usize).await?;
        let complete = (page.len() as u64) < limit;
        let next_after = page.last().map(|e| e.seq).unwrap_or(after);
        let events: Vec<StoredEvent> = page
            .into_iter()
            .map(|e| redact_event(&state.redactor, e))
            .collect();
        return Ok(Json(json!({
            "events": events,
            "next_after": next_after,
            "state": current.state,
            // Nothing more will come: the run is final and this page is the last.
            "finished": current.state.is_terminal() && complete,
        }))
        .into_response());
    }
    if let Some(v) = headers.get("last-event-id") {
        // The standard resume point wins over ?after.
        after = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Last-Event-ID {v:?} is not an event seq (a whole number)"
                ))
            })?;
    }
    let sub = state.store.subscribe(run, after).await?;
    let body = feed(state, run, after, sub).map(Ok::<_, Infallible>);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies that buffer would hold live events back.
            (HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

enum Phase {
    /// Following the store's subscription, taking every event ready at once:
    /// with many watchers, one write (and one turn of this stream) per event
    /// per watcher is what would cost, not the events.
    Live(ReadyChunks<EventStream>),
    /// The run is final: serve what is left, page by page, then `end`.
    Draining,
    /// `end` (or `error`) was sent.
    Done,
}

struct Feed {
    state: ApiState,
    run: RunId,
    last: u64,
    phase: Phase,
    check: Interval,
    /// State checks since the last frame; a keep-alive goes out every [`KEEP_ALIVE_TICKS`].
    idle_ticks: u32,
}

/// The SSE body: one chunk per batch of frames.
fn feed(
    state: ApiState,
    run: RunId,
    after: u64,
    sub: EventStream,
) -> impl futures_util::Stream<Item = Bytes> {
    let mut check = tokio::time::interval(STATE_CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        state,
        run,
        last: after,
        phase: Phase::Live(sub.ready_chunks(MAX_BATCH)),
        check,
        idle_ticks: 0,
    };
    futures_util::stream::unfold(feed, |mut f| async move {
        let frame = next(&mut f).await?;
        Some((frame, f))
    })
}

/// One SSE frame: `event:` (if named), `data:` and `id:` lines, blank line.
/// The data is compact JSON, which never holds a raw newline.
fn frame(event: Option<&str>, id: Option<u64>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// One SSE frame, rendered once for all watchers of the run: the event is
/// shared (`Arc`) and only copied by the watcher that renders it.
fn sse_event(state: &ApiState, event: std::sync::Arc<StoredEvent>) -> Bytes {
    let (run, seq) = (event.run, event.seq);
    state.frames.get_or_render(run, seq, || {
        let event = redact_event(&state.redactor, std::sync::Arc::unwrap_or_clone(event));
        Bytes::from(match serde_json::to_string(&event) {
            Ok(data) => frame(None, Some(seq), &data),
            // Cannot happen for a StoredEvent; keep the seq so the client's resume point moves on.
            Err(e) => frame(
                Some("stream-error"),
                Some(seq),
                &json!({ "message": format!("event {seq} unserializable: {e}") }).to_string(),
            ),
        })
    })
}

fn error_event(message: String) -> Bytes {
    Bytes::from(frame(
        Some("stream-error"),
        None,
        &json!({ "message": message }).to_string(),
    ))
}

async fn next(f: &mut Feed) -> Option<Bytes> {
    loop {
        match &mut f.phase {
            Phase::Done => return None,
            Phase::Draining => {
                match f
                    .state
                    .store
                    .events_after(f.run, f.last, MAX_PAGE as usize)
                    .await
                {
                    Ok(page) if page.is_empty() => {
                        f.phase = Phase::Done;
                        return Some(end_event(&f.state, f.run, f.last).await);
                    }
                    Ok(page) => {
                        let frames: Vec<Bytes> = page
                            .into_iter()
                            .map(|event| {
                                f.last = event.seq;
                                sse_event(&f.state, std::sync::Arc::new(event))
                            })
                            .collect();
                        return Some(Bytes::from(frames.concat()));
                    }
                    Err(e) => {
                        f.phase = Phase::Done;
                        return Some(error_event(format!("reading events failed: {e}")));
                    }
                }
            }
            Phase::Live(sub) => {
                tokio::select! {
                    biased;
                    batch = sub.next() => match batch {
                        Some(batch) => {
                            let mut frames = Vec::with_capacity(batch.len());
                            for item in batch {
                                match item {
                                    Ok(event) => {
                                        f.last = event.seq;
                                        if event.kind.get("type").and_then(Value::as_str)
                                            == Some("finished")
                                        {
                                            // The run says it ended: look at its state now, not in a second.
                                            f.check.reset_immediately();
                                        }
                                        frames.push(sse_event(&f.state, event));
                                    }
                                    Err(e) => {
                                        // What came before the failure is still served.
                                        f.phase = Phase::Done;
                                        frames.push(error_event(format!("event stream failed: {e}")));
                                        break;
                                    }
                                }
                            }
                            f.idle_ticks = 0;
                            return Some(Bytes::from(frames.concat()));
                        }
                        None => {
                            f.phase = Phase::Draining;
                        }
                    },
                    _ = f.check.tick() => match f.state.store.get_run(f.run).await {
                        Ok(run) if run.state.is_terminal() => {
                            f.phase = Phase::Draining;
                        }
                        Ok(_) => {
                            f.idle_ticks += 1;
                            if f.idle_ticks >= KEEP_ALIVE_TICKS {
                                // A comment: keeps proxies and clients from timing out an idle stream.
                                f.idle_ticks = 0;
                                return Some(Bytes::from_static(b": keep-alive\n\n"));
                            }
                        }
                        Err(e) => {
                            f.phase = Phase::Done;
                            return Some(error_event(format!("reading the run failed: {e}")));
                        }
                    },
                }
            }
        }
    }
}

async fn end_event(state: &ApiState, run: RunId, last: u64) -> Bytes {
    match state.store.get_run(run).await {
        Ok(run) => {
            let mut data = json!({
                "run": run.id.0,
                "state": run.state,
                "reason": run.reason,
                "last_seq": last,
            });
            redact_json(&state.redactor, &mut data);
            Bytes::from(frame(Some("end"), None, &data.to_string()))
        }
        Err(e) => error_event(format!("reading the run failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_of_an_event_is_redacted() {
        let redactor = Redactor::new(&[]).expect("redactor");
        let token = "ghp_Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2";
        let event = StoredEvent {
            run: RunId(1),
            seq: 1,
            at_ms: 0,
            kind: json!({ "type": "proposal", "effect": token, "nested": [token] }),
            message: format!("token {token} leaked"),
        };
        let served = serde_json::to_string(&redact_event(&redactor, event)).expect("json");
        assert!(
            !served.contains(token),
            "a GitHub token shape should be redacted everywhere in the event, got {served}"
        );
        assert!(served.contains("[REDACTED:"), "got {served}");
    }
}
