//! Fault injection switches of SPEC §6 (`GET|PUT|DELETE /admin/chaos`), shared by every backend
//! service.
//!
//! A [`Chaos`] holds the switches in atomics so the hot path reads them without locks. Three of
//! them act on HTTP requests through [`middleware`]:
//!
//! - `down`: every request except `/admin/*` and `/metrics` gets 503 `{"error":"service_down"}`
//!   (including `/health` and `/ready`, so health checks see the outage);
//! - `latencyMs`: requests to the service's API sleep that long before being handled;
//! - `errorRate`: that fraction of API requests get 500 `{"error":"chaos_error"}`.
//!
//! `latencyMs` and `errorRate` spare `/health`, `/ready`, `/metrics` and `/admin/*`: a slow or
//! flaky API is a different fault from a dead process, and the gateway's passive checks (timeouts,
//! 5xx) are what should notice it.
//!
//! The fourth switch, `inventoryDown`, is read by the reservations service's inventory store
//! ([`crate::store::Store`]), which then acts as if Redis were unreachable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// Largest accepted `latencyMs` (two minutes).
pub const MAX_LATENCY_MS: u64 = 120_000;

/// A snapshot of the chaos switches, as `GET /admin/chaos` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChaosSettings {
    /// The service answers 503 `service_down` to everything but `/admin/*` and `/metrics`.
    pub down: bool,
    /// Extra delay before each API request is handled, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of API requests answered with 500 `chaos_error`.
    pub error_rate: f64,
    /// Reservations only: the inventory store acts as if Redis were unreachable.
    pub inventory_down: bool,
}

/// The live chaos switches of one service. Reads are lock-free atomics.
#[derive(Debug, Default)]
pub struct Chaos {
    down: AtomicBool,
    latency_ms: AtomicU64,
    /// `f64::to_bits` of the error rate.
    error_rate_bits: AtomicU64,
    inventory_down: AtomicBool,
    /// Serialises writers so a `PUT` applies all its fields together.
    write: Mutex<()>,
}

impl Chaos {
    /// All switches off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current switches.
    pub fn settings(&self) -> ChaosSettings {
        ChaosSettings {
            down: self.down(),
            latency_ms: self.latency_ms(),
            error_rate: self.error_rate(),
            inventory_down: self.inventory_down(),
        }
    }

    /// Replaces every switch (values are clamped into their valid ranges).
    pub fn set(&self, s: ChaosSettings) {
        let _guard = self.write.lock();
        self.store(s);
    }

    /// Turns every switch off (`DELETE /admin/chaos`).
    pub fn reset(&self) {
        self.set(ChaosSettings::default());
    }

    /// Whether the service should act dead.
    pub fn down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Injected latency in milliseconds.
    pub fn latency_ms(&self) -> u64 {
        self.latency_ms.load(Ordering::Relaxed)
    }

    /// Injected error fraction, 0..=1.
    pub fn error_rate(&self) -> f64 {
        f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed))
    }

    /// Whether the inventory store must act unreachable (reservations only).
    pub fn inventory_down(&self) -> bool {
        self.inventory_down.load(Ordering::Relaxed)
    }

    /// Applies a validated partial update and returns the resulting settings.
    fn apply(&self, patch: &ChaosPatch) -> ChaosSettings {
        let _guard = self.write.lock();
        let mut s = self.settings();
        if let Some(v) = patch.down {
            s.down = v;
        }
        if let Some(v) = patch.latency_ms {
            s.latency_ms = v;
        }
        if let Some(v) = patch.error_rate {
            s.error_rate = v;
        }
        if let Some(v) = patch.inventory_down {
            s.inventory_down = v;
        }
        self.store(s);
        s
    }

    fn store(&self, s: ChaosSettings) {
        let rate = if s.error_rate.is_finite() {
            s.error_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.down.store(s.down, Ordering::Relaxed);
        self.latency_ms
            .store(s.latency_ms.min(MAX_LATENCY_MS), Ordering::Relaxed);
        self.error_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
        self.inventory_down
            .store(s.inventory_down, Ordering::Relaxed);
    }
}

/// A validated `PUT /admin/chaos` body: only the fields present change.
#[derive(Debug, Default, PartialEq)]
struct ChaosPatch {
    down: Option<bool>,
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    inventory_down: Option<bool>,
}

