//! The live state of one upstream server: address, health, ejection and in-flight count.
//!
//! A [`ServerState`] outlives config reloads: when a reload keeps a `host:port`, the new pool
//! shares the same `Arc<ServerState>`, so health, ejection and in-flight counts carry over.
//! Everything read on the request path is an atomic (or an `ArcSwapOption` load).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::config::model::ServerSpec;

use super::health::HealthProgress;
use super::outlier::OutlierState;

/// One server of a pool.
#[derive(Debug)]
pub(crate) struct ServerState {
    /// The server as written in the config.
    pub(crate) spec: ServerSpec,
    /// `host:port`, shared so that selection never allocates.
    pub(crate) label: Arc<str>,
    /// Clock origin for the millisecond timestamps kept in atomics.
    pub(crate) origin: Instant,
    /// Last resolved address; `None` while unresolved (such a server is never selected).
    addr: ArcSwapOption<SocketAddr>,
    /// Active health verdict. Servers start healthy (as in Pingora and NGINX): a dead server is
    /// found by its first check, and until then connect failures are retried on another server.
    healthy: AtomicBool,
    /// Requests currently proxied to this server (held by `ServerInflightGuard`s).
    inflight: Arc<AtomicUsize>,
    /// Passive outlier ejection.
    pub(crate) outlier: OutlierState,
    /// Active check bookkeeping, touched only by the background checker.
    pub(crate) health: Mutex<HealthProgress>,
}

impl ServerState {
    /// A new server, healthy, with `addr` if it is already known (IP literal or resolved).
    pub(crate) fn new(spec: ServerSpec, addr: Option<SocketAddr>) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            label: Arc::from(spec.to_string()),
            spec,
            origin: now,
            addr: ArcSwapOption::new(addr.map(Arc::new)),
            healthy: AtomicBool::new(true),
            inflight: Arc::new(AtomicUsize::new(0)),
            outlier: OutlierState::default(),
            health: Mutex::new(HealthProgress::new(now)),
        })
    }

    /// Milliseconds from this server's clock origin to `now` (0 before the origin).
    pub(crate) fn ms_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The last resolved address.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// Replaces the resolved address (`None`: the name no longer resolves).
    pub(crate) fn set_addr(&self, addr: Option<SocketAddr>) {
        if self.addr() != addr {
            self.addr.store(addr.map(Arc::new));
        }
    }

    /// Active health verdict.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the active health verdict; returns the previous one.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Requests in flight to this server.
    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether selection may pick this server at `now`: healthy, resolved and not ejected.
    /// Returns the address when it may.
    pub(crate) fn available_at(&self, now_ms: u64) -> Option<SocketAddr> {
        if !self.is_healthy() || self.outlier.is_ejected_at(now_ms) {
            return None;
        }
        self.addr()
    }

    /// Brings the next active check forward (see `UpstreamPool::recheck_soon`); only for a
    /// server still considered healthy, since a down one is not selected anyway.
    pub(crate) fn expedite_check(&self, now: Instant, min_gap: Duration) -> bool {
        self.is_healthy() && self.health.lock().expedite(now, min_gap)
    }

    /// Counts one request in flight until the guard drops.
    pub(crate) fn guard(self: &Arc<Self>) -> ServerInflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        ServerInflightGuard {
            inflight: Some(Arc::clone(&self.inflight)),
        }
    }
}

/// One request in flight to one server; dropping it ends the count (RAII). Keep it in the
/// request context for as long as the upstream request lasts.
#[derive(Debug)]
#[must_use = "the in-flight count ends when the guard drops"]
pub struct ServerInflightGuard {
    inflight: Option<Arc<AtomicUsize>>,
}

impl ServerInflightGuard {
    /// A guard that counts nothing (for an index that is not a server of the pool).
    pub(crate) fn none() -> Self {
        Self { inflight: None }
    }
}

impl Drop for ServerInflightGuard {
    fn drop(&mut self) {
        if let Some(inflight) = self.inflight.take() {
            inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
