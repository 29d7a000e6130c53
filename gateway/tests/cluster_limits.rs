//! Cluster-wide `limit_req` (SPEC §10.1) against real `redis-server` processes: the store stopped
//! and frozen (no request fails or waits past `timeout_ms`; fallback shown, then cleared), the
//! fallback rate `rate / N`, a reload that moves the store, and a Redis Cluster master killed
//! mid-trace. The NGINX differential of cluster zones is in `nginx_diff.rs`.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::{GatewayProcess, TestUpstream};
use redis_support::{RedisCluster, RedisServer};

/// Store round trip budget in these tests.
const TIMEOUT_MS: u64 = 50;
/// What a request may take beyond `TIMEOUT_MS` in a debug build on a loaded machine.
const MARGIN_MS: u64 = 250;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn yaml(upstream: std::net::SocketAddr, urls: &[String], rate: &str, burst: u64) -> String {
    yaml_with_timeout(upstream, urls, rate, burst, TIMEOUT_MS)
}

fn yaml_with_timeout(
    upstream: std::net::SocketAddr,
    urls: &[String],
    rate: &str,
    burst: u64,
    timeout_ms: u64,
) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "limit_store:\n  redis: [{urls}]\n  timeout_ms: {timeout_ms}\n\
         limit_req_zones:\n  z: {{ key: \"header:X-K\", rate: {rate}, scope: cluster }}\n\
         \x20 loc: {{ key: client_ip, rate: 1000r/s }}\n\
         upstreams:\n  u: {{ servers: [\"{upstream}\"], max_inflight: 500 }}\n\
         routes:\n  - path_prefix: /\n    upstream: u\n    limit_req:\n\
         \x20     - {{ zone: z, burst: {burst}, nodelay: true }}\n\
         \x20     - {{ zone: loc, burst: 1000, nodelay: true }}\n"
    )
}

/// One request with `X-K: key`; returns (status, how long it took).
async fn hit(client: &reqwest::Client, url: &str, key: &str) -> (u16, Duration) {
    let t = Instant::now();
    let resp = client
        .get(url)
        .header("x-k", key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    let status = resp.status().as_u16();
    let _ = resp.bytes().await;
    (status, t.elapsed())
}

/// Sends `n` sequential requests over `gws` round-robin; every one must be answered 200 or 429
/// within `TIMEOUT_MS + MARGIN_MS`. Returns the number of 200s.
async fn all_answered_fast(gws: &[&GatewayProcess], key: &str, n: usize) -> usize {
    let client = common::client();
    let mut passed = 0;
    for i in 0..n {
        let gw = gws[i % gws.len()];
        let (status, took) = hit(&client, &gw.url("/x"), key).await;
        assert!(
            status == 200 || status == 429,
            "request {i}: status {status}\n{}",
            gw.logs()
        );
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS + MARGIN_MS),
            "request {i} took {took:?} (timeout_ms {TIMEOUT_MS})"
        );
        passed += usize::from(status == 200);
    }
    passed
}

async fn fallback(gw: &GatewayProcess) -> Option<f64> {
    gw.metric("gateway_limit_store_fallback{zone=\"z\"}").await
}

/// Waits (bounded) until the fallback gauge of zone `z` is `want`, sending a request now and then
/// (a request or the heartbeat probes the store).
async fn wait_fallback(gw: &GatewayProcess, want: f64, within: Duration) -> bool {
    let client = common::client();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let _ = hit(&client, &gw.url("/x"), "probe").await;
        if fallback(gw).await == Some(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A request trace of `n` simultaneous requests for one new key over `gws`: how many passed.
async fn burst(gws: &[&GatewayProcess], key: &str, n: usize) -> usize {
    let client = common::client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = gws[i % gws.len()].url("/x");
        let client = client.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(
            async move { hit(&client, &url, &key).await.0 },
        ));
    }
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.expect("task") == 200);
    }
    passed
}

/// A Redis, an upstream and two gateways whose zone `z` (`rate`, `burst`) is shared in that
/// Redis, each having seen the other's heartbeat.
async fn two_gateways_one_redis(
    rate: &str,
    burst: u64,
) -> (RedisServer, TestUpstream, GatewayProcess, GatewayProcess) {
    two_gateways_one_redis_within(rate, burst, TIMEOUT_MS).await
}

