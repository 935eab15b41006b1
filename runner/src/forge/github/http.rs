//! One GitHub REST call over octocrab's transport: retries (rate limits by
//! GitHub's headers, 5xx and connection errors with exponential back-off),
//! GitHub's error bodies turned into precise [`ForgeError`]s naming the
//! call, and `Link` pagination that never leaves the configured API origin.
//!
//! octocrab's typed calls hide the response headers, and a rate-limit answer
//! is only usable with them (`retry-after`, `x-ratelimit-reset`), so every
//! call goes through octocrab's raw `execute` with the headers set here.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde::Deserialize;

use crate::forge::ForgeError;

/// JSON, as GitHub recommends asking for it.
pub(crate) const ACCEPT_JSON: &str = "application/vnd.github+json";
/// A pull request as a unified diff.
pub(crate) const ACCEPT_DIFF: &str = "application/vnd.github.v3.diff";

/// Largest response body read (a diff of a big pull request fits).
const MAX_BODY: usize = 64 << 20;
/// Most pages one listing follows before it is called runaway.
const MAX_PAGES: usize = 200;
/// GitHub's advice for a secondary rate limit that names no wait.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// How calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, counting the first (5xx, connection errors, rate limits).
    pub max_attempts: u32,
    /// First back-off after a 5xx or connection error; doubled each retry.
    pub backoff: Duration,
    /// Longest wait for a rate limit; a longer one fails at once with `RateLimited`.
    pub max_rate_limit_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Duration::from_millis(500),
            max_rate_limit_wait: Duration::from_secs(60),
        }
    }
}

/// A successful answer.
pub(crate) struct Reply {
    /// Response headers (`link`, rate-limit state).
    pub headers: HeaderMap,
    /// The body as sent.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON of type `T`, or an error naming the call.
    pub fn json<T: serde::de::DeserializeOwned>(&self, call: &str) -> Result<T, ForgeError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ForgeError::Unavailable(format!("{call}: unexpected response from GitHub: {e}"))
        })
    }
}

/// One request, before authentication.
pub(crate) struct Request<'a> {
    /// What the call does, for error messages (`comment on #3 in o/r`).
    pub call: &'a str,
    /// HTTP method.
    pub method: Method,
    /// A path below the API base (`/repos/o/r/issues`), or an absolute URL
    /// under it (a `Link` header's next page).
    pub target: String,
    /// JSON body.
    pub body: Option<serde_json::Value>,
    /// `Accept` value.
    pub accept: &'static str,
}

/// What [`Api::send_with`] does after an answer that leaves open whether
/// the request was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsure {
    /// Send it again (reads, and writes that are idempotent).
    Retry,
    /// Return [`ForgeError::Unavailable`] at once, so the caller can look
    /// for what the request would have created before sending it again.
    Return,
}

/// The REST API at one base URL.
pub(crate) struct Api {
    octo: Octocrab,
    /// The base URL without a trailing slash.
    base: String,
    policy: RetryPolicy,
}

