//! The `kiln.toml` model: sandbox limits and runtime, egress allowlist, and
//! secrets with their sources and scopes.
//!
//! This module owns parsing and *validation*: a config that would put a
//! host-only secret (a model API key, the GitHub App key) into a sandbox is
//! rejected here, before any run starts, with an error naming the secret.
//!
//! ```toml
//! [sandbox]
//! image = "base"            # a recipe under sandbox-images/
//! runtime = "runsc"         # optional OCI runtime; Docker's default otherwise
//! memory_mb = 2048
//! pids = 512
//! cpus = 2.0
//! egress_allow = ["packages.example.com", "mirror.example.org"]
//!
//! [[secrets]]
//! name = "npm-token"
//! source = { env = "KILN_NPM_TOKEN" }
//! expose_as = "NPM_TOKEN"
//! scope = { roles = ["implementation"], phase = "setup" }
//!
//! [[secrets]]
//! name = "anthropic"
//! kind = "model-api-key"    # host-only: a `scope` here is a config error
//! source = { env = "ANTHROPIC_API_KEY" }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors from reading or validating `kiln.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The TOML did not match the schema.
    #[error("invalid kiln.toml: {0}")]
    Parse(#[from] toml::de::Error),
    /// A host-only secret was given a sandbox scope.
    #[error(
        "secret `{name}` is a {kind} and is host-only: it can never be scoped into a sandbox \
         (remove its `scope`; the host uses it on the sandbox's behalf)"
    )]
    HostOnlySecretScoped {
        /// The secret's `name`.
        name: String,
        /// Why it is host-only.
        kind: SecretKind,
    },
    /// Two secrets share a name or an in-sandbox variable name.
    #[error("duplicate secret {what} `{value}`")]
    DuplicateSecret {
        /// Which field collided (`name` or `expose_as`).
        what: &'static str,
        /// The colliding value.
        value: String,
    },
    /// A secret's `expose_as` is not a usable environment variable name.
    #[error(
        "secret `{name}`: expose_as `{value}` must match [A-Z_][A-Z0-9_]* and not start with KILN_"
    )]
    BadExposeAs {
        /// The secret's `name`.
        name: String,
        /// The rejected variable name.
        value: String,
    },
    /// A sandbox limit is outside what the runner accepts.
    #[error("[sandbox] {key} = {value} is out of range ({expected})")]
    BadLimit {
        /// The key in `[sandbox]`.
        key: &'static str,
        /// The rejected value, as written.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// An egress allowlist entry is not a plain host name.
    #[error(
        "[sandbox] egress_allow entry `{0}` must be a host name (letters, digits, '-', '.'), no scheme, port or wildcard"
    )]
    BadEgressHost(String),
    /// A `[[roles]]` entry is invalid.
    #[error("[[roles]] {name:?}: `{key}` {reason}")]
    CustomRole {
        /// The role's `name` (as written).
        name: String,
        /// The key that is wrong.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A trigger, secret scope or budget names a role that is neither built
    /// in nor configured with `[[roles]]`.
    #[error(
        "{place} names role `{role}`, which is neither built in (triage, spec, implementation, review, verification, improve) nor configured with [[roles]]"
    )]
    UnknownRole {
        /// Where the name appears.
        place: String,
        /// The name.
        role: String,
    },
    /// `[model]` or `[budgets]` is invalid.
    #[error(transparent)]
    Model(#[from] crate::model::ModelConfigError),
    /// The `[github]` section cannot work.
    #[error(transparent)]
    GitHub(#[from] crate::forge::github::GitHubConfigError),
    /// A `[[schedules]]` entry is invalid (its cron expression, name, repo).
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// The `[store]` section cannot work.
    #[error(transparent)]
    Store(#[from] crate::store::config::StoreConfigError),
}

/// `kiln.toml`, every section of it. Each section's type is owned by its
/// module; this type names the sections. An unknown section or key is an
/// error, so a misspelt setting never silently keeps its default (the
/// README's configuration reference is parsed with this, see
/// `tests/readme.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "RawConfig")]
pub struct KilnConfig {
    /// Sandbox limits and runtime.
    pub sandbox: SandboxConfig,
    /// Declared secrets.
    pub secrets: Vec<SecretConfig>,
    /// Repository additions to the default policies.
    pub policy: crate::policy::config::PolicyConfig,
    /// `[model]`: the model provider, if configured here.
    pub model: Option<crate::model::ModelConfig>,
    /// `[budgets.<role>]`: per-role run budgets.
    pub budgets: crate::model::BudgetsConfig,
    /// The GitHub forge (`[github]`), if configured.
    pub github: Option<crate::forge::github::GitHubConfig>,
    /// `[[roles]]`: custom roles, each played by a plugin the operator ships.
    pub roles: Vec<CustomRoleConfig>,
    /// `[intake]` and `[[triggers]]`: webhook limits and routing rules.
    pub intake: crate::intake::IntakeConfig,
    /// `[[schedules]]`: roles queued on a cron schedule (the outer loop).
    pub schedules: Vec<crate::schedule::ScheduleConfig>,
    /// `[detection]`: the detection step before a run's work leaves.
    pub detection: crate::detect::config::DetectionConfig,
    /// `[store]`: a PostgreSQL store shared by several runners; `None`:
    /// the embedded SQLite file in the data directory.
    pub store: Option<crate::store::config::StoreConfig>,
    /// The directory `kiln.toml` was read from: custom roles' `plugin` and
    /// `skill` paths are relative to it (the current directory otherwise).
    pub base_dir: PathBuf,
}

/// The file as written. serde cannot deny unknown fields next to a
/// `flatten`, so the intake sections are read here as the top-level tables
/// they are and put together into [`crate::intake::IntakeConfig`] after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sandbox: SandboxConfig,
    #[serde(default)]
    secrets: Vec<SecretConfig>,
    #[serde(default)]
    policy: crate::policy::config::PolicyConfig,
    #[serde(default)]
    model: Option<crate::model::ModelConfig>,
    #[serde(default)]
    budgets: crate::model::BudgetsConfig,
    #[serde(default)]
    github: Option<crate::forge::github::GitHubConfig>,
    #[serde(default)]
    roles: Vec<CustomRoleConfig>,
    #[serde(default)]
    intake: crate::intake::IntakeSettings,
    #[serde(default)]
    triggers: Option<Vec<crate::intake::TriggerRule>>,
    #[serde(default)]
    schedules: Vec<crate::schedule::ScheduleConfig>,
    #[serde(default)]
    detection: crate::detect::config::DetectionConfig,
    #[serde(default)]
    store: Option<crate::store::config::StoreConfig>,
}

impl From<RawConfig> for KilnConfig {
    fn from(raw: RawConfig) -> Self {
        KilnConfig {
            sandbox: raw.sandbox,
            secrets: raw.secrets,
            policy: raw.policy,
            model: raw.model,
            budgets: raw.budgets,
            github: raw.github,
            roles: raw.roles,
            intake: crate::intake::IntakeConfig {
                intake: raw.intake,
                triggers: raw.triggers,
                custom_roles: Vec::new(),
            },
            schedules: raw.schedules,
            detection: raw.detection,
            store: raw.store,
            base_dir: PathBuf::new(),
        }
    }
}

/// `[[roles]]`: a custom role and the plugin that plays it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRoleConfig {
    /// The role's name: `[a-z0-9-]`, not a built-in role's.
    pub name: String,
    /// The plugin component (`.wasm`), relative to `kiln.toml`.
    pub plugin: PathBuf,
    /// The SHA-256 of the plugin file, hex: the host refuses any other file.
    pub sha256: String,
    /// What the role is granted: the plugin's manifest must ask within it.
    pub capabilities: Vec<String>,
    /// The role's core skill (Markdown), relative to `kiln.toml`; served as
    /// `skills.get(<name>)` and overridable per repository like the built-in ones.
    #[serde(default)]
    pub skill: Option<PathBuf>,
    /// `[roles.budget]`: the role's run budget (defaults like `[budgets.<name>]`).
    #[serde(default)]
    pub budget: Option<crate::model::BudgetConfig>,
}

