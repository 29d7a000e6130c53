//! Snapshots of the pools for `/status`, the dashboard and `/metrics`.
//!
//! Metric mapping: `gateway_upstream_inflight{upstream}` = [`UpstreamStatus::inflight`],
//! `gateway_upstream_healthy{upstream,server}` = [`ServerStatus::healthy`] as 1/0,
//! `gateway_upstream_ejections_total{upstream,server}` = [`ServerStatus::ejections_total`],
//! `gateway_circuit_state{upstream}` = [`UpstreamStatus::breaker_gauge`],
//! `gateway_bulkhead_rejected_total{upstream}` = [`UpstreamStatus::bulkhead_rejected_total`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::health::LastCheck;

/// Every pool by name (serialises as a JSON object keyed by upstream name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpstreamsStatus {
    /// Pools by name.
    pub upstreams: BTreeMap<String, UpstreamStatus>,
}

/// One pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStatus {
    /// Pool name.
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// 0 closed, 1 open, 2 half-open (`gateway_circuit_state`).
    pub breaker_gauge: i64,
    /// Calls recorded in the breaker's current window.
    pub breaker_window_calls: u32,
    /// Failures among them.
    pub breaker_window_failures: u32,
    /// Requests holding a bulkhead slot (`gateway_upstream_inflight`).
    pub inflight: usize,
    /// Bulkhead size.
    pub max_inflight: usize,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Bulkhead queue size.
    pub queue: usize,
    /// Requests the bulkhead refused since the pool was created (`gateway_bulkhead_rejected_total`).
    pub bulkhead_rejected_total: u64,
    /// Servers in config order.
    pub servers: Vec<ServerStatus>,
}

/// One server of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    /// `host:port` as written in the config.
    pub server: String,
    /// Resolved address, `null` when the name does not resolve.
    pub address: Option<SocketAddr>,
    /// Active checks say up and the name resolves (`gateway_upstream_healthy`).
    pub healthy: bool,
    /// Passively ejected right now.
    pub ejected: bool,
    /// Selection may pick it: healthy and not ejected.
    pub available: bool,
    /// Milliseconds of ejection left (0 when not ejected).
    pub ejected_for_ms: u64,
    /// Multiplier of `base_ejection` used by the last ejection.
    pub times_ejected: u32,
    /// Ejections since the server joined the pool (`gateway_upstream_ejections_total`).
    pub ejections_total: u64,
    /// Requests in flight to this server.
    pub inflight: usize,
    /// Failed requests in a row.
    pub consecutive_failures: u32,
    /// The last active check, `null` before the first.
    pub last_check: Option<LastCheck>,
}
