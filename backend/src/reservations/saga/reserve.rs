//! `POST /api/reservations`: the request path of the saga. Everything here is bounded by the
//! request deadline (SPEC §5); what is left when it comes (a refund, a release) goes to the
//! background settler, and a crash leaves it to recovery.

use std::time::Duration;

use tokio::time::Instant;

use super::{notification_payload, now, Lease, Reserved, Saga};
use crate::reservations::error::SagaError;
use crate::reservations::inventory::{
    Confirmation, HoldOutcome, HoldRequest, HoldTiming, IdempotencyRecord, Step,
};
use crate::reservations::keys;
use crate::reservations::model::{Failure, HistoryEntry, Reservation, ReservationStatus};
use crate::reservations::payer::{ChargeResult, PaymentState};
use crate::reservations::validation::{ReservationRequest, Selection};
use crate::slots;

/// Kept at the end of the deadline to answer after the last decision.
const ANSWER_MARGIN: Duration = Duration::from_millis(300);
/// Kept before confirmBy for the confirm script's round trip.
const CONFIRM_MARGIN: Duration = Duration::from_millis(150);
/// Holds tried when stale expired holds block a seat (each try expires one).
const HOLD_ATTEMPTS: u32 = 4;
/// Confirm attempts while the store does not answer.
const CONFIRM_ATTEMPTS: u32 = 3;
/// An idempotency claim is taken over only this long after its request's deadline (see
/// `idem_claim.lua`): room for clock differences between the shards' hosts.
const STALE_CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// One request's saga once its seats are held for payment.
struct Pending {
    view: Reservation,
    idem: Option<String>,
    lease: Lease,
    /// Answer by then.
    deadline: Instant,
    /// Not earlier than the saga's confirmBy on Redis' clock: nobody confirms after it.
    confirm_by: Instant,
}

impl Pending {
    fn res_id(&self) -> &str {
        &self.view.reservation_id
    }

    fn event_id(&self) -> &str {
        &self.view.event_id
    }

    fn idem(&self) -> Option<&str> {
        self.idem.as_deref()
    }

    /// Payments must answer by then to leave time to confirm.
    fn pay_by(&self) -> Instant {
        self.confirm_by
            .checked_sub(CONFIRM_MARGIN)
            .unwrap_or(self.confirm_by)
    }
}

/// What the hold step led to.
enum Held {
    Pending(Box<Pending>),
    Replay(Reserved),
}

impl Saga {
    /// `POST /api/reservations`: hold (straight into PAYMENT_PENDING) → charge → confirm, or
    /// compensate. Answers within the request deadline.
    pub async fn reserve(
        &self,
        req: ReservationRequest,
        idem: Option<String>,
    ) -> Result<Reserved, SagaError> {
        let deadline = Instant::now() + self.cfg.request_deadline;
        let p = match self.hold(&req, idem, deadline).await? {
            Held::Pending(p) => p,
            Held::Replay(r) => return Ok(r),
        };
        let charge = self
            .payer
            .charge(p.res_id(), p.view.amount, &p.view.user_email, p.pay_by());
        match self.with_lease(&p.lease, charge).await {
            ChargeResult::Charged(payment_id) => self.confirm(*p, payment_id).await,
            ChargeResult::Declined => {
                self.fail(&p, SagaError::failed(Failure::PaymentDeclined))
                    .await
            }
            ChargeResult::Unavailable { retry_after_secs } => {
                let e = SagaError::Failed {
                    failure: Failure::PaymentUnavailable,
                    detail: String::new(),
                    retry_after_secs: Some(retry_after_secs.max(1)),
                };
                self.fail(&p, e).await
            }
            ChargeResult::Unknown => self.settle_unknown(*p).await,
        }
    }

