//! The limits stage of the request path: a route's `limit_req` rules (all checked, committed only
//! if all pass) then its `limit_conn` rules, turned into owned outcomes the proxy acts on.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use smallvec::SmallVec;

use crate::access_log::LimiterNote;
use crate::config::model::Route;
use crate::limit::req::{self, ReqCheck, ReqDecision, StoredState};
use crate::limit::{resolve_key, ConnPermit, LimitKeyValue, LimitStore, RateLimitHeaders};
use crate::metrics::Metrics;
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
    /// `RateLimit-Policy` value (made once per zone and rule, see
    /// [`RateLimitHeaders::policy_header`]).
    pub policy: HeaderValue,
    /// `RateLimit` value.
    pub state: String,
}

impl RateLimitFields {
    fn of(h: &RateLimitHeaders<'_>) -> Self {
        RateLimitFields {
            policy: h.policy_header(),
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
    let checks: SmallVec<[ReqCheck<'_>; 4]> = route
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
    let reply = store.decide(keys, flat).await.ok()?;
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

/// What `limit_conn` decided for one request (the permits are handed out separately: they are
/// held, this is recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnOutcome {
    /// Proceed.
    Pass {
        /// Dry-run zones that would have rejected.
        dry_run_rejected: Vec<String>,
    },
    /// Answer `limit_conn_status`.
    Reject {
        /// The rejecting zone.
        zone: String,
    },
}

/// Counts the request in every `limit_conn` zone of the route, or rejects it. On a pass, the
/// permits (one per enforcing zone the request is counted in) are to be kept until it ends.
pub fn limit_conn(
    route: &Route,
    rt: &RouteRuntime,
    client_ip: IpAddr,
    headers: &HeaderMap,
) -> (ConnOutcome, Vec<ConnPermit>) {
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
                let zone = rejected.zone().to_string();
                // The permits taken so far are released here: the request goes no further.
                return (ConnOutcome::Reject { zone }, Vec::new());
            }
        }
    }
    (ConnOutcome::Pass { dry_run_rejected }, permits)
}

/// Everything the limits decided about one request, recorded once and read by the answer, the
/// access log (its `limiter` and `limit_scope` fields) and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitRecord {
    /// Where the `limit_req` decision was taken.
    pub scope: LimitScope,
    /// The `limit_req` outcome, once checked.
    pub req: Option<ReqOutcome>,
    /// The `limit_conn` outcome, once checked.
    pub conn: Option<ConnOutcome>,
}

