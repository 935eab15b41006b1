//! `[intake]` and `[[triggers]]` in `kiln.toml`: webhook limits and the
//! rules that turn forge events into runs. Without `[[triggers]]` the
//! embedded defaults apply ([`default_rules`]):
//!
//! ```toml
//! [intake]
//! webhook_secret = "github-webhook"   # the name of a host-only [[secrets]] entry
//! body_limit_bytes = 4194304          # larger bodies get 413
//! max_runs_per_target = 5             # runs per (issue or PR, role), re-runs included
//! queue_capacity = 1024               # accepted deliveries waiting to be processed
//! kiln_logins = ["kiln[bot]"]         # the logins Kiln itself acts as
//!
//! [[triggers]]
//! on = "issue-opened"                 # an issue is opened
//! role = "triage"
//! anyone = true                       # default: a stranger's issue is triaged (untrusted run)
//!
//! [[triggers]]
//! on = "reporter-reply"               # the issue's author comments on an issue with `label`
//! label = "needs-info"
//! role = "triage"
//!
//! [[triggers]]
//! on = "label"                        # a label added to an issue
//! label = "ready-to-spec"
//! role = "spec"
//!
//! [[triggers]]
//! on = "spec-approved"                # a label added to a spec PR (head kiln/spec-issue-N)
//! label = "plan-approved"             # runs `role` for issue N
//! role = "implementation"
//!
//! [[triggers]]
//! on = "kiln-pull-request"            # a PR from a kiln/* branch of the repository opened,
//! role = "review"                     # reopened or given new commits
//!
//! [[triggers]]
//! on = "kiln-review"                  # Kiln submitted its review of its own PR
//! role = "verification"
//!
//! [[triggers]]
//! on = "changes-requested"            # a writer requested changes on Kiln's PR: answer
//! role = "implementation"             # the review on that PR's branch
//!
//! [[triggers]]
//! on = "comment"                      # `/kiln <command>` as the first line, or `@kiln [role] …`
//! issue_role = "spec"                 # the role for `@kiln …` without a role, on an issue
//! pull_request_role = "implementation" # … and on a pull request
//! ```
//!
//! `triggers = []` turns every rule off (runs are then only queued by hand).
//! The defaults are [`default_rules`].
//!
//! Every rule but `issue-opened` (with `anyone`) and `reporter-reply` needs
//! the triggering actor to have write, maintain or admin permission (looked
//! up on the forge, failing closed); bots and edited comments trigger
//! nothing, Kiln's own events only where a rule names them.

use serde::Deserialize;

use crate::config::{KilnConfig, Role};

/// Both intake sections; flattened into [`KilnConfig`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IntakeConfig {
    /// `[intake]`.
    #[serde(default)]
    pub intake: IntakeSettings,
    /// `[[triggers]]`; `None` means the embedded defaults.
    #[serde(default)]
    pub triggers: Option<Vec<TriggerRule>>,
    /// The custom roles configured with `[[roles]]` (set from the whole
    /// config after parsing), which `/kiln <role>` may name.
    #[serde(skip)]
    pub custom_roles: Vec<Role>,
}

impl IntakeConfig {
    /// Every role the configured `[[triggers]]` name, with where: the
    /// config checks each is built in or configured.
    pub fn roles(&self) -> Vec<(String, Role)> {
        let mut out = Vec::new();
        for (i, rule) in self.triggers.iter().flatten().enumerate() {
            let place = format!("[[triggers]] #{}", i + 1);
            match rule {
                TriggerRule::IssueOpened { role, .. }
                | TriggerRule::ReporterReply { role, .. }
                | TriggerRule::Label { role, .. }
                | TriggerRule::SpecApproved { role, .. }
                | TriggerRule::KilnPullRequest { role, .. }
                | TriggerRule::KilnReview { role }
                | TriggerRule::ChangesRequested { role } => out.push((place, *role)),
                TriggerRule::Comment {
                    issue_role,
                    pull_request_role,
                } => {
                    out.push((place.clone(), *issue_role));
                    out.push((place, *pull_request_role));
                }
            }
        }
        out
    }

    /// The rules in force: the configured ones, or the defaults.
    pub fn rules(&self) -> Vec<TriggerRule> {
        self.triggers.clone().unwrap_or_else(default_rules)
    }
}

