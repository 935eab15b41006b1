//! The runner as a service: a pool of workers claims queued runs from the
//! store, executes each through [`crate::worker`] with its events persisted
//! as they happen, records held effects as approvals, and carries out what
//! operators ask through [`RunControl`] (steer, cancel, approve or deny a
//! held effect, hand back the work).
//!
//! At start-up, runs a dead runner left in `preparing` / `running` are
//! failed with "runner restarted" (and re-queued when configured) before any
//! worker starts, and their workspaces are removed; the sandbox backend
//! removes their containers by label (`kiln serve` keeps one runner id per
//! data directory, so a restart finds them). Runs `awaiting-approval` keep waiting: their worker had already
//! ended, and a decision needs only the store and the run's bundle.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::{
    Attached, ControlError, EffectDecision, Handback, QueueRun, Resume, RunControl,
};
pub use crate::forge::ForgeResolver;
use crate::forge::{EffectRecord, EffectState, Proposal};
use crate::imports::forge::{CommitSource, ForgeTarget, apply_once};
use crate::session::{EventKind, EventSink, PauseGuard};
use crate::store::{
    ApprovalState, RecoveryPolicy, Run, RunId, RunState, RunStore, StoreError, TriggerKind, Verdict,
};
use crate::worker::{LiveRun, RunEnd, RunRequest, RunTrigger, Services, execute};

/// The bundle each run leaves when it ends (see `worker`).
const HANDBACK: &str = "handback.bundle";
/// The bundle of an operator's commits, waiting for the resumed run.
const RESUME: &str = "resume.bundle";

/// An operator's attach session: records the detach before the agent may
/// go on (fields drop after `drop` runs, the pause guard last).
struct AttachSession {
    by: String,
    events: Arc<dyn EventSink>,
    _guard: PauseGuard,
}

impl Drop for AttachSession {
    fn drop(&mut self) {
        self.events.record(
            EventKind::Note,
            format!("operator {} detached; the agent resumes", self.by),
        );
    }
}

/// The runner service.
pub struct Runner {
    store: Arc<dyn RunStore>,
    services: Services,
    forges: ForgeResolver,
    live: Mutex<HashMap<u64, LiveRun>>,
    wake: tokio::sync::Notify,
    runs_dir: PathBuf,
}

impl Runner {
    /// A runner over `store`, executing with `services` on the forges
    /// `forges` finds. Bundles are read from `services.runs_dir`.
    pub fn new(store: Arc<dyn RunStore>, services: Services, forges: ForgeResolver) -> Arc<Self> {
        let runs_dir = services
            .runs_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-runs"));
        Arc::new(Runner {
            store,
            services,
            forges,
            live: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            runs_dir,
        })
    }