impl CustomRoleConfig {
    /// The role this entry defines; `None` if its name is not a role name
    /// (which validation refuses).
    pub fn role(&self) -> Option<Role> {
        RoleName::new(&self.name).map(Role::Custom)
    }

    /// A path of this entry, resolved against the config's directory.
    pub fn resolve(&self, base: &Path, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: String| ConfigError::CustomRole {
            name: self.name.chars().take(80).collect(),
            key,
            reason,
        };
        if !is_role_name(&self.name) {
            return Err(bad("name", "must be 1-64 of [a-z0-9-]".into()));
        }
        if Role::builtin(&self.name).is_some() {
            return Err(bad(
                "name",
                "is a built-in role's name: a custom role needs a name of its own (the built-in plugins play triage, spec, implementation, review and verification)".into(),
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "sha256",
                format!(
                    "must be the plugin file's SHA-256 as 64 hex digits (`sha256sum {}` prints it)",
                    self.plugin.display()
                ),
            ));
        }
        crate::plugin::CapabilitySet::parse(&self.capabilities)
            .map_err(|e| bad("capabilities", e.to_string()))?;
        if let Some(b) = &self.budget {
            crate::model::BudgetsConfig(std::iter::once((self.name.clone(), *b)).collect())
                .validate()?;
        }
        Ok(())
    }
}

