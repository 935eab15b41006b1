//! Who is calling, and may they: bearer tokens looked up by their SHA-256
//! in the store, and the scope each route needs.
//!
//! - No credentials, a malformed header, an unknown or a revoked token:
//!   401, with a body saying which.
//! - A live token whose scope is below the route's: 403, naming both scopes.
//! - The dashboard's `HttpOnly`, `SameSite=Strict` cookie holds an opaque
//!   session id (see [`super::session`]), never the token; each request
//!   looks the session's token up again, so a revoked token's sessions end. A
//!   state-changing request authenticated by that cookie must also carry
//!   the [`CSRF_HEADER`] header: a cross-site form cannot set a custom
//!   header, and a cross-site script cannot without a CORS preflight the
//!   API never grants.
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};

use super::ApiState;
use super::error::ApiError;
use crate::store::{TokenScope, token_hash};

/// The dashboard's cookie holding the session id.
pub const COOKIE: &str = "kiln_session";

/// Header a cookie-authenticated state-changing request must carry (any value).
pub const CSRF_HEADER: &str = "x-kiln-csrf";

/// Every Kiln token starts with this.
pub const TOKEN_PREFIX: &str = "kiln_";

/// Longer than any token Kiln issues; refused before hashing.
const MAX_TOKEN_LEN: usize = 256;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id.
    pub token_id: u64,
    /// The token's name (recorded as who decided, cancelled, steered).
    pub name: String,
    /// What the token may do.
    pub scope: TokenScope,
    /// Whether the caller came through a dashboard session cookie.
    pub via_cookie: bool,
    /// The token's SHA-256 (what a dashboard session stands for).
    pub token_sha256: String,
}

impl Caller {
    /// 403 unless the caller's scope includes `needed`.
    pub fn require(&self, needed: TokenScope) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token {:?} has scope {}; this needs {}",
                self.name,
                self.scope.as_str(),
                needed.as_str()
            )))
        }
    }
}

/// Where the token was found.
enum Credential<'a> {
    Bearer(&'a str),
    Cookie(&'a str),
}

fn credential(headers: &HeaderMap) -> Result<Credential<'_>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            ApiError::Unauthorized("the Authorization header is not valid text".into())
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "the Authorization header must be `Bearer kiln_…` (an API token)".into(),
                )
            })?;
        return Ok(Credential::Bearer(token.trim()));
    }
    if let Some(token) = cookie(headers, COOKIE) {
        return Ok(Credential::Cookie(token));
    }
    Err(ApiError::Unauthorized(
        "no API token: send `Authorization: Bearer kiln_…` (create one with `kiln token create`)"
            .into(),
    ))
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// The caller behind a request's credentials, checked against the store.
pub async fn authenticate(
    state: &ApiState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let (caller, via_cookie) = match credential(headers)? {
        Credential::Bearer(t) => (lookup(state, t, false).await?, false),
        Credential::Cookie(session) => {
            let sha = state.sessions.token_of(session).ok_or_else(|| {
                ApiError::Unauthorized(
                    "the dashboard session has ended: log in again (`kiln dashboard` prints a link)"
                        .into(),
                )
            })?;
            (lookup_hash(state, &sha, true).await?, true)
        }
    };
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if via_cookie && !safe && !headers.contains_key(CSRF_HEADER) {
        return Err(ApiError::Forbidden(format!(
            "a {method} authenticated by the dashboard cookie must carry the {CSRF_HEADER} header"
        )));
    }
    Ok(caller)
}

/// The live token with this plaintext.
pub async fn lookup(state: &ApiState, token: &str, via_cookie: bool) -> Result<Caller, ApiError> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > MAX_TOKEN_LEN {
        return Err(ApiError::Unauthorized(format!(
            "not a Kiln API token (they start with {TOKEN_PREFIX:?})"
        )));
    }
    lookup_hash(state, &token_hash(token), via_cookie).await
}

/// The live token with this SHA-256.
async fn lookup_hash(state: &ApiState, sha256: &str, via_cookie: bool) -> Result<Caller, ApiError> {
    let record = state
        .store
        .token_by_hash(sha256)
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown API token".into()))?;
    if record.revoked_ms.is_some() {
        return Err(ApiError::Unauthorized(format!(
            "API token {:?} was revoked",
            record.name
        )));
    }
    Ok(Caller {
        token_id: record.id,
        name: record.name,
        scope: record.scope,
        via_cookie,
        token_sha256: record.sha256,
    })
}

macro_rules! scoped_extractor {
    ($name:ident, $scope:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name(pub Caller);

        impl FromRequestParts<ApiState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &ApiState,
            ) -> Result<Self, Self::Rejection> {
                let caller = authenticate(state, &parts.method, &parts.headers).await?;
                caller.require($scope)?;
                Ok($name(caller))
            }
        }
    };
}

scoped_extractor!(
    Viewer,
    TokenScope::Viewer,
    "A caller allowed to read (any live token)."
);
scoped_extractor!(
    Operator,
    TokenScope::Operator,
    "A caller allowed to act on runs (operator or admin)."
);
scoped_extractor!(
    Admin,
    TokenScope::Admin,
    "A caller allowed to manage tokens (admin)."
);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_are_found_among_others_and_empty_ones_ignored() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; kiln_session=ks_abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("ks_abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("kiln_session="));
        assert_eq!(cookie(&h, COOKIE), None, "an empty cookie is no credential");
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xkiln_session=ks_a"),
        );
        assert_eq!(
            cookie(&h, COOKIE),
            None,
            "a cookie whose name only ends the same is another cookie"
        );
    }

    #[test]
    fn scopes_include_the_lower_ones_only() {
        let caller = |scope| Caller {
            token_id: 1,
            name: "t".into(),
            scope,
            via_cookie: false,
            token_sha256: String::new(),
        };
        assert!(
            caller(TokenScope::Admin)
                .require(TokenScope::Operator)
                .is_ok()
        );
        assert!(
            caller(TokenScope::Operator)
                .require(TokenScope::Viewer)
                .is_ok()
        );
        let refused = caller(TokenScope::Viewer).require(TokenScope::Operator);
        assert!(
            matches!(&refused, Err(ApiError::Forbidden(m)) if m.contains("viewer") && m.contains("operator")),
            "a viewer acting as operator should get 403 naming both scopes, got {refused:?}"
        );
    }
}
