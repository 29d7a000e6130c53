//! One structured access-log line per request (target `access`), written from `logging()`, and
//! one per answer given before a request reached the proxy logic ([`write_early`]).

use std::fmt;
use std::net::IpAddr;

/// What the limiters did with a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimiterNote<'a> {
    /// No limit applied, or all passed at once.
    #[default]
    Pass,
    /// Held by `limit_req` for this many milliseconds.
    Delayed(u64),
    /// Rejected by this zone (`limit_req` or `limit_conn`).
    Rejected(&'a str),
    /// A dry-run zone would have rejected.
    DryRun(&'a str),
}

impl fmt::Display for LimiterNote<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimiterNote::Pass => f.write_str("pass"),
            LimiterNote::Delayed(ms) => write!(f, "delayed:{ms}"),
            LimiterNote::Rejected(zone) => write!(f, "rejected:{zone}"),
            LimiterNote::DryRun(zone) => write!(f, "dry_run:{zone}"),
        }
    }
}

/// The fields of one access-log line.
#[derive(Debug)]
pub struct Entry<'a> {
    /// `X-Request-Id`.
    pub request_id: &'a str,
    /// Client IP (after trusted proxies).
    pub client_ip: Option<IpAddr>,
    /// Method.
    pub method: &'a str,
    /// Path (without query).
    pub path: &'a str,
    /// Route label.
    pub route: &'a str,
    /// Upstream server of the last attempt (`host:port`), if any.
    pub upstream_server: Option<&'a str>,
    /// Response status (0 when nothing could be sent).
    pub status: u16,
    /// Duration in milliseconds.
    pub duration_ms: f64,
    /// Limiter decision.
    pub limiter: LimiterNote<'a>,
    /// Where the `limit_req` decision was taken: `-`, `local`, `cluster` or `fallback`.
    pub limit_scope: &'a str,
    /// Error, if the request failed.
    pub error: Option<&'a str>,
}

/// Writes the line.
pub fn write(e: &Entry<'_>) {
    tracing::info!(
        target: "access",
        request_id = e.request_id,
        client_ip = %DisplayOpt(e.client_ip.as_ref()),
        method = e.method,
        path = e.path,
        route = e.route,
        upstream_server = e.upstream_server.unwrap_or("-"),
        status = e.status,
        duration_ms = e.duration_ms,
        limiter = %e.limiter,
        limit_scope = e.limit_scope,
        error = e.error.unwrap_or("-"),
        "request"
    );
}

/// An answer given on the connection before the proxy logic saw the request (a head refused
/// while it was read or parsed, a late head): see `client::deadline`.
#[derive(Debug)]
pub struct EarlyEntry<'a> {
    /// The `X-Request-Id` sent with the answer.
    pub request_id: &'a str,
    /// The socket peer (trusted proxies are not applied: the head was not read).
    pub client_ip: Option<IpAddr>,
    /// Method from the request line, `-` when unknown.
    pub method: &'a str,
    /// Path from the request line, `-` when unknown.
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// Milliseconds the head took, when it was held back (else 0).
    pub duration_ms: f64,
    /// Why the request was refused.
    pub reason: &'a str,
}

/// Writes the line for an early answer: the same fields as [`write`], route `none`, the reason
/// as the error.
pub fn write_early(e: &EarlyEntry<'_>) {
    write(&Entry {
        request_id: e.request_id,
        client_ip: e.client_ip,
        method: e.method,
        path: e.path,
        route: "none",
        upstream_server: None,
        status: e.status,
        duration_ms: e.duration_ms,
        limiter: LimiterNote::Pass,
        limit_scope: "-",
        error: Some(e.reason),
    });
}

struct DisplayOpt<'a, T>(Option<&'a T>);

impl<T: fmt::Display> fmt::Display for DisplayOpt<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}
