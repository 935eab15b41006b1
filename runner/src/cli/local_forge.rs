//! `kiln repo|issue|pr ...`: the local forge from the command line — create
//! a repository from a directory, open and label issues, read the pull
//! requests and reviews that runs produced, review and merge them. Every
//! change is a forge event that a running `kiln serve` acts on.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiln::forge::local::{self, LocalForge};
use kiln::forge::{
    Forge, LineComment, NewIssue, NewReview, Permission, RepoRef, Severity, StateFilter,
};

/// Where Kiln keeps its data, and which local-forge repository to use.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Kiln's data directory (store, local forge). Default:
    /// $XDG_DATA_HOME/kiln or ~/.local/share/kiln.
    #[arg(long, env = "KILN_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The local-forge repository, OWNER/NAME. May be left out when the
    /// local forge has exactly one repository.
    #[arg(long, short = 'R', env = "KILN_REPO", global = true)]
    pub repo: Option<String>,
}

impl LocalArgs {
    /// The data directory, resolved.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        data_dir(self.data_dir.as_deref())
    }

    /// The local forge's root directory.
    pub fn forge_root(&self) -> anyhow::Result<PathBuf> {
        Ok(self.data_dir()?.join("forge"))
    }

    /// Open the chosen repository, acting as the local user.
    pub fn open(&self) -> anyhow::Result<LocalForge> {
        let root = self.forge_root()?;
        let repo = match &self.repo {
            Some(r) => RepoRef::parse(r)?,
            None => {
                let repos = local::list_repos(&root)?;
                match repos.as_slice() {
                    [one] => one.clone(),
                    [] => bail!(
                        "the local forge at {} has no repository yet: create one with \
                         `kiln repo create local/NAME --from DIR` (or run `kiln demo`)",
                        root.display()
                    ),
                    many => bail!(
                        "the local forge has {} repositories; choose one with --repo ({})",
                        many.len(),
                        many.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        };
        Ok(LocalForge::open(&root, repo)?.acting_as(&local_user()))
    }
}

/// Kiln's data directory: the flag, or $XDG_DATA_HOME/kiln, or
/// ~/.local/share/kiln.
pub fn data_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("neither --data-dir, KILN_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

/// The login the local user acts as on the local forge.
pub fn local_user() -> String {
    std::env::var("KILN_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "operator".to_string())
}

/// `kiln repo ...`.
#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository on the local forge from a directory's files.
    Create {
        /// OWNER/NAME, e.g. local/myproject.
        name: String,
        /// The directory whose files become the first commit of `main`.
        #[arg(long)]
        from: PathBuf,
    },
    /// List the local forge's repositories.
    List,
    /// Give a login a permission level (who may trigger runs: write and up).
    Grant {
        /// The login.
        login: String,
        /// The level.
        level: Level,
    },
}

/// Permission levels, as GitHub names them.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Level {
    /// No access.
    None,
    /// Read.
    Read,
    /// Triage.
    Triage,
    /// Write.
    Write,
    /// Maintain.
    Maintain,
    /// Admin.
    Admin,
}

impl From<Level> for Permission {
    fn from(l: Level) -> Self {
        match l {
            Level::None => Permission::None,
            Level::Read => Permission::Read,
            Level::Triage => Permission::Triage,
            Level::Write => Permission::Write,
            Level::Maintain => Permission::Maintain,
            Level::Admin => Permission::Admin,
        }
    }
}

/// `kiln issue ...`.
#[derive(Debug, Subcommand)]
pub enum IssueCommand {
    /// Open an issue.
    New {
        /// Title.
        #[arg(long, short)]
        title: String,
        /// Body text (`-` reads standard input).
        #[arg(long, short, default_value = "")]
        body: String,
        /// Read the body from a file.
        #[arg(long, conflicts_with = "body")]
        body_file: Option<PathBuf>,
        /// Labels to apply (repeatable).
        #[arg(long, short)]
        label: Vec<String>,
    },
    /// List issues.
    List {
        /// Which ones.
        #[arg(long, value_enum, default_value = "open")]
        state: State,
    },
    /// Show one issue with its comments.
    Show {
        /// Issue number.
        number: u64,
    },
    /// Add or remove labels (adding `ready-to-spec` or `ready-to-implement`
    /// is how a human starts the next role).
    Label {
        /// Issue or pull request number.
        number: u64,
        /// Labels to add.
        #[arg(long, short)]
        add: Vec<String>,
        /// Labels to remove.
        #[arg(long, short)]
        remove: Vec<String>,
    },
    /// Comment on an issue or pull request.
    Comment {
        /// Issue or pull request number.
        number: u64,
        /// The comment.
        body: String,
    },
    /// Close an issue or pull request.
    Close {
        /// Issue or pull request number.
        number: u64,
    },
    /// Reopen a closed issue or pull request.
    Reopen {
        /// Issue or pull request number.
        number: u64,
    },
}

/// `kiln pr ...`.
#[derive(Debug, Subcommand)]
pub enum PrCommand {
    /// List pull requests.
    List {
        /// Which ones.
        #[arg(long, value_enum, default_value = "open")]
        state: State,
    },
    /// Show a pull request with its comments and reviews.
    Show {
        /// Pull request number.
        number: u64,
    },
    /// Print a pull request's diff.
    Diff {
        /// Pull request number.
        number: u64,
    },
    /// Merge a pull request into its base (a human's action; agents never merge).
    Merge {
        /// Pull request number.
        number: u64,
    },
    /// Review a pull request: request changes (which starts Kiln's
    /// answering run on its own pull requests) or comment.
    Review {
        /// Pull request number.
        number: u64,
        /// Request changes (default: a comment review).
        #[arg(long)]
        request_changes: bool,
        /// The review's summary.
        #[arg(long, short, default_value = "")]
        body: String,
        /// A comment on a line of the diff's new side: `PATH:LINE=TEXT`
        /// (repeatable).
        #[arg(long = "line", value_name = "PATH:LINE=TEXT")]
        lines: Vec<String>,
    },
    /// Reply in a review thread (the id `kiln pr show` prints for it).
    Reply {
        /// Pull request number.
        number: u64,
        /// The thread's first comment id.
        comment_id: u64,
        /// The reply.
        body: String,
    },
}

/// `PATH:LINE=TEXT` as a new-side line comment.
fn parse_line_comment(spec: &str) -> anyhow::Result<LineComment> {
    let bad = || {
        anyhow::anyhow!(
            "--line {spec:?}: expected PATH:LINE=TEXT, e.g. src/lib.rs:12=use a constant"
        )
    };
    let (place, text) = spec.split_once('=').ok_or_else(bad)?;
    let (path, line) = place.rsplit_once(':').ok_or_else(bad)?;
    let line: u32 = line.parse().map_err(|_| bad())?;
    if path.is_empty() || text.trim().is_empty() || line == 0 {
        return Err(bad());
    }
    Ok(LineComment {
        path: path.to_string(),
        line,
        new_side: true,
        severity: Severity::Suggestion,
        body: text.to_string(),
    })
}

/// Open, closed or all.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum State {
    /// Open.
    Open,
    /// Closed.
    Closed,
    /// Both.
    All,
}

impl From<State> for StateFilter {
    fn from(s: State) -> Self {
        match s {
            State::Open => StateFilter::Open,
            State::Closed => StateFilter::Closed,
            State::All => StateFilter::All,
        }
    }
}

/// Run a `kiln repo` command.
pub async fn repo(cmd: RepoCommand, args: &LocalArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        RepoCommand::Create { name, from } => {
            let repo = RepoRef::parse(&name)?;
            let forge =
                LocalForge::create(&args.forge_root()?, repo, &local_user(), Some(&from)).await?;
            println!(
                "created {} at {} (you, {}, are its admin)",
                forge.repo(),
                forge.bare_repo().display(),
                local_user()
            );
        }
        RepoCommand::List => {
            for r in local::list_repos(&args.forge_root()?)? {
                println!("{r}");
            }
        }
        RepoCommand::Grant { login, level } => {
            let forge = args.open()?;
            let level: Permission = level.into();
            forge.set_permission(&login, level).await?;
            println!("{login} has {level} permission on {}", forge.repo());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a `kiln issue` command.
pub async fn issue(cmd: IssueCommand, args: &LocalArgs) -> anyhow::Result<ExitCode> {
    let forge = args.open()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        IssueCommand::New {
            title,
            body,
            body_file,
            label,
        } => {
            let body = match (body_file, body.as_str()) {
                (Some(f), _) => std::fs::read_to_string(&f)
                    .with_context(|| format!("cannot read {}", f.display()))?,
                (None, "-") => std::io::read_to_string(std::io::stdin())?,
                (None, b) => b.to_string(),
            };
            let n = forge
                .create_issue(NewIssue {
                    title,
                    body,
                    labels: label,
                })
                .await?;
            writeln!(out, "opened issue #{n} in {}", forge.repo())?;
        }
        IssueCommand::List { state } => {
            for i in forge.list_issues(state.into()).await? {
                writeln!(
                    out,
                    "#{:<4} {:<6} {}{}",
                    i.number,
                    if i.open { "open" } else { "closed" },
                    i.title,
                    labels_suffix(&i.labels)
                )?;
            }
        }
        IssueCommand::Show { number } => {
            let i = forge.get_issue(number).await?;
            write_issue(&mut out, &i)?;
        }
        IssueCommand::Label {
            number,
            add,
            remove,
        } => {
            if add.is_empty() && remove.is_empty() {
                bail!("nothing to do: give --add LABEL and/or --remove LABEL");
            }
            if !add.is_empty() {
                forge.add_labels(number, &add).await?;
            }
            for l in &remove {
                forge.remove_label(number, l).await?;
            }
            writeln!(out, "labels of #{number} updated")?;
        }
        IssueCommand::Comment { number, body } => {
            let id = forge.comment(number, &body).await?;
            writeln!(out, "comment {id} added to #{number}")?;
        }
        IssueCommand::Close { number } => {
            forge.close(number).await?;
            writeln!(out, "#{number} closed")?;
        }
        IssueCommand::Reopen { number } => {
            forge.reopen(number).await?;
            writeln!(out, "#{number} reopened")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Run a `kiln pr` command.
pub async fn pr(cmd: PrCommand, args: &LocalArgs) -> anyhow::Result<ExitCode> {
    let forge = args.open()?;
    let mut out = std::io::stdout().lock();
    match cmd {
        PrCommand::List { state } => {
            for p in forge.list_pull_requests(state.into()).await? {
                writeln!(
                    out,
                    "#{:<4} {:<6} {}{} ({} → {}){}",
                    p.issue.number,
                    if p.issue.open { "open" } else { "closed" },
                    if p.draft { "[draft] " } else { "" },
                    p.issue.title,
                    p.head_branch,
                    p.base_branch,
                    labels_suffix(&p.issue.labels)
                )?;
            }
        }
        PrCommand::Show { number } => {
            let p = forge.get_pull_request(number).await?;
            writeln!(
                out,
                "{}{} → {} (head {})",
                if p.draft { "draft pull request, " } else { "" },
                p.head_branch,
                p.base_branch,
                &p.head_sha[..p.head_sha.len().min(12)]
            )?;
            for s in forge.list_statuses(number).await? {
                writeln!(out, "status {}: {} {}", s.context, s.state, s.description)?;
            }
            write_issue(&mut out, &p.issue)?;
            for r in forge.list_reviews(number).await? {
                writeln!(
                    out,
                    "\n--- review by {} ({})\n{}",
                    r.author, r.state, r.body
                )?;
                for c in &r.comments {
                    writeln!(out, "  {}:{} [{}] {}", c.path, c.line, c.severity, c.body)?;
                }
            }
            write_threads(&mut out, &p.review_threads)?;
        }
        PrCommand::Diff { number } => {
            let p = forge.get_pull_request(number).await?;
            write!(out, "{}", p.diff)?;
        }
        PrCommand::Merge { number } => {
            let sha = forge.merge(number).await?;
            writeln!(out, "merged #{number} as {}", &sha[..sha.len().min(12)])?;
        }
        PrCommand::Review {
            number,
            request_changes,
            body,
            lines,
        } => {
            let comments = lines
                .iter()
                .map(|l| parse_line_comment(l))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if body.trim().is_empty() && comments.is_empty() {
                bail!("an empty review: give --body TEXT and/or --line PATH:LINE=TEXT");
            }
            let n = comments.len();
            let id = forge
                .create_review(
                    number,
                    NewReview {
                        request_changes,
                        body,
                        comments,
                    },
                )
                .await?;
            writeln!(
                out,
                "review {id} on #{number}: {} with {n} line comment(s)",
                if request_changes {
                    "changes requested"
                } else {
                    "commented"
                }
            )?;
        }
        PrCommand::Reply {
            number,
            comment_id,
            body,
        } => {
            let id = forge
                .reply_to_review_comment(number, comment_id, &body)
                .await?;
            writeln!(out, "reply {id} in thread {comment_id} of #{number}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Each review thread with its id (what a reply answers) and comments.
fn write_threads(
    out: &mut impl std::io::Write,
    threads: &[kiln::forge::ReviewThread],
) -> std::io::Result<()> {
    for t in threads {
        let line = t
            .line
            .map_or_else(|| "outdated".to_string(), |l| l.to_string());
        writeln!(
            out,
            "\n--- thread {} on {}:{} ({} side{})",
            t.id,
            t.path,
            line,
            if t.new_side { "new" } else { "old" },
            if t.resolved { ", resolved" } else { "" }
        )?;
        for c in &t.comments {
            writeln!(
                out,
                "  comment {} by {}: {}",
                c.id,
                c.author,
                c.body.trim_end()
            )?;
        }
    }
    Ok(())
}

fn labels_suffix(labels: &[String]) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("  [{}]", labels.join(", "))
    }
}

fn write_issue(out: &mut impl std::io::Write, i: &kiln::forge::Issue) -> std::io::Result<()> {
    writeln!(
        out,
        "#{} {} ({}, by {}){}",
        i.number,
        i.title,
        if i.open { "open" } else { "closed" },
        i.author,
        labels_suffix(&i.labels)
    )?;
    if !i.body.is_empty() {
        writeln!(out, "\n{}", i.body.trim_end())?;
    }
    for c in &i.comments {
        writeln!(
            out,
            "\n--- comment {} by {}\n{}",
            c.id,
            c.author,
            c.body.trim_end()
        )?;
    }
    Ok(())
}
