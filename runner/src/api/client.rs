//! A typed client of the runner API over reqwest, shared by the CLI, the
//! tests and the benchmark, with a small SSE parser (no extra crate).
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt as _};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::ErrorBody;
use super::handback::BRANCH_HEADER;
use super::tokens::TokenView;
use crate::store::{Approval, Run, StoredEvent, TokenScope};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The body's `error` code.
        code: String,
        /// The body's `message`.
        message: String,
    },
    /// The request did not get an answer (connection refused, reset).
    #[error("cannot reach the runner API at {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the runner API: {0}")]
    Protocol(String),
    /// A WebSocket (`kiln attach`) could not be opened or broke.
    #[error("attach socket to {url}: {message}")]
    Socket {
        /// The URL called (without credentials).
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// The WebSocket of an attached shell (see `GET /runs/{id}/attach`).
pub type AttachSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    /// `id:` (the event seq for run events).
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// `data:` lines joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into SSE messages (the WHATWG rules Kiln needs:
/// `\n` / `\r\n` line ends, comments, multi-line data, default `message`).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    current: SseMessage,
    has_data: bool,
}

impl SseParser {
    /// Feed bytes; returns the messages completed by them.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseMessage> {
        let mut out = Vec::new();
        let mut rest = chunk;
        if !self.buf.is_empty() {
            // Finish the line left over from the last chunk; copy no more
            // of this chunk than that line.
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                self.buf.extend_from_slice(rest);
                return out;
            };
            self.buf
                .extend_from_slice(rest.get(..=nl).unwrap_or_default());
            rest = rest.get(nl + 1..).unwrap_or_default();
            let line = std::mem::take(&mut self.buf);
            self.lines(&line, &mut out);
            self.buf = line;
            self.buf.clear();
        }
        // The rest is parsed where it lies; only an unfinished last line is kept.
        let used = self.lines(rest, &mut out);
        self.buf
            .extend_from_slice(rest.get(used..).unwrap_or_default());
        out
    }

    /// Handles every complete line of `bytes`; returns the bytes they took.
    fn lines(&mut self, bytes: &[u8], out: &mut Vec<SseMessage>) -> usize {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            let mut line = bytes.get(start..end).unwrap_or_default();
            start = end + 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            // The strict check first: much faster than the lossy one on
            // valid text (the usual case), which needs no replacement.
            match std::str::from_utf8(line) {
                Ok(text) => self.line(text, out),
                Err(_) => self.line(&String::from_utf8_lossy(line), out),
            }
        }
        start
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseMessage>) {
        if line.is_empty() {
            if self.has_data {
                let mut msg = std::mem::take(&mut self.current);
                if msg.event.is_empty() {
                    msg.event = "message".into();
                }
                out.push(msg);
            } else {
                self.current = SseMessage::default();
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = value.to_owned(),
            "id" => self.current.id = Some(value.to_owned()),
            _ => {}
        }
    }
}

/// What a run's event feed delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// One event of the run's log.
    Event(StoredEvent),
    /// The run reached a final state; the stream ends after this.
    End(Value),
    /// The server reported a failure mid-stream (resume after the last seq).
    StreamError(String),
}

/// An error answer of the API: its JSON `{error, message}`, or the start of
/// whatever else it sent.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error,
            message: b.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(body).chars().take(500).collect(),
        },
    }
}

