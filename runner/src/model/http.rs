//! The HTTP layer both real providers share: one JSON POST, retried with
//! exponential back-off on rate limits (429, honouring `retry-after`),
//! overload and server errors (5xx, Anthropic's 529), timeouts and broken
//! connections, up to a bounded number of attempts. A 4xx is final and
//! becomes [`ModelError::Rejected`] carrying the provider's error `type`
//! and `message`; a 2xx that is not JSON becomes [`ModelError::InvalidAnswer`].
//!
//! The API key lives in [`ApiKey`], whose `Debug` hides it, goes out only as
//! a header marked sensitive, and is cut out of any text a server sends
//! back before that text reaches an error, a log line or an event.
use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::ModelError;

/// The largest answer body read; a provider's completion is far smaller,
/// so anything bigger is a broken or hostile endpoint, not a turn.
const MAX_BODY_BYTES: usize = 16 << 20;
/// How much of an error body is kept when it is not the usual JSON shape.
const MAX_ERROR_TEXT: usize = 500;

/// A model provider's API key. Its `Debug` never shows it, and it has no
/// `Display` and no accessor outside this module.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wrap a key read from a secret.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How a provider presents its key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// In a header of its own (`x-api-key: <key>`).
    Header(&'static str),
    /// As `Authorization: Bearer <key>`.
    Bearer,
}

/// How long to wait and how often to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Time allowed for one attempt: connect, send, and read the whole answer.
    pub timeout: Duration,
    /// Attempts after the first (so `max_retries + 1` in all).
    pub max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// The longest back-off between attempts.
    pub max_backoff: Duration,
    /// The longest `retry-after` honoured; a provider asking for more makes
    /// the call fail at once rather than stall the run.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            timeout: Duration::from_secs(120),
            max_retries: 4,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The back-off before retry number `retry` (1 for the first), with
    /// jitter so many runs hitting one rate limit do not retry in step.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        let full = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        full.mul_f64(rand::random_range(0.5..=1.0))
    }
}

/// The delay a `429` or `5xx` answer asks for: `retry-after-ms`
/// (OpenAI) or `retry-after` in seconds. An HTTP-date is not honoured (the
/// back-off is used instead): providers send seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(1e9)))
}

/// One provider's HTTP client: the connection pool, the headers every
/// request carries (the key among them), and the retry policy.
pub(crate) struct HttpClient {
    provider: &'static str,
    client: reqwest::Client,
    policy: RetryPolicy,
    key: Option<ApiKey>,
}

/// What one attempt came to.
enum Attempt {
    /// A JSON answer.
    Done(serde_json::Value),
    /// A failure worth another try; `after` is what the server asked for.
    Retry {
        why: String,
        after: Option<Duration>,
        timed_out: bool,
    },
    /// A failure another try cannot fix.
    Fatal(ModelError),
}

