//! Webhook intake: GitHub deliveries in, queued runs out.
//!
//! [`router`] serves `POST /webhooks/github` ([`webhook`]): signature,
//! size limit, replay protection, then 202. Processing happens off the
//! request path ([`process`]): the [`route`]r reads `[[triggers]]`
//! ([`config`]), every dispatch passes the fail-closed [`trust`] check and
//! the re-run cap, and runs are queued in the store. Every delivery ends
//! recorded as queued, ignored, refused or failed, with a reason.

pub mod config;
pub mod event;
mod process;
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
pub use process::Outcome;
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

/// The running intake: what the handler needs, and the processor's inbox.
pub struct Intake {
    secret: Vec<u8>,
    body_limit: usize,
    store: Arc<dyn RunStore>,
    jobs: mpsc::Sender<process::Job>,
    outcomes: broadcast::Sender<Outcome>,
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
    /// Starts the processor (on the current tokio runtime) and returns the
    /// intake for [`router`]. The processor stops when the intake is dropped.
    pub fn start(
        store: Arc<dyn RunStore>,
        forges: ForgeResolver,
        config: &IntakeConfig,
        secret: impl Into<Vec<u8>>,
    ) -> Result<Arc<Intake>, IntakeError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(IntakeError::EmptySecret);
        }
        let settings = &config.intake;
        let (jobs, inbox) = mpsc::channel(settings.queue_capacity);
        let (outcomes, _) = broadcast::channel(1024);
        let processor = Arc::new(process::Processor {
            store: store.clone(),
            forges,
            rules: config.rules(),
            kiln_logins: settings.kiln_logins.clone(),
            custom_roles: config.custom_roles.clone(),
            max_runs_per_target: settings.max_runs_per_target,
            outcomes: outcomes.clone(),
        });
        tokio::spawn(processor.run(inbox));
        Ok(Arc::new(Intake {
            secret,
            body_limit: settings.body_limit_bytes,
            store,
            jobs,
            outcomes,
        }))
    }

    /// What becomes of each accepted delivery, from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<Outcome> {
        self.outcomes.subscribe()
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
