//! One upstream pool: its servers, bulkhead and breaker, as seen by one request.
//!
//! A request takes, in order: a bulkhead slot ([`UpstreamPool::acquire_slot`]), a breaker permit
//! ([`UpstreamPool::breaker`]), a server ([`UpstreamPool::select`], again with `tried` on a
//! connect-failure retry) with its in-flight guard ([`UpstreamPool::server_guard`]); when the
//! answer (or error) is known it reports the [`Outcome`] to the server
//! ([`UpstreamPool::report`]) and settles the breaker permit ([`Outcome::settle`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use resilience::{BreakerOpen, BreakerPermit, Bulkhead, BulkheadPermit, CircuitBreaker};
use tokio::sync::Notify;

use crate::config::model::{ServerSpec, Upstream};

use super::breaker::{breaker_config, Outcome};
use super::bulkhead::{bulkhead_config, Overloaded};
use super::health;
use super::outlier::max_ejectable;
use super::resolve;
use super::select::{pick, NoHealthyUpstream, Selected};
use super::server::{ServerInflightGuard, ServerState};
use super::status::{ServerStatus, UpstreamStatus};

/// State of a pool that survives reloads as long as the pool's name does.
#[derive(Debug, Default)]
pub(crate) struct PoolShared {
    /// Round-robin cursor (selection starts at a different server each time).
    next: AtomicUsize,
    /// Requests refused by the bulkhead (monotonic, `gateway_bulkhead_rejected_total`).
    bulkhead_rejected: AtomicU64,
    /// Serialises ejection decisions so the percentage cap holds under concurrency.
    eject_lock: Mutex<()>,
}

/// An upstream pool built from one version of the config. Requests hold an `Arc` of the version
/// they started with; reloads build a new version sharing the state of the servers that remain.
#[derive(Debug)]
pub struct UpstreamPool {
    config: Upstream,
    servers: Vec<Arc<ServerState>>,
    breaker: Arc<CircuitBreaker>,
    bulkhead: Arc<Bulkhead>,
    shared: Arc<PoolShared>,
    /// Wakes the background checker (see [`UpstreamPool::recheck_soon`]).
    checker: Arc<Notify>,
}

