//! The setup phase's egress allowlist, enforced in the network path.
//!
//! Layout, per run (verified on Docker 20.10 with the bridge driver):
//!
//! ```text
//!  sandbox ──(kiln-<run>-int: --internal, inhibit_ipv4)── proxy ──(kiln-<run>-out: bridge)── allowlisted hosts
//! ```
//!
//! - The sandbox's only interface is on an **internal** network: Docker adds
//!   no NAT and drops forwarded traffic, so nothing outside the network is
//!   routable from it, whatever the program (`HTTP_PROXY` is a convenience,
//!   not the enforcement).
//! - A plain `--internal` network is **not** enough: the host still owns the
//!   network's gateway address, so the sandbox can reach every host service
//!   listening on `0.0.0.0` (and other bridges' gateway addresses), which we
//!   measured. `com.docker.network.bridge.inhibit_ipv4` keeps the host off
//!   the network entirely; then the only peer on it is the proxy.
//! - The proxy is a container run from the locally built `proxy` image
//!   (tinyproxy, built `FROM` the base image: no registry). It is attached to
//!   both networks, runs as a non-root user with every capability dropped and
//!   a read-only root, and forwards requests (plain HTTP or `CONNECT`, any
//!   port) only to host names that match the allowlist exactly; everything
//!   else, IP literals included, gets 403.
//! - A proxy on the host bound to the gateway address was rejected: it needs
//!   the gateway address, which is exactly what exposes the host's other
//!   services.
//!
//! The agent phase disconnects the sandbox from the internal network, leaving
//! only loopback, and removes the proxy and both networks.

use std::collections::HashMap;
use std::io::Write as _;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};

use super::{LABEL_MANAGED, LABEL_RUN_ID, LABEL_RUNNER_ID, SandboxError};
use crate::config::is_host_name;

/// Port the proxy listens on inside its container.
pub const PROXY_PORT: u16 = 3128;

/// Which host names the setup phase may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Exact host names (no wildcards) the proxy admits.
    pub allow: Vec<String>,
    /// Static name → address entries for the proxy's resolver, e.g. an
    /// internal package mirror without DNS. `host-gateway` names the host.
    pub static_hosts: Vec<(String, String)>,
}

impl EgressPolicy {
    /// A policy admitting exactly these host names.
    pub fn new(allow: Vec<String>) -> Self {
        Self {
            allow,
            static_hosts: Vec::new(),
        }
    }

    /// Adds a static resolver entry for the proxy.
    pub fn with_static_host(mut self, name: impl Into<String>, address: impl Into<String>) -> Self {
        self.static_hosts.push((name.into(), address.into()));
        self
    }

    fn validate(&self) -> Result<(), SandboxError> {
        for host in self
            .allow
            .iter()
            .chain(self.static_hosts.iter().map(|(n, _)| n))
        {
            if !is_host_name(host) {
                return Err(SandboxError::Invalid(format!(
                    "egress host `{host}` is not a host name"
                )));
            }
        }
        for (_, addr) in &self.static_hosts {
            if addr != "host-gateway" && addr.parse::<std::net::IpAddr>().is_err() {
                return Err(SandboxError::Invalid(format!(
                    "static host address `{addr}` must be an IP address or host-gateway"
                )));
            }
        }
        Ok(())
    }

    /// tinyproxy's filter file: one anchored, escaped regex per host, so
    /// `example.com` admits neither `example.com.evil.net` nor `xexample.com`.
    pub fn filter_file(&self) -> String {
        self.allow
            .iter()
            .map(|h| format!("^{}$\n", h.to_ascii_lowercase().replace('.', "\\.")))
            .collect()
    }
}

/// tinyproxy's configuration; the filter is default-deny on host names.
const TINYPROXY_CONF: &str = "\
Port 3128
Listen 0.0.0.0
Timeout 600
MaxClients 64
DisableViaHeader Yes
FilterDefaultDeny Yes
FilterType ere
FilterURLs No
FilterCaseSensitive No
Filter \"/etc/kiln-proxy/filter\"
LogLevel Info
";

