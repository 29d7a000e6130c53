//! The notifications service (`backend notifications`): records the messages the reservations
//! outbox delivers (a stand-in for an e-mail sender).
//!
//! State lives in process memory only (a restart forgets everything). API (SPEC §6):
//!
//! - `POST /notifications` `{reservationId, userEmail, kind, message?}`: idempotent on
//!   `(reservationId, kind)`, so an outbox redelivery never duplicates a message. The first
//!   delivery answers 201 with the record (`notificationId`, the fields, `createdAt`); a repeat
//!   answers 200 with the same record and is counted in `duplicates`.
//! - `POST /notifications/batch` `{notifications: [{reservationId, userEmail, kind, message?}, ...]}`
//!   (1 to [`MAX_BATCH`] items): records each item as `POST /notifications` would and answers 200
//!   `{results: [...]}`, one result per item in order: `{status: 201|200, notificationId}` or
//!   `{status: 422, error, message, field}` for an invalid item (the others are still recorded).
//!   A body that is not such an object answers 400/422 as a whole. The outbox worker delivers
//!   what it read in one round this way: one request instead of one per notification.
//! - `GET /notifications?reservationId=R`: 200 with that reservation's notifications, oldest
//!   first. Without `reservationId`: the most recent ones (`limit`, default 100, at most 1000).
//! - `GET /admin/notifications/summary`: `{count, duplicates}`.
//!
//! Also `/health`, `/ready`, `/metrics`, `GET|PUT|DELETE /admin/chaos` (`down`, `latencyMs`,
//! `errorRate` apply to the API; see [`crate::chaos`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use parking_lot::Mutex;
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::chaos::Chaos;
use crate::error::ApiError;
use crate::telemetry::{self, Metrics, MetricsError};

/// Default and largest page of `GET /notifications` without `reservationId`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Most items in one `POST /notifications/batch` (an item is at most ~4.5 KB, so a full batch
/// stays under the 2 MB body limit).
pub const MAX_BATCH: usize = 256;

/// Default listen address (SPEC §3).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3003";

/// Command-line flags of `backend notifications`.
#[derive(Debug, Clone, clap::Args)]
pub struct NotificationsArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

/// One delivered notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// Id given at first delivery (`ntf_<uuid>`).
    pub notification_id: String,
    /// The reservation it is about.
    pub reservation_id: String,
    /// Recipient.
    pub user_email: String,
    /// What happened (`reservation_confirmed`, ...).
    pub kind: String,
    /// Text of the message.
    pub message: String,
    /// First delivery time, RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Default)]
struct Book {
    /// Per reservation, its notifications in arrival order.
    by_reservation: HashMap<String, Vec<Notification>>,
    /// Arrival order over all reservations: (reservation id, index in its list).
    order: Vec<(String, usize)>,
    duplicates: u64,
}

/// Every notification this process received.
#[derive(Debug, Default)]
pub struct Inbox {
    book: Mutex<Book>,
}

/// Totals (`GET /admin/notifications/summary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Distinct notifications recorded.
    pub count: u64,
    /// Repeated deliveries answered with the existing record.
    pub duplicates: u64,
}

impl Inbox {
    /// Records a notification unless `(reservationId, kind)` exists; returns the record and
    /// whether it is new.
    fn record(&self, n: NewNotification) -> (Notification, bool) {
        let mut book = self.book.lock();
        if let Some(existing) = book
            .by_reservation
            .get(&n.reservation_id)
            .and_then(|list| list.iter().find(|x| x.kind == n.kind))
            .cloned()
        {
            book.duplicates += 1;
            return (existing, false);
        }
        let record = Notification {
            notification_id: format!("ntf_{}", uuid::Uuid::new_v4().simple()),
            reservation_id: n.reservation_id.clone(),
            user_email: n.user_email,
            kind: n.kind,
            message: n.message,
            created_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        };
        let list = book
            .by_reservation
            .entry(n.reservation_id.clone())
            .or_default();
        list.push(record.clone());
        let index = list.len() - 1;
        book.order.push((n.reservation_id, index));
        (record, true)
    }

    /// A reservation's notifications, oldest first.
    pub fn for_reservation(&self, reservation_id: &str) -> Vec<Notification> {
        self.book
            .lock()
            .by_reservation
            .get(reservation_id)
            .cloned()
            .unwrap_or_default()
    }

