//! Finishing a saga that can no longer confirm: refund, then release. Used in the background
//! after a request answered (so the answer never waits for it) and by recovery.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::{Lease, Saga};
use crate::reservations::inventory::Step;
use crate::reservations::model::{Failure, ReservationStatus};

/// Background settle rounds (with the backoff below, about ten minutes) before leaving the saga
/// to recovery.
const SETTLE_ROUNDS: u32 = 120;
/// First pause between rounds (doubles up to [`MAX_PAUSE`]).
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl Saga {
    /// Settles the saga in a background task (the caller has answered or is about to).
    pub(super) fn spawn_settle(
        &self,
        res_id: &str,
        event_id: &str,
        idem: Option<&str>,
        failure: Failure,
    ) {
        let saga = self.clone();
        let (res_id, event_id) = (res_id.to_owned(), event_id.to_owned());
        let idem = idem.map(str::to_owned);
        let task = async move {
            saga.settle(&res_id, &event_id, idem.as_deref(), failure)
                .await
        };
        tokio::spawn(task.in_current_span());
    }

    async fn settle(&self, res_id: &str, event_id: &str, idem: Option<&str>, failure: Failure) {
        // The request's lease is ours; renewing it at once tells us how long it surely is.
        let lease = Lease::taken(res_id, Instant::now(), 0);
        let mut pause = FIRST_PAUSE;
        for _ in 0..SETTLE_ROUNDS {
            if self
                .refund_and_release(&lease, res_id, event_id, idem, failure)
                .await
            {
                self.count("settled");
                return;
            }
            self.renew(&lease).await;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        tracing::error!(
            reservation = res_id,
            "background settle gave up; recovery will retry"
        );
    }

    /// Makes the saga non-confirmable (`abandon.lua`), refunds (or records a refund before any
    /// charge), then releases as FAILED. True once done, or if the saga turned out CONFIRMED
    /// (then there is nothing to refund). The mark comes first so that a refund never races a
    /// confirmation by another replica.
    pub(super) async fn refund_and_release(
        &self,
        lease: &Lease,
        res_id: &str,
        event_id: &str,
        idem: Option<&str>,
        failure: Failure,
    ) -> bool {
        match self.inv.abandon(res_id).await {
            Ok(Step::WrongState(ReservationStatus::Confirmed, _)) => {
                tracing::info!(
                    reservation = res_id,
                    "confirmed meanwhile: nothing to refund"
                );
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(reservation = res_id, error = %e, "abandon mark failed; will retry");
                return false;
            }
        }
        let deadline = Instant::now() + self.cfg.request_deadline;
        if let Err(e) = self
            .with_lease(lease, self.payer.refund(res_id, deadline))
            .await
        {
            tracing::warn!(reservation = res_id, error = %e, "refund failed; will retry");
            return false;
        }
        match self.release(res_id, event_id, idem, failure).await {
            Ok(Step::WrongState(ReservationStatus::Confirmed, _)) => {
                // Impossible by construction (confirm refuses an abandoned or late saga).
                tracing::error!(reservation = res_id, "refunded a saga that is CONFIRMED");
                true
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(reservation = res_id, error = %e, "release after refund failed");
                false
            }
        }
    }
}
