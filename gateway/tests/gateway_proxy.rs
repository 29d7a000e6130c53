//! The proxy path end to end: routing, local answers, forwarded headers, upstream errors.

mod common;

use std::time::{Duration, Instant};

use common::{client, simple_config, GatewayProcess, RawConn, TestUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_answers_404_json_otherwise() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let yaml = format!(
        "server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
upstreams:
  a: {{ servers: [\"{}\"] }}
  b: {{ servers: [\"{}\"] }}
routes:
  - {{ path_prefix: /api/, upstream: a }}
  - {{ path_prefix: /api/reservations, upstream: b }}
",
        a.addr, b.addr
    );
    let gw = GatewayProcess::start(&yaml).await;
    let c = client();

    let r = c.get(gw.url("/api/events")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "a");
    let r = c.get(gw.url("/api/reservations/1")).send().await.unwrap();
    assert_eq!(r.headers()["x-upstream"], "b");

    let r = c.get(gw.url("/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "no_route");

    // The gateway's own health endpoint.
    let r = c.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    assert_eq!(
        a.hits() + b.hits(),
        2,
        "/health and 404 never reach an upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_answers_keep_the_connection_alive() {
    let a = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  a: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ path_prefix: /api/, upstream: a }}\n",
        a.addr
    ))
    .await;
    let mut conn = RawConn::connect(gw.listen);
    for _ in 0..3 {
        let r = conn.get("/missing", &[]).unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "no_route");
        assert_ne!(r.header("connection"), Some("close"));
    }
    let r = conn.get("/api/x", &[]).unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_kept_or_generated_and_forwarded() {
    let a = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&simple_config(&[a.addr])).await;
    let c = client();

    let r = c
        .get(gw.url("/x"))
        .header("x-request-id", "my-id-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "my-id-123");
    let seen = a.last_seen().unwrap();
    assert_eq!(seen.headers["x-request-id"], "my-id-123");

    let r = c.get(gw.url("/y")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a uuid: {generated}");
    let seen = a.last_seen().unwrap();
    assert_eq!(seen.headers["x-request-id"], generated);
    // The gateway tells the upstream who the client is.
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_502_upstream_unreachable() {
    let port = common::free_port();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Active checks would (rightly) mark the dead server down and turn this into 503
    // no_healthy_upstream; make them slow to conclude so the request meets the dead server.
    let gw = GatewayProcess::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  u:\n    servers: [\"{dead}\"]\n    health_check: {{ interval_ms: 60000, fall: 1000 }}\nroutes:\n  - {{ path_prefix: /, upstream: u }}\n"
    ))
    .await;
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 502, "{}", gw.logs());
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_upstream_timeout() {
    let a = TestUpstream::start("a").await;
    a.set_delay(Duration::from_secs(3));
    let gw = GatewayProcess::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  u:\n    servers: [\"{}\"]\n    read_timeout_ms: 300\nroutes:\n  - {{ path_prefix: /, upstream: u }}\n",
        a.addr
    ))
    .await;
    let started = Instant::now();
    let r = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_deadline_is_504() {
    let a = TestUpstream::start("a").await;
    a.set_delay(Duration::from_secs(3));
    let gw = GatewayProcess::start(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  u:\n    servers: [\"{}\"]\nroutes:\n  - {{ path_prefix: /, upstream: u, timeout_ms: 400 }}\n",
        a.addr
    ))
    .await;
    let started = Instant::now();
    let r = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_single_upstream_is_reached_again_through_a_fresh_connection() {
    let mut a = TestUpstream::start("a").await;
    let addr = a.addr;
    let gw = GatewayProcess::start(&simple_config(&[addr])).await;
    let c = client();
    // Leaves a pooled keep-alive connection to the upstream.
    assert_eq!(c.get(gw.url("/one")).send().await.unwrap().status(), 200);
    a.kill().await;
    let b = TestUpstream::start_on("b", addr).await;
    // The stale pooled connection must not turn into a 502 for this idempotent request.
    let r = c.get(gw.url("/two")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "b");
    assert_eq!(b.hits(), 1);
}
