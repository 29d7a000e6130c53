//! Request bodies (SPEC §7 `client.max_body_bytes`, `client.body_timeout_ms`).
//!
//! A body is received whole *before* the request may take a bulkhead slot, as NGINX does with
//! `proxy_request_buffering on`: a client that trickles its body in holds its own connection and
//! its `limit_conn` permit, never upstream capacity, so a few slow clients within their limits
//! cannot fill `max_inflight` and shut everyone else out. Each wait for the next piece is bounded
//! by `client.body_timeout_ms` (NGINX's `client_body_timeout`) and the whole body by the route's
//! deadline; a client too slow for either gets 408, which is the client's failure, never the
//! upstream's.
//!
//! The received body goes upstream through Pingora's retry buffer, which holds at most
//! [`BUFFER_LIMIT`] bytes. Bodies that may be larger (only when `max_body_bytes` is raised above
//! it) are streamed instead ([`Plan::Stream`]): the same per-read and whole-request bounds apply
//! (see `proxy.rs`), but the slot is held while the body arrives.

use std::time::{Duration, Instant};

use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::BodyLimit;

/// What Pingora's retry buffer holds (`BODY_BUF_LIMIT` in pingora-core's HTTP/1 code): a body up
/// to this size can be read ahead and still be sent upstream.
pub const BUFFER_LIMIT: u64 = 64 * 1024;

/// How the body of a request is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// No body.
    Empty,
    /// Received whole before the request goes further.
    Buffer,
    /// May exceed [`BUFFER_LIMIT`]: streamed to the upstream as it arrives.
    Stream,
}

/// Chooses the plan for the request in `session`: bodies that fit the retry buffer for sure are
/// buffered (a `Content-Length` up to [`BUFFER_LIMIT`], or any body when `max_body_bytes` is not
/// above it, since a larger one is refused anyway).
pub fn plan(session: &mut Session, max_body_bytes: u64) -> Plan {
    if session.is_http2() || session.is_body_empty() || session.is_body_done() {
        return Plan::Empty;
    }
    if max_body_bytes <= BUFFER_LIMIT {
        return Plan::Buffer;
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = session
        .req_header()
        .headers
        .contains_key(http::header::TRANSFER_ENCODING);
    match declared {
        Some(n) if !chunked && n <= BUFFER_LIMIT => Plan::Buffer,
        _ => Plan::Stream,
    }
}

/// A body received whole.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    /// Body bytes.
    pub bytes: u64,
    /// How long the client took to send it (from the end of the head).
    pub took: Duration,
    /// `100 Continue` was sent to the client to ask for the body.
    pub continue_sent: bool,
}

/// Why a body was not received.
#[derive(Debug)]
pub enum BodyError {
    /// More than `max_body_bytes` (413).
    TooLarge,
    /// A gap longer than `body_timeout`, or the deadline passed (408).
    TooSlow,
    /// The client went away or sent a broken body (chunk framing); nothing to answer.
    Broken(Box<Error>),
}

/// Reads the whole body into Pingora's retry buffer, from where the proxy sends it upstream.
/// Each read waits at most `body_timeout`, and no read goes past `deadline`. A client waiting
/// for `100 Continue` is sent one first.
pub async fn receive(
    session: &mut Session,
    limit: &mut BodyLimit,
    body_timeout: Duration,
    deadline: Instant,
) -> Result<Received, BodyError> {
    let start = Instant::now();
    session.enable_retry_buffering();
    let continue_sent = expects_continue(session.req_header());
    // Pingora turns keep-alive off when a response head (even `100 Continue`) goes out before
    // the body is in; once the whole body has been read that reason is gone, so it is restored.
    let keepalive = session.get_keepalive();
    if continue_sent {
        session
            .write_continue_response()
            .await
            .map_err(BodyError::Broken)?;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BodyError::TooSlow);
        }
        session.set_read_timeout(Some(body_timeout.min(left)));
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if !limit.add(chunk.len()) {
                    return Err(BodyError::TooLarge);
                }
            }
            Ok(None) => {
                session.set_keepalive(keepalive);
                break;
            }
            Err(e) if *e.etype() == ErrorType::ReadTimedout => return Err(BodyError::TooSlow),
            Err(e) => return Err(BodyError::Broken(e)),
        }
    }
    Ok(Received {
        bytes: limit.seen(),
        took: start.elapsed(),
        continue_sent,
    })
}

/// Whether the request waits for `100 Continue` before sending its body.
pub fn expects_continue(req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}
