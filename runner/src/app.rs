//! Assembling a runner from `kiln.toml` and Kiln's data directory: the
//! policy gate (with every configured secret to redact), the built-in role
//! plugins, the Docker sandbox backend with its image, and where mirrors
//! and handback bundles live. `kiln run`, `kiln demo` and `kiln serve` all
//! start here, so they behave the same.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{KilnConfig, Role};
use crate::model::ModelProvider;
use crate::plugin::{PluginHost, PluginLimits, builtin};
use crate::policy::{Gate, SecretValue};
use crate::sandbox::SandboxBackend;
use crate::sandbox::docker::DockerBackend;
use crate::sandbox::image::ImageBuilder;
use crate::session::Budget;
use crate::worker::Services;

/// Why a runner could not be assembled. Each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A configured secret could not be read.
    #[error("secret {name}: {reason}")]
    Secret {
        /// The secret's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The policies do not build a gate (the message names line and reason).
    #[error("policy: {0}")]
    Policy(String),
    /// A built-in plugin failed to load.
    #[error("plugin: {0}")]
    Plugin(String),
    /// The sandbox backend or its image is not available.
    #[error("sandbox: {0}")]
    Sandbox(String),
}

/// What to assemble a runner from.
pub struct AppOptions {
    /// The parsed, validated `kiln.toml` (defaults when there is none).
    pub config: KilnConfig,
    /// Kiln's data directory (store, local forge, mirrors, runs).
    pub data_dir: PathBuf,
    /// The sandbox image recipes (`sandbox-images/`).
    pub recipes: PathBuf,
    /// Labels this runner's containers, so its orphans are found after a crash.
    pub runner_id: String,
    /// The model provider, if any.
    pub model: Option<Arc<dyn ModelProvider>>,
    /// A provider per role, preferred to `model` for that role.
    pub role_models: HashMap<Role, Arc<dyn ModelProvider>>,
    /// Budget per role.
    pub budgets: HashMap<Role, Budget>,
    /// The run store the `signals` interface reads, if the runner has one.
    pub history: Option<Arc<dyn crate::store::RunStore>>,
}

/// The gate for `config`, with the value of every configured secret.
pub fn gate(config: &KilnConfig) -> Result<Gate, AppError> {
    let mut secrets = Vec::new();
    for s in &config.secrets {
        let value = s.read_value().map_err(|e| AppError::Secret {
            name: e.name.clone(),
            reason: e.reason.clone(),
        })?;
        secrets.push(SecretValue {
            name: s.name.clone(),
            value,
        });
    }
    let gate_config = config
        .policy
        .gate_config(secrets)
        .map_err(AppError::Policy)?;
    Gate::new(&gate_config).map_err(|e| AppError::Policy(e.to_string()))
}

/// The plugin host with every built-in role plugin loaded, and every custom
/// role of `config` (`[[roles]]`) granted, its skill served and its plugin
/// loaded after its SHA-256 is checked, by role.
pub fn role_plugins(
    limits: PluginLimits,
    config: &KilnConfig,
) -> Result<(PluginHost, HashMap<Role, Arc<crate::plugin::LoadedPlugin>>), AppError> {
    let mut host = PluginHost::new(limits).map_err(|e| AppError::Plugin(e.to_string()))?;
    let mut custom = Vec::new();
    for r in &config.roles {
        let err = |reason: String| AppError::Plugin(format!("[[roles]] {:?}: {reason}", r.name));
        let grants =
            crate::plugin::CapabilitySet::parse(&r.capabilities).map_err(|e| err(e.to_string()))?;
        host.grant_role(&r.name, grants);
        if let Some(skill) = &r.skill {
            let path = r.resolve(&config.base_dir, skill);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("skill {}: {e}", path.display())))?;
            host.add_skill(&r.name, &text);
        }
        let path = r.resolve(&config.base_dir, &r.plugin);
        let bytes =
            std::fs::read(&path).map_err(|e| err(format!("plugin {}: {e}", path.display())))?;
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if !digest.eq_ignore_ascii_case(&r.sha256) {
            return Err(err(format!(
                "plugin {} has SHA-256 {digest}, but kiln.toml pins {}: refusing to load a plugin \
                 that is not the one configured (if you rebuilt it on purpose, put the new hash in `sha256`)",
                path.display(),
                r.sha256
            )));
        }
        custom.push((r, path, bytes));
    }
    let mut plugins = HashMap::new();
    for (name, bytes) in builtin::ROLE_PLUGINS {
        let loaded = host
            .load(bytes)
            .map_err(|e| AppError::Plugin(format!("built-in plugin {name}: {e}")))?;
        if let Some(role) = Role::ALL
            .into_iter()
            .find(|r| r.as_str() == loaded.info.manifest.role)
        {
            plugins.insert(role, loaded);
        }
    }
    for (r, path, bytes) in custom {
        let err = |reason: String| AppError::Plugin(format!("[[roles]] {:?}: {reason}", r.name));
        // The role first: a plugin written for another role must not be
        // judged (or run) under this role's grant.
        if let Ok(manifest) = crate::plugin::inspect::read_manifest(&bytes)
            && manifest.role != r.name
        {
            return Err(err(format!(
                "plugin {} plays role `{}` (its kiln-plugin.toml), not `{}`",
                path.display(),
                manifest.role,
                r.name
            )));
        }
        let loaded = host
            .load(&bytes)
            .map_err(|e| err(format!("plugin {}: {e}", path.display())))?;
        let role = r
            .role()
            .ok_or_else(|| err(format!("{:?} is not a role name", r.name)))?;
        plugins.insert(role, loaded);
    }
    Ok((host, plugins))
}

