//! Recovery's side of the saga: driving a saga whose driver vanished (its lease ran out) to an
//! end. The lease is already ours (taken by `claim.lua`).

use tokio::time::Instant;

use super::{notification_payload, now, Lease, Saga};
use crate::reservations::inventory::{Confirmation, Step};
use crate::reservations::model::{Failure, HistoryEntry, ReservationStatus, SagaRecord};
use crate::reservations::payer::PaymentState;

impl Saga {
    /// Drives an unfinished saga found by recovery to an end (or leaves it for the next lease
    /// period when payments or Redis do not answer).
    pub async fn recover(&self, rec: SagaRecord) {
        let lease = Lease::taken(&rec.view.reservation_id, Instant::now(), self.cfg.lease_ms);
        match rec.view.status {
            ReservationStatus::Held if rec.hold_deadline_ms <= now().0 => {
                let v = &rec.view;
                if self.expire_hold(&v.reservation_id, &v.event_id).await {
                    tracing::info!(reservation = %v.reservation_id, "recovery expired an abandoned hold");
                }
            }
            ReservationStatus::PaymentPending => self.recover_payment(&lease, &rec).await,
            ReservationStatus::Confirmed if rec.cancel_requested => {
                match self.finish_cancel(&lease, &rec.view).await {
                    Ok(()) => self.count("cancelled"),
                    Err(e) => {
                        tracing::warn!(reservation = %rec.view.reservation_id, error = %e, "recovery: cancel not finished")
                    }
                }
            }
            // claim.lua already dropped ended sagas from the index.
            _ => {}
        }
    }

    /// PAYMENT_PENDING: abandoned → refund; else ask payments: charged → confirm (refused
    /// after confirmBy → refund), not charged → refund (blocks a late charge) and release.
    async fn recover_payment(&self, lease: &Lease, rec: &SagaRecord) {
        let res_id = &rec.view.reservation_id;
        if !rec.abandoned {
            let deadline = Instant::now() + self.cfg.request_deadline;
            match self
                .with_lease(lease, self.payer.status(res_id, deadline))
                .await
            {
                Ok(PaymentState::Charged(payment_id)) => {
                    return self.recover_confirm(lease, rec, payment_id).await
                }
                Ok(PaymentState::NotCharged) => {}
                Err(e) => {
                    tracing::warn!(reservation = %res_id, error = %e, "recovery: payment status unknown");
                    return;
                }
            }
        }
        self.recover_refund(lease, rec, Failure::PaymentTimeout)
            .await;
    }

    async fn recover_confirm(&self, lease: &Lease, rec: &SagaRecord, payment_id: String) {
        let res_id = &rec.view.reservation_id;
        let mut view = rec.view.clone();
        let (_, now_iso) = now();
        view.status = ReservationStatus::Confirmed;
        view.payment_id = Some(payment_id.clone());
        if let Some(h) = view.history.as_mut() {
            h.push(HistoryEntry::new(
                "confirm",
                ReservationStatus::Confirmed,
                &now_iso,
            ));
        }
        let body = match serde_json::to_string(&view) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(reservation = %res_id, error = %e, "recovery: view not serializable");
                return;
            }
        };
        let payload = notification_payload(&view, "reservation_confirmed");
        let confirmed = self
            .inv
            .confirm(&Confirmation {
                res_id,
                event_id: &view.event_id,
                idempotency_key: rec.idempotency_key.as_deref(),
                payment_id: &payment_id,
                response_body: &body,
                notification_payload: &payload,
                now_iso: &now_iso,
            })
            .await;
        match confirmed {
            Ok(Step::Done(_) | Step::WrongState(ReservationStatus::Confirmed, _)) => {
                self.count("confirmed");
                tracing::info!(reservation = %res_id, "recovery confirmed a charged saga");
            }
            Ok(Step::Lost) => {
                self.recover_refund(lease, rec, Failure::SeatUnavailable)
                    .await
            }
            Ok(step) => {
                tracing::info!(reservation = %res_id, ?step, "recovery: charged saga cannot confirm");
                self.recover_refund(lease, rec, Failure::PaymentTimeout)
                    .await
            }
            Err(e) => tracing::warn!(reservation = %res_id, error = %e, "recovery: confirm failed"),
        }
    }

    async fn recover_refund(&self, lease: &Lease, rec: &SagaRecord, failure: Failure) {
        let v = &rec.view;
        let idem = rec.idempotency_key.as_deref();
        if self
            .refund_and_release(lease, &v.reservation_id, &v.event_id, idem, failure)
            .await
        {
            self.count("compensated");
            tracing::info!(reservation = %v.reservation_id, "recovery compensated a saga");
        }
    }
}
