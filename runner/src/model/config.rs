//! `[model]` and `[budgets.<role>]` in `kiln.toml`, the environment
//! fallback, and building the provider they describe.
//!
//! ```toml
//! [model]
//! provider = "anthropic"            # anthropic | openai | scripted
//! model = "claude-sonnet-4-5"
//! api_key_secret = "anthropic"      # a [[secrets]] entry of kind model-api-key
//! # base_url = "https://api.anthropic.com"   (openai: https://api.openai.com/v1)
//! max_tokens = 8192                 # output tokens per turn
//! timeout_secs = 120                # per HTTP request
//! max_retries = 4                   # on 429, 5xx/529, timeouts
//! [model.prices."claude-sonnet-4-5"]
//! input_usd_per_mtok = 3.0
//! output_usd_per_mtok = 15.0
//!
//! [budgets.implementation]
//! max_turns = 100
//! max_tokens = 4000000
//! max_cost_usd = 10.0
//! ```
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::anthropic::{self, AnthropicProvider};
use super::openai::{self, OpenAiProvider};
use super::scripted::{ScriptError, ScriptedProvider};
use super::{ApiKey, ModelError, ModelProvider, Prices, ProviderSettings, RetryPolicy};
use crate::config::{SecretConfig, SecretKind, SecretReadError, SecretSource};
use crate::session::Budget;

/// The model used when `[model]` or the environment names none.
pub const DEFAULT_ANTHROPIC_MODEL: &str = "claude-sonnet-4-5";
/// The model used for an OpenAI-compatible endpoint that names none.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4o-mini";

