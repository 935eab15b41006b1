//! `kiln.toml` `[store]`: a PostgreSQL store shared by several runners.
//!
//! ```toml
//! [store]
//! url = "postgres://kiln@db.example.com:5432/kiln"   # no password here
//! password_secret = "kiln-db"    # a [[secrets]] entry, kind = "database-password"
//! pool_size = 16                 # connections per runner
//! heartbeat_secs = 30            # how often a runner renews its leases
//! lease_secs = 90                # a lease not renewed for this long is lost
//! ```
//!
//! Without `[store]` the runner keeps its embedded SQLite file in the data
//! directory. Like `[github]`, the section names a secret and never holds
//! its value: the password is read on the host when the store is opened.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{SecretConfig, SecretKind};

/// `[store]` in `kiln.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://USER@HOST[:PORT]/DATABASE`, without a password.
    pub url: String,
    /// Name of the `[[secrets]]` entry holding the password (kind
    /// `database-password`); none for servers that trust the runner's host.
    pub password_secret: Option<String>,
    /// Connections each runner keeps (default 16).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How often a runner renews the leases of the runs it holds (default 30 s).
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// How long a lease lasts without renewal (default 90 s): then another
    /// runner may recover the run, and the old holder's writes are refused.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
}

fn default_pool_size() -> usize {
    16
}
fn default_heartbeat_secs() -> u64 {
    30
}
fn default_lease_secs() -> u64 {
    90
}

/// A `[store]` section that cannot work, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[store] {0}")]
pub struct StoreConfigError(pub String);

/// What `[store] url` names, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Role to log in as.
    pub user: String,
    /// Database.
    pub dbname: String,
}

impl StoreConfig {
    /// A config for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            password_secret: None,
            pool_size: default_pool_size(),
            heartbeat_secs: default_heartbeat_secs(),
            lease_secs: default_lease_secs(),
        }
    }

    /// Checks the section against the declared secrets.
    pub fn validate(&self, secrets: &[SecretConfig]) -> Result<(), StoreConfigError> {
        self.target()?;
        if let Some(name) = &self.password_secret {
            let Some(secret) = secrets.iter().find(|s| &s.name == name) else {
                return Err(StoreConfigError(format!(
                    "password_secret = {name:?} names no [[secrets]] entry"
                )));
            };
            if secret.host_only_kind() != Some(SecretKind::DatabasePassword) {
                return Err(StoreConfigError(format!(
                    "password_secret = {name:?}: that secret must be host-only; give it \
                     kind = \"database-password\" (and no scope)"
                )));
            }
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err(StoreConfigError(format!(
                "pool_size = {} is out of range (1..=256)",
                self.pool_size
            )));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_secs > 3600 {
            return Err(StoreConfigError(format!(
                "heartbeat_secs = {} is out of range (1..=3600)",
                self.heartbeat_secs
            )));
        }
        if self.lease_secs < 2 * self.heartbeat_secs {
            return Err(StoreConfigError(format!(
                "lease_secs = {} must be at least twice heartbeat_secs ({}): a lease must \
                 survive one missed heartbeat",
                self.lease_secs, self.heartbeat_secs
            )));
        }
        Ok(())
    }

    /// The server, role and database `url` names; an error says what is wrong.
    pub fn target(&self) -> Result<PgTarget, StoreConfigError> {
        let err = |m: String| Err(StoreConfigError(m));
        let redacted = redact(&self.url);
        let u = match url::Url::parse(&self.url) {
            Ok(u) => u,
            Err(e) => return err(format!("url = {redacted:?} is not a URL: {e}")),
        };
        if !matches!(u.scheme(), "postgres" | "postgresql") {
            return err(format!(
                "url = {redacted:?}: the scheme must be postgres:// (SQLite needs no [store] section)"
            ));
        }
        if u.password().is_some() {
            return err(
                "url must not carry a password; put it in a [[secrets]] entry of kind \
                 \"database-password\" and name it with password_secret"
                    .into(),
            );
        }
        let Some(host) = u.host_str().filter(|h| !h.is_empty()) else {
            return err(format!(
                "url = {redacted:?} names no host (postgres://USER@HOST/DATABASE)"
            ));
        };
        if u.username().is_empty() {
            return err(format!(
                "url = {redacted:?} names no user (postgres://USER@HOST/DATABASE)"
            ));
        }
        let dbname = u.path().trim_start_matches('/');
        if dbname.is_empty() || dbname.contains('/') {
            return err(format!(
                "url = {redacted:?} must name one database (postgres://USER@HOST/DATABASE)"
            ));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return err(format!(
                "url = {redacted:?} must not have a query or fragment: connection settings \
                 are [store] keys (TLS is not supported yet: reach the server over a \
                 trusted network)"
            ));
        }
        Ok(PgTarget {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: u.port().unwrap_or(5432),
            user: percent_decode(u.username()),
            dbname: percent_decode(dbname),
        })
    }

    /// How long a lease lasts.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// How often leases are renewed.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }

    /// The driver's connection settings, with the password read from its secret.
    pub fn pg_config(
        &self,
        secrets: &[SecretConfig],
    ) -> Result<tokio_postgres::Config, StoreConfigError> {
        self.validate(secrets)?;
        let t = self.target()?;
        let mut c = tokio_postgres::Config::new();
        c.host(&t.host)
            .port(t.port)
            .user(&t.user)
            .dbname(&t.dbname)
            .application_name("kiln")
            .connect_timeout(Duration::from_secs(10));
        if let Some(name) = &self.password_secret {
            let secret = secrets
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| StoreConfigError(format!("password_secret = {name:?} is gone")))?;
            let value = secret
                .read_value()
                .map_err(|e| StoreConfigError(format!("password_secret: {e}")))?;
            c.password(value);
        }
        Ok(c)
    }
}

