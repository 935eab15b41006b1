//! The local forge's event outbox: every change to an issue, pull request,
//! comment, label or review is recorded as a forge event in the same SQLite
//! transaction as the change itself, so an event can neither be lost (the
//! change committed, the event not) nor invented (the event committed, the
//! change rolled back).
//!
//! Events are stored as GitHub webhook payloads (`issues`, `issue_comment`,
//! `pull_request`, `pull_request_review`, …) with the fields Kiln routes on,
//! so `kiln serve` feeds them to the one router that GitHub's webhooks go
//! through ([`crate::intake`]). A consumer keeps its position in
//! `event_cursors`, in the same database.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::{ItemRow, item_row};

/// One recorded forge event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeEvent {
    /// Position in the outbox (increasing, never reused).
    pub id: u64,
    /// The repository, `owner/name`.
    pub repo: String,
    /// The event's name, as GitHub's `X-GitHub-Event`.
    pub name: String,
    /// The payload, as GitHub's webhook body.
    pub payload: String,
}

impl ForgeEvent {
    /// The delivery id the event is processed under: unique across forge
    /// databases (the instance id), so a recreated forge never collides
    /// with the deliveries of an earlier one.
    pub fn delivery_id(&self, instance: &str) -> String {
        format!("local-{instance}-{}", self.id)
    }
}

/// The outbox's schema, part of the forge's migration 3.
pub(super) const MIGRATION: &str = "
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE event_cursors (
    consumer TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('instance', lower(hex(randomblob(8))));
";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A login as a webhook's `user`/`sender`: Kiln's own logins (`…[bot]`) are bots.
pub(super) fn user(login: &str) -> Value {
    let kind = if login.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    };
    json!({ "login": login, "type": kind })
}

fn repository(key: &str) -> Value {
    json!({ "full_name": key })
}

fn labels(c: &Connection, key: &str, number: i64) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = c.prepare_cached(
        "SELECT label FROM labels WHERE repo = ?1 AND number = ?2 ORDER BY rowid",
    )?;
    stmt.query_map(params![key, number], |r| {
        Ok(json!({ "name": r.get::<_, String>(0)? }))
    })?
    .collect()
}

fn row(c: &Connection, key: &str, number: i64) -> rusqlite::Result<(ItemRow, bool)> {
    c.query_row(
        &format!(
            "SELECT {}, is_pr FROM items WHERE repo = ?1 AND number = ?2",
            super::ITEM_COLUMNS
        ),
        params![key, number],
        |r| Ok((item_row(r)?, r.get::<_, bool>(8)?)),
    )
}

/// The `issue` object of `issues` and `issue_comment` payloads.
fn issue_json(c: &Connection, key: &str, item: &ItemRow, is_pr: bool) -> rusqlite::Result<Value> {
    let mut v = json!({
        "number": item.number,
        "title": item.title,
        "body": item.body,
        "state": if item.open { "open" } else { "closed" },
        "user": user(&item.author),
        "labels": labels(c, key, item.number as i64)?,
    });
    if is_pr {
        v["pull_request"] = json!({ "url": format!("local:{key}/pulls/{}", item.number) });
    }
    Ok(v)
}

/// The `pull_request` object of `pull_request*` payloads.
fn pull_request_json(
    c: &Connection,
    key: &str,
    item: &ItemRow,
    merged: bool,
) -> rusqlite::Result<Value> {
    // Pull requests on the local forge are always from the repository's own
    // branches: only the repository's writers can create them.
    Ok(json!({
        "number": item.number,
        "title": item.title,
        "body": item.body,
        "state": if item.open { "open" } else { "closed" },
        "draft": item.draft,
        "merged": merged,
        "user": user(&item.author),
        "labels": labels(c, key, item.number as i64)?,
        "head": { "ref": item.head.clone().unwrap_or_default(), "repo": repository(key) },
        "base": { "ref": item.base.clone().unwrap_or_default(), "repo": repository(key) },
    }))
}

