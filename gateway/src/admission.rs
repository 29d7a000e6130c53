//! The limits stage of the request path: a route's `limit_req` rules (all checked, committed only
//! if all pass) then its `limit_conn` rules, turned into owned outcomes the proxy acts on.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::model::Route;
use crate::limit::req::{self, ReqCheck, ReqDecision, StoredState};
use crate::limit::{resolve_key, ConnPermit, LimitKeyValue, LimitStore, RateLimitHeaders};
use crate::state::RouteRuntime;

/// Where a request's `limit_req` decision was taken, for the access log (SPEC §10.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimitScope {
    /// No `limit_req` zone counted the request.
    #[default]
    None,
    /// Local zones only.
    Local,
    /// Its cluster zones were decided by the store.
    Cluster,
    /// The store could not be asked in time: cluster zones decided on their local fallback.
    Fallback,
}

impl LimitScope {
    /// `-`, `local`, `cluster` or `fallback`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::None => "-",
            LimitScope::Local => "local",
            LimitScope::Cluster => "cluster",
            LimitScope::Fallback => "fallback",
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFields {
    /// `RateLimit-Policy` value.
    pub policy: String,
    /// `RateLimit` value.
    pub state: String,
}

impl RateLimitFields {
    fn of(h: &RateLimitHeaders<'_>) -> Self {
        RateLimitFields {
            policy: h.policy_value(),
            state: h.value(),
        }
    }
}

/// What `limit_req` decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqOutcome {
    /// Proceed, after `delay` when it is non-zero.
    Pass {
        /// How long to hold the request.
        delay: Duration,
        /// The zone imposing the delay.
        delayed_zone: Option<String>,
        /// Dry-run zones that would have rejected.
        dry_run_rejected: Vec<String>,
        /// Header values of the most constrained enforcing zone, if any.
        fields: Option<RateLimitFields>,
    },
    /// Answer `limit_req_status`.
    Reject {
        /// The rejecting zone.
        zone: String,
        /// Whole seconds (≥ 1) until a request would pass.
        retry_after_secs: u64,
        /// Header values for the rejecting zone.
        fields: RateLimitFields,
    },
}

/// Checks the route's `limit_req` rules for a request from `client_ip` with `headers`.
pub fn limit_req(
    route: &Route,
    rt: &RouteRuntime,
    client_ip: IpAddr,
    headers: &HeaderMap,
    now: Instant,
) -> ReqOutcome {
    if route.limit_req.is_empty() {
        return ReqOutcome::Pass {
            delay: Duration::ZERO,
            delayed_zone: None,
            dry_run_rejected: Vec::new(),
            fields: None,
        };
    }
    let checks: Vec<ReqCheck<'_>> = route
        .limit_req
        .iter()
        .zip(rt.req_zones.iter())
        .filter_map(|(rule, zone)| {
            resolve_key(zone.key_spec(), client_ip, headers).map(|key| ReqCheck {
                zone: zone.as_ref(),
                key,
                rule,
            })
        })
        .collect();
    outcome(req::check(&checks, now))
}

fn outcome(decision: ReqDecision<'_>) -> ReqOutcome {
    match decision {
        ReqDecision::Pass {
            delay,
            delayed_zone,
            dry_run_rejected,
            rate_limit,
        } => ReqOutcome::Pass {
            delay,
            delayed_zone: delayed_zone.map(str::to_string),
            dry_run_rejected: dry_run_rejected.into_iter().map(str::to_string).collect(),
            fields: rate_limit.as_ref().map(RateLimitFields::of),
        },
        ReqDecision::Reject {
            zone,
            retry_after_secs,
            rate_limit,
            ..
        } => ReqOutcome::Reject {
            zone: zone.to_string(),
            retry_after_secs: retry_after_secs.max(1),
            fields: RateLimitFields::of(&rate_limit),
        },
    }
}