impl KilnConfig {
    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text)?;
        config.validate()?;
        config.intake.custom_roles = config
            .roles
            .iter()
            .filter_map(CustomRoleConfig::role)
            .collect();
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// Every role runs may play: the built-in ones and the configured ones.
    pub fn known_roles(&self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .chain(self.roles.iter().filter_map(CustomRoleConfig::role))
            .collect()
    }

    /// Checks every rule the type system cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.sandbox.validate()?;
        if let Some(model) = &self.model {
            model.validate(&self.secrets)?;
        }
        self.budgets.validate()?;
        let mut role_names = BTreeSet::new();
        for r in &self.roles {
            r.validate()?;
            if !role_names.insert(r.name.as_str()) {
                return Err(ConfigError::CustomRole {
                    name: r.name.clone(),
                    key: "name",
                    reason: "is configured twice".into(),
                });
            }
        }
        let known = |role: Role| role.is_builtin() || role_names.contains(role.as_str());
        for (place, role) in self.intake.roles() {
            if !known(role) {
                return Err(ConfigError::UnknownRole {
                    place,
                    role: role.to_string(),
                });
            }
        }
        let mut schedule_names = BTreeSet::new();
        for s in &self.schedules {
            s.validate()?;
            if !schedule_names.insert(s.name.as_str()) {
                return Err(crate::schedule::ScheduleError {
                    name: s.name.clone(),
                    field: "`name`".into(),
                    reason: "is used by two schedules".into(),
                }
                .into());
            }
            if !known(s.role) {
                return Err(ConfigError::UnknownRole {
                    place: format!("[[schedules]] {:?}", s.name),
                    role: s.role.to_string(),
                });
            }
        }
        for s in &self.secrets {
            for role in s.scope.iter().flat_map(|sc| sc.roles.iter()) {
                if !known(*role) {
                    return Err(ConfigError::UnknownRole {
                        place: format!("secret `{}` scope", s.name),
                        role: role.to_string(),
                    });
                }
            }
        }
        if let Some(github) = &self.github {
            github.validate(&self.secrets)?;
        }
        if let Some(store) = &self.store {
            store.validate(&self.secrets)?;
        }
        let mut names = BTreeSet::new();
        let mut vars = BTreeSet::new();
        for secret in &self.secrets {
            if !names.insert(secret.name.as_str()) {
                return Err(ConfigError::DuplicateSecret {
                    what: "name",
                    value: secret.name.clone(),
                });
            }
            if let Some(kind) = secret.host_only_kind()
                && secret.scope.is_some()
            {
                return Err(ConfigError::HostOnlySecretScoped {
                    name: secret.name.clone(),
                    kind,
                });
            }
            if secret.scope.is_some() {
                let var = secret.container_var();
                if !is_env_name(&var) || var.starts_with("KILN_") {
                    return Err(ConfigError::BadExposeAs {
                        name: secret.name.clone(),
                        value: var,
                    });
                }
                if !vars.insert(var.clone()) {
                    return Err(ConfigError::DuplicateSecret {
                        what: "expose_as",
                        value: var,
                    });
                }
            }
        }
        Ok(())
    }
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// `[sandbox]`: limits and runtime for every run's container.
///
/// Defaults: image `base`, Docker's default OCI runtime, 2048 MiB memory
/// (no swap), 512 processes, 2 CPUs, 10-minute command timeout, 1 MiB of
/// captured output per stream, an empty egress allowlist (the setup phase
/// can reach nothing), and attached shells closed after 15 idle minutes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Image recipe name under `sandbox-images/` (e.g. `base`).
    pub image: String,
    /// OCI runtime name (e.g. `runsc`); `None` keeps the engine's default.
    pub runtime: Option<String>,
    /// Memory limit in MiB; swap is disabled by setting swap = memory.
    pub memory_mb: u64,
    /// Maximum number of processes (and threads) in the container.
    pub pids: i64,
    /// CPU quota in CPUs (fractions allowed).
    pub cpus: f64,
    /// Default per-command timeout in seconds.
    pub exec_timeout_secs: u64,
    /// Bytes of stdout and of stderr kept per command; the rest is counted, not kept.
    pub output_cap_bytes: usize,
    /// Host names the setup phase may reach through the egress proxy.
    pub egress_allow: Vec<String>,
    /// Seconds an operator's attached shell may go without input before it
    /// is closed and the paused agent resumes.
    pub attach_idle_secs: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: "base".into(),
            runtime: None,
            memory_mb: 2048,
            pids: 512,
            cpus: 2.0,
            exec_timeout_secs: 600,
            output_cap_bytes: 1 << 20,
            egress_allow: Vec::new(),
            attach_idle_secs: 15 * 60,
        }
    }
}

