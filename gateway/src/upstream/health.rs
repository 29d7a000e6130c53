//! Active health checks (SPEC §7 "Health ejection"), run by `Upstreams::run_background`.
//!
//! Every server of every current pool gets `GET <path>` over plain HTTP/1.1 every `interval`,
//! bounded by `timeout`; a 2xx status is a success, anything else (other status, refused
//! connection, reset, timeout, unresolvable name) a failure. `fall` failures in a row mark the
//! server down, `rise` successes in a row mark it up again.
//!
//! Choices made here:
//! - Servers start healthy (as in Pingora and NGINX) and are checked at once; until the first
//!   verdict a dead server only costs a connect failure, which the proxy retries elsewhere.
//! - Fast re-check (HAProxy's `fastinter`): after a failed check on a server that is still up,
//!   the next check comes after `interval / 4` (at least 20 ms) instead of `interval`. A killed
//!   server is then down within `interval + (fall − 1) × interval / 4` (625 ms with the SPEC's
//!   500 ms × 2), inside the SPEC's "stops receiving traffic within 1 s".
//! - The proxy may call `UpstreamPool::recheck_soon` on a connect failure: the server's next
//!   check is brought forward (never closer than the fast interval to the previous one), so a
//!   killed server that still gets traffic is down after `fall` quick checks (~125 ms).
//! - The name is resolved again before every check, so a server whose name vanishes (a stopped
//!   compose container) loses its address at once and is no longer selected.
//! - A check that fails for a local reason (the gateway is out of file descriptors, socket
//!   buffers, memory or ephemeral ports: see [`super::local`]) is inconclusive: it changes
//!   neither the rise/fall counters nor the verdict nor the address, is counted in
//!   `gateway_local_resource_errors_total{kind}`, and the next check comes after `interval`.
//!   Otherwise a gateway flooded with idle client connections would mark every server down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::model::HealthCheck;

use super::local::{fd_shortage_now, io_local_resource, LocalResource};
use super::pool::UpstreamPool;
use super::resolve::{self, ResolveError};
use super::server::ServerState;
use super::Upstreams;

/// Longest wait for the resolver before a check.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest sleep of the scheduler when nothing is due (it is also woken by reloads and by
/// finished checks).
const IDLE_TICK: Duration = Duration::from_millis(250);
/// Shortest fast re-check interval.
const MIN_FAST_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes read at most while looking for the status line.
const MAX_STATUS_LINE: usize = 1024;

/// The result of the last active check of a server (shown on `/status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastCheck {
    /// When the check started, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Whether it succeeded (2xx).
    pub ok: bool,
    /// `HTTP 200`, or what went wrong.
    pub detail: String,
    /// How long it took.
    pub duration_ms: u64,
    /// The check could not be made for a local reason (e.g. out of file descriptors) and was
    /// not counted either way; `ok` is false and `detail` says why.
    #[serde(default)]
    pub inconclusive: bool,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// The name did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// TCP connect failed (refused, unreachable...).
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// Writing the request or reading the answer failed.
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The answer did not start with an HTTP/1.x status line.
    #[error("not an HTTP/1.x response")]
    BadResponse,
    /// No answer within the check's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with a non-2xx status.
    #[error("HTTP {0}")]
    Status(u16),
    /// The gateway itself ran out of a resource: says nothing about the server.
    #[error("inconclusive, local {} while {phase}: {error}", kind.as_str())]
    Local {
        /// Which resource.
        kind: LocalResource,
        /// `resolving`, `connecting` or `talking` (to the server).
        phase: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
}

impl CheckError {
    /// Reclassifies an I/O failure during `phase` that was the gateway's own resource shortage.
    fn local_or(
        error: std::io::Error,
        phase: &'static str,
        other: fn(std::io::Error) -> CheckError,
    ) -> CheckError {
        match io_local_resource(&error) {
            Some(kind) => CheckError::Local { kind, phase, error },
            None => other(error),
        }
    }
}

