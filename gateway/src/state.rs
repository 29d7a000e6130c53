//! The running gateway: the current configuration generation ([`Snapshot`], swapped atomically
//! on reload) and the registries that live as long as the process (limit zones, upstream pools,
//! metrics), whose state survives reloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::client::connections::{auto_max_connections, ConnectionCounter};
use crate::config::model::GatewayConfig;
use crate::limit::{ConnZone, LimitStore, ReqZone, Zones};
use crate::metrics::{AttemptMetrics, Metrics, RouteMetrics};
use crate::upstream::{UpstreamPool, Upstreams};

/// One configuration generation, with every name a request needs already looked up.
/// A request takes an `Arc` of it at its start and finishes on it, whatever reloads happen.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated configuration.
    pub config: Arc<GatewayConfig>,
    /// Per route, in `config.routes` order.
    pub routes: Vec<RouteRuntime>,
    /// Metric handles of requests that matched no route (route label `none`).
    pub unrouted: RouteMetrics,
    /// Metric handles of the gateway's own `/health` (route label `health`).
    pub health: RouteMetrics,
}

/// A route's live objects.
#[derive(Debug)]
pub struct RouteRuntime {
    /// The route's `limit_req` zones, in rule order (same length as `route.limit_req`).
    pub req_zones: Vec<Arc<ReqZone>>,
    /// The route's `limit_conn` zones, in rule order (same length as `route.limit_conn`).
    pub conn_zones: Vec<Arc<ConnZone>>,
    /// The route's upstream pool.
    pub pool: Arc<UpstreamPool>,
    /// Some `limit_req` zone of the route has `scope: cluster` (its decision goes to the store).
    pub cluster: bool,
    /// The route's request counters and duration histogram.
    pub metrics: RouteMetrics,
    /// The attempt counters of the route's upstream servers.
    pub attempts: AttemptMetrics,
}

/// The outcome of the last SIGHUP reload, for `/status`.
#[derive(Debug, Clone, Default)]
pub struct LastReload {
    /// `None` before the first reload; `Some(true)` when it was applied.
    pub ok: Option<bool>,
    /// When it happened.
    pub at: Option<SystemTime>,
    /// Every problem of a rejected file, one per line.
    pub error: Option<String>,
}

/// Why a snapshot could not be built (a validated config always builds; this guards the
/// contract between the config and the registries).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SnapshotError(String);

/// Process-wide gateway state.
#[derive(Debug)]
pub struct State {
    /// The configuration file (re-read on SIGHUP).
    pub config_path: PathBuf,
    /// The current generation.
    pub current: ArcSwap<Snapshot>,
    /// `limit_req` / `limit_conn` zones (per-key state kept across reloads).
    pub zones: Zones,
    /// Upstream pools (health, ejection, breaker kept across reloads).
    pub upstreams: Arc<Upstreams>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The shared store of `scope: cluster` zones (connection kept across reloads).
    pub store: LimitStore,
    /// The last reload's outcome.
    pub last_reload: Mutex<LastReload>,
    /// Open client connections (kept across reloads).
    pub connections: Arc<ConnectionCounter>,
    /// The connection cap when `client.max_connections` is not set, from the open-file limit
    /// when the state was built (after `main` raised it).
    pub auto_max_connections: usize,
}

impl State {
    /// Builds the registries for `config` and the first snapshot.
    pub fn new(config: GatewayConfig, config_path: PathBuf) -> Result<Arc<Self>, SnapshotError> {
        let zones = Zones::new();
        let upstreams = Upstreams::new();
        let metrics = Metrics::new();
        let store = LimitStore::new(metrics.clone());
        zones.apply(&config);
        upstreams.apply(&config);
        store.apply(config.limit_store.as_ref());
        let snapshot = build_snapshot(Arc::new(config), &zones, &upstreams, &metrics)?;
        prime_metrics(&metrics, &snapshot.config);
        Ok(Arc::new(State {
            config_path,
            current: ArcSwap::from_pointee(snapshot),
            zones,
            upstreams,
            metrics,
            store,
            last_reload: Mutex::new(LastReload::default()),
            connections: ConnectionCounter::new(),
            auto_max_connections: crate::fd_limit::soft().map_or(usize::MAX, auto_max_connections),
        }))
    }

