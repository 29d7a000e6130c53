//! The Pingora [`ProxyHttp`] implementation. Each hook reads top to bottom like the request path
//! in ARCHITECTURE.md and only calls into the modules that own each concept:
//!
//! ```text
//! request_filter   request id → path normalized → /health → route → client_ip → body size
//!                  → limit_req → limit_conn → body received → bulkhead → breaker
//! upstream_peer    select a server not yet tried → HttpPeer with timeouts capped by the deadline
//! fail_to_connect  report the failure; retry on another server while `retries` allow
//! upstream_*       headers upstream; outcome (status → success/failure/neutral) → pool + breaker
//! fail_to_proxy    502 / 503 / 504 / 413 / 408 as JSON (respond.rs)
//! logging          metrics + access log, exactly once per request
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::TcpKeepalive;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, OrErr, Result};

use crate::access_log;
use crate::admission::{self, ConnOutcome, LimitRecord, LimitScope, RateLimitFields, ReqOutcome};
use crate::client::body::{self as req_body, BodyError, Plan};
use crate::client::{self, BodyLimit, DeclaredBody};
use crate::forward::{self, X_FORWARDED_FOR, X_REAL_IP, X_REQUEST_ID};
use crate::limit::ConnPermit;
use crate::respond::{self, Answer};
use crate::route;
use crate::state::{Snapshot, State};
use crate::upstream::{BreakerPermit, BulkheadPermit, Outcome, ServerInflightGuard};

// Names looked up on every request, made once: a `&str` name is parsed again at each lookup.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The gateway's proxy logic.
#[derive(Debug, Clone)]
pub struct Gateway {
    state: Arc<State>,
}

impl Gateway {
    /// A proxy serving from `state`.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// Why the gateway ended a request itself after `request_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No server available (or all tried without a connect error to report).
    NoHealthy,
    /// Every allowed attempt failed to connect.
    Unreachable,
    /// The route's whole-request deadline passed.
    Deadline,
    /// The request body exceeded `max_body_bytes`.
    BodyTooLarge,
    /// The client sent its body too slowly (`body_timeout`, or the deadline passed first).
    ClientTimeout,
    /// The gateway itself ran out of a local resource (fds, buffers, ports) connecting upstream.
    LocalResource,
}

/// The server of the current attempt.
#[derive(Debug)]
struct Attempt {
    index: usize,
    _guard: ServerInflightGuard,
    /// The attempt's timeouts were cut short by the route deadline.
    capped: bool,
    /// The attempt's outcome went to its server's health and the metrics: each attempt is
    /// reported once, by whichever hook learns how it ended first.
    reported: bool,
}

/// Why the upstream's own guards refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The bulkhead had no slot in time.
    Bulkhead,
    /// The circuit breaker is open.
    Circuit,
}

/// The admission stage: what the limits, the bulkhead and the breaker decided, and the permits
/// held until the request ends.
#[derive(Debug, Default)]
struct Admission {
    /// The limiters' decisions (answer, access log, metrics).
    limits: LimitRecord,
    /// `limit_conn` permits.
    conn_permits: Vec<ConnPermit>,
    /// The bulkhead slot.
    bulkhead: Option<BulkheadPermit>,
    /// The breaker permit, settled once with the request's outcome.
    breaker: Option<BreakerPermit>,
    /// The bulkhead or the breaker refused the request.
    refused: Option<Refusal>,
    /// Time spent before the upstream was asked: limiter delay, receiving the body, bulkhead
    /// queue. A timeout that this time cut short is not the upstream's failure.
    local_wait: Duration,
}

/// The request body.
#[derive(Debug)]
struct BodyState {
    /// Bytes counted against `max_body_bytes`.
    limit: BodyLimit,
    /// How the body is handled; `Buffer` once it has been received whole.
    plan: Plan,
    /// The body was chunked and received whole: it goes upstream with this `Content-Length`.
    length: Option<u64>,
    /// `100 Continue` was sent by the gateway (the upstream is not asked again).
    continue_sent: bool,
}