    /// Holds the seats and creates the saga in PAYMENT_PENDING, checking the idempotency key.
    async fn hold(
        &self,
        req: &ReservationRequest,
        idem: Option<String>,
        deadline: Instant,
    ) -> Result<Held, SagaError> {
        // Drawn into the event's slot group: its keys share the event's slot (crate::slots).
        let res_id = slots::new_id_in_group(keys::event_group(&req.event_id));
        // The deadline on the wall clock, for hold.lua's check on Redis' clock.
        let not_after_ms = now().0
            + deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i64;
        let fingerprint = idem.as_ref().map(|_| req.fingerprint());
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
            idempotency: idem.as_deref().zip(fingerprint.as_deref()),
        };
        let mut attempt = 0;
        let (sent, budget, created_at) = loop {
            attempt += 1;
            let (now_ms, now_iso) = now();
            let sent = Instant::now();
            let budget = deadline
                .saturating_duration_since(sent)
                .saturating_sub(ANSWER_MARGIN);
            let timing = HoldTiming {
                now_ms,
                now_iso: &now_iso,
                hold_ttl_ms: self.cfg.hold_ttl_ms,
                lease_ms: self.cfg.lease_ms,
                owner: &self.cfg.owner,
                pay_within_ms: Some(budget.as_millis() as u64),
                not_after_ms: Some(not_after_ms),
                stale_claim_ms: (self.cfg.request_deadline + STALE_CLAIM_MARGIN).as_millis() as u64,
            };
            match self.inv.hold(&hold, &timing).await? {
                HoldOutcome::Held => break (sent, budget, now_iso),
                HoldOutcome::BlockedByExpired(holder) if attempt < HOLD_ATTEMPTS => {
                    self.expire_hold(&holder, &req.event_id).await;
                }
                HoldOutcome::BlockedByExpired(_) => {
                    return Err(SagaError::failed(Failure::SeatUnavailable))
                }
                HoldOutcome::Rejected { failure, detail } => {
                    return Err(SagaError::Failed {
                        failure,
                        detail,
                        retry_after_secs: None,
                    })
                }
                HoldOutcome::IdempotencyReused => return Err(SagaError::IdempotencyKeyReused),
                HoldOutcome::TooLate => return Err(SagaError::failed(Failure::PaymentTimeout)),
                HoldOutcome::Replay(rec) => return self.replay(rec).await.map(Held::Replay),
            }
        };
        let view = pending_view(&res_id, req, seats.to_vec(), quantity, &created_at);
        Ok(Held::Pending(Box::new(Pending {
            lease: Lease::taken(&res_id, sent, self.cfg.lease_ms),
            view,
            idem,
            deadline,
            // hold.lua ran after `sent`: its Redis-time confirmBy is at most `budget` after now.
            confirm_by: Instant::now() + budget,
        })))
    }

    /// Charged: confirm (+ outbox + idempotent answer), or compensate if the saga can no
    /// longer confirm.
    async fn confirm(&self, mut p: Pending, payment_id: String) -> Result<Reserved, SagaError> {
        let (_, now_iso) = now();
        p.view.status = ReservationStatus::Confirmed;
        p.view.payment_id = Some(payment_id.clone());
        if let Some(h) = p.view.history.as_mut() {
            h.push(HistoryEntry::new(
                "confirm",
                ReservationStatus::Confirmed,
                &now_iso,
            ));
        }
        let body =
            serde_json::to_string(&p.view).map_err(|e| SagaError::Internal(e.to_string()))?;
        // Stored only for an idempotent replay: no key, no need to ship it to Redis.
        let stored_body = if p.idem.is_some() { body.as_str() } else { "" };
        let payload = notification_payload(&p.view, "reservation_confirmed");
        let c = Confirmation {
            res_id: p.res_id(),
            event_id: p.event_id(),
            idempotency_key: p.idem(),
            payment_id: &payment_id,
            response_body: stored_body,
            notification_payload: &payload,
            now_iso: &now_iso,
        };
        let mut last_err = None;
        for attempt in 0..CONFIRM_ATTEMPTS {
            if attempt > 0 {
                if Instant::now() + Duration::from_millis(100) > p.deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            match self.inv.confirm(&c).await {
                // WrongState(CONFIRMED): an earlier attempt whose answer was lost did it.
                Ok(Step::Done(_) | Step::WrongState(ReservationStatus::Confirmed, _)) => {
                    return Ok(Reserved::Created {
                        view: Box::new(p.view),
                        body,
                    })
                }
                Ok(Step::Lost) => return self.compensate(&p, Failure::SeatUnavailable).await,
                Ok(step) => {
                    tracing::warn!(reservation = %p.res_id(), ?step, "charged saga cannot confirm");
                    return self.compensate(&p, Failure::PaymentTimeout).await;
                }
                Err(e) if e.is_unreachable() => last_err = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        // Charged, end not written: recovery confirms it before confirmBy, or refunds it after.
        Err(SagaError::OutcomePending {
            reservation_id: p.view.reservation_id.clone(),
            retry_after_secs: last_err.map_or(1, |e| e.retry_after_secs()),
        })
    }

    /// A definite non-charge (declined, payments unavailable): release and answer `err`.
    async fn fail(&self, p: &Pending, err: SagaError) -> Result<Reserved, SagaError> {
        let failure = match &err {
            SagaError::Failed { failure, .. } => *failure,
            _ => Failure::PaymentUnavailable,
        };
        if let Err(e) = self
            .release(p.res_id(), p.event_id(), p.idem(), failure)
            .await
        {
            // Nothing was charged: recovery asks payments and releases.
            tracing::warn!(reservation = %p.res_id(), error = %e, "release failed; recovery will finish");
        }
        Err(err)
    }

    /// A saga that can never confirm any more (seats lost, too late, abandoned, ended elsewhere)
    /// but may be charged: refund within the deadline, then release; what is left goes to the
    /// background. Never called while the saga could still confirm: a refund must not race a
    /// confirmation.
    async fn compensate(&self, p: &Pending, failure: Failure) -> Result<Reserved, SagaError> {
        let refund_by = p.deadline.checked_sub(ANSWER_MARGIN).unwrap_or(p.deadline);
        let refund = self.payer.refund(p.res_id(), refund_by);
        let done = match self.with_lease(&p.lease, refund).await {
            Ok(()) => self
                .release(p.res_id(), p.event_id(), p.idem(), failure)
                .await
                .is_ok(),
            Err(e) => {
                tracing::warn!(reservation = %p.res_id(), error = %e, "refund not done in time");
                false
            }
        };
        if !done {
            self.spawn_settle(p.res_id(), p.event_id(), p.idem(), failure);
        }
        Err(SagaError::failed(failure))
    }

    /// The charge's outcome is unknown: ask payments while a confirmation is still possible.
    async fn settle_unknown(&self, p: Pending) -> Result<Reserved, SagaError> {
        if Instant::now() < p.pay_by() {
            let status = self.payer.status(p.res_id(), p.pay_by());
            match self.with_lease(&p.lease, status).await {
                Ok(PaymentState::Charged(payment_id)) => return self.confirm(p, payment_id).await,
                // Not charged yet: a charge may still land, so decide first, then refund (which
                // also makes payments refuse a late charge).
                Ok(PaymentState::NotCharged) => return self.abandon(p).await,
                Err(e) => {
                    tracing::warn!(reservation = %p.res_id(), error = %e, "payment status unknown")
                }
            }
        }
        self.abandon(p).await
    }

    /// Decides "never confirm, refund" and answers 504 — but only once that decision is durable:
    /// written by `abandon.lua`, or, when Redis refuses the write, implied by confirmBy having
    /// passed while our lease still covered it (so nobody confirmed before). Then refunds within
    /// the deadline (the rest in the background). Otherwise the outcome is left to recovery and
    /// the answer says so.
    async fn abandon(&self, p: Pending) -> Result<Reserved, SagaError> {
        let decided = match self.inv.abandon(p.res_id()).await {
            Ok(Step::WrongState(ReservationStatus::Confirmed, _)) => {
                return self.confirmed_meanwhile(&p).await
            }
            Ok(Step::Done(_)) => true,
            Ok(step) => {
                tracing::info!(reservation = %p.res_id(), ?step, "saga ended elsewhere");
                true
            }
            Err(e) => {
                tracing::warn!(reservation = %p.res_id(), error = %e, "abandon mark not written");
                self.decided_by_confirm_deadline(&p).await
            }
        };
        if !decided {
            return Err(SagaError::OutcomePending {
                reservation_id: p.view.reservation_id.clone(),
                retry_after_secs: 1,
            });
        }
        self.compensate(&p, Failure::PaymentTimeout).await
    }

    /// Waits until confirmBy has passed (if that is within the deadline); true if our lease
    /// surely lasted past it.
    async fn decided_by_confirm_deadline(&self, p: &Pending) -> bool {
        if p.confirm_by > p.deadline {
            return false;
        }
        tokio::time::sleep_until(p.confirm_by + Duration::from_millis(1)).await;
        p.lease.surely_until() > p.confirm_by
    }

    /// Recovery confirmed the saga while this request was settling: answer with it.
    async fn confirmed_meanwhile(&self, p: &Pending) -> Result<Reserved, SagaError> {
        match self.inv.load(p.res_id()).await? {
            Some(rec) => Reserved::created(rec.view),
            None => Err(SagaError::Internal("confirmed reservation vanished".into())),
        }
    }

    /// Answers a request whose `Idempotency-Key` was seen with the same body.
    async fn replay(&self, rec: IdempotencyRecord) -> Result<Reserved, SagaError> {
        if rec.state == "done" {
            if !rec.body.is_empty() {
                return Ok(Reserved::Replayed {
                    status: rec.status.parse().unwrap_or(201),
                    body: rec.body,
                });
            }
            let failure = Failure::parse(&rec.err)
                .ok_or_else(|| SagaError::Internal(format!("stored failure {:?}", rec.err)))?;
            return Err(SagaError::Failed {
                failure,
                detail: rec.detail,
                retry_after_secs: None,
            });
        }
        if rec.res_id.is_empty() {
            return Err(SagaError::InProgress);
        }
        // Still marked running: the first request may have died; answer from the saga itself.
        match self.inv.load(&rec.res_id).await? {
            None => Err(SagaError::InProgress),
            Some(r) if r.view.status.is_unfinished() => Err(SagaError::InProgress),
            Some(r)
                if matches!(
                    r.view.status,
                    ReservationStatus::Failed | ReservationStatus::Expired
                ) =>
            {
                Err(SagaError::failed(
                    r.failure().unwrap_or(Failure::PaymentTimeout),
                ))
            }
            Some(r) => Reserved::created(r.view),
        }
    }
}

/// The view of a saga just held for payment.
fn pending_view(
    res_id: &str,
    req: &ReservationRequest,
    seats: Vec<String>,
    quantity: u32,
    at: &str,
) -> Reservation {
    Reservation {
        reservation_id: res_id.to_owned(),
        status: ReservationStatus::PaymentPending,
        event_id: req.event_id.clone(),
        seats,
        quantity,
        amount: req.amount,
        user_email: req.user_email.clone(),
        payment_id: None,
        notification: "queued".into(),
        created_at: at.to_owned(),
        history: Some(vec![
            HistoryEntry::new("hold", ReservationStatus::Held, at),
            HistoryEntry::new("payment", ReservationStatus::PaymentPending, at),
        ]),
        failure: None,
    }
}
