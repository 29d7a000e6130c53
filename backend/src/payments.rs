//! The payments service (`backend payments`): a simulated payment provider.
//!
//! The ledger lives in Redis under its own keys (`pay:{<group>}:<reservationId>`, and per slot
//! group `pay:summary:{<group>}`, see [`crate::slots`]: on a Redis Cluster a payment sits on its
//! reservation's shard), changed only by the Lua scripts in `payments/`: a restarted payments
//! service still knows what it charged and refunded, as a real provider would, so the
//! reservations saga's "ask, then refund" stays correct across a payments restart. API (SPEC §6):
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
//! `charged`, 0 once refunded or declined). While Redis is unreachable the API answers 503
//! `ledger_unavailable` (nothing done); when a ledger write's outcome is unknown (a timeout),
//! 500 `ledger_unknown` (the caller must ask again, as after any timeout).
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
use chrono::{SecondsFormat, Utc};
use prometheus::{IntCounterVec, Opts};
use redis::Script;
use serde::Serialize;
use serde_json::{json, Value};

use crate::chaos::Chaos;
use crate::error::ApiError;
use crate::slots;
use crate::store::{Store, StoreConfig, StoreError};
use crate::telemetry::{self, Metrics, MetricsError};

/// Largest amount charged without a decline (SPEC §6: "an amount over 10000 is declined").
pub const DEFAULT_DECLINE_ABOVE: f64 = 10_000.0;
/// Default listen address (SPEC §3).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3002";
/// Default Redis holding the ledger.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Command-line flags of `backend payments`.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Amounts strictly above this are declined with 402.
    #[arg(long, env = "DECLINE_ABOVE", default_value_t = DEFAULT_DECLINE_ABOVE)]
    pub decline_above: f64,
    /// Redis holding the ledger (keys `pay:*`).
    /// With `--redis-mode cluster` the cluster's seed nodes, comma-separated.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Guarded Redis tuning.
    #[command(flatten)]
    pub store: StoreConfig,
}

/// Lifecycle of one reservation's payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentState {
    /// Money taken.
    Charged,
    /// Money taken and given back.
    Refunded,
    /// The charge was refused; nothing taken.
    Declined,
}

impl PaymentState {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "charged" => Some(Self::Charged),
            "refunded" => Some(Self::Refunded),
            "declined" => Some(Self::Declined),
            _ => None,
        }
    }
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

