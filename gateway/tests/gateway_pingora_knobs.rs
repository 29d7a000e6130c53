//! Pingora's own knobs in the config (`server.work_stealing`,
//! `server.upstream_keepalive_pool_size`, `server.fast_timeout_to_tokio_threshold_seconds`, an
//! upstream's `keepalive_idle_timeout_ms` and `tcp_keepalive`), seen from outside: the process
//! runs with them, and the upstream connections it keeps carry them (read with `ss`, as an
//! operator would), and its timeouts still fire.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, GatewayProcess, TestUpstream};

fn config(upstream: std::net::SocketAddr, server: &str, upstream_extra: &str) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1{server} }}
upstreams:
  u:
    servers: [\"{upstream}\"]
    health_check: {{ path: /health, interval_ms: 60000 }}
{upstream_extra}
routes:
  - path_prefix: /
    upstream: u
"
    )
}

/// Established connections to `peer` as `ss` shows them, with their timers (`-o`).
fn connections_to(peer: std::net::SocketAddr) -> Vec<String> {
    let out = Command::new("ss")
        .args(["-tnoH", "state", "established", "dst", &peer.to_string()])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_and_idle_timeout_apply_to_upstream_connections() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(
        up.addr,
        ", work_stealing: false, upstream_keepalive_pool_size: 16",
        "    keepalive_idle_timeout_ms: 1500\n    tcp_keepalive: { idle_ms: 7000, interval_ms: 3000, count: 4 }",
    ))
    .await;
    let r = client().get(gw.url("/one")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The pooled connection to the upstream probes with the configured idle time.
    let pooled = connections_to(up.addr);
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    assert!(pooled[0].contains("timer:(keepalive,"), "{pooled:?}");
    // The time left before the first probe, in seconds. `ss` prints it as "6.99sec" on Linux;
    // under gVisor (this sandbox) the same value is printed with an "ms" suffix, so only the
    // number is read.
    let timer = pooled[0]
        .split("timer:(keepalive,")
        .nth(1)
        .unwrap_or_else(|| panic!("keepalive timer in {pooled:?}"));
    let number: String = timer
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let left: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("keepalive timer in {pooled:?}"));
    assert!(left > 5.0 && left <= 7.0, "idle_ms 7000: {pooled:?}");
    // Idle in the pool longer than keepalive_idle_timeout_ms: closed by the gateway.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !connections_to(up.addr).is_empty() {
        assert!(
            Instant::now() < deadline,
            "pooled connection still open: {:?}",
            connections_to(up.addr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client().get(gw.url("/two")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tcp_keepalive_upstream_connections_have_no_probe_timer() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr, "", "")).await;
    let r = client().get(gw.url("/one")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pooled = connections_to(up.addr);
    assert_eq!(pooled.len(), 1, "{pooled:?}");
    assert!(!pooled[0].contains("keepalive"), "{pooled:?}");
}

/// `fast_timeout_to_tokio_threshold_seconds: 0` moves every Pingora timeout of a second or more
/// to tokio's timer: the upstream read timeout still ends a slow answer on time, and a quick one
/// is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts_on_tokios_timer_still_fire() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(
        up.addr,
        ", fast_timeout_to_tokio_threshold_seconds: 0",
        "    read_timeout_ms: 1500",
    ))
    .await;
    let r = client().get(gw.url("/quick")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    up.set_delay(Duration::from_secs(5));
    let started = Instant::now();
    let r = client().get(gw.url("/slow")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "read_timeout_ms 1500, answered after {took:?}"
    );
}