/// A `[model]` or `[budgets]` setting that cannot work, or a provider that
/// cannot be built from it.
#[derive(Debug, thiserror::Error)]
pub enum ModelConfigError {
    /// A `[model]` key has a value that cannot work.
    #[error("[model] {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why, and what would work.
        reason: String,
    },
    /// A `[budgets.<role>]` key has a value that cannot work.
    #[error("[budgets.{role}] {key}: {reason}")]
    Budget {
        /// The role.
        role: String,
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The API key could not be read from its secret.
    #[error("[model] api_key_secret: {0}")]
    Secret(#[from] SecretReadError),
    /// The scripted provider's script cannot be used.
    #[error("[model] script: {0}")]
    Script(#[from] ScriptError),
    /// The provider could not be set up.
    #[error("[model]: {0}")]
    Provider(#[from] ModelError),
}

/// Which wire format the provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The Anthropic Messages API.
    Anthropic,
    /// OpenAI-compatible Chat Completions (OpenAI, Ollama, llama.cpp, vLLM, ...).
    #[serde(rename = "openai")]
    OpenAi,
    /// Replays a script file; for demos and tests.
    Scripted,
}

/// `[model]`: the provider every run's `model` import talks to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The wire format.
    pub provider: ProviderKind,
    /// Model name; defaults to [`DEFAULT_ANTHROPIC_MODEL`] / [`DEFAULT_OPENAI_MODEL`].
    #[serde(default)]
    pub model: Option<String>,
    /// Endpoint base URL; defaults to the provider's public API.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of the `[[secrets]]` entry holding the API key (kind
    /// `model-api-key`). Required for Anthropic, optional for OpenAI-compatible.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    /// Output tokens per turn: the default, and the ceiling a plugin cannot raise.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Seconds allowed for one HTTP request.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// Retries after the first attempt on 429, 5xx and timeouts.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Prices per model name (or name prefix), for cost budgets.
    #[serde(default)]
    pub prices: Prices,
    /// The script file, for `provider = "scripted"`.
    #[serde(default)]
    pub script: Option<PathBuf>,
}

fn default_max_tokens() -> u32 {
    8192
}
fn default_timeout_secs() -> u64 {
    120
}
fn default_max_retries() -> u32 {
    4
}

impl ModelConfig {
    /// A config for `provider` with every other key at its default.
    pub fn new(provider: ProviderKind) -> Self {
        ModelConfig {
            provider,
            model: None,
            base_url: None,
            api_key_secret: None,
            max_tokens: default_max_tokens(),
            timeout_secs: default_timeout_secs(),
            max_retries: default_max_retries(),
            prices: Prices::default(),
            script: None,
        }
    }

    /// The model from the environment when `kiln.toml` has no `[model]`:
    /// Anthropic when `ANTHROPIC_API_KEY` is set (`ANTHROPIC_BASE_URL`
    /// optional), else an OpenAI-compatible endpoint when `OPENAI_BASE_URL`
    /// or `OPENAI_API_KEY` is set; `KILN_MODEL` names the model. Returns the
    /// config and the secret declaring its key, so the key is read the same
    /// way as one from `kiln.toml`.
    pub fn from_env() -> Option<(ModelConfig, Vec<SecretConfig>)> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`ModelConfig::from_env`] reading variables through `var`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
    ) -> Option<(ModelConfig, Vec<SecretConfig>)> {
        let key_secret = |name: &str, env: &str| SecretConfig {
            name: name.to_string(),
            kind: SecretKind::ModelApiKey,
            source: SecretSource::Env {
                env: env.to_string(),
            },
            expose_as: None,
            scope: None,
        };
        let (mut config, secrets) = if var("ANTHROPIC_API_KEY").is_some() {
            let mut c = ModelConfig::new(ProviderKind::Anthropic);
            c.base_url = var("ANTHROPIC_BASE_URL");
            c.api_key_secret = Some("anthropic-api-key".into());
            (
                c,
                vec![key_secret("anthropic-api-key", "ANTHROPIC_API_KEY")],
            )
        } else if var("OPENAI_BASE_URL").is_some() || var("OPENAI_API_KEY").is_some() {
            let mut c = ModelConfig::new(ProviderKind::OpenAi);
            c.base_url = var("OPENAI_BASE_URL");
            let mut secrets = Vec::new();
            if var("OPENAI_API_KEY").is_some() {
                c.api_key_secret = Some("openai-api-key".into());
                secrets.push(key_secret("openai-api-key", "OPENAI_API_KEY"));
            }
            (c, secrets)
        } else {
            return None;
        };
        config.model = var("KILN_MODEL");
        Some((config, secrets))
    }

    /// The model name requests carry.
    pub fn model_name(&self) -> &str {
        match (&self.model, self.provider) {
            (Some(m), _) => m,
            (None, ProviderKind::Anthropic) => DEFAULT_ANTHROPIC_MODEL,
            (None, ProviderKind::OpenAi) => DEFAULT_OPENAI_MODEL,
            (None, ProviderKind::Scripted) => "",
        }
    }

    /// Check every rule the types cannot express; `secrets` are the
    /// `[[secrets]]` entries the key may come from.
    pub fn validate(&self, secrets: &[SecretConfig]) -> Result<(), ModelConfigError> {
        let invalid = |key, reason: &str| ModelConfigError::Invalid {
            key,
            reason: reason.to_string(),
        };
        let scripted = self.provider == ProviderKind::Scripted;
        if scripted {
            if self.script.is_none() {
                return Err(invalid(
                    "script",
                    "provider \"scripted\" needs `script`, the path of a script file",
                ));
            }
            for (key, set) in [
                ("model", self.model.is_some()),
                ("base_url", self.base_url.is_some()),
                ("api_key_secret", self.api_key_secret.is_some()),
            ] {
                if set {
                    return Err(invalid(key, "has no meaning for provider \"scripted\""));
                }
            }
        } else if self.script.is_some() {
            return Err(invalid("script", "is only for provider \"scripted\""));
        }
        if self.model.as_deref().is_some_and(|m| m.trim().is_empty()) {
            return Err(invalid("model", "must not be empty"));
        }
        if let Some(url) = &self.base_url {
            check_base_url(url).map_err(|reason| ModelConfigError::Invalid {
                key: "base_url",
                reason,
            })?;
        }
        match &self.api_key_secret {
            None if self.provider == ProviderKind::Anthropic => {
                return Err(invalid(
                    "api_key_secret",
                    "provider \"anthropic\" needs the name of a [[secrets]] entry of kind \"model-api-key\"",
                ));
            }
            None => {}
            Some(name) => {
                let Some(secret) = secrets.iter().find(|s| &s.name == name) else {
                    return Err(ModelConfigError::Invalid {
                        key: "api_key_secret",
                        reason: format!("no [[secrets]] entry is named `{name}`"),
                    });
                };
                if secret.host_only_kind() != Some(SecretKind::ModelApiKey) {
                    return Err(ModelConfigError::Invalid {
                        key: "api_key_secret",
                        reason: format!(
                            "secret `{name}` must have kind = \"model-api-key\", so it can never be scoped into a sandbox"
                        ),
                    });
                }
            }
        }
        if self.max_tokens == 0 {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(invalid("timeout_secs", "must be within 1..=3600"));
        }
        if self.max_retries > 10 {
            return Err(invalid("max_retries", "must be at most 10"));
        }
        if let Some(model) = self.prices.invalid() {
            return Err(ModelConfigError::Invalid {
                key: "prices",
                reason: format!("the prices of `{model}` must be finite and not negative"),
            });
        }
        Ok(())
    }
}

