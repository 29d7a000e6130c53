//! File descriptor exhaustion ("Hostile clients", item 4): the gateway raises its soft
//! `RLIMIT_NOFILE` to the hard limit at start, and when idle clients use up every descriptor the
//! active health checks (which then fail with EMFILE) are inconclusive instead of marking every
//! server down; once the clients leave, requests are served again.
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

    fn logs(&self) -> String {
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

fn config(servers: &[String]) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // Idle clients must not be closed by the header deadline during the test.
    format!(
        "server:\n  threads: 1\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 1\n\
         client:\n  header_timeout_ms: 60000\n\
         upstreams:\n  u:\n    servers: [{list}]\n    \
         health_check: {{ path: /health, interval_ms: 200, timeout_ms: 150, rise: 2, fall: 2 }}\n\
         routes:\n  - path_prefix: /\n    upstream: u\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_fd_limit_is_raised_to_the_hard_limit() {
    let up = TestUpstream::start("a").await;
    let gw = LimitedGateway::start(&config(&[up.addr.to_string()]), 256, 4096).await;
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
    let gw = LimitedGateway::start(&config(servers), LIMIT, LIMIT).await;
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
