//! Logs, request ids and Prometheus metrics shared by every backend service.
//!
//! - [`init_tracing`]: one `tracing` subscriber per process (`RUST_LOG`, default `info`; JSON
//!   lines when `LOG_FORMAT=json`).
//! - [`request_id`]: takes `X-Request-Id` (or makes a UUID), runs the request inside a span carrying
//!   it so every log line of the request shows it, logs one access line, echoes the header.
//! - [`Metrics`] + [`track_metrics`]: `http_requests_total{service,route,status}` and
//!   `http_request_duration_seconds{service,route}`, labelled by the matched route template.
//! - [`health_routes`] (`GET /health`) and [`metrics_route`] (`GET /metrics`).
//!
//! [`instrument`] applies both middlewares in the right order to a finished router;
//! [`service_router`] builds the whole frame of a service (health, chaos, admin, metrics) and
//! [`serve`] runs it until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tracing::Instrument;

/// The request id header (SPEC §4).
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id that is kept; longer or non-printable ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Route label for requests that matched no route (keeps label cardinality bounded).
const UNMATCHED_ROUTE: &str = "unmatched";

/// Installs the global `tracing` subscriber: env filter from `RUST_LOG` (default `info`), JSON
/// output when `LOG_FORMAT=json`, human-readable otherwise. A second call does nothing.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // `try_init` fails only when a subscriber is already installed (e.g. in tests): keep it.
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The request id of the current request, put in the request extensions by [`request_id`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn valid_request_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= MAX_REQUEST_ID_LEN && s.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(s)
}

/// Middleware: keeps a sane `X-Request-Id` or generates a UUID v4, stores it as a [`RequestId`]
/// extension, runs the rest of the request inside a `request` span with `request_id`, logs one
/// access line (`info`) and sets the header on the response. Install it outermost.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request done"
        );
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    response
}

/// One service's Prometheus registry and its HTTP metrics. Register further collectors on
/// [`Metrics::registry`].
#[derive(Debug)]
pub struct Metrics {
    /// The registry `GET /metrics` renders.
    pub registry: Registry,
    /// Service name used as the `service` label (`reservations`, `payments`, ...).
    pub service: String,
    /// `http_requests_total{service,route,status}`.
    pub http_requests_total: IntCounterVec,
    /// `http_request_duration_seconds{service,route}`.
    pub http_request_duration_seconds: HistogramVec,
}

/// Creating or registering a metric failed (duplicate name, invalid name).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration failed: {0}")]
pub struct MetricsError(#[from] pub prometheus::Error);

impl Metrics {
    /// A fresh registry with the HTTP metrics registered.
    pub fn new(service: &str) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let http_requests_total = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["service", "route", "status"],
        )?;
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration in seconds",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
            ]),
            &["service", "route"],
        )?;
        registry.register(Box::new(http_requests_total.clone()))?;
        registry.register(Box::new(http_request_duration_seconds.clone()))?;
        Ok(Arc::new(Self {
            registry,
            service: service.to_owned(),
            http_requests_total,
            http_request_duration_seconds,
        }))
    }

    /// Registers another collector (counter, gauge, ...) on this service's registry.
    pub fn register(&self, c: Box<dyn prometheus::core::Collector>) -> Result<(), MetricsError> {
        Ok(self.registry.register(c)?)
    }

    /// Records one answered request.
    pub fn observe(&self, route: &str, status: StatusCode, seconds: f64) {
        self.http_requests_total
            .with_label_values(&[self.service.as_str(), route, status.as_str()])
            .inc();
        self.http_request_duration_seconds
            .with_label_values(&[self.service.as_str(), route])
            .observe(seconds);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(4096);
        // The text encoder only fails on I/O errors, which a Vec never produces.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Middleware recording [`Metrics`] for every request, labelled with the matched route template
/// (`/payments/{reservationId}`), or `unmatched`. Install with
/// `axum::middleware::from_fn_with_state(metrics, track_metrics)` through `Router::layer` (so
/// [`MatchedPath`] is known), or use [`instrument`].
pub async fn track_metrics(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    metrics.observe(
        route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        response.status(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Wraps a finished service router: request id (outermost), then metrics. Call it last, after
/// every route, the chaos middleware and the admin routes are in place.
pub fn instrument(router: Router, metrics: Arc<Metrics>) -> Router {
    router
        .layer(middleware::from_fn_with_state(metrics, track_metrics))
        .layer(middleware::from_fn(request_id))
}

/// The standard frame of a backend service around its `api` routes (which should include its
/// `/ready`): adds `GET /health` and the JSON 404/405 fallbacks, wraps those in the chaos
/// [`crate::chaos::middleware`], then adds `/admin/chaos` and `GET /metrics` (never subject to
/// chaos) and finally [`instrument`]s the whole router.
pub fn service_router(
    api: Router,
    chaos: Arc<crate::chaos::Chaos>,
    metrics: Arc<Metrics>,
) -> Router {
    // Unknown paths and wrong methods get JSON errors like every other answer. The 405 fallback
    // is set on each group before its layer (a layer hides the routes' methods from it).
    let app = api
        .merge(health_routes())
        .fallback(crate::error::no_such_route)
        .method_not_allowed_fallback(crate::error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&chaos),
            crate::chaos::middleware,
        ))
        .merge(crate::chaos::admin_router(chaos))
        .merge(metrics_route(Arc::clone(&metrics)))
        .method_not_allowed_fallback(crate::error::method_not_allowed);
    instrument(app, metrics)
}

/// Binds `addr` and serves `app` until SIGINT or SIGTERM, then finishes in-flight requests.
pub async fn serve(addr: std::net::SocketAddr, app: Router, service: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{service}: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, service, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!(service, "stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `GET /health` → 200 `{"status":"ok"}` (liveness: the process answers).
pub fn health_routes() -> Router {
    Router::new().route("/health", get(health))
}

/// `GET /health` body.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// `GET /health`: liveness (the process serves HTTP).
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    summary = "Liveness",
    responses(
        (status = 200, description = "The process serves HTTP.", body = HealthBody),
        (status = 503, description = "`service_down`: chaos `down` is on.",
            body = crate::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    )
)]
pub async fn health() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

/// `GET /metrics` → the registry in Prometheus text format.
pub fn metrics_route(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
}

async fn render_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_labels() {
        let m = Metrics::new("payments").unwrap();
        m.observe("/payments", StatusCode::CREATED, 0.003);
        let text = m.render();
        assert!(
            text.contains(
                r#"http_requests_total{route="/payments",service="payments",status="201"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn request_id_validation() {
        assert_eq!(
            valid_request_id(&HeaderValue::from_static("abc-123")),
            Some("abc-123")
        );
        assert_eq!(valid_request_id(&HeaderValue::from_static("")), None);
        assert_eq!(valid_request_id(&HeaderValue::from_static("a b")), None);
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        assert_eq!(
            valid_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }
}