fn check_base_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{text}` must be an http or https URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{text}` must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "`{text}` must not carry credentials; use api_key_secret"
        ));
    }
    Ok(())
}

/// Build the provider `config` describes, reading its key from `secrets`.
/// The config is validated first, so a config built in code gets the same
/// checks as one read from `kiln.toml`.
pub fn build_provider(
    config: &ModelConfig,
    secrets: &[SecretConfig],
) -> Result<Arc<dyn ModelProvider>, ModelConfigError> {
    config.validate(secrets)?;
    if config.provider == ProviderKind::Scripted {
        let path = config.script.as_deref().ok_or(ModelConfigError::Invalid {
            key: "script",
            reason: "missing".into(),
        })?;
        let provider = ScriptedProvider::load(path)?;
        tracing::info!(
            provider = %provider.name(),
            "model turns come from a script, not a model"
        );
        return Ok(Arc::new(provider));
    }
    let api_key = match &config.api_key_secret {
        Some(name) => {
            let secret = secrets.iter().find(|s| &s.name == name).ok_or_else(|| {
                ModelConfigError::Invalid {
                    key: "api_key_secret",
                    reason: format!("no [[secrets]] entry is named `{name}`"),
                }
            })?;
            Some(ApiKey::new(secret.read_value()?))
        }
        None => None,
    };
    let base_url = config.base_url.clone().unwrap_or_else(|| {
        match config.provider {
            ProviderKind::Anthropic => anthropic::DEFAULT_BASE_URL,
            _ => openai::DEFAULT_BASE_URL,
        }
        .to_string()
    });
    let settings = ProviderSettings {
        base_url,
        model: config.model_name().to_string(),
        api_key,
        max_tokens: config.max_tokens,
        retry: RetryPolicy {
            timeout: Duration::from_secs(config.timeout_secs),
            max_retries: config.max_retries,
            ..RetryPolicy::default()
        },
        prices: config.prices.clone(),
    };
    if settings.prices.lookup(&settings.model).is_none() {
        tracing::warn!(
            model = %settings.model,
            "no price configured for this model: its turns cost 0 and cost budgets will not bind"
        );
    }
    Ok(match config.provider {
        ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(settings)?),
        _ => Arc::new(OpenAiProvider::new(settings)?),
    })
}

/// `[budgets.<role>]`: one role's run budget. Keys left out take the
/// role's default (see [`BudgetsConfig::budget_for`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Model turns per run.
    pub max_turns: Option<u32>,
    /// Tokens (input + output, summed over turns) per run.
    pub max_tokens: Option<u64>,
    /// Cost per run in US dollars (needs `[model.prices]` to bind).
    pub max_cost_usd: Option<f64>,
    /// Comments per run (issue and pull request comments, the report).
    pub max_comments: Option<u32>,
    /// Labels added or removed per run.
    pub max_labels: Option<u32>,
    /// Review line comments and replies per run.
    pub max_review_comments: Option<u32>,
    /// Pull requests opened per run.
    pub max_pull_requests: Option<u32>,
    /// Pushes to the run's branch per run.
    pub max_pushes: Option<u32>,
}

/// Every `[budgets.<role>]` table, keyed by role name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct BudgetsConfig(pub BTreeMap<String, BudgetConfig>);

impl BudgetsConfig {
    /// The default budget of `role`: triage is a short read, implementation
    /// a long edit-and-test loop; spec, review and custom roles sit between.
    pub fn default_for(role: &str) -> BudgetConfig {
        let (turns, tokens, usd) = match role {
            "triage" => (20, 300_000, 1.0),
            "implementation" => (100, 4_000_000, 10.0),
            _ => (40, 1_000_000, 3.0),
        };
        let caps = crate::caps::EffectCaps::DEFAULT;
        BudgetConfig {
            max_turns: Some(turns),
            max_tokens: Some(tokens),
            max_cost_usd: Some(usd),
            max_comments: caps.comments,
            max_labels: caps.labels,
            max_review_comments: caps.review_comments,
            max_pull_requests: caps.pull_requests,
            max_pushes: caps.pushes,
        }
    }

    /// The budget a run of `role` starts with: its configured limits, the
    /// role's defaults for keys left out, nothing spent.
    pub fn budget_for(&self, role: &str) -> Budget {
        let default = Self::default_for(role);
        let configured = self.0.get(role).copied().unwrap_or_default();
        let usd = configured.max_cost_usd.or(default.max_cost_usd);
        Budget {
            max_turns: configured.max_turns.or(default.max_turns),
            max_tokens: configured.max_tokens.or(default.max_tokens),
            // Validated finite and non-negative; `as` saturates anyway.
            max_cost_micro_usd: usd.map(|d| (d * 1e6).round() as u64),
            effects: crate::caps::EffectCaps {
                comments: configured.max_comments.or(default.max_comments),
                labels: configured.max_labels.or(default.max_labels),
                review_comments: configured
                    .max_review_comments
                    .or(default.max_review_comments),
                pull_requests: configured.max_pull_requests.or(default.max_pull_requests),
                pushes: configured.max_pushes.or(default.max_pushes),
            },
            ..Budget::default()
        }
    }

