//! `POST /webhooks/github`: the request path. It only verifies, parses,
//! deduplicates, commits the delivery (its event name and body) to the
//! store and nudges the processor; it answers 202 once the delivery is
//! durable and before anything slow (forge lookups, run queueing) happens.
//! The processor reads the delivery back from the store, so a runner that
//! dies after the 202 loses nothing: the next one processes it.
//!
//! | check (in order)                         | status | error code           |
//! |------------------------------------------|--------|----------------------|
//! | body over `body_limit_bytes`             | 413    | `body-too-large`     |
//! | content type not JSON                    | 415    | `not-json`           |
//! | no `X-GitHub-Event` / bad delivery id    | 400    | `missing-header`, `bad-delivery-id` |
//! | no or malformed `X-Hub-Signature-256`    | 401    | `missing-signature`, `bad-signature` |
//! | signature does not match                 | 401    | `bad-signature`      |
//! | body is not the event's JSON             | 400    | `bad-payload`        |
//! | delivery id seen before (a replay)       | 409    | `duplicate-delivery` |
//! | processing queue full / store failing    | 503    | `overloaded`, `store-unavailable` |
//!
//! A 202 means the delivery is committed (fsynced under the default
//! `synchronous = FULL`); a 503 means nothing was kept, so GitHub's
//! redelivery is processed normally.
//!
//! The signature is checked before the delivery id is recorded, so
//! unsigned requests cannot fill the dedup table or burn real ids.
//! `ping` answers 200; events Kiln does not handle answer 202 "ignored".

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::store::{DeliveryRecord, DeliveryStatus};

use super::Intake;
use super::event::{Parsed, WebhookEvent, parse};
use super::process::Nudge;

/// A refused webhook: status, a stable code, and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Why, for the sender's delivery log.
    pub reason: String,
}

impl Rejection {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        Rejection {
            status,
            code,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "reason": self.reason })),
        )
            .into_response()
    }
}

/// Checks `X-Hub-Signature-256` (`sha256=<hex>`) over `body` in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), Rejection> {
    let Some(header) = header else {
        return Err(Rejection::new(
            StatusCode::UNAUTHORIZED,
            "missing-signature",
            "X-Hub-Signature-256 is missing: configure the webhook with a secret",
        ));
    };
    let malformed = || {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            "bad-signature",
            "X-Hub-Signature-256 is not sha256=<64 hex digits>",
        )
    };
    let hex_sig = header.strip_prefix("sha256=").ok_or_else(malformed)?;
    if hex_sig.len() != 64 {
        return Err(malformed());
    }
    let sig = hex::decode(hex_sig).map_err(|_| malformed())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| {
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the webhook secret is unusable",
        )
    })?;
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| {
        Rejection::new(
            StatusCode::UNAUTHORIZED,
            "bad-signature",
            "X-Hub-Signature-256 does not match the body and the configured secret",
        )
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Rejection> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                "bad-header",
                format!("{name} is not visible ASCII"),
            )
        }),
    }
}

/// A delivery id as GitHub sends them; checked before it is logged or stored.
fn valid_delivery_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The handler: rejections are logged and answered with a JSON reason.
pub(super) async fn receive(
    State(intake): State<Arc<Intake>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match accept(&intake, &headers, body).await {
        Ok((outcome, response)) => {
            crate::metrics::global().webhook_delivery(outcome);
            response
        }
        Err(r) => {
            crate::metrics::global().webhook_delivery(r.code);
            let delivery = headers
                .get("x-github-delivery")
                .and_then(|v| v.to_str().ok())
                .filter(|d| valid_delivery_id(d))
                .unwrap_or("-");
            tracing::warn!(
                delivery,
                status = r.status.as_u16(),
                code = r.code,
                reason = %r.reason,
                "webhook rejected"
            );
            r.into_response()
        }
    }
}

