//! The public HTTP API of SPEC §4 and the reservations admin routes of §6.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::Instrument;

use super::admin::{self, EventDefinition};
use super::answer::{self, reservation_not_found, store_error};
use super::error::SagaError;
use super::events::{EventReader, ReadError};
use super::json::JsonBody;
use super::saga::Saga;
use super::validation::{
    is_valid_email, is_valid_id, validate_idempotency_key, ReservationRequest,
};
use crate::error::ApiError;

/// Longest reservation id accepted in a path.
const MAX_RES_ID_LEN: usize = 64;
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
pub async fn list_events(State(s): State<AppState>) -> Result<Response, ApiError> {
    let r = s
        .events
        .list(s.saga.inv.store())
        .await
        .map_err(|e| read_error(e, ""))?;
    Ok(stale_header(Json(r.value).into_response(), r.stale))
}

/// `GET /api/events/{eventId}`
pub async fn get_event(
    State(s): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Response, ApiError> {
    if !is_valid_id(&event_id, 64) {
        return Err(ApiError::not_found(
            "event_not_found",
            format!("event {event_id} does not exist"),
        ));
    }
    let r = s
        .events
        .detail(s.saga.inv.store(), &event_id)
        .await
        .map_err(|e| read_error(e, &event_id))?;
    Ok(stale_header(Json(r.value).into_response(), r.stale))
}

/// `POST /api/reservations`
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
    let task = tokio::spawn(async move { saga.reserve(req, idem).await }.in_current_span());
    let result = task
        .await
        .map_err(|e| ApiError::internal(format!("reservation task failed: {e}")))?;
    let label = answer::outcome_label(&result);
    s.saga.metrics.outcomes.with_label_values(&[label]).inc();
    Ok(answer::reservation_response(result))
}

/// `GET /api/reservations/{id}`
pub async fn get_reservation(
    State(s): State<AppState>,
    Path(res_id): Path<String>,
) -> Result<Response, ApiError> {
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
pub async fn cancel_reservation(
    State(s): State<AppState>,
    Path(res_id): Path<String>,
) -> Result<Response, ApiError> {
    if !is_valid_id(&res_id, MAX_RES_ID_LEN) {
        return Err(reservation_not_found(&res_id));
    }
    let saga = s.saga.clone();
    let task = tokio::spawn(async move { saga.cancel(&res_id).await }.in_current_span());
    let view = task
        .await
        .map_err(|e| ApiError::internal(format!("cancel task failed: {e}")))?
        .map_err(ApiError::from)?;
    Ok(Json(view).into_response())
}

/// `PUT /admin/events/{eventId}`
pub async fn put_event(
    State(s): State<AppState>,
    Path(event_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
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

/// `GET /ready`: 200 when Redis answers, else 503.
pub async fn ready(State(s): State<AppState>) -> Response {
    match s.saga.inv.store().ping().await {
        Ok(()) => Json(json!({"status": "ok", "redis": "ok"})).into_response(),
        Err(e) => ApiError::unavailable(
            "inventory_unavailable",
            format!("redis not reachable: {e}"),
            e.retry_after_secs(),
        )
        .into_response(),
    }
}

/// JSON 404 for unknown paths.
pub async fn fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// JSON 405 for a known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method",
    )
}