impl ChaosPatch {
    /// Parses and validates a body: 400 `invalid_json` when it is not JSON, 422
    /// `invalid_request` naming the field when a field is unknown, mistyped or out of range.
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::invalid_json(format!("body is not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(ApiError::invalid_request(
                "body",
                "body must be a JSON object such as {\"down\": true}",
            ));
        };
        let mut patch = Self::default();
        for (key, v) in &fields {
            match key.as_str() {
                "down" => patch.down = Some(bool_field(key, v)?),
                "inventoryDown" => patch.inventory_down = Some(bool_field(key, v)?),
                "latencyMs" => {
                    let ms = v.as_u64().ok_or_else(|| {
                        ApiError::invalid_request(key, "latencyMs must be a non-negative integer")
                    })?;
                    if ms > MAX_LATENCY_MS {
                        return Err(ApiError::invalid_request(
                            key,
                            format!("latencyMs must be at most {MAX_LATENCY_MS}"),
                        ));
                    }
                    patch.latency_ms = Some(ms);
                }
                "errorRate" => {
                    let rate = v
                        .as_f64()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or_else(|| {
                            ApiError::invalid_request(
                                key,
                                "errorRate must be a number between 0 and 1",
                            )
                        })?;
                    patch.error_rate = Some(rate);
                }
                other => {
                    return Err(ApiError::invalid_request(
                        other,
                        format!(
                            "unknown field `{other}` (expected down, latencyMs, errorRate, \
                             inventoryDown)"
                        ),
                    ))
                }
            }
        }
        Ok(patch)
    }
}

fn bool_field(key: &str, v: &Value) -> Result<bool, ApiError> {
    v.as_bool()
        .ok_or_else(|| ApiError::invalid_request(key, format!("{key} must be true or false")))
}

/// `GET|PUT|DELETE /admin/chaos` for one service. Every answer is the resulting settings.
pub fn admin_router(chaos: Arc<Chaos>) -> Router {
    Router::new()
        .route(
            "/admin/chaos",
            get(get_chaos).put(put_chaos).delete(delete_chaos),
        )
        .with_state(chaos)
}

async fn get_chaos(State(chaos): State<Arc<Chaos>>) -> Json<ChaosSettings> {
    Json(chaos.settings())
}

async fn put_chaos(
    State(chaos): State<Arc<Chaos>>,
    body: Bytes,
) -> Result<Json<ChaosSettings>, ApiError> {
    let patch = ChaosPatch::parse(&body)?;
    let settings = chaos.apply(&patch);
    tracing::warn!(?settings, "chaos settings changed");
    Ok(Json(settings))
}

async fn delete_chaos(State(chaos): State<Arc<Chaos>>) -> Json<ChaosSettings> {
    chaos.reset();
    tracing::info!("chaos settings reset");
    Json(chaos.settings())
}

/// Paths chaos never touches: the chaos switch itself and the metrics scrape.
fn is_exempt(path: &str) -> bool {
    path.starts_with("/admin/") || path == "/metrics"
}

/// Health endpoints: they see `down`, but not `latencyMs` or `errorRate`.
fn is_health(path: &str) -> bool {
    path == "/health" || path == "/ready"
}

/// Middleware applying `down`, `latencyMs` and `errorRate` (see the module docs). Install it with
/// `axum::middleware::from_fn_with_state(chaos, chaos::middleware)` on a service's whole router:
/// it leaves `/admin/*` and `/metrics` alone by itself, and applies only `down` to `/health` and
/// `/ready`.
pub async fn middleware(State(chaos): State<Arc<Chaos>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_exempt(path) {
        return next.run(req).await;
    }
    if chaos.down() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_down",
            "service is down (chaos)",
        )
        .retry_after(1)
        .into_response();
    }
    if is_health(path) {
        return next.run(req).await;
    }
    let latency = chaos.latency_ms();
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let rate = chaos.error_rate();
    if rate > 0.0 && rand::random::<f64>() < rate {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "chaos_error",
            "injected failure (chaos errorRate)",
        )
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_applies_only_present_fields() {
        let chaos = Chaos::new();
        chaos.apply(&ChaosPatch::parse(br#"{"latencyMs": 300, "errorRate": 0.25}"#).unwrap());
        let s = chaos.apply(&ChaosPatch::parse(br#"{"down": true}"#).unwrap());
        assert_eq!(
            s,
            ChaosSettings {
                down: true,
                latency_ms: 300,
                error_rate: 0.25,
                inventory_down: false
            }
        );
        chaos.reset();
        assert_eq!(chaos.settings(), ChaosSettings::default());
    }

    #[test]
    fn patch_validation_table() {
        let cases: &[(&[u8], StatusCode, &str)] = &[
            (b"{", StatusCode::BAD_REQUEST, "invalid_json"),
            (b"", StatusCode::BAD_REQUEST, "invalid_json"),
            (b"[]", StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            (
                br#"{"errorRate": 1.5}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                br#"{"errorRate": -0.1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                br#"{"latencyMs": 120001}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                br#"{"latencyMs": -1}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                br#"{"down": "yes"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
            (
                br#"{"slow": true}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            ),
        ];
        for (body, status, code) in cases {
            let err = ChaosPatch::parse(body).unwrap_err();
            assert_eq!(err.status, *status, "{}", String::from_utf8_lossy(body));
            assert_eq!(err.code, *code, "{}", String::from_utf8_lossy(body));
        }
        assert!(ChaosPatch::parse(br#"{"latencyMs": 120000, "errorRate": 1}"#).is_ok());
        assert!(ChaosPatch::parse(b"{}").is_ok());
    }

    #[test]
    fn settings_serialise_camel_case() {
        let v = serde_json::to_value(ChaosSettings::default()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"down": false, "latencyMs": 0, "errorRate": 0.0, "inventoryDown": false})
        );
    }
}
