//! Prometheus metrics (SPEC §8). Request-path counters live in a [`prometheus::Registry`] and are
//! recorded once per request from the proxy's `logging()` hook; the upstream gauges
//! (`gateway_upstream_inflight`, `gateway_upstream_healthy`, `gateway_upstream_ejections_total`,
//! `gateway_circuit_state`) are read from the pools' status at scrape time.

use std::fmt::Write as _;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::upstream::{Outcome, UpstreamsStatus};

/// Every metric the gateway records itself.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `gateway_requests_total{route,status}`.
    pub requests: IntCounterVec,
    /// `gateway_request_duration_seconds{route}`.
    pub duration: HistogramVec,
    /// `gateway_ratelimit_rejected_total{zone}`.
    pub ratelimit_rejected: IntCounterVec,
    /// `gateway_ratelimit_delayed_total{zone}`.
    pub ratelimit_delayed: IntCounterVec,
    /// `gateway_ratelimit_dry_run_total{zone}`: dry-run limits that would have rejected.
    pub ratelimit_dry_run: IntCounterVec,
    /// `gateway_limit_conn_rejected_total{zone}`.
    pub limit_conn_rejected: IntCounterVec,
    /// `gateway_limit_conn_dry_run_total{zone}`: dry-run limits that would have rejected.
    pub limit_conn_dry_run: IntCounterVec,
    /// `gateway_bulkhead_rejected_total{upstream}`.
    pub bulkhead_rejected: IntCounterVec,
    /// `gateway_circuit_rejected_total{upstream}`: requests refused by an open breaker.
    pub circuit_rejected: IntCounterVec,
    /// `gateway_upstream_requests_total{upstream,server,outcome}`: attempts per server.
    pub upstream_requests: IntCounterVec,
    /// `gateway_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `gateway_header_timeouts_total`: connections closed because the request head was late.
    pub header_timeouts: IntCounter,
    /// `gateway_limit_store_requests_total{result}` (`ok`, `error`, `timeout`): decision
    /// round trips to the cluster limit store (SPEC §10.1).
    pub limit_store_requests: IntCounterVec,
    /// `gateway_limit_store_duration_seconds`: one decision round trip, as waited for.
    pub limit_store_duration: Histogram,
    /// `gateway_limit_store_batch_size`: decisions carried by one script call to the store
    /// (the decisions that queued up while the previous call was on the wire).
    pub limit_store_batch: Histogram,
    /// `gateway_limit_store_fallback{zone}`: 1 while a cluster zone decides locally.
    pub limit_store_fallback: IntGaugeVec,
    /// `gateway_cluster_gateways`: live gateways last seen in the store.
    pub cluster_gateways: IntGauge,
    /// `gateway_client_connections`: client connections being served (set at scrape time).
    pub client_connections: IntGauge,
    /// `gateway_client_connections_refused_total{action}`: connections past
    /// `client.max_connections`, `answered` (503) or `closed` (too many refusals at once).
    pub client_connections_refused: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: T) -> T {
    registry
        .register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric registered twice: {e}"));
    m
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time from request head to the end of the response, by route",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| panic!("histogram is malformed: {e}"));
        registry
            .register(Box::new(duration.clone()))
            .unwrap_or_else(|e| panic!("histogram registered twice: {e}"));
        let config_reloads = counter(
            &registry,
            "gateway_config_reloads_total",
            "SIGHUP reloads by result (ok, error)",
            &["result"],
        );
        // Show both results from the start, so a dashboard sees zeros rather than nothing.
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["error"]);
        let header_timeouts = IntCounter::new(
            "gateway_header_timeouts_total",
            "Connections closed because the request head did not arrive within header_timeout_ms",
        )
        .unwrap_or_else(|e| panic!("counter is malformed: {e}"));
        registry
            .register(Box::new(header_timeouts.clone()))
            .unwrap_or_else(|e| panic!("counter registered twice: {e}"));
        let limit_store_requests = counter(
            &registry,
            "gateway_limit_store_requests_total",
            "Decision round trips to the cluster limit store, by result (ok, error, timeout)",
            &["result"],
        );
        for r in ["ok", "error", "timeout"] {
            limit_store_requests.with_label_values(&[r]);
        }
        let limit_store_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_limit_store_duration_seconds",
                    "One decision round trip to the cluster limit store (capped by timeout_ms)",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )
            .unwrap_or_else(|e| panic!("histogram is malformed: {e}")),
        );
        let limit_store_batch = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "gateway_limit_store_batch_size",
                    "Decisions carried by one script call to the cluster limit store",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
            )
            .unwrap_or_else(|e| panic!("histogram is malformed: {e}")),
        );
        let limit_store_fallback = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "gateway_limit_store_fallback",
                    "1 while a cluster limit_req zone decides on its local fallback bucket",
                ),
                &["zone"],
            )
            .unwrap_or_else(|e| panic!("gauge is malformed: {e}")),
        );
        let cluster_gateways = register(
            &registry,
            IntGauge::new(
                "gateway_cluster_gateways",
                "Live gateways last seen in the cluster limit store (heartbeats)",
            )
            .unwrap_or_else(|e| panic!("gauge is malformed: {e}")),
        );
        let client_connections = register(
            &registry,
            IntGauge::new(
                "gateway_client_connections",
                "Client connections being served on the proxy listener",
            )
            .unwrap_or_else(|e| panic!("gauge is malformed: {e}")),
        );
        let client_connections_refused = counter(
            &registry,
            "gateway_client_connections_refused_total",
            "Connections past client.max_connections: answered 503, or closed at once when too many refusals were under way",
            &["action"],
        );
        client_connections_refused.with_label_values(&["answered"]);
        client_connections_refused.with_label_values(&["closed"]);
        Metrics {
            limit_store_requests,
            limit_store_duration,
            limit_store_batch,
            limit_store_fallback,
            cluster_gateways,
            client_connections,
            client_connections_refused,
            header_timeouts,
            requests: counter(
                &registry,
                "gateway_requests_total",
                "Requests by route and response status",
                &["route", "status"],
            ),
            duration,
            ratelimit_rejected: counter(
                &registry,
                "gateway_ratelimit_rejected_total",
                "Requests rejected by limit_req, by zone",
                &["zone"],
            ),
            ratelimit_delayed: counter(
                &registry,
                "gateway_ratelimit_delayed_total",
                "Requests delayed by limit_req, by zone",
                &["zone"],
            ),
            ratelimit_dry_run: counter(
                &registry,
                "gateway_ratelimit_dry_run_total",
                "Requests a dry-run limit_req would have rejected, by zone",
                &["zone"],
            ),
            limit_conn_rejected: counter(
                &registry,
                "gateway_limit_conn_rejected_total",
                "Requests rejected by limit_conn, by zone",
                &["zone"],
            ),
            limit_conn_dry_run: counter(
                &registry,
                "gateway_limit_conn_dry_run_total",
                "Requests a dry-run limit_conn would have rejected, by zone",
                &["zone"],
            ),
            bulkhead_rejected: counter(
                &registry,
                "gateway_bulkhead_rejected_total",
                "Requests refused by an upstream's bulkhead, by upstream",
                &["upstream"],
            ),
            circuit_rejected: counter(
                &registry,
                "gateway_circuit_rejected_total",
                "Requests refused by an open circuit breaker, by upstream",
                &["upstream"],
            ),
            upstream_requests: counter(
                &registry,
                "gateway_upstream_requests_total",
                "Attempts sent to upstream servers, by outcome (success, failure, neutral)",
                &["upstream", "server", "outcome"],
            ),
            config_reloads,
            registry,
        }
    }

    /// The per-request handles of one route label (`none` and `health` included).
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            requests: self.requests.clone(),
            by_status: (0..STATUSES).map(|_| OnceLock::new()).collect(),
            durations: self.duration.clone(),
            duration: OnceLock::new(),
        }
    }

    /// The attempt counters of `upstream`'s servers (`labels`, in pool order), resolved on first
    /// use; built with each snapshot like [`RouteMetrics`].
    pub fn attempts(&self, upstream: &str, labels: Vec<Box<str>>) -> AttemptMetrics {
        AttemptMetrics {
            upstream: upstream.into(),
            family: self.upstream_requests.clone(),
            cells: labels.iter().map(|_| Default::default()).collect(),
            servers: labels,
        }
    }

    /// The Prometheus text exposition: the registry plus the upstream gauges from `upstreams`.
    pub fn render(&self, upstreams: &UpstreamsStatus) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        let mut out = String::from_utf8(buf).unwrap_or_default();
        render_upstreams(&mut out, upstreams);
        render_local_resource_errors(&mut out);
        out
    }
}

