//! `kiln.toml` `[github]`: where the GitHub API is and which host-only secret
//! authenticates Kiln to it.
//!
//! ```toml
//! [github]
//! api_url = "https://ghe.example.com/api/v3"   # default: GitHub's public API
//! app_id = 12345
//! private_key_secret = "github-app"            # a [[secrets]] entry, kind = "github-app-key"
//! # token_secret = "github-token"              # instead of an App: a fine-grained token
//! git_url = "https://ghe.example.com"          # optional: where `owner/name.git` is fetched
//! ```
//!
//! The config names secrets; it never holds their values. The values are read
//! by [`super::Credentials::from_config`] on the host and never reach a sandbox.

use serde::Deserialize;

use crate::config::SecretConfig;

/// GitHub's public REST API, the default `api_url`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// `[github]` in `kiln.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GitHubConfig {
    /// REST API base URL (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The GitHub App's id; needs `private_key_secret`.
    pub app_id: Option<u64>,
    /// Name of the `[[secrets]]` entry holding the App's PEM private key.
    pub private_key_secret: Option<String>,
    /// Name of the `[[secrets]]` entry holding a fine-grained token (instead of an App).
    pub token_secret: Option<String>,
    /// Base URL repositories are fetched from as `{git_url}/{owner}/{name}.git`;
    /// default: the `clone_url` the API reports.
    pub git_url: Option<String>,
    /// Attempts per call for 5xx answers and connection errors (default 4).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First back-off after a 5xx or connection error, doubled each retry (default 500 ms).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest wait for a rate limit to lift before giving up (default 60 s).
    #[serde(default = "default_rate_limit_wait")]
    pub max_rate_limit_wait_secs: u64,
    /// Refresh an installation token this long before it expires (default 300 s).
    #[serde(default = "default_refresh_margin")]
    pub token_refresh_margin_secs: u64,
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_string()
}
fn default_max_attempts() -> u32 {
    4
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_rate_limit_wait() -> u64 {
    60
}
fn default_refresh_margin() -> u64 {
    300
}

impl Default for GitHubConfig {
    fn default() -> Self {
        Self {
            api_url: default_api_url(),
            app_id: None,
            private_key_secret: None,
            token_secret: None,
            git_url: None,
            max_attempts: default_max_attempts(),
            backoff_ms: default_backoff_ms(),
            max_rate_limit_wait_secs: default_rate_limit_wait(),
            token_refresh_margin_secs: default_refresh_margin(),
        }
    }
}

/// A `[github]` section that cannot work, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[github] {0}")]
pub struct GitHubConfigError(pub String);

impl GitHubConfig {
    /// Checks the section against the declared secrets: exactly one way to
    /// authenticate, named secrets exist and are host-only, URLs are usable.
    pub fn validate(&self, secrets: &[SecretConfig]) -> Result<(), GitHubConfigError> {
        let err = |m: String| Err(GitHubConfigError(m));
        check_url("api_url", &self.api_url)?;
        if let Some(git_url) = &self.git_url {
            check_url("git_url", git_url)?;
        }
        match (self.app_id, &self.private_key_secret, &self.token_secret) {
            (Some(_), Some(key), None) => check_secret("private_key_secret", key, secrets)?,
            (None, None, Some(token)) => check_secret("token_secret", token, secrets)?,
            (Some(_), None, None) => {
                return err("app_id is set but private_key_secret is not: name the \
                            [[secrets]] entry holding the App's private key"
                    .into());
            }
            (None, Some(_), None) => {
                return err("private_key_secret is set but app_id is not".into());
            }
            (None, None, None) => {
                return err("set app_id and private_key_secret (a GitHub App) or \
                            token_secret (a fine-grained token)"
                    .into());
            }
            (_, _, Some(_)) => {
                return err("token_secret cannot be combined with app_id / \
                            private_key_secret: choose one way to authenticate"
                    .into());
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return err(format!(
                "max_attempts = {} is out of range (1..=10)",
                self.max_attempts
            ));
        }
        if self.token_refresh_margin_secs >= 3600 {
            return err(format!(
                "token_refresh_margin_secs = {} must be below 3600 (tokens live one hour)",
                self.token_refresh_margin_secs
            ));
        }
        Ok(())
    }
}

fn check_url(key: &str, value: &str) -> Result<(), GitHubConfigError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                Err(GitHubConfigError(format!(
                    "{key} must not carry credentials; name a secret instead"
                )))
            } else if u.query().is_some() || u.fragment().is_some() {
                Err(GitHubConfigError(format!(
                    "{key} = {value:?} must not have a query or fragment"
                )))
            } else {
                Ok(())
            }
        }
        _ => Err(GitHubConfigError(format!(
            "{key} = {value:?} is not an http(s) URL with a host"
        ))),
    }
}

