//! The payments service (`backend payments`): a simulated payment provider.
//!
//! State lives in process memory only (a restart forgets every payment); that is enough for a
//! demo provider and keeps it fast. API (SPEC §6):
//!
//! - `POST /payments` `{reservationId, amount, userEmail}`: idempotent on `reservationId`. The
//!   first charge answers 201 with the payment; a repeat answers 200 with the same payment (same
//!   `paymentId`). `amount > 10000` (configurable) is declined with 402 `payment_declined`, and the
//!   decline is remembered (`status:"declined"`; repeats answer 402 again). A repeat with another
//!   amount or e-mail is 409 `payment_mismatch`. A charge for a reservation that was already
//!   refunded, or whose refund arrived first, is 409 `already_refunded` and charges nothing.
//! - `GET /payments/{reservationId}`: 200 with `status` ∈ `charged`, `refunded`, `declined`, or
//!   404 `payment_not_found` (never charged).
//! - `POST /payments/{reservationId}/refund`: 200 with `status:"refunded"` (idempotent); 409
//!   `not_refundable` for a declined payment; 404 `payment_not_found` when nothing was charged.
//!   In that last case a refund tombstone is kept, so a charge still sleeping in chaos latency (or
//!   delayed in the network) that arrives later is refused instead of charging: a reservation that
//!   was compensated never ends charged.
//! - `GET /admin/payments/summary`: counts and the net amount charged over all reservations.
//!
//! Every payment carries `netAmount`: what the customer is charged now (the amount while
//! `charged`, 0 once refunded or declined).
//!
//! Also `/health`, `/ready`, `/metrics`, `GET|PUT|DELETE /admin/chaos` (`down`, `latencyMs`,
//! `errorRate` apply to the API; see [`crate::chaos`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};
use serde::Serialize;
use serde_json::{json, Value};

use crate::chaos::Chaos;
use crate::error::ApiError;
use crate::telemetry::{self, Metrics, MetricsError};

/// Largest amount charged without a decline (SPEC §6: "an amount over 10000 is declined").
pub const DEFAULT_DECLINE_ABOVE: f64 = 10_000.0;

/// Command-line flags of `backend payments`.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3002")]
    pub listen: SocketAddr,
    /// Amounts strictly above this are declined with 402.
    #[arg(long, env = "DECLINE_ABOVE", default_value_t = DEFAULT_DECLINE_ABOVE)]
    pub decline_above: f64,
}

/// Lifecycle of one reservation's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Money taken.
    Charged,
    /// Money taken and given back (or a refund arrived before any charge).
    Refunded,
    /// The charge was refused; nothing taken.
    Declined,
}

/// One reservation's payment, as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    /// Provider id of the payment (`pay_<uuid>`).
    pub payment_id: String,
    /// The reservation this payment is for (the idempotency key).
    pub reservation_id: String,
    /// Amount asked for.
    pub amount: f64,
    /// Customer e-mail.
    pub user_email: String,
    /// Current state.
    pub status: PaymentState,
    /// When the charge (or decline) happened, RFC 3339.
    pub created_at: String,
    /// When it was refunded, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refunded_at: Option<String>,
    /// What the customer is charged now: `amount` while charged, 0 otherwise.
    pub net_amount: f64,
}

/// A ledger entry: a payment, or a refund that came before any charge.
#[derive(Debug, Clone)]
enum Entry {
    Payment(Payment),
    /// Refund requested while nothing was charged; later charges are refused.
    RefundTombstone {
        at: DateTime<Utc>,
    },
}

/// Outcome of a charge attempt, decided under the ledger lock.
enum ChargeOutcome {
    Created(Payment),
    Repeated(Payment),
    Declined(Payment),
}

/// All payments of this process, keyed by reservation id.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<String, Entry>>,
}

