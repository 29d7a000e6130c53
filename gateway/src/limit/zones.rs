//! The registry of live limit zones, kept across config reloads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::Serialize;

use super::conn::ConnZone;
use super::req::ReqZone;
use crate::config::model::{GatewayConfig, Rate};

/// A cluster zone counts as in fallback this long after its last fallback decision.
pub const FALLBACK_SHOWN_FOR: Duration = Duration::from_secs(1);

/// All `limit_req` and `limit_conn` zones of the running config.
///
/// Look zones up once per config generation (right after [`Zones::apply`]) and keep the `Arc`s
/// with the routes: [`Zones::req_zone`] takes a read lock and clones an `Arc`, cheap but shared
/// between threads.
#[derive(Debug, Default)]
pub struct Zones {
    req: RwLock<HashMap<String, Arc<ReqZone>>>,
    conn: RwLock<HashMap<String, Arc<ConnZone>>>,
}

/// `/status` view of the zones (camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZonesStatus {
    /// `limit_req` zones by name.
    pub limit_req: BTreeMap<String, ReqZoneStatus>,
    /// `limit_conn` zones by name.
    pub limit_conn: BTreeMap<String, ConnZoneStatus>,
}

/// `/status` view of one `limit_req` zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReqZoneStatus {
    /// Keys tracked.
    pub keys: usize,
    /// Upper bound of tracked keys.
    pub max_keys: usize,
    /// The rate in config notation, e.g. `"2r/s"` or `"100r/m"`.
    pub rate: String,
    /// `local` or `cluster` (SPEC §10.1).
    pub scope: &'static str,
    /// A cluster zone deciding on its local fallback bucket (store unreachable); always false
    /// for local zones.
    pub fallback: bool,
    /// The rate the fallback bucket decides on (`rate / gateways`), for cluster zones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_rate: Option<String>,
}

/// `/status` view of one `limit_conn` zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnZoneStatus {
    /// Keys with requests in flight.
    pub keys: usize,
    /// Upper bound of tracked keys.
    pub max_keys: usize,
    /// Requests in flight over all keys.
    pub inflight: u64,
}

/// Writes a rate back in config notation. The model keeps only milli-requests per second, so a
/// rate is shown as `Nr/s` when whole, else as the one `Nr/m` that NGINX's `N·1000/60` maps onto
/// it, else (never produced by the config parser) as `Nmr/s` (milli-requests per second).
pub fn rate_notation(rate: Rate) -> String {
    let m = rate.milli_per_sec;
    if m.is_multiple_of(1000) {
        return format!("{}r/s", m / 1000);
    }
    // floor(n·1000/60) == m  ⇔  n ∈ [m·60/1000, (m+1)·60/1000): at most one integer.
    let n = (m * 60).div_ceil(1000);
    if n * 1000 / 60 == m {
        format!("{n}r/m")
    } else {
        format!("{m}mr/s")
    }
}

impl Zones {
    /// No zones.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the zones match `cfg`: creates new zones, keeps the per-key state of zones whose name
    /// still exists (rate and `max_keys` updated in place; a zone whose key kind changed starts
    /// empty, as NGINX refuses such a reload), and drops zones no longer configured. Requests
    /// holding an `Arc` of a dropped or rebuilt zone finish against it.
    pub fn apply(&self, cfg: &GatewayConfig) {
        {
            let mut req = self.req.write();
            req.retain(|name, _| cfg.limit_req_zones.contains_key(name));
            for (name, zcfg) in &cfg.limit_req_zones {
                let replacement = match req.get(name) {
                    Some(z) if z.can_update_in_place(zcfg) => {
                        z.update(zcfg);
                        None
                    }
                    Some(z) if z.key_spec() == &zcfg.key => Some(ReqZone::rebuilt_from(zcfg, z)),
                    _ => Some(ReqZone::new(zcfg)),
                };
                if let Some(zone) = replacement {
                    req.insert(name.clone(), Arc::new(zone));
                }
            }
        }
        let mut conn = self.conn.write();
        conn.retain(|name, _| cfg.limit_conn_zones.contains_key(name));
        for (name, zcfg) in &cfg.limit_conn_zones {
            match conn.get(name) {
                Some(z) if z.can_update_in_place(zcfg) => z.update(zcfg),
                _ => {
                    conn.insert(name.clone(), Arc::new(ConnZone::new(zcfg)));
                }
            }
        }
    }

    /// The live `limit_req` zone called `name`.
    pub fn req_zone(&self, name: &str) -> Option<Arc<ReqZone>> {
        self.req.read().get(name).cloned()
    }

    /// Every live `limit_req` zone.
    pub fn req_zones(&self) -> Vec<Arc<ReqZone>> {
        self.req.read().values().cloned().collect()
    }

    /// The live `limit_conn` zone called `name`.
    pub fn conn_zone(&self, name: &str) -> Option<Arc<ConnZone>> {
        self.conn.read().get(name).cloned()
    }

