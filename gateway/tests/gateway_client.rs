//! Client-side protections through the real gateway: request-head deadline, body limit,
//! trusted-proxy client IP.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{client, GatewayProcess, RawConn, TestUpstream};

fn config(upstream: std::net::SocketAddr, client_section: &str, extra: &str) -> String {
    format!(
        "server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
client:
{client_section}
{extra}
upstreams:
  u: {{ servers: [\"{upstream}\"] }}
routes:
  - path_prefix: /
    upstream: u
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_head_gets_408_and_close_within_the_deadline() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  header_timeout_ms: 600", "")).await;
    let addr = gw.listen;
    let (elapsed, resp, closed) = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let started = Instant::now();
        // One header line every 150 ms: each read is quick, the whole head is late.
        conn.send_raw(b"GET /x HTTP/1.1\r\n").unwrap();
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(150));
            if conn
                .stream
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .is_err()
            {
                break;
            }
            if started.elapsed() > Duration::from_millis(900) {
                break;
            }
        }
        let resp = conn.read_response();
        let elapsed = started.elapsed();
        let closed = conn.is_closed_within(Duration::from_secs(2));
        (elapsed, resp, closed)
    })
    .await
    .unwrap();
    let resp = resp.expect("a 408 response before the close");
    assert_eq!(resp.status, 408);
    assert_eq!(resp.json()["error"], "request_timeout");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed, "connection closed after the 408");
    // Deadline 600 ms; generous tolerance for a debug build on a shared machine.
    assert!(
        elapsed < Duration::from_millis(600 + 1500),
        "took {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(550),
        "too early: {elapsed:?}"
    );
    assert_eq!(up.hits(), 0, "the late request never reached the upstream");
    assert_eq!(gw.metric("gateway_header_timeouts_total").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connection_may_idle_but_each_head_has_the_deadline() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  header_timeout_ms: 1000", "")).await;
    let addr = gw.listen;
    tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let r = conn.get("/a", &[]).unwrap();
        assert_eq!(r.status, 200);
        // Idle longer than the head deadline between requests: still fine.
        std::thread::sleep(Duration::from_millis(1300));
        let r = conn.get("/b", &[]).unwrap();
        assert_eq!(r.status, 200);
        // A head sent in two parts, each quick, whole within the deadline: fine.
        conn.send_raw(b"GET /c HTTP/1.1\r\nHost: t\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        conn.send_raw(b"\r\n").unwrap();
        let r = conn.read_response().unwrap();
        assert_eq!(r.status, 200);
        // The next head drips past the deadline: 408.
        conn.send_raw(b"GET /d HTTP/1.1\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(1300));
        let _ = conn.send_raw(b"Host: t\r\n\r\n");
        let r = conn.read_response().unwrap();
        assert_eq!(r.status, 408);
    })
    .await
    .unwrap();
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413_by_content_length_and_by_chunks() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  max_body_bytes: 1000", "")).await;
    let c = client();

    // Within the limit: proxied.
    let r = c
        .post(gw.url("/small"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last_seen().unwrap().body_len, 1000);
    let hits = up.hits();

    // Content-Length over the limit: 413 at once, nothing sent upstream.
    let r = c
        .post(gw.url("/big"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    assert_eq!(
        up.hits(),
        hits,
        "a declared oversize body never reaches the upstream"
    );

    // Chunked body over the limit: 413 once the count passes the limit.
    let addr = gw.listen;
    let resp = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        conn.send_raw(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for _ in 0..3 {
            let chunk = vec![b'y'; 400];
            let mut msg = format!("{:x}\r\n", chunk.len()).into_bytes();
            msg.extend_from_slice(&chunk);
            msg.extend_from_slice(b"\r\n");
            if conn.send_raw(&msg).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = conn.send_raw(b"0\r\n\r\n");
        conn.read_response()
    })
    .await
    .unwrap()
    .expect("a response");
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "payload_too_large");
}

async fn real_ip_seen(gw: &GatewayProcess, up: &TestUpstream, xff: &str) -> (u16, Option<String>) {
    let r = client()
        .get(gw.url("/who"))
        .header("x-forwarded-for", xff)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let seen = if status == 200 {
        up.last_seen()
            .and_then(|s| s.headers.get("x-real-ip").cloned())
    } else {
        None
    };
    (status, seen)
}

const PER_IP: &str = "limit_req_zones:\n  one: { key: client_ip, rate: 1r/m }";

fn limited(upstream: std::net::SocketAddr, trusted: &str) -> String {
    format!(
        "server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
client:
  trusted_proxies: [{trusted}]
{PER_IP}
upstreams:
  u: {{ servers: [\"{upstream}\"] }}
routes:
  - path_prefix: /
    upstream: u
    limit_req: [{{ zone: one, burst: 0, nodelay: true }}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    // The test client connects from 127.0.0.1: trusted here.
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&limited(up.addr, "\"127.0.0.0/8\"")).await;
    let (s, ip) = real_ip_seen(&gw, &up, "203.0.113.7").await;
    assert_eq!((s, ip.as_deref()), (200, Some("203.0.113.7")));
    // Same client again: limited (1r/m, burst 0).
    let (s, _) = real_ip_seen(&gw, &up, "198.51.100.1, 203.0.113.7").await;
    assert_eq!(s, 429, "right-most untrusted address is the key");
    // Another client behind the same proxy: its own key.
    let (s, ip) = real_ip_seen(&gw, &up, "203.0.113.8").await;
    assert_eq!((s, ip.as_deref()), (200, Some("203.0.113.8")));
    // The upstream sees the chain with the proxy appended.
    assert_eq!(
        up.last_seen().unwrap().headers["x-forwarded-for"],
        "203.0.113.8, 127.0.0.1"
    );
    drop(gw);

    // Not trusted: a spoofed header changes nothing.
    let up2 = TestUpstream::start("b").await;
    let gw = GatewayProcess::start(&limited(up2.addr, "\"10.0.0.0/8\"")).await;
    let (s, ip) = real_ip_seen(&gw, &up2, "203.0.113.7").await;
    assert_eq!((s, ip.as_deref()), (200, Some("127.0.0.1")));
    let (s, _) = real_ip_seen(&gw, &up2, "203.0.113.99").await;
    assert_eq!(s, 429, "spoofed X-Forwarded-For does not buy a new key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_keepalive_timeout() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  keepalive_timeout_ms: 1000", "")).await;
    let addr = gw.listen;
    let first = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let first = conn.get("/x", &[]).unwrap();
        assert_closed_after_a_second_idle(&mut conn);
        first
    })
    .await
    .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), Some("keep-alive"));
}

/// Waits (at most 4 s) until the gateway closes `conn`, idle from now, and checks that it did
/// so after about a second (`keepalive_timeout_ms: 1000`).
fn assert_closed_after_a_second_idle(conn: &mut RawConn) {
    let idle = Instant::now();
    assert!(
        conn.is_closed_within(Duration::from_secs(4)),
        "the idle connection was closed"
    );
    let closed_at = idle.elapsed();
    assert!(
        closed_at >= Duration::from_millis(900) && closed_at < Duration::from_millis(2500),
        "closed after {closed_at:?} of idleness, keepalive_timeout_ms 1000"
    );
}

/// The idle limit runs from the end of each request, not from the first one: a connection
/// whose requests come more often than `keepalive_timeout_ms` stays open past it (the gateway
/// arms one timer per connection and moves it when it fires early), then closes once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keepalive_timeout_counts_from_the_last_request() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  keepalive_timeout_ms: 1000", "")).await;
    let addr = gw.listen;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let mut statuses = Vec::new();
        // 4 requests 600 ms apart: 1.8 s on one connection, never 1 s idle.
        for i in 0..4 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(600));
            }
            statuses.push(conn.get("/x", &[]).map(|r| r.status).unwrap_or(0));
        }
        assert_closed_after_a_second_idle(&mut conn);
        statuses
    })
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [200, 200, 200, 200],
        "every request on the kept-alive connection"
    );
}

/// `client.keepalive_requests` (NGINX's `keepalive_requests`): the n-th request on a connection
/// is answered with `Connection: close` and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_after_keepalive_requests() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  keepalive_requests: 3", "")).await;
    let addr = gw.listen;
    let (answers, closed) = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        let answers: Vec<_> = (0..3)
            .map(|i| conn.get(&format!("/r{i}"), &[]).expect("request"))
            .collect();
        (answers, conn.is_closed_within(Duration::from_secs(2)))
    })
    .await
    .unwrap();
    let connection: Vec<_> = answers
        .iter()
        .map(|r| {
            (
                r.status,
                r.header("connection").map(str::to_ascii_lowercase),
            )
        })
        .collect();
    assert_eq!(
        connection,
        [
            (200, Some("keep-alive".to_string())),
            (200, Some("keep-alive".to_string())),
            (200, Some("close".to_string())),
        ]
    );
    assert!(
        closed,
        "the connection stays open after the last allowed request"
    );
    assert_eq!(up.hits(), 3);
}
