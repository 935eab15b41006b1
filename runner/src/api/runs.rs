//! Runs: list and show (from the store), and the operator actions that reach
//! a live run through [`crate::control::RunControl`] (steer, approve or deny
//! a held effect, cancel).
//!
//! Before calling `RunControl` the API checks the store, so an unknown run
//! is always a 404 and a finished one a 409, whoever implements the control.
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{Operator, Viewer};
use super::error::ApiError;
use super::events::redact_json;
use super::params::{self, Query};
use crate::config::Role;
use crate::control::EffectDecision;
use crate::forge::RepoRef;
use crate::store::{ApprovalState, Run, RunFilter, RunId, RunState};

/// Longest steering message accepted (the plugin side's cap on a message).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Longest reason for a decision.
const MAX_REASON_BYTES: usize = 4 * 1024;

/// Most runs one page may hold.
const MAX_LIMIT: u64 = 1000;

/// `GET /healthz`: the process answers and the store reads.
pub async fn healthz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    state
        .store
        .list_runs(RunFilter {
            limit: Some(1),
            ..RunFilter::default()
        })
        .await?;
    Ok(Json(json!({ "ok": true })))
}

/// A run as served: the store's record with every text redacted.
pub(super) fn run_json(state: &ApiState, run: &Run) -> Result<Value, ApiError> {
    let mut v = serde_json::to_value(run)
        .map_err(|e| ApiError::Internal(format!("cannot serialize run {}: {e}", run.id)))?;
    redact_json(&state.redactor, &mut v);
    Ok(v)
}

/// The filter `GET /runs` understands, from its query string.
pub(super) fn filter(raw: Option<&str>) -> Result<RunFilter, ApiError> {
    let q = Query::parse(
        raw,
        &["repo", "number", "role", "state", "before", "limit"],
        &["state"],
    )?;
    let repo = q
        .get("repo")
        .map(|r| {
            RepoRef::parse(r)
                .map_err(|e| ApiError::BadRequest(format!("query parameter repo={r:?}: {e}")))
        })
        .transpose()?;
    let role = q
        .get("role")
        .map(|r| {
            r.parse::<Role>()
                .map_err(|e| ApiError::BadRequest(format!("query parameter role: {e}")))
        })
        .transpose()?;
    let states = q
        .list("state")
        .into_iter()
        .map(|s| {
            s.parse::<RunState>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "query parameter state={s:?} is not a run state ({})",
                    RunState::ALL.map(RunState::as_str).join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let before = q.number("before", 1, i64::MAX as u64)?.map(RunId);
    let limit = q.number("limit", 1, MAX_LIMIT)?.map(|n| n as usize);
    Ok(RunFilter {
        repo,
        number: q.number("number", 1, i64::MAX as u64)?,
        role,
        states,
        before,
        limit,
    })
}

/// `GET /runs`: runs matching the filters, newest first.
pub async fn list(
    State(state): State<ApiState>,
    _caller: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let filter = filter(raw.as_deref())?;
    let limit = filter.limit.unwrap_or(100);
    let runs = state.store.list_runs(filter).await?;
    let next_before = (runs.len() >= limit)
        .then(|| runs.last().map(|r| r.id.0))
        .flatten();
    let runs = runs
        .iter()
        .map(|r| run_json(&state, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "runs": runs, "next_before": next_before })))
}

/// `GET /runs/{id}`: one run.
pub async fn show(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = state.store.get_run(params::run_id(&id)?).await?;
    Ok(Json(run_json(&state, &run)?))
}

/// The run, which must exist and not be finished.
pub(super) async fn live_run(state: &ApiState, id: RunId, action: &str) -> Result<Run, ApiError> {
    let run = state.store.get_run(id).await?;
    if run.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "cannot {action} run {id}: it is {}",
            run.state
        )));
    }
    Ok(run)
}

/// Largest model script accepted with a queued run.
pub const MAX_SCRIPT_BYTES: usize = 200 * 1024;

/// Body of `POST /runs`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueBody {
    /// `owner/name`.
    pub repo: String,
    /// The role to run.
    pub role: String,
    /// The issue (or, for review and verification, the pull request).
    pub number: u64,
    /// A model script (JSON text) replayed for this run instead of the runner's model.
    #[serde(default)]
    pub script: Option<String>,
    /// Named arguments of an `improve` run (`target`, `since`).
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, String>,
}

