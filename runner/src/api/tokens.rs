//! API tokens (admin only): create (the plaintext is answered once), list,
//! revoke. Hashes never leave the store.
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ApiState;
use super::auth::Admin;
use super::error::ApiError;
use super::params;
use crate::store::{ApiToken, TokenScope};

/// Longest token name.
const MAX_NAME: usize = 64;

/// A token as served: everything but its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenView {
    /// Id (what `DELETE /tokens/{id}` takes).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Scope.
    pub scope: TokenScope,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: i64,
    /// Revocation time, once revoked.
    pub revoked_ms: Option<i64>,
}

impl From<ApiToken> for TokenView {
    fn from(t: ApiToken) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            scope: t.scope,
            created_ms: t.created_ms,
            revoked_ms: t.revoked_ms,
        }
    }
}

/// A token name: 1-64 letters, digits, `-`, `_`, `.`, `@` or spaces.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.trim().is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | ' '));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?} must be 1-{MAX_NAME} letters, digits, spaces, '-', '_', '.' or '@'"
        ))
    }
}

/// Body of `POST /tokens`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// A name for people (shown as who acted).
    pub name: String,
    /// `viewer`, `operator` or `admin`.
    pub scope: TokenScope,
}

/// `POST /tokens`: create a token; its plaintext is in this answer only.
pub async fn create(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let CreateBody { name, scope } = params::json_body(body)?;
    valid_name(&name).map_err(ApiError::BadRequest)?;
    let created = state.store.create_token(&name, scope).await?;
    tracing::info!(by = %caller.name, token = %name, scope = scope.as_str(), "token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "token": TokenView::from(created.token),
            "plaintext": created.plaintext,
        })),
    ))
}

/// `GET /tokens`: every token, revoked ones included.
pub async fn list(
    State(state): State<ApiState>,
    _caller: Admin,
) -> Result<Json<serde_json::Value>, ApiError> {
    let tokens: Vec<TokenView> = state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(TokenView::from)
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `DELETE /tokens/{id}`: revoke a token (revoking twice is fine).
pub async fn revoke(
    State(state): State<ApiState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0 && i64::try_from(*n).is_ok() && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ApiError::BadRequest(format!("token id {id:?} is not a positive number")))?;
    let token = state.store.revoke_token(id).await?;
    tracing::info!(by = %caller.name, token = %token.name, "token revoked");
    Ok(Json(token.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_names_are_short_and_plain() {
        assert!(valid_name("ci bot@host-1").is_ok());
        for bad in ["", "  ", "a\nb", "<script>", &"x".repeat(65)] {
            assert!(valid_name(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