    /// Check every configured budget.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        for (role, b) in &self.0 {
            let bad = |key, reason: &str| ModelConfigError::Budget {
                role: role.clone(),
                key,
                reason: reason.to_string(),
            };
            if b.max_turns == Some(0) {
                return Err(bad("max_turns", "must be at least 1"));
            }
            if b.max_tokens == Some(0) {
                return Err(bad("max_tokens", "must be at least 1"));
            }
            if let Some(usd) = b.max_cost_usd
                && !(usd.is_finite() && usd > 0.0 && usd <= 1e6)
            {
                return Err(bad(
                    "max_cost_usd",
                    "must be a number of dollars in (0, 1000000]",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, KilnConfig};

    fn parse(text: &str) -> Result<KilnConfig, ConfigError> {
        KilnConfig::from_toml(text)
    }

    const KEY: &str = "[[secrets]]\nname = \"anthropic\"\nkind = \"model-api-key\"\nsource = { env = \"KILN_TEST_NO_SUCH_VAR\" }\n";

    #[test]
    fn a_full_model_section_parses_with_prices_and_defaults() {
        let c = parse(&format!(
            "{KEY}[model]\nprovider = \"anthropic\"\napi_key_secret = \"anthropic\"\n\
             [model.prices.\"claude-sonnet-4-5\"]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n"
        ))
        .expect("valid");
        let m = c.model.expect("model section");
        assert_eq!(m.provider, ProviderKind::Anthropic);
        assert_eq!(m.model_name(), DEFAULT_ANTHROPIC_MODEL);
        assert_eq!(
            (m.max_tokens, m.timeout_secs, m.max_retries),
            (8192, 120, 4)
        );
        assert_eq!(
            m.prices.cost_micro_usd("claude-sonnet-4-5", 1_000, 0),
            3_000
        );
    }

    #[test]
    fn model_sections_that_cannot_work_are_refused_with_the_key() {
        let generic = "[[secrets]]\nname = \"npm\"\nsource = { env = \"NPM\" }\n";
        let generic_key =
            format!("{generic}[model]\nprovider = \"openai\"\napi_key_secret = \"npm\"\n");
        for (text, expected) in [
            (
                "[model]\nprovider = \"gemini\"\n",
                "unknown variant `gemini`",
            ),
            (
                "[model]\nprovider = \"openai\"\nmodle = \"x\"\n",
                "unknown field `modle`",
            ),
            (
                "[model]\nprovider = \"anthropic\"\n",
                "[model] api_key_secret: provider \"anthropic\" needs the name of a [[secrets]] entry",
            ),
            (
                "[model]\nprovider = \"anthropic\"\napi_key_secret = \"nope\"\n",
                "[model] api_key_secret: no [[secrets]] entry is named `nope`",
            ),
            (
                generic_key.as_str(),
                "[model] api_key_secret: secret `npm` must have kind = \"model-api-key\"",
            ),
            (
                "[model]\nprovider = \"scripted\"\n",
                "[model] script: provider \"scripted\" needs `script`",
            ),
            (
                "[model]\nprovider = \"scripted\"\nscript = \"s.json\"\nmodel = \"m\"\n",
                "[model] model: has no meaning for provider \"scripted\"",
            ),
            (
                "[model]\nprovider = \"openai\"\nscript = \"s.json\"\n",
                "[model] script: is only for provider \"scripted\"",
            ),
            (
                "[model]\nprovider = \"openai\"\nbase_url = \"ftp://x\"\n",
                "[model] base_url: `ftp://x` must be an http or https URL",
            ),
            (
                "[model]\nprovider = \"openai\"\nbase_url = \"localhost:11434\"\n",
                "must be an http or https URL",
            ),
            (
                "[model]\nprovider = \"openai\"\nbase_url = \"http://u:p@h/v1\"\n",
                "must not carry credentials",
            ),
            (
                "[model]\nprovider = \"openai\"\nmax_tokens = 0\n",
                "[model] max_tokens: must be at least 1",
            ),
            (
                "[model]\nprovider = \"openai\"\ntimeout_secs = 0\n",
                "[model] timeout_secs: must be within 1..=3600",
            ),
            (
                "[model]\nprovider = \"openai\"\nmax_retries = 100\n",
                "[model] max_retries: must be at most 10",
            ),
            (
                "[model]\nprovider = \"openai\"\n[model.prices.x]\ninput_usd_per_mtok = -1.0\noutput_usd_per_mtok = 1.0\n",
                "[model] prices: the prices of `x` must be finite and not negative",
            ),
            (
                "[budgets.triage]\nmax_turns = 0\n",
                "[budgets.triage] max_turns: must be at least 1",
            ),
            (
                "[budgets.review]\nmax_cost_usd = -2.0\n",
                "[budgets.review] max_cost_usd: must be a number of dollars",
            ),
            (
                "[budgets.review]\nmax_cost_usd = nan\n",
                "[budgets.review] max_cost_usd",
            ),
            (
                "[budgets.review]\nmax_dollars = 2\n",
                "unknown field `max_dollars`",
            ),
        ] {
            let err = parse(text).map(|_| ()).expect_err(text).to_string();
            assert!(
                err.contains(expected),
                "{text}\nexpected {expected:?}\ngot {err:?}"
            );
        }
    }

    #[test]
    fn budgets_fill_unset_keys_from_the_role_default() {
        let c = parse(
            "[budgets.implementation]\nmax_turns = 5\n[budgets.my-role]\nmax_cost_usd = 0.25\n",
        )
        .expect("valid");
        let b = c.budgets.budget_for("implementation");
        assert_eq!(
            (b.max_turns, b.max_tokens, b.max_cost_micro_usd),
            (Some(5), Some(4_000_000), Some(10_000_000))
        );
        let b = c.budgets.budget_for("my-role");
        assert_eq!(
            (b.max_turns, b.max_tokens, b.max_cost_micro_usd),
            (Some(40), Some(1_000_000), Some(250_000))
        );
        let b = c.budgets.budget_for("triage");
        assert_eq!(b.max_turns, Some(20));
        assert_eq!((b.turns, b.tokens, b.cost_micro_usd), (0, 0, 0));
        assert!(b.exhausted().is_none());
    }

    #[test]
    fn the_environment_picks_anthropic_first_then_openai_compatible() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert!(ModelConfig::from_vars(env(&[])).is_none());
        let (c, secrets) = ModelConfig::from_vars(env(&[
            ("ANTHROPIC_API_KEY", "k"),
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
        ]))
        .expect("anthropic");
        assert_eq!(c.provider, ProviderKind::Anthropic);
        assert_eq!(c.model_name(), DEFAULT_ANTHROPIC_MODEL);
        c.validate(&secrets).expect("the env config is valid");
        assert_eq!(secrets[0].host_only_kind(), Some(SecretKind::ModelApiKey));

        let (c, secrets) = ModelConfig::from_vars(env(&[
            ("OPENAI_BASE_URL", "http://localhost:11434/v1"),
            ("KILN_MODEL", "llama3.1"),
        ]))
        .expect("openai-compatible");
        assert_eq!(c.provider, ProviderKind::OpenAi);
        assert_eq!(c.model_name(), "llama3.1");
        assert_eq!(c.base_url.as_deref(), Some("http://localhost:11434/v1"));
        assert!(c.api_key_secret.is_none() && secrets.is_empty());
        c.validate(&secrets).expect("a local endpoint needs no key");
    }

    #[test]
    fn building_reports_an_unreadable_key_by_secret_name_only() {
        let c = parse(&format!(
            "{KEY}[model]\nprovider = \"anthropic\"\napi_key_secret = \"anthropic\"\n"
        ))
        .expect("valid");
        let err = build_provider(c.model.as_ref().expect("model"), &c.secrets)
            .err()
            .expect("the variable is not set")
            .to_string();
        assert_eq!(
            err,
            "[model] api_key_secret: secret `anthropic`: environment variable KILN_TEST_NO_SUCH_VAR is not set or not UTF-8"
        );
    }

    #[test]
    fn a_scripted_config_builds_a_scripted_provider() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.json");
        std::fs::write(&path, r#"{"turns": [{"text": "hi"}]}"#).expect("write");
        let mut c = ModelConfig::new(ProviderKind::Scripted);
        c.script = Some(path);
        let p = build_provider(&c, &[]).expect("builds");
        assert_eq!(p.name(), "scripted:demo.json");
        c.script = Some(dir.path().join("nope.json"));
        let err = build_provider(&c, &[]).err().expect("missing").to_string();
        assert!(
            err.starts_with("[model] script: cannot read script "),
            "{err}"
        );
    }
}
