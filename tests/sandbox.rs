//! End-to-end tests of the Docker sandbox against the real engine.
//!
//! Each test tries to break one guarantee and each assertion says what should
//! have happened. The images are built through the library the first time
//! (hash-tagged, so later runs reuse them); `scripts/setup-sandbox.sh`
//! installs what that build needs.

use std::collections::HashMap;
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bollard::query_parameters::CreateContainerOptions;
use kiln::config::{KilnConfig, Phase, Role};
use kiln::sandbox::docker::DockerBackend;
use kiln::sandbox::workspace::{RepoMirror, Workspace};
use kiln::sandbox::{
    EgressPolicy, ExecEvent, ExecRequest, ExitReason, LABEL_RUNNER_ID, Limits, Sandbox,
    SandboxBackend, SandboxError, SandboxSpec, secrets,
};

use crate::support::{images, test_name};
use images::{docker, images};

/// A backend with its own runner id, cleaned of leftovers from earlier runs.
async fn backend(test: &str) -> DockerBackend {
    let (_, proxy) = images().await;
    let backend = DockerBackend::new(docker().await, format!("test-{test}"))
        .expect("runner id")
        .with_proxy_image(proxy);
    backend
        .remove_orphans()
        .await
        .expect("orphan cleanup should work");
    backend
}

/// A one-commit repository, its mirror, and a workspace checked out from it.
struct Repo {
    _dirs: tempfile::TempDir,
    workspace: Workspace,
}

async fn repo() -> Repo {
    repo_in(&std::env::temp_dir()).await
}

/// Like [`repo`], with every directory under `parent`.
async fn repo_in(parent: &Path) -> Repo {
    let dirs = tempfile::tempdir_in(parent).expect("tempdir");
    let src = dirs.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("README.md"), "hello from the test repo\n").expect("write");
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "README.md"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "init",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(args)
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?} should succeed");
    }
    let mirror = RepoMirror::sync(&dirs.path().join("mirrors"), &src.to_string_lossy())
        .await
        .expect("mirror should clone");
    let workspace = Workspace::create(&mirror, "main", "kiln/test-run", Some(dirs.path()))
        .await
        .expect("workspace should check out");
    Repo {
        _dirs: dirs,
        workspace,
    }
}

/// A backend, a sample repository and a started sandbox for `run_id` in
/// `role`: the setup most tests share. Keep the `Repo` alive for the test.
async fn started(run_id: &str, role: Role) -> (DockerBackend, Repo, Sandbox) {
    let backend = backend(run_id).await;
    let repo = repo().await;
    let sandbox = backend
        .create(spec(run_id, role, &repo).await)
        .await
        .expect("sandbox should start");
    (backend, repo, sandbox)
}

async fn spec(run_id: &str, role: Role, repo: &Repo) -> SandboxSpec {
    let (base, _) = images().await;
    SandboxSpec::new(run_id, role, base, repo.workspace.path())
}

async fn sh(
    backend: &DockerBackend,
    sandbox: &Sandbox,
    script: &str,
) -> kiln::sandbox::ExecOutcome {
    backend
        .exec(
            sandbox,
            ExecRequest::shell(script).timeout(Duration::from_secs(30)),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("exec of `{script}` should run, got: {e}"))
}

/// Bash one-liner that prints CONNECTED or FAILED for a TCP connect.
fn probe(host: &str, port: u16) -> String {
    format!(
        "timeout 3 bash -c 'exec 3<>/dev/tcp/{host}/{port}' 2>/dev/null && echo CONNECTED || echo FAILED"
    )
}

/// A tiny HTTP server on the host that answers `kiln-ok` and counts requests.
fn http_server(bind: &str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((bind, 0)).expect("bind test server");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nkiln-ok");
        }
    });
    (port, hits)
}