/// The upstream side: the attempts made and the one under way.
#[derive(Debug, Default)]
struct Attempts {
    /// Servers this request failed to connect to (never selected again for it).
    tried: Vec<usize>,
    /// The current attempt's server and its in-flight guard.
    current: Option<Attempt>,
    /// `host:port` of the last server tried.
    server: Option<Arc<str>>,
    /// The last connect failure, for the access log.
    connect_error: Option<String>,
}

/// How the request ended when the gateway ended it itself.
#[derive(Debug, Default)]
struct Ending {
    /// Why the gateway ended the request, if it did.
    failure: Option<Failure>,
    /// Status of an answer the gateway wrote itself.
    local_status: Option<u16>,
}

/// Per-request state. Dropped when the request ends, which releases the `limit_conn` permits,
/// the bulkhead slot and the server's in-flight count it holds.
pub struct RequestCtx {
    /// When `request_filter` started (the head has been read).
    started: Instant,
    /// The configuration generation this request runs on, start to end.
    snapshot: Option<Arc<Snapshot>>,
    /// Index of the matched route in `snapshot`.
    route: Option<usize>,
    /// Route label when there is no route (`none`, `health`).
    route_label: &'static str,
    /// `X-Request-Id`, kept from the client or generated; one value shared by the upstream
    /// request, the response and the log.
    request_id: HeaderValue,
    /// The socket peer.
    peer_ip: Option<IpAddr>,
    /// The client after trusted proxies.
    client_ip: Option<IpAddr>,
    /// `client_ip` (else `peer_ip`) as text, formatted once for `X-Real-IP`, `X-Forwarded-For`
    /// and the access log ([`RequestCtx::client_text`]).
    client_ip_text: Option<HeaderValue>,
    /// The route's whole-request deadline.
    deadline: Option<Instant>,
    /// The normalized path, when it differs from what the client sent (forwarded instead).
    upstream_path: Option<String>,
    admission: Admission,
    body: BodyState,
    upstream: Attempts,
    ending: Ending,
}

impl RequestCtx {
    fn route_rt(&self) -> Option<(&Snapshot, usize)> {
        Some((self.snapshot.as_deref()?, self.route?))
    }

    fn remaining(&self) -> Duration {
        self.deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// The client's address as text (`client_ip`, else `peer_ip`), formatted on first use.
    fn client_text(&mut self) -> Option<HeaderValue> {
        if self.client_ip_text.is_none() {
            self.client_ip_text = self.client_ip.or(self.peer_ip).map(ip_value);
        }
        self.client_ip_text.clone()
    }

    /// The request id as text (it is printable ASCII by construction).
    fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// Whether `e` (or the gateway's own `failure`) says something about the upstream's health.
    /// Only what the upstream did counts: the client's slowness, the gateway's own queueing and
    /// a deadline that ran out before the upstream was asked are neutral.
    fn outcome_of(&self, e: &Error) -> Outcome {
        let timed_out = match self.ending.failure {
            Some(Failure::Deadline) => true,
            Some(_) => return Outcome::Neutral,
            None if *e.esource() == ErrorSource::Upstream => is_timeout(e),
            None => return Outcome::Neutral,
        };
        if !timed_out {
            return Outcome::Failure;
        }
        match &self.upstream.current {
            // The deadline passed before any attempt: all of it was spent in the gateway.
            None => Outcome::Neutral,
            // The attempt had less than its own timeout because of time spent before it.
            Some(a) if a.capped && !self.admission.local_wait.is_zero() => Outcome::Neutral,
            Some(_) => Outcome::Failure,
        }
    }

    /// Ends the current attempt with `outcome` (once): its server's health (passive checks,
    /// ejection) and `gateway_upstream_requests_total`. The breaker is not touched: a failed
    /// connect may still be retried on another server.
    fn end_attempt(&mut self, outcome: Outcome) {
        let (Some(snap), Some(r)) = (self.snapshot.as_deref(), self.route) else {
            return;
        };
        let Some(attempt) = self.upstream.current.as_mut() else {
            return;
        };
        if attempt.reported {
            return;
        }
        attempt.reported = true;
        let rt = &snap.routes[r];
        rt.pool.report(attempt.index, outcome);
        rt.attempts.count(attempt.index, outcome);
    }

    /// Settles the request with its final `outcome`, whichever hook knows it first: the current
    /// attempt (if not yet reported) and the breaker permit. Later calls change nothing.
    fn settle(&mut self, outcome: Outcome) {
        self.end_attempt(outcome);
        if let Some(permit) = self.admission.breaker.take() {
            outcome.settle(permit);
        }
    }

    /// Counts the ended request: requests and duration of its route, the limiters' decisions,
    /// the upstream guards' refusals.
    fn count(&self, state: &State, status: u16, elapsed: Duration) {
        let current;
        let snap = match self.snapshot.as_deref() {
            Some(s) => s,
            None => {
                // The request ended before `request_filter` took a snapshot.
                current = state.snapshot();
                &current
            }
        };
        let route = self
            .route
            .map(|r| (&snap.config.routes[r], &snap.routes[r]));
        let metrics = match (route, self.route_label) {
            (Some((_, rt)), _) => &rt.metrics,
            (None, "health") => &snap.health,
            (None, _) => &snap.unrouted,
        };
        metrics.record(status, elapsed);
        let m = &state.metrics;
        self.admission.limits.count(m);
        if let (Some(refusal), Some((route, _))) = (self.admission.refused, route) {
            let family = match refusal {
                Refusal::Bulkhead => &m.bulkhead_rejected,
                Refusal::Circuit => &m.circuit_rejected,
            };
            family.with_label_values(&[route.upstream.as_str()]).inc();
        }
    }
}

/// A client-supplied `X-Request-Id` is kept when it is short and printable; otherwise a UUID v4.
fn request_id(req: &RequestHeader) -> HeaderValue {
    if let Some(v) = req.headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(u8::is_ascii_graphic) {
            // The client's value itself: no copy.
            return v.clone();
        }
    }
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// An IP address as a header value.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::try_from(ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
    };
    // Once per request: four octets through itoa into a stack buffer. `to_string` runs the
    // formatting machinery (width, padding) for each octet, about a thousand instructions more.
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

