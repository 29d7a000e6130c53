//! The client connection's request heads, before Pingora parses them: the head deadline
//! (`client.header_timeout_ms`), the head size limit (`client.max_header_bytes`), strict framing
//! checks, and SPEC §4 JSON for every answer given before a request reaches the proxy logic.
//!
//! Pingora 0.9 offers no hook between accepting a connection and parsing a head: it times out
//! each *single* read (so a client dripping a byte every few seconds holds a connection for
//! ever), accepts heads up to 1 MiB, and answers a head it cannot parse with a bare `400` (a
//! `CONNECT` with a bare `405`) that no hook sees, so no log line and no metric. This module
//! wraps the two places Pingora does expose:
//!
//! - [`HeadDeadlineApp`] is the listening service's [`ServerApp`]: it runs the same per-connection
//!   HTTP/1.1 loop as Pingora's own (`process_new_http` per request, keep-alive reuse) around
//!   [`HttpProxy`], over a [`DeadlineStream`], inside a task-local scope that the proxy's
//!   `early_request_filter` reaches through [`mark_dispatched`].
//! - [`DeadlineStream`] is the accepted connection. While a head is expected it **holds the head
//!   back**: bytes go to Pingora only once the blank line ending the head has arrived (a head that
//!   comes in one read — the usual case — is handed over in place, without a copy; a head in
//!   pieces is collected in one buffer kept per connection). So when the gateway refuses a head,
//!   Pingora has read nothing of it: the stream writes the answer itself and reports end of
//!   stream, which Pingora takes as a client that left (no error line). The stream refuses:
//!   - a head not complete within `header_timeout_ms` → `408` (timer from the accept for the
//!     first request, from the head's first byte on a kept-alive connection; a connection that
//!     sent nothing is just closed, as NGINX does);
//!   - a head larger than `max_header_bytes`, or with more header fields than Pingora parses
//!     (256) → `431`;
//!   - ambiguous framing, which RFC 9112 makes an error or lets a server reject and which Pingora
//!     would pass on ([`check_head`]): `Content-Length` with `Transfer-Encoding`, repeated
//!     `Content-Length` (Pingora forwards identical duplicates to the upstream as they are),
//!     a `Content-Length` that is not one decimal number, a `Transfer-Encoding` other than
//!     exactly `chunked` (`501` for an unknown coding before `chunked`, `400` otherwise), HTTP/1.0
//!     with `Transfer-Encoding`, an HTTP/1.1 head without exactly one `Host` → `400`.
//! - Heads that pass reach Pingora, which may still refuse them before any hook runs (header
//!   syntax: NUL, obs-fold, space before the colon...; `CONNECT`). The proxy's
//!   `early_request_filter` marks a head as dispatched; a response Pingora writes for a head that
//!   was never dispatched is swallowed and replaced by the JSON answer with the same status.
//!   Responses to dispatched requests (the proxy's own answers, upstream responses) are never
//!   touched, and are counted and logged by the proxy's `logging`.
//!
//! Every answer given here is counted once in `gateway_requests_total{route="none",status}` and
//! logged once (target `access`, [`access_log::write_early`]), closes the connection
//! (`Connection: close`), and is followed by a short lingering close (FIN, then reading and
//! discarding for at most [`LINGER_TIME`]) so that the client can read it before the socket
//! closes even if it was still sending.
//!
//! Limits, stated honestly: HTTP/2 (h2c) is not offered on the proxy listener, so every
//! connection goes through this HTTP/1.x loop. Body reads are never under the head deadline
//! (bodies have Pingora's per-read timeout and `max_body_bytes`).
//!
//! The idle wait between requests on a kept-alive connection is bounded here too
//! (`client.keepalive_timeout_ms`, closed quietly when it passes, as NGINX does): Pingora keeps
//! such a connection for ever unless given a keep-alive timeout, and that timeout wraps each read
//! in a new timer, one per request. Here one timer per connection is moved only when it fires.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
    ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::proxy::{HttpProxy, ProxyHttp};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use pingora::protocols::Stream;

use super::connections::{Admission, ConnectionCounter};
use crate::access_log;
use crate::metrics::Metrics;

/// Header fields Pingora parses per head (`MAX_HEADERS` in pingora-core, not exported); a head
/// with more would get Pingora's bare `400`.
pub const MAX_HEADER_FIELDS: usize = 256;

/// After an answer given here: how long the stream keeps reading (and discarding) what the
/// client still sends, after its FIN, before closing (NGINX's lingering close).
pub const LINGER_TIME: Duration = Duration::from_secs(2);

/// ... and at most this many bytes.
const LINGER_BYTES: usize = 1 << 20;

/// A held-head buffer larger than this is freed after use rather than kept for the connection.
const KEEP_CAPACITY: usize = 16 * 1024;

/// At most this much of a request line is kept for the access log.
const REQUEST_LINE_MAX: usize = 256;

/// The limits of one connection (read when it is accepted, so reloads apply to new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// `client.header_timeout`: the whole head must arrive within this.
    pub header_timeout: Duration,
    /// `client.max_header_bytes`: request line to blank line, inclusive.
    pub max_header_bytes: usize,
    /// `client.keepalive_requests`: requests served on the connection before it is closed.
    pub keepalive_requests: u32,
    /// `client.keepalive_timeout`: the longest idle wait for the next head on a kept-alive
    /// connection; then it is closed without an answer.
    pub keepalive_timeout: Duration,
}