/// `POST /runs`: queue a run, as the operator holding the token. The target
/// must exist and be the kind the role works on; nothing is queued otherwise.
pub async fn queue(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let QueueBody {
        repo,
        role,
        number,
        script,
        args,
    } = params::json_body(body)?;
    let repo =
        RepoRef::parse(&repo).map_err(|e| ApiError::BadRequest(format!("repo {repo:?}: {e}")))?;
    let role = role
        .parse::<Role>()
        .map_err(|e| ApiError::BadRequest(format!("role: {e}")))?;
    // The outer loop works on the repository as a whole (number 0).
    let on_repo = role == Role::Improve;
    if on_repo && number != 0 {
        return Err(ApiError::BadRequest(format!(
            "number {number}: improve works on the repository as a whole; pass 0"
        )));
    }
    if !on_repo && !args.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "args are for improve runs, not {role}"
        )));
    }
    if (!on_repo && number == 0) || number > i64::MAX as u64 {
        return Err(ApiError::BadRequest(format!(
            "number {number} is not an issue or pull request number"
        )));
    }
    if script.as_ref().is_some_and(|s| s.len() > MAX_SCRIPT_BYTES) {
        return Err(ApiError::BadRequest(format!(
            "script is longer than {MAX_SCRIPT_BYTES} bytes"
        )));
    }
    tracing::info!(%repo, %role, number, by = %caller.name, "queue");
    let id = state
        .control
        .queue(crate::control::QueueRun {
            repo,
            role,
            number,
            by: caller.name,
            script,
            args: args.into_iter().collect(),
        })
        .await?;
    let run = state.store.get_run(RunId(id)).await?;
    Ok((StatusCode::CREATED, Json(run_json(&state, &run)?)))
}

/// Body of `POST /runs/{id}/messages`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SteerBody {
    /// The message for the plugin.
    pub message: String,
}

/// `POST /runs/{id}/messages`: queue a steering message for the plugin.
pub async fn steer(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let id = params::run_id(&id)?;
    let SteerBody { message } = params::json_body(body)?;
    if message.trim().is_empty() {
        return Err(ApiError::BadRequest("message must not be empty".into()));
    }
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::BadRequest(format!(
            "message is {} bytes; at most {MAX_MESSAGE_BYTES}",
            message.len()
        )));
    }
    live_run(&state, id, "steer").await?;
    tracing::info!(run = %id, by = %caller.name, "steering message");
    state.control.steer(id.0, message, caller.name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": id.0, "queued": true })),
    ))
}

/// `GET /runs/{id}/approvals`: the run's effects waiting for a decision.
pub async fn approvals(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = params::run_id(&id)?;
    state.store.get_run(id).await?;
    let pending = state.store.pending_effects(id).await?;
    let mut v = serde_json::to_value(&pending)
        .map_err(|e| ApiError::Internal(format!("cannot serialize approvals: {e}")))?;
    redact_json(&state.redactor, &mut v);
    Ok(Json(json!({ "approvals": v })))
}

/// Body of `POST /runs/{id}/approvals/{effect}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// Approve (true) or deny (false).
    pub approve: bool,
    /// Why, shown in the run's events.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /runs/{id}/approvals/{effect}`: approve or deny a held effect.
pub async fn decide(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    Path((id, effect)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = params::run_id(&id)?;
    let effect = params::effect_id(&effect)?;
    let DecideBody { approve, reason } = params::json_body(body)?;
    if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
        return Err(ApiError::BadRequest(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        )));
    }
    let reason = reason.filter(|r| !r.trim().is_empty());
    live_run(&state, id, "decide an effect of").await?;
    let held = state.store.get_effect(id, effect).await?;
    if held.state != ApprovalState::Pending {
        return Err(ApiError::Conflict(format!(
            "effect {effect:?} of run {id} was already {} by {}",
            held.state,
            held.decided_by.as_deref().unwrap_or("someone")
        )));
    }
    let decision = EffectDecision {
        approve,
        by: caller.name,
        reason,
    };
    state.control.decide(id.0, effect, decision).await?;
    Ok(Json(json!({
        "run": id.0,
        "effect": effect,
        "decision": if approve { "approved" } else { "denied" },
    })))
}

/// Largest `kiln resume` body: a bundle of an operator's commits, base64.
pub const MAX_RESUME_BYTES: usize = 64 << 20;

/// Body of `POST /runs/{id}/resume`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeBody {
    /// A note for the agent; it becomes the run's instructions.
    #[serde(default)]
    pub note: Option<String>,
    /// A git bundle (base64) of commits on top of the run's branch.
    #[serde(default)]
    pub bundle: Option<String>,
}

/// `POST /runs/{id}/resume`: continue a finished run from its last work,
/// plus the operator's commits, with a note for the agent.
pub async fn resume(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    use base64::Engine as _;
    let id = params::run_id(&id)?;
    let ResumeBody { note, bundle } = params::json_body(body)?;
    if note.as_ref().is_some_and(|n| n.len() > MAX_MESSAGE_BYTES) {
        return Err(ApiError::BadRequest(format!(
            "note is longer than {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    let note = note.filter(|n| !n.trim().is_empty());
    let bundle = bundle
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()))
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("bundle is not base64: {e}")))?;
    let run = state.store.get_run(id).await?;
    if !run.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "cannot resume run {id}: it is {} (only a finished run can be resumed)",
            run.state
        )));
    }
    tracing::info!(run = %id, by = %caller.name, "resume");
    let resume = crate::control::Resume {
        by: caller.name,
        note,
        bundle,
    };
    state.control.resume(id.0, resume).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": id.0, "queued": true })),
    ))
}

/// `POST /runs/{id}/cancel`: stop the run.
pub async fn cancel(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = params::run_id(&id)?;
    live_run(&state, id, "cancel").await?;
    tracing::info!(run = %id, by = %caller.name, "cancel");
    state.control.cancel(id.0, caller.name).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": id.0, "cancelling": true })),
    ))
}