/// The run budget of every role `config` knows: `[budgets.<role>]`, a
/// custom role's `[roles.budget]`, and the roles' defaults for the rest.
pub fn budgets(config: &KilnConfig) -> HashMap<Role, Budget> {
    let mut budgets = config.budgets.clone();
    for r in &config.roles {
        if let Some(b) = r.budget {
            budgets.0.insert(r.name.clone(), b);
        }
    }
    config
        .known_roles()
        .into_iter()
        .map(|role| (role, budgets.budget_for(role.as_str())))
        .collect()
}

/// Build everything a worker needs. Connects to Docker, removes containers
/// an earlier process of this runner left behind, and builds the sandbox
/// image if it is missing (`progress` hears about that: minutes the first
/// time).
pub async fn services(
    opts: AppOptions,
    progress: &(dyn Fn(crate::sandbox::image::ImageProgress) + Sync),
) -> Result<Services, AppError> {
    let gate = gate(&opts.config)?;
    let (host, plugins) = role_plugins(PluginLimits::default(), &opts.config)?;
    let backend = DockerBackend::connect(opts.runner_id.clone())
        .await
        .map_err(|e| AppError::Sandbox(e.to_string()))?;
    let mut removed = backend
        .remove_orphans()
        .await
        .map_err(|e| AppError::Sandbox(e.to_string()))?;
    if opts.runner_id == cli_runner_id() {
        // A per-process runner id: also clean up after earlier CLI runs
        // that died mid-run.
        removed += backend
            .remove_orphans_of_dead_processes(CLI_RUNNER_PREFIX)
            .await
            .map_err(|e| AppError::Sandbox(e.to_string()))?;
    }
    if removed > 0 {
        tracing::info!("removed {removed} sandbox object(s) left by an earlier run");
    }
    let image = ImageBuilder::new(backend.docker().clone(), &opts.recipes)
        .ensure(&opts.config.sandbox.image, progress)
        .await
        .map_err(|e| AppError::Sandbox(e.to_string()))?;
    Ok(Services {
        host: Arc::new(host),
        plugins,
        sandboxes: Arc::new(backend),
        image,
        sandbox_config: opts.config.sandbox.clone(),
        gate: Arc::new(gate),
        model: opts.model,
        role_models: opts.role_models,
        budgets: opts.budgets,
        history: opts.history,
        detection: opts.config.detection.clone(),
        mirrors: opts.data_dir.join("mirrors"),
        runs_dir: Some(opts.data_dir.join("runs")),
    })
}

/// Runner ids of one-shot CLI runs start with this, then the process id.
pub const CLI_RUNNER_PREFIX: &str = "cli-";

/// This process's runner id as a one-shot CLI run (`kiln run`, `kiln demo`):
/// two at once never share (or remove) each other's sandboxes.
pub fn cli_runner_id() -> String {
    format!("{CLI_RUNNER_PREFIX}{}", std::process::id())
}

/// The runner id of `kiln serve` on `data_dir`: `serve-` and the first 12
/// hex digits of the SHA-256 of the directory's canonical path.
///
/// Start-up removes every container labelled with the runner id, so the id
/// must be the same for a restarted service on the same data directory (it
/// finds its own orphans) and differ between services on different ones (two
/// teams, or two tests, on one Docker host never remove each other's
/// sandboxes). A directory that cannot be canonicalized (it does not exist
/// yet) is hashed as given.
pub fn serve_runner_id(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    format!("serve-{}", &hex::encode(digest)[..12])
}

/// The sandbox recipes directory: `KILN_IMAGES_DIR`, or `sandbox-images`
/// beside the current directory or the source tree this binary was built from.
pub fn recipes_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_IMAGES_DIR") {
        return PathBuf::from(d);
    }
    let here = Path::new("sandbox-images");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox-images")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_runner_id_is_stable_per_data_dir_and_differs_between_dirs() {
        let root = tempfile::tempdir().expect("tempdir");
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).expect("mkdir a");
        std::fs::create_dir_all(&b).expect("mkdir b");
        let id = serve_runner_id(&a);
        assert!(
            id.starts_with("serve-") && id.len() == "serve-".len() + 12,
            "expected serve-<12 hex>, got {id}"
        );
        // A restart may spell the same directory differently.
        assert_eq!(
            serve_runner_id(&root.path().join("b/../a/.")),
            id,
            "the same directory should give the same runner id"
        );
        assert_ne!(
            serve_runner_id(&b),
            id,
            "two data directories must not share a runner id"
        );
        // The id labels Docker objects: the backend must accept it.
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "runner id {id} has characters Docker labels and names refuse"
        );
    }
}