fn is_connect_error(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::SocketError
            | ErrorType::BindError
    )
}

fn is_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ReadTimedout | ErrorType::WriteTimedout
    )
}

/// The answer for a request that failed after `request_filter`.
fn failure_answer(failure: Option<Failure>, e: &Error) -> Option<Answer> {
    Some(match failure {
        Some(Failure::BodyTooLarge) => Answer::error(
            413,
            "payload_too_large",
            "request body exceeds max_body_bytes",
        )
        .closing(),
        Some(Failure::NoHealthy) => Answer::error(
            503,
            "no_healthy_upstream",
            "no upstream server is available",
        )
        .header("retry-after", "1"),
        Some(Failure::Deadline) => {
            Answer::error(504, "upstream_timeout", "the route's deadline passed")
        }
        Some(Failure::ClientTimeout) => request_timeout(),
        Some(Failure::LocalResource) => Answer::error(
            503,
            "gateway_overloaded",
            "the gateway is out of local resources (connections); try again",
        )
        .header("retry-after", "1"),
        Some(Failure::Unreachable) => Answer::error(
            502,
            "upstream_unreachable",
            "could not connect to an upstream server",
        ),
        None => match e.esource() {
            ErrorSource::Upstream if is_connect_error(e) => Answer::error(
                502,
                "upstream_unreachable",
                "could not connect to an upstream server",
            ),
            ErrorSource::Upstream if is_timeout(e) => Answer::error(
                504,
                "upstream_timeout",
                "the upstream server did not answer in time",
            ),
            ErrorSource::Upstream => Answer::error(
                502,
                "upstream_error",
                "the upstream server sent an invalid response",
            ),
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadTimedout => request_timeout(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                    return None
                }
                _ => Answer::error(400, "bad_request", "the request could not be read").closing(),
            },
            _ => match e.etype() {
                ErrorType::HTTPStatus(code) if (400..600).contains(code) => {
                    Answer::error(*code, "request_failed", "the request failed")
                }
                _ => Answer::error(
                    500,
                    "internal_error",
                    "the gateway failed to handle the request",
                ),
            },
        },
    })
}