/// Status codes a route caches handles for: 0 (nothing sent) to 599.
const STATUSES: usize = 600;

/// A route label's request counters and duration histogram, resolved once so that a request does
/// not hash its labels, take the family's lock or format its status to find them. Built with
/// each configuration snapshot; the series themselves live in the registry and survive reloads.
#[derive(Debug)]
pub struct RouteMetrics {
    route: Box<str>,
    requests: IntCounterVec,
    /// `gateway_requests_total{route,status}` by status, resolved on first use.
    by_status: Box<[OnceLock<IntCounter>]>,
    durations: HistogramVec,
    /// `gateway_request_duration_seconds{route}`, resolved on first use (a series appears only
    /// once a request was counted in it).
    duration: OnceLock<Histogram>,
}

impl RouteMetrics {
    /// Counts one request answered with `status` that took `elapsed`.
    pub fn record(&self, status: u16, elapsed: std::time::Duration) {
        let status = usize::from(status);
        match self.by_status.get(status) {
            Some(cell) => cell.get_or_init(|| self.counter(status)).inc(),
            None => self.counter(status).inc(),
        }
        self.duration
            .get_or_init(|| self.durations.with_label_values(&[&*self.route]))
            .observe(elapsed.as_secs_f64());
    }

    fn counter(&self, status: usize) -> IntCounter {
        self.requests
            .with_label_values(&[&*self.route, status.to_string().as_str()])
    }
}

