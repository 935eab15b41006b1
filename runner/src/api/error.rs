//! One error type for every API handler, one JSON shape for every error:
//! `{"error": "<code>", "message": "<what is wrong>"}`.
//!
//! Errors caused by the request keep their own status and say precisely
//! what is wrong. Internal errors answer only "internal error"; the detail
//! rides on the response as an extension and [`log_internal`] logs it, so
//! nothing about the host leaks to a caller.
use axum::Json;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::control::ControlError;
use crate::store::StoreError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that are not a live token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid token whose scope does not cover the request (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such run, effect, token or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not served on this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the run's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than the API accepts (413).
    #[error("{0}")]
    TooLarge(String),
    /// Something failed on our side (500); the text is logged, not served.
    #[error("{0}")]
    Internal(String),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// A stable machine-readable code (`unauthorized`, `not_found`, …).
    pub error: String,
    /// What is wrong, for people.
    pub message: String,
}

/// The detail of an internal error, attached to its response for logging.
#[derive(Debug, Clone)]
pub struct InternalDetail(pub String);

impl ApiError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::TooLarge(_) => "payload_too_large",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let (message, detail) = match self {
            ApiError::Internal(detail) => ("internal error".to_owned(), Some(detail)),
            other => (other.to_string(), None),
        };
        let body = ErrorBody {
            error: code.to_owned(),
            message,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"kiln\""),
            );
        }
        if let Some(detail) = detail {
            response.extensions_mut().insert(InternalDetail(detail));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchRun(_)
            | StoreError::NoSuchEffect { .. }
            | StoreError::NotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::IllegalTransition { .. }
            | StoreError::AlreadyDecided { .. }
            | StoreError::EffectAlreadyHeld { .. }
            // Another runner took the run over: it, not this one, acts on it now.
            | StoreError::LeaseLost { .. } => ApiError::Conflict(e.to_string()),
            // An invalid argument reaching the store is a request the API
            // should have refused; a malformed stored value is ours.
            StoreError::Invalid(_)
            | StoreError::Database(_)
            | StoreError::Closed
            | StoreError::HostKey(_)
            | StoreError::SchemaTooNew { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(m) => ApiError::NotFound(m),
            ControlError::Conflict(m) => ApiError::Conflict(m),
            ControlError::Invalid(m) => ApiError::BadRequest(m),
            ControlError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// Logs the detail of internal errors (it is never served).
pub async fn log_internal(method: Method, uri: Uri, response: Response) -> Response {
    if let Some(InternalDetail(detail)) = response.extensions().get::<InternalDetail>() {
        tracing::error!(%method, path = uri.path(), error = %detail, "api request failed");
    }
    response
}

/// Answer for paths the API does not serve.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Answer for a method the path does not serve.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not served on {}", uri.path()))
}