/// Totals over the ledger (`GET /admin/payments/summary`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerSummary {
    /// Payments currently charged.
    pub charged: u64,
    /// Payments refunded after a charge.
    pub refunded: u64,
    /// Charges declined.
    pub declined: u64,
    /// Refunds that arrived before any charge.
    pub refunds_before_charge: u64,
    /// Sum of `netAmount` over all reservations.
    pub net_amount: f64,
}

fn now_rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Ledger {
    fn charge(&self, req: ChargeRequest, decline_above: f64) -> Result<ChargeOutcome, ApiError> {
        let mut entries = self.entries.lock();
        match entries.get(&req.reservation_id) {
            Some(Entry::RefundTombstone { at }) => {
                Err(already_refunded(&req.reservation_id).with("refundedAt", now_rfc3339(*at)))
            }
            Some(Entry::Payment(p)) => {
                if p.amount != req.amount || p.user_email != req.user_email {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "payment_mismatch",
                        "this reservation was already charged with another amount or e-mail",
                    )
                    .with("reservationId", p.reservation_id.clone()));
                }
                match p.status {
                    PaymentState::Charged => Ok(ChargeOutcome::Repeated(p.clone())),
                    PaymentState::Declined => Ok(ChargeOutcome::Declined(p.clone())),
                    PaymentState::Refunded => Err(already_refunded(&req.reservation_id)),
                }
            }
            None => {
                let declined = req.amount > decline_above;
                let payment = Payment {
                    payment_id: format!("pay_{}", uuid::Uuid::new_v4().simple()),
                    reservation_id: req.reservation_id.clone(),
                    amount: req.amount,
                    user_email: req.user_email,
                    status: if declined {
                        PaymentState::Declined
                    } else {
                        PaymentState::Charged
                    },
                    created_at: now_rfc3339(Utc::now()),
                    refunded_at: None,
                    net_amount: if declined { 0.0 } else { req.amount },
                };
                entries.insert(req.reservation_id, Entry::Payment(payment.clone()));
                Ok(if declined {
                    ChargeOutcome::Declined(payment)
                } else {
                    ChargeOutcome::Created(payment)
                })
            }
        }
    }

    fn refund(&self, reservation_id: &str) -> Result<Payment, ApiError> {
        let mut entries = self.entries.lock();
        match entries.get_mut(reservation_id) {
            None => {
                entries.insert(
                    reservation_id.to_owned(),
                    Entry::RefundTombstone { at: Utc::now() },
                );
                Err(not_found(reservation_id).with("refundRecorded", true))
            }
            Some(Entry::RefundTombstone { .. }) => {
                Err(not_found(reservation_id).with("refundRecorded", true))
            }
            Some(Entry::Payment(p)) => match p.status {
                PaymentState::Declined => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_refundable",
                    "a declined payment has nothing to refund",
                )
                .with("reservationId", reservation_id)),
                PaymentState::Refunded => Ok(p.clone()),
                PaymentState::Charged => {
                    p.status = PaymentState::Refunded;
                    p.refunded_at = Some(now_rfc3339(Utc::now()));
                    p.net_amount = 0.0;
                    Ok(p.clone())
                }
            },
        }
    }

    /// The payment of a reservation, if one was charged or declined.
    pub fn get(&self, reservation_id: &str) -> Option<Payment> {
        match self.entries.lock().get(reservation_id) {
            Some(Entry::Payment(p)) => Some(p.clone()),
            _ => None,
        }
    }

    /// Totals over every reservation.
    pub fn summary(&self) -> LedgerSummary {
        let entries = self.entries.lock();
        let mut s = LedgerSummary::default();
        for e in entries.values() {
            match e {
                Entry::RefundTombstone { .. } => s.refunds_before_charge += 1,
                Entry::Payment(p) => {
                    s.net_amount += p.net_amount;
                    match p.status {
                        PaymentState::Charged => s.charged += 1,
                        PaymentState::Refunded => s.refunded += 1,
                        PaymentState::Declined => s.declined += 1,
                    }
                }
            }
        }
        s
    }
}

