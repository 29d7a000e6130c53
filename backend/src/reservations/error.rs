//! What a saga operation can end with, other than success: typed, free of HTTP. [`super::answer`]
//! is the one place that turns these into HTTP answers and metric labels.

use super::inventory::InventoryError;
use super::model::{Failure, ReservationStatus};
use super::payer::PayerError;

/// A reservation or cancellation that did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SagaError {
    /// Decided: no reservation, no net charge (the seats, if any were held, are released or
    /// being released, and the saga can never confirm).
    #[error("reservation failed: {}", failure.as_str())]
    Failed {
        /// Why.
        failure: Failure,
        /// The seat or event concerned, if any.
        detail: String,
        /// For failures worth retrying later (payments unavailable).
        retry_after_secs: Option<u64>,
    },
    /// Same `Idempotency-Key`, other body.
    #[error("idempotency key reused with another body")]
    IdempotencyKeyReused,
    /// Same `Idempotency-Key` (or the same cancellation) still running.
    #[error("request in progress")]
    InProgress,
    /// No such reservation.
    #[error("reservation {0} not found")]
    NotFound(String),
    /// Only CONFIRMED reservations can be cancelled.
    #[error("reservation is {0}")]
    NotCancellable(ReservationStatus),
    /// The cancellation's refund could not be made now; recovery finishes it.
    #[error("refund pending")]
    RefundPending,
    /// The inventory store could not be reached; nothing was decided.
    #[error("inventory unavailable")]
    InventoryUnavailable {
        /// Suggested `Retry-After`.
        retry_after_secs: u64,
    },
    /// The saga was charged (or may have been) and its end could not be written: recovery
    /// confirms it if the store answers before its confirmBy instant, else refunds it.
    #[error("outcome of {reservation_id} pending")]
    OutcomePending {
        /// The reservation to look up later.
        reservation_id: String,
        /// Suggested `Retry-After`.
        retry_after_secs: u64,
    },
    /// A bug or a version mismatch (an unknown script reply, a Lua error): logged, nothing
    /// decided.
    #[error("internal: {0}")]
    Internal(String),
}

impl SagaError {
    /// A decided failure without detail.
    pub fn failed(failure: Failure) -> Self {
        Self::Failed {
            failure,
            detail: String::new(),
            retry_after_secs: None,
        }
    }
}

impl From<InventoryError> for SagaError {
    fn from(e: InventoryError) -> Self {
        if e.is_unreachable() {
            SagaError::InventoryUnavailable {
                retry_after_secs: e.retry_after_secs(),
            }
        } else {
            tracing::error!(error = %e, "inventory answered something unusable");
            SagaError::Internal(e.to_string())
        }
    }
}

impl From<PayerError> for SagaError {
    fn from(_: PayerError) -> Self {
        SagaError::RefundPending
    }
}
