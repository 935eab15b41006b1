//! What Kiln needs of its GitHub App, said once: the permissions and the
//! webhook events, the App manifest `kiln github manifest` prints for
//! GitHub's manifest flow, and `kiln github check`, which asks GitHub with
//! the App's own credentials whether the App has them.
//!
//! The check makes the calls a run makes, in the order it makes them: the
//! App's JWT (`GET /app`), its installations (`GET /app/installations`),
//! the repository's installation and an installation token. Each step that
//! fails says what to change, and the steps after it are not tried.
use std::fmt;

use axum::http::Method;
use octocrab::secrecy::ExposeSecret as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::GitHubConfig;
use super::auth::{Credentials, jwt};
use super::http::{ACCEPT_JSON, Api, Request, RetryPolicy};
use crate::config::SecretConfig;
use crate::forge::ForgeError;
use crate::forge::RepoRef;

/// A repository permission the App needs: its name in GitHub's API, the
/// level, and what Kiln does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// GitHub's name (`pull_requests`).
    pub name: &'static str,
    /// `read` or `write`.
    pub level: &'static str,
    /// Why Kiln needs it.
    pub why: &'static str,
}

/// The repository permissions Kiln's App needs; nothing else.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        name: "contents",
        level: "write",
        why: "clone the repository and push Kiln's own kiln/* branches",
    },
    Permission {
        name: "issues",
        level: "write",
        why: "read issues, comment, and set labels",
    },
    Permission {
        name: "pull_requests",
        level: "write",
        why: "open draft pull requests, review them, reply in review threads",
    },
    Permission {
        name: "checks",
        level: "write",
        why: "report verification as the kiln/verification check run",
    },
    Permission {
        name: "metadata",
        level: "read",
        why: "look up a commenter's permission before a run starts",
    },
];

/// A webhook event the App subscribes to, and what it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// GitHub's event name.
    pub name: &'static str,
    /// What Kiln does with it.
    pub why: &'static str,
}

/// The webhook events Kiln acts on (see "Triggers and commands" in the README).
pub const EVENTS: &[Event] = &[
    Event {
        name: "issues",
        why: "an issue opened or labelled starts triage, spec or implementation",
    },
    Event {
        name: "issue_comment",
        why: "`/kiln` commands, and reporters answering Kiln's questions",
    },
    Event {
        name: "pull_request",
        why: "Kiln's pull requests opened or pushed start review; plan-approved on a spec PR",
    },
    Event {
        name: "pull_request_review",
        why: "Kiln's review starts verification; a change request starts Kiln's answer",
    },
    Event {
        name: "pull_request_review_comment",
        why: "`/kiln` commands in review threads",
    },
];

/// The App manifest for GitHub's manifest flow: a private App named `name`
/// whose home page is `url` (Kiln's public URL) and whose webhooks go to
/// `<url>/webhooks/github`, with exactly [`PERMISSIONS`] and [`EVENTS`].
pub fn manifest(name: &str, url: &str) -> Value {
    let url = url.trim_end_matches('/');
    let permissions: serde_json::Map<String, Value> = PERMISSIONS
        .iter()
        .map(|p| (p.name.to_string(), json!(p.level)))
        .collect();
    json!({
        "name": name,
        "url": url,
        "description": "Kiln: issues through triage, spec, implementation, review and \
                        verification, as draft pull requests for humans to merge.",
        "hook_attributes": { "url": format!("{url}/webhooks/github"), "active": true },
        "redirect_url": format!("{url}/"),
        "public": false,
        "default_permissions": permissions,
        "default_events": EVENTS.iter().map(|e| e.name).collect::<Vec<_>>(),
    })
}

/// One line of the check's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// True if this part is as Kiln needs it.
    pub ok: bool,
    /// What was found, or what is missing and how to fix it.
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { "ok     " } else { "MISSING" };
        write!(f, "{mark} {}", self.text)
    }
}