/// A client of one runner API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:7878`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Protocol(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn send(&self, rb: RequestBuilder, what: &str) -> Result<reqwest::Response, ClientError> {
        let response = rb.send().await.map_err(|source| ClientError::Transport {
            url: format!("{}{what}", self.base),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(api_error(status, &body))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        rb: RequestBuilder,
        path: &str,
    ) -> Result<T, ClientError> {
        let r = self.send(rb, path).await?;
        r.json::<T>()
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    /// `GET /runs?{query}` (query as the API takes it, e.g. `state=running`).
    pub async fn runs(&self, query: &str) -> Result<Vec<Run>, ClientError> {
        let path = if query.is_empty() {
            "/runs".to_owned()
        } else {
            format!("/runs?{query}")
        };
        let v: Value = self.json(self.request(Method::GET, &path), &path).await?;
        serde_json::from_value(v["runs"].clone())
            .map_err(|e| ClientError::Protocol(format!("/runs: {e}")))
    }

    /// `GET /runs/{id}`.
    pub async fn run(&self, id: u64) -> Result<Run, ClientError> {
        let path = format!("/runs/{id}");
        self.json(self.request(Method::GET, &path), &path).await
    }

    /// `GET /runs/{id}/events?after=N` (JSON form): the events and whether the run is finished.
    pub async fn events_page(
        &self,
        id: u64,
        after: u64,
    ) -> Result<(Vec<StoredEvent>, bool), ClientError> {
        let path = format!("/runs/{id}/events?after={after}");
        let v: Value = self.json(self.request(Method::GET, &path), &path).await?;
        let events = serde_json::from_value(v["events"].clone())
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))?;
        Ok((events, v["finished"].as_bool().unwrap_or(false)))
    }

    /// `GET /runs/{id}/events` as SSE, resuming after `last_event_id`.
    pub async fn feed(
        &self,
        id: u64,
        last_event_id: Option<u64>,
    ) -> Result<BoxStream<'static, Result<FeedItem, ClientError>>, ClientError> {
        let path = format!("/runs/{id}/events");
        let mut rb = self
            .request(Method::GET, &path)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(seq) = last_event_id {
            rb = rb.header("last-event-id", seq.to_string());
        }
        let response = self.send(rb, &path).await?;
        let url = format!("{}{path}", self.base);
        let bytes = response.bytes_stream();
        let state = (
            bytes,
            SseParser::default(),
            std::collections::VecDeque::new(),
            url,
        );
        Ok(futures_util::stream::unfold(
            state,
            |(mut bytes, mut parser, mut ready, url)| async move {
                loop {
                    if let Some(msg) = ready.pop_front() {
                        let item = to_item(msg);
                        return Some((item, (bytes, parser, ready, url)));
                    }
                    match bytes.next().await {
                        Some(Ok(chunk)) => ready.extend(parser.push(&chunk)),
                        Some(Err(source)) => {
                            let e = ClientError::Transport {
                                url: url.clone(),
                                source,
                            };
                            return Some((Err(e), (bytes, parser, ready, url)));
                        }
                        None => return None,
                    }
                }
            },
        )
        .boxed())
    }

    async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let mut rb = self.request(Method::POST, path);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.json(rb, path).await
    }

    /// `POST /runs`: queue `role` on `number` of `repo` (`owner/name`),
    /// with a model script replayed instead of the runner's model.
    pub async fn queue(
        &self,
        repo: &str,
        role: &str,
        number: u64,
        script: Option<&str>,
    ) -> Result<Run, ClientError> {
        let v = self
            .post(
                "/runs",
                Some(json!({ "repo": repo, "role": role, "number": number, "script": script })),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("/runs: {e}")))
    }

    /// `POST /runs` for an `improve` run (`kiln improve`): on the
    /// repository as a whole, with its `target` and `since` arguments.
    pub async fn queue_improve(
        &self,
        repo: &str,
        args: &[(String, String)],
    ) -> Result<Run, ClientError> {
        let args: serde_json::Map<String, serde_json::Value> = args
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let v = self
            .post(
                "/runs",
                Some(json!({ "repo": repo, "role": "improve", "number": 0, "args": args })),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(format!("/runs: {e}")))
    }

    /// `POST /ui/login-links`: a one-time dashboard login URL (absolute)
    /// leading to `next` (a `/ui/...` page), and its lifetime in seconds.
    pub async fn login_link(&self, next: Option<&str>) -> Result<(String, u64), ClientError> {
        let v = self
            .post("/ui/login-links", Some(json!({ "next": next })))
            .await?;
        let path = v["path"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol("/ui/login-links: no path".into()))?;
        Ok((
            format!("{}{path}", self.base),
            v["expires_in"].as_u64().unwrap_or_default(),
        ))
    }

    /// `POST /runs/{id}/resume`: continue a finished run with `note` and a
    /// git bundle of commits on top of its branch.
    pub async fn resume(
        &self,
        id: u64,
        note: Option<&str>,
        bundle: Option<&[u8]>,
    ) -> Result<(), ClientError> {
        use base64::Engine as _;
        let bundle = bundle.map(|b| base64::engine::general_purpose::STANDARD.encode(b));
        self.post(
            &format!("/runs/{id}/resume"),
            Some(json!({ "note": note, "bundle": bundle })),
        )
        .await
        .map(drop)
    }

    /// `POST /runs/{id}/messages`.
    pub async fn steer(&self, id: u64, message: &str) -> Result<(), ClientError> {
        self.post(
            &format!("/runs/{id}/messages"),
            Some(json!({ "message": message })),
        )
        .await
        .map(drop)
    }

    /// `GET /runs/{id}/approvals`: pending effects.
    pub async fn approvals(&self, id: u64) -> Result<Vec<Approval>, ClientError> {
        let path = format!("/runs/{id}/approvals");
        let v: Value = self.json(self.request(Method::GET, &path), &path).await?;
        serde_json::from_value(v["approvals"].clone())
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    /// `POST /runs/{id}/approvals/{effect}`.
    pub async fn decide(
        &self,
        id: u64,
        effect: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<(), ClientError> {
        let effect = url::form_urlencoded::byte_serialize(effect.as_bytes()).collect::<String>();
        self.post(
            &format!("/runs/{id}/approvals/{effect}"),
            Some(json!({ "approve": approve, "reason": reason })),
        )
        .await
        .map(drop)
    }

    /// `POST /runs/{id}/cancel`.
    pub async fn cancel(&self, id: u64) -> Result<(), ClientError> {
        self.post(&format!("/runs/{id}/cancel"), None)
            .await
            .map(drop)
    }

    /// `GET /runs/{id}/attach`: a shell in the run's sandbox over a
    /// WebSocket. `tty` asks for a terminal of (cols, rows); `None` runs
    /// the shell on plain pipes.
    pub async fn attach(
        &self,
        id: u64,
        tty: Option<(u16, u16)>,
        term: Option<&str>,
    ) -> Result<AttachSocket, ClientError> {
        use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some((cols, rows)) = tty {
            query.append_pair("cols", &cols.to_string());
            query.append_pair("rows", &rows.to_string());
        }
        if let Some(term) = term {
            query.append_pair("term", term);
        }
        let query = query.finish();
        let base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(ClientError::Protocol(format!(
                "the API URL {} must start with http:// or https://",
                self.base
            )));
        };
        let url = format!("{base}/runs/{id}/attach?{query}");
        let socket_err = |message: String| ClientError::Socket {
            url: url.clone(),
            message,
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| socket_err(e.to_string()))?;
        if let Some(t) = &self.token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| socket_err("the token is not a valid header value".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(socket),
            // The API refused before upgrading: its JSON error says why.
            Err(tungstenite::Error::Http(response)) => {
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Err(api_error(
                    status,
                    response.body().as_deref().unwrap_or_default(),
                ))
            }
            Err(e) => Err(socket_err(e.to_string())),
        }
    }

    /// `GET /runs/{id}/handback`: the bundle's bytes and its branch.
    pub async fn handback(&self, id: u64) -> Result<(Bytes, String), ClientError> {
        let path = format!("/runs/{id}/handback");
        let r = self.send(self.request(Method::GET, &path), &path).await?;
        let branch = r
            .headers()
            .get(BRANCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Protocol(format!("{path}: no {BRANCH_HEADER} header")))?;
        let bytes = r
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))?;
        Ok((bytes, branch))
    }

    /// `GET /runs/{id}/ledger`: the run's transcript with its hash chain
    /// and seal, as `kiln runs export` writes it.
    pub async fn ledger(&self, id: u64) -> Result<crate::ledger::Transcript, ClientError> {
        let path = format!("/runs/{id}/ledger");
        self.json(self.request(Method::GET, &path), &path).await
    }

    /// `GET /runs/{id}/ledger/verify`: the runner's check of the stored chain
    /// and seal with its own key.
    pub async fn verify_ledger(&self, id: u64) -> Result<super::ledger::LedgerCheck, ClientError> {
        let path = format!("/runs/{id}/ledger/verify");
        self.json(self.request(Method::GET, &path), &path).await
    }

    /// `GET /runs/{id}/transcript.md` or `.jsonl` (`ext` is `md` or `jsonl`).
    pub async fn transcript(&self, id: u64, ext: &str) -> Result<String, ClientError> {
        let path = format!("/runs/{id}/transcript.{ext}");
        let r = self.send(self.request(Method::GET, &path), &path).await?;
        r.text()
            .await
            .map_err(|e| ClientError::Protocol(format!("{path}: {e}")))
    }

    /// `POST /tokens`: the new token and its plaintext.
    pub async fn create_token(
        &self,
        name: &str,
        scope: TokenScope,
    ) -> Result<(TokenView, String), ClientError> {
        let v = self
            .post("/tokens", Some(json!({ "name": name, "scope": scope })))
            .await?;
        let token = serde_json::from_value(v["token"].clone())
            .map_err(|e| ClientError::Protocol(format!("/tokens: {e}")))?;
        let plaintext = v["plaintext"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol("/tokens: no plaintext".into()))?;
        Ok((token, plaintext.to_owned()))
    }

    /// `GET /tokens`.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, ClientError> {
        let v: Value = self
            .json(self.request(Method::GET, "/tokens"), "/tokens")
            .await?;
        serde_json::from_value(v["tokens"].clone())
            .map_err(|e| ClientError::Protocol(format!("/tokens: {e}")))
    }

    /// `DELETE /tokens/{id}`.
    pub async fn revoke_token(&self, id: u64) -> Result<TokenView, ClientError> {
        let path = format!("/tokens/{id}");
        self.json(self.request(Method::DELETE, &path), &path).await
    }
}