impl Api {
    /// A client for the API at `base` (`https://api.github.com`, `https://HOST/api/v3`).
    pub fn new(base: &str, policy: RetryPolicy) -> Result<Self, ForgeError> {
        let base = base.trim_end_matches('/').to_string();
        let url = url::Url::parse(&base)
            .map_err(|e| ForgeError::Invalid(format!("GitHub API URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ForgeError::Invalid(format!(
                "GitHub API URL {base:?} is not an http(s) URL with a host"
            )));
        }
        // octocrab spawns its connection worker at build time; without a
        // runtime that would panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ForgeError::Invalid(
                "the GitHub client must be created inside a Tokio runtime".into(),
            ));
        }
        // octocrab's own retry would hide rate-limit headers from us and
        // double the attempts; this module retries.
        let octo = Octocrab::builder()
            .base_uri(base.as_str())
            .and_then(|b| b.add_retry_config(RetryConfig::None).build())
            .map_err(|e| ForgeError::Invalid(format!("GitHub client for {base:?}: {e}")))?;
        Ok(Self { octo, base, policy })
    }

    /// The API base URL, no trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `req` with `authorization`, retrying as the policy says; `Ok`
    /// only for a 2xx answer.
    pub async fn send(&self, req: &Request<'_>, authorization: &str) -> Result<Reply, ForgeError> {
        self.send_with(req, authorization, Unsure::Retry).await
    }

    /// The retry policy's attempts and back-off, for callers that retry
    /// themselves ([`Unsure::Return`]).
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// [`Api::send`], choosing what happens after an answer that leaves open
    /// whether GitHub applied the request (a 5xx, a dropped connection).
    pub async fn send_with(
        &self,
        req: &Request<'_>,
        authorization: &str,
        unsure: Unsure,
    ) -> Result<Reply, ForgeError> {
        let url = self.url(req)?;
        let mut auth = HeaderValue::from_str(authorization).map_err(|_| {
            ForgeError::Invalid(format!(
                "{}: the credential is not a valid header",
                req.call
            ))
        })?;
        auth.set_sensitive(true);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = attempt >= self.policy.max_attempts;
            let builder = axum::http::Request::builder()
                .method(req.method.clone())
                .uri(url.as_str())
                .header(header::AUTHORIZATION, auth.clone())
                .header(header::ACCEPT, req.accept)
                .header("x-github-api-version", "2022-11-28");
            let request = self
                .octo
                .build_request(builder, req.body.as_ref())
                .map_err(|e| ForgeError::Invalid(format!("{}: {e}", req.call)))?;
            let response = match self.octo.execute(request).await {
                Ok(r) => r,
                Err(e) => {
                    let reason = format!("{}: cannot reach GitHub: {e}", req.call);
                    if last || unsure == Unsure::Return {
                        return Err(ForgeError::Unavailable(reason));
                    }
                    tracing::warn!(call = req.call, attempt, "GitHub unreachable, retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let body =
                axum::body::to_bytes(axum::body::Body::new(response.into_body()), MAX_BODY).await;
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("{}: reading GitHub's answer: {e}", req.call);
                    if last || unsure == Unsure::Return {
                        return Err(ForgeError::Unavailable(reason));
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            tracing::debug!(
                call = req.call,
                status = status.as_u16(),
                attempt,
                "GitHub answered"
            );
            if status.is_success() {
                return Ok(Reply { headers, body });
            }
            let reason = describe(req.call, status, &body);
            if let Some(wait) = rate_limit_wait(status, &headers) {
                if wait > self.policy.max_rate_limit_wait {
                    return Err(ForgeError::RateLimited(format!(
                        "{reason}; the limit lifts in {} s, longer than the configured \
                         maximum wait of {} s",
                        wait.as_secs(),
                        self.policy.max_rate_limit_wait.as_secs()
                    )));
                }
                if last {
                    return Err(ForgeError::RateLimited(format!(
                        "{reason}; gave up after {attempt} attempts"
                    )));
                }
                tracing::warn!(
                    call = req.call,
                    wait_ms = wait.as_millis() as u64,
                    "rate limited"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_server_error() {
                if unsure == Unsure::Return {
                    return Err(ForgeError::Unavailable(reason));
                }
                if last {
                    return Err(ForgeError::Unavailable(format!(
                        "{reason}; gave up after {attempt} attempts"
                    )));
                }
                tracing::warn!(
                    call = req.call,
                    status = status.as_u16(),
                    attempt,
                    "retrying"
                );
                tokio::time::sleep(self.backoff(attempt)).await;
                continue;
            }
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    ForgeError::Unauthorized(reason)
                }
                StatusCode::NOT_FOUND | StatusCode::GONE => ForgeError::NotFound(reason),
                _ => ForgeError::Rejected(reason),
            });
        }
    }

    /// Sends a GET and follows `Link: rel="next"` to the end, collecting each
    /// page's JSON array.
    pub async fn get_all<T: serde::de::DeserializeOwned>(
        &self,
        call: &str,
        path: String,
        authorization: &str,
    ) -> Result<Vec<T>, ForgeError> {
        let mut out = Vec::new();
        let mut target = Some(path);
        let mut pages = 0;
        while let Some(t) = target.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(ForgeError::Unavailable(format!(
                    "{call}: more than {MAX_PAGES} pages; refusing to follow further"
                )));
            }
            let req = Request {
                call,
                method: Method::GET,
                target: t,
                body: None,
                accept: ACCEPT_JSON,
            };
            let reply = self.send(&req, authorization).await?;
            out.extend(reply.json::<Vec<T>>(call)?);
            target = next_link(&reply.headers);
        }
        Ok(out)
    }

    fn url(&self, req: &Request<'_>) -> Result<String, ForgeError> {
        if req.target.starts_with('/') {
            return Ok(format!("{}{}", self.base, req.target));
        }
        // Only an absolute URL under our own API base may receive the
        // credential: a `Link` header is data from the network.
        let prefix = format!("{}/", self.base);
        if req.target.starts_with(&prefix) && !req.target[prefix.len()..].contains("/../") {
            Ok(req.target.clone())
        } else {
            Err(ForgeError::Unavailable(format!(
                "{}: GitHub pointed to {:?}, outside the API at {}; not following",
                req.call, req.target, self.base
            )))
        }
    }

    /// How long to wait before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .policy
            .backoff
            .saturating_mul(1 << (attempt - 1).min(10));
        let jitter_ms = (base.as_millis() as u64) / 4;
        base + Duration::from_millis(rand::random_range(0..=jitter_ms))
    }
}

/// True for an error [`Api::send`] made of a 401 (credentials refused,
/// as opposed to a 403's missing permission).
pub(crate) fn is_401(message: &str) -> bool {
    message.ends_with("(HTTP 401)")
}

/// GitHub's error body.
#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
}

/// `call: GitHub's message (details) (HTTP status)`.
fn describe(call: &str, status: StatusCode, body: &[u8]) -> String {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.clone())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let details: Vec<String> = parsed
        .map(|b| b.errors.iter().map(describe_error_item).collect())
        .unwrap_or_default();
    if details.is_empty() {
        format!("{call}: {message} (HTTP {})", status.as_u16())
    } else {
        format!(
            "{call}: {message}: {} (HTTP {})",
            details.join("; "),
            status.as_u16()
        )
    }
}

