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
    /// Anyone may trigger it (an issue opened, a reporter's answer): an
    /// actor below write permission gets an untrusted run, not a refusal.
    pub anyone: bool,
}

/// A `/kiln <command>` comment, for the processor to check and carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    /// Repository.
    pub repo: RepoRef,
    /// The issue or pull request commented on.
    pub number: u64,
    /// It is a pull request.
    pub on_pull_request: bool,
    /// The payload says it is closed.
    pub closed: bool,
    /// Who wrote the command.
    pub actor: Actor,
    /// The command comment's forge id.
    pub comment_id: u64,
    /// What was asked.
    pub command: Command,
}

/// What a `/kiln` command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run this role on the target, with the comment as instructions.
    Run(Role, String),
    /// Answer the review on this Kiln pull request; the note.
    Fix(String),
    /// Run the target's last run again.
    Retry,
    /// Cancel the target's active runs.
    Cancel,
    /// List the commands.
    Help,
    /// A word that is no command.
    Unknown,
    /// The command line or note is longer than [`MAX_COMMAND_BYTES`].
    TooLong(usize),
}

/// The longest command comment carried out (a note for `fix`, instructions
/// for a role): a longer one gets a reply and no run.
pub const MAX_COMMAND_BYTES: usize = 8 * 1024;

/// The commands `/kiln help` lists, with what each does.
pub const COMMANDS: [(&str, &str); 9] = [
    ("triage", "triage this issue again"),
    ("spec", "write a spec for this issue"),
    ("implement", "implement this issue"),
    ("review", "review this pull request"),
    ("verify", "run this pull request's checks"),
    (
        "fix [note]",
        "answer the review on this Kiln pull request, on its own branch",
    ),
    (
        "retry",
        "run the last run of this issue or pull request again",
    ),
    (
        "cancel",
        "cancel the active runs of this issue or pull request",
    ),
    ("help", "list these commands"),
];

/// What the router made of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Runs to check and queue.
    Dispatch(Vec<Dispatch>),
    /// A `/kiln` command to check and carry out.
    Command(Box<CommandRequest>),
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
        Err(other) => other,
    }
}

