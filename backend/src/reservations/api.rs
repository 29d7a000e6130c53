//! The public HTTP API of SPEC §4 and the reservations admin routes of §6.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tracing::Instrument;
use utoipa::ToSchema;

use super::admin::{self, EventDefinition};
use super::answer::{self, reservation_not_found, store_error};
use super::error::SagaError;
use super::events::{EventDetail, EventReader, EventSummary, ReadError};
use super::json::JsonBody;
use super::keys;
use super::model::Reservation;
use super::openapi::{CREATED_LINKS_NOTE, INTERNAL, UNAVAILABLE_READ, UNAVAILABLE_WRITE};
use super::saga::Saga;
use super::validation::{
    is_valid_email, is_valid_id, validate_idempotency_key, EmailText, EventIdText,
    IdempotencyKeyText, ReservationBody, ReservationIdText, ReservationRequest,
};
use crate::error::{ApiError, ErrorBody};

/// Longest reservation id accepted in a path.
const MAX_RES_ID_LEN: usize = super::validation::MAX_RESERVATION_ID_LEN;
/// Longest event id accepted in a path.
const MAX_EVENT_ID_LEN: usize = super::validation::MAX_EVENT_ID_LEN;
/// Most reservations listed per user.
const MAX_LISTED: usize = 100;

/// Shared state of the reservations routes.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Saga driver (inventory, payments).
    pub saga: Saga,
    /// Event reads with the stale cache.
    pub events: Arc<EventReader>,
}

fn stale_header(mut r: Response, stale: bool) -> Response {
    if stale {
        r.headers_mut()
            .insert("x-data-stale", HeaderValue::from_static("true"));
    }
    r
}

/// The id of a `/{id}` path segment, or None when it is not valid UTF-8 once percent-decoded
/// (axum would answer that with a plain-text 400; no such id exists, so the caller answers 404).
fn path_id(path: Result<Path<String>, PathRejection>) -> Option<String> {
    path.ok().map(|Path(id)| id)
}

/// The event id of a `/{eventId}` path; one that cannot exist is a 404 `event_not_found`.
fn event_path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let event_id = path_id(path).unwrap_or_default();
    if !is_valid_id(&event_id, MAX_EVENT_ID_LEN) {
        return Err(ApiError::not_found(
            "event_not_found",
            format!("event {event_id} does not exist"),
        ));
    }
    Ok(event_id)
}

fn read_error(e: ReadError, event_id: &str) -> ApiError {
    match e {
        ReadError::NotFound => ApiError::not_found(
            "event_not_found",
            format!("event {event_id} does not exist"),
        ),
        ReadError::Unavailable(e) | ReadError::Store(e) => store_error(&e),
    }
}

