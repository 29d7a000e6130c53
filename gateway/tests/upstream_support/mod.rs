//! Test upstream servers for the `upstream_*` integration tests: tiny axum servers on free
//! 127.0.0.1 ports, each on its own tokio runtime so that `kill` really closes every socket
//! (listener and kept-alive connections), like a killed process, and `restart` binds the same port.

#![allow(dead_code)] // Each test crate uses a different subset.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

/// What a test server answers, changeable while it runs.
#[derive(Debug)]
pub struct Control {
    /// Status of `GET /health`.
    pub health_status: AtomicU16,
    /// Status of every other request.
    pub status: AtomicU16,
    /// Delay before answering every other request, in ms.
    pub delay_ms: AtomicU64,
    /// Delay before answering `GET /health`, in ms.
    pub health_delay_ms: AtomicU64,
    /// `/health` requests received.
    pub health_hits: AtomicUsize,
    /// Other requests received.
    pub hits: AtomicUsize,
}

/// A test upstream server.
pub struct TestServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its behaviour and counters.
    pub ctl: Arc<Control>,
    runtime: Option<tokio::runtime::Runtime>,
}

async fn health(State(ctl): State<Arc<Control>>) -> (StatusCode, &'static str) {
    ctl.health_hits.fetch_add(1, Ordering::SeqCst);
    let delay = ctl.health_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(ctl.health_status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, "health")
}

async fn other(State(ctl): State<Arc<Control>>) -> (StatusCode, String) {
    ctl.hits.fetch_add(1, Ordering::SeqCst);
    let delay = ctl.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(ctl.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("{{\"status\":{}}}", status.as_u16()))
}

impl TestServer {
    /// Starts a server on a free port answering 200 everywhere.
    pub fn start() -> Self {
        let ctl = Arc::new(Control {
            health_status: AtomicU16::new(200),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            health_delay_ms: AtomicU64::new(0),
            health_hits: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        let mut server = Self {
            port,
            ctl,
            runtime: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test server runtime");
        let app = Router::new()
            .route("/health", get(health))
            .fallback(other)
            .with_state(Arc::clone(&self.ctl));
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = axum::serve(listener, app).await;
        });
        self.runtime = Some(runtime);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server: the listener and every open connection close.
    pub async fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(2)))
                .await
                .expect("runtime shutdown");
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        assert!(self.runtime.is_none(), "kill first");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("rebind {}: {e}", self.port),
            }
        };
        self.serve(listener);
    }

    /// Sets the status of `/health`.
    pub fn set_health(&self, status: u16) {
        self.ctl.health_status.store(status, Ordering::SeqCst);
    }

    /// Sets the status of every other path.
    pub fn set_status(&self, status: u16) {
        self.ctl.status.store(status, Ordering::SeqCst);
    }

    /// Delays every other path.
    pub fn set_delay(&self, delay: Duration) {
        self.ctl.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Delays `GET /health`.
    pub fn set_health_delay(&self, delay: Duration) {
        self.ctl.health_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Non-health requests received so far.
    pub fn hits(&self) -> usize {
        self.ctl.hits.load(Ordering::SeqCst)
    }

    /// Health requests received so far.
    pub fn health_hits(&self) -> usize {
        self.ctl.health_hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A port nobody listens on (bound, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`; returns the value and the
/// time it took.
pub async fn wait_for<T>(
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<(T, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some((v, started.elapsed()));
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