/// The address containers use to reach the host: the default route of a
/// container on the default bridge (the engine does not always report the
/// bridge's gateway in its IPAM config).
async fn host_gateway() -> String {
    static GATEWAY: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    GATEWAY
        .get_or_init(|| async {
            let (base, _) = images().await;
            let script = "while read -r i d g rest; do [ \"$d\" = 00000000 ] && echo \"$g\"; done < /proc/net/route; true";
            let hex = run_control(&docker().await, &base, script).await;
            let raw = u32::from_str_radix(hex.trim(), 16).expect("default gateway in /proc/net/route");
            // /proc/net/route prints the address in host (little-endian) byte order.
            std::net::Ipv4Addr::from(raw.swap_bytes()).to_string()
        })
        .await
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_holds_in_a_triage_sandbox() {
    let (backend, repo, sandbox) = started("hardening", Role::Triage).await;

    // Not root.
    let out = sh(&backend, &sandbox, "id -u").await;
    assert_eq!(
        out.stdout_text().trim(),
        "1000",
        "commands should run as uid 1000, got: {out:?}"
    );
    // Every capability set empty; seccomp filtering and no_new_privs on.
    let status = sh(&backend, &sandbox, "cat /proc/self/status")
        .await
        .stdout_text();
    for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap_or("");
        assert!(
            line.ends_with("0000000000000000"),
            "{set} should be empty, got: {line:?}"
        );
    }
    assert!(
        status.contains("NoNewPrivs:\t1"),
        "no_new_privs should be set: {status}"
    );
    assert!(
        status.contains("Seccomp:\t2"),
        "Docker's default seccomp filter should be active: {status}"
    );
    // Read-only workspace for triage; read-only root filesystem.
    for (target, what) in [
        ("/workspace/new-file", "the triage workspace"),
        ("/workspace/README.md", "a workspace file"),
        ("/etc/kiln-test", "/etc"),
        ("/kiln-test", "the root directory"),
        ("/usr/bin/kiln-test", "/usr/bin"),
    ] {
        let out = sh(
            &backend,
            &sandbox,
            &format!("echo x >> {target} && echo WROTE || echo REFUSED"),
        )
        .await;
        assert_eq!(
            out.stdout_text().trim(),
            "REFUSED",
            "writing {what} should fail, got: {out:?}"
        );
    }
    assert_eq!(
        repo.workspace.read("README.md").expect("host read"),
        b"hello from the test repo\n",
        "the workspace should be unchanged"
    );
    // The scratch space that should be writable is.
    let out = sh(
        &backend,
        &sandbox,
        "echo x > /tmp/ok && echo x > ~/ok && echo WROTE",
    )
    .await;
    assert_eq!(
        out.stdout_text().trim(),
        "WROTE",
        "/tmp and home should be writable tmpfs, got: {out:?}"
    );
    // No Docker socket anywhere obvious.
    let out = sh(
        &backend,
        &sandbox,
        "for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock; do [ -e $s ] && echo $s; done; true",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "",
        "no engine socket should be visible, found: {}",
        out.stdout_text()
    );
    // The engine's view agrees.
    let inspect = backend
        .docker()
        .inspect_container(&sandbox.id, None)
        .await
        .expect("inspect");
    let hc = inspect.host_config.expect("host config");
    assert_eq!(hc.privileged, Some(false), "must not be privileged");
    assert_eq!(
        hc.network_mode.as_deref(),
        Some("none"),
        "no egress policy means no network"
    );
    assert!(
        hc.pid_mode.unwrap_or_default() != "host",
        "must not share the host PID namespace"
    );
    assert!(
        hc.ipc_mode.unwrap_or_default() != "host",
        "must not share the host IPC namespace"
    );
    let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
    assert_eq!(
        labels.get(kiln::sandbox::LABEL_RUN_ID).map(String::as_str),
        Some("hardening")
    );
    assert_eq!(
        labels
            .get(kiln::sandbox::LABEL_RUNNER_ID)
            .map(String::as_str),
        Some("test-hardening")
    );

    backend.destroy(sandbox).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implementation_can_write_the_workspace() {
    let (backend, repo, sandbox) = started("rw", Role::Implementation).await;
    let out = sh(
        &backend,
        &sandbox,
        "echo changed > README.md && git status --porcelain",
    )
    .await;
    assert!(
        out.reason.success(),
        "implementation should write its workspace, got: {out:?}"
    );
    assert_eq!(
        out.stdout_text().trim(),
        "M README.md",
        "git should work in the sandbox: {out:?}"
    );
    let out = sh(&backend, &sandbox, "git rev-parse --abbrev-ref HEAD").await;
    assert_eq!(
        out.stdout_text().trim(),
        "kiln/test-run",
        "workspace should be on the run branch"
    );
    assert_eq!(
        repo.workspace.read("README.md").expect("host read"),
        b"changed\n"
    );
    backend.destroy(sandbox).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_caps_and_times_out() {
    let backend = backend("exec").await;
    let repo = repo().await;
    let mut spec = spec("exec", Role::Triage, &repo).await;
    spec.output_cap = 1000;
    let sandbox = backend.create(spec).await.expect("sandbox should start");

    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let request = ExecRequest::new([
        "bash",
        "-c",
        "echo out; echo err >&2; head -c 5000 /dev/zero; exit 3",
    ]);
    let out = backend
        .exec(&sandbox, request, Some(tx))
        .await
        .expect("exec");
    assert_eq!(
        out.reason,
        ExitReason::Exited(3),
        "exit status should be reported: {out:?}"
    );
    assert_eq!(out.stderr_text(), "err\n");
    assert_eq!(
        out.stdout.len(),
        1000,
        "stdout should be capped at 1000 bytes"
    );
    assert_eq!(
        out.stdout_dropped,
        4 + 5000 - 1000,
        "dropped bytes should be counted"
    );
    let mut streamed = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let ExecEvent::Stdout(bytes) = event {
            streamed.extend(bytes);
        }
    }
    assert_eq!(
        streamed, out.stdout,
        "streamed stdout should match the kept stdout"
    );

    let request = ExecRequest::new(["env"])
        .env("KILN_TEST_VAR", "v1")
        .workdir("/tmp");
    let out = backend.exec(&sandbox, request, None).await.expect("exec");
    assert!(
        out.stdout_text().contains("KILN_TEST_VAR=v1"),
        "env should be passed: {out:?}"
    );
    assert!(
        !out.stdout_text().contains("KILN_PIDFILE"),
        "the wrapper's variable should not leak: {out:?}"
    );

    let request =
        ExecRequest::shell("sleep 1000 & sleep 1001; echo never").timeout(Duration::from_secs(1));
    let out = backend.exec(&sandbox, request, None).await.expect("exec");
    assert!(
        matches!(out.reason, ExitReason::TimedOut(_)),
        "a command past its timeout should be reported as timed out, got: {out:?}"
    );
    let left = sh(
        &backend,
        &sandbox,
        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
    )
    .await
    .stdout_text();
    assert!(
        !left.contains("sleep 100"),
        "timed-out command and its children should be killed, left: {left}"
    );
    backend.destroy(sandbox).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_and_memory_hog_are_stopped_and_reported() {
    let backend = backend("limits").await;
    let repo = repo().await;
    let mut spec = spec("limits", Role::Implementation, &repo).await;
    spec.limits = Limits {
        memory_bytes: 96 << 20,
        pids: 64,
        nano_cpus: 1_000_000_000,
    };
    spec.output_cap = 16 << 10;
    let sandbox = backend.create(spec).await.expect("sandbox should start");

    let bomb = ExecRequest::shell(":(){ :|:& };:; sleep 30").timeout(Duration::from_secs(4));
    let out = backend
        .exec(&sandbox, bomb, None)
        .await
        .expect("the runner should survive a fork bomb");
    assert!(
        matches!(out.reason, ExitReason::PidsLimit { .. }),
        "a fork bomb should be reported as hitting the pids limit, got: {} ({out:?})",
        out.reason
    );
    let alive = sh(&backend, &sandbox, "echo alive").await;
    assert_eq!(
        alive.stdout_text().trim(),
        "alive",
        "the sandbox should be usable after the fork bomb: {alive:?}"
    );

    // A command that leaves a fork bomb behind and exits: what it started
    // ends with it, and the next command has processes to run on. The
    // builtin-only busy wait lets the bomb fill the pids limit first.
    let left = sh(
        &backend,
        &sandbox,
        "(:(){ :|:& };:) >/dev/null 2>&1 & SECONDS=0; while [ $SECONDS -lt 2 ]; do :; done; echo left-it",
    )
    .await;
    assert_eq!(left.stdout_text().trim(), "left-it", "{left:?}");
    let after = sh(
        &backend,
        &sandbox,
        "n=0; for d in /proc/[0-9]*; do read -r st < $d/stat 2>/dev/null || continue; \
         set -- ${st##*) }; [ \"$4\" = \"$(cut -d' ' -f6 /proc/self/stat)\" ] || n=$((n+1)); done; echo others=$n",
    )
    .await;
    // PID 1 and its idle `sleep` are the only processes outside this command.
    assert_eq!(
        after.stdout_text().trim(),
        "others=2",
        "nothing of the bomb outlived its command: {after:?}"
    );

    let hog = ExecRequest::shell("x=a; while :; do x=$x$x; done").timeout(Duration::from_secs(60));
    let out = backend
        .exec(&sandbox, hog, None)
        .await
        .expect("the runner should survive a memory hog");
    assert_eq!(
        out.reason,
        ExitReason::OomKilled,
        "a memory hog should be reported as OOM-killed, got: {out:?}"
    );
    let alive = sh(&backend, &sandbox, "echo alive").await;
    assert_eq!(
        alive.stdout_text().trim(),
        "alive",
        "the sandbox should be usable after the OOM kill: {alive:?}"
    );
    backend.destroy(sandbox).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_egress_admits_only_allowlisted_hosts() {
    let backend = backend("egress").await;
    let repo = repo().await;
    let gateway = host_gateway().await;
    let (port, hits) = http_server("0.0.0.0");
    let mut spec = spec("egress", Role::Implementation, &repo).await;
    spec.egress = Some(
        EgressPolicy::new(vec!["allowed.kiln.test".into()])
            .with_static_host("allowed.kiln.test", "host-gateway")
            .with_static_host("denied.kiln.test", "host-gateway"),
    );
    let sandbox = backend
        .create(spec)
        .await
        .expect("sandbox with egress should start");
    assert_eq!(sandbox.phase, Phase::Setup);

    // Through the proxy, the way HTTP clients honouring HTTP_PROXY go.
    let via_proxy = |host: &str| {
        format!(
            "p=${{HTTP_PROXY#http://}}; exec 3<>/dev/tcp/${{p%:*}}/${{p##*:}} || exit 9; \
             printf 'GET http://{host}:{port}/ HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' >&3; timeout 5 cat <&3"
        )
    };
    let out = sh(&backend, &sandbox, &via_proxy("allowed.kiln.test")).await;
    assert!(
        out.stdout_text().contains("kiln-ok"),
        "an allowlisted host should be reachable via the proxy, got: {out:?}"
    );
    let out = sh(&backend, &sandbox, &via_proxy("denied.kiln.test")).await;
    assert!(
        out.stdout_text().contains("403") && !out.stdout_text().contains("kiln-ok"),
        "a host not on the allowlist should get 403, got: {out:?}"
    );
    let connect_ip = format!(
        "p=${{HTTP_PROXY#http://}}; exec 3<>/dev/tcp/${{p%:*}}/${{p##*:}}; \
         printf 'CONNECT {gateway}:{port} HTTP/1.1\\r\\n\\r\\n' >&3; timeout 5 head -1 <&3"
    );
    let out = sh(&backend, &sandbox, &connect_ip).await;
    assert!(
        out.stdout_text().contains("403"),
        "CONNECT to a bare IP should be refused, got: {out:?}"
    );

    // Ignoring HTTP_PROXY: no route to the host, the internet, or the proxy's other ports.
    for (host, p, what) in [
        (gateway.as_str(), port, "the host via the bridge gateway"),
        ("1.1.1.1", 443, "an internet address"),
        ("8.8.8.8", 53, "a public DNS server"),
    ] {
        let out = sh(
            &backend,
            &sandbox,
            &format!(
                "unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy; {}",
                probe(host, p)
            ),
        )
        .await;
        assert_eq!(
            out.stdout_text().trim(),
            "FAILED",
            "{what} should be unreachable without the proxy, got: {out:?}"
        );
    }
    let out = sh(&backend, &sandbox, "timeout 3 getent hosts allowed.kiln.test || timeout 3 getent hosts example.com && echo RESOLVED || echo NO-DNS").await;
    assert!(
        out.stdout_text().contains("NO-DNS"),
        "the sandbox should not resolve names itself: {out:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "only the allowlisted request should have reached the host server"
    );

    backend.destroy(sandbox).await.expect("destroy");
    let leftovers = backend.remove_orphans().await.expect("cleanup");
    assert_eq!(
        leftovers, 0,
        "destroy should remove the proxy and networks too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_phase_has_no_route_anywhere() {
    let backend = backend("noroute").await;
    let repo = repo().await;
    let gateway = host_gateway().await;
    let (public_port, public_hits) = http_server("0.0.0.0");
    let (loopback_port, loopback_hits) = http_server("127.0.0.1");
    let (base, _) = images().await;

    // A peer container listening on the default bridge; a control container proves it is reachable.
    let docker = backend.docker().clone();
    let (peer_ip, _peer_conf) = peer_listener(&docker, &backend).await;
    // The peer may take a moment to listen; the control retries inside one container.
    let control_script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do r=$({}); [ \"$r\" = CONNECTED ] && break; sleep 0.3; done; echo $r",
        probe(&peer_ip, 3128)
    );
    let control = run_control(&docker, &base, &control_script).await;
    assert!(
        control.contains("CONNECTED"),
        "control: the peer should be reachable from a bridged container, got {control}"
    );

    let mut spec = spec("noroute", Role::Implementation, &repo).await;
    spec.egress = Some(
        EgressPolicy::new(vec!["allowed.kiln.test".into()])
            .with_static_host("allowed.kiln.test", "host-gateway"),
    );
    let mut sandbox = backend.create(spec).await.expect("sandbox should start");
    let proxy_url = sandbox.proxy_url().expect("setup phase has a proxy");
    backend
        .enter_agent_phase(&mut sandbox)
        .await
        .expect("agent phase should start");
    assert_eq!(
        sandbox.proxy_url(),
        None,
        "the agent phase should have no proxy"
    );

    let out = sh(&backend, &sandbox, "echo /sys/class/net/*").await;
    assert_eq!(
        out.stdout_text().trim(),
        "/sys/class/net/lo",
        "only loopback should remain, got: {out:?}"
    );
    let proxy_host = proxy_url
        .trim_start_matches("http://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for (host, port, what) in [
        ("127.0.0.1", loopback_port, "a loopback server on the host"),
        (
            gateway.as_str(),
            public_port,
            "the host via the bridge gateway",
        ),
        (peer_ip.as_str(), 3128, "another container"),
        (proxy_host.as_str(), 3128, "the former setup-phase proxy"),
        ("1.1.1.1", 443, "an internet address"),
    ] {
        let out = sh(&backend, &sandbox, &probe(host, port)).await;
        assert_eq!(
            out.stdout_text().trim(),
            "FAILED",
            "{what} should be unreachable in the agent phase, got: {out:?}"
        );
    }
    assert_eq!(
        public_hits.load(Ordering::SeqCst) + loopback_hits.load(Ordering::SeqCst),
        0,
        "no connection should reach the host servers"
    );

    backend.destroy(sandbox).await.expect("destroy");
    // The peer carries this runner's label, so the start-up cleanup removes it.
    backend.remove_orphans().await.expect("cleanup");
}

/// Starts a tinyproxy container on the default bridge as a listening peer;
/// returns its IP and the config directory it mounts.
async fn peer_listener(
    docker: &bollard::Docker,
    backend: &DockerBackend,
) -> (String, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt as _;
    let (_, proxy) = images().await;
    let conf = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(conf.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        conf.path().join("tinyproxy.conf"),
        "Port 3128\nListen 0.0.0.0\nLogLevel Info\n",
    )
    .expect("write");
    let body = bollard::models::ContainerCreateBody {
        image: Some(proxy),
        labels: Some(HashMap::from([(
            LABEL_RUNNER_ID.to_string(),
            backend.runner_id().to_string(),
        )])),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(vec![format!(
                "{}:/etc/kiln-proxy:ro",
                conf.path().display()
            )]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .expect("create peer");
    docker
        .start_container(&created.id, None)
        .await
        .expect("start peer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ip = docker
        .inspect_container(&created.id, None)
        .await
        .expect("inspect peer")
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove("bridge"))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty())
        .expect("peer IP on the default bridge");
    (ip, conf)
}

/// Runs `script` in a throwaway container on the default bridge and returns its output.
async fn run_control(docker: &bollard::Docker, image: &str, script: &str) -> String {
    use futures_util::StreamExt as _;
    let body = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["bash".into(), "-c".into(), script.into()]),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .expect("create control");
    docker
        .start_container(&created.id, None)
        .await
        .expect("start control");
    let mut wait = docker.wait_container(&created.id, None);
    while wait.next().await.is_some() {}
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(&created.id, Some(options));
    let mut out = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&chunk.to_string());
    }
    let remove = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
        .force(true)
        .build();
    docker
        .remove_container(&created.id, Some(remove))
        .await
        .expect("remove control");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_in_scope_and_setup_secrets_die_with_setup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, value).expect("write secret");
        p
    };
    let setup_file = write("setup", "kiln-setup-secret-5d2f9a");
    let review_file = write("review", "kiln-review-secret-81c3e4");
    let agent_file = write("agent", "kiln-agent-secret-77aa01");
    let config = KilnConfig::from_toml(&format!(
        "[[secrets]]\nname = \"setup-tok\"\nsource = {{ file = \"{}\" }}\nscope = {{ roles = [\"implementation\"], phase = \"setup\" }}\n\
         [[secrets]]\nname = \"review-tok\"\nsource = {{ file = \"{}\" }}\nscope = {{ roles = [\"review\"], phase = \"agent\" }}\n\
         [[secrets]]\nname = \"agent-tok\"\nsource = {{ file = \"{}\" }}\nscope = {{ roles = [\"implementation\"], phase = \"agent\" }}\n",
        setup_file.display(),
        review_file.display(),
        agent_file.display()
    ))
    .expect("valid config");

    let backend = backend("secrets").await;
    let repo = repo().await;
    let mut spec = spec("secrets", Role::Implementation, &repo).await;
    spec.setup_secrets =
        secrets::resolve(&config, Role::Implementation, Phase::Setup).expect("resolve");
    spec.agent_secrets =
        secrets::resolve(&config, Role::Implementation, Phase::Agent).expect("resolve");
    let mut sandbox = backend.create(spec).await.expect("sandbox should start");
    assert_eq!(
        sandbox.phase,
        Phase::Setup,
        "setup secrets imply a setup phase"
    );

    let out = sh(&backend, &sandbox, "echo \"$SETUP_TOK\"").await;
    assert_eq!(
        out.stdout_text().trim(),
        "kiln-setup-secret-5d2f9a",
        "control: the setup secret should be present in setup"
    );
    // A setup process that tries to outlive the phase, holding the secret in its environment.
    sh(
        &backend,
        &sandbox,
        "setsid sleep 600 >/dev/null 2>&1 < /dev/null & disown; echo started",
    )
    .await;
    backend
        .enter_agent_phase(&mut sandbox)
        .await
        .expect("agent phase should start");

    // Environments of every process (the agent's own and anything left over).
    let envs = "env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'";
    let out = sh(&backend, &sandbox, envs).await.stdout_text();
    assert!(
        !out.contains("kiln-setup-secret"),
        "the setup secret should be gone from every environment in the agent phase, found in: {out}"
    );
    assert!(
        !out.contains("kiln-review-secret"),
        "review's secret should never enter an implementation sandbox: {out}"
    );
    // Files in every writable place. The patterns are split so this script's
    // own command line does not contain them.
    let files = "a=kiln-setup-; b=kiln-review-; s=secret; \
                 grep -rlsF -e \"$a$s\" -e \"$b$s\" /tmp /home/agent /workspace /dev/shm; echo END";
    let out = sh(&backend, &sandbox, files).await.stdout_text();
    assert_eq!(
        out.trim(),
        "END",
        "no file should hold the setup or the unscoped secret, found: {out}"
    );
    let out = sh(
        &backend,
        &sandbox,
        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
    )
    .await
    .stdout_text();
    assert!(
        !out.contains("sleep 600"),
        "setup processes should not survive into the agent phase: {out}"
    );
    let out = sh(&backend, &sandbox, "echo \"$AGENT_TOK\"").await;
    assert_eq!(
        out.stdout_text().trim(),
        "kiln-agent-secret-77aa01",
        "control: the agent secret should be present"
    );
    let inspect = backend
        .docker()
        .inspect_container(&sandbox.id, None)
        .await
        .expect("inspect");
    let env = inspect
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
        .join(" ");
    assert!(
        !env.contains("kiln-") || !env.contains("secret"),
        "no secret should be in the container config: {env}"
    );
    backend.destroy(sandbox).await.expect("destroy");

    // A setup command that writes its secret to a file stops the run.
    let mut spec2 = self::spec("secrets2", Role::Implementation, &repo).await;
    spec2.setup_secrets =
        secrets::resolve(&config, Role::Implementation, Phase::Setup).expect("resolve");
    let mut sandbox = backend.create(spec2).await.expect("sandbox should start");
    sh(&backend, &sandbox, "echo \"token=$SETUP_TOK\" > ~/.npmrc").await;
    let result = backend.enter_agent_phase(&mut sandbox).await;
    assert!(
        matches!(&result, Err(SandboxError::SecretPersisted { paths, .. }) if paths.iter().any(|p| p.ends_with(".npmrc"))),
        "a setup secret written to a file should refuse the agent phase, got: {result:?}"
    );
    assert_eq!(
        sandbox.phase,
        Phase::Setup,
        "the sandbox must not be marked as in the agent phase"
    );
    backend.destroy(sandbox).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_file_access_refuses_symlink_escapes() {
    let (backend, repo, sandbox) = started("symlink", Role::Implementation).await;
    let out = sh(
        &backend,
        &sandbox,
        "ln -s /etc/shadow shadow && ln -s ../../../../../../etc/passwd up && ln -s / root && \
         mkdir d && ln -s /tmp d/tmp && ln -s README.md inside && echo planted",
    )
    .await;
    assert_eq!(
        out.stdout_text().trim(),
        "planted",
        "control: the container should plant its links: {out:?}"
    );
    let ws = &repo.workspace;
    // Each attempt names a way out of the workspace.
    for path in [
        "shadow",
        "up",
        "root/etc/passwd",
        "d/tmp/x",
        "../README.md",
        "/etc/passwd",
    ] {
        let result = ws.read(path);
        assert!(
            result.is_err(),
            "reading `{path}` should be refused as an escape, got: {:?}",
            result.map(|b| b.len())
        );
    }
    for path in [
        "root/tmp/kiln-pwned",
        "d/tmp/kiln-pwned",
        "shadow",
        "../kiln-pwned",
        "/tmp/kiln-pwned",
    ] {
        let result = ws.write(path, b"pwned");
        assert!(
            result.is_err(),
            "writing `{path}` should be refused as an escape, got: {result:?}"
        );
    }
    assert!(
        !Path::new("/tmp/kiln-pwned").exists(),
        "nothing should have been written outside the workspace"
    );
    // Links that stay inside are fine.
    assert_eq!(
        ws.read("inside")
            .expect("a link inside the workspace should be readable"),
        b"hello from the test repo\n"
    );
    backend.destroy(sandbox).await.expect("destroy");
}

/// Environment variable that turns `child_holds_sandbox` into the helper process.
const CHILD_ENV: &str = "KILN_TEST_CHILD_RUNNER";
/// Directory the helper process keeps its repository and workspace in.
const CHILD_DIR_ENV: &str = "KILN_TEST_CHILD_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_runner_leaves_a_container_that_startup_removes() {
    let runner_id = "test-killed-runner";
    // Clean slate, and the images exist before the child needs them.
    backend("killed-runner").await;
    let cleanup = DockerBackend::new(docker().await, runner_id).expect("runner id");
    cleanup.remove_orphans().await.expect("cleanup");

    let exe = std::env::current_exe().expect("test binary path");
    // The child dies by SIGKILL and cannot clean up; its files live in ours.
    let child_dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", &test_name(module_path!(), "child_holds_sandbox")])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, runner_id)
        .env(CHILD_DIR_ENV, child_dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(child_dir.path().join("stderr")).expect("stderr file"))
        .spawn()
        .expect("spawn the runner child");
    let stdout = child.stdout.take().expect("child stdout");
    let container = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap_or_default();
            // libtest prints "test name ... " before the test's own output on the same line.
            if let Some((_, id)) = line.split_once("KILN-READY ") {
                return Some(id.trim().to_string());
            }
        }
        None
    })
    .await
    .expect("reader");
    let Some(container) = container else {
        let stderr = std::fs::read_to_string(child_dir.path().join("stderr")).unwrap_or_default();
        panic!("the child runner should report its sandbox; its stderr:\n{stderr}");
    };
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL on Unix.
    let _ = child.wait();

    let docker = docker().await;
    assert!(
        docker.inspect_container(&container, None).await.is_ok(),
        "control: the killed runner's container should still exist"
    );
    let restarted = DockerBackend::new(docker.clone(), runner_id).expect("runner id");
    let removed = restarted
        .remove_orphans()
        .await
        .expect("start-up cleanup should work");
    assert!(
        removed >= 1,
        "start-up should remove the orphan, removed {removed}"
    );
    let gone = docker.inspect_container(&container, None).await;
    assert!(
        gone.is_err(),
        "the orphan container should be gone after start-up cleanup"
    );
}

