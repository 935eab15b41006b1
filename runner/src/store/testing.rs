//! Test support (not part of Kiln's interface): a throwaway PostgreSQL
//! cluster for the store's contract suite and the integration tests.
//!
//! [`PgCluster::shared`] starts one cluster per test process: `initdb` and
//! `postgres` from Debian's `postgresql` package (`scripts/setup.sh`
//! installs it), in a temp dir, on a free loopback port, as `nobody` when
//! the tests run as root (the server refuses to run as root). A small
//! shell keeper owns the server and waits on a pipe from the test process:
//! when the process exits, however it exits, the pipe closes and the keeper
//! stops the server and removes the directory. Each test takes a database
//! of its own ([`PgCluster::database`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The login the cluster is made with.
pub const USER: &str = "kiln";

/// A running throwaway cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// The loopback port it listens on.
    pub port: u16,
    /// The superuser's password (password authentication is on).
    pub password: String,
    /// Its directory (data, logs, socket).
    pub dir: PathBuf,
    /// The keeper: its stdin is the pipe whose end stops the cluster.
    _keeper: Child,
}

/// What the keeper runs: initdb, the server, then waits for its stdin to close.
const KEEPER: &str = r#"
dir="$1"; port="$2"; bin="$3"
cleanup() { [ -n "$pid" ] && kill -INT "$pid" 2>/dev/null && wait "$pid"; rm -rf "$dir"; }
if ! "$bin/initdb" -D "$dir/data" -U kiln --pwfile="$dir/pw" --auth=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 -N >"$dir/initdb.log" 2>&1; then
    echo failed >"$dir/state"; cat >/dev/null; rm -rf "$dir"; exit 1
fi
"$bin/postgres" -D "$dir/data" -p "$port" -h 127.0.0.1 -k "$dir" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=400 -c shared_buffers=64MB >"$dir/postgres.log" 2>&1 &
pid=$!
cat >/dev/null
cleanup
"#;

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The directory holding `initdb`, `postgres` and `pg_isready`:
/// `KILN_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
pub fn server_bin() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("KILN_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
        .ok_or_else(|| {
            "PostgreSQL server binaries not found (initdb under /usr/lib/postgresql/*/bin): \
             run scripts/setup.sh, which installs Debian's postgresql package"
                .to_string()
        })
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl PgCluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> Result<&'static PgCluster, String> {
        CLUSTER
            .get_or_init(PgCluster::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts a cluster (blocking, a second or two).
    pub fn start() -> Result<PgCluster, String> {
        let bin = server_bin()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("kiln-pg-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let password = format!("pw-{nanos}-{}", std::process::id());
        std::fs::write(dir.join("pw"), &password).map_err(|e| format!("password file: {e}"))?;
        let root = is_root();
        if root {
            // The server refuses to run as root: hand the directory to nobody.
            for p in [dir.clone(), dir.join("pw")] {
                std::os::unix::fs::chown(&p, Some(65534), Some(65534))
                    .map_err(|e| format!("chown {}: {e}", p.display()))?;
            }
        }
        let port = free_port()?;
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "sh",
            ]);
            c
        } else {
            Command::new("sh")
        };
        cmd.arg("-c")
            .arg(KEEPER)
            .arg("kiln-pg-keeper")
            .arg(&dir)
            .arg(port.to_string())
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let keeper = cmd
            .spawn()
            .map_err(|e| format!("cannot start the PostgreSQL keeper: {e}"))?;
        let cluster = PgCluster {
            port,
            password,
            dir,
            _keeper: keeper,
        };
        cluster.wait_ready(&bin)?;
        Ok(cluster)
    }

    fn wait_ready(&self, bin: &Path) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.dir.join("state").is_file() {
                return Err(format!("initdb failed:\n{}", self.log("initdb.log")));
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL did not start on port {} within 60 s:\n{}\n{}",
                    self.port,
                    self.log("initdb.log"),
                    self.log("postgres.log")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, name: &str) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join(name)) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Connection settings for `dbname`, password included.
    pub fn config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(self.password.clone())
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// `postgres://kiln@127.0.0.1:PORT/DBNAME` (no password: `[store] url`).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{dbname}", self.port)
    }

    /// A new, empty database of its own for one test; returns its name.
    pub async fn database(&self) -> Result<String, String> {
        let name = format!(
            "kiln_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = self
            .config("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to the test cluster: {e}"))?;
        let conn = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        drop(client);
        let _ = conn.await;
        Ok(name)
    }
}