fn not_found(reservation_id: &str) -> ApiError {
    ApiError::not_found(
        "payment_not_found",
        format!("no payment for reservation {reservation_id}"),
    )
    .with("reservationId", reservation_id)
}

fn already_refunded(reservation_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_refunded",
        "this reservation was refunded; it cannot be charged again",
    )
    .with("reservationId", reservation_id)
}

/// A validated charge request.
#[derive(Debug, Clone, PartialEq)]
struct ChargeRequest {
    reservation_id: String,
    amount: f64,
    user_email: String,
}

impl ChargeRequest {
    /// 400 `invalid_json` for unparsable bodies; 422 `invalid_request` naming the field otherwise.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let fields = ApiError::json_object(body, "{reservationId, amount, userEmail}")?;
        let reservation_id = ApiError::string_field(&fields, "reservationId", 128)?;
        let user_email = ApiError::email_field(&fields)?;
        let amount = fields
            .get("amount")
            .and_then(Value::as_f64)
            .filter(|a| a.is_finite() && *a > 0.0)
            .ok_or_else(|| {
                ApiError::invalid_request("amount", "amount must be a number greater than 0")
            })?;
        Ok(Self {
            reservation_id,
            amount,
            user_email,
        })
    }
}

/// Shared state of the payments service.
#[derive(Clone)]
pub struct PaymentsState {
    /// The in-memory ledger.
    pub ledger: Arc<Ledger>,
    /// Chaos switches (`/admin/chaos`).
    pub chaos: Arc<Chaos>,
    /// Prometheus registry and HTTP metrics.
    pub metrics: Arc<Metrics>,
    /// Amounts strictly above this are declined.
    pub decline_above: f64,
    outcomes: IntCounterVec,
}

impl PaymentsState {
    /// Fresh state with an empty ledger, chaos off and its own metrics registry.
    pub fn new(decline_above: f64) -> Result<Self, MetricsError> {
        let metrics = Metrics::new("payments")?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "payments_operations_total",
                "Payment operations by kind and result",
            ),
            &["operation", "result"],
        )?;
        metrics.register(Box::new(outcomes.clone()))?;
        Ok(Self {
            ledger: Arc::new(Ledger::default()),
            chaos: Chaos::new(),
            metrics,
            decline_above,
            outcomes,
        })
    }

    fn count(&self, operation: &str, result: &str) {
        self.outcomes.with_label_values(&[operation, result]).inc();
    }
}

/// The whole payments HTTP service (API, health, metrics, chaos admin).
pub fn router(state: PaymentsState) -> Router {
    let api = Router::new()
        .route("/payments", post(charge))
        .route("/payments/{reservationId}", get(get_payment))
        .route("/payments/{reservationId}/refund", post(refund))
        .route("/admin/payments/summary", get(summary))
        .route("/ready", get(ready))
        .with_state(state.clone());
    telemetry::service_router(api, state.chaos, state.metrics)
}

/// Runs `backend payments` until SIGINT/SIGTERM.
pub async fn run(args: PaymentsArgs) -> anyhow::Result<()> {
    let state = PaymentsState::new(args.decline_above)?;
    telemetry::serve(args.listen, router(state), "payments").await
}

async fn charge(State(st): State<PaymentsState>, body: Bytes) -> Result<Response, ApiError> {
    let req = ChargeRequest::parse(&body)?;
    let outcome = st.ledger.charge(req, st.decline_above);
    match outcome {
        Ok(ChargeOutcome::Created(p)) => {
            st.count("charge", "charged");
            tracing::info!(reservation_id = %p.reservation_id, payment_id = %p.payment_id, amount = p.amount, "charged");
            Ok((StatusCode::CREATED, Json(p)).into_response())
        }
        Ok(ChargeOutcome::Repeated(p)) => {
            st.count("charge", "repeated");
            Ok((StatusCode::OK, Json(p)).into_response())
        }
        Ok(ChargeOutcome::Declined(p)) => {
            st.count("charge", "declined");
            tracing::info!(reservation_id = %p.reservation_id, amount = p.amount, "declined");
            Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_declined",
                format!("amounts above {} are declined", st.decline_above),
            )
            .with("reservationId", p.reservation_id)
            .with("paymentId", p.payment_id)
            .with("status", "declined"))
        }
        Err(e) => {
            st.count("charge", e.code);
            Err(e)
        }
    }
}

