//! The one error shape every backend service answers with (SPEC §4):
//! `{"error": "<snake_case_code>", "message": "<human text>", ...}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The JSON body of every error answer (what `ApiError::body` writes).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({"error": "invalid_request", "message": "amount is required", "field": "amount"}))]
pub struct ErrorBody {
    /// snake_case machine-readable code, e.g. `seat_unavailable` (each response lists its codes).
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
    /// Extra fields of some errors: `field` (the offending request field of `invalid_request`),
    /// `status` (the reservation status of `not_cancellable`), `reservationId` (a charged
    /// reservation that will be confirmed once the inventory store answers again).
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

/// An HTTP error answer: status, machine code, human message, optional `Retry-After` and extra
/// JSON fields.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// snake_case machine-readable code, e.g. `seat_unavailable`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Seconds for the `Retry-After` header, when the client should come back later.
    pub retry_after_secs: Option<u64>,
    /// Extra fields merged into the body (e.g. `field`).
    pub extra: Map<String, Value>,
}

impl ApiError {
    /// Builds an error with no `Retry-After` and no extra fields.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
            extra: Map::new(),
        }
    }

    /// Adds a `Retry-After` header (seconds, at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    /// Adds an extra body field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// 400 `invalid_json`.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 422 `invalid_request` naming the offending field.
    pub fn invalid_request(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message).with("field", field)
    }

    /// Parses `body` as a JSON object: 400 `invalid_json` when it is not JSON, 422
    /// `invalid_request` (field `body`, message "body must be a JSON object {shape}") otherwise.
    pub fn json_object(body: &[u8], shape: &str) -> Result<Map<String, Value>, Self> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Self::invalid_json(format!("body is not valid JSON: {e}")))?;
        match value {
            Value::Object(fields) => Ok(fields),
            _ => Err(Self::invalid_request(
                "body",
                format!("body must be a JSON object {shape}"),
            )),
        }
    }

    /// Reads the `userEmail` field: a string as for [`ApiError::string_field`] (at most 254
    /// bytes) that contains `@`.
    pub fn email_field(fields: &Map<String, Value>) -> Result<String, Self> {
        let email = Self::string_field(fields, "userEmail", 254)?;
        if !email.contains('@') {
            return Err(Self::invalid_request(
                "userEmail",
                "userEmail must be an e-mail address",
            ));
        }
        Ok(email)
    }

    /// Reads the non-empty string field `name` (trimmed, at most `max` bytes) of a JSON object,
    /// or answers 422 `invalid_request` naming the field.
    pub fn string_field(
        fields: &Map<String, Value>,
        name: &str,
        max: usize,
    ) -> Result<String, Self> {
        match fields.get(name).and_then(Value::as_str).map(str::trim) {
            Some(s) if !s.is_empty() && s.len() <= max => Ok(s.to_owned()),
            _ => Err(Self::invalid_request(
                name,
                format!("{name} must be a non-empty string of at most {max} characters"),
            )),
        }
    }

    /// 404 with the given code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message).retry_after(retry_after)
    }

    /// 500 `internal_error` (details go to the log, not the client).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let body = ErrorBody {
            error: self.code.to_owned(),
            message: self.message.clone(),
            details: self
                .extra
                .iter()
                .filter(|(k, _)| k.as_str() != "error" && k.as_str() != "message")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        serde_json::to_value(body).unwrap_or(Value::Null)
    }
}

/// Router fallback: JSON 404 `not_found` for a path no route matches.
pub async fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// Router method-not-allowed fallback: JSON 405 `method_not_allowed` (axum adds `Allow`).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not accept that method",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_code_message_and_extras() {
        let e = ApiError::invalid_request("quantity", "quantity must be between 1 and 10");
        let body = e.body();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["field"], "quantity");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn retry_after_header_is_set() {
        let r = ApiError::unavailable("inventory_unavailable", "down", 0).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