/// Helper process for `killed_runner_leaves_a_container_that_startup_removes`:
/// creates a sandbox, reports it, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process spawned by killed_runner_leaves_a_container_that_startup_removes"]
async fn child_holds_sandbox() {
    let Ok(runner_id) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = std::env::var_os(CHILD_DIR_ENV).expect("the parent passes a directory");
    let (base, _) = images().await;
    let backend = DockerBackend::new(docker().await, runner_id).expect("runner id");
    let repo = repo_in(Path::new(&dir)).await;
    let sandbox = backend
        .create(SandboxSpec::new(
            "killed",
            Role::Triage,
            base,
            repo.workspace.path(),
        ))
        .await
        .expect("sandbox should start");
    println!("KILN-READY {}", sandbox.id);
    std::io::stdout().flush().expect("flush");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn sandboxes_of_dead_cli_processes_are_removed_and_live_ones_kept() {
    // Two stand-in "CLI processes": one killed, one alive.
    let mut dead = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn");
    let mut alive = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .expect("spawn");
    let prefix = "test-cli-dead-";
    let (_, proxy) = images().await;
    let as_process = |pid: u32| {
        DockerBackend::new(docker_blocking(), format!("{prefix}{pid}"))
            .expect("runner id")
            .with_proxy_image(proxy.clone())
    };
    let repo = repo().await;
    let gone = as_process(dead.id());
    let kept = as_process(alive.id());
    let gone_box = gone
        .create(spec("dead-1", Role::Triage, &repo).await)
        .await
        .expect("sandbox");
    let kept_box = kept
        .create(spec("alive-1", Role::Triage, &repo).await)
        .await
        .expect("sandbox");
    dead.kill().expect("kill");
    dead.wait().expect("reap");

    let me = as_process(std::process::id());
    let removed = me
        .remove_orphans_of_dead_processes(prefix)
        .await
        .expect("cleanup");
    assert_eq!(removed, 1, "the dead process's container is removed");
    let ls = |id: &str| {
        std::process::Command::new("docker")
            .args(["container", "inspect", id])
            .output()
            .expect("docker")
            .status
            .success()
    };
    assert!(!ls(&gone_box.id), "the dead process's sandbox is gone");
    assert!(ls(&kept_box.id), "a live process's sandbox is kept");
    kept.destroy(kept_box).await.expect("destroy");
    alive.kill().expect("kill");
    let _ = alive.wait();
}

/// A Docker client without negotiating (usable in a sync closure).
fn docker_blocking() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("docker client")
}
