//! The router: which runs an event asks for under the `[[triggers]]` rules.
//!
//! Pure and synchronous: it reads the event and the rules, nothing else.
//! Trust is decided afterwards ([`super::trust`]) for every dispatch it
//! returns; the router already drops what never triggers (bots, edited or
//! deleted comments, forks posing as `kiln/*` branches).

use crate::config::Role;
use crate::forge::RepoRef;
use crate::policy::sanitize;
use crate::store::TriggerKind;

use super::config::TriggerRule;
use super::event::{Actor, Comment, PullRequest, Repository, WebhookEvent};

/// Branch prefix of everything Kiln pushes.
pub const KILN_BRANCH_PREFIX: &str = "kiln/";
/// Head-branch prefix of a spec pull request for issue N: `kiln/spec-issue-N`.
pub const SPEC_BRANCH_PREFIX: &str = "kiln/spec-issue-";

/// A run the event asks for, before the trust check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Repository.
    pub repo: RepoRef,
    /// Role to run.
    pub role: Role,
    /// Issue or pull request to run on.
    pub number: u64,
    /// What triggered it.
    pub kind: TriggerKind,
    /// The actor whose trust decides.
    pub actor: Actor,
    /// Sanitized instructions (only from a comment's own text).
    pub instructions: Option<String>,
    /// The pull request's head is a `kiln/*` branch of the repository itself.
    pub kiln_branch: bool,
}

/// What the router made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Runs to check and queue.
    Dispatch(Vec<Dispatch>),
    /// Nothing to do, and why.
    Ignore(String),
}

fn repo_of(r: &Repository) -> Result<RepoRef, Route> {
    r.repo()
        .map_err(|e| Route::Ignore(format!("payload repository: {e}")))
}

/// Which runs `event` asks for under `rules`.
pub fn route(
    rules: &[TriggerRule],
    kiln_logins: &[String],
    custom_roles: &[Role],
    event: &WebhookEvent,
) -> Route {
    match route_inner(rules, kiln_logins, custom_roles, event) {
        Ok(dispatches) if dispatches.is_empty() => Route::Ignore(no_rule_reason(event)),
        Ok(mut dispatches) => {
            // Two rules asking for the same run queue it once.
            let mut seen = Vec::new();
            dispatches.retain(|d| {
                let key = (d.role, d.number);
                let new = !seen.contains(&key);
                seen.push(key);
                new
            });
            Route::Dispatch(dispatches)
        }
        Err(ignore) => ignore,
    }
}

fn route_inner(
    rules: &[TriggerRule],
    kiln_logins: &[String],
    custom_roles: &[Role],
    event: &WebhookEvent,
) -> Result<Vec<Dispatch>, Route> {
    let ignore = |why: String| Err(Route::Ignore(why));
    let mut out = Vec::new();
    match event {
        WebhookEvent::Issues(e) => {
            if e.sender.is_bot() {
                return ignore(format!("bot {} triggers nothing", e.sender.login));
            }
            let repo = repo_of(&e.repository)?;
            for rule in rules {
                let role = match (rule, e.action.as_str(), &e.label) {
                    (TriggerRule::IssueOpened { role }, "opened", _) => {
                        Some((*role, TriggerKind::IssueOpened))
                    }
                    (TriggerRule::Label { label, role }, "labeled", Some(l))
                        if &l.name == label =>
                    {
                        Some((
                            *role,
                            TriggerKind::Label {
                                label: label.clone(),
                            },
                        ))
                    }
                    _ => None,
                };
                if let Some((role, kind)) = role {
                    out.push(Dispatch {
                        repo: repo.clone(),
                        role,
                        number: e.issue.number,
                        kind,
                        actor: e.sender.clone(),
                        instructions: None,
                        kiln_branch: false,
                    });
                }
            }
        }
        WebhookEvent::PullRequest(e) => {
            let repo = repo_of(&e.repository)?;
            let pr = &e.pull_request;
            let own_branch = is_own_branch(pr, &e.repository);
            let kiln_bot = kiln_logins.iter().any(|l| l == &e.sender.login);
            if e.sender.is_bot() && !kiln_bot {
                return ignore(format!("bot {} triggers nothing", e.sender.login));
            }
            for rule in rules {
                match (rule, e.action.as_str()) {
                    (TriggerRule::SpecApproved { label, role }, "labeled")
                        if e.label.as_ref().is_some_and(|l| &l.name == label) =>
                    {
                        let Some(issue) = spec_issue(&pr.head.name) else {
                            continue;
                        };
                        if !own_branch {
                            return ignore(format!(
                                "{label} on pull request #{} from a fork's {} triggers nothing",
                                pr.number, pr.head.name
                            ));
                        }
                        if kiln_bot {
                            return ignore(format!(
                                "{label} set by Kiln itself triggers nothing: it is a human's approval"
                            ));
                        }
                        out.push(Dispatch {
                            repo: repo.clone(),
                            role: *role,
                            number: issue,
                            kind: TriggerKind::PlanApproved {
                                pull_request: pr.number,
                            },
                            actor: e.sender.clone(),
                            instructions: None,
                            kiln_branch: true,
                        });
                    }
                    (
                        TriggerRule::KilnPullRequest {
                            role,
                            include_specs,
                        },
                        "opened" | "reopened",
                    ) if pr.head.name.starts_with(KILN_BRANCH_PREFIX) => {
                        if !own_branch {
                            return ignore(format!(
                                "pull request #{} comes from a fork's {}, not from Kiln",
                                pr.number, pr.head.name
                            ));
                        }
                        if pr.head.name.starts_with("kiln/spec-") && !include_specs {
                            continue;
                        }
                        out.push(Dispatch {
                            repo: repo.clone(),
                            role: *role,
                            number: pr.number,
                            kind: TriggerKind::PullRequestOpened,
                            actor: e.sender.clone(),
                            instructions: None,
                            kiln_branch: true,
                        });
                    }
                    _ => {}
                }
            }
        }
        WebhookEvent::IssueComment(e) => {
            let on_pr = e.issue.is_pull_request();
            out.extend(comment_dispatch(
                CommentRules {
                    rules,
                    custom_roles,
                },
                &e.action,
                &e.comment,
                &e.sender,
                &e.repository,
                e.issue.number,
                on_pr,
            )?);
        }
        WebhookEvent::PullRequestReviewComment(e) => {
            out.extend(comment_dispatch(
                CommentRules {
                    rules,
                    custom_roles,
                },
                &e.action,
                &e.comment,
                &e.sender,
                &e.repository,
                e.pull_request.number,
                true,
            )?);
        }
        WebhookEvent::Ping(_) => return ignore("ping".into()),
        WebhookEvent::PullRequestReview(e) => {
            return ignore(format!("pull_request_review.{} triggers nothing", e.action));
        }
        WebhookEvent::Push(e) => {
            return ignore(format!("push to {} triggers nothing", e.git_ref));
        }
        WebhookEvent::Installation(e) => {
            return ignore(format!("installation.{} triggers nothing", e.action));
        }
        WebhookEvent::InstallationRepositories(e) => {
            return ignore(format!(
                "installation_repositories.{} triggers nothing",
                e.action
            ));
        }
    }
    Ok(out)
}

