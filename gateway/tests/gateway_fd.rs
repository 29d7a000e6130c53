//! File descriptor exhaustion ("Hostile clients", item 4): the gateway raises its soft
//! `RLIMIT_NOFILE` to the hard limit at start, and when idle clients use up every descriptor the
//! active health checks (which then fail with EMFILE) are inconclusive instead of marking every
//! server down; once the clients leave, requests are served again. Before that point, the
//! connection cap (`client.max_connections`, by default derived from the descriptor limit)
//! refuses clients past it at once with a 503, so descriptors do not run out at all.
//!
//! The gateway runs as a child process whose limits are set with `setrlimit` between fork and
//! exec, so this test process keeps its own limits.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, free_port, metric_value, RawConn, TestUpstream};

/// The gateway binary with `RLIMIT_NOFILE` = (`soft`, `hard`), its own listeners, killed on drop.
struct LimitedGateway {
    dir: tempfile::TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    child: Child,
}

impl LimitedGateway {
    async fn start(yaml: &str, soft: u64, hard: u64) -> LimitedGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            format!("listen: \"{listen}\"\nadmin_listen: \"{admin}\"\n{yaml}"),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("GATEWAY_UPGRADE_SOCK", dir.path().join("upgrade.sock"))
            .env_remove("GATEWAY_CONFIG")
            .env_remove("GATEWAY_CONFIG_TEST")
            .env_remove("LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: between fork and exec only the async-signal-safe setrlimit runs, on a struct
        // copied into the closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn gateway");
        let mut gw = LimitedGateway {
            dir,
            listen,
            admin,
            child,
        };
        gw.wait_ready().await;
        gw
    }

