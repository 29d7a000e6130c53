//! Request bodies and deadlines through the real gateway: slow bodies get 408 and never hold a
//! bulkhead slot, time spent in the gateway is not charged to the upstream, and paths are
//! normalized before routing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{client, GatewayProcess, RawConn, TestUpstream};

fn config(upstream: SocketAddr, client_section: &str, upstream_extra: &str, route: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
client:
{client_section}
upstreams:
  u:
    servers: [\"{upstream}\"]
{upstream_extra}
routes:
  - path_prefix: /api/
    upstream: u
{route}
"
    )
}

/// Sends a POST head announcing `len` body bytes, then `sent` of them, one every `gap`, for at
/// most `total`; then reads the answer. Returns (status, elapsed, closed afterwards).
fn trickle(
    addr: SocketAddr,
    len: usize,
    sent: usize,
    gap: Duration,
    total: Duration,
) -> (Option<u16>, Duration, bool) {
    let mut conn = RawConn::connect(addr);
    let started = Instant::now();
    let head = format!(
        "POST /api/slow HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    conn.send_raw(head.as_bytes()).unwrap();
    for _ in 0..sent {
        if started.elapsed() > total || conn.send_raw(b"x").is_err() {
            break;
        }
        std::thread::sleep(gap);
    }
    let status = conn.read_response().ok().map(|r| r.status);
    let elapsed = started.elapsed();
    let closed = conn.is_closed_within(Duration::from_secs(2));
    (status, elapsed, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_gets_408_at_the_route_deadline_and_never_reaches_the_upstream() {
    let up = TestUpstream::start("a").await;
    let cfg = config(
        up.addr,
        "  body_timeout_ms: 5000",
        "    circuit_breaker: { failure_rate: 0.5, min_requests: 1, window_ms: 10000, open_ms: 10000 }",
        "    timeout_ms: 1200",
    );
    let gw = GatewayProcess::start(&cfg).await;
    let addr = gw.listen;
    // One byte every 200 ms: every read is quick, the whole body is late.
    let (status, elapsed, closed) = tokio::task::spawn_blocking(move || {
        trickle(
            addr,
            100,
            100,
            Duration::from_millis(200),
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, Some(408));
    assert!(
        elapsed >= Duration::from_millis(1100) && elapsed < Duration::from_millis(2500),
        "answered after {elapsed:?}, route deadline 1200 ms"
    );
    assert!(closed, "a 408 closes the connection");
    assert_eq!(up.hits(), 0, "an incomplete body is never sent upstream");
    // The client's slowness is not an upstream failure: the breaker stays closed.
    assert_eq!(
        gw.metric("gateway_circuit_state{upstream=\"u\"}").await,
        Some(0.0)
    );
    let r = client().get(gw.url("/api/ok")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw
        .metric("gateway_requests_total{route=\"/api/\",status=\"408\"}")
        .await
        .is_some_and(|v| v >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_after_body_timeout() {
    let up = TestUpstream::start("a").await;
    let cfg = config(
        up.addr,
        "  body_timeout_ms: 400",
        "",
        "    timeout_ms: 10000",
    );
    let gw = GatewayProcess::start(&cfg).await;
    let addr = gw.listen;
    // Ten bytes of a hundred, then silence.
    let (status, elapsed, closed) = tokio::task::spawn_blocking(move || {
        trickle(
            addr,
            100,
            10,
            Duration::from_millis(10),
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, Some(408));
    assert!(
        elapsed < Duration::from_millis(1500),
        "answered after {elapsed:?}, body_timeout 400 ms"
    );
    assert!(closed);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_never_fill_the_bulkhead() {
    let up = TestUpstream::start("a").await;
    let cfg = config(
        up.addr,
        "  body_timeout_ms: 3000",
        "    max_inflight: 2",
        "    timeout_ms: 3000",
    );
    let gw = GatewayProcess::start(&cfg).await;
    let addr = gw.listen;
    // Twenty clients trickle bodies: ten times the bulkhead.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                trickle(
                    addr,
                    1000,
                    1000,
                    Duration::from_millis(100),
                    Duration::from_secs(6),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile everyone else is served.
    let c = client();
    for i in 0..20 {
        let r = c
            .post(gw.url(&format!("/api/fast/{i}")))
            .body("{\"ok\":true}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} while slow bodies arrive");
    }
    for h in slow {
        let (status, _, _) = h.await.unwrap();
        assert_eq!(status, Some(408));
    }
    assert_eq!(up.hits(), 20, "only the fast requests reached the upstream");
    assert_eq!(
        gw.metric("gateway_bulkhead_rejected_total{upstream=\"u\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_arrive_upstream_whole_with_one_length() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  body_timeout_ms: 2000", "", "")).await;
    let addr = gw.listen;
    let resp = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        // Chunked, in two pieces with a pause.
        conn.send_raw(
            b"POST /api/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        conn.send_raw(b"6\r\n world\r\n0\r\n\r\n").unwrap();
        let first = conn.read_response().unwrap();
        // Expect: 100-continue: the gateway asks for the body itself.
        conn.send_raw(
            b"POST /api/continue HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        let interim = conn.read_response().unwrap();
        conn.send_raw(b"abcd").unwrap();
        let second = conn.read_response().unwrap();
        // An empty chunked body.
        conn.send_raw(
            b"POST /api/empty HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .unwrap();
        let third = conn.read_response().unwrap();
        (first.status, interim.status, second.status, third.status)
    })
    .await
    .unwrap();
    assert_eq!(resp, (200, 100, 200, 200));
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].body_len, 11);
    assert_eq!(
        seen[0].headers.get("content-length").map(String::as_str),
        Some("11")
    );
    assert!(!seen[0].headers.contains_key("transfer-encoding"));
    assert_eq!(seen[1].body_len, 4);
    assert!(!seen[1].headers.contains_key("expect"));
    assert_eq!(seen[2].body_len, 0);
    assert_eq!(
        seen[2].headers.get("content-length").map(String::as_str),
        Some("0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_spent_in_the_limiter_is_not_an_upstream_failure() {
    let up = TestUpstream::start("a").await;
    // 2r/s, burst 10 without nodelay: the 6th request waits ~2.5 s, past the 800 ms deadline.
    let cfg = format!(
        "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
limit_req_zones:
  z: {{ key: global, rate: 2r/s }}
upstreams:
  u:
    servers: [\"{}\"]
    read_timeout_ms: 700
    outlier: {{ consecutive_failures: 2, base_ejection_ms: 10000, max_ejection_percent: 100 }}
    circuit_breaker: {{ failure_rate: 0.5, min_requests: 2, window_ms: 10000, open_ms: 10000 }}
routes:
  - path_prefix: /api/
    upstream: u
    timeout_ms: 800
    limit_req:
      - {{ zone: z, burst: 10 }}
",
        up.addr
    );
    let gw = GatewayProcess::start(&cfg).await;
    let c = client();
    let mut statuses = Vec::new();
    let reqs: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            let url = gw.url(&format!("/api/d/{i}"));
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for r in reqs {
        statuses.push(r.await.unwrap().unwrap());
    }
    assert!(
        statuses.iter().filter(|s| **s == 504).count() >= 4,
        "delays past the deadline answer 504: {statuses:?}"
    );
    // The upstream did nothing wrong: no failure recorded, breaker closed, not ejected.
    let failures = gw
        .metric(&format!(
            "gateway_upstream_requests_total{{upstream=\"u\",server=\"{}\",outcome=\"failure\"}}",
            up.addr
        ))
        .await
        .unwrap_or(0.0);
    assert_eq!(failures, 0.0);
    assert_eq!(
        gw.metric("gateway_circuit_state{upstream=\"u\"}").await,
        Some(0.0)
    );
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let r = c.get(gw.url("/api/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_still_charged_with_its_timeouts() {
    let up = TestUpstream::start("a").await;
    up.set_delay(Duration::from_millis(1500));
    let cfg = config(
        up.addr,
        "  body_timeout_ms: 2000",
        "    read_timeout_ms: 300\n    circuit_breaker: { failure_rate: 0.5, min_requests: 2, window_ms: 10000, open_ms: 10000 }",
        "    timeout_ms: 5000",
    );
    let gw = GatewayProcess::start(&cfg).await;
    let c = client();
    for _ in 0..2 {
        let r = c.post(gw.url("/api/x")).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 504);
    }
    assert_eq!(
        gw.metric("gateway_circuit_state{upstream=\"u\"}").await,
        Some(1.0),
        "two upstream timeouts open the breaker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalized_before_routing_and_forwarded_as_routed() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "  body_timeout_ms: 2000", "", "")).await;
    let addr = gw.listen;
    let cases: Vec<(&str, u16, Option<&str>)> = vec![
        ("/api/../admin/chaos", 404, None),
        ("/api/%2e%2e/admin/chaos", 404, None),
        ("/api/%2E%2E/admin/chaos", 404, None),
        ("/api/./x/../events?x=1", 200, Some("/api/events?x=1")),
        ("/api//events", 200, Some("/api/events")),
        ("//api/events", 200, Some("/api/events")),
        ("/api/%65vents", 200, Some("/api/events")),
        ("/api/plain", 200, Some("/api/plain")),
        ("/api%2F..%2Fadmin", 400, None),
        ("/api/..%2Fadmin", 400, None),
        ("/api/..%5Cadmin", 400, None),
        ("/api/%zz", 400, None),
        ("/api/../../admin", 400, None),
    ];
    let results = tokio::task::spawn_blocking(move || {
        cases
            .into_iter()
            .map(|(path, want, fwd)| {
                let mut conn = RawConn::connect(addr);
                let r = conn.get(path, &[]).unwrap();
                (path, want, fwd, r.status, r.json()["error"].clone())
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut forwarded = Vec::new();
    for (path, want, fwd, status, error) in results {
        assert_eq!(status, want, "{path}");
        match want {
            404 => assert_eq!(error, "no_route", "{path}"),
            400 => assert_eq!(error, "invalid_path", "{path}"),
            _ => {}
        }
        if let Some(f) = fwd {
            forwarded.push(f.to_string());
        }
    }
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(
        seen, forwarded,
        "the upstream sees exactly the routed paths"
    );
}
