//! Every answer the gateway writes itself (404, 408, 413, 429, 502, 503, 504, `/health`).
//!
//! All of them look the same: a JSON body `{"error": "<code>", "message": "...", ...}` (SPEC §4),
//! `Content-Type: application/json`, `Content-Length`, `X-Request-Id`, and the connection kept
//! alive unless the answer says otherwise. Never Pingora's bare default page, never
//! `respond_error` (which closes the connection).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{Map, Value};

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

/// Writes `answer` to the client. `request_id` is echoed as `X-Request-Id`.
pub async fn send(session: &mut Session, answer: &Answer, request_id: &str) -> Result<()> {
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
    if answer.close {
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
    Ok(())
}
