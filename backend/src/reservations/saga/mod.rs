//! The reservation saga of SPEC §5 as a state machine over the inventory scripts:
//!
//! ```text
//!            hold.lua (straight to PAYMENT_PENDING when the charge follows at once)
//!   (new) ─────────────► HELD ──begin_payment.lua──► PAYMENT_PENDING ──confirm.lua──► CONFIRMED
//!                         │                            │      │                        │
//!              release.lua│ (expired)       release.lua│      │abandon.lua     cancel_begin.lua
//!                         ▼                            ▼      ▼ (refund, never    + cancel.lua
//!                      EXPIRED                      FAILED ◄─ confirm)             ▼
//!                                                                               CANCELLED
//! ```
//!
//! Every arrow is one Lua script, a compare-and-set on the saga's status, so a saga driven twice
//! (the request, recovery on another replica, the background settler) still ends once. The
//! request path ([`reserve`]) never outlives its deadline: compensation that does not finish in
//! time goes on in the background ([`settle`]), and a crash leaves it to [`recover`]. A
//! PAYMENT_PENDING saga records `confirmBy` (Redis' clock); after it, `confirm.lua` refuses, so a
//! client told a failure never sees the saga confirm.

mod cancel;
mod lease;
mod recover;
mod reserve;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};

pub use lease::Lease;

use super::inventory::{Inventory, InventoryError, Release, Step};
use super::model::{Failure, Reservation, ReservationStatus};
use super::payer::Payer;
use crate::telemetry::{Metrics, MetricsError};

/// Default hold TTL (a hold with no payment started returns to stock after it).
pub const DEFAULT_HOLD_TTL_MS: u64 = 120_000;
/// Default deadline of a whole `POST /api/reservations` (SPEC §5).
pub const DEFAULT_REQUEST_DEADLINE_MS: u64 = 15_000;
/// Default saga lease.
pub const DEFAULT_LEASE_MS: u64 = 5_000;

/// Saga timing and identity.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// How long a hold lasts before it returns to stock by itself.
    pub hold_ttl_ms: u64,
    /// Saga lease duration (renewed while a step is in flight).
    pub lease_ms: u64,
    /// Whole `POST /api/reservations` deadline.
    pub request_deadline: Duration,
    /// This replica's id (lease owner).
    pub owner: String,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            hold_ttl_ms: DEFAULT_HOLD_TTL_MS,
            lease_ms: DEFAULT_LEASE_MS,
            request_deadline: Duration::from_millis(DEFAULT_REQUEST_DEADLINE_MS),
            owner: "replica".into(),
        }
    }
}

/// Saga counters registered on the service's registry.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    /// `reservations_saga_outcomes_total{outcome}`: how POSTs ended (counted by the API).
    pub outcomes: IntCounterVec,
    /// `reservations_recovery_actions_total{action}`: what recovery, the settler and the hold
    /// sweeper did.
    pub recovery: IntCounterVec,
}

impl SagaMetrics {
    /// Creates and registers the counters.
    pub fn register(metrics: &Metrics) -> Result<Self, MetricsError> {
        let outcomes = IntCounterVec::new(
            Opts::new(
                "reservations_saga_outcomes_total",
                "Reservation sagas ended by POST /api/reservations, by outcome",
            ),
            &["outcome"],
        )?;
        let recovery = IntCounterVec::new(
            Opts::new(
                "reservations_recovery_actions_total",
                "Sagas finished or compensated by recovery, the settler and the hold sweeper",
            ),
            &["action"],
        )?;
        metrics.register(Box::new(outcomes.clone()))?;
        metrics.register(Box::new(recovery.clone()))?;
        Ok(Self { outcomes, recovery })
    }
}

/// A successful `POST /api/reservations`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Confirmed (now, or by the first request with this saga).
    Created {
        /// The reservation.
        view: Box<Reservation>,
        /// Its JSON, serialized once (also what confirm.lua stored for idempotent replays).
        body: String,
    },
    /// The stored answer of an earlier request with the same `Idempotency-Key` and body.
    Replayed {
        /// Its HTTP status.
        status: u16,
        /// Its JSON body, byte for byte.
        body: String,
    },
}

/// The saga driver shared by the API, recovery and the sweeper.
#[derive(Debug, Clone)]
pub struct Saga {
    /// Inventory scripts.
    pub inv: Inventory,
    /// Payments port.
    pub payer: Payer,
    /// Timing.
    pub cfg: Arc<SagaConfig>,
    /// Counters.
    pub metrics: SagaMetrics,
}

impl Reserved {
    /// A confirmed reservation and its JSON.
    pub fn created(view: Reservation) -> Result<Self, crate::reservations::error::SagaError> {
        let body = serde_json::to_string(&view)
            .map_err(|e| crate::reservations::error::SagaError::Internal(e.to_string()))?;
        Ok(Self::Created {
            view: Box::new(view),
            body,
        })
    }
}

/// Current time as (ms since the epoch, RFC 3339 text).
pub fn now() -> (i64, String) {
    let t = chrono::Utc::now();
    (
        t.timestamp_millis(),
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The outbox payload of a notification.
pub fn notification_payload(view: &Reservation, kind: &str) -> String {
    serde_json::json!({
        "kind": kind,
        "reservationId": view.reservation_id,
        "eventId": view.event_id,
        "userEmail": view.user_email,
        "seats": view.seats,
        "quantity": view.quantity,
        "amount": view.amount,
        "paymentId": view.payment_id,
    })
    .to_string()
}

impl Saga {
    fn count(&self, action: &str) {
        self.metrics.recovery.with_label_values(&[action]).inc();
    }

    /// Releases a HELD/PAYMENT_PENDING saga as FAILED with `failure`.
    pub async fn release(
        &self,
        res_id: &str,
        event_id: &str,
        idem_key: Option<&str>,
        failure: Failure,
    ) -> Result<Step, InventoryError> {
        let (now_ms, now_iso) = now();
        self.inv
            .release(&Release {
                res_id,
                event_id,
                idempotency_key: idem_key,
                end: ReservationStatus::Failed,
                failure,
                require_expired: false,
                now_ms,
                now_iso: &now_iso,
            })
            .await
    }

    /// Expires a hold that passed its deadline (sweeper, or a hold blocking a new request).
    pub async fn expire_hold(&self, res_id: &str, event_id: &str) -> bool {
        let (now_ms, now_iso) = now();
        let released = self
            .inv
            .release(&Release {
                res_id,
                event_id,
                idempotency_key: None,
                end: ReservationStatus::Expired,
                failure: Failure::HoldExpired,
                require_expired: true,
                now_ms,
                now_iso: &now_iso,
            })
            .await;
        match released {
            Ok(Step::Done(_)) => {
                self.count("expired");
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(reservation = res_id, error = %e, "hold expiry failed");
                false
            }
        }
    }
}
