//! `POST /api/reservations/{id}/cancel`: CONFIRMED → (cancelRequested, under a lease) → refund →
//! CANCELLED with the seats back. A crash after the first step is finished by recovery.

use tokio::time::Instant;

use super::{notification_payload, now, Lease, Saga};
use crate::reservations::error::SagaError;
use crate::reservations::inventory::Step;
use crate::reservations::model::{Reservation, ReservationStatus};

impl Saga {
    /// Cancels a CONFIRMED reservation; returns it CANCELLED.
    pub async fn cancel(&self, res_id: &str) -> Result<Reservation, SagaError> {
        let not_found = || SagaError::NotFound(res_id.to_owned());
        let rec = self.inv.load(res_id).await?.ok_or_else(not_found)?;
        let (now_ms, _) = now();
        let sent = Instant::now();
        let cfg = &self.cfg;
        match self
            .inv
            .cancel_begin(res_id, &cfg.owner, cfg.lease_ms, now_ms)
            .await?
        {
            Step::Done(_) => {}
            Step::Busy => return Err(SagaError::InProgress),
            Step::Missing => return Err(not_found()),
            Step::WrongState(status, _) => return Err(SagaError::NotCancellable(status)),
            other => return Err(SagaError::Internal(format!("cancel_begin: {other:?}"))),
        }
        let lease = Lease::taken(res_id, sent, cfg.lease_ms);
        self.finish_cancel(&lease, &rec.view).await?;
        let rec = self.inv.load(res_id).await?.ok_or_else(not_found)?;
        Ok(rec.view)
    }

    /// Refund, then CONFIRMED → CANCELLED.
    pub(super) async fn finish_cancel(
        &self,
        lease: &Lease,
        view: &Reservation,
    ) -> Result<(), SagaError> {
        let res_id = &view.reservation_id;
        let deadline = Instant::now() + self.cfg.request_deadline;
        self.with_lease(lease, self.payer.refund(res_id, deadline))
            .await
            .inspect_err(
                |e| tracing::warn!(reservation = %res_id, error = %e, "refund for cancel failed"),
            )?;
        let (now_ms, now_iso) = now();
        let payload = notification_payload(view, "reservation_cancelled");
        match self
            .inv
            .cancel(res_id, &view.event_id, &payload, now_ms, &now_iso)
            .await?
        {
            Step::Done(_) | Step::WrongState(ReservationStatus::Cancelled, _) => Ok(()),
            Step::WrongState(status, _) => Err(SagaError::NotCancellable(status)),
            other => Err(SagaError::Internal(format!("cancel: {other:?}"))),
        }
    }
}