/// What `kiln github check` found, in the order it looked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Every finding.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True if nothing is missing.
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    fn good(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: true,
            text: text.into(),
        });
    }

    fn bad(&mut self, text: impl Into<String>) {
        self.findings.push(Finding {
            ok: false,
            text: text.into(),
        });
    }

    /// Compares `granted` (GitHub's `permissions` and `events` of the App
    /// or of one installation) with what Kiln needs; `whose` names it.
    fn compare(&mut self, whose: &str, granted: &Granted, fix: &str) {
        let mut missing = false;
        for p in PERMISSIONS {
            let has = granted.permissions.get(p.name).and_then(Value::as_str);
            if !covers(has, p.level) {
                missing = true;
                self.bad(format!(
                    "{whose}: permission `{}: {}` (has {}), needed to {}; {fix}",
                    p.name,
                    p.level,
                    has.unwrap_or("none"),
                    p.why
                ));
            }
        }
        for e in EVENTS {
            if !granted.events.iter().any(|g| g == e.name) {
                missing = true;
                self.bad(format!(
                    "{whose}: webhook event `{}` is not subscribed, needed because {}; {fix}",
                    e.name, e.why
                ));
            }
        }
        if !missing {
            self.good(format!(
                "{whose}: every permission and webhook event Kiln needs"
            ));
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        Ok(())
    }
}

/// Whether GitHub's `has` (`read`, `write`, `admin`, or none) covers `need`.
fn covers(has: Option<&str>, need: &str) -> bool {
    let rank = |l: &str| match l {
        "read" => 1,
        "write" => 2,
        "admin" => 3,
        _ => 0,
    };
    has.is_some_and(|h| rank(h) >= rank(need))
}