/// The Docker objects that give one run its setup-phase egress.
#[derive(Debug)]
pub(crate) struct EgressRoute {
    pub(crate) internal_network: String,
    pub(crate) outside_network: String,
    pub(crate) proxy_container: String,
    pub(crate) proxy_ip: String,
    _config_dir: tempfile::TempDir,
}

impl EgressRoute {
    /// The URL setup commands get as `HTTP_PROXY`/`HTTPS_PROXY`.
    pub(crate) fn proxy_url(&self) -> String {
        format!("http://{}:{PROXY_PORT}", self.proxy_ip)
    }

    /// Creates both networks and the proxy. On failure, removes whatever it created.
    pub(crate) async fn create(
        docker: &Docker,
        runner_id: &str,
        run_id: &str,
        proxy_image: &str,
        policy: &EgressPolicy,
    ) -> Result<Self, SandboxError> {
        policy.validate()?;
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_RUN_ID.to_string(), run_id.to_string()),
            (LABEL_RUNNER_ID.to_string(), runner_id.to_string()),
        ]);
        // Run ids are unique only per runner: the runner id keeps two
        // services' `r1` networks and proxies apart.
        let internal_network = format!("kiln-{runner_id}-{run_id}-int");
        let outside_network = format!("kiln-{runner_id}-{run_id}-out");
        let proxy_container = format!("kiln-{runner_id}-{run_id}-proxy");
        let config_dir = write_config(policy)?;
        let mut route = Self {
            internal_network,
            outside_network,
            proxy_container,
            proxy_ip: String::new(),
            _config_dir: config_dir,
        };
        match route.build(docker, proxy_image, policy, labels).await {
            Ok(()) => Ok(route),
            Err(e) => {
                route.remove(docker).await;
                Err(e)
            }
        }
    }

    async fn build(
        &mut self,
        docker: &Docker,
        proxy_image: &str,
        policy: &EgressPolicy,
        labels: HashMap<String, String>,
    ) -> Result<(), SandboxError> {
        docker
            .create_network(NetworkCreateRequest {
                name: self.internal_network.clone(),
                driver: Some("bridge".into()),
                internal: Some(true),
                // Keeps the host itself off this network (see the module docs).
                options: Some(HashMap::from([(
                    "com.docker.network.bridge.inhibit_ipv4".to_string(),
                    "true".to_string(),
                )])),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(SandboxError::engine(format!(
                "create network {}",
                self.internal_network
            )))?;
        docker
            .create_network(NetworkCreateRequest {
                name: self.outside_network.clone(),
                driver: Some("bridge".into()),
                labels: Some(labels.clone()),
                ..Default::default()
            })
            .await
            .map_err(SandboxError::engine(format!(
                "create network {}",
                self.outside_network
            )))?;

        let config_path = self._config_dir.path().to_string_lossy().into_owned();
        let body = ContainerCreateBody {
            image: Some(proxy_image.to_string()),
            user: Some(super::SANDBOX_USER.into()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                readonly_rootfs: Some(true),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,nosuid,nodev,noexec,size=16m".to_string(),
                )])),
                binds: Some(vec![format!("{config_path}:/etc/kiln-proxy:ro")]),
                network_mode: Some(self.outside_network.clone()),
                extra_hosts: Some(
                    policy
                        .static_hosts
                        .iter()
                        .map(|(n, a)| format!("{n}:{a}"))
                        .collect(),
                ),
                pids_limit: Some(128),
                memory: Some(128 << 20),
                memory_swap: Some(128 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        docker
            .create_container(
                Some(
                    CreateContainerOptionsBuilder::default()
                        .name(&self.proxy_container)
                        .build(),
                ),
                body,
            )
            .await
            .map_err(SandboxError::engine("create egress proxy"))?;
        docker
            .connect_network(
                &self.internal_network,
                NetworkConnectRequest {
                    container: self.proxy_container.clone(),
                    endpoint_config: Some(EndpointSettings::default()),
                },
            )
            .await
            .map_err(SandboxError::engine(
                "attach egress proxy to the internal network",
            ))?;
        docker
            .start_container(&self.proxy_container, None)
            .await
            .map_err(SandboxError::engine("start egress proxy"))?;
        let inspect = docker
            .inspect_container(&self.proxy_container, None)
            .await
            .map_err(SandboxError::engine("inspect egress proxy"))?;
        self.proxy_ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.internal_network))
            .and_then(|e| e.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| {
                SandboxError::Egress("the proxy has no address on the internal network".into())
            })?;
        wait_for_proxy(docker, &self.proxy_container).await
    }

    /// Removes the proxy and both networks; errors are logged, not returned,
    /// because this runs on cleanup paths that must carry on.
    pub(crate) async fn remove(&self, docker: &Docker) {
        let force = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = docker
            .remove_container(&self.proxy_container, Some(force))
            .await
            && !is_not_found(&e)
        {
            tracing::warn!(container = %self.proxy_container, error = %e, "cannot remove egress proxy");
        }
        for net in [&self.internal_network, &self.outside_network] {
            if let Err(e) = docker.remove_network(net).await
                && !is_not_found(&e)
            {
                tracing::warn!(network = %net, error = %e, "cannot remove network");
            }
        }
    }
}