impl SandboxConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // Below ~16 MiB git itself cannot run; the upper bounds catch unit mistakes.
        if !(16..=1 << 20).contains(&self.memory_mb) {
            return Err(ConfigError::BadLimit {
                key: "memory_mb",
                value: self.memory_mb.to_string(),
                expected: "16..=1048576",
            });
        }
        if !(8..=1 << 20).contains(&self.pids) {
            return Err(ConfigError::BadLimit {
                key: "pids",
                value: self.pids.to_string(),
                expected: "8..=1048576",
            });
        }
        if !(self.cpus.is_finite() && self.cpus >= 0.01 && self.cpus <= 1024.0) {
            return Err(ConfigError::BadLimit {
                key: "cpus",
                value: self.cpus.to_string(),
                expected: "0.01..=1024",
            });
        }
        if self.exec_timeout_secs == 0 {
            return Err(ConfigError::BadLimit {
                key: "exec_timeout_secs",
                value: "0".into(),
                expected: ">= 1",
            });
        }
        if self.attach_idle_secs == 0 {
            return Err(ConfigError::BadLimit {
                key: "attach_idle_secs",
                value: "0".into(),
                expected: ">= 1",
            });
        }
        if let Some(runtime) = &self.runtime
            && (runtime.is_empty()
                || !runtime
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            return Err(ConfigError::BadLimit {
                key: "runtime",
                value: runtime.clone(),
                expected: "a runtime name such as runc or runsc",
            });
        }
        for host in &self.egress_allow {
            if !is_host_name(host) {
                return Err(ConfigError::BadEgressHost(host.clone()));
            }
        }
        Ok(())
    }
}

/// True for a DNS host name: labels of `[A-Za-z0-9-]`, separated by dots.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// One `[[secrets]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    /// Unique name, used in logs and errors (never the value).
    pub name: String,
    /// What the secret is for; host-only kinds can never be scoped into a sandbox.
    #[serde(default)]
    pub kind: SecretKind,
    /// Where the host reads the value from.
    pub source: SecretSource,
    /// The environment variable name inside the sandbox; defaults to the
    /// upper-cased name with `-` turned into `_`.
    pub expose_as: Option<String>,
    /// Which sandboxes may receive it; `None` means host-only.
    pub scope: Option<SecretScope>,
}