/// Check bookkeeping of one server, touched only by the background checker.
#[derive(Debug)]
pub(crate) struct HealthProgress {
    successes: u32,
    failures: u32,
    next_due: Instant,
    /// When the last check started (`None` before the first).
    last_started: Option<Instant>,
    running: bool,
    pub(crate) last: Option<LastCheck>,
}

impl HealthProgress {
    /// Due at once.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            successes: 0,
            failures: 0,
            next_due: now,
            last_started: None,
            running: false,
            last: None,
        }
    }
}

/// The scheduler: forever, starts the checks that are due (each in its own task, never two at
/// once for one server) and sleeps until the next one is due, a reload or a finished check.
pub(crate) async fn run(upstreams: Arc<Upstreams>) {
    loop {
        let now = Instant::now();
        let mut wake = now + IDLE_TICK;
        let pools = upstreams.snapshot();
        for pool in pools.values() {
            for server in pool.server_states() {
                let mut progress = server.health.lock();
                if progress.running {
                    continue;
                }
                if progress.next_due <= now {
                    progress.running = true;
                    progress.last_started = Some(now);
                    drop(progress);
                    let task = check_server(
                        Arc::clone(&upstreams),
                        Arc::clone(pool),
                        Arc::clone(server),
                        now,
                    );
                    tokio::spawn(task);
                } else {
                    wake = wake.min(progress.next_due);
                }
            }
        }
        drop(pools);
        tokio::select! {
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = upstreams.changed.notified() => {}
        }
    }
}

/// Clears the `running` flag even if the check task is cancelled, and wakes the scheduler.
struct Running {
    upstreams: Arc<Upstreams>,
    server: Arc<ServerState>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.health.lock().running = false;
        self.upstreams.changed.notify_one();
    }
}

