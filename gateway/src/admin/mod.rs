//! The admin listener (SPEC §8): `GET /metrics` (Prometheus text), `GET /status` (JSON,
//! camelCase) and `GET /` (dashboard). A small axum server run as a Pingora background service
//! on a listener bound at start-up (so a busy port fails the start, not a later request).

mod status;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::state::State;

pub use status::{status_json, Status};

/// The dashboard page (static, no build step); it loads the two files below and polls
/// `/status` and `/metrics`.
const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// The dashboard's script.
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
/// The dashboard's style sheet.
const DASHBOARD_CSS: &str = include_str!("dashboard/style.css");

/// The admin HTTP service.
pub struct AdminService {
    state: Arc<State>,
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl AdminService {
    /// Serves `state` on `listener` (already bound).
    pub fn new(state: Arc<State>, listener: std::net::TcpListener) -> Self {
        Self {
            state,
            listener: Mutex::new(Some(listener)),
        }
    }
}

/// The admin routes.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn dashboard_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        DASHBOARD_JS,
    )
        .into_response()
}

async fn dashboard_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        DASHBOARD_CSS,
    )
        .into_response()
}

async fn metrics(AxumState(state): AxumState<Arc<State>>) -> Response {
    state.refresh_store_gauges();
    state
        .metrics
        .client_connections
        .set(i64::try_from(state.connections.open()).unwrap_or(i64::MAX));
    let body = state.metrics.render(&state.upstreams.status());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn status(AxumState(state): AxumState<Arc<State>>) -> Response {
    (StatusCode::OK, Json(status_json(&state))).into_response()
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin listener unusable");
                return;
            }
        };
        let app = router(Arc::clone(&self.state));
        let stop = async move {
            // Either a shutdown broadcast or the sender going away ends the server.
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    }
}