/// Outcome of a charge attempt, decided by `charge.lua`.
enum ChargeOutcome {
    Created(Payment),
    Repeated(Payment),
    Declined(Payment),
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

/// The ledger key of one reservation.
fn payment_key(reservation_id: &str) -> String {
    let tag = slots::group_tag(slots::group_of_id(reservation_id));
    format!("pay:{{{tag}}}:{reservation_id}")
}

/// The ledger totals of one slot group (kept next to its payments: the charge and its totals are
/// one single-slot script on a Redis Cluster; the summary adds the groups up).
fn summary_key(g: slots::Group) -> String {
    format!("pay:summary:{{{}}}", slots::group_tag(g))
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The payments ledger in Redis.
#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
    charge: Arc<Script>,
    refund: Arc<Script>,
}

impl Ledger {
    /// A ledger on `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            charge: Arc::new(Script::new(include_str!("payments/charge.lua"))),
            refund: Arc::new(Script::new(include_str!("payments/refund.lua"))),
        }
    }

    async fn charge(
        &self,
        req: ChargeRequest,
        decline_above: f64,
    ) -> Result<ChargeOutcome, ApiError> {
        let keys = [
            payment_key(&req.reservation_id),
            summary_key(slots::group_of_id(&req.reservation_id)),
        ];
        let declined = req.amount > decline_above;
        let args = [
            req.reservation_id.clone(),
            req.amount.to_string(),
            req.user_email.clone(),
            if declined { "1" } else { "0" }.to_owned(),
            format!("pay_{}", uuid::Uuid::new_v4().simple()),
            now_rfc3339(),
        ];
        let reply: Vec<String> = self
            .store
            .invoke_script(&self.charge, &keys, &args)
            .await
            .map_err(ledger_error)?;
        let id = &req.reservation_id;
        match reply.first().map(String::as_str) {
            Some("created") => Ok(ChargeOutcome::Created(payment(id, &reply)?)),
            Some("repeated") => Ok(ChargeOutcome::Repeated(payment(id, &reply)?)),
            Some("declined") => Ok(ChargeOutcome::Declined(payment(id, &reply)?)),
            Some("mismatch") => Err(ApiError::new(
                StatusCode::CONFLICT,
                "payment_mismatch",
                "this reservation was already charged with another amount or e-mail",
            )
            .with("reservationId", id.as_str())),
            Some("already_refunded") => {
                let at = reply.get(1).cloned().unwrap_or_default();
                Err(already_refunded(id).with("refundedAt", at))
            }
            _ => Err(unexpected("charge", &reply)),
        }
    }

    async fn refund(&self, reservation_id: &str) -> Result<Payment, ApiError> {
        let keys = [
            payment_key(reservation_id),
            summary_key(slots::group_of_id(reservation_id)),
        ];
        let args = [reservation_id.to_owned(), now_rfc3339()];
        let reply: Vec<String> = self
            .store
            .invoke_script(&self.refund, &keys, &args)
            .await
            .map_err(ledger_error)?;
        match reply.first().map(String::as_str) {
            Some("refunded") => payment(reservation_id, &reply),
            Some("tombstone") => Err(not_found(reservation_id).with("refundRecorded", true)),
            Some("not_refundable") => Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_refundable",
                "a declined payment has nothing to refund",
            )
            .with("reservationId", reservation_id)),
            _ => Err(unexpected("refund", &reply)),
        }
    }

    /// The payment of a reservation, if one was charged or declined.
    pub async fn get(&self, reservation_id: &str) -> Result<Option<Payment>, ApiError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(payment_key(reservation_id)).arg(&[
            "status",
            "paymentId",
            "amount",
            "userEmail",
            "createdAt",
            "refundedAt",
        ]);
        let fields: Vec<Option<String>> = self.store.query(&cmd).await.map_err(ledger_error)?;
        match fields.first().cloned().flatten().as_deref() {
            None | Some("tombstone") => Ok(None),
            Some(_) => {
                let mut reply = vec!["get".to_owned()];
                reply.push(fields[1].clone().unwrap_or_default());
                reply.push(fields[2].clone().unwrap_or_default());
                reply.push(fields[3].clone().unwrap_or_default());
                reply.push(fields[0].clone().unwrap_or_default());
                reply.push(fields[4].clone().unwrap_or_default());
                reply.push(fields[5].clone().unwrap_or_default());
                payment(reservation_id, &reply).map(Some)
            }
        }
    }

    /// Totals over every reservation: the slot groups' totals added up.
    pub async fn summary(&self) -> Result<LedgerSummary, ApiError> {
        let reads = (0..slots::GROUPS).map(|g| async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(summary_key(g));
            self.store.query::<HashMap<String, String>>(&cmd).await
        });
        let (mut counts, mut net) = (HashMap::<&str, u64>::new(), 0.0f64);
        for m in futures::future::join_all(reads).await {
            let m = m.map_err(ledger_error)?;
            for k in ["charged", "refunded", "declined", "refundsBeforeCharge"] {
                let v = m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                *counts.entry(k).or_default() += v.max(0) as u64;
            }
            net += m
                .get("netAmount")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
        let n = |k: &str| counts.get(k).copied().unwrap_or(0);
        Ok(LedgerSummary {
            charged: n("charged"),
            refunded: n("refunded"),
            declined: n("declined"),
            refunds_before_charge: n("refundsBeforeCharge"),
            // Sums of cents kept as floats: round away the representation noise.
            net_amount: (net * 100.0).round() / 100.0,
        })
    }
}

/// A payment from a script reply `{tag, paymentId, amount, userEmail, status, createdAt,
/// refundedAt}`.
fn payment(reservation_id: &str, reply: &[String]) -> Result<Payment, ApiError> {
    let [_, payment_id, amount, user_email, status, created_at, refunded_at] = reply else {
        return Err(unexpected("payment", reply));
    };
    let (Some(status), Ok(amount)) = (PaymentState::parse(status), amount.parse::<f64>()) else {
        return Err(unexpected("payment", reply));
    };
    Ok(Payment {
        payment_id: payment_id.clone(),
        reservation_id: reservation_id.to_owned(),
        amount,
        user_email: user_email.clone(),
        status,
        created_at: created_at.clone(),
        refunded_at: Some(refunded_at.clone()).filter(|s| !s.is_empty()),
        net_amount: if status == PaymentState::Charged {
            amount
        } else {
            0.0
        },
    })
}