/// `%XX` escapes decoded (a user or database name with reserved characters).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, KilnConfig};

    const SECRET: &str = "[[secrets]]\nname = \"db\"\nkind = \"database-password\"\nsource = { env = \"KILN_TEST_DB_PW\" }\n";

    #[test]
    fn a_store_section_names_a_host_only_password_secret() {
        let c = KilnConfig::from_toml(&format!(
            "{SECRET}[store]\nurl = \"postgres://kiln@db.example.com:6543/kiln\"\n\
             password_secret = \"db\"\n"
        ))
        .expect("valid");
        let store = c.store.expect("[store]");
        let t = store.target().expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str(), t.dbname.as_str()),
            ("db.example.com", 6543, "kiln", "kiln")
        );
        assert_eq!((store.heartbeat_secs, store.lease_secs), (30, 90));
        assert!(KilnConfig::from_toml("").expect("empty").store.is_none());
    }

    #[test]
    fn a_broken_store_section_says_what_is_wrong() {
        for (toml, want) in [
            (
                "[store]\nurl = \"postgres://kiln:hunter2@db/kiln\"\n".to_string(),
                "must not carry a password",
            ),
            (
                "[store]\nurl = \"mysql://kiln@db/kiln\"\n".to_string(),
                "scheme must be postgres://",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db\"\n".to_string(),
                "must name one database",
            ),
            (
                "[store]\nurl = \"postgres://db/kiln\"\n".to_string(),
                "names no user",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db/kiln?sslmode=require\"\n".to_string(),
                "must not have a query",
            ),
            (
                "[store]\nurl = \"not a url\"\n".to_string(),
                "is not a URL",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db/kiln\"\npassword_secret = \"nope\"\n"
                    .to_string(),
                "names no [[secrets]] entry",
            ),
            (
                "[[secrets]]\nname = \"g\"\nsource = { env = \"G\" }\n\
                 [store]\nurl = \"postgres://kiln@db/kiln\"\npassword_secret = \"g\"\n"
                    .to_string(),
                "kind = \"database-password\"",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db/kiln\"\nheartbeat_secs = 30\nlease_secs = 40\n"
                    .to_string(),
                "at least twice heartbeat_secs",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db/kiln\"\npool_size = 0\n".to_string(),
                "pool_size = 0",
            ),
            (
                "[store]\nurl = \"postgres://kiln@db/kiln\"\npasword_secret = \"db\"\n"
                    .to_string(),
                "unknown field",
            ),
        ] {
            let err = KilnConfig::from_toml(&format!("{SECRET}{toml}"))
                .expect_err(&format!("{toml} should be refused"))
                .to_string();
            assert!(err.contains(want), "{toml}: got {err}");
            assert!(!err.contains("hunter2"), "the password leaked: {err}");
        }
        // A database password can never be scoped into a sandbox.
        let scoped = KilnConfig::from_toml(
            "[[secrets]]\nname = \"db\"\nkind = \"database-password\"\nsource = { env = \"X\" }\n\
             scope = { roles = [\"implementation\"], phase = \"setup\" }\n",
        );
        assert!(
            matches!(scoped, Err(ConfigError::HostOnlySecretScoped { .. })),
            "{scoped:?}"
        );
    }
}
