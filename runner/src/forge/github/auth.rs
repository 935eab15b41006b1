//! Authenticating to GitHub: a fine-grained token, or a GitHub App (its PEM
//! key signs a JWT, the JWT finds the repository's installation and buys an
//! installation token). Installation tokens are cached per installation and
//! replaced a margin before they expire.
//!
//! Every value here is a credential: `Debug` output redacts it, nothing is
//! logged, and none of it is handed to a sandbox.
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::Method;
use base64::Engine as _;
use octocrab::EncodingKey;
use octocrab::models::AppId;
use octocrab::secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{ACCEPT_JSON, Api, Request};
use crate::config::SecretConfig;
use crate::forge::{ForgeError, RepoRef};

/// How Kiln proves itself to GitHub.
pub enum Credentials {
    /// A fine-grained (or classic) token, used as is.
    Token(SecretString),
    /// A GitHub App: its id and RSA private key.
    App {
        /// The App's id.
        app_id: u64,
        /// The App's private key.
        key: EncodingKey,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Credentials::Token(<redacted>)"),
            Credentials::App { app_id, .. } => f
                .debug_struct("Credentials::App")
                .field("app_id", app_id)
                .field("key", &"<redacted>")
                .finish(),
        }
    }
}

impl Credentials {
    /// A token credential.
    pub fn token(token: impl Into<String>) -> Self {
        Credentials::Token(SecretString::from(token.into()))
    }

    /// A GitHub App credential from its id and PEM-encoded RSA private key.
    pub fn app(app_id: u64, pem: &[u8]) -> Result<Self, ForgeError> {
        // The parse error would not contain key material, but say nothing of
        // the key beyond its being unusable anyway.
        let key = EncodingKey::from_rsa_pem(pem).map_err(|_| {
            ForgeError::Invalid(format!(
                "GitHub App {app_id}: the private key is not a PEM-encoded RSA key"
            ))
        })?;
        Ok(Credentials::App { app_id, key })
    }

    /// The credentials `[github]` names, read from their `[[secrets]]` sources.
    pub fn from_config(
        config: &super::GitHubConfig,
        secrets: &[SecretConfig],
    ) -> Result<Self, ForgeError> {
        let read = |name: &str| -> Result<String, ForgeError> {
            let secret = secrets.iter().find(|s| s.name == name).ok_or_else(|| {
                ForgeError::Invalid(format!(
                    "[github] names secret {name:?}, which is not declared"
                ))
            })?;
            secret
                .read_value()
                .map_err(|e| ForgeError::Invalid(e.to_string()))
        };
        match (
            config.app_id,
            &config.private_key_secret,
            &config.token_secret,
        ) {
            (Some(app_id), Some(key), None) => Self::app(app_id, read(key)?.as_bytes()),
            (None, None, Some(token)) => Ok(Self::token(read(token)?)),
            _ => Err(ForgeError::Invalid(
                "[github] needs app_id + private_key_secret, or token_secret".into(),
            )),
        }
    }
}

/// An installation token and when it stops working (Unix seconds).
struct Cached {
    token: SecretString,
    expires_at: u64,
}

/// Hands out a token per repository, caching App installation tokens.
pub(crate) struct Authenticator {
    credentials: Credentials,
    margin: Duration,
    installations: tokio::sync::Mutex<HashMap<RepoRef, u64>>,
    // One lock over all refreshes: two calls needing a fresh token for the
    // same installation must not buy two.
    tokens: tokio::sync::Mutex<HashMap<u64, Cached>>,
    // Who Kiln writes as; it never changes for one set of credentials.
    login: tokio::sync::OnceCell<String>,
}

impl Authenticator {
    /// Tokens from `credentials`, refreshed `margin` before expiry.
    pub fn new(credentials: Credentials, margin: Duration) -> Self {
        Self {
            credentials,
            margin,
            installations: Default::default(),
            tokens: Default::default(),
            login: Default::default(),
        }
    }

    /// True when tokens come from an App and can be renewed.
    pub fn renewable(&self) -> bool {
        matches!(self.credentials, Credentials::App { .. })
    }

    /// A token good for calls on `repo` for at least the margin.
    pub async fn token(&self, api: &Api, repo: &RepoRef) -> Result<SecretString, ForgeError> {
        let (app_id, key) = match &self.credentials {
            Credentials::Token(t) => return Ok(t.clone()),
            Credentials::App { app_id, key } => (*app_id, key),
        };
        let installation = self.installation(api, repo, app_id, key).await?;
        let mut tokens = self.tokens.lock().await;
        let now = unix_now();
        if let Some(c) = tokens.get(&installation)
            && now + self.margin.as_secs() < c.expires_at
        {
            return Ok(c.token.clone());
        }
        let jwt = jwt(app_id, key)?;
        let call = format!("create an access token for installation {installation}");
        let reply = api
            .send(
                &Request {
                    call: &call,
                    method: Method::POST,
                    target: format!("/app/installations/{installation}/access_tokens"),
                    body: Some(serde_json::json!({})),
                    accept: ACCEPT_JSON,
                },
                &format!("Bearer {}", jwt.expose_secret()),
            )
            .await?;
        #[derive(Deserialize)]
        struct AccessToken {
            token: String,
            expires_at: Option<String>,
        }
        let t: AccessToken = reply.json(&call)?;
        // A token without a readable expiry is assumed to live the documented hour.
        let expires_at = t
            .expires_at
            .as_deref()
            .and_then(parse_utc)
            .unwrap_or(now + 3600);
        tracing::debug!(installation, expires_at, "new installation token");
        let token = SecretString::from(t.token);
        tokens.insert(
            installation,
            Cached {
                token: token.clone(),
                expires_at,
            },
        );
        Ok(token)
    }

