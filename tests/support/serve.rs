//! One `kiln serve` child process on a temp data directory, driven with
//! `kiln` commands as a user would: the harness of the tests that start the
//! real binary.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::sandbox::LABEL_RUNNER_ID;

/// The `kiln` binary under test.
pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// One `kiln serve` child; killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves no service behind. Its output goes to a log file,
/// printed when the test fails.
pub struct Serve {
    child: Child,
    log: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Serve {
    /// Start `kiln serve` on `env`'s data directory, on a free loopback
    /// port, with the model script `script`.
    pub fn start(env: &Env, name: &str, script: &Path, requeue: bool) -> Serve {
        let mut args = vec![OsString::from("--script"), script.into()];
        if requeue {
            args.push("--requeue".into());
        }
        Serve::start_with(env, name, &args)
    }

    /// Start `kiln serve --workers 1` on `env`'s data directory, on a free
    /// loopback port, with more arguments.
    pub fn start_with(env: &Env, name: &str, args: &[OsString]) -> Serve {
        let port = free_port();
        let log = env.root.join(format!("{name}.log"));
        let out = File::create(&log).expect("create the serve log");
        let mut cmd = env.kiln();
        cmd.args(["serve", "--workers", "1", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out);
        let child = cmd.spawn().expect("spawn kiln serve");
        Serve {
            child,
            log,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Panics with the service's log if it has exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll kiln serve") {
            panic!(
                "kiln serve exited early ({status}); its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Wait until the service answers `/healthz`: by then it has removed its
    /// orphans and recovered the store (both happen before it listens).
    pub async fn ready(&mut self) {
        let url = format!("{}/healthz", self.url);
        let url = &url;
        // Minutes: the first start may build the sandbox image.
        wait_for(
            self,
            "kiln serve to answer /healthz",
            600,
            move || async move {
                let ok = reqwest::get(url)
                    .await
                    .is_ok_and(|r| r.status().is_success());
                ok.then_some(())
            },
        )
        .await;
    }

    /// What the service has printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no destructor, no flush, no graceful shutdown.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("kill -9 kiln serve");
        let status = self.child.wait().expect("reap kiln serve");
        assert_eq!(
            status.signal(),
            Some(9),
            "kiln serve should have died from SIGKILL, got {status}"
        );
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Removes every container of this test's runner id when dropped, so a
/// failing test does not leave a `sleep 577` sandbox behind.
pub struct Containers(pub String);

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_RUNNER_ID}={}", self.0);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A temp data directory for `kiln` commands and services, run as user
/// alice, with a viewer token for the API.
pub struct Env {
    /// The temp directory: the working directory of every command.
    pub root: PathBuf,
    /// The data directory (`KILN_DATA_DIR`).
    pub data: PathBuf,
    /// A viewer token for the API.
    pub token: String,
    _dir: tempfile::TempDir,
}

impl Env {
    /// A fresh data directory with a viewer token.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        let mut env = Env {
            data: root.join("data"),
            root,
            token: String::new(),
            _dir: dir,
        };
        env.token = env
            .ok(&["token", "create", "test", "--scope", "viewer"], &[])
            .trim()
            .to_string();
        env
    }

    /// `kiln` with this environment's data directory, as user alice, in a
    /// directory without a kiln.toml.
    pub fn kiln(&self) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.current_dir(&self.root)
            .env("KILN_DATA_DIR", &self.data)
            .env("KILN_USER", "alice")
            .env(
                "KILN_IMAGES_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images"),
            )
            .env_remove("KILN_REPO")
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_LISTEN");
        cmd
    }

    /// Run a `kiln` command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str], paths: &[&Path]) -> String {
        let out = self
            .kiln()
            .args(args)
            .args(paths)
            .output()
            .expect("run kiln");
        assert!(
            out.status.success(),
            "kiln {args:?} should succeed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write a model script into the temp directory.
    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.join(name);
        std::fs::write(&path, text).expect("write script");
        path
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Poll `check` until it answers, failing the test after `secs` seconds or
/// as soon as the service dies. Waits for a condition; asserts no duration.
pub async fn wait_for<T, F, Fut>(serve: &mut Serve, what: &str, secs: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        serve.assert_alive();
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