async fn get_payment(
    State(st): State<PaymentsState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    // An id that is not UTF-8 once percent-decoded names no payment (axum would answer 400 text).
    let reservation_id = path.map(|Path(id)| id).unwrap_or_default();
    st.ledger
        .get(&reservation_id)
        .map(Json)
        .ok_or_else(|| not_found(&reservation_id))
}

async fn refund(
    State(st): State<PaymentsState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    // An id that is not UTF-8 once percent-decoded names no payment (axum would answer 400 text).
    let reservation_id = path.map(|Path(id)| id).unwrap_or_default();
    match st.ledger.refund(&reservation_id) {
        Ok(p) => {
            st.count("refund", "refunded");
            tracing::info!(%reservation_id, payment_id = %p.payment_id, "refunded");
            Ok(Json(p))
        }
        Err(e) => {
            st.count("refund", e.code);
            tracing::info!(%reservation_id, code = e.code, "refund refused");
            Err(e)
        }
    }
}

async fn summary(State(st): State<PaymentsState>) -> Json<LedgerSummary> {
    Json(st.ledger.summary())
}

async fn ready() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str, amount: f64) -> ChargeRequest {
        ChargeRequest {
            reservation_id: id.into(),
            amount,
            user_email: "a@b.c".into(),
        }
    }

    #[test]
    fn charge_is_idempotent_and_refund_zeroes_net() {
        let l = Ledger::default();
        let ChargeOutcome::Created(p1) = l.charge(req("r1", 50.0), 10_000.0).unwrap() else {
            panic!("first charge must create")
        };
        let ChargeOutcome::Repeated(p2) = l.charge(req("r1", 50.0), 10_000.0).unwrap() else {
            panic!("repeat must return the same payment")
        };
        assert_eq!(p1.payment_id, p2.payment_id);
        assert_eq!(l.summary().net_amount, 50.0);
        let r = l.refund("r1").unwrap();
        assert_eq!(r.status, PaymentState::Refunded);
        assert_eq!(l.refund("r1").unwrap().status, PaymentState::Refunded);
        assert_eq!(l.summary().net_amount, 0.0);
        assert_eq!(
            l.charge(req("r1", 50.0), 10_000.0).err().map(|e| e.code),
            Some("already_refunded")
        );
    }

    #[test]
    fn refund_before_charge_blocks_the_charge() {
        let l = Ledger::default();
        assert_eq!(l.refund("r2").unwrap_err().code, "payment_not_found");
        assert_eq!(
            l.charge(req("r2", 10.0), 10_000.0).err().map(|e| e.code),
            Some("already_refunded")
        );
        assert!(l.get("r2").is_none());
        assert_eq!(l.summary().refunds_before_charge, 1);
        assert_eq!(l.summary().net_amount, 0.0);
    }

    #[test]
    fn declines_are_remembered_and_not_refundable() {
        let l = Ledger::default();
        assert!(matches!(
            l.charge(req("r3", 10_000.01), 10_000.0),
            Ok(ChargeOutcome::Declined(_))
        ));
        assert!(matches!(
            l.charge(req("r3", 10_000.01), 10_000.0),
            Ok(ChargeOutcome::Declined(_))
        ));
        assert_eq!(l.refund("r3").unwrap_err().code, "not_refundable");
        assert!(matches!(
            l.charge(req("r4", 10_000.0), 10_000.0),
            Ok(ChargeOutcome::Created(_))
        ));
    }
}