impl LimitRecord {
    /// The limiter field of the access log: a rejection, else a delay, else the first dry-run
    /// zone that would have rejected (`limit_req` before `limit_conn`), else a pass.
    pub fn note(&self) -> LimiterNote<'_> {
        if let Some(ConnOutcome::Reject { zone }) = &self.conn {
            return LimiterNote::Rejected(zone);
        }
        let conn_dry_run = match &self.conn {
            Some(ConnOutcome::Pass { dry_run_rejected }) => dry_run_rejected.first(),
            _ => None,
        };
        match &self.req {
            Some(ReqOutcome::Reject { zone, .. }) => LimiterNote::Rejected(zone),
            Some(ReqOutcome::Pass { delay, .. }) if !delay.is_zero() => {
                LimiterNote::Delayed(delay.as_millis() as u64)
            }
            Some(ReqOutcome::Pass {
                dry_run_rejected, ..
            }) => match dry_run_rejected.first().or(conn_dry_run) {
                Some(zone) => LimiterNote::DryRun(zone),
                None => LimiterNote::Pass,
            },
            None => conn_dry_run.map_or(LimiterNote::Pass, |z| LimiterNote::DryRun(z)),
        }
    }

    /// The `RateLimit-Policy` / `RateLimit` values to echo on the upstream's response, taken
    /// out of the record (the log and the metrics do not use them).
    pub fn take_rate_limit_fields(&mut self) -> Option<RateLimitFields> {
        match &mut self.req {
            Some(ReqOutcome::Pass { fields, .. }) => fields.take(),
            _ => None,
        }
    }

    /// Counts the record in the limiter metrics (rejected, delayed and dry-run, per zone).
    pub fn count(&self, m: &Metrics) {
        match &self.req {
            Some(ReqOutcome::Reject { zone, .. }) => {
                m.ratelimit_rejected.with_label_values(&[zone]).inc()
            }
            Some(ReqOutcome::Pass {
                delay,
                delayed_zone,
                dry_run_rejected,
                ..
            }) => {
                if let (false, Some(z)) = (delay.is_zero(), delayed_zone) {
                    m.ratelimit_delayed.with_label_values(&[z]).inc();
                }
                for z in dry_run_rejected {
                    m.ratelimit_dry_run.with_label_values(&[z]).inc();
                }
            }
            None => {}
        }
        match &self.conn {
            Some(ConnOutcome::Reject { zone }) => {
                m.limit_conn_rejected.with_label_values(&[zone]).inc()
            }
            Some(ConnOutcome::Pass { dry_run_rejected }) => {
                for z in dry_run_rejected {
                    m.limit_conn_dry_run.with_label_values(&[z]).inc();
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(delay_ms: u64, delayed: Option<&str>, dry_run: &[&str]) -> ReqOutcome {
        ReqOutcome::Pass {
            delay: Duration::from_millis(delay_ms),
            delayed_zone: delayed.map(str::to_string),
            dry_run_rejected: dry_run.iter().map(|z| z.to_string()).collect(),
            fields: None,
        }
    }

    fn record(req: Option<ReqOutcome>, conn: Option<ConnOutcome>) -> LimitRecord {
        LimitRecord {
            scope: LimitScope::Local,
            req,
            conn,
        }
    }

    fn conn_pass(dry_run: &[&str]) -> Option<ConnOutcome> {
        Some(ConnOutcome::Pass {
            dry_run_rejected: dry_run.iter().map(|z| z.to_string()).collect(),
        })
    }

    #[test]
    fn the_log_note_names_the_strongest_decision() {
        assert_eq!(record(None, None).note(), LimiterNote::Pass);
        assert_eq!(
            record(Some(pass(0, None, &[])), conn_pass(&[])).note(),
            LimiterNote::Pass
        );
        let reject = ReqOutcome::Reject {
            zone: "a".into(),
            retry_after_secs: 1,
            fields: RateLimitFields {
                policy: HeaderValue::from_static(""),
                state: String::new(),
            },
        };
        assert_eq!(
            record(Some(reject), None).note(),
            LimiterNote::Rejected("a")
        );
        // A delay outranks the dry runs of both limiters.
        assert_eq!(
            record(Some(pass(250, Some("a"), &["d"])), conn_pass(&["c"])).note(),
            LimiterNote::Delayed(250)
        );
        // limit_req's dry run comes before limit_conn's.
        assert_eq!(
            record(Some(pass(0, None, &["d"])), conn_pass(&["c"])).note(),
            LimiterNote::DryRun("d")
        );
        assert_eq!(
            record(Some(pass(0, None, &[])), conn_pass(&["c"])).note(),
            LimiterNote::DryRun("c")
        );
        // A limit_conn rejection outranks what limit_req did before it.
        let conn_reject = Some(ConnOutcome::Reject { zone: "c".into() });
        assert_eq!(
            record(Some(pass(250, Some("a"), &[])), conn_reject).note(),
            LimiterNote::Rejected("c")
        );
    }

    #[test]
    fn the_record_counts_each_decision_once() {
        let m = Metrics::new();
        record(Some(pass(250, Some("a"), &["d"])), conn_pass(&["c"])).count(&m);
        record(
            Some(pass(0, None, &[])),
            Some(ConnOutcome::Reject { zone: "c".into() }),
        )
        .count(&m);
        assert_eq!(m.ratelimit_delayed.with_label_values(&["a"]).get(), 1);
        assert_eq!(m.ratelimit_dry_run.with_label_values(&["d"]).get(), 1);
        assert_eq!(m.limit_conn_dry_run.with_label_values(&["c"]).get(), 1);
        assert_eq!(m.limit_conn_rejected.with_label_values(&["c"]).get(), 1);
        assert_eq!(m.ratelimit_rejected.with_label_values(&["a"]).get(), 0);
    }
}
