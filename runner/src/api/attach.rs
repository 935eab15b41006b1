//! `GET /runs/{id}/attach`: an operator's interactive shell in a running
//! run's sandbox, over a WebSocket. The run's agent is paused from the
//! moment the shell opens until the socket closes.
//!
//! Wire protocol (what `kiln attach` speaks):
//! - client → server: binary frames are keystrokes (the shell's stdin); a
//!   text frame `{"resize":[cols,rows]}` resizes the terminal; `{"eof":true}`
//!   closes the shell's stdin (piped input ended); closing the socket
//!   detaches (the shell is ended).
//! - server → client: binary frames are the shell's output, redacted by the
//!   gate's redactor; when the shell exits, a text frame `{"exit":<code>}`
//!   and then a close frame.
//!
//! Query: `cols` and `rows` ask for a terminal of that size (both or
//! neither; without them the shell runs on plain pipes, for scripts), and
//! `term` names the terminal type.
use std::time::Duration;

use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use super::ApiState;
use super::auth::Operator;
use super::error::ApiError;
use super::params::{self, Query};
use crate::control::Attached;
use crate::sandbox::ShellSpec;
use crate::session::EventKind;

/// How long output may sit in the redactor's hold-back before it is
/// released anyway: a prompt must show up while the human waits. A secret
/// printed in one burst is still caught; one dribbled out slower than this,
/// a byte at a time, would not be (the shell itself holds no secret).
const IDLE_FLUSH: Duration = Duration::from_millis(25);

/// A control frame from the client.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    /// The terminal's new (cols, rows).
    #[serde(default)]
    resize: Option<(u16, u16)>,
    /// The client's input ended.
    #[serde(default)]
    eof: bool,
}

/// `GET /runs/{id}/attach`: open a shell in the run's sandbox (WebSocket).
pub async fn attach(
    State(state): State<ApiState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if caller.via_cookie {
        // A GET carries no CSRF header, and a page on another port of the
        // same host is "same-site" to the browser, so the dashboard cookie
        // would reach this WebSocket from it: a shell needs the token itself.
        return Err(ApiError::Forbidden(
            "attach needs an Authorization: Bearer token; the dashboard cookie is not accepted here"
                .into(),
        ));
    }
    let id = params::run_id(&id)?;
    let q = Query::parse(raw.as_deref(), &["cols", "rows", "term"], &[])?;
    let cols = q.number("cols", 1, 1000)?;
    let rows = q.number("rows", 1, 1000)?;
    let tty = match (cols, rows) {
        (Some(c), Some(r)) => Some((c as u16, r as u16)),
        (None, None) => None,
        _ => {
            return Err(ApiError::BadRequest(
                "give both cols and rows for a terminal, or neither for plain pipes".into(),
            ));
        }
    };
    let ws = ws.map_err(|e| {
        ApiError::BadRequest(format!(
            "this endpoint is a WebSocket (connect with `kiln attach {id}`): {e}"
        ))
    })?;
    super::runs::live_run(&state, id, "attach to").await?;
    let spec = ShellSpec {
        tty,
        term: q.get("term").map(str::to_owned),
    };
    tracing::info!(run = %id, by = %caller.name, "attach");
    // Opened before the upgrade, so a run that cannot be attached to gets
    // a plain HTTP error the client can print.
    let attached = state.control.attach(id.0, caller.name, spec).await?;
    let redactor = state.redactor.clone();
    Ok(ws.on_upgrade(move |socket| pump(socket, attached, redactor)))
}

/// Why the session ended.
enum End {
    /// The shell exited (with its code, when the engine knows it).
    Exited(Option<i64>),
    /// The shell's streams failed.
    Broken,
    /// The client closed the socket or went away.
    Left,
    /// No input for the session's idle limit.
    Idle,
}

/// Moves bytes between the socket and the shell until either side ends.
async fn pump(
    socket: WebSocket,
    attached: Attached,
    redactor: std::sync::Arc<crate::policy::Redactor>,
) {
    let Attached {
        shell,
        session,
        events,
        idle_after,
    } = attached;
    let crate::sandbox::Shell {
        mut input,
        mut output,
        control,
    } = shell;
    let (mut tx, mut rx) = socket.split();
    let mut redact = redactor.stream();
    let mut held = false;
    let mut last_input = tokio::time::Instant::now();
    let exit = loop {
        tokio::select! {
            () = tokio::time::sleep_until(last_input + idle_after) => break End::Idle,
            chunk = output.next() => match chunk {
                Some(Ok(bytes)) => {
                    let out = redact.push(&bytes);
                    held = true;
                    if !out.is_empty() && tx.send(Message::Binary(out.into())).await.is_err() {
                        break End::Left;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!("attached shell: {e}");
                    break End::Broken;
                }
                None => break End::Exited(control.exit_code().await.ok().flatten()),
            },
            () = tokio::time::sleep(IDLE_FLUSH), if held => {
                held = false;
                let out = std::mem::replace(&mut redact, redactor.stream()).finish();
                if !out.is_empty() && tx.send(Message::Binary(out.into())).await.is_err() {
                    break End::Left;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(keys))) => {
                    last_input = tokio::time::Instant::now();
                    if input.write_all(&keys).await.is_err() || input.flush().await.is_err() {
                        break End::Broken;
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(c) => {
                        last_input = tokio::time::Instant::now();
                        if let Some((cols, rows)) = c.resize
                            && let Err(e) = control.resize(cols, rows).await
                        {
                            tracing::warn!("attached shell: {e}");
                        }
                        if c.eof {
                            let _ = input.shutdown().await;
                        }
                    }
                    Err(e) => {
                        let why = format!("not a control frame ({e}); send keystrokes as binary frames");
                        let _ = tx.send(Message::Text(serde_json::json!({ "error": why }).to_string().into())).await;
                    }
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break End::Left,
            },
        }
    };
    let tail = redact.finish();
    if !tail.is_empty() {
        let _ = tx.send(Message::Binary(tail.into())).await;
    }
    match exit {
        End::Exited(code) => {
            let _ = tx
                .send(Message::Text(
                    serde_json::json!({ "exit": code }).to_string().into(),
                ))
                .await;
            let _ = tx.send(Message::Close(None)).await;
            // Jobs the shell left in the background end with it.
            control.end().await;
        }
        End::Idle => {
            let why = format!(
                "the shell had no input for {}: it is closed and the agent resumes",
                spoken(idle_after)
            );
            events.record(EventKind::Note, format!("attach: {why}"));
            let _ = tx
                .send(Message::Text(
                    serde_json::json!({ "error": why }).to_string().into(),
                ))
                .await;
            let _ = tx.send(Message::Close(None)).await;
            let _ = input.shutdown().await;
            control.end().await;
        }
        // The human went away (or the stream broke): end the shell so
        // nothing of theirs keeps running beside the agent.
        End::Left | End::Broken => {
            let _ = input.shutdown().await;
            control.end().await;
        }
    }
    drop(session);
}

/// A whole number of minutes in minutes, anything else in seconds.
fn spoken(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