impl SecretConfig {
    /// The kind that makes this secret host-only, if any: declared, or
    /// recognised from a well-known host-only variable name so a missing
    /// `kind` cannot smuggle a model key into a sandbox.
    pub fn host_only_kind(&self) -> Option<SecretKind> {
        if self.kind.is_host_only() {
            return Some(self.kind);
        }
        let SecretSource::Env { env } = &self.source else {
            return None;
        };
        const MODEL_KEYS: &[&str] = &["ANTHROPIC_API_KEY", "OPENAI_API_KEY"];
        const GITHUB_KEYS: &[&str] = &["KILN_GITHUB_APP_KEY", "GITHUB_APP_PRIVATE_KEY"];
        if MODEL_KEYS.contains(&env.as_str()) {
            Some(SecretKind::ModelApiKey)
        } else if GITHUB_KEYS.contains(&env.as_str()) {
            Some(SecretKind::GithubAppKey)
        } else {
            None
        }
    }

    /// The variable name the secret gets inside a sandbox.
    pub fn container_var(&self) -> String {
        self.expose_as
            .clone()
            .unwrap_or_else(|| self.name.to_ascii_uppercase().replace('-', "_"))
    }

    /// True if this secret may enter a sandbox of `role` during `phase`.
    pub fn is_scoped_to(&self, role: Role, phase: Phase) -> bool {
        self.host_only_kind().is_none()
            && self
                .scope
                .as_ref()
                .is_some_and(|s| s.phase == phase && s.roles.contains(&role))
    }

    /// Reads the secret's value from its source.
    pub fn read_value(&self) -> Result<String, SecretReadError> {
        match &self.source {
            SecretSource::Env { env } => std::env::var(env).map_err(|_| SecretReadError {
                name: self.name.clone(),
                reason: format!("environment variable {env} is not set or not UTF-8"),
            }),
            SecretSource::File { file } => std::fs::read_to_string(file)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| SecretReadError {
                    name: self.name.clone(),
                    reason: format!("cannot read {}: {e}", file.display()),
                }),
        }
    }
}

/// A secret's value could not be read from its source.
#[derive(Debug, thiserror::Error)]
#[error("secret `{name}`: {reason}")]
pub struct SecretReadError {
    /// The secret's `name`.
    pub name: String,
    /// What went wrong (never contains the value).
    pub reason: String,
}

/// What a secret is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// A credential the sandbox may receive if scoped (registry tokens and the like).
    #[default]
    Generic,
    /// A model provider API key: host-only.
    ModelApiKey,
    /// The GitHub App private key: host-only.
    GithubAppKey,
    /// A GitHub token (fine-grained): host-only.
    GithubToken,
    /// The PostgreSQL store's password (`[store] password_secret`): host-only.
    DatabasePassword,
}

impl SecretKind {
    /// True for kinds that must never enter a sandbox.
    pub fn is_host_only(self) -> bool {
        !matches!(self, SecretKind::Generic)
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecretKind::Generic => "generic secret",
            SecretKind::ModelApiKey => "model API key",
            SecretKind::GithubAppKey => "GitHub App key",
            SecretKind::GithubToken => "GitHub token",
            SecretKind::DatabasePassword => "database password",
        })
    }
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SecretSource {
    /// A host environment variable.
    Env {
        /// The variable name.
        env: String,
    },
    /// A host file (trailing newlines are trimmed).
    File {
        /// The file path.
        file: PathBuf,
    },
}

/// Which sandboxes a secret may enter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretScope {
    /// Roles whose sandboxes receive it.
    pub roles: Vec<Role>,
    /// The phase during which it is present.
    pub phase: Phase,
}

