//! `GET /status`: what the gateway is running right now (camelCase JSON).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::limit::ZonesStatus;
use crate::state::State;
use crate::upstream::UpstreamsStatus;

/// The `/status` document.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The loaded configuration file.
    pub config: ConfigStatus,
    /// Every upstream pool: servers (health, ejection, in-flight) and breaker.
    pub upstreams: UpstreamsStatus,
    /// `limit_req` zones: keys tracked, scope, fallback.
    pub limit_req_zones: serde_json::Value,
    /// The cluster limit store (SPEC §10.1), `null` when none is configured.
    pub limit_store: Option<LimitStoreStatus>,
    /// `limit_conn` zones: keys tracked and requests in flight.
    pub limit_conn_zones: serde_json::Value,
    /// Routes, longest prefix first (the order they are matched in).
    pub routes: Vec<RouteStatus>,
    /// Client connections on the proxy listener.
    pub connections: ConnectionsStatus,
}

/// The client connections part of `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsStatus {
    /// Being served now.
    pub open: usize,
    /// The cap (`client.max_connections`, or derived from the open-file limit).
    pub max: usize,
    /// Whether `max` was derived from the open-file limit rather than configured.
    pub max_from_fd_limit: bool,
}

/// The cluster limit store part of `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitStoreStatus {
    /// The configured URLs.
    pub redis: Vec<String>,
    /// `standalone` (one URL) or `cluster`.
    pub mode: &'static str,
    /// `timeout_ms`.
    pub timeout_ms: u64,
    /// Connected, answering, breaker closed: cluster zones decide in the store.
    pub available: bool,
    /// Live gateways last seen in the store (0 before the first heartbeat).
    pub gateways: u64,
}

/// The configuration part of `/status`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Path of the file.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// When the running configuration was loaded (RFC 3339).
    pub loaded_at: String,
    /// The last SIGHUP reload.
    pub last_reload: ReloadStatus,
}

/// The last reload.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadStatus {
    /// `"ok"`, `"error"`, or `null` before the first reload.
    pub result: Option<&'static str>,
    /// When (RFC 3339), `null` before the first reload.
    pub at: Option<String>,
    /// The problems of a rejected file.
    pub error: Option<String>,
}

/// One route.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// `path_prefix`.
    pub path_prefix: String,
    /// Upstream name.
    pub upstream: String,
    /// Whole-request deadline in ms.
    pub timeout_ms: u64,
    /// `limit_req` zones used.
    pub limit_req: Vec<String>,
    /// `limit_conn` zones used.
    pub limit_conn: Vec<String>,
}

fn rfc3339(t: std::time::SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Builds the document.
pub fn status_json(state: &State) -> Status {
    let snap = state.snapshot();
    let cfg = &snap.config;
    let last = state.last_reload.lock().clone();
    let mut zones: ZonesStatus = state.zones.status();
    let available = state.store.available();
    for z in zones.limit_req.values_mut() {
        if z.scope == "cluster" && !available {
            z.fallback = true;
        }
    }
    let limit_store = cfg.limit_store.as_ref().map(|s| LimitStoreStatus {
        redis: s.redis.clone(),
        mode: if s.is_cluster() {
            "cluster"
        } else {
            "standalone"
        },
        timeout_ms: s.timeout.as_millis() as u64,
        available,
        gateways: state.store.gateways_seen(),
    });
    Status {
        config: ConfigStatus {
            path: cfg.source.path.clone(),
            sha256: cfg.source.sha256.clone(),
            loaded_at: rfc3339(cfg.source.loaded_at),
            last_reload: ReloadStatus {
                result: last.ok.map(|ok| if ok { "ok" } else { "error" }),
                at: last.at.map(rfc3339),
                error: last.error,
            },
        },
        upstreams: state.upstreams.status(),
        limit_req_zones: serde_json::to_value(&zones.limit_req).unwrap_or_default(),
        limit_store,
        limit_conn_zones: serde_json::to_value(&zones.limit_conn).unwrap_or_default(),
        routes: cfg
            .routes
            .iter()
            .map(|r| RouteStatus {
                path_prefix: r.path_prefix.clone(),
                upstream: r.upstream.clone(),
                timeout_ms: r.timeout.as_millis() as u64,
                limit_req: r.limit_req.iter().map(|l| l.zone.clone()).collect(),
                limit_conn: r.limit_conn.iter().map(|l| l.zone.clone()).collect(),
            })
            .collect(),
        connections: ConnectionsStatus {
            open: state.connections.open(),
            max: state.max_connections(),
            max_from_fd_limit: cfg.client.max_connections.is_none(),
        },
    }
}
