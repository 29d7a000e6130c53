//! The reservation as clients see it (SPEC §4) and the saga's typed vocabulary: its status and
//! the failure codes it stores and answers with.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A saga's status, the values of `Reservation.status` (SPEC §4). HELD and PAYMENT_PENDING are
/// unfinished: recovery drives them to an end; the other four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationStatus {
    /// Seats held, payment not started yet.
    Held,
    /// The charge is in flight (or its outcome is being settled); the seats cannot expire.
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

impl ReservationStatus {
    /// Every status, in saga order.
    pub const ALL: [Self; 6] = [
        Self::Held,
        Self::PaymentPending,
        Self::Confirmed,
        Self::Cancelled,
        Self::Failed,
        Self::Expired,
    ];

    /// The text stored in Redis and shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::PaymentPending => "PAYMENT_PENDING",
            Self::Confirmed => "CONFIRMED",
            Self::Cancelled => "CANCELLED",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// HELD or PAYMENT_PENDING: not final.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Self::Held | Self::PaymentPending)
    }
}

impl std::fmt::Display for ReservationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reservation was refused or ended without a sale. Stored in Redis (the saga's
/// `failCode`, a failed request's idempotency record) and answered as the error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// A requested seat is held or sold.
    SeatUnavailable,
    /// Not enough general-admission capacity.
    SoldOut,
    /// No such event.
    EventNotFound,
    /// No such seat.
    SeatNotFound,
    /// Seats asked of a general-admission event, or a quantity of a seated one.
    WrongKind,
    /// A seat listed twice.
    DuplicateSeat,
    /// No seat listed.
    InvalidSeats,
    /// Payments declined the charge.
    PaymentDeclined,
    /// Payments could not be reached (nothing charged).
    PaymentUnavailable,
    /// The charge's outcome was not settled within the deadline (refunded).
    PaymentTimeout,
    /// The hold expired before payment started.
    HoldExpired,
}

impl Failure {
    const ALL: [Self; 11] = [
        Self::SeatUnavailable,
        Self::SoldOut,
        Self::EventNotFound,
        Self::SeatNotFound,
        Self::WrongKind,
        Self::DuplicateSeat,
        Self::InvalidSeats,
        Self::PaymentDeclined,
        Self::PaymentUnavailable,
        Self::PaymentTimeout,
        Self::HoldExpired,
    ];

    /// The snake_case code (stored, answered, and used as metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeatUnavailable => "seat_unavailable",
            Self::SoldOut => "sold_out",
            Self::EventNotFound => "event_not_found",
            Self::SeatNotFound => "seat_not_found",
            Self::WrongKind => "wrong_kind",
            Self::DuplicateSeat => "duplicate_seat",
            Self::InvalidSeats => "invalid_seats",
            Self::PaymentDeclined => "payment_declined",
            Self::PaymentUnavailable => "payment_unavailable",
            Self::PaymentTimeout => "payment_timeout",
            Self::HoldExpired => "hold_expired",
        }
    }

    /// The failure named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
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

impl HistoryEntry {
    /// An entry reaching `status` at `at`.
    pub fn new(step: &str, status: ReservationStatus, at: &str) -> Self {
        Self {
            step: step.to_owned(),
            status: status.as_str().to_owned(),
            at: at.to_owned(),
        }
    }
}

/// A reservation (SPEC §4 fields, plus `history` and, when it failed, `failure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// Id (also the payment idempotency key).
    #[schema(example = "0f8c2b6e4d8a4e53a7b0c6f1e2d3a4b5")]
    pub reservation_id: String,
    /// `HELD`, `PAYMENT_PENDING`, `CONFIRMED`, `CANCELLED`, `FAILED`, `EXPIRED`.
    pub status: ReservationStatus,
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
    /// A failure was decided while the charge's outcome was unknown: refund, never confirm.
    pub abandoned: bool,
    /// Hold deadline (ms since the epoch).
    pub hold_deadline_ms: i64,
}

impl SagaRecord {
    /// Builds the record from the hash fields and the raw history entries. An error names what
    /// this version cannot read.
    pub fn from_fields(
        mut f: HashMap<String, String>,
        history: Vec<String>,
    ) -> Result<Self, String> {
        let id = f.remove("id").ok_or("no id field")?;
        let mut take = |k: &str| f.remove(k).unwrap_or_default();
        let status_text = take("status");
        let status = ReservationStatus::parse(&status_text)
            .ok_or_else(|| format!("unknown status {status_text:?}"))?;
        let seats_csv = take("seats");
        let seats: Vec<String> = seats_csv
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let non_empty = |s: String| Some(s).filter(|s| !s.is_empty());
        let history = history
            .iter()
            .filter_map(|h| serde_json::from_str::<HistoryEntry>(h).ok())
            .collect();
        let view = Reservation {
            reservation_id: id,
            status,
            event_id: take("eventId"),
            seats,
            quantity: take("quantity").parse().unwrap_or(0),
            amount: take("amount").parse().unwrap_or(0.0),
            user_email: take("userEmail"),
            payment_id: non_empty(take("paymentId")),
            notification: take("notification"),
            created_at: take("createdAt"),
            history: Some(history),
            failure: non_empty(take("failCode")),
        };
        let idempotency_key = non_empty(take("idemKey")).map(|k| {
            k.strip_prefix("idem:{")
                .and_then(|k| k.strip_suffix('}'))
                .unwrap_or(&k)
                .to_owned()
        });
        Ok(Self {
            view,
            idempotency_key,
            cancel_requested: take("cancelRequested") == "1",
            abandoned: take("settle") == "refund",
            hold_deadline_ms: take("holdDeadline").parse().unwrap_or(0),
        })
    }

    /// The stored failure, if it is one this version knows.
    pub fn failure(&self) -> Option<Failure> {
        self.view.failure.as_deref().and_then(Failure::parse)
    }
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
        let r = SagaRecord::from_fields(f.clone(), hist).unwrap();
        assert_eq!(r.view.seats, vec!["A1", "A2"]);
        assert_eq!(r.view.status, ReservationStatus::Confirmed);
        assert_eq!(r.view.payment_id.as_deref(), Some("p1"));
        assert_eq!(r.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(r.view.history.as_ref().unwrap()[0].step, "hold");
        let json = serde_json::to_value(&r.view).unwrap();
        assert_eq!(json["reservationId"], "r1");
        assert_eq!(json["status"], "CONFIRMED");
        assert!(json.get("failure").is_none());
        assert!(SagaRecord::from_fields(HashMap::new(), vec![]).is_err());
        let mut odd = f;
        odd.insert("status".into(), "SHIPPED".into());
        assert!(SagaRecord::from_fields(odd, vec![]).is_err());
    }

    #[test]
    fn statuses_and_failures_round_trip() {
        for s in ReservationStatus::ALL {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for f in Failure::ALL {
            assert_eq!(Failure::parse(f.as_str()), Some(f));
        }
        assert_eq!(Failure::parse("gremlins"), None);
    }
}