/// 408 `request_timeout`: the client did not send its request in time (closes).
fn request_timeout() -> Answer {
    Answer::error(
        408,
        "request_timeout",
        "the request body was not received in time",
    )
    .closing()
}

/// The status of the final response already sent to the client, if any (`100 Continue` and
/// other informational heads do not count: an answer can still follow them).
fn final_status(session: &Session) -> Option<u16> {
    session
        .response_written()
        .map(|r| r.status.as_u16())
        .filter(|s| *s >= 200)
}

impl Gateway {
    /// Writes a local answer and remembers its status. Returns whether the connection stays
    /// open: the rest of the request body is discarded first (at most `client.max_body_bytes`,
    /// see [`respond::send`]), else the answer closes it.
    async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx, answer: Answer) -> bool {
        ctx.ending.local_status = Some(answer.status);
        let max_body_bytes = ctx
            .snapshot
            .as_ref()
            .map_or(0, |s| s.config.client.max_body_bytes);
        match respond::send(session, &answer, ctx.request_id(), max_body_bytes).await {
            Ok(keep_alive) => keep_alive,
            Err(e) => {
                tracing::debug!(error = %e, "writing a local answer failed");
                false
            }
        }
    }

    /// Receives the request body according to its [`Plan`]. Returns the answer to send when the
    /// request ends here (413, 408), or `None` to go on.
    async fn receive_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        client: &crate::config::model::ClientSettings,
    ) -> Option<Answer> {
        ctx.body.plan = req_body::plan(session, client.max_body_bytes);
        let deadline = ctx
            .deadline
            .unwrap_or_else(|| Instant::now() + client.body_timeout);
        match ctx.body.plan {
            Plan::Empty => None,
            Plan::Stream => {
                // Bounded read by read in `request_body_filter`.
                let left = deadline.saturating_duration_since(Instant::now());
                session.set_read_timeout(Some(client.body_timeout.min(left)));
                None
            }
            Plan::Buffer => {
                let received =
                    req_body::receive(session, &mut ctx.body.limit, client.body_timeout, deadline)
                        .await;
                match received {
                    Ok(r) => {
                        ctx.admission.local_wait += r.took;
                        ctx.body.continue_sent = r.continue_sent;
                        let chunked = session
                            .req_header()
                            .headers
                            .contains_key(http::header::TRANSFER_ENCODING);
                        ctx.body.length = chunked.then_some(r.bytes);
                        None
                    }
                    Err(BodyError::TooLarge) => {
                        ctx.ending.failure = Some(Failure::BodyTooLarge);
                        Some(
                            Answer::error(
                                413,
                                "payload_too_large",
                                "request body exceeds max_body_bytes",
                            )
                            .closing(),
                        )
                    }
                    Err(BodyError::TooSlow) => {
                        ctx.ending.failure = Some(Failure::ClientTimeout);
                        Some(request_timeout())
                    }
                    Err(BodyError::Broken(e)) => {
                        tracing::debug!(error = %e, "reading the request body failed");
                        Some(
                            Answer::error(400, "bad_request", "the request body could not be read")
                                .closing(),
                        )
                    }
                }
            }
        }
    }

    fn rejection(
        status: u16,
        zone: &str,
        retry_after: u64,
        fields: Option<&RateLimitFields>,
    ) -> Answer {
        let mut a = Answer::error(status, "rate_limited", "too many requests")
            .field("zone", zone)
            .header("retry-after", retry_after.to_string());
        if let Some(f) = fields {
            a = a
                .header("ratelimit-policy", f.policy.to_str().unwrap_or_default())
                .header("ratelimit", f.state.clone());
        }
        a
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    // Boxed: Pingora keeps the context in the request's future, which it moves into a new box
    // for every request on a connection (its `process_new_http` is an `async_trait` method), and
    // that future holds the context three times over. Inline, the 584-byte context made ~1.75 KB
    // of that per-request copy; boxed it is one small allocation.
    type CTX = Box<RequestCtx>;

    fn new_ctx(&self) -> Self::CTX {
        Box::new(RequestCtx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            route_label: "none",
            request_id: HeaderValue::from_static(""),
            peer_ip: None,
            client_ip: None,
            client_ip_text: None,
            deadline: None,
            upstream_path: None,
            admission: Admission::default(),
            body: BodyState {
                limit: BodyLimit::new(u64::MAX),
                plan: Plan::Empty,
                length: None,
                continue_sent: false,
            },
            upstream: Attempts::default(),
            ending: Ending::default(),
        })
    }

    async fn early_request_filter(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // The head reached the proxy logic: its answer is written, counted and logged here, so
        // the connection must pass it untouched (client/deadline.rs).
        client::deadline::mark_dispatched();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // The time spent reading the head is not the route's; start the clock here.
        ctx.started = Instant::now();
        ctx.request_id = request_id(session.req_header());
        let snap = self.state.snapshot();
        ctx.snapshot = Some(Arc::clone(&snap));
        // The idle wait before the next request (`client.keepalive_timeout`) is bounded by the
        // connection itself (client/deadline.rs), not by a timer around each Pingora read.
        let cfg = &snap.config;

        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip().to_canonical());
        ctx.peer_ip = Some(peer);

        // The path as routed (and forwarded): dot segments and repeated slashes resolved.
        let path = match route::normalize(session.req_header().uri.path()) {
            Ok(p) => p,
            Err(e) => {
                let a = Answer::error(400, "invalid_path", &e.to_string()).closing();
                self.answer(session, ctx, a).await;
                return Ok(true);
            }
        };
        if let std::borrow::Cow::Owned(p) = &path {
            ctx.upstream_path = Some(p.clone());
        }

        // The gateway's own health endpoint.
        let method = &session.req_header().method;
        if path == "/health" && (method == http::Method::GET || method == http::Method::HEAD) {
            ctx.route_label = "health";
            self.answer(session, ctx, Answer::health()).await;
            return Ok(true);
        }

        // Route: longest prefix.
        let Some(r) = route::find(&cfg.routes, &path) else {
            self.answer(session, ctx, Answer::no_route()).await;
            return Ok(true);
        };
        ctx.route = Some(r);
        let route = &cfg.routes[r];
        let rt = &snap.routes[r];
        ctx.deadline = Some(ctx.started + route.timeout);

        // Who the client is.
        let client_ip = client::client_ip(
            peer,
            &session.req_header().headers,
            &cfg.client.trusted_proxies,
        );
        ctx.client_ip = Some(client_ip);

        // Body size announced in the head.
        ctx.body.limit = BodyLimit::new(cfg.client.max_body_bytes);
        if let DeclaredBody::TooLarge(_) = ctx.body.limit.declared(&session.req_header().headers) {
            ctx.ending.failure = Some(Failure::BodyTooLarge);
            let a = Answer::error(
                413,
                "payload_too_large",
                "request body exceeds max_body_bytes",
            )
            .closing();
            self.answer(session, ctx, a).await;
            return Ok(true);
        }

        // limit_req: all zones checked, committed only if all pass. Routes with cluster zones
        // ask the shared store (at most timeout_ms, then their local fallback).
        let limits = &mut ctx.admission.limits;
        let decision = if rt.cluster {
            let (d, scope) = admission::limit_req_cluster(
                route,
                rt,
                client_ip,
                &session.req_header().headers,
                &self.state.store,
            )
            .await;
            limits.scope = scope;
            d
        } else {
            if !route.limit_req.is_empty() {
                limits.scope = LimitScope::Local;
            }
            admission::limit_req(
                route,
                rt,
                client_ip,
                &session.req_header().headers,
                // The request's arrival time (NGINX, too, decides with the time it read the
                // request at), not one more clock read.
                ctx.started,
            )
        };
        let decision = limits.req.insert(decision);
        match decision {
            ReqOutcome::Reject {
                zone,
                retry_after_secs,
                fields,
            } => {
                let a = Self::rejection(
                    cfg.limit_req_status,
                    zone,
                    *retry_after_secs,
                    Some(&*fields),
                );
                self.answer(session, ctx, a).await;
                return Ok(true);
            }
            ReqOutcome::Pass { delay, .. } if !delay.is_zero() => {
                let delay = *delay;
                let delay = delay.min(ctx.remaining());
                ctx.admission.local_wait += delay;
                tokio::time::sleep(delay).await;
            }
            ReqOutcome::Pass { .. } => {}
        }

        // limit_conn: the permits live in the context until the request ends.
        let (decision, permits) =
            admission::limit_conn(route, rt, client_ip, &session.req_header().headers);
        ctx.admission.conn_permits = permits;
        if let ConnOutcome::Reject { zone } = ctx.admission.limits.conn.insert(decision) {
            let a = Self::rejection(cfg.limit_conn_status, zone, 1, None);
            self.answer(session, ctx, a).await;
            return Ok(true);
        }

        // The body, received whole before the request may take upstream capacity.
        if let Some(a) = self.receive_body(session, ctx, &cfg.client).await {
            self.answer(session, ctx, a).await;
            return Ok(true);
        }

        // Bulkhead: a slot for the whole request (overflow is never an upstream failure).
        let pool = Arc::clone(&rt.pool);
        let queued = Instant::now();
        let slot = tokio::time::timeout(ctx.remaining(), pool.acquire_slot()).await;
        ctx.admission.local_wait += queued.elapsed();
        match slot {
            Ok(Ok(permit)) => ctx.admission.bulkhead = Some(permit),
            Ok(Err(_)) | Err(_) => {
                ctx.admission.refused = Some(Refusal::Bulkhead);
                let a = Answer::error(503, "upstream_overloaded", "the upstream is at capacity")
                    .field("upstream", route.upstream.as_str())
                    .header("retry-after", "1");
                self.answer(session, ctx, a).await;
                return Ok(true);
            }
        }

        // Circuit breaker.
        match pool.breaker() {
            Ok(permit) => ctx.admission.breaker = Some(permit),
            Err(open) => {
                ctx.admission.refused = Some(Refusal::Circuit);
                let secs = open.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let a = Answer::error(
                    503,
                    "circuit_open",
                    "the upstream's circuit breaker is open",
                )
                .field("upstream", route.upstream.as_str())
                .header("retry-after", secs.to_string());
                self.answer(session, ctx, a).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if ctx.body.plan != Plan::Stream {
            // Received and counted whole in `request_filter` (this is it, from the buffer).
            return Ok(());
        }
        if !end_of_stream {
            // The next read waits at most `body_timeout`, and never past the deadline.
            let body_timeout = ctx
                .snapshot
                .as_ref()
                .map_or(Duration::MAX, |s| s.config.client.body_timeout);
            let left = ctx.remaining();
            if left.is_zero() {
                ctx.ending.failure = Some(Failure::ClientTimeout);
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "request body not received before the route deadline",
                ));
            }
            session.set_read_timeout(Some(body_timeout.min(left)));
        }
        if let Some(chunk) = body {
            if !ctx.body.limit.add(chunk.len()) {
                ctx.ending.failure = Some(Failure::BodyTooLarge);
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body exceeds max_body_bytes",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some((snap, r)) = ctx.route_rt() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route in context",
            ));
        };
        let pool = Arc::clone(&snap.routes[r].pool);
        let remaining = ctx.remaining();
        if remaining.is_zero() {
            ctx.ending.failure = Some(Failure::Deadline);
            return Err(Error::explain(
                ErrorType::HTTPStatus(504),
                "route deadline passed",
            ));
        }
        let selected = match pool.select(&ctx.upstream.tried) {
            Ok(s) => s,
            Err(e) => {
                // After a connect failure in this request, that failure is the answer (the
                // failed server may already be marked down, leaving nothing "available").
                ctx.ending.failure = Some(if e.all_tried() || !ctx.upstream.tried.is_empty() {
                    Failure::Unreachable
                } else {
                    Failure::NoHealthy
                });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no upstream server available",
                ));
            }
        };
        ctx.upstream.server = Some(Arc::clone(&selected.server));
        ctx.upstream.current = Some(Attempt {
            index: selected.index,
            _guard: pool.server_guard(selected.index),
            capped: pool.config().read_timeout > remaining,
            reported: false,
        });
        let up = pool.config();
        let mut peer = HttpPeer::new(selected.addr, false, String::new());
        let opts = &mut peer.options;
        opts.connection_timeout = Some(up.connect_timeout.min(remaining));
        opts.total_connection_timeout = Some(up.connect_timeout.min(remaining));
        opts.read_timeout = Some(up.read_timeout.min(remaining));
        opts.write_timeout = Some(up.write_timeout.min(remaining));
        opts.idle_timeout = Some(up.keepalive_idle_timeout);
        opts.tcp_keepalive = up.tcp_keepalive.map(|k| TcpKeepalive {
            idle: k.idle,
            interval: k.interval,
            count: k.count as usize,
            #[cfg(target_os = "linux")]
            user_timeout: Duration::ZERO,
        });
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(kind) = crate::upstream::local_resource_error(&e) {
            // The gateway's own shortage (EMFILE...): nothing about the server, and another
            // server would fail the same way. Answer 503 at once, charge no one.
            kind.record();
            ctx.end_attempt(Outcome::Neutral);
            ctx.ending.failure = Some(Failure::LocalResource);
            e.set_retry(false);
            return e;
        }
        // Nothing was sent: safe to try another server while `retries` allow. Only connect
        // failures mark a server as tried: a stale pooled connection that Pingora retries on a
        // fresh one (idempotent requests only) may go to the same server again.
        ctx.end_attempt(Outcome::Failure);
        if let Some(attempt) = ctx.upstream.current.take() {
            // A server that refuses connections is probably gone: check it now rather than
            // at the next interval, so it leaves selection after `fall` quick checks.
            if let Some((snap, r)) = ctx.route_rt() {
                snap.routes[r].pool.recheck_soon(attempt.index);
            }
            ctx.upstream.tried.push(attempt.index);
        }
        let (retries, servers) = ctx.route_rt().map_or((0, 0), |(snap, r)| {
            let pool = &snap.routes[r].pool;
            (pool.config().retries as usize, pool.len())
        });
        let tried = ctx.upstream.tried.len();
        let may_retry = tried <= retries && tried < servers && !ctx.remaining().is_zero();
        ctx.upstream.connect_error = Some(e.to_string());
        e.set_retry(may_retry);
        if !may_retry {
            ctx.ending.failure = Some(if ctx.remaining().is_zero() {
                Failure::Deadline
            } else {
                Failure::Unreachable
            });
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Each address is formatted once: `X-Real-IP` and the `X-Forwarded-For` entry this hop
        // adds share the text when the client is the socket peer.
        let client = match ctx.client_ip {
            Some(_) => ctx.client_text(),
            None => None,
        };
        let peer = match (ctx.peer_ip, ctx.client_ip, &client) {
            (Some(p), Some(c), Some(text)) if p == c => text.clone(),
            (Some(p), _, _) => ip_value(p),
            (None, _, _) => HeaderValue::from_static(""),
        };
        let xff = forward::forwarded_for(session.req_header(), peer)?;
        forward::set_fields(
            upstream_request,
            [
                Some((X_FORWARDED_FOR, xff)),
                client.map(|c| (X_REAL_IP, c)),
                Some((X_REQUEST_ID, ctx.request_id.clone())),
            ],
        )?;
        if let Some(path) = &ctx.upstream_path {
            // Forward what was routed, never the raw path.
            let target = match upstream_request.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            let uri = target
                .parse::<http::Uri>()
                .or_err(ErrorType::InvalidHTTPHeader, "normalized path")?;
            upstream_request.set_uri(uri);
        }
        if let Some(len) = ctx.body.length {
            // A chunked body received whole goes upstream with one unambiguous length.
            upstream_request.remove_header(&http::header::TRANSFER_ENCODING);
            upstream_request.insert_header("content-length", len.to_string())?;
        }
        if ctx.body.continue_sent {
            upstream_request.remove_header(&http::header::EXPECT);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 {
            return Ok(());
        }
        let outcome = match ctx.route_rt() {
            Some((snap, r)) => snap.routes[r].pool.outcome_for_status(status),
            None => Outcome::Neutral,
        };
        ctx.settle(outcome);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        upstream_response.insert_header("x-request-id", ctx.request_id.clone())?;
        if upstream_response.status.as_u16() < 200
            || upstream_response.headers.contains_key(&RATELIMIT)
        {
            // An informational head (the final one follows), or the upstream's own fields.
            return Ok(());
        }
        if let Some(f) = ctx.admission.limits.take_rate_limit_fields() {
            // Moved, not copied: the values were made for this response.
            upstream_response.insert_header("ratelimit-policy", f.policy)?;
            upstream_response.insert_header("ratelimit", f.state)?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        // The whole-request deadline also bounds a slowly streamed response.
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            ctx.ending.failure = Some(Failure::Deadline);
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "route deadline passed",
            ));
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let client_slow = match e.esource() {
            ErrorSource::Downstream => *e.etype() == ErrorType::ReadTimedout,
            // A streamed body still arriving when time ran out: the upstream could not answer
            // a request it has not received.
            _ => {
                ctx.body.plan == Plan::Stream
                    && !session.is_body_done()
                    && (is_timeout(e) || ctx.ending.failure == Some(Failure::Deadline))
            }
        };
        if client_slow {
            ctx.ending.failure = Some(Failure::ClientTimeout);
        }
        let outcome = ctx.outcome_of(e);
        ctx.settle(outcome);
        if let Some(status) = final_status(session) {
            // Headers already went out: the only honest thing left is to close.
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        // Pingora 0.9 never reuses the client connection after a failed proxy attempt: its
        // `finish` takes the reuse flag `proxy_to_upstream` returned, which is false on every
        // error, and reads `can_reuse_downstream` only on the filter-error path. So these
        // answers honestly say `Connection: close` instead of promising a keep-alive that
        // would not be kept (and do not wait to discard a body for nothing).
        match failure_answer(ctx.ending.failure, e).map(Answer::closing) {
            Some(answer) => {
                let code = answer.status;
                let keep_alive = self.answer(session, ctx, answer).await;
                FailToProxy {
                    error_code: code,
                    can_reuse_downstream: keep_alive,
                }
            }
            None => FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            },
        }
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &Self::CTX, error: &Error) -> bool {
        // Errors the gateway answered itself (502/504/413/...) and clients that went away are in
        // the access log line with their cause; Pingora's error line would only repeat them.
        ctx.ending.local_status.is_some() || failure_answer(ctx.ending.failure, error).is_none()
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // Settle whatever is still open (client gone, deadline inside the body...).
        let outcome = e.map_or(Outcome::Neutral, |err| ctx.outcome_of(err));
        ctx.settle(outcome);

        let status = final_status(session)
            .or(ctx.ending.local_status)
            .unwrap_or(0);
        // One clock read for the metric and the log line.
        let elapsed = ctx.started.elapsed();
        ctx.count(&self.state, status, elapsed);

        let client_text = ctx.client_text();
        let route_label: &str = match ctx.route_rt() {
            Some((s, r)) => s.config.routes[r].path_prefix.as_str(),
            None => ctx.route_label,
        };
        let req = session.req_header();
        let err_text = match (ctx.ending.failure, &ctx.upstream.connect_error) {
            (Some(Failure::Unreachable), Some(c)) => Some(c.clone()),
            _ => e.map(|e| e.to_string()),
        };
        access_log::write(&access_log::Entry {
            request_id: ctx.request_id(),
            client_ip: client_text.as_ref().and_then(|v| v.to_str().ok()),
            method: req.method.as_str(),
            path: req.uri.path(),
            route: route_label,
            upstream_server: ctx.upstream.server.as_deref(),
            status,
            duration_ms: (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            limiter: ctx.admission.limits.note(),
            limit_scope: ctx.admission.limits.scope.as_str(),
            error: err_text.as_deref(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ip_value_is_the_address_as_text(bits: u32, v6: u128) {
            for ip in [IpAddr::V4(Ipv4Addr::from(bits)), IpAddr::V6(v6.into())] {
                let value = ip_value(ip);
                prop_assert_eq!(value.to_str().unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn ip_value_edges() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), text);
        }
    }
}