fn no_rule_reason(event: &WebhookEvent) -> String {
    match event {
        WebhookEvent::Issues(e) => match &e.label {
            Some(l) if e.action == "labeled" => {
                format!("label {:?} on an issue triggers nothing", l.name)
            }
            _ => format!("issues.{} triggers nothing", e.action),
        },
        WebhookEvent::PullRequest(e) => match &e.label {
            Some(l) if e.action == "labeled" => format!(
                "label {:?} on pull request #{} (head {}) triggers nothing",
                l.name, e.pull_request.number, e.pull_request.head.name
            ),
            _ => format!(
                "pull_request.{} on #{} (head {}) triggers nothing",
                e.action, e.pull_request.number, e.pull_request.head.name
            ),
        },
        WebhookEvent::IssueComment(_) | WebhookEvent::PullRequestReviewComment(_) => {
            "the comment has no /kiln command or @kiln mention".into()
        }
        _ => "no trigger rule matches".into(),
    }
}

/// The pull request's head is a branch of the repository itself (a fork
/// can name its branch anything; only writers can push here).
fn is_own_branch(pr: &PullRequest, repo: &Repository) -> bool {
    pr.head
        .repo
        .as_ref()
        .is_some_and(|h| h.full_name.eq_ignore_ascii_case(&repo.full_name))
}

/// N from `kiln/spec-issue-N`.
fn spec_issue(head: &str) -> Option<u64> {
    let n = head.strip_prefix(SPEC_BRANCH_PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok().filter(|n| *n > 0)
}

/// What decides which role a comment runs: the `comment` trigger rule and
/// the custom roles `/kiln <role>` may name.
#[derive(Clone, Copy)]
struct CommentRules<'a> {
    rules: &'a [TriggerRule],
    custom_roles: &'a [Role],
}