    /// The current generation.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies a new validated configuration: zones and pools first (keeping the state of those
    /// that remain), then the new snapshot is swapped in atomically.
    pub fn install(&self, config: GatewayConfig) -> Result<(), SnapshotError> {
        self.zones.apply(&config);
        self.upstreams.apply(&config);
        self.store.apply(config.limit_store.as_ref());
        let snapshot = build_snapshot(
            Arc::new(config),
            &self.zones,
            &self.upstreams,
            &self.metrics,
        )?;
        prime_metrics(&self.metrics, &snapshot.config);
        self.current.store(Arc::new(snapshot));
        Ok(())
    }

    /// Sets the cluster gauges of SPEC §10.1 for a scrape: `gateway_limit_store_fallback{zone}`
    /// of every cluster zone (1 while the store is not deciding, or when one of the zone's
    /// decisions fell back in the last second) and `gateway_cluster_gateways`.
    pub fn refresh_store_gauges(&self) {
        let m = &self.metrics;
        m.limit_store_fallback.reset();
        let available = self.store.available();
        let now = std::time::Instant::now();
        for z in self.zones.req_zones() {
            if z.is_cluster() {
                let fb =
                    !available || z.fell_back_within(now, crate::limit::zones::FALLBACK_SHOWN_FOR);
                m.limit_store_fallback
                    .with_label_values(&[z.name()])
                    .set(i64::from(fb));
            }
        }
        m.cluster_gateways.set(self.store.gateways_seen() as i64);
    }

    /// The current cap on open client connections (`client.max_connections`, else derived
    /// from the open-file limit).
    pub fn max_connections(&self) -> usize {
        self.current
            .load()
            .config
            .client
            .max_connections
            .unwrap_or(self.auto_max_connections)
    }
}

impl crate::client::deadline::ConnectionPolicy for State {
    fn head_limits(&self) -> crate::client::deadline::HeadLimits {
        let snap = self.current.load();
        crate::client::deadline::HeadLimits {
            header_timeout: snap.config.client.header_timeout,
            max_header_bytes: snap.config.client.max_header_bytes,
            keepalive_requests: snap.config.client.keepalive_requests,
            keepalive_timeout: snap.config.client.keepalive_timeout,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn max_connections(&self) -> usize {
        State::max_connections(self)
    }

    fn connections(&self) -> &Arc<ConnectionCounter> {
        &self.connections
    }
}

fn build_snapshot(
    config: Arc<GatewayConfig>,
    zones: &Zones,
    upstreams: &Upstreams,
    metrics: &Metrics,
) -> Result<Snapshot, SnapshotError> {
    let mut routes = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let req_zones = route
            .limit_req
            .iter()
            .map(|r| {
                zones
                    .req_zone(&r.zone)
                    .ok_or_else(|| SnapshotError(format!("limit_req zone {:?} missing", r.zone)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let conn_zones = route
            .limit_conn
            .iter()
            .map(|r| {
                zones
                    .conn_zone(&r.zone)
                    .ok_or_else(|| SnapshotError(format!("limit_conn zone {:?} missing", r.zone)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pool = upstreams
            .pool(&route.upstream)
            .ok_or_else(|| SnapshotError(format!("upstream {:?} missing", route.upstream)))?;
        let cluster = req_zones.iter().any(|z| z.is_cluster());
        let servers = (0..pool.len())
            .map(|i| pool.server_name(i).unwrap_or("-").into())
            .collect();
        routes.push(RouteRuntime {
            cluster,
            metrics: metrics.route(&route.path_prefix),
            attempts: metrics.attempts(&route.upstream, servers),
            req_zones,
            conn_zones,
            pool,
        });
    }
    Ok(Snapshot {
        config,
        routes,
        unrouted: metrics.route("none"),
        health: metrics.route("health"),
    })
}

/// Creates the labelled series of every zone and upstream at zero, so `/metrics` lists them
/// before the first event.
fn prime_metrics(m: &Metrics, cfg: &GatewayConfig) {
    for zone in cfg.limit_req_zones.keys() {
        m.ratelimit_rejected.with_label_values(&[zone]);
        m.ratelimit_delayed.with_label_values(&[zone]);
    }
    for zone in cfg.limit_conn_zones.keys() {
        m.limit_conn_rejected.with_label_values(&[zone]);
    }
    for name in cfg.upstreams.keys() {
        m.bulkhead_rejected.with_label_values(&[name]);
    }
}