fn route_inner(
    rules: &[TriggerRule],
    kiln_logins: &[String],
    custom_roles: &[Role],
    event: &WebhookEvent,
) -> Result<Vec<Dispatch>, Route> {
    let ignore = |why: String| Err(Route::Ignore(why));
    let is_kiln = |login: &str| kiln_logins.iter().any(|l| l == login);
    let mut out = Vec::new();
    match event {
        WebhookEvent::Issues(e) => {
            if e.sender.is_bot() {
                return ignore(format!("bot {} triggers nothing", e.sender.login));
            }
            let repo = repo_of(&e.repository)?;
            for rule in rules {
                let role = match (rule, e.action.as_str(), &e.label) {
                    (TriggerRule::IssueOpened { role, anyone }, "opened", _) => {
                        Some((*role, TriggerKind::IssueOpened, *anyone))
                    }
                    (TriggerRule::Label { label, role }, "labeled", Some(l))
                        if &l.name == label =>
                    {
                        Some((
                            *role,
                            TriggerKind::Label {
                                label: label.clone(),
                            },
                            false,
                        ))
                    }
                    _ => None,
                };
                if let Some((role, kind, anyone)) = role {
                    out.push(Dispatch {
                        repo: repo.clone(),
                        role,
                        number: e.issue.number,
                        kind,
                        actor: e.sender.clone(),
                        instructions: None,
                        kiln_branch: false,
                        anyone,
                    });
                }
            }
        }
        WebhookEvent::PullRequest(e) => {
            let repo = repo_of(&e.repository)?;
            let pr = &e.pull_request;
            let own_branch = is_own_branch(pr, &e.repository);
            let kiln_bot = is_kiln(&e.sender.login);
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
                            anyone: false,
                        });
                    }
                    (
                        TriggerRule::KilnPullRequest {
                            role,
                            include_specs,
                        },
                        action @ ("opened" | "reopened" | "synchronize"),
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
                            kind: if action == "synchronize" {
                                TriggerKind::PullRequestSynchronized
                            } else {
                                TriggerKind::PullRequestOpened
                            },
                            actor: e.sender.clone(),
                            instructions: None,
                            kiln_branch: true,
                            anyone: false,
                        });
                    }
                    _ => {}
                }
            }
        }
        WebhookEvent::PullRequestReview(e) => {
            if e.action != "submitted" {
                return ignore(format!("pull_request_review.{} triggers nothing", e.action));
            }
            let repo = repo_of(&e.repository)?;
            let pr = &e.pull_request;
            let kiln_pr = pr.head.name.starts_with(KILN_BRANCH_PREFIX)
                && !pr.head.name.starts_with("kiln/spec-");
            if !kiln_pr {
                return ignore(format!(
                    "a review of pull request #{} (head {}) triggers nothing: it is not Kiln's",
                    pr.number, pr.head.name
                ));
            }
            if !is_own_branch(pr, &e.repository) {
                return ignore(format!(
                    "pull request #{} comes from a fork's {}, not from Kiln",
                    pr.number, pr.head.name
                ));
            }
            let kiln_review = is_kiln(&e.review.user.login) && is_kiln(&e.sender.login);
            if !kiln_review && (e.sender.is_bot() || e.review.user.is_bot()) {
                return ignore(format!("bot {} triggers nothing", e.sender.login));
            }
            for rule in rules {
                let (role, kind) = match rule {
                    TriggerRule::KilnReview { role } if kiln_review => (
                        *role,
                        TriggerKind::Reviewed {
                            review_id: e.review.id,
                        },
                    ),
                    TriggerRule::ChangesRequested { role }
                        if !kiln_review && e.review.requests_changes() =>
                    {
                        (
                            *role,
                            TriggerKind::ChangesRequested {
                                review_id: e.review.id,
                            },
                        )
                    }
                    _ => continue,
                };
                out.push(Dispatch {
                    repo: repo.clone(),
                    role,
                    number: pr.number,
                    kind,
                    actor: if kiln_review {
                        e.sender.clone()
                    } else {
                        e.review.user.clone()
                    },
                    instructions: None,
                    kiln_branch: true,
                    anyone: false,
                });
            }
        }
        WebhookEvent::IssueComment(e) => {
            let on_pr = e.issue.is_pull_request();
            let rules_ = CommentRules {
                rules,
                custom_roles,
            };
            let target = Target {
                repository: &e.repository,
                number: e.issue.number,
                on_pr,
                closed: e.issue.is_closed(),
            };
            if let Some(d) = comment_dispatch(rules_, &e.action, &e.comment, &e.sender, target)? {
                out.push(d);
            } else if !on_pr {
                out.extend(reporter_reply(rules, e)?);
            }
        }
        WebhookEvent::PullRequestReviewComment(e) => {
            let target = Target {
                repository: &e.repository,
                number: e.pull_request.number,
                on_pr: true,
                closed: false,
            };
            out.extend(comment_dispatch(
                CommentRules {
                    rules,
                    custom_roles,
                },
                &e.action,
                &e.comment,
                &e.sender,
                target,
            )?);
        }
        WebhookEvent::Ping(_) => return ignore("ping".into()),
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