/// Where connections take their limits from and count their answers.
pub trait ConnectionPolicy: Send + Sync {
    /// The current limits.
    fn head_limits(&self) -> HeadLimits;
    /// The metrics (`gateway_requests_total`, `gateway_header_timeouts_total`).
    fn metrics(&self) -> &Metrics;
    /// The current cap on client connections served at once.
    fn max_connections(&self) -> usize;
    /// The open client connections (one counter for the listener, kept across reloads).
    fn connections(&self) -> &Arc<ConnectionCounter>;
}

/// What one connection's stream and the proxy hooks running on it share.
#[derive(Debug, Default)]
struct ConnShared {
    /// Set by the app loop before each new request on a kept-alive connection.
    expect_head: AtomicBool,
    /// Set by the proxy's `early_request_filter` ([`mark_dispatched`]) for the current head.
    dispatched: AtomicBool,
}

tokio::task_local! {
    /// The connection being served by this task (scoped in [`HeadDeadlineApp::process_new`]).
    static CONNECTION: Arc<ConnShared>;
}

/// Called from the proxy's `early_request_filter`: the current head reached the proxy logic, so
/// whatever is written from now on for it is the proxy's answer (or the upstream's) and must pass
/// untouched. Outside a [`HeadDeadlineApp`] connection it does nothing.
pub fn mark_dispatched() {
    let _ = CONNECTION.try_with(|c| c.dispatched.store(true, Ordering::Relaxed));
}

/// The listening service's app: the proxy behind [`DeadlineStream`].
///
/// `SV::early_request_filter` must call [`mark_dispatched`]: without it, every response would be
/// taken for one of Pingora's early answers and replaced.
pub struct HeadDeadlineApp<SV: ProxyHttp> {
    proxy: Arc<HttpProxy<SV>>,
    policy: Arc<dyn ConnectionPolicy>,
}

impl<SV: ProxyHttp> HeadDeadlineApp<SV> {
    /// Wraps `proxy`; `policy` gives each new connection its limits and counts its answers.
    pub fn new(proxy: HttpProxy<SV>, policy: Arc<dyn ConnectionPolicy>) -> Self {
        Self {
            proxy: Arc::new(proxy),
            policy,
        }
    }
}

impl<SV: ProxyHttp> HeadDeadlineApp<SV> {
    /// A connection past `client.max_connections`: 503 at once (whatever the client sends is
    /// read and discarded during the lingering close), counted and logged, then closed.
    async fn refuse_connection(&self, stream: Stream) {
        let policy = Arc::clone(&self.policy);
        policy
            .metrics()
            .client_connections_refused
            .with_label_values(&["answered"])
            .inc();
        let limits = policy.head_limits();
        let mut refused =
            DeadlineStream::new(stream, limits, policy, Arc::new(ConnShared::default()));
        refused.early_answer(
            503,
            "gateway_overloaded",
            "too many client connections (client.max_connections); retry later",
        );
        refused.phase = Phase::Answer { written: 0 };
        let _ = std::future::poll_fn(|cx| refused.poll_answer(cx)).await;
    }
}

#[async_trait]
impl<SV> ServerApp for HeadDeadlineApp<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let slot = match self
            .policy
            .connections()
            .admit(self.policy.max_connections())
        {
            Admission::Serve(slot) => slot,
            Admission::Refuse(slot) => {
                self.refuse_connection(stream).await;
                drop(slot);
                return None;
            }
            Admission::Close => {
                self.policy
                    .metrics()
                    .client_connections_refused
                    .with_label_values(&["closed"])
                    .inc();
                return None;
            }
        };
        let shared = Arc::new(ConnShared::default());
        let limits = self.policy.head_limits();
        let wrapped = DeadlineStream::new(
            stream,
            limits,
            Arc::clone(&self.policy),
            Arc::clone(&shared),
        );
        let serve = async {
            // The same HTTP/1.1 loop as Pingora's `ServerApp for HttpServerApp`, without h2c.
            let mut session = ServerSession::new_http1(Box::new(wrapped));
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                // No timeout of Pingora's own on the first head read: the stream's deadline runs
                // from the accept. (Pingora's default here, 60 s over the whole held-back head,
                // would close a slow head quietly, without the 408, if header_timeout_ms > 60 s.)
                session.set_keepalive(Some(0));
            }
            // Pingora counts reuses: the first request plus `n - 1` reuses is `n` requests, and
            // the last one is answered with `Connection: close`.
            session
                .set_keepalive_reuses_remaining(Some(limits.keepalive_requests.saturating_sub(1)));
            let mut result = self.proxy.process_new_http(session, shutdown).await;
            while let Some((stream, persistent)) = result.map(|r| r.consume()) {
                shared.expect_head.store(true, Ordering::Release);
                let mut session = ServerSession::new_http1(stream);
                if let Some(p) = persistent {
                    p.apply_to_session(&mut session);
                }
                result = self.proxy.process_new_http(session, shutdown).await;
            }
        };
        CONNECTION.scope(Arc::clone(&shared), serve).await;
        drop(slot);
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Finds the end of a request head across reads the way Pingora's parser (httparse) does: empty
/// lines before the request line are skipped, then the head ends at the first empty line (`LF`
/// followed by `CRLF` or `LF`).
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// Bytes of the current head seen so far (leading empty lines included).
    seen: usize,
    /// The request line has started (a byte other than CR or LF was seen).
    started: bool,
    /// 0: inside a line; 1: just after an LF; 2: after LF CR.
    after_lf: u8,
}