impl HttpClient {
    /// A client for `provider` (a name for logs) sending `headers` and the
    /// key, if any, on every request.
    pub(crate) fn new(
        provider: &'static str,
        policy: RetryPolicy,
        headers: &[(&'static str, &'static str)],
        auth: Auth,
        key: Option<ApiKey>,
    ) -> Result<Self, ModelError> {
        let mut defaults = HeaderMap::new();
        for (name, value) in headers {
            defaults.insert(*name, HeaderValue::from_static(value));
        }
        if let Some(key) = &key {
            let bad = || {
                ModelError::Rejected(format!(
                    "the {provider} API key is empty or has characters an HTTP header cannot carry"
                ))
            };
            if key.expose().trim().is_empty() {
                return Err(bad());
            }
            let (name, text) = match auth {
                Auth::Header(name) => (HeaderName::from_static(name), key.expose().to_string()),
                Auth::Bearer => (
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {}", key.expose()),
                ),
            };
            let mut value = HeaderValue::from_str(&text).map_err(|_| bad())?;
            value.set_sensitive(true);
            defaults.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(defaults)
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            // A redirect would replay the key to wherever it points; an API
            // endpoint that moved is a configuration error to fix.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ModelError::Unavailable(format!("cannot build HTTP client: {e}")))?;
        Ok(HttpClient {
            provider,
            client,
            policy,
            key,
        })
    }

    /// POST `body` to `url` and return the JSON answer, retrying as the
    /// module doc says.
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ModelError> {
        let payload = serde_json::to_vec(body)
            .map_err(|e| ModelError::InvalidRequest(format!("cannot encode request: {e}")))?;
        let attempts = self.policy.max_retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            let (why, after, timed_out) = match self.attempt(url, &payload).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry {
                    why,
                    after,
                    timed_out,
                } => (why, after, timed_out),
            };
            if attempt >= attempts {
                let why = format!("{why} (gave up after {attempts} attempts)");
                return Err(if timed_out {
                    ModelError::Timeout(why)
                } else {
                    ModelError::Unavailable(why)
                });
            }
            if let Some(after) = after.filter(|a| *a > self.policy.max_retry_after) {
                return Err(ModelError::Unavailable(format!(
                    "{why}; the provider asks to retry after {after:?}, longer than the {:?} Kiln waits",
                    self.policy.max_retry_after
                )));
            }
            let delay = after.unwrap_or_else(|| self.policy.backoff(attempt));
            tracing::warn!(
                provider = self.provider,
                attempt,
                attempts,
                ?delay,
                "model request failed, retrying: {why}"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    async fn attempt(&self, url: &str, payload: &[u8]) -> Attempt {
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(payload.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return self.transport_failure(&e),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match read_capped(&mut response, MAX_BODY_BYTES).await {
            Ok(b) => b,
            Err(ReadError::TooLarge) => {
                return Attempt::Fatal(ModelError::InvalidAnswer(format!(
                    "HTTP {status}: the answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            Err(ReadError::Http(e)) => return self.transport_failure(&e),
        };
        if status.is_success() {
            return match serde_json::from_slice(&body) {
                Ok(v) => Attempt::Done(v),
                Err(e) => Attempt::Fatal(ModelError::InvalidAnswer(format!(
                    "the answer is not JSON ({e}): {}",
                    self.redact(&snippet(&body))
                ))),
            };
        }
        let described = self.describe_error(status, &body);
        // 529 is Anthropic's "overloaded"; 408 is a server-side timeout.
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
            || status.as_u16() == 529
        {
            return Attempt::Retry {
                why: described,
                after: retry_after,
                timed_out: false,
            };
        }
        if status.is_redirection() {
            return Attempt::Fatal(ModelError::Rejected(format!(
                "{described}: the endpoint redirects (to {}); set base_url to the final address",
                response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(|l| self.redact(l))
                    .unwrap_or_else(|| "nowhere given".into())
            )));
        }
        Attempt::Fatal(ModelError::Rejected(described))
    }

    fn transport_failure(&self, e: &reqwest::Error) -> Attempt {
        if e.is_builder() {
            // A request reqwest could not even form (bad URL, ...): retrying cannot help.
            return Attempt::Fatal(ModelError::Unavailable(self.redact(&chain(e))));
        }
        let timed_out = e.is_timeout();
        let why = if timed_out {
            format!("no answer within {:?}", self.policy.timeout)
        } else {
            self.redact(&chain(e))
        };
        Attempt::Retry {
            why,
            after: None,
            timed_out,
        }
    }

    /// `HTTP 400 invalid_request_error: <message>`, from the provider's
    /// error body (`{"error": {"type", "message"}}` for both Anthropic and
    /// OpenAI), or the body's start when it has another shape.
    fn describe_error(&self, status: StatusCode, body: &[u8]) -> String {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| {
            error
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        let code = status.as_u16();
        let text = match (field("type").or(field("code")), field("message")) {
            (Some(kind), Some(message)) => format!("HTTP {code} {kind}: {message}"),
            (None, Some(message)) => format!("HTTP {code}: {message}"),
            // Some servers put a bare string in `error`.
            _ => match error.and_then(|e| e.as_str()) {
                Some(message) => format!("HTTP {code}: {message}"),
                None if body.is_empty() => format!("HTTP {status}"),
                None => format!("HTTP {code}: {}", snippet(body)),
            },
        };
        self.redact(&text)
    }

    /// `text` with the API key cut out, in case a server echoes it back.
    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_capped(response: &mut reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Http)? {
        if body.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of a body, as text, for an error message.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An error and its causes, joined, as reqwest's own `Display` stops at the top.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_milliseconds_and_ignores_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_at_most_half_taken_off() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..RetryPolicy::default()
        };
        for (retry, full) in [(1, 100), (2, 200), (3, 350), (40, 350)] {
            let d = p.backoff(retry);
            let full = Duration::from_millis(full);
            assert!(
                d <= full && d >= full / 2,
                "retry {retry}: {d:?} should be within [{:?}, {full:?}]",
                full / 2
            );
        }
    }

    #[test]
    fn the_key_is_never_in_debug_output_or_echoed_errors() {
        let key = ApiKey::new("sk-test-very-secret");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        let client = HttpClient::new("test", RetryPolicy::default(), &[], Auth::Bearer, Some(key))
            .expect("client");
        let text = client.describe_error(
            StatusCode::UNAUTHORIZED,
            br#"{"error":{"type":"authentication_error","message":"bad key sk-test-very-secret"}}"#,
        );
        assert_eq!(
            text, "HTTP 401 authentication_error: bad key [redacted]",
            "an echoed key must be cut out"
        );
    }

    #[test]
    fn error_bodies_of_other_shapes_are_still_described() {
        let client =
            HttpClient::new("test", RetryPolicy::default(), &[], Auth::Bearer, None).expect("c");
        assert_eq!(
            client.describe_error(StatusCode::NOT_FOUND, br#"{"error":"model 'x' not found"}"#),
            "HTTP 404: model 'x' not found"
        );
        assert_eq!(
            client.describe_error(StatusCode::BAD_GATEWAY, b""),
            "HTTP 502 Bad Gateway"
        );
        assert_eq!(
            client.describe_error(StatusCode::BAD_REQUEST, b"<html>nope</html>"),
            "HTTP 400: <html>nope</html>"
        );
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_without_showing_it() {
        for bad in ["", "  ", "line\nbreak"] {
            let err = HttpClient::new(
                "test",
                RetryPolicy::default(),
                &[],
                Auth::Header("x-api-key"),
                Some(ApiKey::new(bad)),
            )
            .err()
            .expect("refused");
            assert_eq!(
                err.to_string(),
                "model provider rejected the request: the test API key is empty or has characters an HTTP header cannot carry"
            );
        }
    }
}