/// The reporter answering on an issue Kiln asked for more information.
fn reporter_reply(
    rules: &[TriggerRule],
    e: &super::event::IssueCommentEvent,
) -> Result<Vec<Dispatch>, Route> {
    let mut out = Vec::new();
    for rule in rules {
        let TriggerRule::ReporterReply { label, role } = rule else {
            continue;
        };
        if e.action != "created"
            || !e.issue.has_label(label)
            || e.issue.is_closed()
            || e.comment.user.is_bot()
            || e.comment.user.login != e.issue.user.login
            || e.sender.login != e.comment.user.login
        {
            continue;
        }
        out.push(Dispatch {
            repo: repo_of(&e.repository)?,
            role: *role,
            number: e.issue.number,
            kind: TriggerKind::ReporterReplied {
                comment_id: e.comment.id,
            },
            actor: e.comment.user.clone(),
            instructions: None,
            kiln_branch: false,
            anyone: true,
        });
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

/// The issue or pull request a comment is on.
#[derive(Clone, Copy)]
struct Target<'a> {
    repository: &'a Repository,
    number: u64,
    on_pr: bool,
    closed: bool,
}

/// A comment's run: a `/kiln` command on its first line (returned as
/// `Err(Route::Command)`, for the processor), or an `@kiln [role]` mention.
fn comment_dispatch(
    CommentRules {
        rules,
        custom_roles,
    }: CommentRules<'_>,
    action: &str,
    comment: &Comment,
    sender: &Actor,
    target: Target<'_>,
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
    if let Some(command) = slash_command(&text, custom_roles) {
        return Err(Route::Command(Box::new(CommandRequest {
            repo: repo_of(target.repository)?,
            number: target.number,
            on_pull_request: target.on_pr,
            closed: target.closed,
            actor: comment.user.clone(),
            comment_id: comment.id,
            command,
        })));
    }
    let Some(asked) = mention(&text, custom_roles) else {
        return Ok(None);
    };
    let role = asked.unwrap_or(if target.on_pr { pr_role } else { issue_role });
    if role.reads_pull_request() && !target.on_pr {
        return Err(Route::Ignore(format!(
            "{role} was asked for on issue #{}, which is not a pull request",
            target.number
        )));
    }
    Ok(Some(Dispatch {
        repo: repo_of(target.repository)?,
        role,
        number: target.number,
        kind: TriggerKind::Comment {
            comment_id: comment.id,
        },
        actor: comment.user.clone(),
        instructions: Some(text),
        kiln_branch: false,
        anyone: false,
    }))
}

/// A built-in role by name (any case), or a configured custom role's.
fn role_named(word: &str, custom_roles: &[Role]) -> Option<Role> {
    Role::ALL
        .into_iter()
        .chain(custom_roles.iter().copied())
        .find(|r| r.as_str().eq_ignore_ascii_case(word))
}

/// `/kiln <command> [args]` as the comment's first line.
fn slash_command(text: &str, custom_roles: &[Role]) -> Option<Command> {
    let text = text.trim_start();
    let first = text.lines().next()?.trim_end();
    let rest = first.strip_prefix("/kiln")?;
    if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return None;
    }
    if text.len() > MAX_COMMAND_BYTES {
        return Some(Command::TooLong(text.len()));
    }
    let rest = text["/kiln".len()..].trim_start();
    let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (word, note) = (&rest[..word_end], rest[word_end..].trim());
    if word.is_empty() {
        return Some(Command::Help);
    }
    let word = word.to_ascii_lowercase();
    Some(match word.as_str() {
        "fix" => Command::Fix(note.to_string()),
        "retry" => Command::Retry,
        "cancel" => Command::Cancel,
        "help" => Command::Help,
        "implement" => Command::Run(Role::Implementation, text.to_string()),
        "verify" => match role_named("verification", custom_roles) {
            Some(r) => Command::Run(r, text.to_string()),
            None => Command::Unknown,
        },
        w => match role_named(w, custom_roles) {
            Some(r) => Command::Run(r, text.to_string()),
            None => Command::Unknown,
        },
    })
}