/// An agent role: one of Kiln's built-in roles, or a custom role
/// configured with `[[roles]]` in `kiln.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads an issue and classifies it.
    Triage,
    /// Writes a spec.
    Spec,
    /// Writes code.
    Implementation,
    /// Reviews a pull request.
    Review,
    /// Runs a pull request's checks in the sandbox and reports them.
    Verification,
    /// The outer loop: reads how another role did (its signals) and
    /// proposes changes to the repository's skill overrides.
    Improve,
    /// A role of the repository's own, played by a configured plugin.
    Custom(RoleName),
}

/// The name of a custom role: 1-64 of `[a-z0-9-]`, stored inline so a
/// [`Role`] stays `Copy` and needs no registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoleName {
    len: u8,
    bytes: [u8; 64],
}

impl RoleName {
    /// The name, if it is 1-64 of `[a-z0-9-]`.
    pub fn new(name: &str) -> Option<Self> {
        if !is_role_name(name) {
            return None;
        }
        let mut bytes = [0; 64];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(RoleName {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII from `new` is ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Whether `name` may name a role: 1-64 of `[a-z0-9-]`.
pub fn is_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Role {
    /// Every built-in role, for tests and tooling.
    pub const ALL: [Role; 6] = [
        Role::Triage,
        Role::Spec,
        Role::Implementation,
        Role::Review,
        Role::Verification,
        Role::Improve,
    ];

    /// True if the role may change the workspace (mounted read-write).
    /// Custom roles write only if their grant has `workspace.write`; the
    /// worker asks the grant, this says what the built-in roles do.
    pub fn writes_workspace(self) -> bool {
        matches!(self, Role::Spec | Role::Implementation | Role::Improve)
    }

    /// True if the role works on a pull request (its number is a pull
    /// request's, its workspace is the pull request's head).
    pub fn reads_pull_request(self) -> bool {
        matches!(self, Role::Review | Role::Verification)
    }

    /// The role's name as written in `kiln.toml` and in policies (`principal.role`).
    pub fn as_str(&self) -> &str {
        match self {
            Role::Triage => "triage",
            Role::Spec => "spec",
            Role::Implementation => "implementation",
            Role::Review => "review",
            Role::Verification => "verification",
            Role::Improve => "improve",
            Role::Custom(name) => name.as_str(),
        }
    }

    /// The built-in role of that name, if there is one.
    pub fn builtin(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether this is one of Kiln's own roles.
    pub fn is_builtin(self) -> bool {
        !matches!(self, Role::Custom(_))
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    /// A built-in role by name, or any other valid name as a custom role
    /// (whether it is configured is checked where roles are used).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(r) = Role::builtin(s) {
            return Ok(r);
        }
        RoleName::new(s).map(Role::Custom).ok_or_else(|| {
            format!(
                "role {:?} must be a built-in role (triage, spec, implementation, review, verification) or a custom role name of 1-64 [a-z0-9-]",
                s.chars().take(80).collect::<String>()
            )
        })
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Setup commands: egress allowlist and setup-scoped secrets.
    Setup,
    /// The agent's own commands: no network, agent-scoped secrets only.
    Agent,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Setup => "setup",
            Phase::Agent => "agent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_from_an_empty_file() {
        let c = KilnConfig::from_toml("").expect("empty config should be valid");
        assert_eq!(c.sandbox.image, "base");
        assert!(
            c.sandbox.egress_allow.is_empty(),
            "egress should default to nothing"
        );
        assert!(c.sandbox.runtime.is_none());
    }

    #[test]
    fn a_scoped_model_key_is_rejected_by_kind() {
        let err = KilnConfig::from_toml(
            r#"
            [[secrets]]
            name = "anthropic"
            kind = "model-api-key"
            source = { env = "X" }
            scope = { roles = ["implementation"], phase = "setup" }
            "#,
        )
        .expect_err("a model key scoped into a sandbox should be rejected");
        assert!(
            err.to_string()
                .contains("`anthropic` is a model API key and is host-only"),
            "error should name the secret and why, got: {err}"
        );
    }

    #[test]
    fn a_scoped_well_known_key_is_rejected_without_kind() {
        for var in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY", "KILN_GITHUB_APP_KEY"] {
            let text = format!(
                "[[secrets]]\nname = \"k\"\nsource = {{ env = \"{var}\" }}\n\
                 scope = {{ roles = [\"triage\"], phase = \"agent\" }}\n"
            );
            let result = KilnConfig::from_toml(&text);
            assert!(
                matches!(result, Err(ConfigError::HostOnlySecretScoped { .. })),
                "{var} scoped into a sandbox should be rejected, got: {result:?}"
            );
        }
    }

    #[test]
    fn a_host_only_key_without_scope_is_fine() {
        let c = KilnConfig::from_toml(
            "[[secrets]]\nname = \"gh\"\nkind = \"github-app-key\"\nsource = { file = \"/k.pem\" }\n",
        )
        .expect("a host-only secret without scope is valid");
        assert!(!c.secrets[0].is_scoped_to(Role::Implementation, Phase::Setup));
    }

    #[test]
    fn scope_selects_role_and_phase() {
        let c = KilnConfig::from_toml(
            "[[secrets]]\nname = \"npm-token\"\nsource = { env = \"T\" }\n\
             scope = { roles = [\"implementation\"], phase = \"setup\" }\n",
        )
        .expect("valid");
        let s = &c.secrets[0];
        assert_eq!(s.container_var(), "NPM_TOKEN");
        assert!(s.is_scoped_to(Role::Implementation, Phase::Setup));
        assert!(!s.is_scoped_to(Role::Implementation, Phase::Agent));
        assert!(!s.is_scoped_to(Role::Review, Phase::Setup));
    }

    #[test]
    fn other_sections_are_read_by_their_owners() {
        let c = KilnConfig::from_toml(
            "[model]\nprovider = \"scripted\"\nscript = \"demo.json\"\n[sandbox]\npids = 64\n\
             [intake]\nmax_runs_per_target = 3\n[[triggers]]\non = \"label\"\nlabel = \"go\"\nrole = \"spec\"\n",
        )
        .expect("valid");
        assert_eq!(c.sandbox.pids, 64);
        assert!(c.model.is_some());
        assert_eq!(c.intake.intake.max_runs_per_target, 3);
        assert_eq!(c.intake.rules().len(), 1);
    }

    #[test]
    fn an_unknown_section_or_key_is_an_error_naming_it() {
        for (text, name) in [
            ("[sandboxx]\npids = 64\n", "sandboxx"),
            ("webhook_secret = \"x\"\n", "webhook_secret"),
            ("[intake]\nmax_runs = 3\n", "max_runs"),
            ("[policy]\nlabel = [\"bug\"]\n", "label"),
        ] {
            let err = KilnConfig::from_toml(text).expect_err(name);
            assert!(
                err.to_string().contains(&format!("unknown field `{name}`")),
                "{text:?}: error should name `{name}`, got: {err}"
            );
        }
    }

    #[test]
    fn bad_values_are_rejected() {
        for (text, what) in [
            ("[sandbox]\nmemory_mb = 1\n", "tiny memory"),
            ("[sandbox]\npids = 0\n", "zero pids"),
            ("[sandbox]\ncpus = -1.0\n", "negative cpus"),
            (
                "[sandbox]\nruntime = \"runc --evil\"\n",
                "runtime with spaces",
            ),
            (
                "[sandbox]\negress_allow = [\"https://x.org\"]\n",
                "URL in allowlist",
            ),
            (
                "[sandbox]\negress_allow = [\"*.x.org\"]\n",
                "wildcard in allowlist",
            ),
            ("[sandbox]\nunknown = 1\n", "unknown key"),
            (
                "[[secrets]]\nname = \"a\"\nsource = { env = \"A\" }\nexpose_as = \"KILN_X\"\n\
                 scope = { roles = [\"spec\"], phase = \"agent\" }\n",
                "KILN_ prefix",
            ),
        ] {
            let result = KilnConfig::from_toml(text);
            assert!(
                result.is_err(),
                "{what} should be rejected, got: {result:?}"
            );
        }
    }
}
