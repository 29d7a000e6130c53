//! Slowloris and slow-body (R-U-Dead-Yet) attacks with the real `slowhttptest` (Debian package
//! `slowhttptest`, installed by scripts/test.sh) against the real gateway, while a well-behaved
//! client keeps sending requests: every one of them must be served.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, GatewayProcess, TestUpstream};

fn config(upstream: SocketAddr) -> String {
    format!(
        "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1 }}
client:
  header_timeout_ms: 2000
  body_timeout_ms: 2000
upstreams:
  u:
    servers: [\"{upstream}\"]
    max_inflight: 8
routes:
  - path_prefix: /api/
    upstream: u
    timeout_ms: 4000
"
    )
}

/// Runs `slowhttptest` with `mode_args` against `url` for `secs` seconds while a client sends
/// one request every 50 ms; returns the statuses the client got.
async fn attack_while_serving(
    url: String,
    ok_url: String,
    mode_args: &[&str],
    secs: u64,
) -> Vec<u16> {
    let mut attack = Command::new("slowhttptest")
        .args(mode_args)
        .args(["-c", "400", "-r", "200", "-i", "1", "-p", "3", "-l"])
        .arg(secs.to_string())
        .args(["-u", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "slowhttptest is not installed: apt-get install slowhttptest (scripts/test.sh does)",
        );
    // Let the attack build up its connections first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = client();
    let mut statuses = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs.saturating_sub(3));
    while Instant::now() < until {
        let status = match c.post(&ok_url).body("{\"hello\":1}").send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        };
        statuses.push(status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs + 10);
    loop {
        if attack.try_wait().expect("wait slowhttptest").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = attack.kill();
            let _ = attack.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_shut_out_other_clients() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr)).await;
    let statuses = attack_while_serving(
        gw.url("/api/rudy"),
        gw.url("/api/ok"),
        &["-B", "-s", "8192", "-x", "10"],
        10,
    )
    .await;
    assert!(statuses.len() > 20, "the probe ran: {}", statuses.len());
    let bad: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "every request of the well-behaved client is served during a slow-body attack; \
         {} of {} were not: {bad:?}",
        bad.len(),
        statuses.len()
    );
    // The attackers got 408 (body too slow), never an upstream slot.
    let timeouts = gw
        .metric("gateway_requests_total{route=\"/api/\",status=\"408\"}")
        .await
        .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "slow bodies answered 408: {timeouts}");
    assert_eq!(
        gw.metric("gateway_bulkhead_rejected_total{upstream=\"u\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
    // slowhttptest's availability probe GETs the same URL; the attack's POSTs never arrive.
    let slow_posts = up
        .seen()
        .iter()
        .filter(|s| s.uri == "/api/rudy" && s.method == "POST")
        .count();
    assert_eq!(slow_posts, 0, "no incomplete body reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_shut_out_other_clients() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&config(up.addr)).await;
    let statuses = attack_while_serving(
        gw.url("/api/loris"),
        gw.url("/api/ok"),
        &["-H", "-x", "10"],
        10,
    )
    .await;
    assert!(statuses.len() > 20, "the probe ran: {}", statuses.len());
    let bad: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "every request of the well-behaved client is served during slowloris; \
         {} of {} were not: {bad:?}",
        bad.len(),
        statuses.len()
    );
    let timeouts = gw
        .metric("gateway_header_timeouts_total")
        .await
        .unwrap_or(0.0);
    assert!(
        timeouts >= 1.0,
        "slow heads closed by the head deadline: {timeouts}"
    );
    // slowhttptest's probe GETs the same URL with an ordinary head; an attack head (with its
    // trickled `X-..` lines) never reaches the upstream.
    let own = ["x-forwarded-for", "x-real-ip", "x-request-id"];
    let attack_heads = up
        .seen()
        .iter()
        .filter(|s| {
            s.uri == "/api/loris"
                && s.headers
                    .keys()
                    .any(|k| k.starts_with("x-") && !own.contains(&k.as_str()))
        })
        .count();
    assert_eq!(attack_heads, 0, "no slowloris head reached the upstream");
}
