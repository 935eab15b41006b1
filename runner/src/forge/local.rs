//! The local forge: Kiln's own issues, comments, labels, pull requests and
//! reviews, kept in a SQLite database over bare git repositories that Kiln
//! owns. It is the embedded default — a new user runs Kiln against it before
//! connecting GitHub — and it keeps GitHub's semantics (shared numbering of
//! issues and pull requests, draft-only pull requests from Kiln, review
//! comments only on diff lines, collaborator permissions), checked by the
//! same contract suite as the GitHub forge (`tests/forge.rs`).
//!
//! Layout under the forge root:
//! ```text
//! forge.sqlite                 issues, comments, labels, PRs, reviews, collaborators
//! repos/<owner>/<name>.git     bare repositories
//! ```
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use super::diff::CommentableLines;
use super::{
    Comment, CommitStatus, Forge, ForgeError, GitRemote, Issue, LabelEvent, LineComment, NewIssue,
    NewPullRequest, NewReview, Permission, PullRequest, RepoRef, Review, ReviewThread, Severity,
    StateChange, StateEvent, StateFilter, StatusState, check_kiln_branch, status_description,
};

mod outbox;

pub use outbox::{ForgeEvent, Outbox};

const SCHEMA_VERSION: i64 = 3;

const MIGRATION_1: &str = "
CREATE TABLE repos (
    repo TEXT PRIMARY KEY,
    default_branch TEXT NOT NULL
);
CREATE TABLE items (
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    is_pr INTEGER NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    author TEXT NOT NULL,
    open INTEGER NOT NULL,
    head TEXT,
    base TEXT,
    draft INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repo, number)
);
CREATE TABLE comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    author TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE labels (
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    label TEXT NOT NULL,
    PRIMARY KEY (repo, number, label)
);
CREATE TABLE reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    author TEXT NOT NULL,
    state TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE review_comments (
    review_id INTEGER NOT NULL REFERENCES reviews(id),
    path TEXT NOT NULL,
    line INTEGER NOT NULL,
    new_side INTEGER NOT NULL,
    severity TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE collaborators (
    repo TEXT NOT NULL,
    login TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (repo, login)
);
";

/// Review line comments get ids, authors and replies (threads), and commit
/// statuses are stored. `review_comments` had no id column (only SQLite's
/// rowid, which `VACUUM` may renumber), so it is rebuilt with one, keeping
/// every comment in its order. A reply has no review of its own
/// (`review_id` NULL) and points at its thread's first comment.
const MIGRATION_2: &str = "
CREATE TABLE review_comments_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    review_id INTEGER REFERENCES reviews(id),
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    author TEXT NOT NULL,
    path TEXT NOT NULL,
    line INTEGER NOT NULL,
    new_side INTEGER NOT NULL,
    severity TEXT,
    body TEXT NOT NULL,
    in_reply_to INTEGER,
    resolved INTEGER NOT NULL DEFAULT 0
);
INSERT INTO review_comments_v2
    (review_id, repo, number, author, path, line, new_side, severity, body)
    SELECT c.review_id, r.repo, r.number, r.author, c.path, c.line, c.new_side, c.severity, c.body
    FROM review_comments c JOIN reviews r ON r.id = c.review_id
    ORDER BY c.rowid;
DROP TABLE review_comments;
ALTER TABLE review_comments_v2 RENAME TO review_comments;
CREATE INDEX review_comments_by_pr ON review_comments (repo, number);
CREATE TABLE statuses (
    repo TEXT NOT NULL,
    sha TEXT NOT NULL,
    context TEXT NOT NULL,
    state TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (repo, sha, context)
);
";

/// The login the host acts as on the local forge.
pub const KILN_LOGIN: &str = "kiln[bot]";

/// One repository on the local forge, acting as one login.
#[derive(Clone)]
pub struct LocalForge {
    db: Arc<Mutex<Connection>>,
    root: PathBuf,
    repo: RepoRef,
    key: String,
    actor: String,
}

impl std::fmt::Debug for LocalForge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalForge")
            .field("root", &self.root)
            .field("repo", &self.repo)
            .field("actor", &self.actor)
            .finish()
    }
}

fn store_err(e: rusqlite::Error) -> ForgeError {
    ForgeError::Store(e.to_string())
}