/// The state key of `zone` for `key` in the store: `lr:{<key>}:<zone>`. The limit key is the hash
/// tag, so a request's zones with the same key live in one Redis Cluster slot.
fn store_key(key: &LimitKeyValue<'_>, zone: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + zone.len());
    k.extend_from_slice(b"lr:{");
    match key {
        LimitKeyValue::Ip(ip) => {
            let ip = std::net::Ipv6Addr::from(*ip).to_canonical();
            k.extend_from_slice(b"ip:");
            k.extend_from_slice(ip.to_string().as_bytes());
        }
        LimitKeyValue::Header(v) => {
            k.extend_from_slice(b"h:");
            k.extend_from_slice(v);
        }
        LimitKeyValue::Global => k.extend_from_slice(b"global"),
    }
    k.extend_from_slice(b"}:");
    k.extend_from_slice(zone.as_bytes());
    k
}

/// Combines two decisions of disjoint limits of one request: a rejection wins (the first one);
/// passes take the longer delay, both dry-run lists and the tighter RateLimit values.
fn merge<'a>(a: ReqDecision<'a>, b: ReqDecision<'a>) -> ReqDecision<'a> {
    match (a, b) {
        (r @ ReqDecision::Reject { .. }, _) | (_, r @ ReqDecision::Reject { .. }) => r,
        (
            ReqDecision::Pass {
                delay: da,
                delayed_zone: za,
                dry_run_rejected: mut ra,
                rate_limit: ha,
            },
            ReqDecision::Pass {
                delay: db,
                delayed_zone: zb,
                dry_run_rejected: rb,
                rate_limit: hb,
            },
        ) => {
            ra.extend(rb);
            let (delay, delayed_zone) = if db > da { (db, zb) } else { (da, za) };
            let rate_limit = match (ha, hb) {
                (Some(x), Some(y)) => {
                    let y_tighter = y.remaining() < x.remaining()
                        || (y.remaining() == x.remaining() && y.reset_secs() > x.reset_secs());
                    Some(if y_tighter { y } else { x })
                }
                (x, y) => x.or(y),
            };
            ReqDecision::Pass {
                delay,
                delayed_zone,
                dry_run_rejected: ra,
                rate_limit,
            }
        }
    }
}

/// The decision of one group of cluster limits (one hash tag) in the store, or `None` when the
/// store could not be asked or answer in time.
async fn decide_in_store<'a>(
    store: &LimitStore,
    group: &[ReqCheck<'a>],
) -> Option<ReqDecision<'a>> {
    let keys: Vec<Vec<u8>> = group
        .iter()
        .map(|c| store_key(&c.key, c.zone.name()))
        .collect();
    let args: Vec<[u64; 3]> = group.iter().map(req::store_args).collect();
    let flat: Vec<u64> = args.iter().flatten().copied().collect();
    let reply = store.decide(&keys, &flat).await.ok()?;
    if reply.len() != 2 + 3 * group.len() {
        tracing::warn!(len = reply.len(), "limit store: unexpected reply length");
        return None;
    }
    let now = reply[0].max(0) as u64;
    let states: Vec<StoredState> = reply[2..]
        .chunks_exact(3)
        .map(|c| StoredState {
            now,
            node: (c[0] == 1).then_some((c[1].max(0) as u64, c[2].max(0) as u64)),
        })
        .collect();
    let decision = req::decide_stored(group, &args, &states);
    debug_assert_eq!(
        matches!(decision, ReqDecision::Reject { .. }),
        reply[1] == 1,
        "the store and the gateway disagree on the arithmetic"
    );
    Some(decision)
}

