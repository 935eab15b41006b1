//! The ledger over the API (issue 19 §5): `GET /runs/{id}/ledger` is the
//! run's transcript with its hash chain and seal, as `kiln runs export`
//! writes it, and `GET /runs/{id}/ledger/verify` is what `kiln runs verify`
//! says about the stored log, checked with this runner's host key.
//!
//! The export's event texts pass the redactor again, like every event the
//! API serves. The gate redacted them when they were recorded, so this
//! changes nothing; if it ever does (a secret configured after the run), the
//! event it changed no longer matches its hash offline, which is the truth:
//! the served text is not what was recorded. The verify route checks the
//! stored events as they are.
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::Viewer;
use super::error::ApiError;
use super::events::redact_json;
use super::params;
use crate::ledger::{Transcript, Verdict};

/// The answer of `GET /runs/{id}/ledger/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCheck {
    /// Nothing was found tampered with (signed, or a run in progress
    /// whose chain so far links up).
    pub ok: bool,
    /// How many events were checked.
    pub events: u64,
    /// `signed`, `in-progress`, `broken` (an event does not match its
    /// chain) or `bad-seal` (the signature is missing, wrong or another key's).
    pub verdict: String,
    /// The event it is about: the signed head, or the first broken event.
    pub seq: Option<u64>,
    /// What `kiln runs verify` prints.
    pub message: String,
    /// The key it was checked with (`ed25519:<hex>`): this runner's.
    pub public_key: String,
}

/// `GET /runs/{id}/ledger`: the run's transcript with its chain and seal.
pub async fn export(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Transcript>, ApiError> {
    let id = params::run_id(&id)?;
    let mut t = state.store.transcript(id).await?;
    for e in &mut t.events {
        if let std::borrow::Cow::Owned(clean) = state.redactor.redact(&e.message) {
            e.message = clean;
        }
        redact_json(&state.redactor, &mut e.kind);
    }
    Ok(Json(t))
}

/// `GET /runs/{id}/ledger/verify`: the stored chain recomputed and the seal
/// checked with this runner's key.
pub async fn verify(
    State(state): State<ApiState>,
    _caller: Viewer,
    Path(id): Path<String>,
) -> Result<Json<LedgerCheck>, ApiError> {
    let id = params::run_id(&id)?;
    let Some(key) = &state.ledger_key else {
        return Err(ApiError::Internal(
            "the API was started without the ledger's public key".into(),
        ));
    };
    let t = state.store.transcript(id).await?;
    let v = t.verify(key);
    let (verdict, seq) = match &v.verdict {
        Verdict::Signed { seq } => ("signed", Some(*seq)),
        Verdict::InProgress { signed_through } => ("in-progress", *signed_through),
        Verdict::Broken { seq, .. } => ("broken", Some(*seq)),
        Verdict::BadSeal { .. } => ("bad-seal", None),
    };
    Ok(Json(LedgerCheck {
        ok: v.ok(),
        events: v.events,
        verdict: verdict.into(),
        seq,
        message: v.to_string(),
        public_key: key.to_string(),
    }))
}
