//! Hostile request framing through the real gateway binary (RFC 9112 §2-§7, §11.2).
//!
//! Every case is checked at both ends:
//!
//! - at the client: the status line, SPEC §4's JSON error body, and whether the connection is
//!   closed (every rejected head) or kept open (accepted requests);
//! - at a raw TCP upstream ([`RawUpstream`]) that records the exact bytes it receives and parses
//!   them strictly: a rejected request must never reach it (its unique marker never shows up in
//!   the bytes), and an accepted one must arrive exactly once with exactly one unambiguous
//!   framing (one `Content-Length`, or `Transfer-Encoding: chunked` alone, or no body).
//!
//! The expected results are what a strict proxy must do (RFC 9112, NGINX's choices where the RFC
//! leaves a choice), not whatever Pingora happens to do.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{GatewayProcess, RawConn, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// A raw upstream that records bytes and parses requests strictly.

/// How the upstream saw a request's body delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// Neither `Content-Length` nor `Transfer-Encoding`.
    NoBody,
    /// Exactly one `Content-Length` with a plain decimal value.
    Length(usize),
    /// Exactly one `Transfer-Encoding: chunked` and no `Content-Length`.
    Chunked,
}

/// One complete request as the upstream parsed it.
#[derive(Debug, Clone)]
struct UpRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    framing: Framing,
    body: Vec<u8>,
}

impl UpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct UpLog {
    /// Every byte received, all connections, in arrival order.
    raw: Vec<u8>,
    /// Every complete request.
    requests: Vec<UpRequest>,
    /// Framing problems the upstream found (each closed its connection with a 400).
    ambiguous: Vec<String>,
}

/// A raw TCP upstream on a free 127.0.0.1 port: answers every complete request with
/// `200 ok` (keep-alive), records everything.
struct RawUpstream {
    addr: SocketAddr,
    log: Arc<Mutex<UpLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health-check path of the test configs (kept out of the assertions).
const HC_PATH: &str = "/__hc";

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(UpLog::default()));
        let l = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        conns.spawn(serve_raw(stream, Arc::clone(&l)));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        RawUpstream { addr, log, task }
    }

    /// Complete requests received, health checks left out.
    fn requests(&self) -> Vec<UpRequest> {
        let log = self.log.lock().unwrap();
        log.requests
            .iter()
            .filter(|r| r.target != HC_PATH)
            .cloned()
            .collect()
    }

    fn raw_contains(&self, marker: &str) -> bool {
        let log = self.log.lock().unwrap();
        find(&log.raw, marker.as_bytes()).is_some()
    }

    fn ambiguous(&self) -> Vec<String> {
        self.log.lock().unwrap().ambiguous.clone()
    }
}

