//! The reservation saga of SPEC §5: hold → payment-pending → charge → confirm (+ outbox), with
//! compensation (release; on an unknown charge outcome: ask, then refund, then release). Every
//! transition is one Lua script, a compare-and-set on the saga state in Redis, so a saga driven
//! twice (request handler and recovery) still ends once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts};
use tracing::Instrument;

use super::inventory::{HoldOutcome, HoldRequest, IdempotencyRecord, Inventory, Step};
use super::model::{self, HistoryEntry, Reservation, SagaRecord};
use super::payer::{ChargeResult, Payer, PaymentState};
use super::validation::{ReservationRequest, Selection};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::telemetry::{Metrics, MetricsError};

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

/// Saga counters registered on the service's registry.
#[derive(Debug, Clone)]
pub struct SagaMetrics {
    /// `reservations_saga_outcomes_total{outcome}`: how POSTs ended.
    pub outcomes: IntCounterVec,
    /// `reservations_recovery_actions_total{action}`: what recovery and the sweeper did.
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
                "Sagas finished or compensated by recovery and the hold sweeper, by action",
            ),
            &["action"],
        )?;
        metrics.register(Box::new(outcomes.clone()))?;
        metrics.register(Box::new(recovery.clone()))?;
        Ok(Self { outcomes, recovery })
    }
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

/// Current time as (ms since the epoch, RFC 3339 text).
pub fn now() -> (i64, String) {
    let t = chrono::Utc::now();
    (
        t.timestamp_millis(),
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// A JSON response from an already serialised body.
pub fn raw_json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Maps a store failure to the answer of SPEC §5 (fail fast with 503 + Retry-After).
pub fn store_error(e: &StoreError) -> ApiError {
    if let Some(msg) = e.reply_message() {
        tracing::error!(error = %msg, "inventory script failed");
        return ApiError::internal("inventory script failed");
    }
    ApiError::unavailable(
        "inventory_unavailable",
        "the inventory store is unreachable; try again shortly",
        e.retry_after_secs(),
    )
}

/// The error answer for a stored or script-reported failure code.
pub fn error_for(code: &str, detail: &str) -> ApiError {
    match code {
        "seat_unavailable" => ApiError::new(
            StatusCode::CONFLICT,
            "seat_unavailable",
            if detail.is_empty() {
                "a requested seat is not available".to_owned()
            } else {
                format!("seat {detail} is not available")
            },
        ),
        "sold_out" => ApiError::new(
            StatusCode::CONFLICT,
            "sold_out",
            "not enough capacity left for this quantity",
        ),
        "event_not_found" => {
            ApiError::not_found("event_not_found", format!("event {detail} does not exist"))
        }
        "seat_not_found" => {
            ApiError::not_found("seat_not_found", format!("seat {detail} does not exist"))
        }
        "wrong_kind" if detail == "quantity" => ApiError::invalid_request(
            "quantity",
            "this event has numbered seats: send seatId or seats, not quantity",
        ),
        "wrong_kind" => ApiError::invalid_request(
            "seatId",
            "this event is general admission: send quantity, not seatId or seats",
        ),
        "duplicate_seat" => {
            ApiError::invalid_request("seats", format!("seat {detail} is listed twice"))
        }
        "payment_declined" => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_declined",
            "the payment was declined; the seats were released",
        ),
        "payment_unavailable" => ApiError::unavailable(
            "payment_unavailable",
            "payments are unavailable; the seats were released",
            1,
        ),
        "payment_timeout" => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "payment_timeout",
            "the payment did not complete in time; it is refunded and the seats released",
        ),
        "hold_expired" => ApiError::new(
            StatusCode::CONFLICT,
            "hold_expired",
            "the hold expired before payment started; the seats were released",
        ),
        _ => ApiError::internal(format!("reservation failed ({code})")),
    }
}

