//! Intake: forge events in (GitHub webhooks, the local forge's outbox), runs out.
//!
//! [`router`] serves `POST /webhooks/github` ([`webhook`]): signature,
//! size limit, replay protection, the delivery committed to the store, then
//! 202: a runner that dies after answering loses nothing, and the next one
//! processes what was accepted and not processed. The local forge's events
//! come from its outbox ([`local`]). Both reach one [`Dispatcher`]:
//! processing happens off the request path, the [`route`]r reads `[[triggers]]`
//! ([`config`]), every dispatch passes the fail-closed [`trust`] check and
//! the re-run cap, and runs are queued in the store (or `/kiln` commands
//! carried out). Every delivery ends recorded as queued, ignored, refused
//! or failed, with a reason.

pub mod config;
pub mod event;
pub mod local;
mod process;
mod ratelimit;
pub mod route;
pub mod trust;
pub mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use tokio::sync::{broadcast, mpsc};

use crate::store::RunStore;

pub use config::{IntakeConfig, IntakeSettings, TriggerRule, default_rules, read_webhook_secret};
pub use event::WebhookEvent;
pub use process::{CLAIM_LEASE, DeliveryOptions, Outcome, POLL, PROCESSING_LIMIT, RunnerHooks};
pub use trust::ForgeResolver;

/// The path GitHub posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/github";

/// Why the intake cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// An empty secret would make every signature check meaningless.
    #[error("the webhook secret is empty: refusing to accept unsigned webhooks")]
    EmptySecret,
}

/// The one path from forge events to runs: GitHub's webhooks and the local
/// forge's outbox both hand their events to it. It routes each under
/// `[[triggers]]`, checks trust, applies the re-run cap, queues runs or
/// carries out `/kiln` commands, and records the delivery's outcome.
#[derive(Clone)]
pub struct Dispatcher {
    processor: Arc<process::Processor>,
    nudges: mpsc::Sender<process::Nudge>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("rules", &self.processor.rules.len())
            .finish()
    }
}

impl Dispatcher {
    /// Starts the background processor for stored deliveries (on the
    /// current tokio runtime), claiming them in this process's name; it
    /// stops when every clone is dropped.
    pub fn start(
        store: Arc<dyn RunStore>,
        forges: ForgeResolver,
        config: &IntakeConfig,
        hooks: RunnerHooks,
    ) -> Dispatcher {
        Dispatcher::start_with(store, forges, config, hooks, DeliveryOptions::default())
    }

    /// [`Dispatcher::start`], claiming stored deliveries as `options` say
    /// (`kiln serve`: its runner id, and `--hold-deliveries`).
    pub fn start_with(
        store: Arc<dyn RunStore>,
        forges: ForgeResolver,
        config: &IntakeConfig,
        hooks: RunnerHooks,
        options: DeliveryOptions,
    ) -> Dispatcher {
        let settings = &config.intake;
        let (nudges, inbox) = mpsc::channel(settings.queue_capacity);
        let (outcomes, _) = broadcast::channel(1024);
        let processor = Arc::new(process::Processor {
            store,
            forges,
            rules: config.rules(),
            kiln_logins: settings.kiln_logins.clone(),
            custom_roles: config.custom_roles.clone(),
            max_runs_per_target: settings.max_runs_per_target,
            actor_limit: ratelimit::ActorLimiter::new(
                settings.runs_per_actor_per_hour,
                settings.exempt_maintainers,
            ),
            outcomes,
            hooks,
            claim: crate::store::DeliveryClaim {
                runner: options.runner,
                since_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                lease_ms: i64::try_from(CLAIM_LEASE.as_millis()).unwrap_or(i64::MAX),
            },
            hold: options.hold,
        });
        tokio::spawn(processor.clone().run(inbox));
        Dispatcher { processor, nudges }
    }

    /// Processes one event now and returns its outcome (the delivery must
    /// already be recorded with [`RunStore::record_delivery`]): the local
    /// forge's events, whose outbox keeps them until this returns.
    pub async fn process(&self, delivery: String, event: WebhookEvent) -> Outcome {
        self.processor
            .process(process::Job { delivery, event })
            .await
    }

    /// What becomes of each delivery, from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<Outcome> {
        self.processor.outcomes.subscribe()
    }

    /// The store deliveries are recorded in.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.processor.store
    }
}

/// The running webhook intake: what the handler needs, and the processor's inbox.
pub struct Intake {
    secret: Vec<u8>,
    body_limit: usize,
    store: Arc<dyn RunStore>,
    nudges: mpsc::Sender<process::Nudge>,
    dispatcher: Dispatcher,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("secret", &"<redacted>")
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl Intake {
    /// Starts a processor of its own (on the current tokio runtime) and
    /// returns the intake for [`router`]. The processor stops when the
    /// intake is dropped.
    pub fn start(
        store: Arc<dyn RunStore>,
        forges: ForgeResolver,
        config: &IntakeConfig,
        secret: impl Into<Vec<u8>>,
    ) -> Result<Arc<Intake>, IntakeError> {
        let dispatcher = Dispatcher::start(store, forges, config, RunnerHooks::default());
        Intake::with_dispatcher(dispatcher, config, secret)
    }

    /// The webhook intake in front of `dispatcher` (shared with the local
    /// forge's events).
    pub fn with_dispatcher(
        dispatcher: Dispatcher,
        config: &IntakeConfig,
        secret: impl Into<Vec<u8>>,
    ) -> Result<Arc<Intake>, IntakeError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(IntakeError::EmptySecret);
        }
        Ok(Arc::new(Intake {
            secret,
            body_limit: config.intake.body_limit_bytes,
            store: dispatcher.store().clone(),
            nudges: dispatcher.nudges.clone(),
            dispatcher,
        }))
    }

    /// What becomes of each accepted delivery, from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<Outcome> {
        self.dispatcher.outcomes()
    }
}

/// `POST /webhooks/github`, with the intake's body limit.
pub fn router(intake: Arc<Intake>) -> Router {
    let limit = intake.body_limit;
    Router::new()
        .route(WEBHOOK_PATH, post(webhook::receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(intake)
}