/// `@kiln [role]` as a word: `Some(None)` asks for the target's default role.
fn mention(text: &str, custom_roles: &[Role]) -> Option<Option<Role>> {
    let mut words = text.split_whitespace().peekable();
    while let Some(word) = words.next() {
        let mention = word.trim_end_matches([',', ':', '.', '!', '?']);
        if mention.eq_ignore_ascii_case("@kiln") {
            return Some(
                words
                    .peek()
                    .and_then(|w| role_named(w.trim_end_matches([',', ':', '.']), custom_roles)),
            );
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_first_line_and_mentions_a_word() {
        let run = |r, t: &str| Some(Command::Run(r, t.to_string()));
        assert_eq!(
            slash_command("/kiln spec", &[]),
            run(Role::Spec, "/kiln spec")
        );
        assert_eq!(
            slash_command("\n  /kiln implement now", &[]),
            run(Role::Implementation, "/kiln implement now")
        );
        assert_eq!(slash_command("/kiln", &[]), Some(Command::Help));
        assert_eq!(slash_command("/kiln HELP", &[]), Some(Command::Help));
        assert_eq!(
            slash_command("/kiln fix rename it\nand add a test", &[]),
            Some(Command::Fix("rename it\nand add a test".into()))
        );
        assert_eq!(slash_command("/kiln retry", &[]), Some(Command::Retry));
        assert_eq!(slash_command("/kiln cancel", &[]), Some(Command::Cancel));
        assert_eq!(slash_command("/kiln boss", &[]), Some(Command::Unknown));
        assert_eq!(
            slash_command("please\n/kiln spec", &[]),
            None,
            "a command is the first line, not any line"
        );
        assert_eq!(
            slash_command("/kilnx spec", &[]),
            None,
            "a longer word is not the command"
        );
        let long = format!("/kiln fix {}", "x".repeat(100 * 1024));
        assert_eq!(
            slash_command(&long, &[]),
            Some(Command::TooLong(long.len()))
        );
        // A custom role is a role only where [[roles]] configures it.
        let changelog = Role::Custom(crate::config::RoleName::new("changelog").expect("name"));
        assert_eq!(
            slash_command("/kiln changelog", &[changelog]),
            run(changelog, "/kiln changelog")
        );
        assert_eq!(
            slash_command("/kiln changelog", &[]),
            Some(Command::Unknown)
        );

        assert_eq!(mention("hey @kiln, fix the tests", &[]), Some(None));
        assert_eq!(
            mention("@kiln review: look again", &[]),
            Some(Some(Role::Review))
        );
        assert_eq!(
            mention("@kiln changelog please", &[changelog]),
            Some(Some(changelog))
        );
        assert_eq!(mention("mail bob@kiln.dev", &[]), None);
        assert_eq!(mention("@kilnbot do it", &[]), None);
        assert_eq!(mention("nothing here", &[]), None);
    }

    fn event(name: &str, payload: serde_json::Value) -> WebhookEvent {
        match super::super::event::parse(name, payload.to_string().as_bytes()) {
            Ok(super::super::event::Parsed::Known(e)) => *e,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn user(login: &str) -> serde_json::Value {
        let kind = if login.ends_with("[bot]") {
            "Bot"
        } else {
            "User"
        };
        serde_json::json!({ "login": login, "type": kind })
    }

    fn review(by: &str, state: &str, head: &str) -> WebhookEvent {
        event(
            "pull_request_review",
            serde_json::json!({
                "action": "submitted",
                "review": { "id": 77, "state": state, "user": user(by) },
                "pull_request": {
                    "number": 9, "user": user("kiln[bot]"),
                    "head": { "ref": head, "repo": { "full_name": "o/r" } },
                    "base": { "ref": "main", "repo": { "full_name": "o/r" } },
                },
                "repository": { "full_name": "o/r" },
                "sender": user(by),
            }),
        )
    }

    fn routed(event: &WebhookEvent) -> Route {
        route(
            &super::super::config::default_rules(),
            &["kiln[bot]".to_string()],
            &[],
            event,
        )
    }

    fn only(route: Route) -> Dispatch {
        match route {
            Route::Dispatch(mut d) if d.len() == 1 => d.remove(0),
            other => panic!("expected one dispatch, got {other:?}"),
        }
    }

    #[test]
    fn a_maintainers_changes_request_on_a_kiln_pr_asks_for_an_answer_on_it() {
        let d = only(routed(&review(
            "alice",
            "changes_requested",
            "kiln/implement-issue-3",
        )));
        assert_eq!(d.role, Role::Implementation);
        assert_eq!(d.number, 9, "the answering run is on the pull request");
        assert_eq!(d.kind, TriggerKind::ChangesRequested { review_id: 77 });
        assert_eq!(d.actor.login, "alice", "the reviewer's trust decides");
        assert!(!d.anyone);
        for (by, state, head) in [
            ("alice", "commented", "kiln/implement-issue-3"),
            ("alice", "approved", "kiln/implement-issue-3"),
            ("alice", "changes_requested", "feature/x"),
            ("alice", "changes_requested", "kiln/spec-issue-3"),
            (
                "dependabot[bot]",
                "changes_requested",
                "kiln/implement-issue-3",
            ),
        ] {
            assert!(
                matches!(routed(&review(by, state, head)), Route::Ignore(_)),
                "{by} {state} on {head}"
            );
        }
    }

    #[test]
    fn kilns_own_review_of_its_pr_triggers_only_the_rule_naming_it() {
        let d = only(routed(&review(
            "kiln[bot]",
            "commented",
            "kiln/implement-issue-3",
        )));
        assert_eq!(d.role, Role::Verification, "verification follows review");
        assert_eq!(d.kind, TriggerKind::Reviewed { review_id: 77 });
        assert!(d.kiln_branch);
        let d = only(routed(&review(
            "kiln[bot]",
            "changes_requested",
            "kiln/implement-issue-3",
        )));
        assert_eq!(
            d.role,
            Role::Verification,
            "Kiln requesting changes never starts an answering run"
        );
        let without = route(
            &[TriggerRule::ChangesRequested {
                role: Role::Implementation,
            }],
            &["kiln[bot]".to_string()],
            &[],
            &review("kiln[bot]", "changes_requested", "kiln/implement-issue-3"),
        );
        assert!(matches!(without, Route::Ignore(_)), "{without:?}");
    }

    fn comment_on_issue(author: &str, reporter: &str, labels: &[&str], body: &str) -> WebhookEvent {
        let labels: Vec<_> = labels
            .iter()
            .map(|l| serde_json::json!({ "name": l }))
            .collect();
        event(
            "issue_comment",
            serde_json::json!({
                "action": "created",
                "issue": { "number": 4, "user": user(reporter), "state": "open", "labels": labels },
                "comment": { "id": 12, "body": body, "user": user(author) },
                "repository": { "full_name": "o/r" },
                "sender": user(author),
            }),
        )
    }

    #[test]
    fn the_reporters_answer_on_a_needs_info_issue_triages_it_again() {
        let d = only(routed(&comment_on_issue(
            "bob",
            "bob",
            &["needs-info"],
            "it is v2",
        )));
        assert_eq!(d.role, Role::Triage);
        assert_eq!(d.kind, TriggerKind::ReporterReplied { comment_id: 12 });
        assert!(d.anyone, "the reporter may be a stranger");
        assert_eq!(
            d.instructions, None,
            "their words are evidence, not instructions"
        );
        for e in [
            comment_on_issue("carol", "bob", &["needs-info"], "me too"),
            comment_on_issue("bob", "bob", &["bug"], "more"),
        ] {
            assert!(matches!(routed(&e), Route::Ignore(_)), "{e:?}");
        }
        // A command from the reporter is a command (checked for permission), not an answer.
        assert!(matches!(
            routed(&comment_on_issue(
                "bob",
                "bob",
                &["needs-info"],
                "/kiln spec"
            )),
            Route::Command(_)
        ));
    }

    #[test]
    fn new_commits_on_a_kiln_pr_ask_for_review_again() {
        let sync = event(
            "pull_request",
            serde_json::json!({
                "action": "synchronize",
                "pull_request": {
                    "number": 9, "user": user("kiln[bot]"),
                    "head": { "ref": "kiln/implement-issue-3", "repo": { "full_name": "o/r" } },
                    "base": { "ref": "main", "repo": { "full_name": "o/r" } },
                },
                "repository": { "full_name": "o/r" },
                "sender": user("kiln[bot]"),
            }),
        );
        let d = only(routed(&sync));
        assert_eq!(
            (d.role, d.kind),
            (Role::Review, TriggerKind::PullRequestSynchronized)
        );
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
