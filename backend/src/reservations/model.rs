//! The reservation as clients see it (SPEC §4), read from its Redis hash and history list.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys;
use crate::store::{Store, StoreError};

/// Saga statuses that are not final: recovery drives them to an end.
pub const UNFINISHED: [&str; 2] = ["HELD", "PAYMENT_PENDING"];

/// The values of `Reservation.status` (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    /// Seats held, payment not started yet.
    Held,
    /// The charge is in flight (or its outcome is being settled).
    PaymentPending,
    /// Paid and confirmed.
    Confirmed,
    /// Cancelled by the user: refunded, seats released.
    Cancelled,
    /// The saga failed (see `failure`); nothing is charged.
    Failed,
    /// The hold ran out before payment started.
    Expired,
}

/// The values of `HistoryEntry.step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SagaStep {
    /// Seats held (→ `HELD`).
    Hold,
    /// Charge started (→ `PAYMENT_PENDING`).
    Payment,
    /// Charged and confirmed (→ `CONFIRMED`).
    Confirm,
    /// Compensated: seats released (→ `FAILED`).
    Release,
    /// Hold expired (→ `EXPIRED`).
    Expire,
    /// Cancelled and refunded (→ `CANCELLED`).
    Cancel,
}

/// The values of `Reservation.notification`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationState {
    /// In the outbox, not delivered yet.
    Queued,
    /// Delivered to the notifications service.
    Sent,
    /// Delivery gave up after its retries.
    Failed,
}

/// One saga history entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// `hold`, `payment`, `confirm`, `release`, `expire`, `cancel`.
    #[schema(value_type = SagaStep)]
    pub step: String,
    /// Status reached by the step.
    #[schema(value_type = ReservationStatus)]
    pub status: String,
    /// RFC 3339 time.
    #[schema(format = DateTime)]
    pub at: String,
}

/// A reservation (SPEC §4 fields, plus `history` and, when it failed, `failure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Id (also the payment idempotency key).
    #[schema(example = "0f8c2b6e4d8a4e53a7b0c6f1e2d3a4b5")]
    pub reservation_id: String,
    /// `HELD`, `PAYMENT_PENDING`, `CONFIRMED`, `CANCELLED`, `FAILED`, `EXPIRED`.
    #[schema(value_type = ReservationStatus)]
    pub status: String,
    /// Event id.
    pub event_id: String,
    /// Numbered seats (empty for general admission).
    pub seats: Vec<String>,
    /// Places taken.
    pub quantity: u32,
    /// Price.
    pub amount: f64,
    /// Buyer.
    pub user_email: String,
    /// Payment id once charged (`null` before).
    #[schema(required = true)]
    pub payment_id: Option<String>,
    /// `queued`, `sent`, `failed`.
    #[schema(value_type = NotificationState)]
    pub notification: String,
    /// RFC 3339 creation time.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Saga steps so far (omitted in answers that do not carry it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub history: Option<Vec<HistoryEntry>>,
    /// Why a FAILED reservation failed (an error code).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
}

/// Internal saga fields next to the public view.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    /// The public view.
    pub view: Reservation,
    /// Idempotency key of the creating request, if any.
    pub idempotency_key: Option<String>,
    /// A cancellation was started.
    pub cancel_requested: bool,
    /// `refund`: a 504 was answered, the saga must be compensated (never confirmed).
    pub settle: Option<String>,
    /// Hold deadline (ms since the epoch).
    pub hold_deadline_ms: i64,
}