fn comment_dispatch(
    CommentRules {
        rules,
        custom_roles,
    }: CommentRules<'_>,
    action: &str,
    comment: &Comment,
    sender: &Actor,
    repository: &Repository,
    number: u64,
    on_pr: bool,
) -> Result<Option<Dispatch>, Route> {
    let Some((issue_role, pr_role)) = rules.iter().find_map(|r| match r {
        TriggerRule::Comment {
            issue_role,
            pull_request_role,
        } => Some((*issue_role, *pull_request_role)),
        _ => None,
    }) else {
        return Ok(None);
    };
    if action != "created" {
        return Err(Route::Ignore(format!(
            "{action} comments trigger nothing (only new ones do)"
        )));
    }
    if sender.is_bot() || comment.user.is_bot() {
        return Err(Route::Ignore(format!(
            "bot {} triggers nothing",
            comment.user.login
        )));
    }
    if comment.user.login != sender.login {
        return Err(Route::Ignore(format!(
            "comment by {} delivered as sent by {}: ignored",
            comment.user.login, sender.login
        )));
    }
    // Commands hidden in HTML comments or behind invisible characters must
    // not trigger: parse the text a human sees.
    let text = sanitize(comment.body.as_deref().unwrap_or_default()).text;
    let Some(asked) = command(&text, custom_roles) else {
        return Ok(None);
    };
    let role = match asked {
        Asked::Role(role) => role,
        Asked::Default => {
            if on_pr {
                pr_role
            } else {
                issue_role
            }
        }
        Asked::UnknownRole(word) => {
            return Err(Route::Ignore(format!(
                "/kiln {word:?}: not a role (triage, spec, implementation, review, or one configured with [[roles]])"
            )));
        }
    };
    if role == Role::Review && !on_pr {
        return Err(Route::Ignore(format!(
            "review was asked for on issue #{number}, which is not a pull request"
        )));
    }
    Ok(Some(Dispatch {
        repo: repo_of(repository)?,
        role,
        number,
        kind: TriggerKind::Comment {
            comment_id: comment.id,
        },
        actor: comment.user.clone(),
        instructions: Some(text),
        kiln_branch: false,
    }))
}

/// What a comment asks Kiln for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Role(Role),
    Default,
    UnknownRole(String),
}

/// A built-in role by name (any case), or a configured custom role's.
fn role_named(word: &str, custom_roles: &[Role]) -> Option<Role> {
    Role::ALL
        .into_iter()
        .chain(custom_roles.iter().copied())
        .find(|r| r.as_str().eq_ignore_ascii_case(word))
}

/// `/kiln <role>` at the start of a line, or `@kiln [role]` as a word.
fn command(text: &str, custom_roles: &[Role]) -> Option<Asked> {
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(rest) = line.strip_prefix("/kiln") {
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                continue;
            }
            return Some(match rest.split_whitespace().next() {
                Some(word) => role_named(word, custom_roles)
                    .map(Asked::Role)
                    .unwrap_or_else(|| Asked::UnknownRole(word.chars().take(40).collect())),
                None => Asked::Default,
            });
        }
    }
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let mention = word.trim_end_matches([',', ':', '.', '!', '?']);
        if mention.eq_ignore_ascii_case("@kiln") {
            return Some(
                words
                    .peek()
                    .and_then(|w| role_named(w.trim_end_matches([',', ':', '.']), custom_roles))
                    .map(Asked::Role)
                    .unwrap_or(Asked::Default),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_mentions_are_found_only_as_written() {
        assert_eq!(command("/kiln spec", &[]), Some(Asked::Role(Role::Spec)));
        assert_eq!(
            command("please\n  /kiln implementation now", &[]),
            Some(Asked::Role(Role::Implementation))
        );
        assert_eq!(command("/kiln", &[]), Some(Asked::Default));
        // A custom role is a role only where [[roles]] configures it.
        let changelog = Role::Custom(crate::config::RoleName::new("changelog").expect("name"));
        assert_eq!(
            command("/kiln changelog", &[changelog]),
            Some(Asked::Role(changelog))
        );
        assert_eq!(
            command("/kiln changelog", &[]),
            Some(Asked::UnknownRole("changelog".into()))
        );
        assert_eq!(
            command("@kiln changelog please", &[changelog]),
            Some(Asked::Role(changelog))
        );
        assert_eq!(
            command("/kiln boss", &[]),
            Some(Asked::UnknownRole("boss".into()))
        );
        assert_eq!(
            command("/kilnx spec", &[]),
            None,
            "a longer word is not the command"
        );
        assert_eq!(
            command("see /kiln spec", &[]),
            None,
            "the command must start a line"
        );
        assert_eq!(
            command("hey @kiln, fix the tests", &[]),
            Some(Asked::Default)
        );
        assert_eq!(
            command("@kiln review: look again", &[]),
            Some(Asked::Role(Role::Review))
        );
        assert_eq!(command("mail bob@kiln.dev", &[]), None);
        assert_eq!(command("@kilnbot do it", &[]), None);
        assert_eq!(command("nothing here", &[]), None);
    }

    #[test]
    fn spec_branches_name_their_issue() {
        assert_eq!(spec_issue("kiln/spec-issue-12"), Some(12));
        for bad in [
            "kiln/spec-issue-",
            "kiln/spec-issue-0",
            "kiln/spec-issue-1a",
            "kiln/spec-issue-+1",
            "spec-issue-3",
            "kiln/spec-issue-99999999999999999999999",
        ] {
            assert_eq!(spec_issue(bad), None, "{bad}");
        }
    }
}