/// Resolves, checks and records one server.
async fn check_server(
    upstreams: Arc<Upstreams>,
    pool: Arc<UpstreamPool>,
    server: Arc<ServerState>,
    started: Instant,
) {
    let _running = Running {
        upstreams,
        server: Arc::clone(&server),
    };
    let hc = &pool.config().health_check;
    let result = match resolve::resolve(&server.spec, RESOLVE_TIMEOUT).await {
        Ok(addr) => {
            server.set_addr(Some(addr));
            let timeout = hc.timeout.max(Duration::from_millis(1));
            match tokio::time::timeout(timeout, probe(addr, &server.label, &hc.path)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => Ok(status),
                Ok(Ok(status)) => Err(CheckError::Status(status)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(CheckError::Timeout(timeout)),
            }
        }
        Err(ResolveError::Lookup {
            server: name,
            source,
        }) => {
            // The resolver could not open a socket or file: keep the last address. Its error
            // does not always say so (glibc's NSS modules turn EMFILE into other errors, EBUSY
            // seen with mdns4_minimal), so when it does not, ask whether this process can open
            // a descriptor right now.
            match io_local_resource(&source).or_else(fd_shortage_now) {
                Some(kind) => Err(CheckError::Local {
                    kind,
                    phase: "resolving",
                    error: source,
                }),
                None => {
                    server.set_addr(None);
                    Err(CheckError::Resolve(ResolveError::Lookup {
                        server: name,
                        source,
                    }))
                }
            }
        }
        Err(e) => {
            // A name that no longer resolves: forget the old address (it may be reused by
            // another container). A resolver that is merely slow keeps the last address.
            if !matches!(e, ResolveError::Timeout { .. }) {
                server.set_addr(None);
            }
            Err(CheckError::Resolve(e))
        }
    };
    record(&server, pool.name(), hc, started, result);
}

/// Applies one check result to the server's rise/fall counters and health verdict.
pub(crate) fn record(
    server: &ServerState,
    pool: &str,
    hc: &HealthCheck,
    started: Instant,
    result: Result<u16, CheckError>,
) {
    if let Err(e @ CheckError::Local { kind, .. }) = &result {
        kind.record();
        let mut progress = server.health.lock();
        // Warn when a run of inconclusive checks starts, not on every one of them.
        if progress.last.as_ref().is_none_or(|l| !l.inconclusive) {
            tracing::warn!(upstream = pool, server = %server.label, error = %e,
                "health check skipped: the gateway is short of a local resource (not counted against the server)");
        } else {
            tracing::debug!(upstream = pool, server = %server.label, error = %e, "health check skipped");
        }
        progress.next_due = started + hc.interval;
        progress.last = Some(LastCheck {
            at_unix_ms: unix_ms(SystemTime::now()).saturating_sub(millis(started.elapsed())),
            ok: false,
            detail: e.to_string(),
            duration_ms: millis(started.elapsed()),
            inconclusive: true,
        });
        return;
    }
    let ok = result.is_ok();
    let detail = match &result {
        Ok(status) => format!("HTTP {status}"),
        Err(e) => e.to_string(),
    };
    let mut progress = server.health.lock();
    let healthy = server.is_healthy();
    let mut healthy_now = healthy;
    if ok {
        progress.failures = 0;
        progress.successes = progress.successes.saturating_add(1);
        if !healthy && progress.successes >= hc.rise.max(1) {
            server.set_healthy(true);
            healthy_now = true;
            tracing::info!(upstream = pool, server = %server.label, "upstream server is up");
        }
    } else {
        progress.successes = 0;
        progress.failures = progress.failures.saturating_add(1);
        if healthy && progress.failures >= hc.fall.max(1) {
            server.set_healthy(false);
            healthy_now = false;
            tracing::warn!(upstream = pool, server = %server.label, error = %detail, "upstream server is down");
        } else if healthy {
            tracing::debug!(upstream = pool, server = %server.label, error = %detail, "upstream health check failed");
        }
    }
    let delay = if !ok && healthy_now {
        fast_interval(hc)
    } else {
        hc.interval
    };
    progress.next_due = started + delay;
    progress.last = Some(LastCheck {
        at_unix_ms: unix_ms(SystemTime::now()).saturating_sub(millis(started.elapsed())),
        ok,
        detail,
        duration_ms: millis(started.elapsed()),
        inconclusive: false,
    });
}

/// The fast re-check interval: `interval / 4`, at least 20 ms, at most `interval`.
pub(crate) fn fast_interval(hc: &HealthCheck) -> Duration {
    (hc.interval / 4).max(MIN_FAST_INTERVAL).min(hc.interval)
}

impl HealthProgress {
    /// Brings the next check forward to `now`, but no earlier than `min_gap` after the last
    /// check started. Returns whether anything changed (and the scheduler should wake).
    pub(crate) fn expedite(&mut self, now: Instant, min_gap: Duration) -> bool {
        let earliest = self.last_started.map_or(now, |s| (s + min_gap).max(now));
        if self.running || self.next_due <= earliest {
            return false;
        }
        self.next_due = earliest;
        true
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// One `GET path` over a fresh connection; returns the status code.
async fn probe(addr: SocketAddr, host: &str, path: &str) -> Result<u16, CheckError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| CheckError::local_or(e, "connecting", CheckError::Connect))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gateway-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| CheckError::local_or(e, "talking", CheckError::Io))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    while len < buf.len() {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| CheckError::local_or(e, "talking", CheckError::Io))?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    parse_status_line(&buf[..len]).ok_or(CheckError::BadResponse)
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::ServerSpec;

    fn hc() -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 x\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2x0 OK"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn fall_then_rise_with_fast_recheck() {
        let server = ServerState::new(
            ServerSpec {
                host: "127.0.0.1".into(),
                port: 1,
            },
            None,
        );
        let t = Instant::now();
        record(&server, "p", &hc(), t, Ok(200));
        assert!(server.is_healthy());
        assert_eq!(
            server.health.lock().next_due,
            t + Duration::from_millis(500)
        );

        record(&server, "p", &hc(), t, Err(CheckError::Status(500)));
        assert!(server.is_healthy(), "one failure is not `fall`");
        assert_eq!(
            server.health.lock().next_due,
            t + Duration::from_millis(125),
            "fast re-check while failing"
        );
        record(&server, "p", &hc(), t, Err(CheckError::BadResponse));
        assert!(!server.is_healthy());
        assert_eq!(
            server.health.lock().next_due,
            t + Duration::from_millis(500)
        );

        record(&server, "p", &hc(), t, Ok(200));
        assert!(!server.is_healthy(), "one success is not `rise`");
        record(&server, "p", &hc(), t, Ok(204));
        assert!(server.is_healthy());
        let last = server.health.lock().last.clone().unwrap();
        assert!(last.ok);
        assert_eq!(last.detail, "HTTP 204");
    }

    #[test]
    fn expedite_respects_gap_and_running() {
        let t = Instant::now();
        let gap = Duration::from_millis(125);
        let mut p = HealthProgress::new(t);
        p.next_due = t + Duration::from_millis(500);
        p.last_started = Some(t);
        assert!(p.expedite(t + Duration::from_millis(10), gap));
        assert_eq!(
            p.next_due,
            t + gap,
            "not closer than the gap to the last check"
        );
        assert!(
            !p.expedite(t + Duration::from_millis(20), gap),
            "already that soon"
        );
        p.next_due = t + Duration::from_millis(500);
        assert!(p.expedite(t + Duration::from_millis(300), gap));
        assert_eq!(p.next_due, t + Duration::from_millis(300));
        p.next_due = t + Duration::from_millis(900);
        p.running = true;
        assert!(
            !p.expedite(t + Duration::from_millis(400), gap),
            "a check is running"
        );
    }

    #[test]
    fn local_resource_errors_are_inconclusive() {
        let server = ServerState::new(
            ServerSpec {
                host: "127.0.0.1".into(),
                port: 1,
            },
            None,
        );
        let t = Instant::now();
        let emfile = || {
            CheckError::local_or(
                std::io::Error::from_raw_os_error(libc::EMFILE),
                "connecting",
                CheckError::Connect,
            )
        };
        assert!(matches!(
            emfile(),
            CheckError::Local {
                kind: LocalResource::Emfile,
                ..
            }
        ));
        record(&server, "p", &hc(), t, Err(CheckError::Status(500)));
        for _ in 0..10 {
            record(&server, "p", &hc(), t, Err(emfile()));
        }
        assert!(server.is_healthy(), "local errors never mark a server down");
        assert_eq!(server.health.lock().failures, 1, "nor count as failures");
        assert_eq!(
            server.health.lock().next_due,
            t + Duration::from_millis(500),
            "next check after the normal interval"
        );
        let last = server.health.lock().last.clone().unwrap();
        assert!(last.inconclusive && !last.ok, "{last:?}");
        assert!(
            last.detail
                .starts_with("inconclusive, local emfile while connecting"),
            "{}",
            last.detail
        );
        // A down server does not come back either.
        record(&server, "p", &hc(), t, Err(CheckError::Status(500)));
        assert!(!server.is_healthy());
        record(&server, "p", &hc(), t, Err(emfile()));
        assert!(!server.is_healthy());
        assert_eq!(server.health.lock().successes, 0);
        // A refused connection is the server's problem.
        let refused = CheckError::local_or(
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
            "connecting",
            CheckError::Connect,
        );
        assert!(matches!(refused, CheckError::Connect(_)));
    }

    #[tokio::test]
    async fn refused_connection_fails_fast() {
        // Bind then drop a listener to find a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let err = probe(addr, "x", "/health").await.unwrap_err();
        assert!(matches!(err, CheckError::Connect(_)), "{err}");
    }
}