    /// The `limit` most recent notifications, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<Notification> {
        let book = self.book.lock();
        let skip = book.order.len().saturating_sub(limit);
        book.order[skip..]
            .iter()
            .filter_map(|(r, i)| book.by_reservation.get(r).and_then(|l| l.get(*i)).cloned())
            .collect()
    }

    /// Totals.
    pub fn summary(&self) -> Summary {
        let book = self.book.lock();
        Summary {
            count: book.order.len() as u64,
            duplicates: book.duplicates,
        }
    }
}

/// A validated `POST /notifications` body.
#[derive(Debug, Clone, PartialEq)]
struct NewNotification {
    reservation_id: String,
    user_email: String,
    kind: String,
    message: String,
}

impl NewNotification {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_fields(&ApiError::json_object(
            body,
            "{reservationId, userEmail, kind, message?}",
        )?)
    }

    fn from_fields(fields: &Map<String, Value>) -> Result<Self, ApiError> {
        let reservation_id = ApiError::string_field(fields, "reservationId", 128)?;
        let user_email = ApiError::email_field(fields)?;
        let kind = ApiError::string_field(fields, "kind", 64)?;
        let message = match fields.get("message") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) if s.len() <= 4096 => s.clone(),
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "message",
                    "message must be a string of at most 4096 bytes",
                ))
            }
        };
        Ok(Self {
            reservation_id,
            user_email,
            kind,
            message,
        })
    }

    /// The items of a `POST /notifications/batch` body, each parsed on its own (an invalid item
    /// is its own 422, not the batch's).
    fn parse_batch(body: &[u8]) -> Result<Vec<Result<Self, ApiError>>, ApiError> {
        let mut fields = ApiError::json_object(body, "{notifications: [...]}")?;
        let items = match fields.remove("notifications") {
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_BATCH => items,
            _ => {
                return Err(ApiError::invalid_request(
                    "notifications",
                    format!("notifications must be an array of 1 to {MAX_BATCH} notifications"),
                ))
            }
        };
        Ok(items
            .iter()
            .map(|item| match item {
                Value::Object(f) => Self::from_fields(f),
                _ => Err(ApiError::invalid_request(
                    "notifications",
                    "each notification must be a JSON object {reservationId, userEmail, kind, message?}",
                )),
            })
            .collect())
    }
}

/// Shared state of the notifications service.
#[derive(Clone)]
pub struct NotificationsState {
    /// Everything received.
    pub inbox: Arc<Inbox>,
    /// Chaos switches (`/admin/chaos`).
    pub chaos: Arc<Chaos>,
    /// Prometheus registry and HTTP metrics.
    pub metrics: Arc<Metrics>,
    received: IntCounterVec,
}

impl NotificationsState {
    /// Fresh state: nothing received, chaos off, its own metrics registry.
    pub fn new() -> Result<Self, MetricsError> {
        let metrics = Metrics::new("notifications")?;
        let received = IntCounterVec::new(
            Opts::new(
                "notifications_received_total",
                "Notification deliveries by result (new or duplicate)",
            ),
            &["result"],
        )?;
        metrics.register(Box::new(received.clone()))?;
        Ok(Self {
            inbox: Arc::new(Inbox::default()),
            chaos: Chaos::new(),
            metrics,
            received,
        })
    }
}

impl NotificationsState {
    /// Records one notification (see [`Inbox`]), counts and logs it; true if it is new.
    fn record(&self, n: NewNotification) -> (Notification, bool) {
        let (record, new) = self.inbox.record(n);
        if new {
            self.received.with_label_values(&["new"]).inc();
            tracing::info!(
                reservation_id = %record.reservation_id,
                kind = %record.kind,
                to = %record.user_email,
                "notification sent"
            );
        } else {
            self.received.with_label_values(&["duplicate"]).inc();
            tracing::info!(
                reservation_id = %record.reservation_id,
                kind = %record.kind,
                "duplicate delivery ignored"
            );
        }
        (record, new)
    }
}

/// The whole notifications HTTP service (API, health, metrics, chaos admin).
pub fn router(state: NotificationsState) -> Router {
    let api = Router::new()
        .route("/notifications", post(create).get(list))
        .route("/notifications/batch", post(create_batch))
        .route("/admin/notifications/summary", get(summary))
        .route("/ready", get(ready))
        .with_state(state.clone());
    telemetry::service_router(api, state.chaos, state.metrics)
}