    /// The login Kiln's comments appear under: an App's bot
    /// (`<slug>[bot]`, from `GET /app` with the App's JWT), or the token's
    /// user (`GET /user`). Asked once, then remembered.
    pub async fn own_login(&self, api: &Api) -> Result<String, ForgeError> {
        self.login
            .get_or_try_init(|| async {
                #[derive(Deserialize)]
                struct App {
                    slug: String,
                }
                #[derive(Deserialize)]
                struct User {
                    login: String,
                }
                let (target, auth) = match &self.credentials {
                    Credentials::App { app_id, key } => (
                        "/app",
                        format!("Bearer {}", jwt(*app_id, key)?.expose_secret()),
                    ),
                    Credentials::Token(t) => ("/user", bearer(t)),
                };
                let call = "find the login Kiln writes as".to_string();
                let reply = api
                    .send(
                        &Request {
                            call: &call,
                            method: Method::GET,
                            target: target.to_string(),
                            body: None,
                            accept: ACCEPT_JSON,
                        },
                        &auth,
                    )
                    .await?;
                Ok(match &self.credentials {
                    Credentials::App { .. } => format!("{}[bot]", reply.json::<App>(&call)?.slug),
                    Credentials::Token(_) => reply.json::<User>(&call)?.login,
                })
            })
            .await
            .cloned()
    }

    /// Forgets `repo`'s cached token (GitHub refused it: revoked, or the
    /// installation changed).
    pub async fn invalidate(&self, repo: &RepoRef) {
        if let Some(id) = self.installations.lock().await.remove(repo) {
            self.tokens.lock().await.remove(&id);
        }
    }

    async fn installation(
        &self,
        api: &Api,
        repo: &RepoRef,
        app_id: u64,
        key: &EncodingKey,
    ) -> Result<u64, ForgeError> {
        if let Some(id) = self.installations.lock().await.get(repo) {
            return Ok(*id);
        }
        let jwt = jwt(app_id, key)?;
        let call = format!("find the GitHub App installation on {repo}");
        let reply = api
            .send(
                &Request {
                    call: &call,
                    method: Method::GET,
                    target: format!("/repos/{}/{}/installation", repo.owner, repo.name),
                    body: None,
                    accept: ACCEPT_JSON,
                },
                &format!("Bearer {}", jwt.expose_secret()),
            )
            .await?;
        #[derive(Deserialize)]
        struct Installation {
            id: u64,
        }
        let id = reply.json::<Installation>(&call)?.id;
        self.installations.lock().await.insert(repo.clone(), id);
        Ok(id)
    }
}

/// The REST `Authorization` value for a token.
pub(crate) fn bearer(token: &SecretString) -> String {
    format!("Bearer {}", token.expose_secret())
}

/// The `Authorization` value git sends over HTTPS: GitHub takes an
/// installation token as the password of user `x-access-token`.
pub(crate) fn git_basic(token: &SecretString) -> String {
    let pair = format!("x-access-token:{}", token.expose_secret());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A JWT signed with the App's key, good for the App's own endpoints (`/app/...`).
pub(crate) fn jwt(app_id: u64, key: &EncodingKey) -> Result<SecretString, ForgeError> {
    octocrab::auth::create_jwt(AppId(app_id), key)
        .map(SecretString::from)
        .map_err(|e| ForgeError::Invalid(format!("signing the GitHub App {app_id} JWT: {e}")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch of GitHub's `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_timestamps_parse_to_unix_seconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2016-07-11T22:14:10Z"), Some(1_468_275_250));
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Some(951_868_800));
        for bad in [
            "",
            "2016-07-11 22:14:10Z",
            "2016-13-11T22:14:10Z",
            "2016-07-11T22:14:10+01:00",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = Credentials::token("ghs_supersecretvalue");
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        assert!(matches!(
            Credentials::app(1, b"not a key"),
            Err(ForgeError::Invalid(m)) if m.contains("not a PEM-encoded RSA key")
        ));
    }

    #[test]
    fn git_authorization_is_basic_with_the_access_token_user() {
        let v = git_basic(&SecretString::from("abc".to_string()));
        assert_eq!(v, "Basic eC1hY2Nlc3MtdG9rZW46YWJj");
    }
}