/// `GET /api/events`
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    summary = "List events",
    responses(
        (status = 200, description = "Every event with its counters, sorted by id. While the \
            inventory store is unreachable, a copy at most 60 s old is served, each entry with \
            `\"stale\": true`, and the header `X-Data-Stale: true`.",
            body = [EventSummary],
            headers(("X-Data-Stale" = String, description = "`true` when the answer comes from the local cache (at most 60 s old) because the inventory store is unreachable; absent otherwise."))),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn list_events(State(s): State<AppState>) -> Result<Response, ApiError> {
    let r = s
        .events
        .list(s.saga.inv.store())
        .await
        .map_err(|e| read_error(e, ""))?;
    Ok(stale_header(Json(r.value).into_response(), r.stale))
}

/// `GET /api/events/{eventId}`
#[utoipa::path(
    get,
    path = "/api/events/{eventId}",
    tag = "events",
    summary = "One event with its seats",
    params(("eventId" = EventIdText, Path, description = "The event.")),
    responses(
        (status = 200, description = "The event, its counters and its seats in their defined \
            order (none for general admission). Served stale as for `GET /api/events`.",
            body = EventDetail,
            headers(("X-Data-Stale" = String, description = "`true` when the answer comes from the local cache (at most 60 s old) because the inventory store is unreachable; absent otherwise."))),
        (status = 404, description = "`event_not_found`: no such event (also for an id that \
            is not a valid event id).", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn get_event(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let event_id = event_path_id(path)?;
    let r = s
        .events
        .detail(s.saga.inv.store(), &event_id)
        .await
        .map_err(|e| read_error(e, &event_id))?;
    Ok(stale_header(Json(r.value).into_response(), r.stale))
}

/// `POST /api/reservations`
#[utoipa::path(
    post,
    path = "/api/reservations",
    tag = "reservations",
    summary = "Reserve seats (hold, charge, confirm)",
    params(("Idempotency-Key" = Option<IdempotencyKeyText>, Header, nullable = false, description = "Optional. \
        The same key with the same body answers the same status and body again, with at most \
        one charge; with another body 422 `idempotency_key_reused`; while the first request \
        still runs 409 `request_in_progress`.")),
    request_body(
        content = ReservationBody,
        content_type = "application/json",
        description = "What to reserve and for whom. The body must be a JSON object of at most \
            64 KiB (the `Content-Type` header is not checked).",
        examples(
            ("seat" = (summary = "One numbered seat",
                value = json!({"eventId": "EVT-001", "seatId": "A1", "userEmail": "a@b.c", "amount": 50.0}))),
            ("seats" = (summary = "Several numbered seats, all or none",
                value = json!({"eventId": "EVT-001", "seats": ["B1", "B2"], "userEmail": "a@b.c", "amount": 100.0}))),
            ("quantity" = (summary = "General admission",
                value = json!({"eventId": "EVT-002", "quantity": 2, "userEmail": "a@b.c", "amount": 80.0}))),
        )
    ),
    responses(
        (status = 201, description = CREATED_LINKS_NOTE, body = Reservation,
            links(
                ("GetReservation" = (operation_id = "get_reservation",
                    parameters(("id" = "$response.body#/reservationId")))),
                ("CancelReservation" = (operation_id = "cancel_reservation",
                    parameters(("id" = "$response.body#/reservationId")))),
                ("ListUserReservations" = (operation_id = "list_reservations",
                    parameters(("userEmail" = "$response.body#/userEmail")))),
            )),
        (status = 400, description = "`invalid_json`: the body is empty or not JSON (a number \
            too large for a double, such as `1e400`, counts as not JSON).",
            body = ErrorBody),
        (status = 402, description = "`payment_declined`: payments declined the charge (an \
            amount over 10000 is declined); the seats were released.", body = ErrorBody),
        (status = 404, description = "`event_not_found` or `seat_not_found` (`message` names \
            it).", body = ErrorBody),
        (status = 409, description = "`seat_unavailable`: a seat is held or sold; `sold_out`: \
            not enough general-admission capacity left; `hold_expired`: the hold ran out before \
            the charge started; `request_in_progress`: a request with this `Idempotency-Key` is \
            still running.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds 64 KiB.",
            body = ErrorBody),
        (status = 422, description = "`invalid_request`: the body is not a valid reservation \
            request (`field` names the offending field, or `Idempotency-Key`); \
            `idempotency_key_reused`: this `Idempotency-Key` came with another body.",
            body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_WRITE, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
        (status = 504, description = "`payment_timeout`: the charge did not complete within the \
            request deadline; it is refunded and the seats released once its outcome is \
            settled.", body = ErrorBody),
    )
)]
pub async fn create_reservation(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = ReservationRequest::from_json(&body)?;
    let idem = headers
        .get("idempotency-key")
        .map(|v| validate_idempotency_key(v.as_bytes()))
        .transpose()?;
    // The saga runs in its own task: a client hanging up must not abort it half-way.
    let saga = s.saga.clone();
    // Boxed: the saga's future is large, and a boxed one is moved into the task as a pointer
    // rather than copied whole several times on the way (memmove was 7 % of a profile).
    let task =
        tokio::spawn(Box::pin(async move { saga.reserve(req, idem).await }).in_current_span());
    let result = task
        .await
        .map_err(|e| ApiError::internal(format!("reservation task failed: {e}")))?;
    let label = answer::outcome_label(&result);
    s.saga.metrics.outcomes.with_label_values(&[label]).inc();
    Ok(answer::reservation_response(result))
}

/// `GET /api/reservations/{id}`
#[utoipa::path(
    get,
    path = "/api/reservations/{id}",
    tag = "reservations",
    summary = "One reservation with its saga history",
    params(("id" = ReservationIdText, Path, description = "The reservation.")),
    responses(
        (status = 200, description = "The reservation, with `history`.", body = Reservation,
            links(("CancelReservation" = (operation_id = "cancel_reservation",
                parameters(("id" = "$response.body#/reservationId")))))),
        (status = 404, description = "`reservation_not_found`.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn get_reservation(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let res_id = path_id(path).unwrap_or_default();
    if !is_valid_id(&res_id, MAX_RES_ID_LEN) {
        return Err(reservation_not_found(&res_id));
    }
    let rec = s
        .saga
        .inv
        .load(&res_id)
        .await
        .map_err(|e| ApiError::from(SagaError::from(e)))?
        .ok_or_else(|| reservation_not_found(&res_id))?;
    Ok(Json(rec.view).into_response())
}

/// `GET /api/reservations?userEmail=`: the user's newest reservations first (at most 100).
#[utoipa::path(
    get,
    path = "/api/reservations",
    tag = "reservations",
    summary = "A user's reservations",
    params(("userEmail" = EmailText, Query, description = "The buyer (case-insensitive).")),
    responses(
        (status = 200, description = "The user's reservations, newest first, at most 100, each \
            with `history` (an empty list when there are none).", body = [Reservation]),
        (status = 422, description = "`invalid_request` (`field`: `userEmail`): the query \
            parameter is missing or not an e-mail address.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = UNAVAILABLE_READ, body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn list_reservations(
    State(s): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid_request("userEmail", e.body_text()))?;
    let email = q.get("userEmail").ok_or_else(|| {
        ApiError::invalid_request("userEmail", "userEmail query parameter is required")
    })?;
    if !is_valid_email(email) {
        return Err(ApiError::invalid_request(
            "userEmail",
            "userEmail must be a valid e-mail address like a@b.c",
        ));
    }
    // Ids of reservations that expired (ended without a sale, past their TTL) are dropped from
    // the user's index on the way.
    let listed = s
        .saga
        .inv
        .user_reservations(email, MAX_LISTED)
        .await
        .map_err(|e| ApiError::from(SagaError::from(e)))?;
    let views: Vec<_> = listed.records.into_iter().map(|r| r.view).collect();
    Ok(Json(views).into_response())
}

/// `POST /api/reservations/{id}/cancel`
#[utoipa::path(
    post,
    path = "/api/reservations/{id}/cancel",
    tag = "reservations",
    summary = "Cancel a confirmed reservation (refund, release the seats)",
    params(("id" = ReservationIdText, Path, description = "The reservation.")),
    responses(
        (status = 200, description = "The reservation, now `CANCELLED`: refunded, seats back in \
            stock. Cancelling a cancelled reservation again answers 409 `not_cancellable`.",
            body = Reservation,
            links(("GetReservation" = (operation_id = "get_reservation",
                parameters(("id" = "$response.body#/reservationId")))))),
        (status = 404, description = "`reservation_not_found`.", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: only `CONFIRMED` reservations can be \
            cancelled (`status` gives the current one); `request_in_progress`: another \
            cancellation of it is running.", body = ErrorBody),
        (status = 500, description = INTERNAL, body = ErrorBody),
        (status = 503, description = "`payment_unavailable`: the refund could not be made now \
            (the cancellation completes automatically later); `inventory_unavailable`: the \
            inventory store is unreachable; `service_down`: chaos `down` is on.",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn cancel_reservation(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let res_id = path_id(path).unwrap_or_default();
    if !is_valid_id(&res_id, MAX_RES_ID_LEN) {
        return Err(reservation_not_found(&res_id));
    }
    let saga = s.saga.clone();
    let task = tokio::spawn(Box::pin(async move { saga.cancel(&res_id).await }).in_current_span());
    let view = task
        .await
        .map_err(|e| ApiError::internal(format!("cancel task failed: {e}")))?
        .map_err(ApiError::from)?;
    Ok(Json(view).into_response())
}

/// `PUT /admin/events/{eventId}`
pub async fn put_event(
    State(s): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let event_id = path_id(path).unwrap_or_default();
    let def = EventDefinition::from_json(&event_id, &body)?;
    s.saga
        .inv
        .reset_event(&event_id, &def.name, def.capacity, &def.seats)
        .await
        .map_err(|e| ApiError::from(SagaError::from(e)))?;
    tracing::info!(event = %event_id, capacity = def.capacity, "event created or reset");
    let r = s
        .events
        .detail(s.saga.inv.store(), &event_id)
        .await
        .map_err(|e| read_error(e, &event_id))?;
    Ok(Json(r.value).into_response())
}

/// `GET /admin/audit`
pub async fn get_audit(State(s): State<AppState>) -> Result<Response, ApiError> {
    let audit = admin::audit(s.saga.inv.store())
        .await
        .map_err(|e| store_error(&e))?;
    Ok(Json(audit).into_response())
}

/// `GET /admin/placement/{eventId}`: where the event's keys live on a Redis Cluster (its slot
/// group's hash tag and hash slot), so an operator or a failure drill can find the owning master
/// (`CLUSTER SLOTS`). A function of the id alone: the event need not exist.
pub async fn get_placement(
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let event_id = event_path_id(path)?;
    let key = keys::event_meta(&event_id);
    let group = keys::event_group(&event_id);
    Ok(Json(serde_json::json!({
        "eventId": event_id,
        "group": group,
        "hashTag": crate::slots::group_tag(group),
        "slot": crate::slots::key_slot(&key),
    }))
    .into_response())
}

/// `GET /ready` body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReadyBody {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Always `ok` (Redis answered a PING).
    #[schema(example = "ok")]
    pub redis: &'static str,
}

/// `GET /ready`: 200 when Redis answers, else 503.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    summary = "Readiness: the inventory store (Redis) answers",
    responses(
        (status = 200, description = "Redis answers.", body = ReadyBody),
        (status = 503, description = "`inventory_unavailable`: Redis does not answer (or its \
            circuit breaker is open); `service_down`: chaos `down` is on.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying (at least 1)."))),
    )
)]
pub async fn ready(State(s): State<AppState>) -> Response {
    match s.saga.inv.store().ping().await {
        Ok(()) => Json(ReadyBody {
            status: "ok",
            redis: "ok",
        })
        .into_response(),
        Err(e) => ApiError::unavailable(
            "inventory_unavailable",
            format!("redis not reachable: {e}"),
            e.retry_after_secs(),
        )
        .into_response(),
    }
}
