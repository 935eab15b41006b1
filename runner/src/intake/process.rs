//! Processing of accepted deliveries, off the request path: route, check
//! trust, apply the re-run cap, queue runs, and record what became of the
//! delivery.

use std::sync::Arc;

use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::policy::Trust;
use crate::store::{DeliveryStatus, Enqueued, NewRun, RunId, RunStore, Trigger};

use super::config::TriggerRule;
use super::event::WebhookEvent;
use super::route::{Dispatch, Route, route};
use super::trust::{ForgeResolver, check};

/// Deliveries processed at once (trust lookups may wait on the forge).
const CONCURRENCY: usize = 16;

/// An accepted delivery waiting to be processed.
pub(super) struct Job {
    pub(super) delivery: String,
    pub(super) event: WebhookEvent,
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

/// What processing needs.
pub(super) struct Processor {
    pub(super) store: Arc<dyn RunStore>,
    pub(super) forges: ForgeResolver,
    pub(super) rules: Vec<TriggerRule>,
    pub(super) kiln_logins: Vec<String>,
    /// The custom roles `/kiln <role>` may name (`[[roles]]`).
    pub(super) custom_roles: Vec<crate::config::Role>,
    pub(super) max_runs_per_target: u32,
    pub(super) outcomes: broadcast::Sender<Outcome>,
}

impl Processor {
    /// Processes jobs until every sender is gone.
    pub(super) async fn run(self: Arc<Self>, mut jobs: mpsc::Receiver<Job>) {
        let limit = Arc::new(Semaphore::new(CONCURRENCY));
        while let Some(job) = jobs.recv().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.process(job).await;
                drop(permit);
            });
        }
    }

    async fn process(&self, job: Job) {
        let outcome = self.decide(&job).await;
        match outcome.status {
            DeliveryStatus::Queued => tracing::info!(
                delivery = %outcome.delivery, runs = ?outcome.runs, reason = ?outcome.reason,
                "webhook queued runs"
            ),
            DeliveryStatus::Failed => tracing::error!(
                delivery = %outcome.delivery, reason = ?outcome.reason, "webhook processing failed"
            ),
            status => tracing::info!(
                delivery = %outcome.delivery, status = status.as_str(), reason = ?outcome.reason,
                "webhook triggered nothing"
            ),
        }
        if let Err(e) = self
            .store
            .finish_delivery(&outcome.delivery, outcome.status, outcome.reason.clone())
            .await
        {
            tracing::error!(delivery = %outcome.delivery, error = %e, "cannot record the delivery's outcome");
        }
        let _ = self.outcomes.send(outcome);
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
            Route::Dispatch(d) => d,
        };
        let mut runs = Vec::new();
        let mut refusals = Vec::new();
        let mut failures = Vec::new();
        for d in dispatches {
            if let Err(why) = check(&self.forges, &self.kiln_logins, &d).await {
                refusals.push(format!("{} on #{}: {why}", d.role, d.number));
                continue;
            }
            match self.enqueue(&job.delivery, d).await {
                Ok(Ok(id)) => runs.push(id),
                Ok(Err(refused)) => refusals.push(refused),
                Err(failed) => failures.push(failed),
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

    /// Queues the run unless the cap is reached: `Ok(Err)` is a refusal,
    /// `Err` a store failure.
    async fn enqueue(&self, delivery: &str, d: Dispatch) -> Result<Result<RunId, String>, String> {
        let (repo, role, number) = (d.repo.clone(), d.role, d.number);
        let run = NewRun {
            repo: d.repo,
            role: d.role,
            number: d.number,
            trigger: Trigger {
                kind: d.kind,
                actor: d.actor.login,
                actor_trust: Trust::Trusted,
                delivery: Some(delivery.to_string()),
                instructions: d.instructions,
            },
        };
        match self
            .store
            .enqueue_run_capped(run, u64::from(self.max_runs_per_target))
            .await
        {
            Ok(Enqueued::Queued(id)) => Ok(Ok(id)),
            Ok(Enqueued::CapReached { existing }) => Ok(Err(format!(
                "{role} on {repo}#{number}: re-run cap reached ({existing} of {} runs)",
                self.max_runs_per_target
            ))),
            Err(e) => Err(format!("{role} on #{number}: cannot queue the run: {e}")),
        }
    }
}