fn insert(c: &Connection, key: &str, name: &str, payload: Value) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO events (repo, name, payload, created_ms) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![key, name, payload.to_string(), now_ms()])?;
    Ok(())
}

/// What happened to an issue or pull request, for [`record_item`].
#[derive(Debug, Clone, Copy)]
pub(super) enum ItemAction<'a> {
    /// Opened.
    Opened,
    /// Closed (a pull request: merged or not).
    Closed {
        /// The pull request was merged.
        merged: bool,
    },
    /// A label was added.
    Labeled(&'a str),
    /// A label was removed.
    Unlabeled(&'a str),
    /// Reopened.
    Reopened,
    /// New commits on a pull request's head.
    Synchronize,
}

/// Records `issues.<action>` or `pull_request.<action>` for item `number`,
/// as it is now (inside the change's transaction).
pub(super) fn record_item(
    c: &Connection,
    key: &str,
    number: u64,
    actor: &str,
    action: ItemAction<'_>,
) -> rusqlite::Result<()> {
    let (item, is_pr) = row(c, key, number as i64)?;
    let (action, label, merged) = match action {
        ItemAction::Opened => ("opened", None, false),
        ItemAction::Closed { merged } => ("closed", None, merged),
        ItemAction::Labeled(l) => ("labeled", Some(l), false),
        ItemAction::Unlabeled(l) => ("unlabeled", Some(l), false),
        ItemAction::Reopened => ("reopened", None, false),
        ItemAction::Synchronize => ("synchronize", None, false),
    };
    let mut payload = json!({
        "action": action,
        "repository": repository(key),
        "sender": user(actor),
    });
    let name = if is_pr {
        payload["pull_request"] = pull_request_json(c, key, &item, merged)?;
        "pull_request"
    } else {
        payload["issue"] = issue_json(c, key, &item, false)?;
        "issues"
    };
    if let Some(l) = label {
        payload["label"] = json!({ "name": l });
    }
    insert(c, key, name, payload)
}

/// Records `issue_comment.created` for comment `id` on item `number`.
pub(super) fn record_comment(
    c: &Connection,
    key: &str,
    number: u64,
    id: u64,
    actor: &str,
    body: &str,
) -> rusqlite::Result<()> {
    let (item, is_pr) = row(c, key, number as i64)?;
    let payload = json!({
        "action": "created",
        "issue": issue_json(c, key, &item, is_pr)?,
        "comment": { "id": id, "body": body, "user": user(actor) },
        "repository": repository(key),
        "sender": user(actor),
    });
    insert(c, key, "issue_comment", payload)
}

/// Records `issue_comment.edited` for comment `id`: it never triggers a
/// run (an old comment cannot smuggle a command), but watchers see it.
pub(super) fn record_comment_edited(
    c: &Connection,
    key: &str,
    id: u64,
    actor: &str,
) -> rusqlite::Result<()> {
    let found: Option<(i64, String, String)> = c
        .query_row(
            "SELECT number, author, body FROM comments WHERE id = ?1 AND repo = ?2",
            params![id as i64, key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((number, author, body)) = found else {
        return Ok(());
    };
    let (item, is_pr) = row(c, key, number)?;
    let payload = json!({
        "action": "edited",
        "issue": issue_json(c, key, &item, is_pr)?,
        "comment": { "id": id, "body": body, "user": user(&author) },
        "repository": repository(key),
        "sender": user(actor),
    });
    insert(c, key, "issue_comment", payload)
}

/// Records `pull_request_review.submitted` for review `id` on `number`.
/// `state` is the stored review state (`CHANGES_REQUESTED`, `COMMENTED`,
/// `APPROVED`); the payload carries it lower-case, as GitHub does.
pub(super) fn record_review(
    c: &Connection,
    key: &str,
    number: u64,
    id: u64,
    actor: &str,
    state: &str,
    body: &str,
) -> rusqlite::Result<()> {
    let (item, _) = row(c, key, number as i64)?;
    let payload = json!({
        "action": "submitted",
        "review": {
            "id": id,
            "state": state.to_ascii_lowercase(),
            "body": body,
            "user": user(actor),
        },
        "pull_request": pull_request_json(c, key, &item, false)?,
        "repository": repository(key),
        "sender": user(actor),
    });
    insert(c, key, "pull_request_review", payload)
}

/// Records `pull_request_review_comment.created` for a reply in a review
/// thread.
pub(super) fn record_review_reply(
    c: &Connection,
    key: &str,
    number: u64,
    id: u64,
    actor: &str,
    body: &str,
) -> rusqlite::Result<()> {
    let (item, _) = row(c, key, number as i64)?;
    let payload = json!({
        "action": "created",
        "comment": { "id": id, "body": body, "user": user(actor) },
        "pull_request": pull_request_json(c, key, &item, false)?,
        "repository": repository(key),
        "sender": user(actor),
    });
    insert(c, key, "pull_request_review_comment", payload)
}

/// The forge database's instance id (see [`ForgeEvent::delivery_id`]).
fn instance(c: &Connection) -> rusqlite::Result<String> {
    c.query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| {
        r.get(0)
    })
}

/// Up to `limit` events after `after`, oldest first.
fn after(c: &Connection, after: u64, limit: usize) -> rusqlite::Result<Vec<ForgeEvent>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, repo, name, payload FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    stmt.query_map(params![after as i64, limit as i64], |r| {
        Ok(ForgeEvent {
            id: r.get::<_, i64>(0)? as u64,
            repo: r.get(1)?,
            name: r.get(2)?,
            payload: r.get(3)?,
        })
    })?
    .collect()
}

/// The last event `consumer` finished with; 0 before its first.
fn cursor(c: &Connection, consumer: &str) -> rusqlite::Result<u64> {
    Ok(c.query_row(
        "SELECT last_id FROM event_cursors WHERE consumer = ?1",
        [consumer],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}

/// Moves `consumer`'s cursor forward to `id` (never back).
fn advance(c: &Connection, consumer: &str, id: u64) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO event_cursors (consumer, last_id) VALUES (?1, ?2)
         ON CONFLICT (consumer) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
        params![consumer, id as i64],
    )?;
    Ok(())
}

/// The outbox of the local forge under a root, for its consumer (`kiln
/// serve`'s event pump). Blocking: call it off the async runtime.
pub struct Outbox {
    conn: Connection,
    instance: String,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("instance", &self.instance)
            .finish()
    }
}

impl Outbox {
    /// Opens (creating and migrating) the forge database under `root`.
    pub fn open(root: &std::path::Path) -> Result<Self, super::ForgeError> {
        let conn = super::open_db(root)?;
        let instance = instance(&conn).map_err(super::store_err)?;
        Ok(Outbox { conn, instance })
    }

    /// The database's instance id (see [`ForgeEvent::delivery_id`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn after(&self, after_id: u64, limit: usize) -> Result<Vec<ForgeEvent>, super::ForgeError> {
        after(&self.conn, after_id, limit).map_err(super::store_err)
    }

    /// The newest event's id; 0 when there is none.
    pub fn last_id(&self) -> Result<u64, super::ForgeError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|id| id as u64)
            .map_err(super::store_err)
    }

    /// The last event `consumer` finished with; 0 before its first.
    pub fn cursor(&self, consumer: &str) -> Result<u64, super::ForgeError> {
        cursor(&self.conn, consumer).map_err(super::store_err)
    }

    /// Moves `consumer`'s cursor forward to `id` (never back).
    pub fn advance(&self, consumer: &str, id: u64) -> Result<(), super::ForgeError> {
        advance(&self.conn, consumer, id).map_err(super::store_err)
    }
}
