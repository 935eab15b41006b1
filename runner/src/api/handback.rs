//! Handback: the run's work and its transcript, as three downloads.
//! - `GET /runs/{id}/handback`: the git bundle of the run's branch
//!   (`application/octet-stream`), its branch name in `X-Kiln-Branch`;
//! - `GET /runs/{id}/transcript.jsonl`: every event, one JSON object a line;
//! - `GET /runs/{id}/transcript.md`: the same, readable.
//!
//! Separate endpoints rather than one archive: each is useful alone (`curl`
//! the transcript of a failed run that has no bundle), and the CLI fetches
//! all three for `kiln handback`. Transcripts are redacted like every event
//! served.
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::auth::Viewer;
use super::error::ApiError;
use super::events::{all_events, redact_json};
use super::params;
use crate::store::{Run, StoredEvent};

/// Header naming the branch inside the bundle.
pub const BRANCH_HEADER: &str = "x-kiln-branch";

/// `GET /runs/{id}/handback`: the run's git bundle.
pub async fn bundle(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = params::run_id(&id)?;
    state.store.get_run(id).await?;
    let handback = state.control.handback(id.0).await?;
    let bytes = tokio::fs::read(&handback.bundle).await.map_err(|e| {
        ApiError::Internal(format!(
            "cannot read the bundle of run {id} at {}: {e}",
            handback.bundle.display()
        ))
    })?;
    let branch = HeaderValue::from_str(&handback.branch).map_err(|_| {
        ApiError::Internal(format!(
            "run {id}'s branch {:?} is not a header value",
            handback.branch
        ))
    })?;
    let disposition =
        HeaderValue::from_str(&format!("attachment; filename=\"run-{}.bundle\"", id.0))
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        [(BRANCH_HEADER, branch)],
        Body::from(bytes),
    )
        .into_response())
}

/// `GET /runs/{id}/transcript.jsonl`: every event, one JSON object a line.
pub async fn transcript_jsonl(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = params::run_id(&id)?;
    state.store.get_run(id).await?;
    let mut out = String::new();
    for event in all_events(&state, id).await? {
        let line = serde_json::to_string(&event)
            .map_err(|e| ApiError::Internal(format!("cannot serialize event: {e}")))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

/// `GET /runs/{id}/transcript.md`: the transcript for people.
pub async fn transcript_md(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = params::run_id(&id)?;
    let run = state.store.get_run(id).await?;
    let mut run_v = serde_json::to_value(&run)
        .map_err(|e| ApiError::Internal(format!("cannot serialize run: {e}")))?;
    redact_json(&state.redactor, &mut run_v);
    let run: Run = serde_json::from_value(run_v)
        .map_err(|e| ApiError::Internal(format!("cannot re-read run: {e}")))?;
    let events = all_events(&state, id).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
        markdown(&run, &events),
    )
        .into_response())
}

/// A fence longer than any backtick run in `text`, so untrusted text cannot
/// close its code block and turn into Markdown (links, images, HTML).
fn fence(text: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    "`".repeat((longest + 1).max(3))
}

/// The readable transcript: a header about the run, then each event with
/// its text in a code block (event text is untrusted).
pub fn markdown(run: &Run, events: &[StoredEvent]) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Run {} — {} on {}#{}\n",
        run.id, run.role, run.repo, run.number
    );
    let _ = writeln!(md, "- state: {}", run.state);
    if let Some(reason) = &run.reason {
        let _ = writeln!(md, "- reason: {}", reason.replace('\n', " "));
    }
    if let Some(branch) = &run.branch {
        let _ = writeln!(md, "- branch: `{branch}`");
    }
    let _ = writeln!(
        md,
        "- trigger: {} ({})",
        run.trigger.actor,
        trigger_name(run)
    );
    let _ = writeln!(md, "- events: {}\n", events.len());
    for e in events {
        let kind = e.type_name();
        let extra = e.kind_fields(": ");
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join(", ").replace('\n', " "))
        };
        let _ = writeln!(md, "## {}. {kind}{extra}\n", e.seq);
        let f = fence(&e.message);
        let _ = writeln!(md, "{f}text\n{}\n{f}\n", e.message);
    }
    md
}

fn trigger_name(run: &Run) -> String {
    serde_json::to_value(&run.trigger.kind)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_outlasts_any_backticks_in_the_text() {
        assert_eq!(fence("plain"), "```");
        assert_eq!(fence("a ```` b"), "`````");
    }
}