    /// What the gateway logged (after a few log flush intervals, as `GatewayProcess::logs`).
    fn logs(&self) -> String {
        std::thread::sleep(gateway::log_buffer::FLUSH_INTERVAL * 5);
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Descriptors the gateway holds right now.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + common::START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "gateway exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            if TcpStream::connect(self.listen).is_ok() {
                let ok = client()
                    .get(self.admin_url("/status"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LimitedGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `servers` behind one route with fast health checks; `max_connections` written when given.
fn config(servers: &[String], max_connections: Option<usize>) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // Idle clients must not be closed by the header deadline during the test.
    format!(
        "server:\n  threads: 1\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n\
         client:\n  header_timeout_ms: 60000\n{cap}\
         upstreams:\n  u:\n    servers: [{list}]\n    \
         health_check: {{ path: /health, interval_ms: 200, timeout_ms: 150, rise: 2, fall: 2 }}\n\
         routes:\n  - path_prefix: /\n    upstream: u\n",
        cap = max_connections.map_or(String::new(), |n| format!("  max_connections: {n}\n"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_fd_limit_is_raised_to_the_hard_limit() {
    let up = TestUpstream::start("a").await;
    let gw = LimitedGateway::start(&config(&[up.addr.to_string()], None), 256, 4096).await;
    let logs = gw.logs();
    assert!(
        logs.contains("soft limit raised from 256 to 4096 (hard limit 4096)"),
        "{logs}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
}

/// `GET path` on a kept-alive raw connection; the JSON body.
fn get_json(conn: &mut RawConn, path: &str) -> serde_json::Value {
    let resp = conn
        .get(path, &[])
        .expect("request on the kept-alive connection");
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_using_every_fd_do_not_mark_upstreams_down() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    exhaust_fds(&[a.addr.to_string(), b.addr.to_string()]).await;
}

/// The same with host names, resolved before every check (as in compose): the resolver, too,
/// fails for lack of descriptors, and that must not cost a server its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_using_every_fd_do_not_unresolve_upstreams() {
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    exhaust_fds(&[
        format!("localhost:{}", a.addr.port()),
        format!("localhost:{}", b.addr.port()),
    ])
    .await;
}

async fn exhaust_fds(servers: &[String]) {
    const LIMIT: u64 = 256;
    // A cap above the descriptor limit: this exercises what happens when descriptors run out
    // all the same (they are shared with upstream connections, checks, logs...).
    let gw = LimitedGateway::start(&config(servers, Some(100_000)), LIMIT, LIMIT).await;
    let healthy = |st: &serde_json::Value| {
        st["upstreams"]["u"]["servers"]
            .as_array()
            .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["healthy"] == true))
    };
    // Opened before the descriptors run out and kept alive: the admin listener cannot accept
    // new connections while the process is at its limit.
    let mut admin = RawConn::connect(gw.admin);
    let st = get_json(&mut admin, "/status");
    assert!(healthy(&st), "{st:#}");
    let baseline = gw.open_fds();

    // Idle clients (connected, silent) until the gateway holds every descriptor. Connections the
    // gateway cannot accept wait in the listen backlog.
    let mut idle = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.open_fds() < LIMIT as usize {
        assert!(
            Instant::now() < deadline && idle.len() < 2000,
            "gateway did not run out of descriptors ({} open, {} idle clients):\n{}",
            gw.open_fds(),
            idle.len(),
            gw.logs()
        );
        for _ in 0..20 {
            idle.push(TcpStream::connect(gw.listen).expect("idle client connect"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exhausted_at = Instant::now();
    eprintln!(
        "gateway fds: {baseline} at rest, {} with {} idle clients",
        gw.open_fds(),
        idle.len()
    );

    // Several health-check intervals (200 ms; fall: 2) at the limit.
    let mut inconclusive_seen = false;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let st = get_json(&mut admin, "/status");
        assert!(
            healthy(&st),
            "a server was marked down while the gateway was out of fds: {st:#}\n{}",
            gw.logs()
        );
        inconclusive_seen |= st["upstreams"]["u"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["lastCheck"]["inconclusive"] == true);
    }
    assert!(
        inconclusive_seen,
        "no check hit the fd limit (the test did not exercise it):\n{}",
        gw.logs()
    );
    let metrics = admin.get("/metrics", &[]).expect("GET /metrics").body;
    for server in servers {
        let series = format!("gateway_upstream_healthy{{upstream=\"u\",server=\"{server}\"}}");
        assert_eq!(metric_value(&metrics, &series), Some(1.0), "{series}");
    }
    let emfile = metric_value(
        &metrics,
        "gateway_local_resource_errors_total{kind=\"emfile\"}",
    )
    .unwrap_or(0.0);
    assert!(emfile >= 2.0, "emfile count {emfile}");
    let logs = gw.logs();
    let accept_errors = logs.matches("Accept() failed").count();
    eprintln!(
        "at the limit for {:?}: {emfile} inconclusive checks, {accept_errors} 'Accept() failed' log lines",
        exhausted_at.elapsed()
    );
    let skipped = logs.lines().find(|l| l.contains("health check skipped"));
    eprintln!("{}", skipped.unwrap_or("no skipped check logged"));
    assert!(skipped.is_some(), "the skipped checks are logged:\n{logs}");

    // The clients leave: normal requests succeed again (Pingora's accept loop sleeps 1 s after
    // EMFILE, so allow a few seconds).
    drop(idle);
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let r = c
            .get(format!("http://{}/x", gw.listen))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => break 200,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Ok(r) => break r.status().as_u16(),
            Err(e) => panic!("no answer after the idle clients left: {e}\n{}", gw.logs()),
        }
    };
    assert_eq!(status, 200, "{}", gw.logs());
    for _ in 0..10 {
        let r = c
            .get(format!("http://{}/y", gw.listen))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let st = get_json(&mut admin, "/status");
    assert!(healthy(&st), "{st:#}");
}

/// Idle clients up to the cap derived from the descriptor limit (256 → 64 connections): the next
/// client is answered at once with 503 `gateway_overloaded` + `Retry-After`, the process never
/// runs out of descriptors (no "Accept() failed", no inconclusive check), upstreams stay up, and
/// once a client leaves a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_at_once() {
    const LIMIT: u64 = 256;
    let cap = gateway::client::connections::auto_max_connections(LIMIT);
    let a = TestUpstream::start("a").await;
    let b = TestUpstream::start("b").await;
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let gw = LimitedGateway::start(&config(&servers, None), LIMIT, LIMIT).await;
    let mut admin = RawConn::connect(gw.admin);
    let st = get_json(&mut admin, "/status");
    assert_eq!(st["connections"]["max"], cap, "{st:#}");
    assert_eq!(st["connections"]["maxFromFdLimit"], true, "{st:#}");

    // One kept-alive client that is served, then silent clients up to the cap.
    let mut served = RawConn::connect(gw.listen);
    assert_eq!(
        served.get("/first", &[]).expect("first request").status,
        200
    );
    let mut idle: Vec<TcpStream> = (1..cap)
        .map(|_| TcpStream::connect(gw.listen).expect("idle client connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(&mut admin, "/status")["connections"]["open"] != cap {
        assert!(
            Instant::now() < deadline,
            "{:#}",
            get_json(&mut admin, "/status")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Past the cap: an immediate, well-formed refusal, many times over.
    for i in 0..20 {
        let started = Instant::now();
        let mut c = RawConn::connect(gw.listen);
        let resp = c.get(&format!("/refused/{i}"), &[]).expect("refusal");
        let took = started.elapsed();
        assert_eq!(resp.status, 503, "{}", resp.body);
        assert!(took < Duration::from_secs(1), "refusal took {took:?}");
        assert_eq!(resp.json()["error"], "gateway_overloaded", "{}", resp.body);
        assert_eq!(resp.header("retry-after"), Some("1"), "{:?}", resp.headers);
        assert_eq!(resp.header("connection"), Some("close"));
    }
    // The connection being served keeps working, and the upstreams stay healthy.
    assert_eq!(
        served
            .get("/still", &[])
            .expect("kept-alive request")
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = get_json(&mut admin, "/status");
    for s in st["upstreams"]["u"]["servers"].as_array().unwrap() {
        assert_eq!(s["healthy"], true, "{st:#}");
        assert_ne!(s["lastCheck"]["inconclusive"], true, "{st:#}");
    }
    let metrics = admin.get("/metrics", &[]).expect("GET /metrics").body;
    let answered = metric_value(
        &metrics,
        "gateway_client_connections_refused_total{action=\"answered\"}",
    );
    assert_eq!(answered, Some(20.0), "{metrics}");
    assert_eq!(
        metric_value(&metrics, "gateway_client_connections"),
        Some(cap as f64)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "gateway_requests_total{route=\"none\",status=\"503\"}"
        ),
        Some(20.0)
    );
    assert!(
        gw.open_fds() < LIMIT as usize - 32,
        "{} fds open",
        gw.open_fds()
    );
    let logs = gw.logs();
    assert!(!logs.contains("Accept() failed"), "{logs}");
    assert!(logs.contains("client.max_connections"), "{logs}");

    // One idle client leaves: a new client is served.
    idle.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = RawConn::connect(gw.listen);
        let status = c.get("/again", &[]).expect("request").status;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after a client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(idle);
}