/// `[intake]`. Defaults: no secret configured (the intake refuses to start
/// without one), 4 MiB body limit, 5 runs per target and role, a queue of
/// 1024 deliveries, Kiln acting as `kiln[bot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, try_from = "RawSettings")]
pub struct IntakeSettings {
    /// Name of the `[[secrets]]` entry holding the webhook secret.
    pub webhook_secret: Option<String>,
    /// Largest accepted webhook body, in bytes.
    pub body_limit_bytes: usize,
    /// Most runs of one role per issue or pull request.
    pub max_runs_per_target: u32,
    /// Accepted deliveries waiting to be processed; when full, new ones get 503.
    pub queue_capacity: usize,
    /// Logins Kiln itself acts as (its pull requests on `kiln/*` branches
    /// trigger without a permission lookup; no other bot triggers anything).
    pub kiln_logins: Vec<String>,
    /// Most runs one actor may trigger on one repository per hour (0: no
    /// limit); past it the event is recorded, refused, and answered once.
    pub runs_per_actor_per_hour: u32,
    /// Actors with write access (maintainers) are not held to
    /// `runs_per_actor_per_hour`.
    pub exempt_maintainers: bool,
}

impl Default for IntakeSettings {
    fn default() -> Self {
        IntakeSettings {
            webhook_secret: None,
            body_limit_bytes: 4 * 1024 * 1024,
            max_runs_per_target: 5,
            queue_capacity: 1024,
            kiln_logins: vec![crate::forge::local::KILN_LOGIN.to_string()],
            runs_per_actor_per_hour: 10,
            exempt_maintainers: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    webhook_secret: Option<String>,
    body_limit_bytes: Option<usize>,
    max_runs_per_target: Option<u32>,
    queue_capacity: Option<usize>,
    kiln_logins: Option<Vec<String>>,
    runs_per_actor_per_hour: Option<u32>,
    exempt_maintainers: Option<bool>,
}

impl TryFrom<RawSettings> for IntakeSettings {
    type Error = String;

    fn try_from(raw: RawSettings) -> Result<Self, String> {
        let d = IntakeSettings::default();
        let s = IntakeSettings {
            webhook_secret: raw.webhook_secret,
            body_limit_bytes: raw.body_limit_bytes.unwrap_or(d.body_limit_bytes),
            max_runs_per_target: raw.max_runs_per_target.unwrap_or(d.max_runs_per_target),
            queue_capacity: raw.queue_capacity.unwrap_or(d.queue_capacity),
            kiln_logins: raw.kiln_logins.unwrap_or(d.kiln_logins),
            runs_per_actor_per_hour: raw
                .runs_per_actor_per_hour
                .unwrap_or(d.runs_per_actor_per_hour),
            exempt_maintainers: raw.exempt_maintainers.unwrap_or(d.exempt_maintainers),
        };
        if !(1024..=64 * 1024 * 1024).contains(&s.body_limit_bytes) {
            return Err(format!(
                "[intake] body_limit_bytes = {} is out of range (1 KiB to 64 MiB)",
                s.body_limit_bytes
            ));
        }
        if s.max_runs_per_target == 0 {
            return Err("[intake] max_runs_per_target must be at least 1".into());
        }
        if !(1..=1_000_000).contains(&s.queue_capacity) {
            return Err(format!(
                "[intake] queue_capacity = {} is out of range (1 to 1000000)",
                s.queue_capacity
            ));
        }
        if s.webhook_secret.as_deref().is_some_and(str::is_empty) {
            return Err("[intake] webhook_secret must name a [[secrets]] entry".into());
        }
        Ok(s)
    }
}

/// One `[[triggers]]` rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "on", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TriggerRule {
    /// An issue is opened: run `role` on it. With `anyone` (the default)
    /// an issue from anyone triggers, and the run knows its author's trust;
    /// with `anyone = false` only collaborators with write permission.
    IssueOpened {
        /// The role to run.
        role: Role,
        /// Anyone's issue triggers, not only a writer's.
        #[serde(default = "yes")]
        anyone: bool,
    },
    /// The issue's author comments on an issue labelled `label` (Kiln asked
    /// them for more information): run `role` again. The author may be
    /// anyone; the comment is evidence for the run, never instructions.
    ReporterReply {
        /// The label (`needs-info`).
        label: String,
        /// The role to run.
        role: Role,
    },
    /// `label` is added to an issue: run `role` on it.
    Label {
        /// The label.
        label: String,
        /// The role to run.
        role: Role,
    },
    /// `label` is added to a spec pull request (head `kiln/spec-issue-N` in
    /// the repository itself): run `role` for issue N.
    SpecApproved {
        /// The label (`plan-approved`).
        label: String,
        /// The role to run.
        role: Role,
    },
    /// A pull request from a `kiln/*` branch of the repository itself is
    /// opened, reopened or gets new commits: run `role` on it. Spec pull requests
    /// (`kiln/spec-*`) are left to humans unless `include_specs`.
    KilnPullRequest {
        /// The role to run.
        role: Role,
        /// Also for `kiln/spec-*` heads.
        #[serde(default)]
        include_specs: bool,
    },
    /// Kiln submitted its own review of a pull request from a `kiln/*`
    /// branch of the repository: run `role` on it (verification follows
    /// review).
    KilnReview {
        /// The role to run.
        role: Role,
    },
    /// A writer requested changes in a review of a pull request from a
    /// `kiln/*` branch of the repository: run `role` on that pull request's
    /// branch to answer the review.
    ChangesRequested {
        /// The role to run.
        role: Role,
    },
    /// A new comment with `/kiln <role> …` on a line of its own, or
    /// `@kiln [role] …`: run that role (or the default for the target)
    /// with the comment as instructions.
    Comment {
        /// Role for `@kiln …` without a role, on an issue.
        #[serde(default = "default_issue_role")]
        issue_role: Role,
        /// Role for `@kiln …` without a role, on a pull request.
        #[serde(default = "default_pull_request_role")]
        pull_request_role: Role,
    },
}

fn yes() -> bool {
    true
}

fn default_issue_role() -> Role {
    Role::Spec
}

fn default_pull_request_role() -> Role {
    Role::Implementation
}

/// The rules used when `kiln.toml` has no `[[triggers]]`.
pub fn default_rules() -> Vec<TriggerRule> {
    vec![
        TriggerRule::IssueOpened {
            role: Role::Triage,
            anyone: true,
        },
        TriggerRule::ReporterReply {
            label: "needs-info".into(),
            role: Role::Triage,
        },
        TriggerRule::Label {
            label: "ready-to-spec".into(),
            role: Role::Spec,
        },
        TriggerRule::Label {
            label: "plan-approved".into(),
            role: Role::Implementation,
        },
        TriggerRule::Label {
            label: "ready-to-implement".into(),
            role: Role::Implementation,
        },
        TriggerRule::SpecApproved {
            label: "plan-approved".into(),
            role: Role::Implementation,
        },
        TriggerRule::KilnPullRequest {
            role: Role::Review,
            include_specs: false,
        },
        TriggerRule::KilnReview {
            role: Role::Verification,
        },
        TriggerRule::ChangesRequested {
            role: Role::Implementation,
        },
        TriggerRule::Comment {
            issue_role: default_issue_role(),
            pull_request_role: default_pull_request_role(),
        },
    ]
}

/// Why the webhook secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSecretError {
    /// `[intake] webhook_secret` is not set.
    #[error("[intake] webhook_secret is not set: the webhook endpoint needs a secret")]
    NotConfigured,
    /// It names no `[[secrets]]` entry.
    #[error("[intake] webhook_secret names `{0}`, which is not a [[secrets]] entry")]
    Unknown(String),
    /// The entry is scoped into sandboxes.
    #[error("secret `{0}` is the webhook secret and must be host-only: remove its `scope`")]
    Scoped(String),
    /// The value could not be read, or is empty.
    #[error("webhook secret: {0}")]
    Read(String),
}

