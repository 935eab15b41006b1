//! End-to-end: an implementation run answering a maintainer's review on the
//! SAME pull request. The local forge, a real Docker sandbox, the built-in
//! implementation plugin and the default gate, with a scripted model: the
//! run starts at the branch's current head (a human's commit kept), pushes
//! a new commit on top of it to the same branch, replies in the review
//! thread and refreshes the Verification section, and opens no pull
//! request. A pull request whose head is not a `kiln/*` branch of the
//! repository is refused before anything runs, and nothing is pushed.
use std::path::Path;
use std::sync::Arc;

use kiln::config::Role;
use kiln::forge::local::LocalForge;
use kiln::forge::{
    Forge, LineComment, NewIssue, NewPullRequest, NewReview, Permission, Severity, StateFilter,
};
use kiln::policy::Trust;
use kiln::store::{NewRun, RunId, RunState, RunStore, Trigger, TriggerKind};

use crate::support::{images, service};

const BRANCH: &str = "kiln/implement-issue-1";

fn git(dir: &Path, args: &[&str]) -> String {
    crate::support::api::git(dir, args)
}

/// A clone of the forge's repository in `root/<name>`, committing as `who`.
fn clone(forge: &LocalForge, root: &Path, name: &str, who: &str) -> std::path::PathBuf {
    let bare = forge.bare_repo();
    git(
        root,
        &["clone", "--quiet", bare.to_str().expect("utf-8"), name],
    );
    let work = root.join(name);
    git(&work, &["config", "user.name", who]);
    git(
        &work,
        &["config", "user.email", &format!("{who}@example.com")],
    );
    work
}

/// Commit every change in `work` with `message`; returns the commit.
fn commit(work: &Path, message: &str) -> String {
    git(work, &["add", "-A"]);
    git(work, &["commit", "--quiet", "-m", message]);
    git(work, &["rev-parse", "HEAD"])
}

/// Issue #1 and a pull request from `head` (pushed by Kiln when it is a
/// `kiln/*` branch, by a human otherwise) that adds NOTES.md, closing it.
async fn pull_request(forge: &LocalForge, root: &Path, head: &str) -> u64 {
    let issue = forge
        .acting_as("alice")
        .create_issue(NewIssue {
            title: "Document the slug rules".into(),
            body: "The README should say how titles become slugs.".into(),
            labels: vec![],
        })
        .await
        .expect("issue");
    assert_eq!(issue, 1);
    let work = clone(forge, root, "kiln-work", "kiln");
    git(&work, &["checkout", "--quiet", "-b", head]);
    std::fs::write(
        work.join("NOTES.md"),
        "# Notes\n\nslugs are lowercase\nwords joined by dashes\n",
    )
    .expect("write");
    let sha = commit(&work, "Document the slug rules");
    if head.starts_with("kiln/") {
        forge.push(&work, &sha, head).await.expect("push");
    } else {
        git(&work, &["push", "--quiet", "origin", head]);
    }
    forge
        .create_draft_pull_request(NewPullRequest {
            title: "Document the slug rules".into(),
            body: "Closes #1\n\nAdds NOTES.md.\n\n## Verification\n\n**Not verified**: no command was run.\n\n---\nWritten by Kiln's implementation agent.".into(),
            head: head.into(),
            base: "main".into(),
        })
        .await
        .expect("pull request")
}

