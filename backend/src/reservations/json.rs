//! A JSON body extractor whose every rejection is an [`ApiError`] JSON body (axum's default
//! rejections are plain text): 413 when the body is larger than [`MAX_BODY_BYTES`], 400
//! `invalid_json` when it does not parse.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ApiError;

/// Largest accepted request body (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed JSON body (any JSON value; shape checks are the handler's).
#[derive(Debug, Clone)]
pub struct JsonBody(pub Value);

/// 413 `payload_too_large`.
pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body exceeds {MAX_BODY_BYTES} bytes"),
    )
}

/// The 413 answer: the unread rest of the body makes the connection unusable, so it says
/// `Connection: close` and clients do not send their next request on it.
fn too_large_response() -> Response {
    let mut r = too_large().into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn invalid_json(message: String) -> Response {
    ApiError::invalid_json(message).into_response()
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large_response());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| too_large_response())?;
        if bytes.is_empty() {
            return Err(invalid_json(
                "request body is empty; expected JSON".to_owned(),
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map(JsonBody)
            .map_err(|e| invalid_json(format!("request body is not valid JSON: {e}")))
    }
}
