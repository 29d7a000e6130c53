//! Unit tests of the pools through their public API (and the `*_at` variants for time).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::config::model::{
    CircuitBreakerSettings, ClientSettings, ConfigSource, HealthCheck, Outlier, ServerSettings,
    ServerSpec, Upstream,
};

fn upstream(name: &str, ports: &[u16]) -> Upstream {
    Upstream {
        name: name.to_string(),
        servers: ports
            .iter()
            .map(|&port| ServerSpec {
                host: "127.0.0.1".to_string(),
                port,
            })
            .collect(),
        max_inflight: 2,
        queue: 0,
        queue_timeout: Duration::ZERO,
        connect_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_secs(16),
        write_timeout: Duration::from_secs(5),
        retries: 1,
        health_check: HealthCheck {
            path: "/health".to_string(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            rise: 2,
            fall: 2,
        },
        outlier: Outlier {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: 50,
        },
        circuit_breaker: CircuitBreakerSettings {
            failure_rate: 0.5,
            min_requests: 4,
            window: Duration::from_secs(10),
            open: Duration::from_millis(200),
        },
        failure_statuses: vec![500, 502, 504],
        keepalive_idle_timeout: Duration::from_secs(60),
        tcp_keepalive: None,
    }
}

fn gateway(upstreams: Vec<Upstream>) -> GatewayConfig {
    GatewayConfig {
        server: ServerSettings {
            threads: 1,
            grace_period_seconds: 1,
            graceful_shutdown_timeout_seconds: 1,
            work_stealing: true,
            upstream_keepalive_pool_size: 128,
            fast_timeout_to_tokio_threshold_seconds: 900,
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        client: ClientSettings {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_body_bytes: 65536,
            body_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            trusted_proxies: Vec::new(),
            max_connections: None,
        },
        limit_req_status: 429,
        limit_conn_status: 429,
        limit_store: None,
        limit_req_zones: BTreeMap::new(),
        limit_conn_zones: BTreeMap::new(),
        upstreams: upstreams.into_iter().map(|u| (u.name.clone(), u)).collect(),
        routes: Vec::new(),
        source: ConfigSource {
            path: "test.yaml".to_string(),
            sha256: String::new(),
            loaded_at: SystemTime::now(),
        },
    }
}

fn registry(upstreams: Vec<Upstream>) -> Arc<Upstreams> {
    let u = Upstreams::new();
    u.apply(&gateway(upstreams));
    u
}

fn fail(pool: &UpstreamPool, index: usize, times: usize, now: Instant) {
    for _ in 0..times {
        pool.report_at(index, Outcome::Failure, now);
    }
}

fn server_status(u: &Upstreams, pool: &str, index: usize) -> ServerStatus {
    u.status().upstreams[pool].servers[index].clone()
}

#[test]
fn select_round_robins_and_prefers_least_inflight() {
    let u = registry(vec![upstream("p", &[1001, 1002, 1003])]);
    let pool = u.pool("p").unwrap();
    let mut seen = [0usize; 3];
    for _ in 0..30 {
        seen[pool.select(&[]).unwrap().index] += 1;
    }
    assert_eq!(seen, [10, 10, 10], "idle servers share round-robin");

    let _busy0 = pool.server_guard(0);
    let _busy1 = pool.server_guard(1);
    for _ in 0..5 {
        let s = pool.select(&[]).unwrap();
        assert_eq!(s.index, 2, "least in flight wins");
        assert_eq!(s.addr, "127.0.0.1:1003".parse().unwrap());
        assert_eq!(&*s.server, "127.0.0.1:1003");
    }
    assert_eq!(server_status(&u, "p", 0).inflight, 1);
    drop(_busy0);
    assert_eq!(server_status(&u, "p", 0).inflight, 0);
}

#[test]
fn select_skips_tried_down_ejected_and_unresolved() {
    let u = registry(vec![upstream("p", &[1001, 1002, 1003])]);
    let pool = u.pool("p").unwrap();
    let now = Instant::now();

    // Tried servers are skipped; when every available one was tried, say so.
    for _ in 0..6 {
        assert_eq!(pool.select_at(&[0, 2], now).unwrap().index, 1);
    }
    let err = pool.select_at(&[0, 1, 2], now).unwrap_err();
    assert!(err.all_tried());
    assert_eq!(err.available_tried, 3);

    // Down (active check) and ejected (passive) servers are skipped.
    pool.server_states()[0].set_healthy(false);
    fail(&pool, 1, 3, now);
    assert!(server_status(&u, "p", 1).ejected);
    for _ in 0..6 {
        assert_eq!(pool.select_at(&[], now).unwrap().index, 2);
    }
    // An unresolved server is skipped too; nothing left → not "all tried".
    pool.server_states()[2].set_addr(None);
    let err = pool.select_at(&[], now).unwrap_err();
    assert!(!err.all_tried());
    let st = server_status(&u, "p", 2);
    assert!(!st.healthy && st.address.is_none());

    // The ejected one comes back when its time is up.
    let later = now + Duration::from_secs(10);
    assert_eq!(pool.select_at(&[], later).unwrap().index, 1);
}

#[test]
fn ejection_respects_percent_cap_and_keeps_one() {
    let u = registry(vec![
        upstream("two", &[1001, 1002]),
        upstream("one", &[1001]),
        upstream("four", &[1001, 1002, 1003, 1004]),
    ]);
    // After the registry: server clocks start at creation.
    let now = Instant::now();

    let two = u.pool("two").unwrap();
    fail(&two, 0, 3, now);
    fail(&two, 1, 10, now);
    let st = &u.status().upstreams["two"];
    assert!(st.servers[0].ejected);
    assert!(!st.servers[1].ejected, "50 % of 2 is one server");
    assert_eq!(st.servers[1].consecutive_failures, 10);
    assert_eq!(two.select_at(&[], now).unwrap().index, 1);

    let one = u.pool("one").unwrap();
    fail(&one, 0, 10, now);
    assert!(
        !server_status(&u, "one", 0).ejected,
        "the last server stays"
    );

    let four = u.pool("four").unwrap();
    for i in 0..4 {
        fail(&four, i, 3, now);
    }
    let ejected = u.status().upstreams["four"]
        .servers
        .iter()
        .filter(|s| s.ejected)
        .count();
    assert_eq!(ejected, 2, "50 % of 4");

    // Once the first ejection ends, the still-failing server may take its place.
    let later = now + Duration::from_secs(10);
    fail(&two, 1, 1, later);
    assert_eq!(two.select_at(&[], later).unwrap().index, 0);
}

#[test]
fn ejection_grows_and_expires_with_counter_reset() {
    let u = registry(vec![upstream("p", &[1001, 1002])]);
    let t0 = Instant::now();
    let pool = u.pool("p").unwrap();

    fail(&pool, 0, 3, t0);
    let st = server_status(&u, "p", 0);
    assert!(st.ejected);
    assert_eq!(st.times_ejected, 1);
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.ejected_for_ms > 9_000 && st.ejected_for_ms <= 10_000);
    // Failures of requests still in flight while ejected are ignored.
    fail(&pool, 0, 5, t0 + Duration::from_secs(1));
    assert_eq!(server_status(&u, "p", 0).consecutive_failures, 0);

    // Back after 10 s; two failures are not enough, a third ejects for 2 × base.
    let t1 = t0 + Duration::from_secs(10);
    assert_eq!(pool.select_at(&[1], t1).unwrap().index, 0);
    fail(&pool, 0, 2, t1);
    assert_eq!(pool.select_at(&[1], t1).unwrap().index, 0);
    fail(&pool, 0, 1, t1);
    assert!(pool.select_at(&[1], t1).is_err());
    assert!(pool
        .select_at(&[1], t1 + Duration::from_millis(19_999))
        .is_err());
    assert_eq!(
        pool.select_at(&[1], t1 + Duration::from_secs(20))
            .unwrap()
            .index,
        0
    );
    let st = server_status(&u, "p", 0);
    assert_eq!(st.times_ejected, 2);
    assert_eq!(st.ejections_total, 2);

    // A success in between resets the run.
    let t2 = t1 + Duration::from_secs(20);
    fail(&pool, 0, 2, t2);
    pool.report_at(0, Outcome::Success, t2);
    fail(&pool, 0, 2, t2);
    pool.report_at(0, Outcome::Neutral, t2);
    assert_eq!(server_status(&u, "p", 0).consecutive_failures, 2);
    assert_eq!(pool.select_at(&[1], t2).unwrap().index, 0);
}

#[tokio::test]
async fn breaker_opens_half_opens_and_closes() {
    let u = registry(vec![upstream("p", &[1001])]);
    let pool = u.pool("p").unwrap();
    for outcome in [Outcome::Success, Outcome::Success, Outcome::Failure] {
        outcome.settle(pool.breaker().unwrap());
    }
    assert_eq!(u.status().upstreams["p"].breaker, "closed");
    Outcome::Failure.settle(pool.breaker().unwrap()); // 2 of 4
    let st = &u.status().upstreams["p"];
    assert_eq!((st.breaker.as_str(), st.breaker_gauge), ("open", 1));
    let open = pool.breaker().unwrap_err();
    assert!(open.retry_after <= Duration::from_millis(200));

    tokio::time::sleep(Duration::from_millis(250)).await;
    let st = &u.status().upstreams["p"];
    assert_eq!((st.breaker.as_str(), st.breaker_gauge), ("half_open", 2));
    let probe = pool.breaker().unwrap();
    assert!(probe.is_probe());
    assert!(pool.breaker().is_err(), "one probe at a time");
    // A neutral outcome (503) decides nothing and frees the probe slot.
    Outcome::Neutral.settle(probe);
    let probe = pool.breaker().unwrap();
    Outcome::Failure.settle(probe);
    assert_eq!(u.status().upstreams["p"].breaker, "open");

    tokio::time::sleep(Duration::from_millis(250)).await;
    Outcome::Success.settle(pool.breaker().unwrap());
    assert_eq!(u.status().upstreams["p"].breaker, "closed");
    assert!(pool.breaker().is_ok());
}

#[tokio::test]
async fn bulkhead_overflow_is_counted_and_not_a_failure() {
    let mut cfg = upstream("p", &[1001]);
    cfg.max_inflight = 2;
    let u = registry(vec![cfg.clone()]);
    let pool = u.pool("p").unwrap();
    let a = pool.acquire_slot().await.unwrap();
    let _b = pool.acquire_slot().await.unwrap();
    assert_eq!(u.status().upstreams["p"].inflight, 2);
    for _ in 0..25 {
        let err = pool.acquire_slot().await.unwrap_err();
        assert_eq!(err.reason, BulkheadFull::Rejected);
    }
    let st = &u.status().upstreams["p"];
    assert_eq!(st.bulkhead_rejected_total, 25);
    assert_eq!(st.breaker, "closed");
    assert_eq!(
        (st.breaker_window_calls, st.breaker_window_failures),
        (0, 0)
    );
    assert_eq!(st.servers[0].consecutive_failures, 0);
    drop(a);
    assert!(pool.acquire_slot().await.is_ok());

    // With a queue: one waiter may wait, and times out.
    cfg.max_inflight = 1;
    cfg.queue = 1;
    cfg.queue_timeout = Duration::from_millis(50);
    u.apply(&gateway(vec![cfg]));
    let pool = u.pool("p").unwrap();
    let _slot = pool.acquire_slot().await.unwrap();
    let err = pool.acquire_slot().await.unwrap_err();
    assert_eq!(err.reason, BulkheadFull::TimedOut);
    assert_eq!(
        u.status().upstreams["p"].bulkhead_rejected_total,
        26,
        "kept across reload"
    );
}

#[test]
fn status_codes_map_to_outcomes() {
    let mut cfg = upstream("p", &[1001]);
    let u = registry(vec![cfg.clone()]);
    let pool = u.pool("p").unwrap();
    assert_eq!(pool.outcome_for_status(200), Outcome::Success);
    assert_eq!(pool.outcome_for_status(404), Outcome::Success);
    assert_eq!(pool.outcome_for_status(500), Outcome::Failure);
    assert_eq!(pool.outcome_for_status(504), Outcome::Failure);
    assert_eq!(pool.outcome_for_status(503), Outcome::Neutral);
    assert!(!pool.is_failure_status(503));
    cfg.failure_statuses = vec![503];
    u.apply(&gateway(vec![cfg]));
    let pool = u.pool("p").unwrap();
    assert_eq!(pool.outcome_for_status(503), Outcome::Failure);
    assert_eq!(pool.outcome_for_status(500), Outcome::Neutral);
}

#[test]
fn apply_keeps_state_of_remaining_servers_and_drops_removed() {
    let now = Instant::now();
    let mut cfg = upstream("p", &[1001, 1002, 1003]);
    let u = registry(vec![cfg.clone(), upstream("gone", &[1009])]);
    let old = u.pool("p").unwrap();
    fail(&old, 0, 3, now); // eject 1001
    old.server_states()[1].set_healthy(false); // 1002 down
    let guard = old.server_guard(2); // 1003 busy
    let slot = futures::executor::block_on(old.acquire_slot()).unwrap();
    for _ in 0..4 {
        Outcome::Failure.settle(old.breaker().unwrap());
    }
    assert!(old.breaker().is_err());

    // Reload: 1002 removed, 1004 added, the rest reordered; same breaker/bulkhead settings.
    cfg.servers = [1003, 1001, 1004]
        .iter()
        .map(|&port| ServerSpec {
            host: "127.0.0.1".into(),
            port,
        })
        .collect();
    cfg.retries = 2;
    u.apply(&gateway(vec![cfg.clone()]));
    assert!(u.pool("gone").is_none());
    assert_eq!(u.names(), vec!["p".to_string()]);
    let new = u.pool("p").unwrap();
    assert_eq!(new.config().retries, 2);
    let st = &u.status().upstreams["p"];
    let names: Vec<&str> = st.servers.iter().map(|s| s.server.as_str()).collect();
    assert_eq!(
        names,
        ["127.0.0.1:1003", "127.0.0.1:1001", "127.0.0.1:1004"]
    );
    assert_eq!(st.servers[0].inflight, 1, "in-flight count kept");
    assert!(st.servers[1].ejected, "ejection kept");
    assert!(
        st.servers[2].healthy && !st.servers[2].ejected,
        "new server starts fresh"
    );
    assert_eq!(st.inflight, 1, "bulkhead kept");
    assert_eq!(st.breaker, "open", "breaker kept");
    assert_eq!(
        new.select_at(&[], now).unwrap().server.as_ref(),
        "127.0.0.1:1004"
    );

    // Requests of the old version finish on it and still update the shared state.
    drop(guard);
    drop(slot);
    assert_eq!(u.status().upstreams["p"].servers[0].inflight, 0);
    assert_eq!(u.status().upstreams["p"].inflight, 0);
    old.report_at(2, Outcome::Failure, now);
    assert_eq!(u.status().upstreams["p"].servers[0].consecutive_failures, 1);

    // Changed breaker settings start a fresh, closed breaker.
    cfg.circuit_breaker.min_requests = 10;
    u.apply(&gateway(vec![cfg]));
    assert_eq!(u.status().upstreams["p"].breaker, "closed");
}

#[test]
fn status_serialises_camel_case() {
    let u = registry(vec![upstream("p", &[1001])]);
    let json = serde_json::to_value(u.status()).unwrap();
    let p = &json["p"];
    for key in [
        "breaker",
        "breakerGauge",
        "inflight",
        "maxInflight",
        "queued",
        "bulkheadRejectedTotal",
    ] {
        assert!(p.get(key).is_some(), "missing {key}: {p}");
    }
    let s = &p["servers"][0];
    assert_eq!(s["server"], "127.0.0.1:1001");
    assert_eq!(s["address"], "127.0.0.1:1001");
    for key in [
        "healthy",
        "ejected",
        "ejectedForMs",
        "timesEjected",
        "ejectionsTotal",
        "inflight",
        "consecutiveFailures",
        "lastCheck",
    ] {
        assert!(s.get(key).is_some(), "missing {key}: {s}");
    }
    let back: UpstreamsStatus = serde_json::from_value(json).unwrap();
    assert_eq!(back.upstreams["p"].servers.len(), 1);
}