impl UpstreamPool {
    /// Builds the pool for `config`, carrying over from `previous` (the same pool in the config
    /// being replaced): the state of every server still listed, the breaker if its settings did
    /// not change, the bulkhead if its limits did not change, and the pool's counters. A changed
    /// breaker starts closed; a changed bulkhead starts empty (requests holding slots of the old
    /// one finish normally and free them there).
    ///
    /// Servers new to the pool are resolved here with the blocking system resolver (IP literals
    /// need no lookup), so a freshly loaded pool can serve at once; one that does not resolve
    /// stays out of selection until the background checker resolves it.
    pub(crate) fn build(
        config: &Upstream,
        previous: Option<&UpstreamPool>,
        checker: Arc<Notify>,
    ) -> Arc<Self> {
        let mut kept: HashMap<&ServerSpec, Vec<&Arc<ServerState>>> = HashMap::new();
        if let Some(prev) = previous {
            // Reverse so that `pop` hands out duplicates in their original order.
            for server in prev.servers.iter().rev() {
                kept.entry(&server.spec).or_default().push(server);
            }
        }
        let servers = config
            .servers
            .iter()
            .map(|spec| match kept.get_mut(spec).and_then(Vec::pop) {
                Some(server) => Arc::clone(server),
                None => {
                    let addr = match resolve::resolve_blocking(spec) {
                        Ok(addr) => Some(addr),
                        Err(e) => {
                            tracing::warn!(upstream = %config.name, error = %e, "upstream server does not resolve yet");
                            None
                        }
                    };
                    ServerState::new(spec.clone(), addr)
                }
            })
            .collect();
        let breaker = previous
            .filter(|p| p.config.circuit_breaker == config.circuit_breaker)
            .map(|p| Arc::clone(&p.breaker))
            .unwrap_or_else(|| CircuitBreaker::new(breaker_config(&config.circuit_breaker)));
        let bulkhead = previous
            .filter(|p| p.bulkhead.config() == &bulkhead_config(config))
            .map(|p| Arc::clone(&p.bulkhead))
            .unwrap_or_else(|| Bulkhead::new(bulkhead_config(config)));
        let shared = previous.map(|p| Arc::clone(&p.shared)).unwrap_or_default();
        Arc::new(Self {
            config: config.clone(),
            servers,
            breaker,
            bulkhead,
            shared,
            checker,
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The validated settings of this pool version (timeouts for the `HttpPeer`, `retries`...).
    pub fn config(&self) -> &Upstream {
        &self.config
    }

    /// Number of servers in the pool.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the pool has no server (never true for a validated config).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// `host:port` of server `index`, as written in the config.
    pub fn server_name(&self, index: usize) -> Option<&str> {
        self.servers.get(index).map(|s| &*s.label)
    }

    pub(crate) fn server_states(&self) -> &[Arc<ServerState>] {
        &self.servers
    }

    /// Takes a bulkhead slot: at once if one of `max_inflight` is free, else waits in the queue
    /// (at most `queue` waiters, at most `queue_timeout`). A refusal is counted in
    /// [`UpstreamStatus::bulkhead_rejected_total`]; answer 503 `upstream_overloaded` with
    /// `Retry-After: 1`, and never count it as an upstream failure. Keep the permit for the
    /// whole request; dropping it frees the slot.
    pub async fn acquire_slot(&self) -> Result<BulkheadPermit, Overloaded> {
        self.bulkhead.acquire().await.map_err(|reason| {
            self.shared
                .bulkhead_rejected
                .fetch_add(1, Ordering::Relaxed);
            Overloaded { reason }
        })
    }

    /// Asks the circuit breaker for permission. `Err` carries `retry_after`: answer 503
    /// `circuit_open` with `Retry-After` (whole seconds, at least 1). Settle the permit with
    /// [`Outcome::settle`] once the outcome is known (dropping it records nothing).
    pub fn breaker(&self) -> Result<BreakerPermit, BreakerOpen> {
        self.breaker.try_acquire()
    }

    /// Chooses a server: the one with the fewest requests in flight among those that are
    /// healthy, resolved, not ejected and not in `tried`, ties broken round-robin. Pass the
    /// indices already tried by this request (empty on the first attempt) so a connect-failure
    /// retry always goes to another server. Does not allocate.
    pub fn select(&self, tried: &[usize]) -> Result<Selected, NoHealthyUpstream> {
        self.select_at(tried, Instant::now())
    }

    pub(crate) fn select_at(
        &self,
        tried: &[usize],
        now: Instant,
    ) -> Result<Selected, NoHealthyUpstream> {
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        pick(&self.servers, start, tried, now)
    }

    /// Counts one request in flight to server `index` until the guard drops. An index that is
    /// not a server of this pool gives a guard that counts nothing.
    pub fn server_guard(&self, index: usize) -> ServerInflightGuard {
        self.servers
            .get(index)
            .map_or_else(ServerInflightGuard::none, ServerState::guard)
    }

    /// Reports how a request to server `index` ended, for passive outlier ejection (see
    /// [`super::outlier`]). Unknown indices are ignored.
    pub fn report(&self, index: usize, outcome: Outcome) {
        self.report_at(index, outcome, Instant::now());
    }

    pub(crate) fn report_at(&self, index: usize, outcome: Outcome, now: Instant) {
        let Some(server) = self.servers.get(index) else {
            return;
        };
        match outcome {
            Outcome::Success => server.outlier.record_success(),
            Outcome::Neutral => {}
            Outcome::Failure => {
                let threshold = self.config.outlier.consecutive_failures;
                if server.outlier.record_failure(server.ms_at(now), threshold) {
                    self.try_eject(server, now);
                }
            }
        }
    }

    fn try_eject(&self, server: &ServerState, now: Instant) {
        let outlier = &self.config.outlier;
        let _lock = self.shared.eject_lock.lock();
        if !server
            .outlier
            .wants_ejection(server.ms_at(now), outlier.consecutive_failures)
        {
            return;
        }
        let ejected = self
            .servers
            .iter()
            .filter(|s| s.outlier.is_ejected_at(s.ms_at(now)))
            .count();
        let cap = max_ejectable(self.servers.len(), outlier.max_ejection_percent);
        if ejected >= cap {
            tracing::debug!(upstream = %self.config.name, server = %server.label, ejected, cap, "ejection skipped: pool at max_ejection_percent");
            return;
        }
        let duration = server
            .outlier
            .eject(server.ms_at(now), outlier.base_ejection);
        tracing::warn!(
            upstream = %self.config.name,
            server = %server.label,
            consecutive_failures = outlier.consecutive_failures,
            ejected_for_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            times_ejected = server.outlier.times_ejected(),
            "upstream server ejected"
        );
    }

    /// Asks the background checker to check server `index` now rather than at its next
    /// interval; call it when connecting to the server failed. A killed server is then marked
    /// down after `fall` quick checks instead of up to `interval` later. Still only active checks
    /// decide, and a server is never checked more often than four times per `interval`.
    pub fn recheck_soon(&self, index: usize) {
        let Some(server) = self.servers.get(index) else {
            return;
        };
        let fast = health::fast_interval(&self.config.health_check);
        if server.expedite_check(Instant::now(), fast) {
            self.checker.notify_one();
        }
    }

    /// Whether an upstream response status counts as a failure (`failure_statuses`; by default
    /// 500, 502 and 504 — a 503 is deliberate shedding and passed through uncounted).
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.config.failure_statuses.contains(&status)
    }

    /// The [`Outcome`] of an upstream response with `status`: a failure status is a
    /// [`Outcome::Failure`], any other 5xx (503 by default) [`Outcome::Neutral`], the rest
    /// [`Outcome::Success`]. Connection failures and timeouts are [`Outcome::Failure`].
    pub fn outcome_for_status(&self, status: u16) -> Outcome {
        if self.is_failure_status(status) {
            Outcome::Failure
        } else if (500..600).contains(&status) {
            Outcome::Neutral
        } else {
            Outcome::Success
        }
    }

    /// Resolved address of server `index` (for tests and diagnostics).
    pub fn server_addr(&self, index: usize) -> Option<SocketAddr> {
        self.servers.get(index).and_then(|s| s.addr())
    }

    /// A snapshot for `/status` and `/metrics`.
    pub fn status(&self) -> UpstreamStatus {
        let now = Instant::now();
        let state = self.breaker.state();
        let (window_calls, window_failures) = self.breaker.window_counts();
        UpstreamStatus {
            name: self.config.name.clone(),
            breaker: state.as_str().to_string(),
            breaker_gauge: state.as_gauge(),
            breaker_window_calls: window_calls,
            breaker_window_failures: window_failures,
            inflight: self.bulkhead.in_flight(),
            max_inflight: self.config.max_inflight,
            queued: self.bulkhead.waiting(),
            queue: self.config.queue,
            bulkhead_rejected_total: self.shared.bulkhead_rejected.load(Ordering::Relaxed),
            servers: self
                .servers
                .iter()
                .map(|s| {
                    let now_ms = s.ms_at(now);
                    let address = s.addr();
                    let healthy = s.is_healthy() && address.is_some();
                    let ejected = s.outlier.is_ejected_at(now_ms);
                    ServerStatus {
                        server: s.label.to_string(),
                        address,
                        healthy,
                        ejected,
                        available: healthy && !ejected,
                        ejected_for_ms: s.outlier.ejected_for_ms(now_ms),
                        times_ejected: s.outlier.times_ejected(),
                        ejections_total: s.outlier.ejections_total(),
                        inflight: s.inflight(),
                        consecutive_failures: s.outlier.consecutive_failures(),
                        last_check: s.health.lock().last.clone(),
                    }
                })
                .collect(),
        }
    }
}