/// `gateway_upstream_requests_total{upstream,server,outcome}` of one upstream's servers, resolved
/// once per (server, outcome) rather than by hashing three labels under the family's lock for
/// every attempt.
#[derive(Debug)]
pub struct AttemptMetrics {
    upstream: Box<str>,
    family: IntCounterVec,
    /// Server labels, by pool index.
    servers: Vec<Box<str>>,
    /// By pool index, then outcome (`Outcome as usize`).
    cells: Box<[[OnceLock<IntCounter>; 3]]>,
}

impl AttemptMetrics {
    /// Counts one attempt on server `index` that ended with `outcome`.
    pub fn count(&self, index: usize, outcome: Outcome) {
        let resolve = || {
            let server = self.servers.get(index).map_or("-", |s| &**s);
            let label = match outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
                Outcome::Neutral => "neutral",
            };
            self.family
                .with_label_values(&[&*self.upstream, server, label])
        };
        match self.cells.get(index).and_then(|c| c.get(outcome as usize)) {
            Some(cell) => cell.get_or_init(resolve).inc(),
            None => resolve().inc(),
        }
    }
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_upstreams(out: &mut String, st: &UpstreamsStatus) {
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP gateway_upstream_inflight Requests holding a bulkhead slot, by upstream"
    );
    let _ = writeln!(out, "# TYPE gateway_upstream_inflight gauge");
    for (name, u) in &st.upstreams {
        let _ = writeln!(
            out,
            "gateway_upstream_inflight{{upstream=\"{}\"}} {}",
            label(name),
            u.inflight
        );
    }
    let _ = writeln!(
        out,
        "# HELP gateway_circuit_state Circuit breaker state: 0 closed, 1 open, 2 half-open"
    );
    let _ = writeln!(out, "# TYPE gateway_circuit_state gauge");
    for (name, u) in &st.upstreams {
        let _ = writeln!(
            out,
            "gateway_circuit_state{{upstream=\"{}\"}} {}",
            label(name),
            u.breaker_gauge
        );
    }
    let _ = writeln!(
        out,
        "# HELP gateway_upstream_healthy 1 when the server passes active checks and resolves"
    );
    let _ = writeln!(out, "# TYPE gateway_upstream_healthy gauge");
    for (name, u) in &st.upstreams {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "gateway_upstream_healthy{{upstream=\"{}\",server=\"{}\"}} {}",
                label(name),
                label(&s.server),
                u8::from(s.healthy)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP gateway_upstream_ejected 1 while the server is passively ejected"
    );
    let _ = writeln!(out, "# TYPE gateway_upstream_ejected gauge");
    for (name, u) in &st.upstreams {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "gateway_upstream_ejected{{upstream=\"{}\",server=\"{}\"}} {}",
                label(name),
                label(&s.server),
                u8::from(s.ejected)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP gateway_upstream_ejections_total Passive ejections, by server"
    );
    let _ = writeln!(out, "# TYPE gateway_upstream_ejections_total counter");
    for (name, u) in &st.upstreams {
        for s in &u.servers {
            let _ = writeln!(
                out,
                "gateway_upstream_ejections_total{{upstream=\"{}\",server=\"{}\"}} {}",
                label(name),
                label(&s.server),
                s.ejections_total
            );
        }
    }
}

/// `gateway_local_resource_errors_total{kind}`: process-wide counters kept by the upstream module.
fn render_local_resource_errors(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP gateway_local_resource_errors_total Upstream connects and health checks that failed for lack of a local resource (fds, buffers, memory, ports), never counted against the server"
    );
    let _ = writeln!(out, "# TYPE gateway_local_resource_errors_total counter");
    for (kind, n) in crate::upstream::local_resource_errors() {
        let _ = writeln!(
            out,
            "gateway_local_resource_errors_total{{kind=\"{kind}\"}} {n}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, route: &str, status: &str) -> u64 {
        m.requests.with_label_values(&[route, status]).get()
    }

    #[test]
    fn route_handles_count_in_the_shared_series() {
        let m = Metrics::new();
        let r = m.route("/api/");
        let unused = m.route("none");
        let empty = UpstreamsStatus {
            upstreams: Default::default(),
        };
        assert!(!m.render(&empty).contains("route=\"none\""));
        drop(unused);
        r.record(200, std::time::Duration::from_millis(3));
        r.record(200, std::time::Duration::from_millis(3));
        r.record(0, std::time::Duration::ZERO);
        // A status past the cache still counts (never sent by Pingora, but not lost either).
        r.record(999, std::time::Duration::ZERO);
        // A second set of handles (the next snapshot) adds to the same series.
        m.route("/api/").record(200, std::time::Duration::ZERO);
        assert_eq!(count(&m, "/api/", "200"), 3);
        assert_eq!(count(&m, "/api/", "0"), 1);
        assert_eq!(count(&m, "/api/", "999"), 1);
        assert_eq!(
            m.duration.with_label_values(&["/api/"]).get_sample_count(),
            5
        );
    }
}
