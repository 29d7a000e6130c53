//! Admin listener (/metrics, /status, /), SIGHUP reload and SIGTERM through the real binary.

mod common;

use std::time::{Duration, Instant};

use common::{client, GatewayProcess, RawConn, TestUpstream};

const SPEC_METRICS: &[&str] = &[
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_ratelimit_rejected_total",
    "gateway_ratelimit_delayed_total",
    "gateway_limit_conn_rejected_total",
    "gateway_bulkhead_rejected_total",
    "gateway_upstream_inflight",
    "gateway_upstream_healthy",
    "gateway_upstream_ejections_total",
    "gateway_circuit_state",
    "gateway_config_reloads_total",
];

fn full_config(up: std::net::SocketAddr) -> String {
    format!(
        "server: {{ threads: 1, grace_period_seconds: 1, graceful_shutdown_timeout_seconds: 2 }}
limit_req_zones:
  per_ip: {{ key: client_ip, rate: 1r/m }}
limit_conn_zones:
  conn: {{ key: client_ip }}
upstreams:
  res:
    servers: [\"{up}\"]
    health_check: {{ interval_ms: 100, timeout_ms: 100, rise: 1, fall: 1 }}
routes:
  - path_prefix: /api/
    upstream: res
    limit_req: [{{ zone: per_ip, burst: 1, nodelay: true }}]
    limit_conn: [{{ zone: conn, max: 5 }}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_lists_every_spec_name_and_status_has_its_shape() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&full_config(up.addr)).await;
    let c = client();
    assert_eq!(c.get(gw.url("/api/x")).send().await.unwrap().status(), 200);

    assert_eq!(
        gw.wait_metric(
            "gateway_requests_total{route=\"/api/\",status=\"200\"}",
            1.0
        )
        .await,
        Some(1.0)
    );
    let text = gw.metrics().await;
    for name in SPEC_METRICS {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
    assert_eq!(
        common::metric_value(
            &text,
            "gateway_requests_total{route=\"/api/\",status=\"200\"}"
        ),
        Some(1.0)
    );
    assert!(text.contains("gateway_request_duration_seconds_bucket{route=\"/api/\""));
    assert_eq!(
        common::metric_value(&text, "gateway_circuit_state{upstream=\"res\"}"),
        Some(0.0)
    );

    let st = gw.status().await;
    let cfg = &st["config"];
    assert_eq!(cfg["path"], gw.config_path.display().to_string());
    assert_eq!(cfg["sha256"].as_str().unwrap().len(), 64);
    assert!(cfg["loadedAt"].as_str().unwrap().ends_with('Z'));
    assert!(cfg["lastReload"]["result"].is_null());
    assert!(st["upstreams"]["res"]["servers"].is_array());
    assert_eq!(
        st["upstreams"]["res"]["servers"][0]["server"],
        up.addr.to_string()
    );
    assert!(st["limitReqZones"]["per_ip"]["keys"].as_u64().unwrap() >= 1);
    assert!(st["limitConnZones"]["conn"].is_object());
    assert_eq!(
        st["routes"],
        serde_json::json!([{"pathPrefix": "/api/", "upstream": "res", "timeoutMs": 30000,
                            "limitReq": ["per_ip"], "limitConn": ["conn"]}])
    );

    // The dashboard page and its files.
    let r = c.get(gw.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("dashboard.js"));
    for file in ["/dashboard.js", "/dashboard.css"] {
        assert_eq!(
            c.get(gw.admin_url(file)).send().await.unwrap().status(),
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_valid_file_and_keeps_limiter_state() {
    let up = TestUpstream::start("a").await;
    let mut gw = GatewayProcess::start(&full_config(up.addr)).await;
    let c = client();
    // Use up per_ip's burst (1r/m, burst 1: two pass, the third is limited).
    assert_eq!(c.get(gw.url("/api/1")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/api/2")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(gw.url("/api/3")).send().await.unwrap().status(), 429);
    assert_eq!(c.get(gw.url("/new/x")).send().await.unwrap().status(), 404);
    let sha_before = gw.status().await["config"]["sha256"].clone();

    // A new route, per_ip kept.
    let new = format!(
        "{}  - path_prefix: /new/\n    upstream: res\n",
        full_config(up.addr)
    );
    gw.write_config(&new);
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "ok")
            .await,
        "reload not applied:\n{}",
        gw.logs()
    );
    let st = gw.status().await;
    assert_ne!(st["config"]["sha256"], sha_before);
    assert_eq!(st["routes"].as_array().unwrap().len(), 2);
    assert_eq!(c.get(gw.url("/new/x")).send().await.unwrap().status(), 200);
    // The zone kept its state: this client is still limited.
    assert_eq!(c.get(gw.url("/api/4")).send().await.unwrap().status(), 429);
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"ok\"}")
            .await,
        Some(1.0)
    );
    assert!(
        gw.try_exit_status().is_none(),
        "SIGHUP must not kill the gateway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_old_config() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&full_config(up.addr)).await;
    let c = client();
    let before = gw.status().await["config"].clone();

    gw.write_config(
        "upstreams:\n  res: { servers: [] }\nroutes:\n  - path_prefix: nope\n    upstream: res\n",
    );
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "error")
            .await,
        "reload not attempted:\n{}",
        gw.logs()
    );
    let st = gw.status().await;
    assert_eq!(
        st["config"]["sha256"], before["sha256"],
        "old config still loaded"
    );
    let err = st["config"]["lastReload"]["error"].as_str().unwrap();
    assert!(err.contains("upstreams.res.servers"), "{err}");
    assert!(err.contains("routes[0].path_prefix"), "{err}");
    assert_eq!(c.get(gw.url("/api/x")).send().await.unwrap().status(), 200);
    assert_eq!(
        gw.metric("gateway_config_reloads_total{result=\"error\"}")
            .await,
        Some(1.0)
    );
    assert!(gw.logs().contains("reload rejected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_a_few_seconds_even_with_an_idle_keepalive_client() {
    let up = TestUpstream::start("a").await;
    let mut gw = GatewayProcess::start(&full_config(up.addr)).await;
    let addr = gw.listen;
    // An idle kept-alive client must not hold the shutdown.
    let conn = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(addr);
        assert_eq!(conn.get("/api/x", &[]).unwrap().status, 200);
        conn
    })
    .await
    .unwrap();
    let started = Instant::now();
    gw.sigterm();
    let status = tokio::task::spawn_blocking(move || {
        let s = gw.wait_exit(Duration::from_secs(10));
        (s, gw)
    })
    .await
    .unwrap();
    let (exit, gw) = status;
    let exit = exit.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", gw.logs()));
    assert!(exit.success(), "exit status {exit}");
    // grace_period_seconds 1 + graceful_shutdown_timeout_seconds 2, plus start/stop slack.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_hands_the_listener_to_a_new_process_without_refusing_connections() {
    let up = TestUpstream::start("a").await;
    let mut gw = GatewayProcess::start(&full_config(up.addr)).await;
    let old_pid = gw.pid();
    let url = gw.url("/api/during");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    // Fresh connections all along the hand-off: none may be refused.
    let prober = tokio::spawn(async move {
        let (mut answered, mut failed) = (0u32, Vec::new());
        for _ in 0..2000 {
            if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            let c = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            match c.get(&url).send().await {
                Ok(_) => answered += 1,
                Err(e) => failed.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (answered, failed)
    });
    let exit = gw.upgrade().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, failed) = prober.await.unwrap();
    assert!(exit.success(), "old process exit: {exit}");
    assert_ne!(gw.pid(), old_pid);
    assert!(answered > 10, "{answered} answered");
    assert!(failed.is_empty(), "refused during the hand-off: {failed:?}");
    // The new process serves and reports.
    let r = client().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(gw.status().await["routes"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_cannot_move_listeners_and_says_a_restart_is_needed() {
    let up = TestUpstream::start("a").await;
    let gw = GatewayProcess::start(&full_config(up.addr)).await;
    let other = common::free_port();
    // Same routes, another listen port.
    let text = gw
        .full_config(&full_config(up.addr))
        .replace(&gw.listen.to_string(), &format!("127.0.0.1:{other}"));
    std::fs::write(&gw.config_path, text).unwrap();
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "ok")
            .await
    );
    assert!(
        gw.logs().contains("listen changed: restart needed"),
        "{}",
        gw.logs()
    );
    // Still serving on the original port.
    assert_eq!(
        client()
            .get(gw.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_old_config() {
    let up = TestUpstream::start("slow").await;
    up.set_delay(Duration::from_millis(1200));
    let gw = GatewayProcess::start(&full_config(up.addr)).await;
    let url = gw.url("/api/slow");
    let in_flight = tokio::spawn(async move { client().get(url).send().await.unwrap().status() });
    for _ in 0..100 {
        if up.inflight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.inflight(), 1);
    // The new file no longer routes /api/.
    gw.write_config(&format!(
        "server: {{ threads: 1 }}\nupstreams:\n  res: {{ servers: [\"{}\"] }}\nroutes:\n  - {{ path_prefix: /other/, upstream: res }}\n",
        up.addr
    ));
    gw.sighup();
    assert!(
        gw.wait_status(Duration::from_secs(5), |s| s["config"]["lastReload"]
            ["result"]
            == "ok")
            .await
    );
    assert_eq!(
        client()
            .get(gw.url("/api/new"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the old route finished its request"
    );
}