/// Open (creating and migrating) the forge database under `root`.
fn open_db(root: &Path) -> Result<Connection, ForgeError> {
    std::fs::create_dir_all(root).map_err(|e| {
        ForgeError::Store(format!("cannot create forge root {}: {e}", root.display()))
    })?;
    let path = root.join("forge.sqlite");
    let conn = Connection::open(&path)
        .map_err(|e| ForgeError::Store(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(store_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(store_err)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(store_err)?;
    if version > SCHEMA_VERSION {
        return Err(ForgeError::Store(format!(
            "{} has schema version {version}, newer than this kiln understands ({SCHEMA_VERSION}); \
             upgrade kiln",
            path.display()
        )));
    }
    if version < SCHEMA_VERSION {
        migrate(&conn).map_err(store_err)?;
    }
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction. `IMMEDIATE`
/// takes the write lock before the version is read again, so a `kiln serve`
/// and a CLI command opening an old database at once migrate it once.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match apply_migrations(conn) {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            // The error that matters is the migration's, not the rollback's.
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The migrations after the database's version, inside [`migrate`]'s
/// transaction.
fn apply_migrations(conn: &Connection) -> rusqlite::Result<()> {
    const MIGRATIONS: [&str; 3] = [MIGRATION_1, MIGRATION_2, outbox::MIGRATION];
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        conn.execute_batch(sql)?;
        conn.pragma_update(None, "user_version", done as i64 + 1)?;
    }
    Ok(())
}

/// Names of the repositories on the local forge under `root`.
pub fn list_repos(root: &Path) -> Result<Vec<RepoRef>, ForgeError> {
    let conn = open_db(root)?;
    let mut stmt = conn
        .prepare("SELECT repo FROM repos ORDER BY repo")
        .map_err(store_err)?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(store_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_err)?;
    names.iter().map(|n| RepoRef::parse(n)).collect()
}

/// The local forge's repositories under one root, each opened once and
/// shared (one connection per repository): what `kiln serve` resolves
/// `local/*` repositories with, so a permission lookup or a run's forge does
/// not open and check the database again.
#[derive(Debug, Clone)]
pub struct LocalForges {
    root: PathBuf,
    open: Arc<Mutex<std::collections::HashMap<RepoRef, LocalForge>>>,
}

impl LocalForges {
    /// The repositories under `root` (opened on first use).
    pub fn new(root: &Path) -> Self {
        LocalForges {
            root: root.to_path_buf(),
            open: Arc::default(),
        }
    }

    /// `repo`, acting as Kiln; `None` if the local forge has no such
    /// repository.
    pub fn get(&self, repo: &RepoRef) -> Option<LocalForge> {
        let mut open = self.open.lock().ok()?;
        if let Some(f) = open.get(repo) {
            return Some(f.clone());
        }
        let f = LocalForge::open(&self.root, repo.clone()).ok()?;
        open.insert(repo.clone(), f.clone());
        Some(f)
    }

    /// A resolver serving only the local forge's repositories.
    pub fn resolver(self) -> super::ForgeResolver {
        Arc::new(move |repo: &RepoRef| self.get(repo).map(|f| Arc::new(f) as Arc<dyn super::Forge>))
    }
}

impl LocalForge {
    /// Open an existing repository of the local forge at `root`, acting as
    /// Kiln itself ([`KILN_LOGIN`]).
    pub fn open(root: &Path, repo: RepoRef) -> Result<Self, ForgeError> {
        let conn = open_db(root)?;
        let key = repo.to_string();
        let exists: bool = conn
            .query_row("SELECT 1 FROM repos WHERE repo = ?1", [&key], |_| Ok(()))
            .optional()
            .map_err(store_err)?
            .is_some();
        if !exists {
            return Err(ForgeError::NotFound(format!(
                "repository {key} on the local forge at {} (create it with `kiln repo create {key} \
                 --from DIR`)",
                root.display()
            )));
        }
        Ok(LocalForge {
            db: Arc::new(Mutex::new(conn)),
            root: root.to_path_buf(),
            repo,
            key,
            actor: KILN_LOGIN.to_string(),
        })
    }

    /// Create a repository on the local forge, owned by `owner_login` (who
    /// gets admin permission). With `source`, the directory's files become
    /// the first commit of the default branch `main`.
    pub async fn create(
        root: &Path,
        repo: RepoRef,
        owner_login: &str,
        source: Option<&Path>,
    ) -> Result<Self, ForgeError> {
        let conn = open_db(root)?;
        let key = repo.to_string();
        let bare = bare_path(root, &repo);
        if bare.exists() {
            return Err(ForgeError::Invalid(format!(
                "repository {key} already exists at {}",
                bare.display()
            )));
        }
        if let Some(parent) = bare.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| ForgeError::Git(format!("cannot create {}: {e}", parent.display())))?;
        }
        git(
            None,
            &["init", "--quiet", "--bare", "-b", "main", path_str(&bare)?],
        )
        .await?;
        if let Some(src) = source {
            import_tree(src, &bare).await?;
        }
        conn.execute(
            "INSERT INTO repos (repo, default_branch) VALUES (?1, 'main')",
            [&key],
        )
        .map_err(store_err)?;
        conn.execute(
            "INSERT INTO collaborators (repo, login, permission) VALUES (?1, ?2, 'admin')",
            params![key, owner_login],
        )
        .map_err(store_err)?;
        Ok(LocalForge {
            db: Arc::new(Mutex::new(conn)),
            root: root.to_path_buf(),
            repo,
            key,
            actor: KILN_LOGIN.to_string(),
        })
    }

    /// The same repository, with new issues, comments, pull requests and
    /// reviews authored by `login` (the CLI acts as the local user).
    pub fn acting_as(&self, login: &str) -> Self {
        LocalForge {
            actor: login.to_string(),
            ..self.clone()
        }
    }

    /// Give `login` a permission level on the repository.
    pub async fn set_permission(&self, login: &str, level: Permission) -> Result<(), ForgeError> {
        let (key, login) = (self.key.clone(), login.to_string());
        self.with_db(move |c| {
            c.execute(
                "INSERT INTO collaborators (repo, login, permission) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repo, login) DO UPDATE SET permission = excluded.permission",
                params![key, login, permission_name(level)],
            )?;
            Ok(())
        })
        .await
    }

    /// The bare repository's path on disk.
    pub fn bare_repo(&self) -> PathBuf {
        bare_path(&self.root, &self.repo)
    }

    /// Run `f` on the database off the async runtime's worker threads.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, ForgeError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db
                .lock()
                .map_err(|_| ForgeError::Store("the forge database lock is poisoned".into()))?;
            f(&mut conn).map_err(ForgeError::from)
        })
        .await
        .map_err(|e| ForgeError::Store(format!("database task failed: {e}")))?
    }

    async fn item_kind(&self, number: u64) -> Result<Option<bool>, ForgeError> {
        let key = self.key.clone();
        self.with_db(move |c| {
            Ok(c.query_row(
                "SELECT is_pr FROM items WHERE repo = ?1 AND number = ?2",
                params![key, number as i64],
                |r| r.get::<_, bool>(0),
            )
            .optional()?)
        })
        .await
    }

    async fn require_item(&self, number: u64) -> Result<(), ForgeError> {
        match self.item_kind(number).await? {
            Some(_) => Ok(()),
            None => Err(ForgeError::NotFound(format!(
                "issue or pull request #{number} in {}",
                self.key
            ))),
        }
    }

    async fn diff(&self, base: &str, head: &str) -> Result<String, ForgeError> {
        let bare = self.bare_repo();
        let range = format!("refs/heads/{base}...refs/heads/{head}");
        git(
            Some(&bare),
            &["diff", "--no-color", "--no-ext-diff", &range],
        )
        .await
    }

    /// The head branch of pull request `number`; NotFound when there is
    /// no such pull request.
    async fn pull_request_head(&self, number: u64) -> Result<String, ForgeError> {
        let (key, repo) = (self.key.clone(), self.key.clone());
        self.with_db(move |c| {
            c.query_row(
                "SELECT head FROM items WHERE repo = ?1 AND number = ?2 AND is_pr = 1",
                params![key, number as i64],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .map(Option::unwrap_or_default)
            .ok_or_else(|| {
                DbError::Forge(ForgeError::NotFound(format!(
                    "pull request #{number} in {repo}"
                )))
            })
        })
        .await
    }

    async fn require_pull_request(&self, number: u64) -> Result<(), ForgeError> {
        self.pull_request_head(number).await.map(drop)
    }

    /// The commit the head branch of pull request `number` points to.
    async fn head_sha(&self, number: u64, head: &str) -> Result<String, ForgeError> {
        let bare = self.bare_repo();
        let r = format!("refs/heads/{head}");
        match git(Some(&bare), &["rev-parse", "--verify", "--quiet", &r]).await {
            Ok(sha) => Ok(sha.trim().to_string()),
            Err(_) => Err(ForgeError::NotFound(format!(
                "head branch {head:?} of pull request #{number} in {}",
                self.key
            ))),
        }
    }

    async fn branch_exists(&self, branch: &str) -> Result<bool, ForgeError> {
        let bare = self.bare_repo();
        let r = format!("refs/heads/{branch}");
        Ok(git(Some(&bare), &["rev-parse", "--verify", "--quiet", &r])
            .await
            .is_ok())
    }
}

