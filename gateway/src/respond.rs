//! Every answer the gateway writes itself (404, 408, 413, 429, 502, 503, 504, `/health`).
//!
//! All of them look the same: a JSON body `{"error": "<code>", "message": "...", ...}` (SPEC §4),
//! `Content-Type: application/json`, `Content-Length`, `X-Request-Id`, and the connection kept
//! alive unless the answer says otherwise. Never Pingora's bare default page, never
//! `respond_error` (which closes the connection).
//!
//! An HTTP/1.1 connection can only serve the next request once this one's body has been read
//! off it, so before a keep-alive answer the rest of the request body is read and discarded
//! ([`drain_body`]), bounded by `client.max_body_bytes` and [`DRAIN_WITHIN`]. A body that is too
//! large, too slow, broken, or withheld behind `Expect: 100-continue` turns the answer into a
//! closing one (`Connection: close`), which is always correct.

use std::time::Duration;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{Map, Value};

use crate::client::body::expects_continue;

/// A local answer about to be written.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
    /// Extra header fields (`Retry-After`, `RateLimit`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Answer {
    /// An error answer `{"error": code, "message": message}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(code));
        body.insert("message".into(), Value::from(message));
        Answer {
            status,
            body: Value::Object(body),
            headers: Vec::new(),
            close: false,
        }
    }

    /// Adds a field to the JSON body.
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Self {
        if let Value::Object(m) = &mut self.body {
            m.insert(name.to_string(), value.into());
        }
        self
    }

    /// Adds a header field.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Marks the answer as closing the connection.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// 404 `no_route`.
    pub fn no_route() -> Self {
        Answer::error(404, "no_route", "no route matches this path")
    }

    /// 200 `{"status":"ok"}` for `GET /health`.
    pub fn health() -> Self {
        let mut body = Map::new();
        body.insert("status".into(), Value::from("ok"));
        Answer {
            status: 200,
            body: Value::Object(body),
            headers: Vec::new(),
            close: false,
        }
    }
}

/// How long the gateway reads an unread request body before a keep-alive local answer; a
/// client still sending after this gets the answer with `Connection: close` instead.
pub const DRAIN_WITHIN: Duration = Duration::from_secs(2);

/// Reads and discards the rest of the request body so that the connection can serve the next
/// request. `true` when the whole body has been read (or there is none); `false` when it was not
/// and the connection must close: it would exceed `max_body_bytes` in total (counting what the
/// proxy already read), did not arrive within `within`, failed to read, or the client waits for
/// `100 Continue` before sending it (it is never asked for).
pub async fn drain_body(session: &mut Session, max_body_bytes: u64, within: Duration) -> bool {
    if session.is_http2() {
        // Streams end on their own; no connection state depends on the unread body.
        return true;
    }
    if session.is_body_done() {
        return true;
    }
    let req = session.req_header();
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body_bytes) || expects_continue(req) {
        return false;
    }
    let read_all = async {
        loop {
            if session.body_bytes_read() as u64 > max_body_bytes {
                return false;
            }
            match session.read_request_body().await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the request body to discard it failed");
                    return false;
                }
            }
        }
    };
    match tokio::time::timeout(within, read_all).await {
        Ok(done) => done && session.body_bytes_read() as u64 <= max_body_bytes,
        Err(_) => false,
    }
}

/// Writes `answer` to the client. `request_id` is echoed as `X-Request-Id`. Unless the answer
/// closes anyway, the rest of the request body is discarded first ([`drain_body`], at most
/// `max_body_bytes` in total); when that fails the answer closes the connection. Returns whether
/// the connection stays open for the next request.
pub async fn send(
    session: &mut Session,
    answer: &Answer,
    request_id: &str,
    max_body_bytes: u64,
) -> Result<bool> {
    let close = answer.close || !drain_body(session, max_body_bytes, DRAIN_WITHIN).await;
    let body = Bytes::from(serde_json::to_vec(&answer.body).unwrap_or_default());
    let mut resp = ResponseHeader::build(answer.status, Some(4 + answer.headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    if !request_id.is_empty() {
        resp.insert_header("x-request-id", request_id)?;
    }
    for (name, value) in &answer.headers {
        resp.append_header(*name, value.as_str())?;
    }
    if close {
        resp.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(!close)
}