/// tinyproxy needs a moment to bind; without this, the first setup command
/// could see "connection refused" and blame the allowlist.
async fn wait_for_proxy(docker: &Docker, container: &str) -> Result<(), SandboxError> {
    for _ in 0..100 {
        let inspect = docker
            .inspect_container(container, None)
            .await
            .map_err(SandboxError::engine("inspect egress proxy"))?;
        let state = inspect.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(SandboxError::Egress(format!(
                "the proxy exited ({}); is the proxy image built?",
                state
                    .exit_code
                    .map(|c| format!("exit status {c}"))
                    .unwrap_or_else(|| "no exit status".into())
            )));
        }
        let logs = tail_logs(docker, container).await;
        if logs.contains("Accepting connections") {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(SandboxError::Egress(
        "the proxy did not start listening within 2s".into(),
    ))
}

async fn tail_logs(docker: &Docker, container: &str) -> String {
    use futures_util::StreamExt as _;
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&chunk.to_string());
    }
    out
}

pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Writes the proxy's config into a fresh host directory, readable by the
/// proxy's non-root user (tempfile makes it 0700).
fn write_config(policy: &EgressPolicy) -> Result<tempfile::TempDir, SandboxError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io =
        |e: std::io::Error| SandboxError::Egress(format!("cannot write the proxy config: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("kiln-proxy-")
        .tempdir()
        .map_err(io)?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    for (name, text) in [
        ("tinyproxy.conf", TINYPROXY_CONF.to_string()),
        ("filter", policy.filter_file()),
    ] {
        let mut f = std::fs::File::create(dir.path().join(name)).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_anchored_and_escaped() {
        let p = EgressPolicy::new(vec!["static.packages.test".into(), "Example.COM".into()]);
        assert_eq!(
            p.filter_file(),
            "^static\\.packages\\.test$\n^example\\.com$\n"
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        for p in [
            EgressPolicy::new(vec!["http://x.org".into()]),
            EgressPolicy::new(vec![".*".into()]),
            EgressPolicy::new(vec!["ok.org".into()]).with_static_host("ok.org", "not-an-ip"),
        ] {
            assert!(p.validate().is_err(), "{p:?} should be refused");
        }
        let ok =
            EgressPolicy::new(vec!["a.test".into()]).with_static_host("a.test", "host-gateway");
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn empty_allowlist_denies_everything() {
        assert_eq!(
            EgressPolicy::default().filter_file(),
            "",
            "no entries: tinyproxy's default deny applies"
        );
    }
}