    /// Keys tracked per zone, for `/status`.
    pub fn status(&self) -> ZonesStatus {
        let limit_req = self
            .req
            .read()
            .iter()
            .map(|(name, z)| {
                (
                    name.clone(),
                    ReqZoneStatus {
                        keys: z.keys(),
                        max_keys: z.max_keys(),
                        rate: rate_notation(z.rate()),
                        scope: z.scope().as_str(),
                        fallback: z.is_cluster()
                            && z.fell_back_within(Instant::now(), FALLBACK_SHOWN_FOR),
                        fallback_rate: z.is_cluster().then(|| rate_notation(z.local_rate())),
                    },
                )
            })
            .collect();
        let limit_conn = self
            .conn
            .read()
            .iter()
            .map(|(name, z)| {
                let (keys, inflight) = z.usage();
                (
                    name.clone(),
                    ConnZoneStatus {
                        keys,
                        max_keys: z.max_keys(),
                        inflight,
                    },
                )
            })
            .collect();
        ZonesStatus {
            limit_req,
            limit_conn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{
        ClientSettings, ConfigSource, LimitConnZone, LimitKey, LimitReqRule, LimitReqZone,
        ServerSettings,
    };
    use crate::limit::{check, LimitKeyValue, ReqCheck, ReqDecision};
    use std::time::SystemTime;

    fn config(req: &[(&str, u64, usize)], conn: &[&str]) -> GatewayConfig {
        GatewayConfig {
            server: ServerSettings {
                threads: 1,
                grace_period_seconds: 1,
                graceful_shutdown_timeout_seconds: 1,
                work_stealing: true,
                upstream_keepalive_pool_size: 128,
                fast_timeout_to_tokio_threshold_seconds: 900,
            },
            listen: "127.0.0.1:1".parse().expect("addr"),
            admin_listen: "127.0.0.1:2".parse().expect("addr"),
            client: ClientSettings {
                header_timeout: Duration::from_secs(1),
                max_header_bytes: 65536,
                max_body_bytes: 1,
                body_timeout: Duration::from_secs(10),
                keepalive_timeout: Duration::from_secs(60),
                keepalive_requests: 1000,
                trusted_proxies: Vec::new(),
                max_connections: None,
            },
            limit_req_status: 429,
            limit_conn_status: 429,
            limit_store: None,
            limit_req_zones: req
                .iter()
                .map(|&(name, milli, max_keys)| {
                    (
                        name.to_string(),
                        LimitReqZone {
                            name: name.to_string(),
                            key: LimitKey::ClientIp,
                            rate: Rate {
                                milli_per_sec: milli,
                            },
                            max_keys,
                            scope: Default::default(),
                        },
                    )
                })
                .collect(),
            limit_conn_zones: conn
                .iter()
                .map(|&name| {
                    (
                        name.to_string(),
                        LimitConnZone {
                            name: name.to_string(),
                            key: LimitKey::ClientIp,
                            max_keys: 100,
                        },
                    )
                })
                .collect(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            source: ConfigSource {
                path: "test".to_string(),
                sha256: String::new(),
                loaded_at: SystemTime::now(),
            },
        }
    }

    fn hit(z: &ReqZone, ip: u128, now: Instant) -> bool {
        let rule = LimitReqRule {
            zone: z.name().to_string(),
            burst: 0,
            nodelay: true,
            delay: 0,
            dry_run: false,
        };
        matches!(
            check(
                &[ReqCheck {
                    zone: z,
                    key: LimitKeyValue::Ip(ip),
                    rule: &rule
                }],
                now
            ),
            ReqDecision::Pass { .. }
        )
    }

    #[test]
    fn rate_notation_round_trips() {
        for (milli, text) in [
            (2000, "2r/s"),
            (1666, "100r/m"),
            (500, "30r/m"),
            (16, "1r/m"),
            (1234, "1234mr/s"),
        ] {
            assert_eq!(
                rate_notation(Rate {
                    milli_per_sec: milli
                }),
                text
            );
        }
    }

    #[test]
    fn apply_keeps_state_updates_in_place_and_drops_removed_zones() {
        let zones = Zones::new();
        zones.apply(&config(&[("a", 1000, 100_000), ("b", 1000, 100)], &["c"]));
        let a = zones.req_zone("a").expect("a");
        let now = Instant::now();
        assert!(hit(&a, 1, now));
        assert!(!hit(&a, 1, now));
        let b = zones.req_zone("b").expect("b");
        assert!(hit(&b, 1, now));

        // Reload: a gets a new rate (same layout), b a much larger max_keys (new layout), c goes.
        zones.apply(&config(&[("a", 500, 100_000), ("b", 1000, 1_000_000)], &[]));
        let a2 = zones.req_zone("a").expect("a");
        assert!(Arc::ptr_eq(&a, &a2), "updated in place");
        assert_eq!(a2.rate().milli_per_sec, 500);
        assert!(!hit(&a2, 1, now), "state kept");
        let b2 = zones.req_zone("b").expect("b");
        assert!(!Arc::ptr_eq(&b, &b2), "rebuilt");
        assert_eq!(b2.keys(), 1, "state moved");
        assert!(!hit(&b2, 1, now), "state kept across the rebuild");
        assert!(zones.conn_zone("c").is_none());

        let status = zones.status();
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["limitReq"]["a"]["keys"], 1);
        assert_eq!(json["limitReq"]["a"]["maxKeys"], 100_000);
        assert_eq!(json["limitReq"]["a"]["rate"], "30r/m");
        assert_eq!(json["limitReq"]["b"]["maxKeys"], 1_000_000);
        assert!(json["limitConn"].as_object().is_some_and(|m| m.is_empty()));

        zones.apply(&config(&[], &["c"]));
        assert!(zones.req_zone("a").is_none());
        let c = zones.conn_zone("c").expect("c");
        let _permit = c.try_acquire(&LimitKeyValue::Ip(1), 1).expect("permit");
        let json = serde_json::to_value(zones.status()).expect("json");
        assert_eq!(json["limitConn"]["c"]["keys"], 1);
        assert_eq!(json["limitConn"]["c"]["inflight"], 1);
        assert_eq!(json["limitConn"]["c"]["maxKeys"], 100);
    }
}
