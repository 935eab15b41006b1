//! Processing of accepted events, off the request path: route, check
//! trust, apply the re-run cap, queue runs or carry out `/kiln` commands,
//! and record what became of the delivery. Webhook deliveries and the local
//! forge's events both come through here.
//!
//! Webhook deliveries are read from the store, never from memory: the
//! handler commits each one (body included) before its 202 and only nudges
//! the processor, which claims the oldest unprocessed delivery
//! ([`RunStore::claim_delivery`]), processes it and records its outcome.
//! The processor also looks for unclaimed deliveries when it starts and
//! every [`POLL`], so what a dead runner accepted (or another runner sharing
//! the store accepted and could not process) is processed once, here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::config::Role;
use crate::control::RunControl;
use crate::policy::Trust;
use crate::store::{
    AcceptedDelivery, DeliveryClaim, DeliveryStatus, Enqueued, NewRun, RunFilter, RunId, RunStore,
    Trigger, TriggerKind,
};

use super::config::TriggerRule;
use super::event::{Parsed, WebhookEvent, parse};
use super::route::{
    COMMANDS, Command, CommandRequest, Dispatch, KILN_BRANCH_PREFIX, MAX_COMMAND_BYTES, Route,
    route,
};
use super::trust::{ForgeResolver, Untrusted, Vouched, check};

/// Deliveries processed at once (trust lookups may wait on the forge).
const CONCURRENCY: usize = 16;

/// How often the processor looks in the store for accepted deliveries that
/// no nudge announced (accepted before a restart, or by another runner).
pub const POLL: Duration = Duration::from_secs(2);

/// How long a runner's claim on a delivery holds before another runner may
/// take it over ([`DeliveryClaim::lease_ms`]).
pub const CLAIM_LEASE: Duration = Duration::from_secs(300);

/// The longest one delivery's processing may take; then it is recorded as
/// failed. Shorter than [`CLAIM_LEASE`], so a claim is never taken over
/// while its holder may still be working on it.
pub const PROCESSING_LIMIT: Duration = Duration::from_secs(240);

/// An event to process now (the local forge's), with its delivery id.
pub(super) struct Job {
    pub(super) delivery: String,
    pub(super) event: WebhookEvent,
}

/// A webhook delivery was committed to the store: a hint to claim one
/// (its id is only for logs; the claim takes the oldest waiting).
pub(super) struct Nudge(pub(super) String);

/// How the processor takes webhook deliveries from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOptions {
    /// The runner id claims are made under (`kiln serve`'s runner id).
    pub runner: String,
    /// Accept and store deliveries but process none (`kiln serve
    /// --hold-deliveries`): a runner sharing the store, or this one
    /// restarted without the flag, processes them.
    pub hold: bool,
}

impl Default for DeliveryOptions {
    /// Claims in the name of this process (`kiln-pid-<pid>`), processing.
    fn default() -> Self {
        DeliveryOptions {
            runner: format!("kiln-pid-{}", std::process::id()),
            hold: false,
        }
    }
}

/// What became of a delivery, for tests, logs and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The delivery id.
    pub delivery: String,
    /// Queued, ignored, refused or failed.
    pub status: DeliveryStatus,
    /// Why, for everything but a clean queueing.
    pub reason: Option<String>,
    /// Runs queued.
    pub runs: Vec<RunId>,
}

/// What the processor may do to the runner beyond queueing: cancel runs
/// (`/kiln cancel`) and wake idle workers when it queued one.
#[derive(Clone, Default)]
pub struct RunnerHooks {
    /// Cancels live runs; without it `/kiln cancel` answers that it cannot.
    pub control: Option<Arc<dyn RunControl>>,
    /// Called after runs were queued.
    pub wake: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for RunnerHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerHooks")
            .field("control", &self.control.is_some())
            .field("wake", &self.wake.is_some())
            .finish()
    }
}

/// What processing needs.
pub(super) struct Processor {
    pub(super) store: Arc<dyn RunStore>,
    pub(super) forges: ForgeResolver,
    pub(super) rules: Vec<TriggerRule>,
    pub(super) kiln_logins: Vec<String>,
    /// The custom roles `/kiln <role>` may name (`[[roles]]`).
    pub(super) custom_roles: Vec<Role>,
    pub(super) max_runs_per_target: u32,
    /// `[intake] runs_per_actor_per_hour`, and who was told already.
    pub(super) actor_limit: super::ratelimit::ActorLimiter,
    pub(super) outcomes: broadcast::Sender<Outcome>,
    pub(super) hooks: RunnerHooks,
    /// Who claims stored deliveries, since when, and whether at all.
    pub(super) claim: DeliveryClaim,
    /// `--hold-deliveries`: claim nothing.
    pub(super) hold: bool,
}

