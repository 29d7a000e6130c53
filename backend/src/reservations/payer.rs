//! The saga's view of payments: the outcomes it branches on, mapped from
//! [`crate::payments_client`] (which owns timeouts, retries, breaker and bulkhead).

use tokio::time::Instant;

use crate::payments_client::PaymentsClient;

/// Outcome of a charge attempt, as the saga needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChargeResult {
    /// Charged; the payment id.
    Charged(String),
    /// Definitely not charged: declined.
    Declined,
    /// Definitely not charged: payments unavailable (breaker open, bulkhead full, refused).
    Unavailable {
        /// Suggested Retry-After seconds.
        retry_after_secs: u64,
    },
    /// Outcome unknown (timeouts): must be settled by asking, then refunding.
    Unknown,
}

/// What payments says about a reservation's payment.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentState {
    /// Charged and not refunded; the payment id.
    Charged(String),
    /// Never charged, or refunded.
    NotCharged,
}

/// A payments call that got no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("payments did not answer usably: {0}")]
pub struct PayerError(pub String);

/// The saga's payments port over the resilient client.
#[derive(Clone)]
pub struct Payer {
    client: PaymentsClient,
}

impl std::fmt::Debug for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Payer")
    }
}

impl Payer {
    /// Wraps the client.
    pub fn new(client: PaymentsClient) -> Self {
        Self { client }
    }

    /// Charges `amount` for the reservation (idempotent on its id), within `deadline`.
    pub async fn charge(
        &self,
        res_id: &str,
        amount: f64,
        user_email: &str,
        deadline: Instant,
    ) -> ChargeResult {
        use crate::payments_client::ChargeError as E;
        match self
            .client
            .charge(res_id, amount, user_email, deadline)
            .await
        {
            Ok(c) => ChargeResult::Charged(c.payment_id),
            Err(E::Declined { .. }) => ChargeResult::Declined,
            Err(E::Unavailable { retry_after_secs }) => {
                ChargeResult::Unavailable { retry_after_secs }
            }
            Err(E::Unknown) => ChargeResult::Unknown,
        }
    }

    /// Asks payments whether the reservation was charged.
    pub async fn status(
        &self,
        res_id: &str,
        deadline: Instant,
    ) -> Result<PaymentState, PayerError> {
        use crate::payments_client::PaymentStatus as S;
        match self.client.status(res_id, deadline).await {
            Ok(S::Charged { payment_id, .. }) => Ok(PaymentState::Charged(payment_id)),
            Ok(S::NotFound | S::Refunded | S::Declined) => Ok(PaymentState::NotCharged),
            Err(e) => Err(PayerError(e.to_string())),
        }
    }

    /// Refunds (or voids, if the charge has not landed yet) the reservation's payment.
    pub async fn refund(&self, res_id: &str, deadline: Instant) -> Result<(), PayerError> {
        self.client
            .refund(res_id, deadline)
            .await
            .map_err(|e| PayerError(e.to_string()))
    }
}