impl HeadScan {
    /// Feeds the next bytes; `Some(n)` when the head ends after `data[..n]` (then the scan starts
    /// over for the next head).
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            if !self.started {
                if b != b'\r' && b != b'\n' {
                    self.started = true;
                    continue;
                }
                i += 1;
                continue;
            }
            match self.after_lf {
                0 => match data[i..].iter().position(|&c| c == b'\n') {
                    Some(p) => {
                        i += p + 1;
                        self.after_lf = 1;
                    }
                    None => i = data.len(),
                },
                1 if b == b'\r' => {
                    self.after_lf = 2;
                    i += 1;
                }
                _ if b == b'\n' => {
                    *self = HeadScan::default();
                    return Some(i + 1);
                }
                _ => {
                    // Not an empty line (a lone CR here is a syntax error Pingora reports).
                    self.after_lf = 0;
                    i += 1;
                }
            }
        }
        self.seen += data.len();
        None
    }
}

/// Why a complete head is refused before Pingora sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Status.
    pub status: u16,
    /// SPEC §4 error code.
    pub code: &'static str,
    /// Human text (JSON `message` and the access log's `error`).
    pub message: &'static str,
}

const fn bad_request(message: &'static str) -> Rejection {
    Rejection {
        status: 400,
        code: "bad_request",
        message,
    }
}

const TOO_MANY_FIELDS: Rejection = Rejection {
    status: 431,
    code: "request_header_too_large",
    message: "the request head has more than 256 header fields",
};

const TOO_LARGE: Rejection = Rejection {
    status: 431,
    code: "request_header_too_large",
    message: "the request head is larger than max_header_bytes",
};

/// The request line of a head (the first non-empty line, without its line end).
fn request_line(head: &[u8]) -> &[u8] {
    head.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Strict framing checks on a complete head (request line to blank line), for what Pingora
/// accepts but a strict proxy must not pass on (RFC 9112 §3.2, §6.1-§6.3, RFC 9110 §8.6).
/// Header *syntax* is left to Pingora's parser, which rejects it (and whose `400` is replaced);
/// on a syntactically valid head, lines split here exactly as the parser splits them.
/// Returns the request line.
pub fn check_head(head: &[u8]) -> Result<&[u8], Rejection> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip_while(|l| l.is_empty());
    let line = lines.next().unwrap_or_default();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    let http11 = version == b"HTTP/1.1";
    let (mut fields, mut hosts, mut lengths, mut codings) = (0usize, 0u32, 0u32, 0u32);
    let (mut length, mut coding): (&[u8], &[u8]) = (b"", b"");
    for line in lines {
        if line.is_empty() {
            break;
        }
        fields += 1;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = || line[colon + 1..].trim_ascii();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => hosts += 1,
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                lengths += 1;
                length = value();
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                codings += 1;
                coding = value();
            }
            _ => {}
        }
    }
    if fields > MAX_HEADER_FIELDS {
        return Err(TOO_MANY_FIELDS);
    }
    if codings > 0 {
        if !http11 {
            return Err(bad_request(
                "Transfer-Encoding is only allowed in HTTP/1.1 requests",
            ));
        }
        if lengths > 0 {
            return Err(bad_request(
                "Content-Length and Transfer-Encoding must not be sent together",
            ));
        }
        if codings > 1 {
            return Err(bad_request("more than one Transfer-Encoding field"));
        }
        transfer_coding(coding)?;
    } else if lengths > 1 {
        return Err(bad_request("more than one Content-Length field"));
    } else if lengths == 1 && !is_decimal_length(length) {
        return Err(bad_request("Content-Length is not a decimal number"));
    }
    if hosts > 1 {
        return Err(bad_request("more than one Host field"));
    }
    if hosts == 0 && http11 {
        return Err(bad_request("an HTTP/1.1 request must have a Host field"));
    }
    Ok(line)
}

/// Only `chunked` alone is understood (as by NGINX): `chunked` not last (or not there) → 400,
/// `chunked` twice → 400, another coding before it → 501.
fn transfer_coding(value: &[u8]) -> Result<(), Rejection> {
    if value.eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    let (mut n, mut chunked, mut last_chunked) = (0, 0, false);
    for c in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if c.is_empty() {
            continue;
        }
        n += 1;
        last_chunked = c.eq_ignore_ascii_case(b"chunked");
        chunked += u32::from(last_chunked);
    }
    if !last_chunked {
        return Err(bad_request("chunked is not the final transfer coding"));
    }
    if chunked > 1 {
        return Err(bad_request("chunked is applied more than once"));
    }
    if n > 1 {
        return Err(Rejection {
            status: 501,
            code: "not_implemented",
            message: "transfer codings other than chunked are not supported",
        });
    }
    Ok(())
}

/// `1*DIGIT` that fits in 64 bits (no sign, no spaces, no list).
fn is_decimal_length(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter().all(u8::is_ascii_digit)
        && std::str::from_utf8(v).is_ok_and(|s| s.parse::<u64>().is_ok())
}