/// The `permissions` and `events` of an App or installation, as GitHub sends them.
#[derive(Debug, Deserialize)]
struct Granted {
    #[serde(default)]
    permissions: serde_json::Map<String, Value>,
    #[serde(default)]
    events: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct App {
    id: u64,
    slug: String,
    #[serde(default)]
    owner: Option<Account>,
    #[serde(flatten)]
    granted: Granted,
}

#[derive(Debug, Deserialize)]
struct Account {
    login: String,
}

#[derive(Debug, Deserialize)]
struct Installation {
    id: u64,
    account: Account,
    #[serde(default)]
    repository_selection: String,
    #[serde(flatten)]
    granted: Granted,
}

/// Asks GitHub, as the App `config` describes, whether it can do what Kiln
/// does, on `repo` if one is given. Never fails: what goes wrong is a finding.
pub async fn check(
    config: &GitHubConfig,
    secrets: &[SecretConfig],
    repo: Option<&RepoRef>,
) -> Report {
    let mut report = Report::default();
    if let Err(e) = checked(config, secrets, repo, &mut report).await {
        report.bad(e);
    }
    report
}

async fn checked(
    config: &GitHubConfig,
    secrets: &[SecretConfig],
    repo: Option<&RepoRef>,
    report: &mut Report,
) -> Result<(), String> {
    config.validate(secrets).map_err(|e| e.to_string())?;
    let Some(app_id) = config.app_id else {
        return Err("[github] authenticates with token_secret: `kiln github check` checks a \
                    GitHub App (app_id and private_key_secret); see \"Connect GitHub\" in the README"
            .into());
    };
    let credentials = Credentials::from_config(config, secrets).map_err(|e| match e {
        ForgeError::Invalid(m) => m,
        other => other.to_string(),
    })?;
    let Credentials::App { key, .. } = &credentials else {
        return Err("[github] does not describe a GitHub App".into());
    };
    report.good(format!(
        "the private key of App {app_id} is an RSA key (from secret `{}`)",
        config.private_key_secret.as_deref().unwrap_or_default()
    ));
    // One attempt: a check answers now, it does not wait out an outage.
    let api = Api::new(
        &config.api_url,
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let bearer = format!(
        "Bearer {}",
        jwt(app_id, key).map_err(|e| e.to_string())?.expose_secret()
    );
    let get = |call: &'static str, target: String| {
        let api = &api;
        let bearer = &bearer;
        async move {
            api.send(
                &Request {
                    call,
                    method: Method::GET,
                    target,
                    body: None,
                    accept: ACCEPT_JSON,
                },
                bearer,
            )
            .await
        }
    };

    let app: App = get("GET /app", "/app".into())
        .await
        .and_then(|r| r.json("GET /app"))
        .map_err(|e| match e {
            ForgeError::Unauthorized(m) => format!(
                "GitHub refused the App's credentials ({m}): app_id = {app_id} must be the \
                 App's id and the key one of its current private keys (a key deleted on the \
                 App's settings page stops working)"
            ),
            other => format!("cannot reach GitHub at {}: {other}", config.api_url),
        })?;
    report.good(format!(
        "GitHub knows App {} `{}`{}",
        app.id,
        app.slug,
        app.owner
            .as_ref()
            .map(|o| format!(", owned by {}", o.login))
            .unwrap_or_default()
    ));
    let settings = format!(
        "change it under \"Permissions & events\" on the App's settings page \
         (https://github.com/settings/apps/{})",
        app.slug
    );
    report.compare("the App", &app.granted, &settings);

    let installations: Vec<Installation> = get(
        "GET /app/installations",
        "/app/installations?per_page=100".into(),
    )
    .await
    .and_then(|r| r.json("GET /app/installations"))
    .map_err(|e| e.to_string())?;
    let install_url = format!("https://github.com/apps/{}/installations/new", app.slug);
    if installations.is_empty() {
        return Err(format!(
            "the App is installed nowhere: install it on the repositories Kiln serves ({install_url})"
        ));
    }
    for i in &installations {
        let whose = format!(
            "installation {} on {} ({} repositories)",
            i.id,
            i.account.login,
            if i.repository_selection == "all" {
                "all"
            } else {
                "selected"
            }
        );
        let fix = format!(
            "the account's owner must accept the App's new permissions \
             (https://github.com/settings/installations/{})",
            i.id
        );
        report.compare(&whose, &i.granted, &fix);
    }

    let Some(repo) = repo else {
        return Ok(());
    };
    let target = format!("/repos/{}/{}/installation", repo.owner, repo.name);
    let installation: Installation =
        match get("GET /repos/{owner}/{repo}/installation", target).await {
            Ok(r) => r
                .json("GET /repos/{owner}/{repo}/installation")
                .map_err(|e| e.to_string())?,
            Err(ForgeError::NotFound(_)) => {
                return Err(format!(
                    "no installation of the App covers {repo}: add the repository to an \
                 installation ({install_url})"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
    let token_call = "POST /app/installations/{id}/access_tokens";
    let reply = api
        .send(
            &Request {
                call: token_call,
                method: Method::POST,
                target: format!("/app/installations/{}/access_tokens", installation.id),
                body: Some(json!({})),
                accept: ACCEPT_JSON,
            },
            &bearer,
        )
        .await
        .map_err(|e| format!("an installation token for {repo} was refused: {e}"))?;
    #[derive(Deserialize)]
    struct Token {
        #[serde(default)]
        expires_at: Option<String>,
    }
    let token: Token = reply.json(token_call).map_err(|e| e.to_string())?;
    report.good(format!(
        "installation {} covers {repo}; it issued a token{}",
        installation.id,
        token
            .expires_at
            .map(|t| format!(" valid until {t}"))
            .unwrap_or_default()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_asks_for_exactly_what_kiln_needs() {
        let m = manifest("kiln-acme", "https://kiln.example.com/");
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://kiln.example.com/webhooks/github"
        );
        assert_eq!(m["url"], "https://kiln.example.com");
        assert_eq!(m["public"], false);
        assert_eq!(m["default_permissions"]["checks"], "write");
        assert_eq!(m["default_permissions"]["metadata"], "read");
        assert_eq!(
            m["default_permissions"].as_object().map(|o| o.len()),
            Some(PERMISSIONS.len())
        );
        assert_eq!(
            m["default_events"].as_array().map(Vec::len),
            Some(EVENTS.len())
        );
    }

    #[test]
    fn every_event_kiln_subscribes_to_is_one_the_intake_parses() {
        for e in EVENTS {
            assert!(
                crate::intake::event::KNOWN_EVENTS.contains(&e.name),
                "{} is not parsed by the intake",
                e.name
            );
        }
    }

    #[test]
    fn a_higher_level_covers_a_lower_one() {
        assert!(covers(Some("write"), "read"));
        assert!(covers(Some("admin"), "write"));
        assert!(!covers(Some("read"), "write"));
        assert!(!covers(None, "read"));
        assert!(!covers(Some("none"), "read"));
    }
}