async fn serve_raw(mut stream: tokio::net::TcpStream, log: Arc<Mutex<UpLog>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.lock().unwrap().raw.extend_from_slice(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match parse_request(&buf) {
                Ok(Some((req, used))) => {
                    buf.drain(..used);
                    let body = format!("ok {}", req.target);
                    log.lock().unwrap().requests.push(req);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{}",
                        body.len(),
                        body
                    );
                    if stream.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(problem) => {
                    log.lock().unwrap().ambiguous.push(problem);
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one request from the front of `buf`: `Ok(None)` when incomplete, `Err` when its
/// framing is ambiguous or malformed (what a strict origin server would reject).
fn parse_request(buf: &[u8]) -> Result<Option<(UpRequest, usize)>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad version {version:?}"));
    }
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(format!("bad header line {l:?}"));
        };
        if k.is_empty() || k.contains([' ', '\t']) || l.starts_with([' ', '\t']) {
            return Err(format!("bad header line {l:?}"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let cls: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let tes: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
        .map(|(_, v)| v.as_str())
        .collect();
    let framing = match (cls.as_slice(), tes.as_slice()) {
        ([], []) => Framing::NoBody,
        ([cl], []) => {
            if cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length {cl:?}"));
            }
            Framing::Length(cl.parse().map_err(|_| format!("Content-Length {cl:?}"))?)
        }
        ([], [te]) if te.eq_ignore_ascii_case("chunked") => Framing::Chunked,
        _ => return Err(format!("ambiguous framing: CL {cls:?} TE {tes:?}")),
    };
    let start = end + 4;
    let (body, used) = match framing {
        Framing::NoBody => (Vec::new(), start),
        Framing::Length(n) => {
            if buf.len() < start + n {
                return Ok(None);
            }
            (buf[start..start + n].to_vec(), start + n)
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut at = start;
            loop {
                let Some(le) = find(&buf[at..], b"\r\n") else {
                    return Ok(None);
                };
                let size_line = std::str::from_utf8(&buf[at..at + le])
                    .map_err(|_| "chunk size not UTF-8".to_string())?;
                let size_hex = size_line.split(';').next().unwrap_or_default();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| format!("bad chunk size {size_line:?}"))?;
                at += le + 2;
                if size == 0 {
                    // Trailers (none expected) then CRLF.
                    let Some(te) = find(&buf[at..], b"\r\n") else {
                        return Ok(None);
                    };
                    if te != 0 {
                        return Err("trailers after the last chunk".into());
                    }
                    break (body, at + 2);
                }
                if buf.len() < at + size + 2 {
                    return Ok(None);
                }
                body.extend_from_slice(&buf[at..at + size]);
                if &buf[at + size..at + size + 2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                at += size + 2;
            }
        }
    };
    Ok(Some((
        UpRequest {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            framing,
            body,
        },
        used,
    )))
}

// ---------------------------------------------------------------------------------------------
// The gateway and the client side.

fn config(upstream: SocketAddr, client_section: &str) -> String {
    format!(
        "server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
client:
  trusted_proxies: []
{client_section}
upstreams:
  u:
    servers: [\"{upstream}\"]
    health_check: {{ path: {HC_PATH}, interval_ms: 60000 }}
routes:
  - path_prefix: /
    upstream: u
"
    )
}

/// What the client saw for one raw request.
struct Seen {
    resp: std::io::Result<RawResponse>,
    closed: bool,
}

/// Sends `raw` on a fresh connection, reads one response, then checks whether the gateway
/// closes the connection within `close_wait`.
async fn exchange(addr: SocketAddr, raw: Vec<u8>, close_wait: Duration) -> Seen {
    tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        // The gateway may answer and close before everything is written: not an error here.
        let _ = conn.send_raw(&raw);
        let resp = conn.read_response();
        let closed = resp.is_ok() && conn.is_closed_within(close_wait);
        Seen { resp, closed }
    })
    .await
    .unwrap()
}

/// What a case must produce.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The gateway answers this status with this JSON `error` code and closes; the upstream
    /// never sees the case's marker.
    Reject(u16, &'static str),
    /// Proxied once with this framing and body; the connection stays open.
    Proxy(Framing2, &'static str),
}

/// `Framing` without data, for the const case table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing2 {
    NoBody,
    Length,
}

struct Case {
    name: &'static str,
    raw: Vec<u8>,
    expect: Expect,
}

/// A request whose path is the case's marker.
fn req(marker: &str, method: &str, version: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut s = format!("{method} /{marker} HTTP/{version}\r\n").into_bytes();
    for h in headers {
        s.extend_from_slice(h.as_bytes());
        s.extend_from_slice(b"\r\n");
    }
    s.extend_from_slice(b"\r\n");
    s.extend_from_slice(body);
    s
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let chunked_body = b"5\r\nhello\r\n0\r\n\r\n";
    let mut v = vec![
        // --- Content-Length and Transfer-Encoding together (RFC 9112 §6.1, §6.3; NGINX: 400).
        Case {
            name: "cl_then_te",
            raw: req(
                "m-cl-te",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 5", "Transfer-Encoding: chunked"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_then_cl",
            raw: req(
                "m-te-cl",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: chunked", "Content-Length: 5"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        // --- Content-Length values (RFC 9110 §8.6).
        Case {
            name: "two_different_cls",
            raw: req(
                "m-cl-5-6",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 5", "Content-Length: 6"],
                b"hello!",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "two_equal_cls",
            raw: req(
                "m-cl-5-5",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 5", "Content-Length: 5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_list",
            raw: req(
                "m-cl-list",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 5, 5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_plus_sign",
            raw: req(
                "m-cl-plus",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: +5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_minus_sign",
            raw: req(
                "m-cl-minus",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: -5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_inner_space",
            raw: req(
                "m-cl-inner",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 1 5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_hex",
            raw: req(
                "m-cl-hex",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 0x5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_overflow",
            raw: req(
                "m-cl-over",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 99999999999999999999999"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cl_surrounding_whitespace",
            raw: req(
                "m-cl-ows",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: \t 5 \t"],
                b"hello",
            ),
            expect: Proxy(Framing2::Length, "hello"),
        },
        // --- Transfer-Encoding values (RFC 9112 §6.1: chunked must be final → 400; an unknown
        // coding → 501; chunked at most once).
        Case {
            name: "te_gzip_chunked",
            raw: req(
                "m-te-gzip-chunked",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: gzip, chunked"],
                chunked_body,
            ),
            expect: Reject(501, "not_implemented"),
        },
        Case {
            name: "te_chunked_gzip",
            raw: req(
                "m-te-chunked-gzip",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: chunked, gzip"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_xchunked",
            raw: req(
                "m-te-xchunked",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: xchunked"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_chunked_twice",
            raw: req(
                "m-te-twice",
                "POST",
                "1.1",
                &[
                    "Host: t",
                    "Transfer-Encoding: chunked",
                    "Transfer-Encoding: chunked",
                ],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_identity",
            raw: req(
                "m-te-identity",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: identity"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_on_http10",
            raw: req(
                "m-te-10",
                "POST",
                "1.0",
                &["Host: t", "Transfer-Encoding: chunked"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "te_chunked_uppercase",
            raw: req(
                "m-te-upper",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: CHUNKED"],
                chunked_body,
            ),
            // Received whole before the bulkhead, so re-framed with one length (client/body.rs).
            expect: Proxy(Framing2::Length, "hello"),
        },
        // --- Header syntax (RFC 9112 §5).
        Case {
            name: "obs_fold",
            raw: req(
                "m-fold",
                "GET",
                "1.1",
                &["Host: t", "X-Folded: a", " b"],
                b"",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "obs_fold_te",
            raw: req(
                "m-fold-te",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding:", " chunked"],
                chunked_body,
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "nul_in_value",
            raw: req("m-nul", "GET", "1.1", &["Host: t", "X-Nul: a\0b"], b""),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "cr_in_value",
            raw: req("m-cr", "GET", "1.1", &["Host: t", "X-Cr: a\rb"], b""),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "space_before_colon",
            raw: req(
                "m-space-colon",
                "POST",
                "1.1",
                &["Host: t", "Content-Length : 5"],
                b"hello",
            ),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "missing_host_http11",
            raw: req("m-no-host", "GET", "1.1", &[], b""),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "two_hosts",
            raw: req("m-two-hosts", "GET", "1.1", &["Host: a", "Host: b"], b""),
            expect: Reject(400, "bad_request"),
        },
        Case {
            name: "connect",
            raw: b"CONNECT m-connect.example:443 HTTP/1.1\r\nHost: m-connect.example:443\r\n\r\n"
                .to_vec(),
            expect: Reject(405, "method_not_allowed"),
        },
        // --- Accepted framings.
        Case {
            name: "plain_get",
            raw: req("m-get", "GET", "1.1", &["Host: t"], b""),
            expect: Proxy(Framing2::NoBody, ""),
        },
        Case {
            name: "http10_get",
            raw: req("m-get-10", "GET", "1.0", &["Connection: keep-alive"], b""),
            expect: Proxy(Framing2::NoBody, ""),
        },
        Case {
            name: "content_length_body",
            raw: req(
                "m-cl",
                "POST",
                "1.1",
                &["Host: t", "Content-Length: 5"],
                b"hello",
            ),
            expect: Proxy(Framing2::Length, "hello"),
        },
        Case {
            name: "chunked_body",
            raw: req(
                "m-chunked",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: chunked"],
                b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            ),
            // Received whole before the bulkhead, so re-framed with one length (client/body.rs).
            expect: Proxy(Framing2::Length, "hello"),
        },
        Case {
            name: "chunk_extensions",
            raw: req(
                "m-chunk-ext",
                "POST",
                "1.1",
                &["Host: t", "Transfer-Encoding: chunked"],
                b"5;name=value;flag\r\nhello\r\n0;last\r\n\r\n",
            ),
            // Received whole before the bulkhead, so re-framed with one length (client/body.rs).
            expect: Proxy(Framing2::Length, "hello"),
        },
        Case {
            name: "bare_lf_line_endings",
            raw: b"GET /m-lf HTTP/1.1\nHost: t\n\n".to_vec(),
            expect: Proxy(Framing2::NoBody, ""),
        },
        Case {
            name: "leading_empty_line",
            raw: b"\r\nGET /m-leading-crlf HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(),
            expect: Proxy(Framing2::NoBody, ""),
        },
    ];
    // Too many header fields (Pingora parses at most 256): 431, like a head too large.
    let many: Vec<String> = (0..300).map(|i| format!("X-Many-{i}: v")).collect();
    let mut headers: Vec<&str> = vec!["Host: t"];
    headers.extend(many.iter().map(String::as_str));
    v.push(Case {
        name: "too_many_headers",
        raw: req("m-many", "GET", "1.1", &headers, b""),
        expect: Reject(431, "request_header_too_large"),
    });
    v
}

fn marker_of(raw: &[u8]) -> String {
    // The request target, without the leading '/'.
    let line = raw
        .split(|&b| b == b'\n')
        .find(|l| !l.is_empty() && *l != b"\r")
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    line.split(' ')
        .nth(1)
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

fn check_error(
    name: &str,
    resp: &RawResponse,
    status: u16,
    code: &str,
    problems: &mut Vec<String>,
) {
    if resp.status != status {
        problems.push(format!(
            "{name}: status {} (want {status}), body {:?}",
            resp.status, resp.body
        ));
        return;
    }
    match serde_json::from_str::<serde_json::Value>(&resp.body) {
        Ok(j) if j["error"] == code && j["message"].is_string() => {}
        _ => problems.push(format!(
            "{name}: body {:?} (want error {code:?} + message)",
            resp.body
        )),
    }
    if resp.header("content-type") != Some("application/json") {
        problems.push(format!(
            "{name}: content-type {:?}",
            resp.header("content-type")
        ));
    }
    if resp.header("connection") != Some("close") {
        problems.push(format!(
            "{name}: connection {:?}",
            resp.header("connection")
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_battery_at_client_and_upstream() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let mut problems = Vec::new();
    for case in cases() {
        let marker = marker_of(&case.raw);
        let before = up.requests().len();
        match case.expect {
            Expect::Reject(status, code) => {
                let seen = exchange(gw.listen, case.raw.clone(), Duration::from_secs(2)).await;
                match &seen.resp {
                    Ok(resp) => check_error(case.name, resp, status, code, &mut problems),
                    Err(e) => problems.push(format!("{}: no response ({e})", case.name)),
                }
                if seen.resp.is_ok() && !seen.closed {
                    problems.push(format!("{}: connection left open", case.name));
                }
                // Give a forwarded request time to arrive before looking.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if up.raw_contains(&marker) {
                    problems.push(format!("{}: reached the upstream", case.name));
                }
            }
            Expect::Proxy(framing, body) => {
                let seen = exchange(gw.listen, case.raw.clone(), Duration::from_millis(300)).await;
                match &seen.resp {
                    Ok(resp) if resp.status == 200 && resp.body.contains(&marker) => {}
                    Ok(resp) => problems.push(format!(
                        "{}: status {} body {:?} (want 200 from the upstream)",
                        case.name, resp.status, resp.body
                    )),
                    Err(e) => problems.push(format!("{}: no response ({e})", case.name)),
                }
                if seen.closed {
                    problems.push(format!("{}: connection closed", case.name));
                }
                let reqs = up.requests();
                let new: Vec<&UpRequest> = reqs[before..]
                    .iter()
                    .filter(|r| r.target.contains(&marker))
                    .collect();
                match new.as_slice() {
                    [r] => {
                        let ok = match (framing, &r.framing) {
                            (Framing2::NoBody, Framing::NoBody) => true,
                            // An empty body may be sent as `Content-Length: 0`.
                            (Framing2::NoBody, Framing::Length(0)) => true,
                            (Framing2::Length, Framing::Length(n)) => *n == body.len(),
                            _ => false,
                        };
                        if !ok || r.body != body.as_bytes() {
                            problems.push(format!(
                                "{}: upstream got framing {:?} body {:?} (want {framing:?} {body:?})",
                                case.name,
                                r.framing,
                                String::from_utf8_lossy(&r.body)
                            ));
                        }
                    }
                    other => problems.push(format!(
                        "{}: upstream got {} requests for it",
                        case.name,
                        other.len()
                    )),
                }
            }
        }
    }
    let amb = up.ambiguous();
    if !amb.is_empty() {
        problems.push(format!("upstream saw ambiguous framing: {amb:?}"));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n--- gateway log ---\n{}",
        problems.len(),
        problems.join("\n"),
        gw.logs()
    );
}

/// A request body whose chunked framing breaks after the head was proxied: the client gets a
/// 400 and a closed connection, and the upstream never receives a complete request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_chunks_never_complete_a_request_upstream() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let bodies: [(&str, &[u8]); 4] = [
        ("non_hex_size", b"zz\r\nhello\r\n0\r\n\r\n"),
        (
            "size_overflow",
            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        ),
        ("missing_crlf_after_data", b"5\r\nhelloXX0\r\n\r\n"),
        ("size_with_space", b"5 5\r\nhello\r\n0\r\n\r\n"),
    ];
    let mut problems = Vec::new();
    for (name, body) in bodies {
        let marker = format!("m-chunk-{name}");
        let raw = req(
            &marker,
            "POST",
            "1.1",
            &["Host: t", "Transfer-Encoding: chunked"],
            body,
        );
        let seen = exchange(gw.listen, raw, Duration::from_secs(2)).await;
        match &seen.resp {
            Ok(r) if r.status == 400 => {}
            Ok(r) => problems.push(format!("{name}: status {} body {:?}", r.status, r.body)),
            Err(e) => problems.push(format!("{name}: no response ({e})")),
        }
        if seen.resp.is_ok() && !seen.closed {
            problems.push(format!("{name}: connection left open"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if up.requests().iter().any(|r| r.target.contains(&marker)) {
            problems.push(format!("{name}: the upstream got a complete request"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n--- gateway log ---\n{}",
        problems.len(),
        problems.join("\n"),
        gw.logs()
    );
}

/// `GET` with a `Content-Length` body that looks like a second request: the body is the body.
/// The upstream sees one request (carrying those bytes as its body), never the inner one, and the
/// connection keeps serving real requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_request_in_a_body_stays_a_body() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let inner = b"GET /m-smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut raw = format!(
        "GET /m-outer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    raw.extend_from_slice(inner);
    let addr = gw.listen;
    let (first, second, closed) = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        conn.send_raw(&raw).unwrap();
        let first = conn.read_response().unwrap();
        let second = conn.get("/m-after", &[]).unwrap();
        let closed = conn.is_closed_within(Duration::from_millis(300));
        (first, second, closed)
    })
    .await
    .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "ok /m-outer");
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body, "ok /m-after",
        "the next answer is the next request's"
    );
    assert!(!closed);
    let reqs = up.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/m-outer", "/m-after"]);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].framing, Framing::Length(inner.len()));
    assert_eq!(reqs[0].body, inner);
    assert!(up.ambiguous().is_empty());
}

/// Absolute-form targets (RFC 9112 §3.2.2) are accepted and routed by their path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_target_is_routed_by_its_path() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let raw = b"GET http://t/m-absolute?q=1 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    let seen = exchange(gw.listen, raw, Duration::from_millis(300)).await;
    let resp = seen.resp.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(!seen.closed);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].target.ends_with("/m-absolute?q=1"),
        "{}",
        reqs[0].target
    );
    assert_eq!(reqs[0].header("host"), Some("t"));
    // An absolute-form authority that disagrees with Host is rejected.
    let raw = b"GET http://other/m-absolute-2 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    let seen = exchange(gw.listen, raw, Duration::from_secs(2)).await;
    let resp = seen.resp.expect("a response");
    let mut problems = Vec::new();
    check_error(
        "absolute_form_host_mismatch",
        &resp,
        400,
        "bad_request",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(seen.closed);
    assert!(!up.raw_contains("m-absolute-2"));
}

/// `client.max_header_bytes` (default 65536): a 70 KiB head gets a JSON 431 and a closed
/// connection, counted and logged; a head just under the limit is proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_size_limit_431_and_just_under_is_proxied() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;

    // 70 KiB head: 431.
    let big = "a".repeat(70 * 1024);
    let raw = req(
        "m-head-70k",
        "GET",
        "1.1",
        &["Host: t", &format!("X-Big: {big}")],
        b"",
    );
    let seen = exchange(gw.listen, raw, Duration::from_secs(2)).await;
    let resp = seen.resp.expect("a 431 before the close");
    let mut problems = Vec::new();
    check_error(
        "head_70k",
        &resp,
        431,
        "request_header_too_large",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(seen.closed, "closed after the 431");
    assert!(!up.raw_contains("m-head-70k"));

    // Just under the limit (the whole head, request line to blank line, is 65536 - 10 bytes).
    let prefix = "GET /m-head-under HTTP/1.1\r\nHost: t\r\nX-Big: ";
    let fill = 65536 - 10 - prefix.len() - 4;
    let raw = format!("{prefix}{}\r\n\r\n", "b".repeat(fill)).into_bytes();
    assert_eq!(raw.len(), 65536 - 10);
    let seen = exchange(gw.listen, raw, Duration::from_millis(300)).await;
    let resp = seen.resp.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert!(!seen.closed);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("x-big").map(str::len), Some(fill));

    // Counted once, route "none", and in the access log.
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"none\",status=\"431\"}", 1.0)
            .await,
        Some(1.0)
    );
    let logs = gw.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("access") && l.contains("status=431")),
        "{logs}"
    );
}

/// A configured smaller `max_header_bytes` applies to a head that arrives in many pieces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_size_limit_applies_across_reads() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "  max_header_bytes: 2048")).await;
    let addr = gw.listen;
    let (resp, closed) = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        conn.send_raw(b"GET /m-pieces HTTP/1.1\r\nHost: t\r\n")
            .unwrap();
        for i in 0..40 {
            if conn
                .send_raw(format!("X-Piece-{i}: {}\r\n", "p".repeat(80)).as_bytes())
                .is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let resp = conn.read_response();
        let closed = resp.is_ok() && conn.is_closed_within(Duration::from_secs(2));
        (resp, closed)
    })
    .await
    .unwrap();
    let resp = resp.expect("a 431");
    assert_eq!(resp.status, 431, "{}", resp.body);
    assert!(closed);
    assert!(!up.raw_contains("m-pieces"));
}

/// Heads Pingora rejects itself (here a NUL in a header value) get SPEC §4's JSON, are counted
/// under `route="none"` and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_rejections_are_counted_and_logged_once() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let nul = req("m-count-nul", "GET", "1.1", &["Host: t", "X: a\0b"], b"");
    let connect =
        b"CONNECT m-count.example:443 HTTP/1.1\r\nHost: m-count.example:443\r\n\r\n".to_vec();
    let te10 = req(
        "m-count-te10",
        "POST",
        "1.0",
        &["Transfer-Encoding: chunked"],
        b"0\r\n\r\n",
    );
    for raw in [nul, connect, te10] {
        let seen = exchange(gw.listen, raw, Duration::from_secs(2)).await;
        assert!(seen.resp.is_ok() && seen.closed);
    }
    // A good request on the same gateway is counted under its route, not "none".
    let seen = exchange(
        gw.listen,
        req("m-count-ok", "GET", "1.1", &["Host: t"], b""),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(seen.resp.unwrap().status, 200);
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"none\",status=\"400\"}", 2.0)
            .await,
        Some(2.0)
    );
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"none\",status=\"405\"}", 1.0)
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"/\",status=\"200\"}", 1.0)
            .await,
        Some(1.0)
    );
    let logs = gw.logs();
    let access: Vec<&str> = logs.lines().filter(|l| l.contains("access")).collect();
    let count = |s: &str| access.iter().filter(|l| l.contains(s)).count();
    assert_eq!(count("status=400"), 2, "{logs}");
    assert_eq!(count("status=405"), 1, "{logs}");
    assert_eq!(count("status=200"), 1, "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert_eq!(up.requests().len(), 1);
}

/// Header-deadline expiry: JSON 408 and close, one access-log line, counted, and no ERROR line
/// from Pingora (it never saw a byte of the late head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_deadline_408_is_quiet_counted_and_logged() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "  header_timeout_ms: 400")).await;
    let addr = gw.listen;
    let (resp, closed, elapsed) = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let started = Instant::now();
        conn.send_raw(b"GET /m-late HTTP/1.1\r\nHost: t\r\n")
            .unwrap();
        let resp = conn.read_response();
        let elapsed = started.elapsed();
        let closed = resp.is_ok() && conn.is_closed_within(Duration::from_secs(2));
        (resp, closed, elapsed)
    })
    .await
    .unwrap();
    let resp = resp.expect("a 408");
    let mut problems = Vec::new();
    check_error("late_head", &resp, 408, "request_timeout", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(closed);
    assert!(elapsed >= Duration::from_millis(350), "{elapsed:?}");
    assert!(!up.raw_contains("m-late"));
    // A connection that never sends a byte is closed without an answer and without a count.
    let silent = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        conn.is_closed_within(Duration::from_secs(3))
    })
    .await
    .unwrap();
    assert!(silent, "a silent connection is closed at the deadline");
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"none\",status=\"408\"}", 1.0)
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("gateway_header_timeouts_total").await,
        Some(2.0),
        "both connections were closed by the deadline"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logs = gw.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
    let lines408 = logs
        .lines()
        .filter(|l| l.contains("access") && l.contains("status=408"))
        .count();
    assert_eq!(lines408, 1, "{logs}");
}

/// A client that leaves in the middle of a head: no answer, no count, no access line, and no
/// ERROR line (Pingora never saw a byte of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_head_is_quiet() {
    let up = RawUpstream::start().await;
    let gw = GatewayProcess::start(&config(up.addr, "")).await;
    let addr = gw.listen;
    tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        conn.send_raw(b"GET /m-gone HTTP/1.1\r\nHost: t\r\nX-Partial: ")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(conn);
    })
    .await
    .unwrap();
    // A good request afterwards is logged; the partial one is not.
    let seen = exchange(
        gw.listen,
        req("m-after-gone", "GET", "1.1", &["Host: t"], b""),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(seen.resp.unwrap().status, 200);
    assert_eq!(
        gw.wait_metric("gateway_requests_total{route=\"/\",status=\"200\"}", 1.0)
            .await,
        Some(1.0)
    );
    let logs = gw.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(!logs.contains("m-gone"), "{logs}");
    assert!(!gw.metrics().await.contains("route=\"none\""));
    assert!(!up.raw_contains("m-gone"));
}
