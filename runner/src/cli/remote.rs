//! `kiln runs|watch|steer|approve|deny|cancel|attach|handback`: a runner's runs
//! over its API (`--url` / `KILN_URL`, `--token` / `KILN_TOKEN`).
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt as _;
use kiln::api::client::{Client, ClientError, FeedItem};
use kiln::store::{RunId, RunState, StoredEvent};

use super::local_forge::LocalArgs;

/// Where the runner API is and how to authenticate.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The runner API's base URL.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:7878")]
    pub url: String,
    /// An API token (kiln_…); `kiln token create` makes one.
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    pub(super) fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(&self.url, self.token.clone())?)
    }
}

/// Commands that talk to a runner's API.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// List runs, newest first (filter with --repo, --state, --role); or
    /// check and export their ledger (`kiln runs verify|export|pubkey`).
    #[command(args_conflicts_with_subcommands = true)]
    Runs {
        /// The ledger of the local store (no API needed).
        #[command(subcommand)]
        ledger: Option<super::ledger::LedgerCommand>,
        /// Only runs in these states (queued, running, awaiting-approval, …).
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        /// Only runs of this role.
        #[arg(long)]
        role: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Follow a run's events live until it ends (exit 0 if it succeeded, 1
    /// otherwise). A run that stops to wait for approval is shown with its
    /// held effects and the commands to decide them, then watch exits 3
    /// (with --follow it keeps following until the run ends).
    Watch {
        /// The run (r12 or 12).
        run: String,
        /// Start after this event seq (default: from the first event).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep following a run that waits for approval, until it ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Send a steering message; the agent reads it before its next model turn.
    Steer {
        /// The run.
        run: String,
        /// The message.
        message: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve an effect the policy gate held (list them with `kiln approve RUN`).
    Approve(DecideArgs),
    /// Deny an effect the policy gate held.
    Deny(DecideArgs),
    /// Cancel a run: its plugin stops, its container is killed.
    Cancel {
        /// The run.
        run: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Open a shell in a running run's sandbox; the agent is paused until
    /// the shell exits (exit code: the shell's).
    Attach {
        /// The run.
        run: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Continue a finished run from its last work plus your commits on
    /// kiln/run-<id> (from `kiln handback`), with a note for the agent.
    Resume {
        /// The run.
        run: String,
        /// A note for the agent (it becomes the run's instructions).
        #[arg(long, short)]
        message: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a one-time link that logs a browser into the dashboard (on a
    /// run's page when RUN is given); --open opens it with $BROWSER (or
    /// xdg-open) and waits for that command to return.
    Dashboard {
        /// Open this run's page (r12 or 12) instead of the runs list.
        run: Option<String>,
        /// Open the link: `$BROWSER URL` (BROWSER may carry arguments), else `xdg-open URL`.
        #[arg(long)]
        open: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Fetch a run's work into this git checkout as branch kiln/run-<id>, and
    /// its transcript to .kiln/runs/<id>.md.
    Handback {
        /// The run.
        run: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Arguments of `kiln approve` / `kiln deny`.
#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The run.
    run: String,
    /// The held effect's id; without it, the run's held effects are listed.
    effect: Option<String>,
    /// Why (shown in the run's events).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

fn run_id(raw: &str) -> anyhow::Result<u64> {
    Ok(raw.parse::<RunId>()?.0)
}

/// Runs a remote command.
pub async fn run(cmd: RemoteCommand, local: &LocalArgs) -> anyhow::Result<ExitCode> {
    match cmd {
        RemoteCommand::Runs {
            ledger: Some(cmd), ..
        } => super::ledger::run(cmd, local).await,
        RemoteCommand::Runs {
            ledger: None,
            state,
            role,
            limit,
            api,
        } => runs(&api, local, &state, role.as_deref(), limit).await,
        RemoteCommand::Watch {
            run,
            after,
            follow,
            api,
        } => watch(&api, run_id(&run)?, after, follow).await,
        RemoteCommand::Steer { run, message, api } => {
            let id = run_id(&run)?;
            api.client()?.steer(id, &message).await?;
            eprintln!("queued for r{id}: the agent reads it before its next model turn");
            Ok(ExitCode::SUCCESS)
        }
        RemoteCommand::Approve(args) => decide(args, true).await,
        RemoteCommand::Deny(args) => decide(args, false).await,
        RemoteCommand::Cancel { run, api } => {
            let id = run_id(&run)?;
            api.client()?.cancel(id).await?;
            eprintln!("cancelling r{id}");
            Ok(ExitCode::SUCCESS)
        }
        RemoteCommand::Handback { run, api } => handback(&api, run_id(&run)?).await,
        RemoteCommand::Dashboard { run, open, api } => {
            let next = run
                .as_deref()
                .map(run_id)
                .transpose()?
                .map(|id| format!("/ui/runs/{id}"));
            dashboard(&api, next.as_deref(), open).await
        }
        RemoteCommand::Resume { run, message, api } => {
            resume(&api, run_id(&run)?, message.as_deref()).await
        }
        RemoteCommand::Attach { run, api } => super::attach::attach(&api, run_id(&run)?).await,
    }
}

async fn runs(
    api: &ApiArgs,
    local: &LocalArgs,
    states: &[String],
    role: Option<&str>,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &limit.to_string());
    if let Some(repo) = &local.repo {
        query.append_pair("repo", repo);
    }
    if let Some(role) = role {
        query.append_pair("role", role);
    }
    for s in states {
        query.append_pair("state", s);
    }
    let runs = api.client()?.runs(&query.finish()).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<7} {:<18} {:<30} {:<15} REASON",
        "RUN", "STATE", "ISSUE", "ROLE"
    )?;
    for r in runs {
        writeln!(
            out,
            "{:<7} {:<18} {:<30} {:<15} {}",
            r.id.to_string(),
            r.state.as_str(),
            terminal_safe(&format!("{}#{}", r.repo, r.number)),
            r.role.as_str(),
            terminal_safe(r.reason.as_deref().unwrap_or("")).replace('\n', " "),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Event text is untrusted: control characters (terminal escape
/// sequences) are shown as `\u{…}` instead of being sent to the terminal.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// `HH:MM:SS` (UTC) of a millisecond timestamp.
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// One event as `kiln watch` prints it.
pub fn render_event(e: &StoredEvent) -> String {
    let kind = e.type_name();
    let extra = e.kind_fields("=");
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" [{}]", extra.join(" "))
    };
    let message = terminal_safe(&e.message).replace('\n', "\n        ");
    format!(
        "{} #{:<4} {}{}: {}",
        clock(e.at_ms),
        e.seq,
        terminal_safe(kind),
        terminal_safe(&extra),
        message
    )
}

/// How often `kiln watch` reconnects in a row before giving up.
const MAX_RECONNECTS: u32 = 30;

/// `kiln watch`'s exit code when the run waits for a human's decision
/// (and `--follow` was not given).
pub const EXIT_AWAITING_APPROVAL: u8 = 3;

/// How often `kiln watch` looks at the run's state: the event stream ends
/// only with the run, and a run awaiting approval has not ended.
const STATE_POLL: Duration = Duration::from_secs(1);

/// Print the events after `last` that the stream has not delivered yet;
/// returns the new last seq.
async fn print_rest(client: &Client, id: u64, mut last: u64) -> anyhow::Result<u64> {
    loop {
        let (events, _) = client.events_page(id, last).await?;
        let Some(end) = events.last().map(|e| e.seq) else {
            return Ok(last);
        };
        for e in &events {
            println!("{}", render_event(e));
        }
        last = end;
    }
}

async fn watch(api: &ApiArgs, id: u64, after: u64, follow: bool) -> anyhow::Result<ExitCode> {
    let client = api.client()?;
    let mut last = after;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(STATE_POLL);
    // Said once per wait: a run that goes back to running and waits again
    // is announced again.
    let mut announced = false;
    loop {
        let mut feed = match client.feed(id, Some(last)).await {
            Ok(f) => f,
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(e.into());
                }
                eprintln!("watch: {e}; reconnecting");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let item = tokio::select! {
                item = feed.next() => item,
                _ = tick.tick() => {
                    // A failed look is retried at the next tick.
                    let Ok(run) = client.run(id).await else { continue };
                    if run.state != RunState::AwaitingApproval {
                        announced = false;
                        continue;
                    }
                    if announced {
                        continue;
                    }
                    announced = true;
                    last = print_rest(&client, id, last).await?;
                    let pending = client.approvals(id).await?;
                    println!(
                        "run r{id} is awaiting approval: {}",
                        terminal_safe(run.reason.as_deref().unwrap_or(""))
                    );
                    print!("{}", held_table(id, &pending, run.branch.as_deref()));
                    if !follow {
                        return Ok(ExitCode::from(EXIT_AWAITING_APPROVAL));
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                // Already printed from the JSON page when the run stopped
                // to wait (with --follow the stream then catches up).
                Ok(FeedItem::Event(e)) if e.seq <= last => {}
                Ok(FeedItem::Event(e)) => {
                    failures = 0;
                    last = e.seq;
                    // The `end` line below says it, with decisions made since:
                    // the run's result is printed once.
                    if e.type_name() != "finished" {
                        println!("{}", render_event(&e));
                    }
                }
                Ok(FeedItem::End(v)) => {
                    let state = v["state"].as_str().unwrap_or("unknown");
                    let reason = v["reason"]
                        .as_str()
                        .map(|r| format!(": {}", terminal_safe(r)));
                    println!("run r{id} ended: {state}{}", reason.unwrap_or_default());
                    let ok = state.parse::<RunState>().ok() == Some(RunState::Succeeded);
                    return Ok(if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                Ok(FeedItem::StreamError(m)) => {
                    eprintln!("watch: server: {m}; resuming after #{last}");
                    break;
                }
                Err(e) => {
                    eprintln!("watch: {e}; resuming after #{last}");
                    break;
                }
            }
        }
        // The stream closed without `end` (server restart, network): resume.
        failures += 1;
        if failures > MAX_RECONNECTS {
            bail!("the event stream of r{id} keeps closing; gave up after {MAX_RECONNECTS} tries");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let id = run_id(&args.run)?;
    let client = args.api.client()?;
    let Some(effect) = args.effect else {
        let pending = client.approvals(id).await?;
        if pending.is_empty() {
            let run = client.run(id).await?;
            bail!(
                "run r{id} has no effect waiting for a decision (it is {}){}",
                run.state,
                if run.state == RunState::AwaitingApproval {
                    ""
                } else {
                    ": only a run awaiting approval has held effects"
                }
            );
        }
        let run = client.run(id).await?;
        print!("{}", held_table(id, &pending, run.branch.as_deref()));
        return Ok(ExitCode::SUCCESS);
    };
    client
        .decide(id, &effect, approve, args.reason.as_deref())
        .await?;
    eprintln!(
        "{} {effect} of r{id}",
        if approve { "approved" } else { "denied" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `kiln dashboard`: a one-time login link, printed and maybe opened.
async fn dashboard(api: &ApiArgs, next: Option<&str>, open: bool) -> anyhow::Result<ExitCode> {
    let (url, ttl) = api.client()?.login_link(next).await?;
    println!("{url}");
    eprintln!(
        "a one-time login link: it works once, within {} minute(s); the browser then holds a session, not your token",
        ttl.div_ceil(60)
    );
    if !open {
        return Ok(ExitCode::SUCCESS);
    }
    // $BROWSER may be a command with arguments ("chromium --headless ...").
    let browser = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    let mut words: Vec<String> = match &browser {
        Some(b) => b.split_whitespace().map(str::to_owned).collect(),
        None => vec!["xdg-open".to_owned()],
    };
    let program = words.remove(0);
    let status = std::process::Command::new(&program)
        .args(&words)
        .arg(&url)
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| {
            format!("cannot start {program} to open the link (set BROWSER, or open it yourself)")
        })?;
    if !status.success() {
        bail!("{program} could not open the link ({status}); open it yourself");
    }
    Ok(ExitCode::SUCCESS)
}

/// Most lines of a held effect's text shown under it.
const PREVIEW_LINES: usize = 6;

/// Held effects as a table a person reads before deciding: id, kind,
/// target and the gate's reason, then a short preview of the text, and the
/// commands that decide them. `branch`: the run's branch (a pull request's head).
pub fn held_table(run: u64, held: &[kiln::store::Approval], branch: Option<&str>) -> String {
    use kiln::forge::{EffectRecord, EffectState, Proposal};
    let mut rows = Vec::new();
    for a in held {
        let record = serde_json::from_value::<EffectRecord>(a.proposal.clone()).ok();
        let (kind, target, text) = match record.as_ref().map(|r| &r.proposal) {
            Some(Proposal::PullRequest { title, body, .. }) => (
                "pull request",
                format!("{} (draft)", branch.unwrap_or("the run's branch")),
                format!("{title}\n{body}"),
            ),
            Some(Proposal::PullRequestUpdate {
                number,
                commit_message,
                ..
            }) => (
                "push to pull request",
                format!("#{number}"),
                commit_message.clone(),
            ),
            Some(Proposal::Comment { number, body }) => {
                ("comment", format!("#{number}"), body.clone())
            }
            Some(Proposal::Labels {
                number,
                add,
                remove,
            }) => (
                "labels",
                format!("#{number}"),
                format!("+{} -{}", add.join(","), remove.join(",")),
            ),
            Some(Proposal::Review {
                number, summary, ..
            }) => ("review", format!("#{number}"), summary.clone()),
            Some(Proposal::Reply {
                number,
                comment_id,
                body,
            }) => (
                "reply",
                format!("#{number} thread {comment_id}"),
                body.clone(),
            ),
            Some(Proposal::Status {
                number,
                context,
                description,
                ..
            }) => (
                "status",
                format!("#{number} {context}"),
                description.clone(),
            ),
            Some(Proposal::Report { number, body, .. }) => {
                ("report", format!("#{number}"), body.clone())
            }
            None => ("effect", String::new(), a.proposal.to_string()),
        };
        let (reason, concerns) = match record.map(|r| r.state) {
            Some(EffectState::Held {
                reason, concerns, ..
            }) => (reason, concerns),
            _ => (String::new(), Vec::new()),
        };
        rows.push((a.effect_id.clone(), kind, target, reason, concerns, text));
    }
    let w_id = rows.iter().map(|r| r.0.chars().count()).fold(6, usize::max);
    let w_kind = rows.iter().map(|r| r.1.len()).fold(4, usize::max);
    let w_target = rows.iter().map(|r| r.2.chars().count()).fold(6, usize::max);
    let mut out = format!(
        "{:<w_id$}  {:<w_kind$}  {:<w_target$}  REASON\n",
        "EFFECT", "KIND", "TARGET"
    );
    for (id, kind, target, reason, concerns, text) in &rows {
        out.push_str(&format!(
            "{:<w_id$}  {:<w_kind$}  {:<w_target$}  {}\n",
            terminal_safe(id),
            kind,
            terminal_safe(target),
            terminal_safe(reason).replace('\n', " ")
        ));
        // Each concern on its own line: what raised it, why, and the size
        // of the diff of the files it is about (the dashboard shows the diff).
        for c in concerns {
            let diff = diff_summary(&c.diff);
            out.push_str(&format!(
                "{:w_id$}  ! {}: {}{}\n",
                "",
                terminal_safe(&c.source),
                terminal_safe(&c.reason).replace('\n', " "),
                if diff.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", terminal_safe(&diff))
                }
            ));
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        for line in lines.iter().take(PREVIEW_LINES) {
            let line: String = line.chars().take(100).collect();
            out.push_str(&format!("{:w_id$}  | {}\n", "", terminal_safe(&line)));
        }
        if lines.len() > PREVIEW_LINES {
            out.push_str(&format!(
                "{:w_id$}  | … {} more line(s)\n",
                "",
                lines.len() - PREVIEW_LINES
            ));
        }
    }
    if let Some((id, ..)) = rows.first() {
        let id = terminal_safe(id);
        out.push_str(&format!(
            "decide: kiln approve r{run} {id}   or   kiln deny r{run} {id} --reason TEXT\n"
        ));
    }
    out
}

/// A unified diff in one line: each file with its added and removed line
/// counts (`CODEOWNERS +1 -0, package.json +3 -1`); empty for no diff.
fn diff_summary(diff: &str) -> String {
    let mut files: Vec<(String, usize, usize)> = Vec::new();
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            // `a/x b/x`: the new path is the second half.
            let path = rest.rsplit_once(" b/").map_or(rest, |(_, p)| p).to_string();
            files.push((path, 0, 0));
        } else if let Some(f) = files.last_mut()
            && !line.starts_with("+++ ")
            && !line.starts_with("--- ")
        {
            if line.starts_with('+') {
                f.1 += 1;
            } else if line.starts_with('-') {
                f.2 += 1;
            }
        }
    }
    files
        .iter()
        .map(|(p, add, del)| format!("{p} +{add} -{del}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .with_context(|| format!("cannot run git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A branch name from the server, used in a refspec: plain characters only.
fn safe_branch(branch: &str) -> anyhow::Result<&str> {
    let ok = !branch.is_empty()
        && !branch.starts_with('-')
        && !branch.contains("..")
        && branch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if ok {
        Ok(branch)
    } else {
        bail!("the runner named the run's branch {branch:?}, which is not a plain branch name")
    }
}

async fn handback(api: &ApiArgs, id: u64) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let top = PathBuf::from(
        git(&cwd, &["rev-parse", "--show-toplevel"])
            .context("kiln handback must run inside a git checkout")?,
    );
    let client = api.client()?;
    let (bundle, branch) = client.handback(id).await?;
    let branch = safe_branch(&branch)?;
    let transcript_md = client.transcript(id, "md").await?;
    let transcript_jsonl = client.transcript(id, "jsonl").await?;

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let file = dir.path().join(format!("run-{id}.bundle"));
    std::fs::write(&file, &bundle).with_context(|| format!("cannot write {}", file.display()))?;
    let file_s = file.to_string_lossy().into_owned();
    git(&top, &["bundle", "verify", "--quiet", &file_s])
        .context("the run's bundle does not apply to this repository")?;
    let local = format!("kiln/run-{id}");
    // Not forced: an existing kiln/run-<id> with local commits is never
    // overwritten. The second ref remembers what the run had, so `kiln
    // resume` sends back only the commits made here.
    git(
        &top,
        &[
            "fetch",
            "--no-tags",
            &file_s,
            &format!("refs/heads/{branch}:refs/heads/{local}"),
            &format!("+refs/heads/{branch}:{}", handback_ref(id)),
        ],
    )?;
    let runs_dir = top.join(".kiln").join("runs");
    std::fs::create_dir_all(&runs_dir)
        .with_context(|| format!("cannot create {}", runs_dir.display()))?;
    let md = runs_dir.join(format!("{id}.md"));
    std::fs::write(&md, transcript_md).with_context(|| format!("cannot write {}", md.display()))?;
    let jsonl = runs_dir.join(format!("{id}.jsonl"));
    std::fs::write(&jsonl, transcript_jsonl)
        .with_context(|| format!("cannot write {}", jsonl.display()))?;
    println!("branch {local} (from the run's {branch})");
    println!("transcript {}", md.display());
    Ok(ExitCode::SUCCESS)
}

/// Where `kiln handback` records the run's commit in the local checkout.
fn handback_ref(id: u64) -> String {
    format!("refs/kiln/handback/r{id}")
}

/// `kiln resume`: bundle the commits on kiln/run-<id> made since the
/// handback and send them, with the note, to continue the run.
async fn resume(api: &ApiArgs, id: u64, note: Option<&str>) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let top = PathBuf::from(
        git(&cwd, &["rev-parse", "--show-toplevel"])
            .context("kiln resume must run inside the git checkout `kiln handback` wrote to")?,
    );
    let local = format!("refs/heads/kiln/run-{id}");
    let tip = git(&top, &["rev-parse", "--verify", "--quiet", &local]).with_context(|| {
        format!("there is no branch kiln/run-{id} here: run `kiln handback r{id}` first")
    })?;
    let since = handback_ref(id);
    let base = git(&top, &["rev-parse", "--verify", "--quiet", &since]).with_context(|| {
        format!("this checkout has no record of r{id}'s handback ({since}): run `kiln handback r{id}` here first")
    })?;
    let bundle = if tip == base {
        None
    } else {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let file = dir.path().join(format!("resume-{id}.bundle"));
        let file_s = file.to_string_lossy().into_owned();
        git(
            &top,
            &[
                "bundle",
                "create",
                "--quiet",
                &file_s,
                &local,
                &format!("^{base}"),
            ],
        )?;
        Some(std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?)
    };
    if bundle.is_none() && note.is_none() {
        bail!(
            "kiln/run-{id} has no commits since the handback and no --message was given: nothing to resume with"
        );
    }
    let commits = match &bundle {
        Some(_) => git(&top, &["rev-list", "--count", &format!("{base}..{tip}")])?,
        None => "0".into(),
    };
    api.client()?.resume(id, note, bundle.as_deref()).await?;
    eprintln!(
        "r{id} resumed with {commits} commit(s) from kiln/run-{id}; follow it with `kiln watch r{id}`"
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_in_event_text_are_shown_not_obeyed() {
        let shown = terminal_safe("ok\x1b[2J\x07done\nnext");
        assert!(
            !shown.contains('\x1b') && !shown.contains('\x07'),
            "escape and bell should be neutralised, got {shown:?}"
        );
        assert!(shown.contains("\\u{1b}") && shown.contains("\nnext"));
    }

    // What a person reads before deciding: a table with the gate's reason,
    // a short preview (model text, escapes shown not obeyed), the commands.
    #[test]
    fn held_effects_are_a_readable_table_with_a_short_preview() {
        let body: String = (1..=10).map(|i| format!("line {i}\n")).collect();
        let record = serde_json::json!({
            "effect_id": "e1",
            "proposal": { "kind": "pull-request", "title": "Fix it\u{1b}[2J", "body": body, "commit_message": "c" },
            "state": { "state": "held", "reason": "repo.hold-untrusted-words (a stranger's words)" }
        });
        let held = kiln::store::Approval {
            run: RunId(4),
            effect_id: "e1".into(),
            proposal: record,
            state: kiln::store::ApprovalState::Pending,
            decided_by: None,
            reason: None,
            created_ms: 0,
            decided_ms: None,
        };
        let table = held_table(4, &[held], Some("kiln/spec-issue-1"));
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("EFFECT") && lines[0].ends_with("REASON"),
            "{table}"
        );
        assert!(
            lines[1].starts_with("e1")
                && lines[1].contains("pull request")
                && lines[1].contains("kiln/spec-issue-1 (draft)")
                && lines[1].contains("repo.hold-untrusted-words"),
            "{table}"
        );
        assert!(
            !table.contains('\x1b') && table.contains("| Fix it\\u{1b}[2J"),
            "{table}"
        );
        assert!(
            table.contains("| line 5") && !table.contains("| line 6"),
            "{table}"
        );
        assert!(table.contains("… 5 more line(s)"), "{table}");
        assert!(
            table.ends_with("decide: kiln approve r4 e1   or   kiln deny r4 e1 --reason TEXT\n"),
            "{table}"
        );
    }

    // The concerns of a held pull request (a protected path with its diff,
    // a detector's finding, a detector's error) are lines under its row,
    // with the diff's size, not JSON.
    #[test]
    fn held_effects_show_each_concern_on_a_line_with_the_diff_size() {
        let record = serde_json::json!({
            "effect_id": "e2",
            "proposal": { "kind": "pull-request", "title": "Tidy", "body": "b", "commit_message": "c" },
            "state": { "state": "held", "reason": "held", "commit": "abc",
                "concerns": [
                    { "source": "protected-paths", "reason": "CODEOWNERS is protected (code owners)",
                      "paths": ["CODEOWNERS"],
                      "diff": "diff --git a/CODEOWNERS b/CODEOWNERS\n--- a/CODEOWNERS\n+++ b/CODEOWNERS\n@@ -1 +1,2 @@\n-* @a\n+* @mallory\n+x @b\n" },
                    { "source": "detection/hooks", "reason": "malicious_patch at package.json:1: the patch adds a package lifecycle script\x1b[2J",
                      "paths": ["package.json"] },
                    { "source": "detection", "reason": "a detector failed, so this is held (failing closed): timed out",
                      "paths": [] }
                ] }
        });
        let held = kiln::store::Approval {
            run: RunId(5),
            effect_id: "e2".into(),
            proposal: record,
            state: kiln::store::ApprovalState::Pending,
            decided_by: None,
            reason: None,
            created_ms: 0,
            decided_ms: None,
        };
        let table = held_table(5, &[held], None);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[2].trim_start(),
            "! protected-paths: CODEOWNERS is protected (code owners) [CODEOWNERS +2 -1]",
            "{table}"
        );
        assert!(
            lines[3].trim_start().starts_with(
                "! detection/hooks: malicious_patch at package.json:1: the patch adds a package lifecycle script"
            ) && !lines[3].contains('\x1b'),
            "{table}"
        );
        assert!(
            lines[4].contains("! detection: a detector failed") && lines[5].contains("| Tidy"),
            "{table}"
        );
        assert!(
            !table.contains("\"source\"") && !table.contains("\"paths\""),
            "no JSON: {table}"
        );
    }

    #[test]
    fn branch_names_from_the_server_must_be_plain() {
        assert!(safe_branch("kiln/issue-12").is_ok());
        for bad in ["", "-x", "a..b", "a:b", "a b", "+refs/heads/x"] {
            assert!(safe_branch(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