/// One entry of a 422's `errors`: a string, or `{resource, field, code, message}`.
fn describe_error_item(item: &serde_json::Value) -> String {
    if let Some(s) = item.as_str() {
        return s.to_string();
    }
    let get = |k: &str| item.get(k).and_then(|v| v.as_str());
    let mut out = match (get("resource"), get("field")) {
        (Some(r), Some(f)) => format!("{r}.{f}"),
        (Some(r), None) => r.to_string(),
        (None, Some(f)) => f.to_string(),
        (None, None) => String::new(),
    };
    for part in [get("code"), get("message")].into_iter().flatten() {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(part);
    }
    if out.is_empty() {
        item.to_string()
    } else {
        out
    }
}

/// How long to wait before retrying, if the answer is a rate limit.
fn rate_limit_wait(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let exhausted = get("x-ratelimit-remaining") == Some("0");
    let retry_after = get("retry-after").and_then(|v| v.parse::<u64>().ok());
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN && (exhausted || retry_after.is_some()));
    if !limited {
        return None;
    }
    if let Some(secs) = retry_after {
        return Some(Duration::from_secs(secs));
    }
    if exhausted && let Some(reset) = get("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok()) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return Some(Duration::from_secs(reset.saturating_sub(now)));
    }
    Some(DEFAULT_RATE_LIMIT_WAIT)
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| url.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("test header"));
        }
        h
    }

    #[test]
    fn next_link_is_found_among_the_others() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/repositories/1000/issues?per_page=3&page=1>; rel=\"prev\", \
             <https://api.github.com/repositories/1000/issues?per_page=3&page=3>; rel=\"next\", \
             <https://api.github.com/repositories/1000/issues?per_page=3&page=5>; rel=\"last\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1000/issues?per_page=3&page=3")
        );
        let last = headers(&[("link", "<https://x/a?page=4>; rel=\"prev\"")]);
        assert_eq!(next_link(&last), None);
        assert_eq!(next_link(&headers(&[("link", "garbage")])), None);
    }

    #[test]
    fn rate_limits_are_recognised_only_with_their_signs() {
        let s429 = StatusCode::TOO_MANY_REQUESTS;
        let s403 = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(s429, &headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(s429, &HeaderMap::new()),
            Some(DEFAULT_RATE_LIMIT_WAIT)
        );
        assert_eq!(rate_limit_wait(s403, &HeaderMap::new()), None);
        assert_eq!(
            rate_limit_wait(s403, &headers(&[("x-ratelimit-remaining", "12")])),
            None
        );
        assert_eq!(
            rate_limit_wait(
                s403,
                &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "0")])
            ),
            Some(Duration::ZERO),
            "a reset in the past means retry now"
        );
        assert_eq!(
            rate_limit_wait(StatusCode::BAD_GATEWAY, &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn outside_a_runtime_the_client_is_refused_not_a_panic() {
        assert!(matches!(
            Api::new("http://127.0.0.1:1", RetryPolicy::default()),
            Err(ForgeError::Invalid(m)) if m.contains("Tokio runtime")
        ));
    }

    #[test]
    fn a_422_names_the_call_message_and_each_error() {
        let body = br#"{"message":"Validation Failed","errors":[{"resource":"Label","code":"invalid","field":"color"},"plain text"],"documentation_url":"x"}"#;
        assert_eq!(
            describe(
                "create label in o/r",
                StatusCode::UNPROCESSABLE_ENTITY,
                body
            ),
            "create label in o/r: Validation Failed: Label.color: invalid; plain text (HTTP 422)"
        );
        assert_eq!(
            describe("get issue #3 in o/r", StatusCode::BAD_GATEWAY, b"<html>"),
            "get issue #3 in o/r: Bad Gateway (HTTP 502)"
        );
    }

    #[tokio::test]
    async fn links_outside_the_api_are_not_followed() {
        let api = Api::new("http://127.0.0.1:1/api/v3/", RetryPolicy::default()).expect("api");
        let req = |t: &str| Request {
            call: "list",
            method: Method::GET,
            target: t.to_string(),
            body: None,
            accept: ACCEPT_JSON,
        };
        assert_eq!(
            api.url(&req("/repos/o/r")).ok().as_deref(),
            Some("http://127.0.0.1:1/api/v3/repos/o/r")
        );
        assert!(api.url(&req("http://127.0.0.1:1/api/v3/x?page=2")).is_ok());
        for bad in [
            "http://evil.example/api/v3/x",
            "http://127.0.0.1:1/api/v3x/y",
            "http://127.0.0.1:1.evil/api/v3/x",
            "http://127.0.0.1:1/api/v3/../../x",
        ] {
            assert!(
                matches!(api.url(&req(bad)), Err(ForgeError::Unavailable(_))),
                "{bad} should be refused"
            );
        }
    }
}