/// Runs `backend notifications` until SIGINT/SIGTERM.
pub async fn run(args: NotificationsArgs) -> anyhow::Result<()> {
    let state = NotificationsState::new()?;
    telemetry::serve(args.listen, router(state), "notifications").await
}

async fn create(State(st): State<NotificationsState>, body: Bytes) -> Result<Response, ApiError> {
    let n = NewNotification::parse(&body)?;
    let (record, new) = st.record(n);
    Ok((delivered_status(new), Json(record)).into_response())
}

/// 201 for a notification recorded now, 200 for a repeat of one already recorded.
fn delivered_status(new: bool) -> StatusCode {
    if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

async fn create_batch(
    State(st): State<NotificationsState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let results: Vec<Value> = NewNotification::parse_batch(&body)?
        .into_iter()
        .map(|item| match item {
            Ok(n) => {
                let (record, new) = st.record(n);
                json!({"status": delivered_status(new).as_u16(), "notificationId": record.notification_id})
            }
            Err(e) => {
                let mut v = e.body();
                v["status"] = json!(e.status.as_u16());
                v
            }
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}

/// Query of `GET /notifications`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    reservation_id: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(st): State<NotificationsState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Notification>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_request("query", e.body_text()))?;
    Ok(Json(match q.reservation_id {
        Some(id) => st.inbox.for_reservation(&id),
        None => st
            .inbox
            .recent(q.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)),
    }))
}

async fn summary(State(st): State<NotificationsState>) -> Json<Summary> {
    Json(st.inbox.summary())
}

async fn ready() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(r: &str, kind: &str) -> NewNotification {
        NewNotification {
            reservation_id: r.into(),
            user_email: "a@b.c".into(),
            kind: kind.into(),
            message: "hi".into(),
        }
    }

    #[test]
    fn idempotent_on_reservation_and_kind() {
        let o = Inbox::default();
        let (a, new_a) = o.record(n("R1", "reservation_confirmed"));
        let (b, new_b) = o.record(n("R1", "reservation_confirmed"));
        let (c, new_c) = o.record(n("R1", "reservation_cancelled"));
        assert!(new_a && !new_b && new_c);
        assert_eq!(a, b);
        assert_ne!(a.notification_id, c.notification_id);
        assert_eq!(o.for_reservation("R1").len(), 2);
        assert_eq!(
            o.summary(),
            Summary {
                count: 2,
                duplicates: 1
            }
        );
        assert_eq!(o.recent(1), vec![c]);
    }

    #[test]
    fn batch_items_are_judged_one_by_one() {
        let items = NewNotification::parse_batch(
            br#"{"notifications":[{"reservationId":"R","userEmail":"a@b.c","kind":"k"},
                {"reservationId":"R","kind":"k"}, 7]}"#,
        )
        .unwrap();
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok());
        assert_eq!(items[1].as_ref().unwrap_err().extra["field"], "userEmail");
        assert_eq!(
            items[2].as_ref().unwrap_err().extra["field"],
            "notifications"
        );
        for bad in [
            &br#"{"notifications":[]}"#[..],
            br#"{"notifications":{}}"#,
            br#"{}"#,
        ] {
            let e = NewNotification::parse_batch(bad).unwrap_err();
            assert_eq!(e.extra["field"], "notifications");
        }
        let too_many = format!(
            r#"{{"notifications":[{}]}}"#,
            vec![r#"{"reservationId":"R","userEmail":"a@b.c","kind":"k"}"#; MAX_BATCH + 1]
                .join(",")
        );
        assert!(NewNotification::parse_batch(too_many.as_bytes()).is_err());
        assert_eq!(
            NewNotification::parse_batch(b"[").unwrap_err().code,
            "invalid_json"
        );
    }

    #[test]
    fn validation() {
        assert_eq!(
            NewNotification::parse(b"{").unwrap_err().code,
            "invalid_json"
        );
        let e =
            NewNotification::parse(br#"{"reservationId":"R","userEmail":"a@b.c"}"#).unwrap_err();
        assert_eq!(e.extra["field"], "kind");
        let e = NewNotification::parse(
            br#"{"reservationId":"R","userEmail":"a@b.c","kind":"k","message":5}"#,
        )
        .unwrap_err();
        assert_eq!(e.extra["field"], "message");
        assert!(
            NewNotification::parse(br#"{"reservationId":"R","userEmail":"a@b.c","kind":"k"}"#)
                .is_ok()
        );
    }
}
