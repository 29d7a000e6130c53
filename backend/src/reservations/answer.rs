//! The one place where saga results become HTTP answers (SPEC §4 status codes and error bodies)
//! and `reservations_saga_outcomes_total{outcome}` labels.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::SagaError;
use super::model::Failure;
use super::saga::Reserved;
use crate::error::ApiError;
use crate::store::StoreError;

/// The metric label of a `POST /api/reservations` result.
pub fn outcome_label(result: &Result<Reserved, SagaError>) -> &'static str {
    match result {
        Ok(Reserved::Created { .. }) => "confirmed",
        Ok(Reserved::Replayed { .. }) => "replay",
        Err(e) => error_label(e),
    }
}

fn error_label(e: &SagaError) -> &'static str {
    match e {
        SagaError::Failed { failure, .. } => failure.as_str(),
        SagaError::IdempotencyKeyReused => "idempotency_key_reused",
        SagaError::InProgress => "request_in_progress",
        SagaError::NotFound(_) => "reservation_not_found",
        SagaError::NotCancellable(_) => "not_cancellable",
        SagaError::RefundPending => "refund_pending",
        SagaError::InventoryUnavailable { .. } => "inventory_unavailable",
        SagaError::OutcomePending { .. } => "outcome_pending",
        SagaError::Internal(_) => "internal_error",
    }
}

/// The answer to a `POST /api/reservations`.
pub fn reservation_response(result: Result<Reserved, SagaError>) -> Response {
    match result {
        Ok(Reserved::Created { body, .. }) => json_body(StatusCode::CREATED, body),
        Ok(Reserved::Replayed { status, body }) => json_body(
            StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
            body,
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A JSON answer from an already serialized body.
fn json_body(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::Failed {
                failure,
                detail,
                retry_after_secs,
            } => {
                let api = failure_error(failure, &detail);
                match retry_after_secs {
                    Some(s) => api.retry_after(s),
                    None => api,
                }
            }
            SagaError::IdempotencyKeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body",
            ),
            SagaError::InProgress => ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this Idempotency-Key is still being processed",
            ),
            SagaError::NotFound(id) => reservation_not_found(&id),
            SagaError::NotCancellable(status) => ApiError::new(
                StatusCode::CONFLICT,
                "not_cancellable",
                format!("reservation is {status}; only CONFIRMED reservations can be cancelled"),
            )
            .with("status", status.as_str()),
            SagaError::RefundPending => ApiError::unavailable(
                "payment_unavailable",
                "the refund could not be made now; the cancellation will complete automatically",
                1,
            ),
            SagaError::InventoryUnavailable { retry_after_secs } => ApiError::unavailable(
                "inventory_unavailable",
                "the inventory store is unreachable; try again shortly",
                retry_after_secs,
            ),
            SagaError::OutcomePending {
                reservation_id,
                retry_after_secs,
            } => ApiError::unavailable(
                "inventory_unavailable",
                format!(
                    "the inventory store is unreachable, so reservation {reservation_id} could not \
                     be finished now; it will be confirmed automatically if the store answers \
                     within the request deadline, otherwise refunded and released: see \
                     GET /api/reservations/{reservation_id}"
                ),
                retry_after_secs,
            )
            .with("reservationId", reservation_id)
            .with("outcome", "pending"),
            SagaError::Internal(why) => ApiError::internal(format!("reservation failed: {why}")),
        }
    }
}

/// A store failure on a read (events, the audit): 503 with `Retry-After` when Redis is
/// unreachable (SPEC §5 fail fast), 500 for an error reply.
pub fn store_error(e: &StoreError) -> ApiError {
    if let Some(msg) = e.reply_message() {
        tracing::error!(error = %msg, "inventory read failed");
        return ApiError::internal("inventory read failed");
    }
    ApiError::unavailable(
        "inventory_unavailable",
        "the inventory store is unreachable; try again shortly",
        e.retry_after_secs(),
    )
}

/// 404 `reservation_not_found`.
pub fn reservation_not_found(res_id: &str) -> ApiError {
    ApiError::not_found(
        "reservation_not_found",
        format!("reservation {res_id} does not exist"),
    )
}

/// The answer for a decided failure.
fn failure_error(failure: Failure, detail: &str) -> ApiError {
    match failure {
        Failure::SeatUnavailable => ApiError::new(
            StatusCode::CONFLICT,
            "seat_unavailable",
            if detail.is_empty() {
                "a requested seat is not available".to_owned()
            } else {
                format!("seat {detail} is not available")
            },
        ),
        Failure::SoldOut => ApiError::new(
            StatusCode::CONFLICT,
            "sold_out",
            "not enough capacity left for this quantity",
        ),
        Failure::EventNotFound => {
            ApiError::not_found("event_not_found", format!("event {detail} does not exist"))
        }
        Failure::SeatNotFound => {
            ApiError::not_found("seat_not_found", format!("seat {detail} does not exist"))
        }
        Failure::WrongKind if detail == "quantity" => ApiError::invalid_request(
            "quantity",
            "this event has numbered seats: send seatId or seats, not quantity",
        ),
        Failure::WrongKind => ApiError::invalid_request(
            "seatId",
            "this event is general admission: send quantity, not seatId or seats",
        ),
        Failure::DuplicateSeat => {
            ApiError::invalid_request("seats", format!("seat {detail} is listed twice"))
        }
        Failure::InvalidSeats => ApiError::invalid_request("seats", "no seat was listed"),
        Failure::PaymentDeclined => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_declined",
            "the payment was declined; the seats were released",
        ),
        Failure::PaymentUnavailable => ApiError::unavailable(
            "payment_unavailable",
            "payments are unavailable; the seats were released",
            1,
        ),
        Failure::PaymentTimeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "payment_timeout",
            "the payment did not complete in time; it is refunded and the seats released",
        ),
        Failure::HoldExpired => ApiError::new(
            StatusCode::CONFLICT,
            "hold_expired",
            "the hold expired before payment started; the seats were released",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(failure: Failure, detail: &str) -> ApiError {
        ApiError::from(SagaError::Failed {
            failure,
            detail: detail.into(),
            retry_after_secs: None,
        })
    }

    #[test]
    fn failures_map_to_spec_statuses() {
        assert_eq!(
            api(Failure::SeatUnavailable, "A1").status,
            StatusCode::CONFLICT
        );
        assert_eq!(api(Failure::SoldOut, "E").status, StatusCode::CONFLICT);
        assert_eq!(
            api(Failure::EventNotFound, "E").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api(Failure::SeatNotFound, "Z9").status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            api(Failure::PaymentDeclined, "").status,
            StatusCode::PAYMENT_REQUIRED
        );
        let e = api(Failure::PaymentUnavailable, "");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(e.retry_after_secs.is_some());
        assert_eq!(
            api(Failure::PaymentTimeout, "").status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            api(Failure::WrongKind, "quantity").extra["field"],
            "quantity"
        );
        let pending = ApiError::from(SagaError::OutcomePending {
            reservation_id: "r1".into(),
            retry_after_secs: 1,
        });
        assert_eq!(pending.code, "inventory_unavailable");
        assert_eq!(pending.extra["reservationId"], "r1");
    }

    #[test]
    fn every_failure_labels_with_its_code() {
        let r: Result<Reserved, SagaError> = Err(SagaError::failed(Failure::SoldOut));
        assert_eq!(outcome_label(&r), "sold_out");
        let code = ApiError::from(SagaError::failed(Failure::SoldOut)).code;
        assert_eq!(code, outcome_label(&r));
    }
}
