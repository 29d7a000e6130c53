//! The limits stage of the request path: a route's `limit_req` rules (all checked, committed only
//! if all pass) then its `limit_conn` rules, turned into owned outcomes the proxy acts on.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::HeaderMap;

use crate::config::model::Route;
use crate::limit::req::{self, ReqCheck, ReqDecision};
use crate::limit::{resolve_key, ConnPermit, RateLimitHeaders};
use crate::state::RouteRuntime;

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
    match req::check(&checks, now) {
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