fn in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "request_in_progress",
        "a request with this Idempotency-Key is still being processed",
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
    /// Runs `fut` while renewing the saga lease every third of its duration.
    pub async fn with_lease<T>(&self, res_id: &str, fut: impl Future<Output = T>) -> T {
        let every = Duration::from_millis((self.cfg.lease_ms / 3).max(50));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(fut);
        loop {
            tokio::select! {
                v = &mut fut => return v,
                _ = tick.tick() => {
                    if let Err(e) = self.inv.renew_lease(res_id, &self.cfg.owner, self.cfg.lease_ms).await {
                        tracing::warn!(reservation = res_id, error = %e, "lease renewal failed");
                    }
                }
            }
        }
    }

    fn outcome(&self, label: &str) {
        self.metrics.outcomes.with_label_values(&[label]).inc();
    }

    /// `POST /api/reservations`: the whole saga for one validated request.
    pub async fn reserve(&self, req: ReservationRequest, idem_key: Option<String>) -> Response {
        let deadline = Instant::now() + self.cfg.request_deadline;
        let res_id = uuid::Uuid::new_v4().simple().to_string();
        let fingerprint = idem_key.as_ref().map(|_| req.fingerprint());
        let (seats, quantity): (&[String], u32) = match &req.selection {
            Selection::Seats(s) => (s.as_slice(), s.len() as u32),
            Selection::Quantity(q) => (&[], *q),
        };
        let hold = HoldRequest {
            res_id: &res_id,
            event_id: &req.event_id,
            seats,
            quantity,
            amount: req.amount,
            user_email: &req.user_email,
            idempotency: idem_key.as_deref().zip(fingerprint.as_deref()),
        };
        let mut history = Vec::with_capacity(3);

        // 1. Hold (+ saga creation + idempotency check), in one script.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (now_ms, now_iso) = now();
            let outcome = self
                .inv
                .hold(
                    &hold,
                    now_ms,
                    &now_iso,
                    self.cfg.hold_ttl_ms,
                    self.cfg.lease_ms,
                    &self.cfg.owner,
                )
                .await;
            match outcome {
                Ok(HoldOutcome::Held) => {
                    history.push(entry("hold", "HELD", now_iso));
                    break;
                }
                Ok(HoldOutcome::BlockedByExpired(holder)) if attempts < 4 => {
                    self.expire_hold(&holder, &req.event_id).await;
                }
                Ok(HoldOutcome::BlockedByExpired(_)) => {
                    self.outcome("seat_unavailable");
                    return error_for("seat_unavailable", "").into_response();
                }
                Ok(HoldOutcome::Rejected { code, detail }) => {
                    self.outcome(&code);
                    return error_for(&code, &detail).into_response();
                }
                Ok(HoldOutcome::IdempotencyReused) => {
                    self.outcome("idempotency_key_reused");
                    return ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request body",
                    )
                    .into_response();
                }
                Ok(HoldOutcome::Replay(rec)) => {
                    self.outcome("replay");
                    return self.replay(rec).await;
                }
                Err(e) => {
                    self.outcome("inventory_unavailable");
                    return store_error(&e).into_response();
                }
            }
        }

        // 2. HELD → PAYMENT_PENDING: the seats can no longer expire under a charge.
        let (now_ms, now_iso) = now();
        match self
            .inv
            .begin_payment(&res_id, &req.event_id, now_ms, &now_iso)
            .await
        {
            Ok(Step::Done(_)) => history.push(entry("payment", "PAYMENT_PENDING", now_iso)),
            Ok(Step::Expired) => {
                let _ = self
                    .release(
                        &res_id,
                        &req.event_id,
                        idem_key.as_deref(),
                        "EXPIRED",
                        "hold_expired",
                    )
                    .await;
                self.outcome("hold_expired");
                return error_for("hold_expired", "").into_response();
            }
            Ok(Step::Lost) => {
                // The event was reset between the hold and now.
                let _ = self
                    .release(
                        &res_id,
                        &req.event_id,
                        idem_key.as_deref(),
                        "FAILED",
                        "seat_unavailable",
                    )
                    .await;
                self.outcome("seat_unavailable");
                return error_for("seat_unavailable", "").into_response();
            }
            Ok(Step::WrongState(..)) => {
                // The sweeper expired the hold first (only with a very short hold TTL).
                self.outcome("hold_expired");
                return error_for("hold_expired", "").into_response();
            }
            Ok(other) => {
                // Missing: Redis lost its data between the two scripts.
                tracing::error!(reservation = %res_id, ?other, "begin_payment found no hold");
                self.outcome("inventory_unavailable");
                return ApiError::unavailable(
                    "inventory_unavailable",
                    "the inventory store lost the hold; try again",
                    1,
                )
                .into_response();
            }
            Err(e) => {
                // The hold expires by itself (or recovery compensates if the step landed).
                self.outcome("inventory_unavailable");
                return store_error(&e).into_response();
            }
        }

        let mut view = Reservation {
            reservation_id: res_id.clone(),
            status: "PAYMENT_PENDING".into(),
            event_id: req.event_id.clone(),
            seats: seats.to_vec(),
            quantity,
            amount: req.amount,
            user_email: req.user_email.clone(),
            payment_id: None,
            notification: "queued".into(),
            created_at: history[0].at.clone(),
            history: None,
            failure: None,
        };

        // 3. Charge (idempotency key = reservation id), lease renewed while it runs.
        let charged = self
            .with_lease(
                &res_id,
                // Leave a little of the deadline for settling and answering.
                self.payer.charge(
                    &res_id,
                    req.amount,
                    &req.user_email,
                    deadline - Duration::from_millis(250),
                ),
            )
            .await;
        let payment_id = match charged {
            ChargeResult::Charged(pid) => pid,
            ChargeResult::Declined => {
                return self
                    .fail(
                        &res_id,
                        &req.event_id,
                        idem_key.as_deref(),
                        "payment_declined",
                    )
                    .await
            }
            ChargeResult::Unavailable { retry_after_secs } => {
                let r = self
                    .fail(
                        &res_id,
                        &req.event_id,
                        idem_key.as_deref(),
                        "payment_unavailable",
                    )
                    .await;
                let mut r = r;
                if let Ok(v) = HeaderValue::from_str(&retry_after_secs.max(1).to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return r;
            }
            ChargeResult::Unknown => {
                match self
                    .settle_unknown(&res_id, &req.event_id, idem_key.as_deref(), deadline)
                    .await
                {
                    Some(pid) => pid,
                    None => {
                        self.outcome("payment_timeout");
                        return error_for("payment_timeout", "").into_response();
                    }
                }
            }
        };

        // 4. Confirm + outbox entry + idempotent response, in one script.
        view.payment_id = Some(payment_id.clone());
        view.status = "CONFIRMED".into();
        let (now_ms, now_iso) = now();
        history.push(entry("confirm", "CONFIRMED", now_iso.clone()));
        view.history = Some(history);
        self.confirm_and_answer(
            view,
            idem_key.as_deref(),
            &payment_id,
            now_ms,
            &now_iso,
            deadline,
        )
        .await
    }

    async fn confirm_and_answer(
        &self,
        view: Reservation,
        idem_key: Option<&str>,
        payment_id: &str,
        now_ms: i64,
        now_iso: &str,
        deadline: Instant,
    ) -> Response {
        let body = match serde_json::to_string(&view) {
            Ok(b) => b,
            Err(e) => return ApiError::internal(e.to_string()).into_response(),
        };
        let payload = notification_payload(&view, "reservation_confirmed");
        let res_id = &view.reservation_id;
        let mut last_err = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                if Instant::now() + Duration::from_millis(100) > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            match self
                .inv
                .confirm(
                    res_id,
                    &view.event_id,
                    idem_key,
                    payment_id,
                    &body,
                    &payload,
                    now_ms,
                    now_iso,
                )
                .await
            {
                Ok(Step::Done(_)) => {
                    self.outcome("confirmed");
                    return raw_json(StatusCode::CREATED, body);
                }
                Ok(Step::WrongState(status, _)) if status == "CONFIRMED" => {
                    // An earlier attempt (or recovery) confirmed it.
                    self.outcome("confirmed");
                    return raw_json(StatusCode::CREATED, body);
                }
                Ok(Step::Lost) => {
                    // The event was reset under the saga: give the money back.
                    self.compensate_after_charge(
                        res_id,
                        &view.event_id,
                        idem_key,
                        "seat_unavailable",
                    )
                    .await;
                    self.outcome("seat_unavailable");
                    return error_for("seat_unavailable", "").into_response();
                }
                Ok(other) => {
                    // Recovery compensated while we were charging: make sure we are refunded.
                    tracing::warn!(reservation = %res_id, ?other, "charged saga was compensated elsewhere");
                    self.compensate_after_charge(
                        res_id,
                        &view.event_id,
                        idem_key,
                        "payment_timeout",
                    )
                    .await;
                    self.outcome("payment_timeout");
                    return error_for("payment_timeout", "").into_response();
                }
                Err(e) if e.reply_message().is_some() => {
                    self.outcome("internal_error");
                    return store_error(&e).into_response();
                }
                Err(e) => last_err = Some(e),
            }
        }
        // Charged but not confirmed: recovery confirms it once Redis answers again.
        self.outcome("confirm_pending");
        let e = last_err.map(|e| store_error(&e)).unwrap_or_else(|| {
            ApiError::unavailable("inventory_unavailable", "inventory store unavailable", 1)
        });
        ApiError {
            message: format!(
                "payment taken but the inventory store is unreachable; reservation {res_id} will be \
                 confirmed automatically"
            ),
            ..e
        }
        .with("reservationId", res_id.as_str())
        .into_response()
    }

    /// Releases a saga that was charged but cannot be confirmed: refund, then release.
    async fn compensate_after_charge(
        &self,
        res_id: &str,
        event_id: &str,
        idem_key: Option<&str>,
        code: &str,
    ) {
        let deadline = Instant::now() + self.cfg.request_deadline;
        match self
            .with_lease(res_id, self.payer.refund(res_id, deadline))
            .await
        {
            Ok(()) => {
                let _ = self
                    .release(res_id, event_id, idem_key, "FAILED", code)
                    .await;
            }
            Err(e) => {
                tracing::warn!(reservation = res_id, error = %e, "refund failed; settling in the background");
                self.spawn_settle(
                    res_id.to_owned(),
                    event_id.to_owned(),
                    idem_key.map(str::to_owned),
                );
            }
        }
    }

    /// Charge outcome unknown: ask payments within the deadline. `Some(payment id)` if it was
    /// charged (confirm it); `None` after refunding and releasing (or handing that to the
    /// background settler), the answer then being 504.
    async fn settle_unknown(
        &self,
        res_id: &str,
        event_id: &str,
        idem_key: Option<&str>,
        deadline: Instant,
    ) -> Option<String> {
        let margin = Duration::from_millis(300);
        if Instant::now() + margin < deadline {
            let ask_by = deadline - margin;
            match self
                .with_lease(res_id, self.payer.status(res_id, ask_by))
                .await
            {
                Ok(PaymentState::Charged(pid)) => return Some(pid),
                Ok(PaymentState::NotCharged) => {
                    if Instant::now() + margin < deadline
                        && self
                            .with_lease(res_id, self.payer.refund(res_id, deadline - margin))
                            .await
                            .is_ok()
                    {
                        let _ = self
                            .release(res_id, event_id, idem_key, "FAILED", "payment_timeout")
                            .await;
                        return None;
                    }
                }
                Err(e) => {
                    tracing::warn!(reservation = res_id, error = %e, "payment status unknown")
                }
            }
        }
        // No time left: answer 504 now; never confirm this saga, refund and release it later.
        let mut cmd = redis::cmd("HSET");
        cmd.arg(super::keys::reservation(res_id))
            .arg("settle")
            .arg("refund");
        if let Err(e) = self.inv.store().query::<i64>(&cmd).await {
            tracing::warn!(reservation = res_id, error = %e, "could not mark saga for refund");
        }
        self.spawn_settle(
            res_id.to_owned(),
            event_id.to_owned(),
            idem_key.map(str::to_owned),
        );
        None
    }

    /// Background compensation of a saga answered with 504: refund until payments confirms, then
    /// release. Bounded (about 10 minutes); recovery takes over after a crash or if this gives up.
    fn spawn_settle(&self, res_id: String, event_id: String, idem_key: Option<String>) {
        let saga = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for _ in 0..120 {
                let deadline = Instant::now() + saga.cfg.request_deadline;
                let refunded = saga
                    .with_lease(&res_id, saga.payer.refund(&res_id, deadline))
                    .await;
                if refunded.is_ok() {
                    match saga
                        .release(
                            &res_id,
                            &event_id,
                            idem_key.as_deref(),
                            "FAILED",
                            "payment_timeout",
                        )
                        .await
                    {
                        Ok(_) => {
                            saga.metrics.recovery.with_label_values(&["settled"]).inc();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(reservation = %res_id, error = %e, "release after refund failed")
                        }
                    }
                }
                let _ = saga
                    .inv
                    .renew_lease(&res_id, &saga.cfg.owner, saga.cfg.lease_ms)
                    .await;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            tracing::error!(reservation = %res_id, "background settle gave up; recovery will retry");
        }.in_current_span());
    }

    /// Compensation after a definite non-charge: release (FAILED with `code`) and answer.
    async fn fail(
        &self,
        res_id: &str,
        event_id: &str,
        idem_key: Option<&str>,
        code: &str,
    ) -> Response {
        if let Err(e) = self
            .release(res_id, event_id, idem_key, "FAILED", code)
            .await
        {
            tracing::warn!(reservation = res_id, error = %e, "release failed; recovery will retry");
        }
        self.outcome(code);
        error_for(code, "").into_response()
    }

    /// Releases a HELD/PAYMENT_PENDING saga with the given final status and failure code.
    pub async fn release(
        &self,
        res_id: &str,
        event_id: &str,
        idem_key: Option<&str>,
        status: &str,
        code: &str,
    ) -> Result<Step, StoreError> {
        let (now_ms, now_iso) = now();
        self.inv
            .release(
                res_id, event_id, idem_key, status, code, false, now_ms, &now_iso,
            )
            .await
    }

    /// Expires a hold that passed its deadline (sweeper, or a hold blocking a new request).
    pub async fn expire_hold(&self, res_id: &str, event_id: &str) -> bool {
        let (now_ms, now_iso) = now();
        match self
            .inv
            .release(
                res_id,
                event_id,
                None,
                "EXPIRED",
                "hold_expired",
                true,
                now_ms,
                &now_iso,
            )
            .await
        {
            Ok(Step::Done(_)) => {
                self.metrics.recovery.with_label_values(&["expired"]).inc();
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(reservation = res_id, error = %e, "hold expiry failed");
                false
            }
        }
    }

    /// Answers a request whose `Idempotency-Key` was seen with the same body.
    async fn replay(&self, rec: IdempotencyRecord) -> Response {
        if rec.state == "done" {
            if !rec.body.is_empty() {
                let status = rec
                    .status
                    .parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::CREATED);
                return raw_json(status, rec.body);
            }
            return error_for(&rec.err, &rec.detail).into_response();
        }
        if rec.res_id.is_empty() {
            return in_progress().into_response();
        }
        // Still marked running: the first request may have died; answer from the saga itself.
        match model::load(self.inv.store(), &rec.res_id).await {
            Ok(Some(r)) if model::UNFINISHED.contains(&r.view.status.as_str()) => {
                in_progress().into_response()
            }
            Ok(Some(r)) if r.view.status == "FAILED" || r.view.status == "EXPIRED" => {
                let code = r.view.failure.as_deref().unwrap_or("payment_timeout");
                error_for(code, "").into_response()
            }
            Ok(Some(r)) => match serde_json::to_string(&r.view) {
                Ok(body) => raw_json(StatusCode::CREATED, body),
                Err(e) => ApiError::internal(e.to_string()).into_response(),
            },
            Ok(None) => in_progress().into_response(),
            Err(e) => store_error(&e).into_response(),
        }
    }

    /// Drives an unfinished saga found by recovery (lease already taken) to an end.
    pub async fn recover(&self, rec: SagaRecord) {
        let res_id = rec.view.reservation_id.clone();
        let event_id = rec.view.event_id.clone();
        let idem = rec.idempotency_key.clone();
        let deadline = Instant::now() + self.cfg.request_deadline;
        let count = |action: &str| self.metrics.recovery.with_label_values(&[action]).inc();
        match rec.view.status.as_str() {
            "HELD" => {
                if rec.hold_deadline_ms <= now().0 && self.expire_hold(&res_id, &event_id).await {
                    tracing::info!(reservation = %res_id, "recovery expired an abandoned hold");
                }
            }
            "PAYMENT_PENDING" => {
                let state = if rec.settle.as_deref() == Some("refund") {
                    Ok(PaymentState::NotCharged)
                } else {
                    self.with_lease(&res_id, self.payer.status(&res_id, deadline))
                        .await
                };
                match state {
                    Ok(PaymentState::Charged(pid)) => {
                        let mut view = rec.view.clone();
                        view.status = "CONFIRMED".into();
                        view.payment_id = Some(pid.clone());
                        let (now_ms, now_iso) = now();
                        if let Some(h) = view.history.as_mut() {
                            h.push(entry("confirm", "CONFIRMED", now_iso.clone()));
                        }
                        let body = serde_json::to_string(&view).unwrap_or_default();
                        let payload = notification_payload(&view, "reservation_confirmed");
                        match self
                            .inv
                            .confirm(
                                &res_id,
                                &event_id,
                                idem.as_deref(),
                                &pid,
                                &body,
                                &payload,
                                now_ms,
                                &now_iso,
                            )
                            .await
                        {
                            Ok(Step::Done(_)) => {
                                count("confirmed");
                                tracing::info!(reservation = %res_id, "recovery confirmed a charged saga");
                            }
                            Ok(Step::Lost) => {
                                self.compensate_after_charge(
                                    &res_id,
                                    &event_id,
                                    idem.as_deref(),
                                    "seat_unavailable",
                                )
                                .await;
                                count("compensated");
                            }
                            Ok(other) => {
                                tracing::info!(reservation = %res_id, ?other, "recovery: confirm not applicable")
                            }
                            Err(e) => {
                                tracing::warn!(reservation = %res_id, error = %e, "recovery confirm failed")
                            }
                        }
                    }
                    Ok(PaymentState::NotCharged) => {
                        match self
                            .with_lease(&res_id, self.payer.refund(&res_id, deadline))
                            .await
                        {
                            Ok(()) => {
                                if let Ok(Step::Done(_)) = self
                                    .release(
                                        &res_id,
                                        &event_id,
                                        idem.as_deref(),
                                        "FAILED",
                                        "payment_timeout",
                                    )
                                    .await
                                {
                                    count("compensated");
                                    tracing::info!(reservation = %res_id, "recovery compensated a saga");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(reservation = %res_id, error = %e, "recovery refund failed")
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(reservation = %res_id, error = %e, "recovery: payment status unknown")
                    }
                }
            }
            "CONFIRMED" if rec.cancel_requested => {
                if let Err(e) = self.finish_cancel(&rec.view).await {
                    tracing::warn!(reservation = %res_id, error = %e.message, "recovery: cancel not finished");
                } else {
                    count("cancelled");
                }
            }
            _ => {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(super::keys::SAGAS).arg(&res_id);
                let _ = self.inv.store().query::<i64>(&cmd).await;
            }
        }
    }

    /// `POST /api/reservations/{id}/cancel`: CONFIRMED → refund → CANCELLED (seats back).
    pub async fn cancel(&self, res_id: &str) -> Result<Reservation, ApiError> {
        let rec = model::load(self.inv.store(), res_id)
            .await
            .map_err(|e| store_error(&e))?
            .ok_or_else(|| reservation_not_found(res_id))?;
        let (now_ms, _) = now();
        match self
            .inv
            .cancel_begin(res_id, &self.cfg.owner, self.cfg.lease_ms, now_ms)
            .await
            .map_err(|e| store_error(&e))?
        {
            Step::Done(_) => {}
            Step::Busy => return Err(in_progress()),
            Step::Missing => return Err(reservation_not_found(res_id)),
            Step::WrongState(status, _) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_cancellable",
                    format!(
                        "reservation is {status}; only CONFIRMED reservations can be cancelled"
                    ),
                )
                .with("status", status))
            }
            other => {
                return Err(ApiError::internal(format!(
                    "unexpected cancel state {other:?}"
                )))
            }
        }
        self.finish_cancel(&rec.view).await?;
        model::load(self.inv.store(), res_id)
            .await
            .map_err(|e| store_error(&e))?
            .map(|r| r.view)
            .ok_or_else(|| reservation_not_found(res_id))
    }

    async fn finish_cancel(&self, view: &Reservation) -> Result<(), ApiError> {
        let res_id = &view.reservation_id;
        let deadline = Instant::now() + self.cfg.request_deadline;
        self.with_lease(res_id, self.payer.refund(res_id, deadline))
            .await
            .map_err(|e| {
                tracing::warn!(reservation = %res_id, error = %e, "refund for cancel failed");
                ApiError::unavailable(
                    "payment_unavailable",
                    "the refund could not be made now; the cancellation will complete automatically",
                    1,
                )
            })?;
        let (now_ms, now_iso) = now();
        let payload = notification_payload(view, "reservation_cancelled");
        match self
            .inv
            .cancel(res_id, &view.event_id, &payload, now_ms, &now_iso)
            .await
            .map_err(|e| store_error(&e))?
        {
            Step::Done(_) => Ok(()),
            Step::WrongState(status, _) if status == "CANCELLED" => Ok(()),
            other => Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_cancellable",
                format!("reservation changed during cancellation ({other:?})"),
            )),
        }
    }
}

fn entry(step: &str, status: &str, at: String) -> HistoryEntry {
    HistoryEntry {
        step: step.to_owned(),
        status: status.to_owned(),
        at,
    }
}

/// 404 `reservation_not_found`.
pub fn reservation_not_found(res_id: &str) -> ApiError {
    ApiError::not_found(
        "reservation_not_found",
        format!("reservation {res_id} does not exist"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_map_to_spec_statuses() {
        assert_eq!(
            error_for("seat_unavailable", "A1").status,
            StatusCode::CONFLICT
        );
        assert_eq!(error_for("sold_out", "E").status, StatusCode::CONFLICT);
        assert_eq!(
            error_for("event_not_found", "E").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            error_for("seat_not_found", "Z9").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            error_for("payment_declined", "").status,
            StatusCode::PAYMENT_REQUIRED
        );
        let e = error_for("payment_unavailable", "");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.retry_after_secs.is_some());
        assert_eq!(
            error_for("payment_timeout", "").status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            error_for("wrong_kind", "quantity").extra["field"],
            "quantity"
        );
    }
}