/// Queue the answering run a maintainer's request for changes starts.
async fn queue_answer(store: &dyn RunStore, forge: &LocalForge, pr: u64, review: u64) -> RunId {
    store
        .enqueue_run(NewRun {
            script: None,
            repo: forge.repo().clone(),
            role: Role::Implementation,
            number: pr,
            trigger: Trigger {
                kind: TriggerKind::ChangesRequested { review_id: review },
                actor: "maint".into(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await
        .expect("enqueue")
}

fn script(thread: u64) -> String {
    serde_json::json!({
        "description": "answers one review thread on NOTES.md",
        "turns": [
            {"text": "Rewording line 3 as asked.", "tool_calls": [{
                "name": "write_file",
                "arguments": {"path": "NOTES.md", "contents": "# Notes\n\nSlugs are lowercase ASCII.\nwords joined by dashes\n"}
            }]},
            {"text": "Running the tests.", "tool_calls": [{
                "name": "run_command", "arguments": {"argv": ["grep", "-q", "ASCII", "NOTES.md"]}
            }]},
            {"text": "Done.", "tool_calls": [{
                "name": "submit_answer",
                "arguments": {
                    "status": "done",
                    "commit_message": "Say slugs are ASCII\n\nAsked for in review.",
                    "replies": [{"thread": thread, "changed": true, "body": "Line 3 now says slugs are lowercase ASCII."}],
                    "blocked_reason": null
                }
            }]}
        ]
    })
    .to_string()
}

#[tokio::test]
async fn a_review_is_answered_on_the_same_pull_request_on_top_of_a_human_commit() {
    let root = tempfile::tempdir().expect("tempdir");
    let forge = service::demo_repo(root.path(), "local/answer").await;
    forge
        .set_permission("maint", Permission::Write)
        .await
        .expect("grant");
    let pr = pull_request(&forge, root.path(), BRANCH).await;
    // An earlier run's progress comment: Kiln's bookkeeping, not discussion.
    forge
        .comment(
            pr,
            &format!(
                "Kiln run `r0` (review) ended: **succeeded**. BOOKKEEPING-TEXT\n{}",
                kiln::forge::progress_marker("r0")
            ),
        )
        .await
        .expect("comment");
    let review = forge
        .acting_as("maint")
        .create_review(
            pr,
            NewReview {
                request_changes: true,
                body: "One wording fix.".into(),
                comments: vec![LineComment {
                    path: "NOTES.md".into(),
                    line: 3,
                    new_side: true,
                    severity: Severity::Important,
                    body: "Say the slugs are ASCII.".into(),
                }],
            },
        )
        .await
        .expect("review");
    let thread = forge.get_pull_request(pr).await.expect("pr").review_threads[0].id;
    // A human pushes a commit of their own onto the branch meanwhile.
    let human = clone(&forge, root.path(), "human-work", "maint");
    git(&human, &["checkout", "--quiet", BRANCH]);
    std::fs::write(human.join("HUMAN.md"), "added by a human\n").expect("write");
    let human_commit = commit(&human, "A human's commit");
    git(&human, &["push", "--quiet", "origin", BRANCH]);

    let store: Arc<dyn RunStore> = service::store(root.path()).await;
    let (image, _) = images::images().await;
    let model = service::Recording::new(service::scripted("answer.json", &script(thread)));
    let services = service::role_services(
        root.path(),
        service::sandboxes(images::docker().await, "test-answer-review").await,
        image,
        model.clone(),
    );
    let shared: Arc<dyn Forge> = Arc::new(forge.clone());
    let runner = service::runner(store.clone(), services, shared);
    let id = queue_answer(&*store, &forge, pr, review).await;
    let workers = service::start(&runner, 1).await;
    runner.notify_queued();
    let run = service::wait_for(&*store, id, RunState::is_terminal).await;
    for w in workers {
        w.abort();
    }
    assert_eq!(run.state, RunState::Succeeded, "{:?}", run.reason);
    assert_eq!(
        run.branch.as_deref(),
        Some(BRANCH),
        "the run's branch is the PR's head"
    );

    // One new commit on the same branch, on top of the human's.
    let bare = forge.bare_repo();
    let head = git(&bare, &["rev-parse", BRANCH]);
    assert_ne!(head, human_commit, "a new commit was pushed");
    assert_eq!(
        git(&bare, &["rev-parse", &format!("{BRANCH}^")]),
        human_commit,
        "the new commit sits on the human's commit"
    );
    assert_eq!(
        git(&bare, &["show", &format!("{BRANCH}:HUMAN.md")]),
        "added by a human"
    );
    assert!(
        git(&bare, &["show", &format!("{BRANCH}:NOTES.md")]).contains("lowercase ASCII"),
        "the change asked for is on the branch"
    );
    let prs = forge
        .list_pull_requests(StateFilter::All)
        .await
        .expect("prs");
    assert_eq!(prs.len(), 1, "no new pull request: {prs:?}");

    let after = forge.get_pull_request(pr).await.expect("pr");
    let replies: Vec<&str> = after.review_threads[0]
        .comments
        .iter()
        .skip(1)
        .map(|c| c.body.as_str())
        .collect();
    assert_eq!(replies.len(), 1, "one reply in the thread: {replies:?}");
    assert!(
        replies[0].contains("lowercase ASCII") && replies[0].contains(&head[..12]),
        "the reply says what changed and where: {}",
        replies[0]
    );
    let body = &after.issue.body;
    assert!(body.starts_with("Closes #1\n\nAdds NOTES.md."), "{body}");
    assert!(
        body.contains("`grep -q ASCII NOTES.md` — exit code 0")
            && body.contains("Verified")
            && !body.contains("no command was run"),
        "the Verification section is refreshed from the sandbox: {body}"
    );
    assert!(
        body.ends_with("Written by Kiln's implementation agent."),
        "{body}"
    );

    // What the model read: the linked issue, the thread; not Kiln's bookkeeping.
    let sent = model.sent().join("\n");
    assert!(sent.contains("Document the slug rules"), "the linked issue");
    assert!(
        sent.contains("Say the slugs are ASCII."),
        "the review thread"
    );
    assert!(
        !sent.contains("BOOKKEEPING-TEXT"),
        "Kiln's progress comment is left out of what the model reads"
    );
}

#[tokio::test]
async fn a_pull_request_whose_head_is_not_a_kiln_branch_is_never_pushed_to() {
    let root = tempfile::tempdir().expect("tempdir");
    let forge = service::demo_repo(root.path(), "local/answer-foreign").await;
    forge
        .set_permission("maint", Permission::Write)
        .await
        .expect("grant");
    let pr = pull_request(&forge, root.path(), "feature/notes").await;
    let before = git(&forge.bare_repo(), &["for-each-ref"]);
    let store: Arc<dyn RunStore> = service::store(root.path()).await;
    let (image, _) = images::images().await;
    // The model must not be asked anything.
    let model = service::Recording::new(service::scripted(
        "never.json",
        r#"{"turns": [{"text": "never asked"}]}"#,
    ));
    let services = service::role_services(
        root.path(),
        service::sandboxes(images::docker().await, "test-answer-foreign").await,
        image,
        model.clone(),
    );
    let shared: Arc<dyn Forge> = Arc::new(forge.clone());
    let runner = service::runner(store.clone(), services, shared);
    let id = queue_answer(&*store, &forge, pr, 0).await;
    let workers = service::start(&runner, 1).await;
    runner.notify_queued();
    let run = service::wait_for(&*store, id, RunState::is_terminal).await;
    for w in workers {
        w.abort();
    }
    assert_eq!(run.state, RunState::Failed);
    let reason = run.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("pull request #{pr}"))
            && reason.contains("\"feature/notes\"")
            && reason.contains("not a kiln/* branch"),
        "the reason names the pull request and its branch: {reason}"
    );
    assert_eq!(
        git(&forge.bare_repo(), &["for-each-ref"]),
        before,
        "nothing was pushed"
    );
    assert!(model.sent().is_empty(), "the model was never asked");
    let prs = forge
        .list_pull_requests(StateFilter::All)
        .await
        .expect("prs");
    assert_eq!(prs.len(), 1, "no pull request opened");
    // The progress comment says how the run ended.
    let comments = forge.get_pull_request(pr).await.expect("pr").issue.comments;
    assert!(
        comments
            .iter()
            .any(|c| c.body.contains("ended: **failed**") && c.body.contains("not a kiln/* branch")),
        "{comments:?}"
    );
}

#[tokio::test]
async fn after_a_crash_the_progress_comment_says_how_the_run_ended() {
    let root = tempfile::tempdir().expect("tempdir");
    let forge = service::sample_repo(root.path(), "# Sample\n").await;
    let issue = forge
        .acting_as("alice")
        .create_issue(NewIssue {
            title: "Something".into(),
            body: "Body.".into(),
            labels: vec![],
        })
        .await
        .expect("issue");
    let store: Arc<dyn RunStore> = service::store(root.path()).await;
    let id = store
        .enqueue_run(NewRun {
            script: None,
            repo: forge.repo().clone(),
            role: Role::Triage,
            number: issue,
            trigger: Trigger {
                kind: TriggerKind::Manual,
                actor: "alice".into(),
                actor_trust: Trust::Trusted,
                delivery: None,
                instructions: None,
            },
        })
        .await
        .expect("enqueue");
    // What a runner killed mid-run leaves: the run claimed and running,
    // its progress comment saying it started.
    let claimed = store.claim_next_run().await.expect("claim").expect("a run");
    assert_eq!(claimed.id, id);
    store
        .transition(id, RunState::Preparing, RunState::Running, None)
        .await
        .expect("running");
    let comment = forge
        .comment(
            issue,
            &format!(
                "Kiln run `{id}` (triage) started. This comment is updated when it ends.\n{}",
                kiln::forge::progress_marker(&id.to_string())
            ),
        )
        .await
        .expect("comment");
    store
        .append_event(
            id,
            &kiln::session::EventKind::Started,
            &kiln::worker::progress_comment_event(comment),
        )
        .await
        .expect("event");
    // Someone else's comment carrying the marker is not taken for it.
    let decoy = forge
        .acting_as("mallory")
        .comment(
            issue,
            &format!("fake\n{}", kiln::forge::progress_marker(&id.to_string())),
        )
        .await
        .expect("decoy");

    let (image, _) = images::images().await;
    let services = service::role_services(
        root.path(),
        service::sandboxes(images::docker().await, "test-answer-recovery").await,
        image,
        service::scripted("never.json", r#"{"turns": [{"text": "never asked"}]}"#),
    );
    let shared: Arc<dyn Forge> = Arc::new(forge.clone());
    let runner = service::runner(store.clone(), services, shared);
    let workers = service::start(&runner, 1).await;
    for w in workers {
        w.abort();
    }
    assert_eq!(
        store.get_run(id).await.expect("run").state,
        RunState::Failed
    );
    let body = forge
        .get_issue(issue)
        .await
        .expect("issue")
        .comments
        .into_iter()
        .find(|c| c.id == comment)
        .expect("the progress comment")
        .body;
    assert!(
        body.contains("ended: **failed**") && body.contains("runner restarted"),
        "{body}"
    );
    assert!(
        kiln::forge::is_bookkeeping(&body),
        "it is still marked as Kiln's"
    );
    let comments = forge.get_issue(issue).await.expect("issue").comments;
    let decoy = comments.iter().find(|c| c.id == decoy).expect("decoy");
    assert!(decoy.body.starts_with("fake"), "left alone: {}", decoy.body);
}