    /// Recover from a previous process, then start `workers` worker loops.
    pub async fn start(
        self: &Arc<Self>,
        workers: usize,
        recovery: RecoveryPolicy,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, StoreError> {
        for r in self.store.recover_after_restart(recovery).await? {
            tracing::warn!(
                "run {} was {} when the runner stopped; now {}",
                r.id,
                r.was,
                r.now
            );
            // The dead worker never dropped its workspace and shadow repository.
            if let Some(dir) = &self.services.runs_dir
                && let Err(e) = crate::worker::remove_scratch(dir, &r.id.to_string())
            {
                tracing::error!("run {}: cannot remove its workspace: {e}", r.id);
            }
            // Nor did it edit its progress comment, which still says the
            // run is going.
            // Bounded: a forge that does not answer must not hold up start-up.
            match tokio::time::timeout(
                Duration::from_secs(20),
                self.close_progress_comment(r.id, r.now),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("run {}: progress comment not updated: {e}", r.id),
                Err(_) => tracing::warn!("run {}: progress comment not updated: timed out", r.id),
            }
        }
        self.resolve_writes_in_doubt().await;
        Ok((0..workers.max(1))
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.work().await })
            })
            .collect())
    }

    /// Forge writes a dead runner left in doubt (sent, or about to be, and
    /// not recorded) are looked for on the forge and recorded as applied or
    /// not ([`crate::effects::resolve_in_doubt`]). Then every run waiting
    /// for approval is brought up to date with its decisions: an approved
    /// effect that never reached the forge (the runner died while applying
    /// it, or before) is applied now — the human's approval stands, and the
    /// journal keeps it to once — and a run whose effects are all decided
    /// ends, as it would have had the runner lived.
    async fn resolve_writes_in_doubt(&self) {
        for r in crate::effects::resolve_in_doubt(&self.store, &self.forges).await {
            let e = &r.entry;
            match r.now {
                Some(now) => tracing::warn!(
                    "run {}: write {} ({}) was in doubt after a restart; the forge says: {now}",
                    e.run,
                    e.effect_id,
                    e.key
                ),
                None => tracing::warn!(
                    "run {}: write {} ({}) stays in doubt: its forge could not be asked",
                    e.run,
                    e.effect_id,
                    e.key
                ),
            }
        }
        let waiting = self
            .store
            .list_runs(crate::store::RunFilter {
                states: vec![RunState::AwaitingApproval],
                limit: Some(1000),
                ..Default::default()
            })
            .await;
        match waiting {
            Ok(runs) => {
                for run in runs {
                    if let Err(e) = self.complete_approved(&run).await {
                        tracing::error!("run {}: its approved effects: {e}", run.id);
                    }
                }
            }
            Err(e) => tracing::error!("cannot list the runs awaiting approval: {e}"),
        }
    }

    /// Applies each approved effect of `run` that the effect log does not
    /// show on the forge (never begun, or found not applied), with an event
    /// saying so; then ends the run if nothing is left to decide.
    async fn complete_approved(&self, run: &Run) -> Result<(), StoreError> {
        use crate::store::EffectLogState;
        let log = self.store.effect_log(run.id).await?;
        for held in self.store.held_effects(run.id).await? {
            if held.state != ApprovalState::Approved {
                continue;
            }
            let record: EffectRecord = match serde_json::from_value(held.proposal) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("run {}: held effect {}: {e}", run.id, held.effect_id);
                    continue;
                }
            };
            let key = crate::effects::effect_key(run.id, &record.effect_id, &record.proposal);
            let state = log.iter().find(|e| e.key == key).map(|e| e.state);
            // Applied or refused: settled; in doubt: looked for again before any resend.
            if !matches!(state, None | Some(EffectLogState::NotApplied)) {
                continue;
            }
            let note = match self.apply_held(run, &record).await {
                Ok(at) => format!(
                    "{}: approved before the runner stopped, and not on the forge: applied now{}",
                    record.effect_id,
                    at.map(|u| format!(" at {u}")).unwrap_or_default()
                ),
                Err(e) => format!(
                    "{}: approved before the runner stopped, and not on the forge: applying it now failed: {e}",
                    record.effect_id
                ),
            };
            self.store
                .append_event(
                    run.id,
                    &EventKind::Proposal {
                        effect: record.effect_id.clone(),
                    },
                    &note,
                )
                .await?;
        }
        self.end_if_all_decided(run).await
    }

    /// Ends a run awaiting approval once none of its effects is pending:
    /// succeeded, its reason saying what the humans decided, and its
    /// progress comment edited to say so.
    async fn end_if_all_decided(&self, r: &Run) -> Result<(), StoreError> {
        let pending = self.store.pending_effects(r.id).await?;
        if !pending.is_empty() || r.state != RunState::AwaitingApproval {
            return Ok(());
        }
        // The final line says what the humans decided, then what the
        // run itself did (its reason when it stopped to wait).
        let all = self.store.held_effects(r.id).await?;
        let approved = all
            .iter()
            .filter(|a| a.state == ApprovalState::Approved)
            .count();
        let reason = format!(
            "{}; held effects decided: {approved} approved, {} denied",
            r.reason.as_deref().unwrap_or("the run finished"),
            all.len() - approved,
        );
        let ended = self
            .store
            .transition(
                r.id,
                RunState::AwaitingApproval,
                RunState::Succeeded,
                Some(reason.clone()),
            )
            .await;
        // The issue's progress comment said "awaiting-approval"; now it
        // says how the run ended.
        if ended.is_ok()
            && let Err(e) = self
                .edit_progress_comment(r.id, RunState::Succeeded.as_str(), &reason)
                .await
        {
            tracing::warn!("run {}: progress comment: {e}", r.id);
        }
        Ok(())
    }

    /// The heartbeat of a runner sharing its store with others: every
    /// `every`, renew the leases of the runs this runner holds (a run whose
    /// lease another runner took over is cancelled here: its worker stops
    /// and its sandbox goes, and the store already refuses its writes), and
    /// recover the runs of runners whose leases expired.
    pub fn spawn_heartbeat(
        self: &Arc<Self>,
        every: Duration,
        recovery: RecoveryPolicy,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match me.store.renew_leases().await {
                    Ok(lost) => {
                        for id in lost {
                            tracing::warn!(
                                "run {id}: this runner's lease was taken over; stopping its worker"
                            );
                            if let Some(live) = me.live(id.0) {
                                live.cancel.cancel("lease lost".to_string());
                            }
                        }
                    }
                    Err(StoreError::Closed) => return,
                    Err(e) => tracing::error!("renewing leases: {e}"),
                }
                match me.store.recover_expired(recovery).await {
                    Ok(recovered) => {
                        for r in &recovered {
                            tracing::warn!(
                                "run {} of a lost runner was {}; now {}",
                                r.id,
                                r.was,
                                r.now
                            );
                        }
                        if recovered.iter().any(|r| r.now == RunState::Queued) {
                            me.notify_queued();
                        }
                    }
                    Err(StoreError::Closed) => return,
                    Err(e) => tracing::error!("recovering expired leases: {e}"),
                }
            }
        })
    }

    /// Tell idle workers a run was queued.
    pub fn notify_queued(&self) {
        self.wake.notify_waiters();
        // A worker between its empty claim and its wait is not waiting yet:
        // the stored permit wakes it at once instead of after its poll.
        self.wake.notify_one();
    }

    async fn work(self: Arc<Self>) {
        loop {
            match self.store.claim_next_run().await {
                Ok(Some(run)) => self.run(run).await,
                Ok(None) => {
                    // Woken by an enqueue, or poll: another process may enqueue.
                    let _ = tokio::time::timeout(Duration::from_millis(500), self.wake.notified())
                        .await;
                }
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!("claiming a run: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn finish(&self, id: RunId, from: RunState, to: RunState, reason: String) {
        if let Err(e) = self.store.transition(id, from, to, Some(reason)).await {
            tracing::error!("run {id}: {from} → {to}: {e}");
        }
    }

    async fn run(&self, run: Run) {
        let id = run.id;
        let events: Arc<dyn EventSink> = Arc::new(self.store.event_sink(id));
        let Some(forge) = (self.forges)(&run.repo) else {
            let why = format!("no forge is configured for {}", run.repo);
            events.record(EventKind::Warning, why.clone());
            self.finish(id, RunState::Preparing, RunState::Failed, why)
                .await;
            return;
        };
        if let Err(e) = self
            .store
            .transition(id, RunState::Preparing, RunState::Running, None)
            .await
        {
            tracing::error!("run {id}: cannot start: {e}");
            return;
        }
        let req = RunRequest {
            script: run.script.clone(),
            run_id: id.to_string(),
            repo: run.repo.clone(),
            role: run.role,
            number: run.number,
            trigger: match &run.trigger.kind {
                TriggerKind::Label { label } => RunTrigger::Label(label.clone()),
                TriggerKind::PlanApproved { .. } => RunTrigger::Label("plan-approved".into()),
                TriggerKind::PullRequestOpened => RunTrigger::PullRequestOpened,
                TriggerKind::Comment { .. } => {
                    RunTrigger::Command(run.trigger.instructions.clone().unwrap_or_default())
                }
                TriggerKind::ChangesRequested { review_id } => RunTrigger::Review(*review_id),
                TriggerKind::Fix { .. } => RunTrigger::Review(0),
                TriggerKind::PullRequestSynchronized | TriggerKind::Reviewed { .. } => {
                    RunTrigger::PullRequestOpened
                }
                TriggerKind::ReporterReplied { .. } | TriggerKind::Retry { .. } => {
                    match &run.trigger.instructions {
                        Some(text) => RunTrigger::Command(text.clone()),
                        None => RunTrigger::Manual,
                    }
                }
                TriggerKind::IssueOpened | TriggerKind::Manual => RunTrigger::Manual,
                TriggerKind::Schedule { name, args } => RunTrigger::Schedule {
                    name: name.clone(),
                    args: args.clone(),
                },
            },
            trust: run.trigger.actor_trust,
            // Only a forge login may be mentioned: not a token's name.
            actor: run
                .trigger
                .kind
                .from_forge()
                .then(|| run.trigger.actor.clone()),
            instructions: run.trigger.instructions.clone(),
            continue_from: [HANDBACK, RESUME]
                .iter()
                .map(|f| self.runs_dir.join(id.to_string()).join(f))
                .filter(|p| p.is_file())
                .collect(),
        };
        // An answering run's branch is its pull request's head, known once
        // the worker has read the forge; it is stored when the run ends.
        if let Some(branch) = req.branch() {
            let _ = self.store.set_branch(id, branch).await;
        }
        let live = LiveRun::new();
        if let Ok(mut l) = self.live.lock() {
            l.insert(id.0, live.clone());
        }
        let summary = execute(&self.services, forge, &req, events.clone(), &live).await;
        if summary.report.is_some() {
            // The new handback bundle holds the operator's commits now.
            let _ = std::fs::remove_file(self.runs_dir.join(id.to_string()).join(RESUME));
        }
        if let Ok(mut l) = self.live.lock() {
            l.remove(&id.0);
        }
        if req.answers_review()
            && let Some(branch) = &summary.branch
        {
            // Held effects are applied to this branch after the run.
            let _ = self.store.set_branch(id, branch.clone()).await;
        }
        if let Some(report) = &summary.report {
            for e in &report.effects {
                if matches!(e.state, EffectState::Held { .. }) {
                    let value = serde_json::to_value(e).unwrap_or_default();
                    if let Err(err) = self.store.hold_effect(id, &e.effect_id, value).await {
                        events.record(
                            EventKind::Warning,
                            format!("effect {} could not be held: {err}", e.effect_id),
                        );
                    }
                }
            }
        }
        let to = match summary.state {
            RunEnd::Succeeded => RunState::Succeeded,
            RunEnd::Blocked => RunState::Blocked,
            RunEnd::Failed => RunState::Failed,
            RunEnd::AwaitingApproval => RunState::AwaitingApproval,
            RunEnd::Cancelled => RunState::Cancelled,
        };
        // Events first, so a watcher that sees the final state has the log.
        let _ = self.store.flush().await;
        self.finish(id, RunState::Running, to, summary.reason).await;
    }

    /// Edit the progress comment of run `id`, which a runner that died
    /// mid-run left saying the run is going, to say how it ended (`now`:
    /// failed, or queued again). The comment's id is in a host-only event of
    /// the run's own log (never looked up on the forge, where anyone can
    /// write a comment carrying the marker).
    async fn close_progress_comment(&self, id: RunId, now: RunState) -> Result<(), String> {
        let (state, reason) = match now {
            RunState::Queued => (
                "interrupted",
                "the runner restarted while it ran; it is queued to run again",
            ),
            other => (other.as_str(), "the runner restarted while it ran"),
        };
        self.edit_progress_comment(id, state, reason).await
    }

    /// Edit run `id`'s progress comment to say it ended `state` because
    /// `reason`. The comment's id is in a host-only event of the run's own
    /// log (never looked up on the forge).
    async fn edit_progress_comment(
        &self,
        id: RunId,
        state: &str,
        reason: &str,
    ) -> Result<(), String> {
        // The last attempt's comment: each claim of the run posts its own.
        let mut comment = None;
        let mut after = 0;
        loop {
            let page = self
                .store
                .events_after(id, after, 1024)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            comment = page
                .iter()
                .filter(|e| e.type_name() == "started")
                .filter_map(|e| crate::worker::progress_comment_id(&e.message))
                .next_back()
                .or(comment);
        }
        let Some(comment) = comment else {
            return Ok(());
        };
        let run = self.store.get_run(id).await.map_err(|e| e.to_string())?;
        let forge = (self.forges)(&run.repo).ok_or("no forge is configured")?;
        let (reason, _) = self
            .services
            .gate
            .report_text(&run.repo.to_string(), reason);
        let body = crate::worker::progress_ended(&id.to_string(), run.role, state, &reason);
        forge
            .edit_comment(comment, &body)
            .await
            .map_err(|e| e.to_string())
    }

    fn live(&self, run: u64) -> Option<LiveRun> {
        self.live.lock().ok()?.get(&run).cloned()
    }

    async fn get(&self, run: u64) -> Result<Run, ControlError> {
        self.store.get_run(RunId(run)).await.map_err(|e| match e {
            StoreError::NoSuchRun(_) => ControlError::NotFound(format!("run r{run}")),
            other => ControlError::Internal(other.to_string()),
        })
    }

    /// Apply an approved held effect to the forge.
    async fn apply_held(&self, run: &Run, record: &EffectRecord) -> Result<Option<String>, String> {
        let forge = (self.forges)(&run.repo).ok_or("no forge is configured")?;
        let target = ForgeTarget {
            forge: forge.clone(),
            head_branch: run.branch.clone().unwrap_or_default(),
            base_branch: forge.default_branch().await.map_err(|e| e.to_string())?,
            journal: Some(crate::effects::EffectJournal {
                store: self.store.clone(),
                run: run.id,
            }),
        };
        let clone;
        let source = match (&record.proposal, &record.state) {
            (
                Proposal::PullRequest { .. } | Proposal::PullRequestUpdate { .. },
                EffectState::Held {
                    commit: Some(c), ..
                },
            ) => {
                // The commit frozen at proposal time lives in the run's bundle.
                let bundle = self.runs_dir.join(run.id.to_string()).join(HANDBACK);
                clone = tempfile::tempdir().map_err(|e| e.to_string())?;
                let dir = clone.path().join("held.git");
                // Output captured: git's warnings belong in the error, not
                // in the service's log.
                let out = crate::publish::host_git(None, None)
                    .args(["clone", "--quiet", "--bare", "--template="])
                    .arg(&bundle)
                    .arg(&dir)
                    .output()
                    .await
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!(
                        "cannot read the run's bundle {}: {}",
                        bundle.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                return apply_once(
                    &target,
                    &record.effect_id,
                    CommitSource::Frozen {
                        git_dir: &dir,
                        commit: c,
                    },
                    &self.services.gate,
                    &record.proposal,
                    None,
                )
                .await;
            }
            _ => CommitSource::None,
        };
        apply_once(
            &target,
            &record.effect_id,
            source,
            &self.services.gate,
            &record.proposal,
            None,
        )
        .await
    }
}

/// Checks an operator's bundle against the run's own work and stores it as
/// `to`: it must hold one branch, and build only on commits the run has.
async fn check_resume_bundle(handback: &Path, bytes: &[u8], to: &Path) -> Result<(), ControlError> {
    let invalid = |why: String| ControlError::Invalid(format!("the bundle {why}"));
    let scratch = tempfile::tempdir().map_err(|e| ControlError::Internal(e.to_string()))?;
    let file = scratch.path().join("resume.bundle");
    std::fs::write(&file, bytes).map_err(|e| ControlError::Internal(e.to_string()))?;
    let repo = scratch.path().join("work.git");
    let git = |args: &[&std::ffi::OsStr]| {
        let mut cmd = crate::publish::host_git(Some(&repo), None);
        cmd.args(args);
        async move { cmd.output().await }
    };
    let init = crate::publish::host_git(None, None)
        .args(["init", "--quiet", "--bare", "--template="])
        .arg(&repo)
        .output()
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    if !init.status.success() {
        return Err(ControlError::Internal(
            "cannot make a scratch repository".into(),
        ));
    }
    let fetched = git(&[
        "fetch".as_ref(),
        "--quiet".as_ref(),
        handback.as_os_str(),
        "+refs/heads/*:refs/heads/*".as_ref(),
    ])
    .await
    .map_err(|e| ControlError::Internal(e.to_string()))?;
    if !fetched.status.success() {
        return Err(ControlError::Internal(format!(
            "cannot read the run's own bundle: {}",
            String::from_utf8_lossy(&fetched.stderr).trim()
        )));
    }
    let heads = git(&["bundle".as_ref(), "list-heads".as_ref(), file.as_os_str()])
        .await
        .map_err(|e| ControlError::Internal(e.to_string()))?;
    if !heads.status.success() {
        return Err(invalid("is not a git bundle".into()));
    }
    let branches = String::from_utf8_lossy(&heads.stdout)
        .lines()
        .filter(|l| l.contains(" refs/heads/"))
        .count();
    if branches != 1 {
        return Err(invalid(format!(
            "must hold exactly one branch, it holds {branches}"
        )));
    }
    let verified = git(&[
        "bundle".as_ref(),
        "verify".as_ref(),
        "--quiet".as_ref(),
        file.as_os_str(),
    ])
    .await
    .map_err(|e| ControlError::Internal(e.to_string()))?;
    if !verified.status.success() {
        return Err(invalid(format!(
            "builds on commits the run does not have (make your commits on the branch `kiln handback` gave you): {}",
            String::from_utf8_lossy(&verified.stderr).trim()
        )));
    }
    std::fs::write(to, bytes).map_err(|e| ControlError::Internal(e.to_string()))
}

#[async_trait::async_trait]
impl RunControl for Runner {
    async fn queue(&self, q: QueueRun) -> Result<u64, ControlError> {
        use crate::forge::ForgeError;
        if !self.services.plugins.contains_key(&q.role) {
            return Err(ControlError::Invalid(format!(
                "no plugin plays role {} on this runner",
                q.role
            )));
        }
        if let Some(text) = &q.script {
            crate::model::ScriptedProvider::from_json("script", text)
                .map_err(|e| ControlError::Invalid(format!("the model script: {e}")))?;
        }
        let forge = (self.forges)(&q.repo).ok_or_else(|| {
            ControlError::NotFound(format!(
                "repository {}: no forge of this runner has it",
                q.repo
            ))
        })?;
        let improve = q.role == crate::config::Role::Improve;
        if improve {
            crate::schedule::check_improve_args(&q.args).map_err(ControlError::Invalid)?;
        } else {
            crate::forge::check_run_target(forge.as_ref(), q.role, q.number)
                .await
                .map_err(|e| match e {
                    ForgeError::NotFound(m) => ControlError::NotFound(m),
                    ForgeError::Invalid(m) => ControlError::Invalid(m),
                    other => ControlError::Internal(format!("reading {}: {other}", q.repo)),
                })?;
        }
        let id = self
            .store
            .enqueue_run(crate::store::NewRun {
                repo: q.repo,
                role: q.role,
                number: q.number,
                // The operator holding the token asked for it.
                trigger: crate::store::Trigger {
                    // `kiln improve`: the run a schedule would queue.
                    kind: if improve {
                        TriggerKind::Schedule {
                            name: crate::schedule::ON_DEMAND.into(),
                            args: q.args,
                        }
                    } else {
                        TriggerKind::Manual
                    },
                    actor: q.by,
                    actor_trust: crate::policy::Trust::Trusted,
                    delivery: None,
                    instructions: None,
                },
                script: q.script,
            })
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        self.notify_queued();
        Ok(id.0)
    }

    async fn steer(&self, run: u64, message: String, by: String) -> Result<(), ControlError> {
        if message.trim().is_empty() {
            return Err(ControlError::Invalid("the message is empty".into()));
        }
        let r = self.get(run).await?;
        let steering = self.live(run).map(|l| l.steering);
        let Some(steering) = steering else {
            return Err(ControlError::Conflict(format!(
                "run r{run} is {}, not running: there is no one to steer",
                r.state
            )));
        };
        self.store
            .append_event(
                r.id,
                &EventKind::Steering {
                    by: format!("operator:{by}"),
                },
                &message,
            )
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        steering.send(message);
        Ok(())
    }

    async fn cancel(&self, run: u64, by: String) -> Result<(), ControlError> {
        let r = self.get(run).await?;
        let live = self.live(run).map(|l| l.cancel);
        if let Some(c) = live {
            c.cancel(by);
            return Ok(());
        }
        if r.state.is_terminal() {
            return Err(ControlError::Conflict(format!(
                "run r{run} already ended ({})",
                r.state
            )));
        }
        self.store
            .transition(
                r.id,
                r.state,
                RunState::Cancelled,
                Some(format!("cancelled by {by}")),
            )
            .await
            .map(drop)
            .map_err(|e| ControlError::Conflict(e.to_string()))
    }

    async fn decide(
        &self,
        run: u64,
        effect: &str,
        decision: EffectDecision,
    ) -> Result<(), ControlError> {
        let r = self.get(run).await?;
        let verdict = if decision.approve {
            Verdict::Approve
        } else {
            Verdict::Deny
        };
        let approval = self
            .store
            .decide_effect(r.id, effect, verdict, &decision.by, decision.reason.clone())
            .await
            .map_err(|e| match e {
                StoreError::NoSuchEffect { .. } => {
                    ControlError::NotFound(format!("effect {effect} of run r{run}"))
                }
                StoreError::AlreadyDecided { .. } => ControlError::Conflict(e.to_string()),
                other => ControlError::Internal(other.to_string()),
            })?;
        let note = match approval.state {
            ApprovalState::Approved => {
                let record: EffectRecord = serde_json::from_value(approval.proposal.clone())
                    .map_err(|e| ControlError::Internal(format!("held effect {effect}: {e}")))?;
                match self.apply_held(&r, &record).await {
                    Ok(url) => format!(
                        "{effect} approved by {} and applied{}",
                        decision.by,
                        url.map(|u| format!(" at {u}")).unwrap_or_default()
                    ),
                    Err(e) => format!(
                        "{effect} approved by {} but the forge refused it: {e}",
                        decision.by
                    ),
                }
            }
            _ => format!(
                "{effect} denied by {}{}",
                decision.by,
                decision
                    .reason
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        };
        self.store
            .append_event(
                r.id,
                &EventKind::Proposal {
                    effect: effect.to_string(),
                },
                &note,
            )
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        self.end_if_all_decided(&r)
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        Ok(())
    }

    async fn attach(
        &self,
        run: u64,
        by: String,
        spec: crate::sandbox::ShellSpec,
    ) -> Result<Attached, ControlError> {
        let r = self.get(run).await?;
        let Some(live) = self.live(run) else {
            return Err(ControlError::Conflict(format!(
                "run r{run} is {}, not running: it has no sandbox to attach to",
                r.state
            )));
        };
        let Some(handle) = live.sandbox() else {
            return Err(ControlError::Conflict(format!(
                "run r{run} has no sandbox yet (it is still preparing); try again in a moment"
            )));
        };
        // Pause first, so the agent takes no step while the shell starts.
        let guard = live.pause.hold();
        let shell = handle
            .backend
            .shell(&handle.sandbox, spec)
            .await
            .map_err(|e| {
                ControlError::Conflict(format!("cannot open a shell in run r{run}: {e}"))
            })?;
        drop(handle);
        let events: Arc<dyn EventSink> = Arc::new(self.store.event_sink(r.id));
        events.record(
            EventKind::Note,
            format!("operator {by} attached a shell to the sandbox; the agent is paused"),
        );
        Ok(Attached {
            shell,
            session: Box::new(AttachSession {
                by,
                events: events.clone(),
                _guard: guard,
            }),
            events,
            idle_after: std::time::Duration::from_secs(
                self.services.sandbox_config.attach_idle_secs,
            ),
        })
    }

    async fn resume(&self, run: u64, resume: Resume) -> Result<(), ControlError> {
        let r = self.get(run).await?;
        if !r.state.is_terminal() {
            return Err(ControlError::Conflict(format!(
                "run r{run} is {}: only a finished run can be resumed",
                r.state
            )));
        }
        let dir = self.runs_dir.join(r.id.to_string());
        let handback = dir.join(HANDBACK);
        if !handback.is_file() {
            return Err(ControlError::Conflict(format!(
                "run r{run} left no work to continue from (it ended before its workspace existed)"
            )));
        }
        if let Some(bytes) = &resume.bundle {
            check_resume_bundle(&handback, bytes, &dir.join(RESUME)).await?;
        }
        self.store
            .resume(r.id, &resume.by, resume.note)
            .await
            .map_err(|e| match e {
                StoreError::IllegalTransition { .. } => ControlError::Conflict(e.to_string()),
                other => ControlError::Internal(other.to_string()),
            })?;
        self.notify_queued();
        Ok(())
    }

    async fn handback(&self, run: u64) -> Result<Handback, ControlError> {
        let r = self.get(run).await?;
        let bundle = self.runs_dir.join(r.id.to_string()).join(HANDBACK);
        if !bundle.is_file() {
            return Err(ControlError::Conflict(format!(
                "run r{run} has no handback bundle yet (it is written when the run ends)"
            )));
        }
        Ok(Handback {
            bundle,
            branch: r.branch.unwrap_or_default(),
        })
    }
}
