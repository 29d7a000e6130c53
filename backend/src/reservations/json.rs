//! A JSON body extractor whose every rejection is an [`ApiError`] JSON body (axum's default
//! rejections are plain text): 413 when the body is larger than [`MAX_BODY_BYTES`], 400
//! `invalid_json` when it does not parse.

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
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

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| too_large())?;
        if bytes.is_empty() {
            return Err(ApiError::invalid_json(
                "request body is empty; expected JSON",
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::invalid_json(format!("request body is not valid JSON: {e}")))
    }
}