/// A refusal or failure while carrying something out: the reason, and
/// whether it is the store's fault (failed) or the request's (refused).
enum Declined {
    Refused(String),
    Failed(String),
}

impl Processor {
    /// Processes stored deliveries until every sender of nudges is gone:
    /// at once what is waiting (a restart's backlog), then one per nudge,
    /// and every [`POLL`] whatever no nudge announced.
    pub(super) async fn run(self: Arc<Self>, mut nudges: mpsc::Receiver<Nudge>) {
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        // The first tick is immediate: the backlog goes first.
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.hold {
            tracing::warn!(
                "webhook deliveries are accepted and stored but not processed (--hold-deliveries)"
            );
        }
        loop {
            tokio::select! {
                nudge = nudges.recv() => {
                    let Some(Nudge(id)) = nudge else { break };
                    if self.hold {
                        tracing::info!(delivery = %id, "delivery stored and held");
                        continue;
                    }
                    let Ok(permit) = limit.clone().acquire_owned().await else { break };
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.claim_and_process().await;
                        drop(permit);
                    });
                }
                _ = poll.tick() => {
                    if !self.hold {
                        self.drain(&limit).await;
                    }
                }
            }
        }
    }

    /// Claims and processes stored deliveries until none is waiting.
    async fn drain(self: &Arc<Self>, limit: &Arc<Semaphore>) {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let claimed = match self.store.claim_delivery(&self.claim).await {
                Ok(Some(d)) => d,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cannot claim a stored delivery; trying again later");
                    return;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.process_stored(claimed).await;
                drop(permit);
            });
        }
    }

    /// Claims one stored delivery, if one is waiting, and processes it.
    async fn claim_and_process(&self) {
        match self.store.claim_delivery(&self.claim).await {
            Ok(Some(d)) => {
                self.process_stored(d).await;
            }
            // Another task (or runner) took it; the poll retries a failure.
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot claim a stored delivery; trying again later")
            }
        }
    }

    /// Processes a claimed delivery from its stored body, within
    /// [`PROCESSING_LIMIT`].
    async fn process_stored(&self, d: AcceptedDelivery) -> Outcome {
        let delivery = d.id.clone();
        let work = async {
            match parse(&d.event, &d.body) {
                Ok(Parsed::Known(event)) => {
                    self.process(Job {
                        delivery: d.id.clone(),
                        event: *event,
                    })
                    .await
                }
                Ok(Parsed::Unknown(name)) => {
                    let why = format!("event {name:?} is not handled by Kiln");
                    self.record(outcome_of(&d.id, DeliveryStatus::Ignored, why))
                        .await
                }
                Err(why) => {
                    let why = format!("the stored body does not parse: {why}");
                    self.record(outcome_of(&d.id, DeliveryStatus::Failed, why))
                        .await
                }
            }
        };
        match tokio::time::timeout(PROCESSING_LIMIT, work).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let why = format!(
                    "processing did not finish within {} s and was abandoned",
                    PROCESSING_LIMIT.as_secs()
                );
                self.record(outcome_of(&delivery, DeliveryStatus::Failed, why))
                    .await
            }
        }
    }

    /// Decides what `job` asks for, carries it out, and records the outcome.
    pub(super) async fn process(&self, job: Job) -> Outcome {
        let outcome = self.decide(&job).await;
        self.record(outcome).await
    }

    /// Logs and stores a delivery's outcome, wakes the workers if runs were
    /// queued, and tells the outcome's subscribers.
    async fn record(&self, outcome: Outcome) -> Outcome {
        match outcome.status {
            DeliveryStatus::Queued => tracing::info!(
                delivery = %outcome.delivery, runs = ?outcome.runs, reason = ?outcome.reason,
                "event queued runs"
            ),
            DeliveryStatus::Failed => tracing::error!(
                delivery = %outcome.delivery, reason = ?outcome.reason, "event processing failed"
            ),
            status => tracing::info!(
                delivery = %outcome.delivery, status = status.as_str(), reason = ?outcome.reason,
                "event triggered nothing"
            ),
        }
        if let Err(e) = self
            .store
            .finish_delivery(&outcome.delivery, outcome.status, outcome.reason.clone())
            .await
        {
            tracing::error!(delivery = %outcome.delivery, error = %e, "cannot record the delivery's outcome");
        }
        if !outcome.runs.is_empty()
            && let Some(wake) = &self.hooks.wake
        {
            wake();
        }
        let _ = self.outcomes.send(outcome.clone());
        outcome
    }

    async fn decide(&self, job: &Job) -> Outcome {
        let outcome = |status, reason: Option<String>, runs| Outcome {
            delivery: job.delivery.clone(),
            status,
            reason,
            runs,
        };
        let dispatches = match route(
            &self.rules,
            &self.kiln_logins,
            &self.custom_roles,
            &job.event,
        ) {
            Route::Ignore(why) => return outcome(DeliveryStatus::Ignored, Some(why), vec![]),
            Route::Command(cmd) => {
                return match self.command(&job.delivery, &cmd).await {
                    Ok((runs, note)) if runs.is_empty() => {
                        outcome(DeliveryStatus::Ignored, Some(note), runs)
                    }
                    Ok((runs, note)) => outcome(DeliveryStatus::Queued, Some(note), runs),
                    Err(Declined::Refused(why)) => {
                        outcome(DeliveryStatus::Refused, Some(why), vec![])
                    }
                    Err(Declined::Failed(why)) => {
                        outcome(DeliveryStatus::Failed, Some(why), vec![])
                    }
                };
            }
            Route::Dispatch(d) => d,
        };
        let mut runs = Vec::new();
        let mut refusals = Vec::new();
        let mut failures = Vec::new();
        for d in dispatches {
            let trust = match check(&self.forges, &self.kiln_logins, &d).await {
                Ok(_) => Trust::Trusted,
                // An issue from anyone is triaged; the run knows its author
                // is not a collaborator, and the policy treats it so.
                Err(Untrusted::TooLow { .. } | Untrusted::LookupFailed { .. }) if d.anyone => {
                    Trust::Untrusted
                }
                Err(why) => {
                    refusals.push(format!("{} on #{}: {why}", d.role, d.number));
                    continue;
                }
            };
            match self.enqueue(&job.delivery, d, trust).await {
                Ok(id) => runs.push(id),
                Err(Declined::Refused(why)) => refusals.push(why),
                Err(Declined::Failed(why)) => failures.push(why),
            }
        }
        let why = |v: Vec<String>| (!v.is_empty()).then(|| v.join("; "));
        if !runs.is_empty() {
            let mut notes = refusals;
            notes.extend(failures);
            outcome(DeliveryStatus::Queued, why(notes), runs)
        } else if !failures.is_empty() {
            failures.extend(refusals);
            outcome(DeliveryStatus::Failed, why(failures), runs)
        } else {
            outcome(DeliveryStatus::Refused, why(refusals), runs)
        }
    }

    /// Queues the run unless the cap is reached.
    async fn enqueue(&self, delivery: &str, d: Dispatch, trust: Trust) -> Result<RunId, Declined> {
        let (repo, role, number) = (d.repo.clone(), d.role, d.number);
        let actor = d.actor.login.clone();
        // Kiln's own events (its pull requests) are never held to the limit.
        let per_actor = if self.kiln_logins.contains(&actor) {
            None
        } else {
            self.actor_limit.limit_for(trust)
        };
        let run = NewRun {
            script: None,
            repo: d.repo,
            role: d.role,
            number: d.number,
            trigger: Trigger {
                kind: d.kind,
                actor: d.actor.login,
                actor_trust: trust,
                delivery: Some(delivery.to_string()),
                instructions: d.instructions,
            },
        };
        match self
            .store
            .enqueue_run_limited(run, u64::from(self.max_runs_per_target), per_actor)
            .await
        {
            Ok(Enqueued::Queued(id)) => Ok(id),
            Ok(Enqueued::ActorLimited { runs, retry_at_ms }) => {
                let why = self.actor_limit.refusal(&actor, runs, retry_at_ms);
                // One answer per actor and window, however many events follow.
                if self.actor_limit.first_refusal(&repo, &actor, retry_at_ms)
                    && let Some(forge) = (self.forges)(&repo)
                {
                    let text = self.actor_limit.reply(&actor, runs, retry_at_ms);
                    if let Err(e) = forge.comment(number, &text).await {
                        tracing::warn!(%repo, number, error = %e, "cannot answer a rate-limited actor");
                    }
                }
                Err(Declined::Refused(format!(
                    "{role} on {repo}#{number}: {why}"
                )))
            }
            Ok(Enqueued::CapReached { existing }) => Err(Declined::Refused(format!(
                "{role} on {repo}#{number}: re-run cap reached ({existing} of {} runs)",
                self.max_runs_per_target
            ))),
            Err(e) => Err(Declined::Failed(format!(
                "{role} on #{number}: cannot queue the run: {e}"
            ))),
        }
    }

    /// Carries out a `/kiln` command: runs queued (or cancelled) and a note
    /// for the delivery's record. Every refusal is also answered on the
    /// forge, once, so the human who typed the command learns why.
    async fn command(
        &self,
        delivery: &str,
        cmd: &CommandRequest,
    ) -> Result<(Vec<RunId>, String), Declined> {
        let Some(forge) = (self.forges)(&cmd.repo) else {
            return Err(Declined::Refused(format!(
                "no forge is configured for {}",
                cmd.repo
            )));
        };
        let reply = |text: String| {
            let forge = forge.clone();
            async move {
                if let Err(e) = forge.comment(cmd.number, &text).await {
                    tracing::warn!(repo = %cmd.repo, number = cmd.number, error = %e, "cannot answer a /kiln command");
                }
                text
            }
        };
        let login = &cmd.actor.login;
        let dispatch = Dispatch {
            repo: cmd.repo.clone(),
            role: Role::Triage,
            number: cmd.number,
            kind: TriggerKind::Comment {
                comment_id: cmd.comment_id,
            },
            actor: cmd.actor.clone(),
            instructions: None,
            kiln_branch: false,
            anyone: false,
        };
        match check(&self.forges, &self.kiln_logins, &dispatch).await {
            Ok(Vouched::Permission(_) | Vouched::KilnItself) => {}
            Err(Untrusted::NoForge(repo)) => {
                return Err(Declined::Refused(format!(
                    "no forge is configured for {repo}"
                )));
            }
            Err(why) => {
                let text = reply(format!(
                    "@{login}: `/kiln` commands are taken only from collaborators with write, \
                     maintain or admin permission on {}. Nothing was run.",
                    cmd.repo
                ))
                .await;
                return Err(Declined::Refused(format!("{why}; answered: {text}")));
            }
        }
        let what = if cmd.on_pull_request {
            "pull request"
        } else {
            "issue"
        };
        let refuse = |text: String| async move { Err(Declined::Refused(reply(text).await)) };
        let run_on = |role: Role, kind: TriggerKind, instructions: Option<String>| Dispatch {
            role,
            kind,
            instructions,
            ..dispatch.clone()
        };
        match &cmd.command {
            Command::Help => {
                let note = reply(help_text(&self.custom_roles)).await;
                Ok((vec![], note))
            }
            Command::Unknown => {
                refuse(format!(
                    "That is not a `/kiln` command.\n\n{}",
                    help_text(&self.custom_roles)
                ))
                .await
            }
            Command::TooLong(n) => {
                refuse(format!(
                    "This command is {n} bytes long; `/kiln` commands (with their note) may be \
                     at most {MAX_COMMAND_BYTES} bytes. Nothing was run."
                ))
                .await
            }
            _ if cmd.closed => {
                refuse(format!(
                    "#{} is closed; reopen it to run `/kiln` commands on it. Nothing was run.",
                    cmd.number
                ))
                .await
            }
            Command::Cancel => self.cancel(cmd, reply).await,
            Command::Retry => {
                let last = self
                    .store
                    .list_runs(RunFilter {
                        repo: Some(cmd.repo.clone()),
                        number: Some(cmd.number),
                        ..RunFilter::default()
                    })
                    .await
                    .map_err(|e| Declined::Failed(format!("cannot read the runs: {e}")))?
                    .into_iter()
                    .max_by_key(|r| r.id);
                let Some(last) = last else {
                    return refuse(format!(
                        "There is no earlier run on #{} to retry.",
                        cmd.number
                    ))
                    .await;
                };
                let d = run_on(
                    last.role,
                    TriggerKind::Retry {
                        of: last.id,
                        comment_id: cmd.comment_id,
                    },
                    last.trigger.instructions.clone(),
                );
                self.queue_command(delivery, d, &refuse).await
            }
            Command::Fix(note) => {
                if !cmd.on_pull_request {
                    return refuse(format!(
                        "`/kiln fix` answers a review on a Kiln pull request; #{} is an issue.",
                        cmd.number
                    ))
                    .await;
                }
                let head = match forge.get_pull_request(cmd.number).await {
                    Ok(pr) => pr.head_branch,
                    Err(e) => {
                        return Err(Declined::Failed(format!(
                            "cannot read pull request #{}: {e}",
                            cmd.number
                        )));
                    }
                };
                if !head.starts_with(KILN_BRANCH_PREFIX) || head.starts_with("kiln/spec-") {
                    return refuse(format!(
                        "`/kiln fix` answers reviews on Kiln's implementation pull requests; the \
                         head of #{} is `{head}`. Nothing was run.",
                        cmd.number
                    ))
                    .await;
                }
                let d = run_on(
                    Role::Implementation,
                    TriggerKind::Fix {
                        comment_id: cmd.comment_id,
                    },
                    (!note.is_empty()).then(|| note.clone()),
                );
                self.queue_command(delivery, d, &refuse).await
            }
            Command::Run(role, text) => {
                let needs_pr = role.reads_pull_request();
                let needs_issue = matches!(role, Role::Triage | Role::Spec | Role::Implementation);
                if needs_pr && !cmd.on_pull_request {
                    return refuse(format!(
                        "`{role}` runs on pull requests; #{} is an issue. Nothing was run.",
                        cmd.number
                    ))
                    .await;
                }
                if needs_issue && cmd.on_pull_request {
                    return refuse(format!(
                        "`{role}` runs on issues; #{} is a {what}. Nothing was run.",
                        cmd.number
                    ))
                    .await;
                }
                let d = run_on(*role, dispatch.kind.clone(), Some(text.clone()));
                self.queue_command(delivery, d, &refuse).await
            }
        }
    }

    async fn queue_command<F, Fut>(
        &self,
        delivery: &str,
        d: Dispatch,
        refuse: &F,
    ) -> Result<(Vec<RunId>, String), Declined>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<RunId>, String), Declined>>,
    {
        let role = d.role;
        match self.enqueue(delivery, d, Trust::Trusted).await {
            Ok(id) => Ok((vec![id], format!("{role} queued as {id}"))),
            Err(Declined::Refused(why)) => refuse(format!("{why}. Nothing was run.")).await,
            Err(failed) => Err(failed),
        }
    }

    async fn cancel<F, Fut>(
        &self,
        cmd: &CommandRequest,
        reply: F,
    ) -> Result<(Vec<RunId>, String), Declined>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let Some(control) = &self.hooks.control else {
            return Err(Declined::Refused(
                reply("This runner cannot cancel runs from comments.".into()).await,
            ));
        };
        let active = self
            .store
            .list_runs(RunFilter {
                repo: Some(cmd.repo.clone()),
                number: Some(cmd.number),
                ..RunFilter::default()
            })
            .await
            .map_err(|e| Declined::Failed(format!("cannot read the runs: {e}")))?
            .into_iter()
            .filter(|r| !r.state.is_terminal())
            .collect::<Vec<_>>();
        if active.is_empty() {
            let text = reply(format!("No run is active on #{}.", cmd.number)).await;
            return Ok((vec![], text));
        }
        let by = format!("{} (/kiln cancel)", cmd.actor.login);
        let mut cancelled = Vec::new();
        let mut failed = Vec::new();
        for r in active {
            match control.cancel(r.id.0, by.clone()).await {
                Ok(()) => cancelled.push(r.id.to_string()),
                Err(e) => failed.push(format!("{}: {e}", r.id)),
            }
        }
        let mut text = format!("Cancelled: {}.", list_or_none(&cancelled));
        if !failed.is_empty() {
            text.push_str(&format!(" Not cancelled: {}.", failed.join("; ")));
        }
        Ok((vec![], reply(text).await))
    }
}

/// An outcome that queued nothing.
fn outcome_of(delivery: &str, status: DeliveryStatus, reason: String) -> Outcome {
    Outcome {
        delivery: delivery.to_string(),
        status,
        reason: Some(reason),
        runs: Vec::new(),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The answer to `/kiln help` (and to an unknown command).
fn help_text(custom_roles: &[Role]) -> String {
    let mut text = String::from("Kiln takes these commands, as the first line of a comment:\n\n");
    for (cmd, what) in COMMANDS {
        text.push_str(&format!("- `/kiln {cmd}`: {what}\n"));
    }
    for r in custom_roles {
        text.push_str(&format!("- `/kiln {r}`: run the `{r}` role\n"));
    }
    text.push_str(
        "\nCommands are taken from collaborators with write permission or more; an edited \
         comment never runs anything.",
    );
    text
}