/// The JSON code and message for an answer Pingora gave before dispatching a head.
fn describe(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => (
            "bad_request",
            "the request head is malformed or its framing is invalid",
        ),
        405 => ("method_not_allowed", "the CONNECT method is not supported"),
        408 => (
            "request_timeout",
            "the request head was not received in time",
        ),
        413 => ("payload_too_large", "the request is too large"),
        414 => ("uri_too_long", "the request target is too long"),
        431 => ("request_header_too_large", "the request head is too large"),
        501 => ("not_implemented", "the request uses an unsupported feature"),
        505 => (
            "http_version_not_supported",
            "the HTTP version is not supported",
        ),
        _ => ("request_rejected", "the request was rejected"),
    }
}

/// A complete closing JSON answer (SPEC §4).
fn answer_bytes(status: u16, code: &str, message: &str, request_id: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let extra = match status {
        // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
        405 => "allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n",
        // Only the connection cap answers 503 here: a second later there may be room.
        503 => "retry-after: 1\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The status of a serialized response head (`HTTP/1.1 400 ...`).
fn status_of(head: &[u8]) -> Option<u16> {
    let code = head.strip_prefix(b"HTTP/1.")?.get(2..5)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[derive(Debug)]
enum Phase {
    /// Waiting for (the rest of) a head; incomplete bytes are held in `held`.
    Head,
    /// A complete head (and what came with it) is handed over from `held[released..]`.
    Release,
    /// Pass-through until the next head is expected.
    Body,
    /// Writing our own answer (`reply[written..]`), then the lingering close.
    Answer { written: usize },
    /// Reading and discarding after the answer and the FIN.
    Linger { discarded: usize },
    /// End of stream for Pingora.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteState {
    /// Writes pass through.
    Pass,
    /// Writing the replacement of one of Pingora's early answers (`reply[written..]`).
    Replace { written: usize },
    /// The replacement is out; Pingora's bytes are dropped.
    Swallow,
}

/// An accepted connection whose request heads are held back, limited and checked.
pub struct DeadlineStream {
    inner: Stream,
    limits: HeadLimits,
    policy: Arc<dyn ConnectionPolicy>,
    shared: Arc<ConnShared>,
    phase: Phase,
    scan: HeadScan,
    /// The head deadline while a head is held (then the linger limit); `None` otherwise.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current timer started (for the access log's duration).
    timer_started: Option<Instant>,
    /// The idle limit between requests ([`DeadlineStream::idle_expired`]); made at the first
    /// idle wait and re-armed only when it fires, never per request.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the current idle wait began (a kept-alive connection waiting for its next head).
    idle_since: Option<Instant>,
    /// An incomplete head (then complete, being released), kept across requests.
    held: Vec<u8>,
    released: usize,
    /// Left-over bytes in `held` that belong to the next head: scan them first.
    rescan: bool,
    /// The current head's request line (truncated), for the access log of an early answer.
    line: Vec<u8>,
    /// Our own answer.
    reply: Vec<u8>,
    write: WriteState,
}

impl fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("inner", &self.inner)
            .field("limits", &self.limits)
            .field("phase", &self.phase)
            .field("held", &self.held.len())
            .field("write", &self.write)
            .finish()
    }
}

impl DeadlineStream {
    /// Wraps `inner`; the first head is due `limits.header_timeout` after now.
    fn new(
        inner: Stream,
        limits: HeadLimits,
        policy: Arc<dyn ConnectionPolicy>,
        shared: Arc<ConnShared>,
    ) -> Self {
        DeadlineStream {
            inner,
            limits,
            policy,
            shared,
            phase: Phase::Head,
            scan: HeadScan::default(),
            timer: Some(Box::pin(tokio::time::sleep(limits.header_timeout))),
            timer_started: Some(Instant::now()),
            idle: None,
            idle_since: None,
            held: Vec::new(),
            released: 0,
            rescan: false,
            line: Vec::new(),
            reply: Vec::new(),
            write: WriteState::Pass,
        }
    }

    /// The app loop announced the next request on this kept-alive connection.
    fn next_head(&mut self) {
        if !matches!(self.phase, Phase::Body | Phase::Release) {
            return;
        }
        // Bytes Pingora has not taken yet are the start of the next head.
        self.held.drain(..self.released);
        self.released = 0;
        self.rescan = !self.held.is_empty();
        self.scan = HeadScan::default();
        self.timer = None;
        self.timer_started = None;
        self.idle_since = Some(Instant::now());
        self.phase = Phase::Head;
        self.write = WriteState::Pass;
    }

    /// Whether the idle wait for the next head on a kept-alive connection passed
    /// `keepalive_timeout` (else the wake-up is registered).
    ///
    /// One timer per connection, not one per request: a timer set for an earlier idle wait is
    /// left armed, and when it fires before this wait is due it is moved to this wait's
    /// deadline. At steady load that is one timer event per connection and timeout period,
    /// where a timeout around each idle read (Pingora's keep-alive timeout) registers and
    /// cancels a timer for every request.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(since) = self.idle_since else {
            return false;
        };
        let due = since + self.limits.keepalive_timeout;
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= due {
                return true;
            }
            timer.as_mut().reset(due);
        }
        false
    }

    fn peer_ip(&self) -> Option<IpAddr> {
        self.inner
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| ip.to_canonical())
    }

    fn keep_line(&mut self, head: &[u8]) {
        self.set_line(request_line(head));
    }

    fn set_line(&mut self, line: &[u8]) {
        self.line.clear();
        self.line
            .extend_from_slice(&line[..line.len().min(REQUEST_LINE_MAX)]);
    }

    /// Counts and logs an answer given before dispatch, and prepares its bytes in `reply`.
    fn early_answer(&mut self, status: u16, code: &str, message: &str) {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.reply = answer_bytes(status, code, message, &request_id);
        let status_label = status.to_string();
        self.policy
            .metrics()
            .requests
            .with_label_values(&["none", status_label.as_str()])
            .inc();
        let line = String::from_utf8_lossy(&self.line);
        let mut parts = line.split(' ');
        let method = parts.next().filter(|m| !m.is_empty()).unwrap_or("-");
        let target = parts.next().unwrap_or("-");
        let path = target.split('?').next().unwrap_or(target);
        let duration_ms = self.timer_started.map_or(0.0, |t| {
            (t.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0
        });
        access_log::write_early(&access_log::EarlyEntry {
            request_id: &request_id,
            client_ip: self.peer_ip(),
            method,
            path,
            status,
            duration_ms,
            reason: message,
        });
    }

    /// Refuses the current head: our answer, then the lingering close, then end of stream.
    fn refuse(&mut self, r: Rejection, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.early_answer(r.status, r.code, r.message);
        self.held.clear();
        self.phase = Phase::Answer { written: 0 };
        self.poll_answer(cx)
    }

    /// The head deadline passed.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.timer = None;
        self.policy.metrics().header_timeouts.inc();
        if self.scan.seen == 0 && self.held.is_empty() {
            // Nothing of a head arrived: close without an answer (no request to log).
            tracing::debug!(
                client = ?self.peer_ip(),
                "connection sent nothing within header_timeout_ms; closing"
            );
            self.phase = Phase::Closed;
            return Poll::Ready(Ok(()));
        }
        let held = std::mem::take(&mut self.held);
        self.keep_line(&held);
        self.held = held;
        self.refuse(
            Rejection {
                status: 408,
                code: "request_timeout",
                message: "the request head was not received within header_timeout_ms",
            },
            cx,
        )
    }

    /// The current head (this request line) is complete and passed the checks: Pingora may
    /// have it.
    fn accept(&mut self, line: &[u8]) {
        self.set_line(line);
        self.idle_since = None;
        self.shared.dispatched.store(false, Ordering::Relaxed);
        self.timer = None;
        self.timer_started = None;
    }

    /// Hands `held[released..]` to Pingora.
    fn release(&mut self, buf: &mut ReadBuf<'_>) {
        let rest = &self.held[self.released..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.released += n;
        if self.released == self.held.len() {
            self.held.clear();
            self.released = 0;
            if self.held.capacity() > KEEP_CAPACITY {
                self.held = Vec::new();
            }
            self.phase = Phase::Body;
        }
    }

    /// Starts holding a head back (its first incomplete piece arrived).
    fn start_holding(&mut self) {
        if self.timer.is_none() {
            // A kept-alive connection's next head: the deadline runs from its first byte.
            self.timer = Some(Box::pin(tokio::time::sleep(self.limits.header_timeout)));
            self.timer_started = Some(Instant::now());
        }
    }

    /// `held[..head_len]` is a complete head: check it, then release everything held.
    fn held_complete(
        &mut self,
        head_len: usize,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let held = std::mem::take(&mut self.held);
        let checked = if head_len > self.limits.max_header_bytes {
            Err(TOO_LARGE)
        } else {
            check_head(&held[..head_len])
        };
        let checked = match checked {
            Ok(line) => {
                self.accept(line);
                Ok(())
            }
            Err(r) => {
                self.keep_line(&held[..head_len]);
                Err(r)
            }
        };
        self.held = held;
        if let Err(r) = checked {
            return self.refuse(r, cx);
        }
        self.phase = Phase::Release;
        self.release(buf);
        Poll::Ready(Ok(()))
    }

    fn poll_head(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.rescan {
            self.rescan = false;
            let held = std::mem::take(&mut self.held);
            let end = self.scan.feed(&held);
            self.held = held;
            self.start_holding();
            if let Some(end) = end {
                return self.held_complete(end, cx, buf);
            }
            if self.scan.seen > self.limits.max_header_bytes {
                let held = std::mem::take(&mut self.held);
                self.keep_line(&held);
                return self.refuse(TOO_LARGE, cx);
            }
        }
        loop {
            if let Some(timer) = self.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    return self.expire(cx);
                }
            }
            if self.scan.seen == 0 && self.held.is_empty() && self.idle_expired(cx) {
                // Idle too long between requests: close quietly, as NGINX does.
                tracing::debug!(
                    client = ?self.peer_ip(),
                    "kept-alive connection idle for keepalive_timeout_ms; closing"
                );
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match Pin::new(&mut self.inner).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    // Pingora has read nothing of this head: it ends the connection quietly.
                    self.held.clear();
                    self.phase = Phase::Closed;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {}
            }
            let new = &buf.filled()[before..];
            if new.is_empty() {
                if self.scan.seen > 0 {
                    tracing::debug!(
                        client = ?self.peer_ip(),
                        head_bytes = self.scan.seen,
                        "client closed the connection during a request head"
                    );
                }
                self.held.clear();
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(()));
            }
            let held_before = self.held.len();
            match self.scan.feed(new) {
                Some(end) if held_before == 0 => {
                    // The whole head in one read (the usual case): hand it over in place.
                    let checked = if end > self.limits.max_header_bytes {
                        Err(TOO_LARGE)
                    } else {
                        check_head(&new[..end])
                    };
                    let head = &new[..end];
                    return match checked {
                        Ok(line) => {
                            // `accept` needs `self` while `line` borrows `buf`: fine.
                            self.accept(line);
                            self.phase = Phase::Body;
                            Poll::Ready(Ok(()))
                        }
                        Err(r) => {
                            self.keep_line(head);
                            buf.set_filled(before);
                            self.refuse(r, cx)
                        }
                    };
                }
                Some(end) => {
                    self.held.extend_from_slice(new);
                    buf.set_filled(before);
                    return self.held_complete(held_before + end, cx, buf);
                }
                None => {
                    self.held.extend_from_slice(new);
                    buf.set_filled(before);
                    if self.scan.seen > self.limits.max_header_bytes {
                        let held = std::mem::take(&mut self.held);
                        self.keep_line(&held);
                        return self.refuse(TOO_LARGE, cx);
                    }
                    if held_before == 0 {
                        self.start_holding();
                    }
                    // Read on (polling the timer first registers its wake-up).
                }
            }
        }
    }

    /// Writes our answer, sends FIN, lingers, then reports end of stream.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.phase {
                Phase::Answer { written } => {
                    if *written < self.reply.len() {
                        match Pin::new(&mut self.inner).poll_write(cx, &self.reply[*written..]) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(n)) if n > 0 => *written += n,
                            Poll::Ready(_) => self.phase = Phase::Closed,
                        }
                        continue;
                    }
                    if ready!(Pin::new(&mut self.inner).poll_flush(cx)).is_err() {
                        self.phase = Phase::Closed;
                        continue;
                    }
                    // FIN after the answer; errors only mean the client is gone.
                    let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
                    self.timer = Some(Box::pin(tokio::time::sleep(LINGER_TIME)));
                    self.phase = Phase::Linger { discarded: 0 };
                }
                Phase::Linger { discarded } => {
                    let expired = self
                        .timer
                        .as_mut()
                        .is_none_or(|t| t.as_mut().poll(cx).is_ready());
                    if expired || *discarded > LINGER_BYTES {
                        self.phase = Phase::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            *discarded += rb.filled().len();
                        }
                        Poll::Ready(_) => self.phase = Phase::Closed,
                    }
                }
                _ => {
                    self.timer = None;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// Pingora writes a response for a head that never reached the proxy logic: swallow it and
    /// write our JSON answer with the same status instead.
    fn poll_replace(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        total: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            match &mut self.write {
                WriteState::Pass => {
                    let status = status_of(first).unwrap_or(400);
                    let (code, message) = describe(status);
                    self.early_answer(status, code, message);
                    self.write = WriteState::Replace { written: 0 };
                }
                WriteState::Replace { written } => {
                    if *written < self.reply.len() {
                        let n = ready!(
                            Pin::new(&mut self.inner).poll_write(cx, &self.reply[*written..])
                        )?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *written += n;
                    } else {
                        self.write = WriteState::Swallow;
                    }
                }
                WriteState::Swallow => return Poll::Ready(Ok(total)),
            }
        }
    }

    fn dispatched(&self) -> bool {
        self.shared.dispatched.load(Ordering::Relaxed)
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.shared.expect_head.load(Ordering::Acquire) {
            this.shared.expect_head.store(false, Ordering::Relaxed);
            this.next_head();
        }
        match this.phase {
            Phase::Body => Pin::new(&mut this.inner).poll_read(cx, buf),
            Phase::Release => {
                this.release(buf);
                Poll::Ready(Ok(()))
            }
            Phase::Head => this.poll_head(cx, buf),
            Phase::Answer { .. } | Phase::Linger { .. } | Phase::Closed => this.poll_answer(cx),
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dispatched() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.poll_replace(cx, buf, buf.len())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.dispatched() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let total = bufs.iter().map(|b| b.len()).sum();
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        this.poll_replace(cx, first, total)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        if self.write == WriteState::Pass {
            Shutdown::shutdown(&mut *self.inner).await;
            return;
        }
        // After a replaced answer: FIN, then a lingering close so the client can read it.
        let _ = AsyncWriteExt::shutdown(&mut self.inner).await;
        let inner = &mut self.inner;
        let _ = tokio::time::timeout(LINGER_TIME, async move {
            let mut scratch = [0u8; 4096];
            let mut discarded = 0;
            while discarded <= LINGER_BYTES {
                match inner.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        })
        .await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    struct Policy {
        metrics: Metrics,
        limits: HeadLimits,
        connections: Arc<ConnectionCounter>,
    }

    impl ConnectionPolicy for Policy {
        fn head_limits(&self) -> HeadLimits {
            self.limits
        }
        fn metrics(&self) -> &Metrics {
            &self.metrics
        }
        fn max_connections(&self) -> usize {
            usize::MAX
        }
        fn connections(&self) -> &Arc<ConnectionCounter> {
            &self.connections
        }
    }

    struct Conn {
        stream: DeadlineStream,
        client: DuplexStream,
        policy: Arc<Policy>,
        shared: Arc<ConnShared>,
    }

    fn conn(timeout_ms: u64, max_header_bytes: usize) -> Conn {
        let (client, server) = duplex(1 << 20);
        let policy = Arc::new(Policy {
            metrics: Metrics::new(),
            limits: HeadLimits {
                header_timeout: Duration::from_millis(timeout_ms),
                max_header_bytes,
                keepalive_requests: 1000,
                keepalive_timeout: Duration::from_secs(60),
            },
            connections: ConnectionCounter::new(),
        });
        let shared = Arc::new(ConnShared::default());
        let stream = DeadlineStream::new(
            Box::new(server),
            policy.limits,
            Arc::clone(&policy) as Arc<dyn ConnectionPolicy>,
            Arc::clone(&shared),
        );
        Conn {
            stream,
            client,
            policy,
            shared,
        }
    }

    impl Conn {
        fn answered(&self, status: &str) -> u64 {
            self.policy
                .metrics
                .requests
                .with_label_values(&["none", status])
                .get()
        }
    }

    /// Reads what the client got until the server's FIN.
    async fn client_reads(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
            .await
            .expect("answer and FIN in time")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The server side reads until it reports end of stream, while the client reads the answer
    /// and then closes (ending the lingering close).
    async fn refused(mut c: Conn) -> (String, Conn) {
        let mut client = c.client;
        let reader = tokio::spawn(async move {
            let answer = client_reads(&mut client).await;
            drop(client);
            answer
        });
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), c.stream.read(&mut buf))
            .await
            .expect("the stream ends")
            .unwrap();
        assert_eq!(n, 0, "Pingora gets nothing of a refused head");
        let answer = reader.await.unwrap();
        c.client = duplex(1).0;
        (answer, c)
    }

    #[test]
    fn head_end_is_found_across_reads_like_httparse() {
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(s.feed(b"\n"), None);
        assert_eq!(s.feed(b"\r"), None);
        assert_eq!(s.feed(b"\nbody"), Some(1));
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nxx"), Some(27));
        // Bare LF line ends, and the mixed `LF CR LF`.
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\nHost: a\n"), None);
        assert_eq!(s.feed(b"\n"), Some(1));
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\nHost: a\n\r\n"), Some(25));
        // Empty lines before the request line are not the end of a head.
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"\r\n\r\n\n"), None);
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(s.seen, 25);
    }

    #[test]
    fn strict_framing_checks() {
        let head = |lines: &str| format!("POST / HTTP/1.1\r\n{lines}\r\n").into_bytes();
        let status = |lines: &str| check_head(&head(lines)).err().map(|r| r.status);
        assert_eq!(status("Host: t\r\n"), None);
        assert_eq!(status("Host: t\r\nContent-Length: 5\r\n"), None);
        assert_eq!(status("Host: t\r\ncontent-length:\t 5 \r\n"), None);
        assert_eq!(status("Host: t\r\nTransfer-Encoding: chunked\r\n"), None);
        assert_eq!(status("Host: t\r\nTransfer-Encoding: Chunked\r\n"), None);
        assert_eq!(status("Host: t\r\nTransfer-Encoding: chunked,\r\n"), None);
        // Content-Length and Transfer-Encoding together, in either order.
        assert_eq!(
            status("Host: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            Some(400)
        );
        assert_eq!(
            status("Host: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n"),
            Some(400)
        );
        for cl in [
            "5, 5",
            "+5",
            "-5",
            "1 5",
            "0x5",
            "",
            "99999999999999999999999",
        ] {
            assert_eq!(
                status(&format!("Host: t\r\nContent-Length: {cl}\r\n")),
                Some(400),
                "{cl:?}"
            );
        }
        assert_eq!(
            status("Host: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n"),
            Some(400)
        );
        assert_eq!(
            status("Host: t\r\nTransfer-Encoding: gzip, chunked\r\n"),
            Some(501)
        );
        for te in [
            "chunked, gzip",
            "xchunked",
            "identity",
            "",
            "chunked, chunked",
        ] {
            assert_eq!(
                status(&format!("Host: t\r\nTransfer-Encoding: {te}\r\n")),
                Some(400),
                "{te:?}"
            );
        }
        assert_eq!(
            status("Host: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            Some(400)
        );
        // Host: exactly one in HTTP/1.1; none needed in HTTP/1.0; no TE in HTTP/1.0.
        assert_eq!(status(""), Some(400));
        assert_eq!(status("Host: a\r\nHost: b\r\n"), Some(400));
        assert_eq!(
            check_head(b"GET / HTTP/1.0\r\n\r\n"),
            Ok(&b"GET / HTTP/1.0"[..])
        );
        assert_eq!(
            check_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
                .map_err(|r| r.status),
            Err(400)
        );
        // Too many fields.
        let many: String = (0..257).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("Host: t\r\n{many}")), Some(431));
        let enough: String = (0..255).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("Host: t\r\n{enough}")), None);
        // Leading empty lines and bare LF line ends.
        assert_eq!(
            check_head(b"\r\nGET / HTTP/1.1\nHost: t\n\n"),
            Ok(&b"GET / HTTP/1.1"[..])
        );
    }

    #[test]
    fn status_of_a_response_head() {
        assert_eq!(status_of(b"HTTP/1.1 400 Bad Request\r\n"), Some(400));
        assert_eq!(status_of(b"HTTP/1.0 405 Method Not Allowed\r\n"), Some(405));
        assert_eq!(status_of(b"garbage"), None);
    }

    #[tokio::test]
    async fn a_head_in_one_read_is_handed_over_in_place() {
        let mut c = conn(10_000, 1024);
        let req = b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi";
        c.client.write_all(req).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = c.stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], req);
        assert!(c.stream.held.capacity() == 0, "no copy was made");
        assert!(matches!(c.stream.phase, Phase::Body));
        assert!(c.stream.timer.is_none());
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_held_back_until_complete() {
        let mut c = conn(10_000, 1024);
        c.client.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let early = tokio::time::timeout(Duration::from_millis(50), c.stream.read(&mut buf)).await;
        assert!(early.is_err(), "nothing handed over before the head ends");
        c.client.write_all(b"st: t\r\n\r\nbody").await.unwrap();
        let n = c.stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nbody");
        assert!(matches!(c.stream.phase, Phase::Body));
    }

    #[tokio::test]
    async fn left_over_bytes_start_the_next_head() {
        let mut c = conn(10_000, 1024);
        let first = b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n";
        let second = b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n";
        c.client.write_all(&first[..10]).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(20), c.stream.read(&mut buf)).await;
        let mut rest = first[10..].to_vec();
        rest.extend_from_slice(second);
        c.client.write_all(&rest).await.unwrap();
        // A reader that takes exactly the first head (as a parser reading no body might).
        let mut exact = vec![0u8; first.len()];
        c.stream.read_exact(&mut exact).await.unwrap();
        assert_eq!(&exact, first);
        c.shared.dispatched.store(true, Ordering::Relaxed);
        c.shared.expect_head.store(true, Ordering::Release);
        let n = c.stream.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], second);
        assert!(
            !c.shared.dispatched.load(Ordering::Relaxed),
            "a new head is not dispatched yet"
        );
    }

    #[tokio::test]
    async fn too_large_head_gets_431_and_nothing_reaches_pingora() {
        let mut c = conn(10_000, 64);
        c.client
            .write_all(format!("GET /big HTTP/1.1\r\nX: {}", "a".repeat(100)).as_bytes())
            .await
            .unwrap();
        let (answer, c) = refused(c).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(answer.contains("connection: close\r\n"), "{answer}");
        assert!(answer.ends_with(
            r#"{"error":"request_header_too_large","message":"the request head is larger than max_header_bytes"}"#
        ));
        assert_eq!(c.answered("431"), 1);
    }

    #[tokio::test]
    async fn ambiguous_framing_gets_400_before_pingora() {
        let mut c = conn(10_000, 4096);
        c.client
            .write_all(
                b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let (answer, c) = refused(c).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert!(answer.contains(r#""error":"bad_request""#), "{answer}");
        assert_eq!(c.answered("400"), 1);
    }

    #[tokio::test]
    async fn late_head_gets_408_and_a_silent_connection_just_closes() {
        let mut c = conn(100, 4096);
        c.client.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let (answer, c) = refused(c).await;
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
        assert_eq!(c.answered("408"), 1);
        assert_eq!(c.policy.metrics.header_timeouts.get(), 1);

        let mut c = conn(100, 4096);
        let mut buf = vec![0u8; 64];
        let n = c.stream.read(&mut buf).await.unwrap();
        assert_eq!(n, 0);
        assert_eq!(c.policy.metrics.header_timeouts.get(), 1);
        drop(c.stream);
        let mut got = Vec::new();
        c.client.read_to_end(&mut got).await.ok();
        assert!(
            got.is_empty(),
            "no answer to a connection that sent nothing"
        );
        assert_eq!(
            c.policy
                .metrics
                .requests
                .with_label_values(&["none", "408"])
                .get(),
            0
        );
    }

    #[tokio::test]
    async fn pingora_early_answer_is_replaced_and_dispatched_answers_pass() {
        let mut c = conn(10_000, 4096);
        c.client
            .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = c.stream.read(&mut buf).await.unwrap();
        // Not dispatched: Pingora's bare 400 is replaced.
        c.stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        c.stream.write_all(b"").await.unwrap();
        let mut client = c.client;
        let reader = tokio::spawn(async move { client_reads(&mut client).await });
        Shutdown::shutdown(&mut c.stream).await;
        let answer = reader.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(!answer.contains("Pingora"), "{answer}");
        assert!(answer.ends_with(r#"{"error":"bad_request","message":"the request head is malformed or its framing is invalid"}"#));
        assert_eq!(
            c.policy
                .metrics
                .requests
                .with_label_values(&["none", "400"])
                .get(),
            1
        );

        // Dispatched: bytes pass untouched.
        let mut c = conn(10_000, 4096);
        c.client
            .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let _ = c.stream.read(&mut buf).await.unwrap();
        c.shared.dispatched.store(true, Ordering::Relaxed);
        let resp = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\nno";
        c.stream.write_all(resp).await.unwrap();
        drop(c.stream);
        let answer = client_reads(&mut c.client).await;
        assert_eq!(answer.as_bytes(), resp);
        assert_eq!(
            c.policy
                .metrics
                .requests
                .with_label_values(&["none", "400"])
                .get(),
            0
        );
    }

    #[test]
    fn mark_dispatched_outside_a_connection_does_nothing() {
        mark_dispatched();
    }
}