/// Checks and takes a delivery; `Ok` names how it went (`accepted`,
/// `ignored`, `ping`) for the metrics.
async fn accept(
    intake: &Intake,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(&'static str, Response), Rejection> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Rejection::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                format!(
                    "the body is larger than the {} bytes this endpoint accepts",
                    intake.body_limit
                ),
            )
        } else {
            Rejection::new(e.status(), "bad-body", e.body_text())
        }
    })?;
    if let Some(ct) = header(headers, header::CONTENT_TYPE.as_str())? {
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(Rejection::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "not-json",
                format!("content type {mime:?}: configure the webhook with application/json"),
            ));
        }
    }
    let event = header(headers, "x-github-event")?.ok_or_else(|| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "missing-header",
            "X-GitHub-Event is missing",
        )
    })?;
    let delivery = header(headers, "x-github-delivery")?.ok_or_else(|| {
        Rejection::new(
            StatusCode::BAD_REQUEST,
            "missing-header",
            "X-GitHub-Delivery is missing",
        )
    })?;
    if !valid_delivery_id(delivery) {
        return Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad-delivery-id",
            "X-GitHub-Delivery must be 1-128 letters, digits, '-', '_' or '.'",
        ));
    }
    verify_signature(
        &intake.secret,
        &body,
        header(headers, "x-hub-signature-256")?,
    )?;
    let parsed = parse(event, &body)
        .map_err(|e| Rejection::new(StatusCode::BAD_REQUEST, "bad-payload", e))?;

    // Reserve queue room before recording the id: a delivery refused for
    // load must stay redeliverable.
    let permit = match &parsed {
        Parsed::Known(e) if matches!(e.as_ref(), WebhookEvent::Ping(_)) => None,
        Parsed::Unknown(_) => None,
        Parsed::Known(_) => Some(intake.nudges.try_reserve().map_err(|_| {
            Rejection::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the intake queue is full; redeliver later",
            )
        })?),
    };
    let sha = hex::encode(Sha256::digest(&body));
    let unavailable = |e: crate::store::StoreError| {
        tracing::error!(delivery, error = %e, "webhook: store failed");
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "the run store is unavailable; redeliver later",
        )
    };
    // What will be processed is stored with its body, and committed, before
    // the answer; a ping or an event Kiln ignores is finished at once and
    // needs only its id and hash.
    let recorded = if permit.is_some() {
        intake.store.accept_delivery(delivery, event, &body).await
    } else {
        intake.store.record_delivery(delivery, event, &sha).await
    };
    match recorded.map_err(unavailable)? {
        DeliveryRecord::New => {}
        DeliveryRecord::Duplicate {
            first_seen_ms,
            status,
        } => {
            return Err(Rejection::new(
                StatusCode::CONFLICT,
                "duplicate-delivery",
                format!(
                    "delivery {delivery} was already received (at {first_seen_ms} ms since the epoch, \
                     now {}); a replay is not processed again",
                    status.as_str()
                ),
            ));
        }
    }
    let response = match parsed {
        Parsed::Unknown(name) => {
            let reason = format!("event {name:?} is not handled by Kiln");
            finish(intake, delivery, DeliveryStatus::Ignored, &reason).await;
            tracing::info!(delivery, event = name, "webhook ignored: event not handled");
            (
                "ignored",
                (
                    StatusCode::ACCEPTED,
                    Json(json!({ "status": "ignored", "delivery": delivery, "reason": reason })),
                )
                    .into_response(),
            )
        }
        Parsed::Known(event) => match (*event, permit) {
            (WebhookEvent::Ping(ping), _) => {
                finish(intake, delivery, DeliveryStatus::Ignored, "ping").await;
                (
                    "ping",
                    (
                        StatusCode::OK,
                        Json(json!({ "status": "pong", "delivery": delivery, "zen": ping.zen })),
                    )
                        .into_response(),
                )
            }
            (_, Some(permit)) => {
                permit.send(Nudge(delivery.to_string()));
                (
                    "accepted",
                    (
                        StatusCode::ACCEPTED,
                        Json(json!({ "status": "accepted", "delivery": delivery })),
                    )
                        .into_response(),
                )
            }
            (_, None) => {
                return Err(Rejection::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "no queue room was reserved",
                ));
            }
        },
    };
    Ok(response)
}

async fn finish(intake: &Intake, delivery: &str, status: DeliveryStatus, reason: &str) {
    if let Err(e) = intake
        .store
        .finish_delivery(delivery, status, Some(reason.to_string()))
        .await
    {
        tracing::error!(delivery, error = %e, "cannot record the delivery's outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("key");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_exactly() {
        let (secret, body) = (
            b"It's a Secret to Everybody".as_slice(),
            b"Hello, World!".as_slice(),
        );
        // GitHub's documented example pair.
        assert_eq!(
            sign(secret, body),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert_eq!(
            verify_signature(secret, body, Some(&sign(secret, body))),
            Ok(())
        );
        let attempts: [(&str, Option<String>); 7] = [
            ("missing", None),
            ("wrong secret", Some(sign(b"other", body))),
            ("other body", Some(sign(secret, b"Hello, World?"))),
            (
                "sha1 prefix",
                Some(sign(secret, body).replacen("sha256=", "sha1=", 1)),
            ),
            ("truncated", Some(sign(secret, body)[..70].to_string())),
            ("not hex", Some(format!("sha256={}", "z".repeat(64)))),
            (
                "upper-case prefix",
                Some(sign(secret, body).replacen("sha256", "SHA256", 1)),
            ),
        ];
        for (what, header) in attempts {
            let r = verify_signature(secret, body, header.as_deref());
            assert!(
                matches!(&r, Err(r) if r.status == StatusCode::UNAUTHORIZED),
                "{what}: should be refused with 401, got {r:?}"
            );
        }
    }
}
