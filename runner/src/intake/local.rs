//! The local forge's events, fed to the same [`Dispatcher`] as GitHub's
//! webhooks. The forge writes each event in the transaction of its change
//! (its outbox, [`crate::forge::local::Outbox`]); this pump reads them in
//! order, records each as a delivery (`local-<forge instance>-<event id>`)
//! and processes it, then moves its cursor, kept in the forge database.
//!
//! Exactly once, across crashes: a delivery already recorded is processed
//! again only if its outcome was never recorded (the service died while
//! processing it), and queueing is idempotent per delivery
//! ([`crate::store::RunStore::enqueue_run_capped`]), so the second pass
//! finds the run the first one queued instead of queueing another.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::forge::local::{ForgeEvent, Outbox};
use crate::store::{DeliveryRecord, DeliveryStatus};

use super::Dispatcher;
use super::event::{Parsed, parse};

/// Events read per batch.
const BATCH: usize = 256;

/// How often `kiln serve` looks for new events when there were none: a
/// label's run should start about as soon as `kiln run` would start it
/// (`benches/trigger.rs`), and one indexed read of the outbox costs
/// microseconds.
pub const IDLE_POLL: Duration = Duration::from_millis(25);

/// How the pump runs.
#[derive(Debug, Clone)]
pub struct PumpOptions {
    /// The local forge's root (`<data>/forge`).
    pub forge_root: PathBuf,
    /// The cursor's name: one per consumer (the runner id).
    pub consumer: String,
    /// How long to wait when the outbox has nothing new.
    pub idle_poll: Duration,
    /// Only this repository's events (`kiln demo`); the others are passed
    /// over. `None`: every repository's.
    pub only_repo: Option<crate::forge::RepoRef>,
}

/// Why the pump could not start.
#[derive(Debug, thiserror::Error)]
#[error("the local forge's events cannot be read: {0}")]
pub struct PumpError(String);

/// Opens the outbox and starts the pump on the current tokio runtime; it
/// runs until the runtime shuts down.
pub fn start(dispatcher: Dispatcher, options: PumpOptions) -> Result<(), PumpError> {
    let outbox = Outbox::open(&options.forge_root).map_err(|e| PumpError(e.to_string()))?;
    let outbox = Arc::new(Mutex::new(outbox));
    tokio::spawn(run(dispatcher, outbox, options));
    Ok(())
}

async fn blocking<T: Send + 'static>(
    outbox: &Arc<Mutex<Outbox>>,
    f: impl FnOnce(&Outbox) -> Result<T, crate::forge::ForgeError> + Send + 'static,
) -> Result<T, String> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || {
        let o = outbox
            .lock()
            .map_err(|_| "the outbox lock is poisoned".to_string())?;
        f(&o).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("outbox task failed: {e}"))?
}

async fn run(dispatcher: Dispatcher, outbox: Arc<Mutex<Outbox>>, options: PumpOptions) {
    let instance = match blocking(&outbox, |o| Ok(o.instance().to_string())).await {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "local forge events: cannot read the forge's instance id");
            return;
        }
    };
    // A store or forge failure is retried after a pause, from the same event.
    let mut backoff = options.idle_poll;
    loop {
        let consumer = options.consumer.clone();
        let batch = blocking(&outbox, move |o| {
            let cursor = o.cursor(&consumer)?;
            o.after(cursor, BATCH)
        })
        .await;
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "local forge events: cannot read the outbox");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if batch.is_empty() {
            tokio::time::sleep(options.idle_poll).await;
            continue;
        }
        for event in batch {
            let wanted = options
                .only_repo
                .as_ref()
                .is_none_or(|r| r.to_string() == event.repo);
            if wanted && let Err(e) = deliver(&dispatcher, &instance, &event).await {
                tracing::error!(event = event.id, error = %e, "local forge event not processed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                break;
            }
            backoff = options.idle_poll;
            let (consumer, id) = (options.consumer.clone(), event.id);
            if let Err(e) = blocking(&outbox, move |o| o.advance(&consumer, id)).await {
                tracing::error!(error = %e, "local forge events: cannot move the cursor");
                break;
            }
        }
    }
}

/// Records and processes one event; `Err` leaves it for the next pass.
async fn deliver(
    dispatcher: &Dispatcher,
    instance: &str,
    event: &ForgeEvent,
) -> Result<(), String> {
    let store = dispatcher.store();
    let delivery = event.delivery_id(instance);
    let sha = hex::encode(Sha256::digest(event.payload.as_bytes()));
    match store
        .record_delivery(&delivery, &event.name, &sha)
        .await
        .map_err(|e| format!("recording delivery {delivery}: {e}"))?
    {
        DeliveryRecord::New => {}
        // Its processing was interrupted: do it again (queueing is idempotent).
        DeliveryRecord::Duplicate {
            status: DeliveryStatus::Received,
            ..
        } => {}
        DeliveryRecord::Duplicate { .. } => return Ok(()),
    }
    match parse(&event.name, event.payload.as_bytes()) {
        Ok(Parsed::Known(e)) => {
            dispatcher.process(delivery, *e).await;
        }
        Ok(Parsed::Unknown(name)) => {
            store
                .finish_delivery(
                    &delivery,
                    DeliveryStatus::Ignored,
                    Some(format!("{name} events trigger nothing")),
                )
                .await
                .map_err(|e| e.to_string())?;
        }
        Err(why) => {
            store
                .finish_delivery(&delivery, DeliveryStatus::Failed, Some(why))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}