/// Errors inside a database closure: SQLite's, or the forge's own.
enum DbError {
    Sql(rusqlite::Error),
    Forge(ForgeError),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sql(e)
    }
}

impl From<DbError> for ForgeError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sql(e) => store_err(e),
            DbError::Forge(e) => e,
        }
    }
}

fn bare_path(root: &Path, repo: &RepoRef) -> PathBuf {
    root.join("repos")
        .join(&repo.owner)
        .join(format!("{}.git", repo.name))
}

fn path_str(p: &Path) -> Result<&str, ForgeError> {
    p.to_str()
        .ok_or_else(|| ForgeError::Invalid(format!("path {} is not UTF-8", p.display())))
}

/// Run host-side git ([`crate::publish::host_git`]: no system or global
/// configuration, no hooks). Returns stdout.
async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, ForgeError> {
    let mut cmd = crate::publish::host_git(None, None);
    if let Some(d) = dir {
        cmd.arg("-C").arg(d);
    }
    cmd.args(args);
    let out = cmd
        .output()
        .await
        .map_err(|e| ForgeError::Git(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(ForgeError::Git(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| ForgeError::Git(format!("git {} printed non-UTF-8 output", args.join(" "))))
}

/// Commit the files of `src` as the first commit of `main` in `bare`.
async fn import_tree(src: &Path, bare: &Path) -> Result<(), ForgeError> {
    if !src.is_dir() {
        return Err(ForgeError::Invalid(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    let work = tempfile::tempdir().map_err(|e| ForgeError::Git(e.to_string()))?;
    let w = work.path();
    let ws = path_str(w)?;
    git(None, &["init", "--quiet", "-b", "main", ws]).await?;
    copy_tree(src, w).map_err(|e| {
        ForgeError::Git(format!(
            "cannot copy {} into the import: {e}",
            src.display()
        ))
    })?;
    git(Some(w), &["add", "-A"]).await?;
    git(Some(w), &["commit", "--quiet", "-m", "Initial import"]).await?;
    git(
        Some(w),
        &["push", "--quiet", path_str(bare)?, "main:refs/heads/main"],
    )
    .await?;
    Ok(())
}

/// Copy a directory's files (not `.git`), following no symlinks out of it.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let ty = entry.file_type()?;
        let dest = to.join(&name);
        if ty.is_dir() {
            std::fs::create_dir_all(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

fn permission_name(p: Permission) -> &'static str {
    match p {
        Permission::None => "none",
        Permission::Read => "read",
        Permission::Triage => "triage",
        Permission::Write => "write",
        Permission::Maintain => "maintain",
        Permission::Admin => "admin",
    }
}

fn parse_permission(s: &str) -> Permission {
    match s {
        "read" => Permission::Read,
        "triage" => Permission::Triage,
        "write" => Permission::Write,
        "maintain" => Permission::Maintain,
        "admin" => Permission::Admin,
        _ => Permission::None,
    }
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "CRITICAL",
        Severity::Important => "IMPORTANT",
        Severity::Suggestion => "SUGGESTION",
        Severity::Nit => "NIT",
    }
}

fn parse_severity(s: &str) -> Severity {
    match s {
        "CRITICAL" => Severity::Critical,
        "IMPORTANT" => Severity::Important,
        "SUGGESTION" => Severity::Suggestion,
        _ => Severity::Nit,
    }
}

/// One row of `items`, before comments and labels are attached.
struct ItemRow {
    number: u64,
    title: String,
    body: String,
    author: String,
    open: bool,
    head: Option<String>,
    base: Option<String>,
    draft: bool,
}

const ITEM_COLUMNS: &str = "number, title, body, author, open, head, base, draft";

fn item_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ItemRow> {
    Ok(ItemRow {
        number: r.get::<_, i64>(0)? as u64,
        title: r.get(1)?,
        body: r.get(2)?,
        author: r.get(3)?,
        open: r.get(4)?,
        head: r.get(5)?,
        base: r.get(6)?,
        draft: r.get(7)?,
    })
}

/// Attach labels and comments to a row.
fn load_issue(c: &Connection, key: &str, row: &ItemRow) -> rusqlite::Result<Issue> {
    let n = row.number as i64;
    let mut stmt = c.prepare_cached(
        "SELECT label FROM labels WHERE repo = ?1 AND number = ?2 ORDER BY rowid",
    )?;
    let labels = stmt
        .query_map(params![key, n], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let mut stmt = c.prepare_cached(
        "SELECT id, author, body FROM comments WHERE repo = ?1 AND number = ?2 ORDER BY id",
    )?;
    let comments = stmt
        .query_map(params![key, n], |r| {
            Ok(Comment {
                id: r.get::<_, i64>(0)? as u64,
                author: r.get(1)?,
                trusted: false,
                body: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Issue {
        number: row.number,
        title: row.title.clone(),
        body: row.body.clone(),
        author: row.author.clone(),
        trusted: false,
        labels,
        open: row.open,
        comments,
    })
}

/// The review threads of pull request `number`, oldest first, each with its
/// line comment and replies in order.
fn load_threads(c: &Connection, key: &str, number: u64) -> rusqlite::Result<Vec<ReviewThread>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, in_reply_to, author, path, line, new_side, resolved, body
         FROM review_comments WHERE repo = ?1 AND number = ?2 ORDER BY id",
    )?;
    let rows = stmt
        .query_map(params![key, number as i64], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, bool>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut threads: Vec<ReviewThread> = Vec::new();
    for (id, in_reply_to, author, path, line, new_side, resolved, body) in rows {
        let comment = Comment {
            id,
            author,
            trusted: false,
            body,
        };
        match in_reply_to.and_then(|root| threads.iter_mut().find(|t| t.id == root)) {
            Some(thread) => thread.comments.push(comment),
            None => threads.push(ReviewThread {
                id,
                path,
                line: Some(line),
                new_side,
                resolved,
                comments: vec![comment],
            }),
        }
    }
    Ok(threads)
}

/// A write transaction that takes the write lock at its start. A deferred
/// one reads first and upgrades later, and in WAL mode that upgrade fails at
/// once ("database is locked", no busy wait) when another connection — the
/// CLI, `kiln serve`'s event pump, a run's effects — committed in between.
fn write_tx(c: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

fn state_clause(state: StateFilter) -> &'static str {
    match state {
        StateFilter::Open => "AND open = 1",
        StateFilter::Closed => "AND open = 0",
        StateFilter::All => "",
    }
}

fn next_number(c: &Connection, key: &str) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT COALESCE(MAX(number), 0) + 1 FROM items WHERE repo = ?1",
        [key],
        |r| r.get(0),
    )
}

#[async_trait::async_trait]
impl Forge for LocalForge {
    fn repo(&self) -> &RepoRef {
        &self.repo
    }

    async fn default_branch(&self) -> Result<String, ForgeError> {
        let key = self.key.clone();
        self.with_db(move |c| {
            Ok(c.query_row(
                "SELECT default_branch FROM repos WHERE repo = ?1",
                [key],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn git_remote(&self) -> Result<GitRemote, ForgeError> {
        Ok(GitRemote {
            url: path_str(&self.bare_repo())?.to_string(),
            authorization: None,
        })
    }

    async fn push(&self, local: &Path, commit: &str, branch: &str) -> Result<(), ForgeError> {
        check_kiln_branch(branch)?;
        if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ForgeError::Invalid(format!(
                "commit {commit:?} is not a hexadecimal object id"
            )));
        }
        let bare = self.bare_repo();
        let refspec = format!("+{commit}:refs/heads/{branch}");
        git(
            Some(local),
            &["push", "--quiet", "--no-verify", path_str(&bare)?, &refspec],
        )
        .await?;
        self.synchronized(branch).await
    }

    async fn get_issue(&self, number: u64) -> Result<Issue, ForgeError> {
        let key = self.key.clone();
        let repo = self.key.clone();
        self.with_db(move |c| {
            let row = c
                .query_row(
                    &format!(
                        "SELECT {ITEM_COLUMNS} FROM items WHERE repo = ?1 AND number = ?2 AND is_pr = 0"
                    ),
                    params![key, number as i64],
                    item_row,
                )
                .optional()?
                .ok_or_else(|| {
                    DbError::Forge(ForgeError::NotFound(format!("issue #{number} in {repo}")))
                })?;
            Ok(load_issue(c, &key, &row)?)
        })
        .await
    }

    async fn list_issues(&self, state: StateFilter) -> Result<Vec<Issue>, ForgeError> {
        let key = self.key.clone();
        self.with_db(move |c| {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE repo = ?1 AND is_pr = 0 {} ORDER BY number DESC",
                state_clause(state)
            );
            let rows = c
                .prepare(&sql)?
                .query_map([&key], item_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .iter()
                .map(|r| load_issue(c, &key, r))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn create_issue(&self, issue: NewIssue) -> Result<u64, ForgeError> {
        if issue.title.trim().is_empty() {
            return Err(ForgeError::Rejected("an issue needs a title".into()));
        }
        let (key, actor) = (self.key.clone(), self.actor.clone());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let n = next_number(&tx, &key)?;
            tx.execute(
                "INSERT INTO items (repo, number, is_pr, title, body, author, open)
                 VALUES (?1, ?2, 0, ?3, ?4, ?5, 1)",
                params![key, n, issue.title, issue.body, actor],
            )?;
            for l in &issue.labels {
                tx.execute(
                    "INSERT OR IGNORE INTO labels (repo, number, label) VALUES (?1, ?2, ?3)",
                    params![key, n, l],
                )?;
            }
            outbox::record_item(&tx, &key, n as u64, &actor, outbox::ItemAction::Opened)?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn comment(&self, number: u64, body: &str) -> Result<u64, ForgeError> {
        if body.trim().is_empty() {
            return Err(ForgeError::Rejected("a comment needs a body".into()));
        }
        self.require_item(number).await?;
        let (key, actor, body) = (self.key.clone(), self.actor.clone(), body.to_string());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            tx.execute(
                "INSERT INTO comments (repo, number, author, body) VALUES (?1, ?2, ?3, ?4)",
                params![key, number as i64, actor, body],
            )?;
            let id = tx.last_insert_rowid() as u64;
            outbox::record_comment(&tx, &key, number, id, &actor, &body)?;
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn edit_comment(&self, comment_id: u64, body: &str) -> Result<(), ForgeError> {
        let (key, body, actor) = (self.key.clone(), body.to_string(), self.actor.clone());
        let changed = self
            .with_db(move |c| {
                let tx = write_tx(c)?;
                let changed = tx.execute(
                    "UPDATE comments SET body = ?1 WHERE id = ?2 AND repo = ?3",
                    params![body, comment_id as i64, key],
                )?;
                if changed > 0 {
                    outbox::record_comment_edited(&tx, &key, comment_id, &actor)?;
                }
                tx.commit()?;
                Ok(changed)
            })
            .await?;
        if changed == 0 {
            return Err(ForgeError::NotFound(format!(
                "comment {comment_id} in {}",
                self.key
            )));
        }
        Ok(())
    }

    async fn add_labels(&self, number: u64, labels: &[String]) -> Result<(), ForgeError> {
        if let Some(bad) = labels.iter().find(|l| l.trim().is_empty() || l.len() > 50) {
            return Err(ForgeError::Rejected(format!(
                "label {bad:?} must be 1-50 characters"
            )));
        }
        self.require_item(number).await?;
        let (key, labels, actor) = (self.key.clone(), labels.to_vec(), self.actor.clone());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            for l in &labels {
                let added = tx.execute(
                    "INSERT OR IGNORE INTO labels (repo, number, label) VALUES (?1, ?2, ?3)",
                    params![key, number as i64, l],
                )?;
                // A label already there changes nothing, and GitHub sends no event.
                if added == 1 {
                    outbox::record_item(&tx, &key, number, &actor, outbox::ItemAction::Labeled(l))?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn remove_label(&self, number: u64, label: &str) -> Result<(), ForgeError> {
        self.require_item(number).await?;
        let (key, label, actor) = (self.key.clone(), label.to_string(), self.actor.clone());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let removed = tx.execute(
                "DELETE FROM labels WHERE repo = ?1 AND number = ?2 AND label = ?3",
                params![key, number as i64, label],
            )?;
            if removed == 1 {
                outbox::record_item(
                    &tx,
                    &key,
                    number,
                    &actor,
                    outbox::ItemAction::Unlabeled(&label),
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn get_pull_request(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let (key, repo) = (self.key.clone(), self.key.clone());
        let (issue, head, base, draft) = self
            .with_db(move |c| {
                let row = c
                    .query_row(
                        &format!(
                            "SELECT {ITEM_COLUMNS} FROM items WHERE repo = ?1 AND number = ?2 AND is_pr = 1"
                        ),
                        params![key, number as i64],
                        item_row,
                    )
                    .optional()?
                    .ok_or_else(|| {
                        DbError::Forge(ForgeError::NotFound(format!(
                            "pull request #{number} in {repo}"
                        )))
                    })?;
                let issue = load_issue(c, &key, &row)?;
                Ok((
                    issue,
                    row.head.unwrap_or_default(),
                    row.base.unwrap_or_default(),
                    row.draft,
                ))
            })
            .await?;
        let diff = self.diff(&base, &head).await?;
        let head_sha = self.head_sha(number, &head).await?;
        let key = self.key.clone();
        let review_threads = self
            .with_db(move |c| Ok(load_threads(c, &key, number)?))
            .await?;
        Ok(PullRequest {
            issue,
            head_branch: head,
            base_branch: base,
            draft,
            diff,
            head_sha,
            review_threads,
            // The local forge has no forks: every branch is the repository's.
            head_from_fork: false,
        })
    }

    async fn list_pull_requests(&self, state: StateFilter) -> Result<Vec<PullRequest>, ForgeError> {
        let key = self.key.clone();
        self.with_db(move |c| {
            let sql = format!(
                "SELECT {ITEM_COLUMNS} FROM items WHERE repo = ?1 AND is_pr = 1 {} ORDER BY number DESC",
                state_clause(state)
            );
            let rows = c
                .prepare(&sql)?
                .query_map([&key], item_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let mut prs = Vec::with_capacity(rows.len());
            for r in rows {
                let issue = load_issue(c, &key, &r)?;
                prs.push(PullRequest {
                    issue,
                    head_branch: r.head.unwrap_or_default(),
                    base_branch: r.base.unwrap_or_default(),
                    draft: r.draft,
                    diff: String::new(),
                    head_sha: String::new(),
                    review_threads: Vec::new(),
                    head_from_fork: false,
                });
            }
            Ok(prs)
        })
        .await
    }

    async fn edit_pull_request_body(&self, number: u64, body: &str) -> Result<(), ForgeError> {
        let (key, body) = (self.key.clone(), body.to_string());
        let changed = self
            .with_db(move |c| {
                Ok(c.execute(
                    "UPDATE items SET body = ?1 WHERE repo = ?2 AND number = ?3 AND is_pr = 1",
                    params![body, key, number as i64],
                )?)
            })
            .await?;
        if changed == 0 {
            return Err(ForgeError::NotFound(format!(
                "pull request #{number} in {}",
                self.key
            )));
        }
        Ok(())
    }

    async fn create_draft_pull_request(&self, pr: NewPullRequest) -> Result<u64, ForgeError> {
        if pr.title.trim().is_empty() {
            return Err(ForgeError::Rejected("a pull request needs a title".into()));
        }
        for (what, b) in [("head", &pr.head), ("base", &pr.base)] {
            if !self.branch_exists(b).await? {
                return Err(ForgeError::Rejected(format!(
                    "{what} branch {b:?} does not exist in {}",
                    self.key
                )));
            }
        }
        if pr.head == pr.base {
            return Err(ForgeError::Rejected(format!(
                "head and base are both {:?}",
                pr.head
            )));
        }
        let (key, actor) = (self.key.clone(), self.actor.clone());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let open: Option<i64> = tx
                .query_row(
                    "SELECT number FROM items WHERE repo = ?1 AND is_pr = 1 AND open = 1 AND head = ?2",
                    params![key, pr.head],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(n) = open {
                return Err(DbError::Forge(ForgeError::Rejected(format!(
                    "a pull request already exists for {}: #{n}",
                    pr.head
                ))));
            }
            let n = next_number(&tx, &key)?;
            tx.execute(
                "INSERT INTO items (repo, number, is_pr, title, body, author, open, head, base, draft)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, 1, ?6, ?7, 1)",
                params![key, n, pr.title, pr.body, actor, pr.head, pr.base],
            )?;
            outbox::record_item(&tx, &key, n as u64, &actor, outbox::ItemAction::Opened)?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_review(&self, number: u64, review: NewReview) -> Result<u64, ForgeError> {
        let pr = self.get_pull_request(number).await?;
        let on_diff = CommentableLines::parse(&pr.diff);
        if let Some(bad) = review
            .comments
            .iter()
            .find(|c| !on_diff.contains(&c.path, c.line, c.new_side))
        {
            return Err(ForgeError::Rejected(format!(
                "review comment on {}:{} ({} side) is not on a line of the diff of #{number}",
                bad.path,
                bad.line,
                if bad.new_side { "new" } else { "old" }
            )));
        }
        let (key, actor) = (self.key.clone(), self.actor.clone());
        // As on GitHub, a pull request's author cannot request changes on it:
        // the verdict goes into the text of a comment review.
        let own = pr.issue.author == actor;
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let (state, body) = match (review.request_changes, own) {
                (true, false) => ("CHANGES_REQUESTED", review.body.clone()),
                (true, true) => ("COMMENTED", super::changes_requested_in_text(&review.body)),
                (false, _) => ("COMMENTED", review.body.clone()),
            };
            tx.execute(
                "INSERT INTO reviews (repo, number, author, state, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, number as i64, actor, state, body],
            )?;
            let id = tx.last_insert_rowid();
            for lc in &review.comments {
                tx.execute(
                    "INSERT INTO review_comments
                         (review_id, repo, number, author, path, line, new_side, severity, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        id,
                        key,
                        number as i64,
                        actor,
                        lc.path,
                        lc.line,
                        lc.new_side,
                        severity_name(lc.severity),
                        lc.body
                    ],
                )?;
            }
            outbox::record_review(&tx, &key, number, id as u64, &actor, state, &body)?;
            tx.commit()?;
            Ok(id as u64)
        })
        .await
    }

    async fn list_reviews(&self, number: u64) -> Result<Vec<Review>, ForgeError> {
        self.require_item(number).await?;
        let key = self.key.clone();
        self.with_db(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, author, state, body FROM reviews WHERE repo = ?1 AND number = ?2 ORDER BY id",
            )?;
            let heads = stmt
                .query_map(params![key, number as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(heads.len());
            let mut stmt = c.prepare(
                "SELECT path, line, new_side, severity, body FROM review_comments
                 WHERE review_id = ?1 ORDER BY id",
            )?;
            for (id, author, state, body) in heads {
                let comments = stmt
                    .query_map([id], |r| {
                        Ok(LineComment {
                            path: r.get(0)?,
                            line: r.get(1)?,
                            new_side: r.get(2)?,
                            severity: parse_severity(
                                r.get::<_, Option<String>>(3)?.as_deref().unwrap_or(""),
                            ),
                            body: r.get(4)?,
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                out.push(Review {
                    id: id as u64,
                    author,
                    state,
                    body,
                    comments,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn reply_to_review_comment(
        &self,
        number: u64,
        comment_id: u64,
        body: &str,
    ) -> Result<u64, ForgeError> {
        if body.trim().is_empty() {
            return Err(ForgeError::Rejected("a reply needs a body".into()));
        }
        self.require_pull_request(number).await?;
        let (key, actor, body) = (self.key.clone(), self.actor.clone(), body.to_string());
        let repo = self.key.clone();
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let parent = tx
                .query_row(
                    "SELECT in_reply_to, path, line, new_side FROM review_comments
                     WHERE id = ?1 AND repo = ?2 AND number = ?3",
                    params![comment_id as i64, key, number as i64],
                    |r| {
                        Ok((
                            r.get::<_, Option<i64>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, bool>(3)?,
                        ))
                    },
                )
                .optional()?
                .ok_or_else(|| {
                    DbError::Forge(ForgeError::NotFound(format!(
                        "review comment {comment_id} on pull request #{number} in {repo}"
                    )))
                })?;
            let (in_reply_to, path, line, new_side) = parent;
            // As on GitHub ("replies to replies are not supported"): a reply
            // answers the thread's first comment.
            if let Some(root) = in_reply_to {
                return Err(DbError::Forge(ForgeError::Rejected(format!(
                    "review comment {comment_id} is a reply; reply to its thread's first comment {root}"
                ))));
            }
            tx.execute(
                "INSERT INTO review_comments
                     (review_id, repo, number, author, path, line, new_side, severity, body, in_reply_to)
                 VALUES (NULL, ?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)",
                params![key, number as i64, actor, path, line, new_side, body, comment_id as i64],
            )?;
            let id = tx.last_insert_rowid() as u64;
            outbox::record_review_reply(&tx, &key, number, id, &actor, &body)?;
            tx.commit()?;
            Ok(id)
        })
        .await
    }

    async fn set_status(&self, number: u64, status: &CommitStatus) -> Result<(), ForgeError> {
        let pr = self.pull_request_head(number).await?;
        let sha = self.head_sha(number, &pr).await?;
        let key = self.key.clone();
        let status = CommitStatus {
            description: status_description(&status.description).to_string(),
            ..status.clone()
        };
        self.with_db(move |c| {
            c.execute(
                "INSERT INTO statuses (repo, sha, context, state, description)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (repo, sha, context)
                 DO UPDATE SET state = excluded.state, description = excluded.description",
                params![
                    key,
                    sha,
                    status.context,
                    status.state.as_str(),
                    status.description
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn own_login(&self) -> Result<String, ForgeError> {
        Ok(self.actor.clone())
    }

    async fn label_events(&self, number: u64) -> Result<Vec<LabelEvent>, ForgeError> {
        self.require_item(number).await?;
        let key = self.key.clone();
        // The outbox is the forge's history: every label change is there,
        // as the webhook payload it delivers.
        self.with_db(move |c| {
            let mut stmt = c.prepare(
                "SELECT json_extract(payload, '$.action'), json_extract(payload, '$.label.name'),
                        json_extract(payload, '$.sender.login'), created_ms
                 FROM events
                 WHERE repo = ?1 AND name IN ('issues', 'pull_request')
                   AND json_extract(payload, '$.action') IN ('labeled', 'unlabeled')
                   AND COALESCE(json_extract(payload, '$.issue.number'),
                                json_extract(payload, '$.pull_request.number')) = ?2
                 ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![key, number as i64], |r| {
                    Ok(LabelEvent {
                        added: r.get::<_, String>(0)? == "labeled",
                        label: r.get(1)?,
                        actor: r.get(2)?,
                        at_ms: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn state_events(&self, number: u64) -> Result<Vec<StateEvent>, ForgeError> {
        self.require_item(number).await?;
        let key = self.key.clone();
        // As for labels, the outbox is the history: a merge is recorded as
        // the pull request's `closed` event with `merged` set.
        self.with_db(move |c| {
            let mut stmt = c.prepare(
                "SELECT json_extract(payload, '$.action'),
                        COALESCE(json_extract(payload, '$.pull_request.merged'), 0),
                        json_extract(payload, '$.sender.login'), created_ms
                 FROM events
                 WHERE repo = ?1 AND name IN ('issues', 'pull_request')
                   AND json_extract(payload, '$.action') IN ('closed', 'reopened')
                   AND COALESCE(json_extract(payload, '$.issue.number'),
                                json_extract(payload, '$.pull_request.number')) = ?2
                 ORDER BY id",
            )?;
            let rows = stmt
                .query_map(params![key, number as i64], |r| {
                    let action: String = r.get(0)?;
                    let merged: bool = r.get(1)?;
                    Ok(StateEvent {
                        change: match (action.as_str(), merged) {
                            ("reopened", _) => StateChange::Reopened,
                            (_, true) => StateChange::Merged,
                            _ => StateChange::Closed,
                        },
                        actor: r.get(2)?,
                        at_ms: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn list_statuses(&self, number: u64) -> Result<Vec<CommitStatus>, ForgeError> {
        let head = self.pull_request_head(number).await?;
        let sha = self.head_sha(number, &head).await?;
        let key = self.key.clone();
        self.with_db(move |c| {
            let mut stmt = c.prepare(
                "SELECT context, state, description FROM statuses
                 WHERE repo = ?1 AND sha = ?2 ORDER BY context",
            )?;
            let rows = stmt
                .query_map(params![key, sha], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .map(|(context, state, description)| CommitStatus {
                    context,
                    // Only this code writes the column; an unknown value
                    // would be a corrupt row, read as the safe `error`.
                    state: StatusState::parse(&state).unwrap_or(StatusState::Error),
                    description,
                })
                .collect())
        })
        .await
    }

    async fn permission(&self, login: &str) -> Result<Permission, ForgeError> {
        let (key, login) = (self.key.clone(), login.to_string());
        self.with_db(move |c| {
            let p: Option<String> = c
                .query_row(
                    "SELECT permission FROM collaborators WHERE repo = ?1 AND login = ?2",
                    params![key, login],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(p.map(|p| parse_permission(&p)).unwrap_or(Permission::None))
        })
        .await
    }
}

impl LocalForge {
    /// Merge a pull request into its base with a merge commit, and close it.
    /// A human's action (`kiln pr merge`): it is not part of the [`Forge`]
    /// trait, so no run can reach it.
    pub async fn merge(&self, number: u64) -> Result<String, ForgeError> {
        let pr = self.get_pull_request(number).await?;
        if !pr.issue.open {
            return Err(ForgeError::Rejected(format!(
                "pull request #{number} is already closed"
            )));
        }
        let bare = self.bare_repo();
        let work = tempfile::tempdir().map_err(|e| ForgeError::Git(e.to_string()))?;
        let w = work.path().join("merge");
        let ws = path_str(&w)?;
        git(
            None,
            &[
                "clone",
                "--quiet",
                "--template=",
                "-b",
                &pr.base_branch,
                path_str(&bare)?,
                ws,
            ],
        )
        .await?;
        let head = format!("origin/{}", pr.head_branch);
        let message = format!(
            "Merge pull request #{number} from {}\n\n{}",
            pr.head_branch, pr.issue.title
        );
        git(
            Some(&w),
            &[
                "merge",
                "--quiet",
                "--no-ff",
                "--no-edit",
                "-m",
                &message,
                &head,
            ],
        )
        .await?;
        let spec = format!("HEAD:refs/heads/{}", pr.base_branch);
        git(Some(&w), &["push", "--quiet", "origin", &spec]).await?;
        let sha = git(Some(&w), &["rev-parse", "HEAD"])
            .await?
            .trim()
            .to_string();
        self.set_open(number, false, true).await?;
        Ok(sha)
    }

    /// Close an issue or pull request (the CLI's `kiln issue close`).
    pub async fn close(&self, number: u64) -> Result<(), ForgeError> {
        self.set_open(number, false, false).await
    }

    /// Reopen a closed issue or pull request (the CLI's `kiln issue reopen`).
    pub async fn reopen(&self, number: u64) -> Result<(), ForgeError> {
        self.set_open(number, true, false).await
    }

    /// Opens or closes `number`, recording the event when its state changed.
    async fn set_open(&self, number: u64, open: bool, merged: bool) -> Result<(), ForgeError> {
        self.require_item(number).await?;
        let (key, actor) = (self.key.clone(), self.actor.clone());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let changed = tx.execute(
                "UPDATE items SET open = ?3 WHERE repo = ?1 AND number = ?2 AND open != ?3",
                params![key, number as i64, open],
            )?;
            if changed == 1 {
                let action = if open {
                    outbox::ItemAction::Reopened
                } else {
                    outbox::ItemAction::Closed { merged }
                };
                outbox::record_item(&tx, &key, number, &actor, action)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// Records `pull_request.synchronize` for the open pull request whose
    /// head is `branch`, if there is one (new commits were pushed to it).
    async fn synchronized(&self, branch: &str) -> Result<(), ForgeError> {
        let (key, actor, branch) = (self.key.clone(), self.actor.clone(), branch.to_string());
        self.with_db(move |c| {
            let tx = write_tx(c)?;
            let open: Option<i64> = tx
                .query_row(
                    "SELECT number FROM items WHERE repo = ?1 AND is_pr = 1 AND open = 1 AND head = ?2",
                    params![key, branch],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(n) = open {
                outbox::record_item(&tx, &key, n as u64, &actor, outbox::ItemAction::Synchronize)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sample() -> (tempfile::TempDir, LocalForge) {
        let root = tempfile::tempdir().expect("tempdir");
        let src = root.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("README.md"), "hello\n").expect("write");
        let forge = LocalForge::create(
            &root.path().join("forge"),
            RepoRef::parse("local/sample").expect("repo"),
            "alice",
            Some(&src),
        )
        .await
        .expect("create");
        (root, forge)
    }

    /// The outbox's events as (name, action, sender), parsed by the intake's
    /// own parser: what `kiln serve` will route.
    fn routed(root: &Path) -> Vec<(String, String, String)> {
        use crate::intake::event::{Parsed, WebhookEvent, parse};
        let outbox = Outbox::open(root).expect("outbox");
        outbox
            .after(0, 100)
            .expect("events")
            .into_iter()
            .map(|e| {
                let Ok(Parsed::Known(ev)) = parse(&e.name, e.payload.as_bytes()) else {
                    panic!("{} does not parse: {}", e.name, e.payload);
                };
                let (action, sender) = match *ev {
                    WebhookEvent::Issues(i) => (i.action, i.sender.login),
                    WebhookEvent::IssueComment(c) => (c.action, c.sender.login),
                    WebhookEvent::PullRequest(p) => (p.action, p.sender.login),
                    WebhookEvent::PullRequestReview(r) => (r.action, r.sender.login),
                    WebhookEvent::PullRequestReviewComment(c) => (c.action, c.sender.login),
                    other => panic!("unexpected {other:?}"),
                };
                (e.name, action, sender)
            })
            .collect()
    }

    #[tokio::test]
    async fn every_change_is_one_event_in_order_and_a_no_op_is_none() {
        let (root, forge) = sample().await;
        let froot = root.path().join("forge");
        let stranger = forge.acting_as("stranger");
        let alice = forge.acting_as("alice");
        let n = stranger
            .create_issue(NewIssue {
                title: "crash".into(),
                body: "it crashes".into(),
                labels: vec![],
            })
            .await
            .expect("issue");
        alice.add_labels(n, &["bug".into()]).await.expect("label");
        alice
            .add_labels(n, &["bug".into()])
            .await
            .expect("label again");
        let c = forge.comment(n, "on it").await.expect("comment");
        forge.edit_comment(c, "on it (edited)").await.expect("edit");
        alice.remove_label(n, "bug").await.expect("unlabel");
        alice.remove_label(n, "bug").await.expect("unlabel again");
        alice.close(n).await.expect("close");
        alice.close(n).await.expect("close again");
        alice.reopen(n).await.expect("reopen");
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            routed(&froot),
            vec![
                s("issues", "opened", "stranger"),
                s("issues", "labeled", "alice"),
                s("issue_comment", "created", KILN_LOGIN),
                s("issue_comment", "edited", KILN_LOGIN),
                s("issues", "unlabeled", "alice"),
                s("issues", "closed", "alice"),
                s("issues", "reopened", "alice"),
            ]
        );
        // The consumer's cursor only moves forward, and survives reopening.
        let outbox = Outbox::open(&froot).expect("outbox");
        assert_eq!(outbox.cursor("serve-1").expect("cursor"), 0);
        outbox.advance("serve-1", 5).expect("advance");
        outbox.advance("serve-1", 3).expect("no step back");
        let again = Outbox::open(&froot).expect("outbox");
        assert_eq!(again.cursor("serve-1").expect("cursor"), 5);
        assert_eq!(again.cursor("serve-2").expect("cursor"), 0);
        assert_eq!(again.after(5, 100).expect("after").len(), 2);
        assert_eq!(again.instance(), outbox.instance());
        assert_eq!(again.instance().len(), 16, "{}", again.instance());
    }

    #[tokio::test]
    async fn pull_requests_reviews_and_pushes_are_events_with_the_head_branch() {
        let (root, forge) = sample().await;
        let froot = root.path().join("forge");
        // A commit on a kiln/ branch, pushed as Kiln would.
        let work = root.path().join("work");
        let bare = forge.bare_repo();
        git(
            None,
            &[
                "clone",
                "--quiet",
                path_str(&bare).expect("path"),
                path_str(&work).expect("path"),
            ],
        )
        .await
        .expect("clone");
        std::fs::write(work.join("README.md"), "hello\nworld\n").expect("write");
        git(
            Some(&work),
            &[
                "-c",
                "user.name=k",
                "-c",
                "user.email=k@k",
                "commit",
                "-qam",
                "more",
            ],
        )
        .await
        .expect("commit");
        let head = git(Some(&work), &["rev-parse", "HEAD"]).await.expect("rev");
        forge
            .push(&work, head.trim(), "kiln/implement-issue-1")
            .await
            .expect("push without a PR");
        let pr = forge
            .create_draft_pull_request(NewPullRequest {
                title: "Fix".into(),
                body: "Closes #1".into(),
                head: "kiln/implement-issue-1".into(),
                base: "main".into(),
            })
            .await
            .expect("pr");
        forge
            .acting_as("alice")
            .create_review(
                pr,
                NewReview {
                    request_changes: true,
                    body: "please".into(),
                    comments: vec![LineComment {
                        path: "README.md".into(),
                        line: 2,
                        new_side: true,
                        severity: Severity::Suggestion,
                        body: "say more".into(),
                    }],
                },
            )
            .await
            .expect("review");
        std::fs::write(work.join("README.md"), "hello\nworld!\n").expect("write");
        git(
            Some(&work),
            &[
                "-c",
                "user.name=k",
                "-c",
                "user.email=k@k",
                "commit",
                "-qam",
                "again",
            ],
        )
        .await
        .expect("commit");
        let head = git(Some(&work), &["rev-parse", "HEAD"]).await.expect("rev");
        forge
            .push(&work, head.trim(), "kiln/implement-issue-1")
            .await
            .expect("push onto the PR");
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(
            routed(&froot),
            vec![
                s("pull_request", "opened", KILN_LOGIN),
                s("pull_request_review", "submitted", "alice"),
                s("pull_request", "synchronize", KILN_LOGIN),
            ],
            "a push to a branch without a pull request is no event"
        );
        let events = Outbox::open(&froot)
            .expect("outbox")
            .after(0, 10)
            .expect("events");
        let review: serde_json::Value = serde_json::from_str(&events[1].payload).expect("json");
        assert_eq!(review["review"]["state"], "changes_requested");
        assert_eq!(
            review["pull_request"]["head"]["ref"],
            "kiln/implement-issue-1"
        );
        assert_eq!(
            review["pull_request"]["head"]["repo"]["full_name"],
            "local/sample"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_on_separate_connections_wait_for_each_other_instead_of_failing() {
        // The CLI, kiln serve's pump and a run's effects each hold their own
        // connection to forge.sqlite; none of their writes may fail "locked",
        // even those that read before they write (numbering a new issue).
        let (root, forge) = sample().await;
        let froot = root.path().join("forge");
        let mut tasks = Vec::new();
        for w in 0..4 {
            let f = LocalForge::open(&froot, forge.repo().clone())
                .expect("open")
                .acting_as(&format!("user{w}"));
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let n = f
                        .create_issue(NewIssue {
                            title: format!("issue {w}-{i}"),
                            body: String::new(),
                            labels: vec![],
                        })
                        .await?;
                    f.add_labels(n, &[format!("l{w}")]).await?;
                }
                Ok::<_, ForgeError>(())
            }));
        }
        let outbox = Outbox::open(&froot).expect("outbox");
        for i in 0..200 {
            outbox
                .advance("pump", i)
                .expect("the cursor moves while others write");
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.expect("task").expect("every write lands");
        }
        let issues = forge.list_issues(StateFilter::All).await.expect("issues");
        assert_eq!(issues.len(), 100);
        let mut numbers: Vec<u64> = issues.iter().map(|i| i.number).collect();
        numbers.dedup();
        assert_eq!(numbers.len(), 100, "each issue its own number");
    }

    #[tokio::test]
    async fn a_created_repository_has_its_files_on_main_and_its_owner_is_admin() {
        let (_root, forge) = sample().await;
        let out = git(Some(&forge.bare_repo()), &["show", "main:README.md"])
            .await
            .expect("git show");
        assert_eq!(out, "hello\n");
        assert_eq!(
            forge.permission("alice").await.ok(),
            Some(Permission::Admin)
        );
        assert_eq!(
            forge.permission("mallory").await.ok(),
            Some(Permission::None)
        );
    }

    #[tokio::test]
    async fn opening_a_missing_repository_says_how_to_create_it() {
        let (root, _forge) = sample().await;
        let err = LocalForge::open(
            &root.path().join("forge"),
            RepoRef::parse("local/nope").expect("repo"),
        )
        .expect_err("missing repo");
        assert!(
            err.to_string().contains("kiln repo create local/nope"),
            "{err}"
        );
    }

    // A forge created by an earlier kiln keeps its reviews' line comments,
    // which get ids a reply can answer.
    #[tokio::test]
    async fn a_version_1_database_is_migrated_with_its_review_comments() {
        let root = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(root.path().join("forge.sqlite")).expect("open");
        conn.execute_batch(&format!(
            "BEGIN; {MIGRATION_1} PRAGMA user_version = 1;
             INSERT INTO repos VALUES ('local/old', 'main');
             INSERT INTO items (repo, number, is_pr, title, body, author, open, head, base, draft)
                 VALUES ('local/old', 1, 1, 'PR', '', 'kiln[bot]', 1, 'kiln/x', 'main', 1);
             INSERT INTO reviews (repo, number, author, state, body)
                 VALUES ('local/old', 1, 'bob', 'CHANGES_REQUESTED', 'fix');
             INSERT INTO review_comments VALUES (1, 'a.rs', 3, 1, 'NIT', 'first');
             INSERT INTO review_comments VALUES (1, 'b.rs', 7, 0, 'CRITICAL', 'second');
             COMMIT;"
        ))
        .expect("version 1 schema");
        drop(conn);
        let conn = open_db(root.path()).expect("migrate");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let threads = load_threads(&conn, "local/old", 1).expect("threads");
        let seen: Vec<(&str, Option<u32>, bool, &str, &str)> = threads
            .iter()
            .map(|t| {
                (
                    t.path.as_str(),
                    t.line,
                    t.new_side,
                    t.comments[0].author.as_str(),
                    t.comments[0].body.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a.rs", Some(3), true, "bob", "first"),
                ("b.rs", Some(7), false, "bob", "second")
            ],
            "both comments kept, in order, with the review's author"
        );
        assert!(threads[0].id < threads[1].id && threads[0].id > 0);
        drop(conn);
        assert!(
            open_db(root.path()).is_ok(),
            "opening a migrated database again is a no-op"
        );
    }

    #[tokio::test]
    async fn a_newer_database_is_refused_with_the_versions() {
        let root = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(root.path().join("forge.sqlite")).expect("open");
        conn.pragma_update(None, "user_version", 99)
            .expect("pragma");
        drop(conn);
        let err = list_repos(root.path()).expect_err("newer schema");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