fn check_secret(key: &str, name: &str, secrets: &[SecretConfig]) -> Result<(), GitHubConfigError> {
    let Some(secret) = secrets.iter().find(|s| s.name == name) else {
        return Err(GitHubConfigError(format!(
            "{key} = {name:?} names no [[secrets]] entry"
        )));
    };
    if secret.host_only_kind().is_none() {
        return Err(GitHubConfigError(format!(
            "{key} = {name:?}: that secret must be host-only; give it \
             kind = \"github-app-key\" or \"github-token\" (and no scope)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, KilnConfig};

    const APP_KEY: &str =
        "[[secrets]]\nname = \"gh\"\nkind = \"github-app-key\"\nsource = { file = \"/k.pem\" }\n";

    fn parse(text: &str) -> Result<KilnConfig, ConfigError> {
        KilnConfig::from_toml(text)
    }

    #[test]
    fn no_section_means_no_github() {
        assert!(parse("").is_ok_and(|c| c.github.is_none()));
    }

    #[test]
    fn an_app_with_a_host_only_key_is_valid_and_defaults_fill_in() {
        let c = parse(&format!(
            "{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\n"
        ))
        .expect("valid");
        let gh = c.github.expect("section present");
        assert_eq!(gh.api_url, super::DEFAULT_API_URL);
        assert_eq!(gh.app_id, Some(7));
        assert_eq!(gh.max_attempts, 4);
    }

    #[test]
    fn a_token_secret_of_kind_github_token_is_valid() {
        let c = parse(
            "[[secrets]]\nname = \"t\"\nkind = \"github-token\"\nsource = { env = \"T\" }\n\
             [github]\ntoken_secret = \"t\"\napi_url = \"http://127.0.0.1:9/api/v3\"\n",
        );
        assert!(c.is_ok(), "got {c:?}");
    }

    #[test]
    fn bad_sections_name_the_key_at_fault() {
        for (text, expect) in [
            (
                "[github]\napp_id = 7\n".to_string(),
                "private_key_secret is not",
            ),
            (
                "[github]\n".to_string(),
                "set app_id and private_key_secret",
            ),
            (
                "[github]\napp_id = 7\nprivate_key_secret = \"nope\"\n".to_string(),
                "names no [[secrets]] entry",
            ),
            (
                "[[secrets]]\nname = \"gen\"\nsource = { env = \"G\" }\n\
                 [github]\ntoken_secret = \"gen\"\n"
                    .to_string(),
                "must be host-only",
            ),
            (
                format!(
                    "{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\ntoken_secret = \"gh\"\n"
                ),
                "choose one way",
            ),
            (
                format!(
                    "{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\napi_url = \"ftp://x\"\n"
                ),
                "api_url = \"ftp://x\" is not an http(s) URL",
            ),
            (
                format!(
                    "{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\ngit_url = \"https://u:p@h\"\n"
                ),
                "git_url must not carry credentials",
            ),
            (
                format!(
                    "{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\nmax_attempts = 0\n"
                ),
                "max_attempts = 0",
            ),
            (
                format!("{APP_KEY}[github]\napp_id = 7\nprivate_key_secret = \"gh\"\nappid = 7\n"),
                "unknown field `appid`",
            ),
        ] {
            let err = parse(&text).expect_err(expect);
            assert!(
                err.to_string().contains(expect),
                "expected {expect:?} in error, got: {err}"
            );
        }
    }
}
