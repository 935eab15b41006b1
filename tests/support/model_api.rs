//! A model API on loopback for tests: an axum server on 127.0.0.1:0 that
//! answers each request with the next reply queued for it (in the
//! provider's documented wire format, built by the helpers below) and keeps
//! every request it was sent, so tests can check paths, headers and bodies
//! and count attempts without looking at a clock.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// One answer of the server.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        /// HTTP status.
        status: u16,
        /// Extra headers (`retry-after`, ...).
        headers: Vec<(&'static str, String)>,
        /// The body.
        body: Value,
    },
    /// A body that is sent as is (malformed JSON, HTML, ...).
    Raw {
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// Accept the request and never answer.
    Hang,
}

impl Reply {
    /// A 200 with `body`.
    pub fn ok(body: Value) -> Self {
        Reply::Json {
            status: 200,
            headers: vec![],
            body,
        }
    }

    /// An error status with `body`.
    pub fn status(status: u16, body: Value) -> Self {
        Reply::Json {
            status,
            headers: vec![],
            body,
        }
    }

    /// This reply with one more header.
    pub fn with_header(self, name: &'static str, value: &str) -> Self {
        match self {
            Reply::Json {
                status,
                mut headers,
                body,
            } => {
                headers.push((name, value.to_string()));
                Reply::Json {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as JSON (`null` if it was not JSON).
    pub body: Value,
}

impl Seen {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct Inner {
    replies: Mutex<VecDeque<Reply>>,
    otherwise: Reply,
    seen: Mutex<Vec<Seen>>,
}

/// A running loopback model API.
pub struct ModelApi {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    inner: Arc<Inner>,
}

impl ModelApi {
    /// Serve `replies` in order, then `otherwise` for every further request.
    pub async fn start(replies: Vec<Reply>, otherwise: Reply) -> Self {
        let inner = Arc::new(Inner {
            replies: Mutex::new(replies.into()),
            otherwise,
            seen: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        ModelApi { base, inner }
    }

    /// Serve `replies`, then a 500 naming the test's mistake.
    pub async fn replying(replies: Vec<Reply>) -> Self {
        Self::start(
            replies,
            Reply::status(
                500,
                json!({"error": {"type": "test_error", "message": "the test queued no more replies"}}),
            ),
        )
        .await
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.inner.seen.lock().expect("seen").clone()
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.seen.lock().expect("seen").push(Seen {
        path: uri.path().to_string(),
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let reply = inner
        .replies
        .lock()
        .expect("replies")
        .pop_front()
        .unwrap_or_else(|| inner.otherwise.clone());
    match reply {
        Reply::Json {
            status,
            headers,
            body,
        } => {
            let mut response = (
                StatusCode::from_u16(status).expect("status"),
                axum::Json(body),
            )
                .into_response();
            for (name, value) in headers {
                response.headers_mut().insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_str(&value).expect("header value"),
                );
            }
            response
        }
        Reply::Raw { status, body } => (
            StatusCode::from_u16(status).expect("status"),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}

/// An Anthropic Messages API answer with `content` blocks.
pub fn anthropic_message(content: Value, stop_reason: &str, input: u64, output: u64) -> Value {
    json!({
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-1",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}

/// An Anthropic answer of one text block.
pub fn anthropic_text(text: &str) -> Value {
    anthropic_message(json!([{"type": "text", "text": text}]), "end_turn", 10, 5)
}

/// An Anthropic answer of one `tool_use` block.
pub fn anthropic_tool_use(id: &str, name: &str, input: Value) -> Value {
    anthropic_message(
        json!([{"type": "tool_use", "id": id, "name": name, "input": input}]),
        "tool_use",
        100,
        10,
    )
}

/// An Anthropic error body.
pub fn anthropic_error(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// A Chat Completions answer with `message` and `finish_reason`.
pub fn openai_completion(message: Value, finish_reason: &str) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    })
}

/// A Chat Completions answer of plain text.
pub fn openai_text(text: &str) -> Value {
    openai_completion(
        json!({"role": "assistant", "content": text, "refusal": null}),
        "stop",
    )
}

/// A Chat Completions answer of one tool call; `arguments` is sent as the
/// string it is.
pub fn openai_tool_call(id: &str, name: &str, arguments: &str) -> Value {
    openai_completion(
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]}),
        "tool_calls",
    )
}

/// An OpenAI error body.
pub fn openai_error(kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
}