impl SagaRecord {
    /// Builds the record from the hash fields and the raw history entries. None if the hash is
    /// empty (no such reservation).
    pub fn from_fields(mut f: HashMap<String, String>, history: Vec<String>) -> Option<Self> {
        let id = f.remove("id")?;
        let mut take = |k: &str| f.remove(k).unwrap_or_default();
        let seats_csv = take("seats");
        let seats: Vec<String> = if seats_csv.is_empty() {
            Vec::new()
        } else {
            seats_csv.split(',').map(str::to_owned).collect()
        };
        let payment_id = Some(take("paymentId")).filter(|s| !s.is_empty());
        let fail = Some(take("failCode")).filter(|s| !s.is_empty());
        let idem = Some(take("idemKey")).filter(|s| !s.is_empty());
        let settle = Some(take("settle")).filter(|s| !s.is_empty());
        let history = history
            .iter()
            .filter_map(|h| serde_json::from_str::<HistoryEntry>(h).ok())
            .collect();
        let view = Reservation {
            reservation_id: id,
            status: take("status"),
            event_id: take("eventId"),
            seats,
            quantity: take("quantity").parse().unwrap_or(0),
            amount: take("amount").parse().unwrap_or(0.0),
            user_email: take("userEmail"),
            payment_id,
            notification: take("notification"),
            created_at: take("createdAt"),
            history: Some(history),
            failure: fail,
        };
        Some(Self {
            view,
            idempotency_key: idem.map(|k| {
                k.strip_prefix("idem:{")
                    .and_then(|k| k.strip_suffix('}'))
                    .unwrap_or(&k)
                    .to_owned()
            }),
            cancel_requested: take("cancelRequested") == "1",
            settle,
            hold_deadline_ms: take("holdDeadline").parse().unwrap_or(0),
        })
    }
}

/// Reads one reservation (hash + history) in one round trip. `Ok(None)` if it does not exist.
pub async fn load(store: &Store, res_id: &str) -> Result<Option<SagaRecord>, StoreError> {
    let mut p = redis::pipe();
    p.cmd("HGETALL")
        .arg(keys::reservation(res_id))
        .cmd("LRANGE")
        .arg(keys::history(res_id))
        .arg(0)
        .arg(-1);
    let (fields, history): (HashMap<String, String>, Vec<String>) = store.pipeline(&p).await?;
    Ok(SagaRecord::from_fields(fields, history))
}

/// Reads several reservations in one round trip, skipping ids that do not exist.
pub async fn load_many(store: &Store, ids: &[String]) -> Result<Vec<SagaRecord>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for id in ids {
        p.cmd("HGETALL")
            .arg(keys::reservation(id))
            .cmd("LRANGE")
            .arg(keys::history(id))
            .arg(0)
            .arg(-1);
    }
    let raw: Vec<redis::Value> = store.pipeline(&p).await?;
    let mut out = Vec::with_capacity(ids.len());
    let mut it = raw.into_iter();
    while let (Some(h), Some(l)) = (it.next(), it.next()) {
        let fields: HashMap<String, String> = redis::from_redis_value(h).unwrap_or_default();
        let history: Vec<String> = redis::from_redis_value(l).unwrap_or_default();
        if let Some(r) = SagaRecord::from_fields(fields, history) {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_view_from_hash() {
        let f: HashMap<String, String> = [
            ("id", "r1"),
            ("status", "CONFIRMED"),
            ("eventId", "EVT-001"),
            ("seats", "A1,A2"),
            ("quantity", "2"),
            ("amount", "50"),
            ("userEmail", "a@b.c"),
            ("paymentId", "p1"),
            ("notification", "sent"),
            ("createdAt", "2026-01-01T00:00:00Z"),
            ("idemKey", "idem:{k1}"),
            ("failCode", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let hist = vec![r#"{"step":"hold","status":"HELD","at":"x"}"#.to_owned()];
        let r = SagaRecord::from_fields(f, hist).unwrap();
        assert_eq!(r.view.seats, vec!["A1", "A2"]);
        assert_eq!(r.view.payment_id.as_deref(), Some("p1"));
        assert_eq!(r.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(r.view.history.as_ref().unwrap()[0].step, "hold");
        let json = serde_json::to_value(&r.view).unwrap();
        assert_eq!(json["reservationId"], "r1");
        assert!(json.get("failure").is_none());
        assert!(SagaRecord::from_fields(HashMap::new(), vec![]).is_none());
    }
}
