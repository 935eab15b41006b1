//! `kiln attach <run>`: a shell in a running run's sandbox over the runner
//! API's WebSocket, with the local terminal in raw mode while attached. The
//! run's agent is paused until the shell exits.
//!
//! With a terminal on stdin, keys go through as typed (Ctrl-C reaches the
//! shell, not this process) and the remote terminal follows the local
//! window's size. Without one (a pipe), the shell runs on plain pipes and
//! ends when the piped input does, so `echo 'make test' | kiln attach r3`
//! works in scripts.
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rustix::termios::{self, OptionalActions, Termios};
use tokio_tungstenite::tungstenite::Message;

use super::remote::ApiArgs;

/// The local terminal in raw mode; restored when dropped, however the
/// session ends.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

fn window_size() -> Option<(u16, u16)> {
    let size = termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Stdin read on its own thread: a blocking read of a terminal cannot be
/// cancelled, and a detached thread does not hold up the process's exit.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Runs `kiln attach`: exits with the shell's exit code.
pub async fn attach(api: &ApiArgs, run: u64) -> anyhow::Result<ExitCode> {
    let interactive = termios::isatty(std::io::stdin());
    let tty = if interactive { window_size() } else { None };
    let term = std::env::var("TERM").ok();
    let client = api.client()?;
    let socket = client.attach(run, tty, term.as_deref()).await?;
    eprintln!(
        "attached to r{run}: the agent is paused until this shell exits{}",
        if interactive { " (exit or Ctrl-D)" } else { "" }
    );
    let raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let (mut tx, mut rx) = socket.split();
    let mut keys = stdin_chunks();
    let mut stdin_open = true;
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("watching the terminal's size")?;
    let mut stdout = std::io::stdout();
    let mut exit: Option<i64> = None;
    let mut ended = false;
    while !ended {
        tokio::select! {
            chunk = keys.recv(), if stdin_open => match chunk {
                Some(bytes) => tx.send(Message::Binary(bytes.into())).await?,
                None => {
                    stdin_open = false;
                    if !interactive {
                        tx.send(Message::Text(r#"{"eof":true}"#.into())).await?;
                    }
                }
            },
            _ = resized.recv(), if tty.is_some() => {
                if let Some((cols, rows)) = window_size() {
                    let frame = serde_json::json!({ "resize": [cols, rows] }).to_string();
                    tx.send(Message::Text(frame.into())).await?;
                }
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(out))) => {
                    stdout.write_all(&out)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(code) = v.get("exit") {
                        exit = Some(code.as_i64().unwrap_or(1));
                    } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                        eprintln!("\r\nkiln attach: {e}\r");
                    }
                }
                Some(Ok(Message::Close(_))) | None => ended = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    drop(raw);
                    anyhow::bail!("the attach socket broke: {e}");
                }
            },
        }
    }
    drop(raw);
    match exit {
        Some(code) => {
            eprintln!("detached from r{run}: the shell exited with {code}; the agent resumes");
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
        None => {
            eprintln!(
                "detached from r{run}: the runner closed the session (the run may have ended)"
            );
            Ok(ExitCode::from(1))
        }
    }
}
