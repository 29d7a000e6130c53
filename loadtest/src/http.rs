//! One HTTP exchange, recorded as data: status, timing, the headers scenarios check, and the body.
//!
//! Nothing here panics on an unexpected answer; callers compare what was [`Reply`]ed with what they
//! expected and turn the difference into a failed check.

use std::time::{Duration, Instant};

use reqwest::{Client, Method};
use serde_json::Value;

/// Default timeout of admin and setup calls.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A transport-level failure, or an answer that a setup step could not use.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connection refused, reset, timed out, ...
    #[error("{method} {url}: {message}")]
    Transport {
        /// Method sent.
        method: String,
        /// URL requested.
        url: String,
        /// What went wrong, as reqwest describes it (with its causes).
        message: String,
    },
    /// The service answered, but not with the status the step needed.
    #[error("{method} {url}: expected {expected}, got {status}: {body}")]
    Status {
        /// Method sent.
        method: String,
        /// URL requested.
        url: String,
        /// What was needed, e.g. `2xx`.
        expected: String,
        /// Status received.
        status: u16,
        /// Body received (truncated).
        body: String,
    },
    /// A JSON body was needed and something else came.
    #[error("{url}: body is not the expected JSON ({reason}): {body}")]
    Body {
        /// URL requested.
        url: String,
        /// What was missing.
        reason: String,
        /// Body received (truncated).
        body: String,
    },
}

/// What came back for one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Time from sending the request to having read the whole body.
    pub latency: Duration,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body text.
    pub body: String,
}

impl Reply {
    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The `error` field of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After` in whole seconds, when present and numeric.
    pub fn retry_after(&self) -> Option<u64> {
        self.header("retry-after")
            .and_then(|v| v.trim().parse().ok())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body, shortened for messages.
    pub fn body_excerpt(&self) -> String {
        excerpt(&self.body)
    }

    /// Fails unless the status is 2xx; returns the JSON body.
    pub fn expect_json(self, method: &str, url: &str) -> Result<Value, HttpError> {
        if !self.is_success() {
            return Err(HttpError::Status {
                method: method.to_owned(),
                url: url.to_owned(),
                expected: "2xx".into(),
                status: self.status,
                body: self.body_excerpt(),
            });
        }
        self.json().ok_or_else(|| HttpError::Body {
            url: url.to_owned(),
            reason: "not JSON".into(),
            body: self.body_excerpt(),
        })
    }
}

/// At most 300 characters of a body, on one line.
pub fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 300 {
        let cut: String = one_line.chars().take(300).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// reqwest's error with all its causes, on one line.
pub fn describe(err: &reqwest::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    let mut depth = 0;
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    if err.is_timeout() {
        out.push_str(" (timeout)");
    }
    out
}

/// Builds a keep-alive client, optionally bound to a local source address.
pub fn client(
    local: Option<std::net::IpAddr>,
    timeout: Duration,
    pool: usize,
) -> Result<Client, HttpError> {
    Client::builder()
        .local_address(local)
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| HttpError::Transport {
            method: "-".into(),
            url: "-".into(),
            message: describe(&e),
        })
}

/// Sends one request and reads the whole answer.
pub async fn send(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, String)],
    timeout: Option<Duration>,
) -> Result<Reply, HttpError> {
    let mut req = client.request(method.clone(), url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let transport = |e: reqwest::Error| HttpError::Transport {
        method: method.to_string(),
        url: url.to_owned(),
        message: describe(&e),
    };
    let started = Instant::now();
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.map_err(transport)?;
    Ok(Reply {
        status,
        latency: started.elapsed(),
        headers,
        body,
    })
}

/// Admin-style calls with one shared client and the admin timeout.
#[derive(Debug, Clone)]
pub struct Http {
    client: Client,
}

impl Http {
    /// A client for setup, admin and polling calls.
    pub fn new() -> Result<Self, HttpError> {
        Ok(Self {
            client: client(None, ADMIN_TIMEOUT, 16)?,
        })
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Reply, HttpError> {
        send(&self.client, Method::GET, url, None, &[], None).await
    }

    /// `GET url`, 2xx JSON required.
    pub async fn get_json(&self, url: &str) -> Result<Value, HttpError> {
        self.get(url).await?.expect_json("GET", url)
    }

    /// `PUT url` with a JSON body, 2xx required.
    pub async fn put_json(&self, url: &str, body: &Value) -> Result<Value, HttpError> {
        send(&self.client, Method::PUT, url, Some(body), &[], None)
            .await?
            .expect_json("PUT", url)
    }

    /// `POST url` with a JSON body (any status).
    pub async fn post(&self, url: &str, body: &Value) -> Result<Reply, HttpError> {
        send(&self.client, Method::POST, url, Some(body), &[], None).await
    }

    /// `DELETE url`, 2xx required (body ignored).
    pub async fn delete(&self, url: &str) -> Result<(), HttpError> {
        let r = send(&self.client, Method::DELETE, url, None, &[], None).await?;
        if r.is_success() {
            Ok(())
        } else {
            Err(HttpError::Status {
                method: "DELETE".into(),
                url: url.to_owned(),
                expected: "2xx".into(),
                status: r.status,
                body: r.body_excerpt(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_bounded_and_single_line() {
        let long = "a\n".repeat(400);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert!(e.chars().count() <= 301);
    }
}