/// [`limit_req`] for a route with `scope: cluster` zones (SPEC §10.1): its local zones are
/// looked up first (accounting nothing), then its cluster zones are decided atomically in the
/// store (one round trip per limit key; a route whose cluster zones share the key costs one),
/// and the local zones are accounted only if everything passed. A cluster group the store cannot
/// decide within `timeout_ms` (error, timeout, breaker open) is decided on the zones' local
/// fallback buckets at `rate / N`.
///
/// Not atomic across groups: when a route's cluster zones use different keys (so different
/// slots), a group that passed stays charged if a later group rejects; likewise cluster zones
/// stay charged if a local zone rejects in the instant between its look-up and its accounting.
pub async fn limit_req_cluster(
    route: &Route,
    rt: &RouteRuntime,
    client_ip: IpAddr,
    headers: &HeaderMap,
    store: &LimitStore,
) -> (ReqOutcome, LimitScope) {
    let mut local: Vec<ReqCheck<'_>> = Vec::new();
    let mut cluster: Vec<ReqCheck<'_>> = Vec::new();
    for (rule, zone) in route.limit_req.iter().zip(rt.req_zones.iter()) {
        if let Some(key) = resolve_key(zone.key_spec(), client_ip, headers) {
            let c = ReqCheck {
                zone: zone.as_ref(),
                key,
                rule,
            };
            if zone.is_cluster() {
                cluster.push(c);
            } else {
                local.push(c);
            }
        }
    }
    if cluster.is_empty() {
        let scope = if local.is_empty() {
            LimitScope::None
        } else {
            LimitScope::Local
        };
        return (outcome(req::check(&local, Instant::now())), scope);
    }
    if !local.is_empty() {
        let peeked = req::peek(&local, Instant::now());
        if let ReqDecision::Reject { .. } = peeked {
            return (outcome(peeked), LimitScope::Local);
        }
    }
    // Group by limit key: one script per hash tag on Redis Cluster; all at once on one Redis.
    let mut groups: Vec<Vec<ReqCheck<'_>>> = Vec::new();
    if store.is_cluster() {
        for c in cluster {
            match groups.iter_mut().find(|g| g[0].key == c.key) {
                Some(g) => g.push(c),
                None => groups.push(vec![c]),
            }
        }
    } else {
        groups.push(cluster);
    }
    let mut scope = LimitScope::Cluster;
    let mut decision: Option<ReqDecision<'_>> = None;
    for group in &groups {
        let d = match decide_in_store(store, group).await {
            Some(d) => d,
            None => {
                scope = LimitScope::Fallback;
                let now = Instant::now();
                let n = store.gateways();
                for c in group {
                    if c.zone.share() != n {
                        c.zone.set_share(n);
                    }
                    c.zone.mark_fallback(now);
                }
                req::check(group, now)
            }
        };
        let rejected = matches!(d, ReqDecision::Reject { .. });
        decision = Some(match decision {
            None => d,
            Some(prev) => merge(prev, d),
        });
        if rejected {
            break;
        }
    }
    let mut decision = decision.unwrap_or(ReqDecision::Pass {
        delay: Duration::ZERO,
        delayed_zone: None,
        dry_run_rejected: Vec::new(),
        rate_limit: None,
    });
    if !local.is_empty() && matches!(decision, ReqDecision::Pass { .. }) {
        decision = merge(decision, req::check(&local, Instant::now()));
    }
    (outcome(decision), scope)
}

/// What `limit_conn` decided for one request.
#[derive(Debug)]
pub enum ConnOutcome {
    /// Proceed; keep the permits until the request ends.
    Pass {
        /// One permit per enforcing zone the request is counted in.
        permits: Vec<ConnPermit>,
        /// Dry-run zones that would have rejected.
        dry_run_rejected: Vec<String>,
    },
    /// Answer `limit_conn_status`.
    Reject {
        /// The rejecting zone.
        zone: String,
    },
}

/// Counts the request in every `limit_conn` zone of the route, or rejects it.
pub fn limit_conn(
    route: &Route,
    rt: &RouteRuntime,
    client_ip: IpAddr,
    headers: &HeaderMap,
) -> ConnOutcome {
    let mut permits = Vec::new();
    let mut dry_run_rejected = Vec::new();
    for (rule, zone) in route.limit_conn.iter().zip(rt.conn_zones.iter()) {
        let Some(key) = resolve_key(zone.key_spec(), client_ip, headers) else {
            continue;
        };
        match zone.try_acquire(&key, rule.max) {
            // Dry-run zones count accepted requests too (as NGINX's limit_conn_dry_run does):
            // otherwise they could never see the concurrency that would trip them.
            Ok(permit) => permits.push(permit),
            Err(rejected) if rule.dry_run => dry_run_rejected.push(rejected.zone().to_string()),
            Err(rejected) => {
                return ConnOutcome::Reject {
                    zone: rejected.zone().to_string(),
                }
            }
        }
    }
    ConnOutcome::Pass {
        permits,
        dry_run_rejected,
    }
}