fn to_item(msg: SseMessage) -> Result<FeedItem, ClientError> {
    let parse = |data: &str| {
        serde_json::from_str::<Value>(data)
            .map_err(|e| ClientError::Protocol(format!("SSE data is not JSON: {e}")))
    };
    match msg.event.as_str() {
        "end" => Ok(FeedItem::End(parse(&msg.data)?)),
        "stream-error" => {
            let v = parse(&msg.data)?;
            Ok(FeedItem::StreamError(
                v["message"].as_str().unwrap_or("unknown").to_owned(),
            ))
        }
        _ => serde_json::from_str::<StoredEvent>(&msg.data)
            .map(FeedItem::Event)
            .map_err(|e| ClientError::Protocol(format!("SSE event is not a run event: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_messages_split_across_chunks_and_line_ends() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\nid: 1\r\nda").is_empty());
        let msgs = p.push(b"ta: {\"a\":1}\r\ndata: x\r\n\r\nevent: end\ndata:{}\n\n");
        assert_eq!(
            msgs,
            vec![
                SseMessage {
                    id: Some("1".into()),
                    event: "message".into(),
                    data: "{\"a\":1}\nx".into()
                },
                SseMessage {
                    id: None,
                    event: "end".into(),
                    data: "{}".into()
                },
            ]
        );
    }

    #[test]
    fn sse_messages_are_the_same_however_the_bytes_are_split() {
        let stream: &[u8] = b"id: 1\ndata: {\"a\":1}\n\n: c\r\nid: 2\r\ndata: b\xffc\r\n\r\n";
        let whole = SseParser::default().push(stream);
        assert_eq!(whole.len(), 2);
        assert_eq!(
            whole[1].data, "b\u{fffd}c",
            "invalid UTF-8 is replaced, not dropped"
        );
        for size in 1..stream.len() {
            let mut p = SseParser::default();
            let split: Vec<SseMessage> = stream.chunks(size).flat_map(|c| p.push(c)).collect();
            assert_eq!(split, whole, "chunks of {size} bytes");
        }
    }
}