async fn two_gateways_one_redis_within(
    rate: &str,
    burst: u64,
    timeout_ms: u64,
) -> (RedisServer, TestUpstream, GatewayProcess, GatewayProcess) {
    let redis = RedisServer::start(common::free_port());
    let up = TestUpstream::start("u").await;
    let y = yaml_with_timeout(up.addr, &[redis.url()], rate, burst, timeout_ms);
    let a = GatewayProcess::start(&y).await;
    let b = GatewayProcess::start(&y).await;
    for gw in [&a, &b] {
        assert_eq!(
            gw.wait_metric("gateway_cluster_gateways", 2.0).await,
            Some(2.0)
        );
    }
    (redis, up, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_down_or_frozen_falls_back_fast_and_recovers() {
    let _serial = SERIAL.lock().await;
    // 2r/s, burst 3, shared by two gateways.
    let (redis, _up, a, b) = two_gateways_one_redis("2r/s", 3).await;
    let gws = [&a, &b];
    // Cluster decisions: 8 at once over both gateways → burst + 1 = 4 pass in all.
    assert_eq!(burst(&gws, "k1", 8).await, 4);
    assert!(wait_fallback(&a, 0.0, Duration::from_secs(5)).await);
    let st = a.status().await;
    assert_eq!(st["limitReqZones"]["z"]["scope"], "cluster", "{st}");
    assert_eq!(st["limitReqZones"]["z"]["fallback"], false, "{st}");
    assert_eq!(st["limitReqZones"]["loc"]["scope"], "local", "{st}");
    assert_eq!(st["limitStore"]["mode"], "standalone", "{st}");
    assert_eq!(st["limitStore"]["gateways"], 2, "{st}");

    // Store down: every request answered within the budget, decided locally at rate / 2.
    redis.stop();
    all_answered_fast(&gws, "k2", 30).await;
    for gw in gws {
        assert_eq!(fallback(gw).await, Some(1.0), "{}", gw.logs());
        let st = gw.status().await;
        assert_eq!(st["limitReqZones"]["z"]["fallback"], true, "{st}");
        assert_eq!(st["limitReqZones"]["z"]["fallbackRate"], "1r/s", "{st}");
        assert!(
            gw.logs().contains("limit_scope=\"fallback\""),
            "{}",
            gw.logs()
        );
    }
    // Fallback arithmetic: each gateway's own bucket at 1r/s with burst 3 → 4 + 4 of 12.
    assert_eq!(burst(&gws, "k3", 12).await, 8);

    // Store back: cluster decisions resume by themselves within seconds.
    redis.restart();
    for gw in gws {
        assert!(
            wait_fallback(gw, 0.0, Duration::from_secs(5)).await,
            "fallback still 1 after the store came back\n{}",
            gw.logs()
        );
    }
    assert_eq!(burst(&gws, "k4", 8).await, 4, "cluster decisions again");

    // Store frozen (SIGSTOP: connections stay open, nothing answers).
    redis.freeze();
    let frozen = all_answered_fast(&gws, "k5", 30).await;
    assert!(frozen > 0);
    for gw in gws {
        assert_eq!(fallback(gw).await, Some(1.0), "{}", gw.logs());
    }
    redis.thaw();
    for gw in gws {
        assert!(
            wait_fallback(gw, 0.0, Duration::from_secs(5)).await,
            "fallback still 1 after SIGCONT\n{}",
            gw.logs()
        );
    }
    assert_eq!(
        burst(&gws, "k6", 8).await,
        4,
        "cluster decisions after the freeze"
    );
    for gw in gws {
        let m = gw.metrics().await;
        for r in ["ok", "error", "timeout"] {
            let v = common::metric_value(
                &m,
                &format!("gateway_limit_store_requests_total{{result=\"{r}\"}}"),
            );
            assert!(v.is_some(), "{r} missing:\n{m}");
        }
        assert!(m.contains("gateway_limit_store_duration_seconds_bucket"));
        assert!(gw.logs().contains("limit_scope=\"cluster\""));
    }
}

/// Many simultaneous requests for one key over two gateways: decisions that queue up while a
/// call is on the wire go together in one script call, and the arithmetic stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_decisions_are_batched_and_exact() {
    let _serial = SERIAL.lock().await;
    // 1r/m: nothing leaks back during the test; burst 50 → exactly 51 of 150 pass. A generous
    // timeout: this test is about batching, and a store call that a loaded machine delays past
    // 50 ms would send its decisions to the local fallback (more passes).
    let (redis, _up, a, b) = two_gateways_one_redis_within("1r/m", 50, 1_000).await;
    let gws = [&a, &b];
    assert_eq!(burst(&gws, "many", 150).await, 51);
    for gw in gws {
        assert_eq!(fallback(gw).await, Some(0.0), "{}", gw.logs());
    }
    let calls = summed(&gws, "gateway_limit_store_batch_size_count").await;
    let decisions = summed(&gws, "gateway_limit_store_batch_size_sum").await;
    assert_eq!(decisions, 150.0, "every decision went to the store");
    // Each script call is one EVALSHA (plus, at most once per gateway, the retry after a NOSCRIPT
    // miss if the first decision beat the heartbeat's SCRIPT LOAD).
    let evalsha = redis.command_calls("evalsha") as f64;
    assert!(
        calls <= evalsha && evalsha <= calls + 2.0,
        "{evalsha} EVALSHA for {calls} script calls"
    );
    println!("150 decisions in {calls} script calls ({evalsha} EVALSHA)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_moves_the_store_and_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let r1 = RedisServer::start(common::free_port());
    let r2 = RedisServer::start(common::free_port());
    let up = TestUpstream::start("u").await;
    let gw = GatewayProcess::start(&yaml(up.addr, &[r1.url()], "2r/s", 3)).await;
    assert_eq!(burst(&[&gw], "a", 6).await, 4);
    let before = r2.command_calls("evalsha");
    gw.write_config(&yaml(up.addr, &[r2.url()], "2r/s", 3));
    gw.sighup();
    let reloaded = gw
        .wait_metric("gateway_config_reloads_total{result=\"ok\"}", 1.0)
        .await;
    assert_eq!(reloaded, Some(1.0), "{}", gw.logs());
    // The new store decides (a fresh Redis: key "a" starts afresh there).
    assert!(
        wait_fallback(&gw, 0.0, Duration::from_secs(5)).await,
        "{}",
        gw.logs()
    );
    assert!(r2.command_calls("evalsha") > before);
    let calls_r1 = r1.command_calls("evalsha");
    assert_eq!(burst(&[&gw], "b", 6).await, 4);
    assert_eq!(
        r1.command_calls("evalsha"),
        calls_r1,
        "old store no longer asked"
    );
    let st = gw.status().await;
    assert_eq!(st["limitStore"]["redis"][0], r2.url(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_master_killed_mid_trace() {
    let _serial = SERIAL.lock().await;
    let ports = [(); 6].map(|_| common::free_port());
    let cluster = RedisCluster::start(ports);
    let up = TestUpstream::start("u").await;
    let y = yaml(up.addr, &cluster.urls(), "1000r/s", 1000);
    let g1 = GatewayProcess::start(&y).await;
    let g2 = GatewayProcess::start(&y).await;
    let g3 = GatewayProcess::start(&y).await;
    let gws = [&g1, &g2, &g3];
    for gw in gws {
        assert_eq!(
            gw.wait_metric("gateway_cluster_gateways", 3.0).await,
            Some(3.0),
            "{}",
            gw.logs()
        );
    }
    all_answered_fast(&gws, "trace", 30).await;
    for gw in gws {
        assert!(wait_fallback(gw, 0.0, Duration::from_secs(5)).await);
    }
    // Kill the master holding the trace key's slot, keep the trace going through the failover.
    let victim = cluster.master_of("lr:{h:trace}:z");
    cluster.nodes[victim].stop();
    let killed = Instant::now();
    let mut fell_back = false;
    let mut recovered = None;
    let client = common::client();
    let mut i = 0usize;
    while killed.elapsed() < Duration::from_secs(20) {
        let gw = gws[i % 3];
        i += 1;
        let (status, took) = hit(&client, &gw.url("/x"), "trace").await;
        assert!(
            status == 200 || status == 429,
            "status {status} during failover"
        );
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS + MARGIN_MS),
            "request took {took:?} during failover"
        );
        if i.is_multiple_of(10) {
            let fb: Vec<Option<f64>> = futures_fallbacks(&gws).await;
            if fb.contains(&Some(1.0)) {
                fell_back = true;
            } else if fell_back && fb.iter().all(|f| *f == Some(0.0)) {
                recovered = Some(killed.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fell_back, "no gateway fell back while the slot failed over");
    let recovered = recovered.unwrap_or_else(|| {
        panic!(
            "not back to cluster decisions 20 s after the kill\n{}",
            g1.logs()
        )
    });
    println!("cluster decisions again {recovered:?} after the master was killed ({i} requests)");
    cluster.wait_healthy(Duration::from_secs(20));
    // Exact again: a 2r/s burst-3 check is not possible on this 1000r/s zone, so check that the
    // store decides: no new fallback and store calls succeed.
    let ok_before: f64 = ok_calls(&gws).await;
    all_answered_fast(&gws, "trace", 30).await;
    assert!(ok_calls(&gws).await >= ok_before + 30.0);
    for gw in gws {
        assert_eq!(fallback(gw).await, Some(0.0));
    }
}

async fn futures_fallbacks(gws: &[&GatewayProcess]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for gw in gws {
        out.push(fallback(gw).await);
    }
    out
}

async fn ok_calls(gws: &[&GatewayProcess]) -> f64 {
    summed(gws, "gateway_limit_store_requests_total{result=\"ok\"}").await
}

/// A metric summed over `gws` (0 where absent).
async fn summed(gws: &[&GatewayProcess], name: &str) -> f64 {
    let mut sum = 0.0;
    for gw in gws {
        sum += gw.metric(name).await.unwrap_or(0.0);
    }
    sum
}