fn unexpected(what: &str, reply: &[String]) -> ApiError {
    tracing::error!(what, ?reply, "unexpected ledger reply");
    ApiError::internal(format!("unexpected ledger reply to {what}"))
}

/// Redis unreachable: 503 (nothing done, safe to retry). Outcome unknown: 500 (ask again).
fn ledger_error(e: StoreError) -> ApiError {
    if e.outcome_unknown() {
        tracing::warn!(error = %e, "ledger write outcome unknown");
        return ApiError::internal("the ledger did not answer in time; the outcome is unknown")
            .with("error_kind", "ledger_unknown");
    }
    if e.reply_message().is_some() {
        tracing::error!(error = %e, "ledger script failed");
        return ApiError::internal("ledger script failed");
    }
    ApiError::unavailable(
        "ledger_unavailable",
        "the payments ledger is unreachable; nothing was done",
        e.retry_after_secs(),
    )
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
    /// The ledger in Redis.
    pub ledger: Ledger,
    /// Chaos switches (`/admin/chaos`).
    pub chaos: Arc<Chaos>,
    /// Prometheus registry and HTTP metrics.
    pub metrics: Arc<Metrics>,
    /// Amounts strictly above this are declined.
    pub decline_above: f64,
    outcomes: IntCounterVec,
}

/// Building the payments state failed.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsSetupError {
    /// Metrics registration.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A malformed Redis URL.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PaymentsState {
    /// Fresh state on the ledger in `redis_url` (connected lazily), chaos off, its own metrics
    /// registry.
    pub fn new(
        decline_above: f64,
        redis_url: &str,
        store: StoreConfig,
    ) -> Result<Self, PaymentsSetupError> {
        let metrics = Metrics::new("payments")?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "payments_operations_total",
                "Payment operations by kind and result",
            ),
            &["operation", "result"],
        )
        .map_err(MetricsError::from)?;
        metrics.register(Box::new(outcomes.clone()))?;
        // The ledger's store has its own chaos switch, never turned on: payments' chaos acts on
        // its HTTP API.
        let store = Store::connect(redis_url, store, Chaos::new())?;
        Ok(Self {
            ledger: Ledger::new(store),
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
    let state = PaymentsState::new(args.decline_above, &args.redis_url, args.store)?;
    telemetry::serve(args.listen, router(state), "payments").await
}

async fn charge(State(st): State<PaymentsState>, body: Bytes) -> Result<Response, ApiError> {
    let req = ChargeRequest::parse(&body)?;
    let outcome = st.ledger.charge(req, st.decline_above).await;
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
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&reservation_id))
}

async fn refund(
    State(st): State<PaymentsState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    // An id that is not UTF-8 once percent-decoded names no payment (axum would answer 400 text).
    let reservation_id = path.map(|Path(id)| id).unwrap_or_default();
    match st.ledger.refund(&reservation_id).await {
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

async fn summary(State(st): State<PaymentsState>) -> Result<Json<LedgerSummary>, ApiError> {
    st.ledger.summary().await.map(Json)
}

/// `GET /ready`: 200 when the ledger's Redis answers, else 503.
async fn ready(State(st): State<PaymentsState>) -> Response {
    match st.ledger.store.ping().await {
        Ok(()) => Json(json!({"status": "ok", "redis": "ok"})).into_response(),
        Err(e) => ledger_error(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payments_parse_from_ledger_replies() {
        let r = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = payment(
            "r1",
            &r(&["created", "pay_1", "50", "a@b.c", "charged", "t0", ""]),
        )
        .unwrap();
        assert_eq!((p.net_amount, p.refunded_at.as_deref()), (50.0, None));
        let p = payment(
            "r1",
            &r(&["refunded", "pay_1", "50", "a@b.c", "refunded", "t0", "t1"]),
        )
        .unwrap();
        assert_eq!((p.net_amount, p.refunded_at.as_deref()), (0.0, Some("t1")));
        assert!(payment("r1", &r(&["created", "pay_1", "50"])).is_err());
        assert!(payment(
            "r1",
            &r(&["created", "pay_1", "50", "a@b.c", "stolen", "t0", ""])
        )
        .is_err());
    }

    #[test]
    fn payment_keys_share_the_reservations_slot() {
        let id = slots::new_id_in_group(5);
        assert_eq!(
            slots::key_slot(&payment_key(&id)),
            slots::key_slot(&summary_key(5))
        );
        assert_eq!(
            slots::key_slot(&payment_key(&id)),
            slots::key_slot(&crate::reservations::keys::reservation(&id))
        );
    }
}