/// The webhook secret's value, from the `[[secrets]]` entry `[intake]` names.
pub fn read_webhook_secret(config: &KilnConfig) -> Result<String, WebhookSecretError> {
    let name = config
        .intake
        .intake
        .webhook_secret
        .as_deref()
        .ok_or(WebhookSecretError::NotConfigured)?;
    let secret = config
        .secrets
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| WebhookSecretError::Unknown(name.to_string()))?;
    if secret.scope.is_some() {
        return Err(WebhookSecretError::Scoped(name.to_string()));
    }
    let value = secret
        .read_value()
        .map_err(|e| WebhookSecretError::Read(e.to_string()))?;
    if value.is_empty() {
        return Err(WebhookSecretError::Read(format!(
            "secret `{name}` is empty"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_without_triggers() {
        let c = KilnConfig::from_toml("").expect("empty config");
        assert_eq!(c.intake.rules(), default_rules());
        assert_eq!(c.intake.intake.max_runs_per_target, 5);
    }

    #[test]
    fn triggers_and_settings_parse() {
        let c = KilnConfig::from_toml(
            r#"
            [intake]
            webhook_secret = "hook"
            max_runs_per_target = 2
            [[triggers]]
            on = "label"
            label = "go"
            role = "implementation"
            [[triggers]]
            on = "comment"
            "#,
        )
        .expect("config");
        assert_eq!(c.intake.intake.max_runs_per_target, 2);
        assert_eq!(c.intake.intake.body_limit_bytes, 4 * 1024 * 1024);
        assert_eq!(
            c.intake.rules(),
            vec![
                TriggerRule::Label {
                    label: "go".into(),
                    role: Role::Implementation
                },
                TriggerRule::Comment {
                    issue_role: Role::Spec,
                    pull_request_role: Role::Implementation
                }
            ]
        );
    }

    #[test]
    fn bad_intake_config_is_refused_with_the_key_named() {
        for (toml, want) in [
            ("[intake]\nbody_limit_bytes = 10\n", "body_limit_bytes"),
            ("[intake]\nmax_runs_per_target = 0\n", "max_runs_per_target"),
            ("[intake]\nqueue_capacity = 0\n", "queue_capacity"),
            ("[intake]\nsecret = \"x\"\n", "secret"),
            ("[[triggers]]\non = \"label\"\nrole = \"spec\"\n", "label"),
            (
                "[[triggers]]\non = \"sometimes\"\nrole = \"spec\"\n",
                "sometimes",
            ),
            (
                "[[triggers]]\non = \"issue-opened\"\nrole = \"spec\"\nlabel = \"x\"\n",
                "label",
            ),
            (
                "[[triggers]]\non = \"issue-opened\"\nrole = \"boss\"\n",
                "boss",
            ),
        ] {
            let err = KilnConfig::from_toml(toml).expect_err(toml).to_string();
            assert!(
                err.contains(want),
                "{toml:?}: error should name {want}: {err}"
            );
        }
    }

    #[test]
    fn webhook_secret_must_exist_and_be_host_only() {
        let c = KilnConfig::from_toml(
            "[intake]\nwebhook_secret = \"hook\"\n[[secrets]]\nname = \"hook\"\nsource = { file = \"/nonexistent/kiln-hook\" }\n",
        )
        .expect("config");
        assert!(matches!(
            read_webhook_secret(&c),
            Err(WebhookSecretError::Read(_))
        ));
        let c = KilnConfig::from_toml("[intake]\nwebhook_secret = \"nope\"\n").expect("config");
        assert!(matches!(
            read_webhook_secret(&c),
            Err(WebhookSecretError::Unknown(_))
        ));
        let c = KilnConfig::from_toml("").expect("config");
        assert!(matches!(
            read_webhook_secret(&c),
            Err(WebhookSecretError::NotConfigured)
        ));
        let c = KilnConfig::from_toml(
            "[intake]\nwebhook_secret = \"hook\"\n[[secrets]]\nname = \"hook\"\nsource = { env = \"KILN_TEST_HOOK\" }\nscope = { roles = [\"spec\"], phase = \"setup\" }\n",
        )
        .expect("config");
        assert!(matches!(
            read_webhook_secret(&c),
            Err(WebhookSecretError::Scoped(_))
        ));
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("hook");
        std::fs::write(&file, "s3cret\n").expect("write");
        let c = KilnConfig::from_toml(&format!(
            "[intake]\nwebhook_secret = \"hook\"\n[[secrets]]\nname = \"hook\"\nsource = {{ file = {:?} }}\n",
            file.display().to_string()
        ))
        .expect("config");
        assert_eq!(read_webhook_secret(&c).ok().as_deref(), Some("s3cret"));
    }
}
